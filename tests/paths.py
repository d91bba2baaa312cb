"""Where the repository and the shared test data are."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "PACS_AI_NODE_TEST_DATA"


def shared_data_root() -> Path:
    """``$PACS_AI_NODE_TEST_DATA`` (relative to the repository root); ``../shared/data``."""
    setting = Path(os.environ.get(DATA_ENV, "../shared/data"))
    return (setting if setting.is_absolute() else REPO_ROOT / setting).resolve()
