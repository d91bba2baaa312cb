"""The model repository as the node reads it: models, versions, cards and promotion state.

The folder is one Triton model repository (``<model>/config.pbtxt``, ``<model>/<version>/``);
beside Triton's files each model holds the node's own:

``<model>/<version>/card.yaml``
    The version's model card (:mod:`node.models.card`).
``<model>/versions.yaml``
    Which version rules that do not pin one get (``promoted``), the promotions before it (for
    ``rollback``) and the ``shadow`` version, if any. Absent: the highest version is promoted.
``<model>/history.jsonl``
    The audit trail of every change made by ``pacs-ai-node models`` (:mod:`node.models.audit`).

Triton ignores these files (it only loads numeric version folders).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from node.errors import ConfigError
from node.models.card import CARD_FILE, ModelCard, load_card

__all__ = [
    "CONFIG_FILE",
    "FOLLOW_PROMOTED",
    "VERSIONS_FILE",
    "ModelRepository",
    "PromotionState",
    "write_atomically",
]

CONFIG_FILE = "config.pbtxt"
VERSIONS_FILE = "versions.yaml"
#: What a rule's ``version`` says to follow the promoted version (as does leaving it out).
FOLLOW_PROMOTED = "promoted"


class PromotionState(BaseModel):
    """``<model>/versions.yaml``: the promoted version, earlier promotions, the shadow."""

    model_config = ConfigDict(extra="forbid")

    promoted: str | None = Field(default=None, description="What unpinned rules get.")
    previous: list[str] = Field(
        default_factory=list, description="Earlier promoted versions, oldest first (rollback)."
    )
    shadow: str | None = Field(
        default=None, description="Runs beside the promoted one on the same jobs, never exported."
    )

    @field_validator("promoted", "shadow", "previous", mode="before")
    @classmethod
    def _numbers_are_names(cls, value: Any) -> Any:
        """YAML reads ``promoted: 2`` as a number; versions are folder names."""
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) else v for v in value]
        return str(value) if isinstance(value, int) else value


class ModelRepository:
    """Read access to a model repository folder.

    Cards are cached per file and re-read when the file changes, so a running node sees a
    version added or promoted by ``pacs-ai-node models`` without a restart.

    Parameters
    ----------
    root
        The model repository folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._cards: dict[tuple[str, str], tuple[int, ModelCard]] = {}

    # -- what is there ----------------------------------------------------------------------

    def models(self) -> list[str]:
        """Model names: folders holding a ``config.pbtxt``, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{CONFIG_FILE}"))

    def versions(self, model: str) -> list[str]:
        """The model's versions (numeric folders, as Triton serves them), in numeric order."""
        folder = self.root / model
        if not _is_plain(model) or not folder.is_dir():
            return []
        return sorted(
            (p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int
        )

    def has(self, model: str, version: str) -> bool:
        """Whether ``model`` has ``version``."""
        return version in self.versions(model)

    def version_dir(self, model: str, version: str) -> Path:
        """``<root>/<model>/<version>``."""
        return self.root / model / version

    # -- cards -------------------------------------------------------------------------------

    def card(self, model: str, version: str) -> ModelCard:
        """The validated card of ``model`` at ``version`` (cached until the file changes).

        Raises
        ------
        ModelCardError
            If the card is missing or invalid (the message names the file and field).
        """
        path = self.version_dir(model, version) / CARD_FILE
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = -1
        with self._lock:
            cached = self._cards.get((model, version))
            if cached is not None and cached[0] == stamp:
                return cached[1]
        card = load_card(path, model=model, version=version)
        with self._lock:
            self._cards[(model, version)] = (stamp, card)
        return card

    def validate(self) -> list[ModelCard]:
        """Every card of every version in the repository, validated.

        Raises
        ------
        ModelCardError
            At the first missing or invalid card.
        """
        return [self.card(m, v) for m in self.models() for v in self.versions(m)]

    # -- promotion ---------------------------------------------------------------------------

    def state(self, model: str) -> PromotionState:
        """The model's promotion state; without ``versions.yaml``, its highest version is promoted.

        Raises
        ------
        ConfigError
            If ``versions.yaml`` is unreadable or invalid.
        """
        path = self.root / model / VERSIONS_FILE
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            versions = self.versions(model)
            return PromotionState(promoted=versions[-1] if versions else None)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc})", key="model_repository") from exc
        try:
            return PromotionState.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: {where}: {first['msg']}", key="model_repository") from exc

    def save_state(self, model: str, state: PromotionState) -> None:
        """Write ``versions.yaml`` atomically (temporary file, fsync, rename)."""
        text = (
            "# Written by `pacs-ai-node models` (promote, rollback, shadow); see history.jsonl.\n"
            + yaml.safe_dump(state.model_dump(mode="json"), sort_keys=False)
        )
        write_atomically(self.root / model / VERSIONS_FILE, text.encode("utf-8"))

    def resolve(self, model: str, version: str | None) -> str:
        """The concrete version a rule gets: ``version`` itself, or the promoted one.

        Parameters
        ----------
        model
            The model name.
        version
            A pinned version, or None / ``"promoted"`` to follow the promoted version.

        Raises
        ------
        ConfigError
            If the model has no such version, or nothing is promoted.
        """
        if version is not None and version != FOLLOW_PROMOTED:
            if not self.has(model, version):
                raise ConfigError(
                    f"model {model!r} version {version!r} is not in {self.root}",
                    key="model_repository",
                )
            return version
        promoted = self.state(model).promoted
        if promoted is None or not self.has(model, promoted):
            raise ConfigError(
                f"model {model!r} has no promoted version in {self.root}", key="model_repository"
            )
        return promoted


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _is_plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
