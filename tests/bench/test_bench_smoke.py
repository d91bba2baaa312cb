"""The benchmark harness runs end to end on tiny sizes (no timing is asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.ingest import run, table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    rows = run(smoke=True, workdir=tmp_path)
    assert list(rows) == ["0.5 MB x 1", "0.5 MB x 4", "15 KB x 1", "15 KB x 4"]
    for results in rows.values():
        assert [r.receiver for r in results] == ["node", "storescp", "orthanc"]
        assert all(r.instances_per_s > 0 and r.mb_per_s > 0 for r in results)
    rendered = table(rows)
    assert rendered.count("\n") == 2 + len(rows) - 1
    assert "| 15 KB x 4 |" in rendered
