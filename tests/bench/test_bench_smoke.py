"""The benchmark harness runs end to end on tiny sizes (no timing is asserted here).

One test per section of ``python -m tests.bench``, each with its smoke sizes, so that no section
can rot; the figures are not looked at, only that each row was measured (or says why not).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import (
    appsdk,
    disk_probe,
    memory,
    receive_breakdown,
    serving,
    stow,
    time_to_result,
)
from tests.bench.common import Row, Section, summary_table
from tests.bench.ingest import run, table
from tests.bench.sections import SECTIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _measured(row: Row) -> None:
    assert not row.note, row.note
    assert row.ratio is not None
    assert row.ratio > 0
    assert all((row.node, row.reference, row.target))


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    rows = run(smoke=True, workdir=tmp_path)
    assert list(rows) == ["0.5 MB x 1", "0.5 MB x 4", "15 KB x 1", "15 KB x 4"]
    for results in rows.values():
        assert [r.receiver for r in results] == ["node", "storescp", "orthanc"]
        assert all(r.instances_per_s > 0 and r.mb_per_s > 0 for r in results)
    rendered = table(rows)
    assert rendered.count("\n") == 2 + len(rows) - 1
    assert "| 15 KB x 4 |" in rendered


def test_time_to_result_smoke(tmp_path: Path) -> None:
    section = time_to_result.run(smoke=True, workdir=tmp_path)
    (row,) = section.rows
    _measured(row)
    assert row.met is not None
    assert any("quiet_period_s = 0.5" in line for line in section.details)


def test_peak_rss_smoke(tmp_path: Path) -> None:
    section = memory.run(smoke=True, workdir=tmp_path)
    (row,) = section.rows
    _measured(row)
    assert "not every job" not in row.name, section.details
    assert list(tmp_path.iterdir()) == []  # series and spools are cleaned up


def test_appsdk_comparison_smoke(tmp_path: Path) -> None:
    missing = appsdk.appsdk_missing()
    if missing is not None:
        pytest.skip(f"App SDK comparison not smoke-tested: {missing}")
    section = appsdk.run(smoke=True, workdir=tmp_path)
    assert len(section.rows) == 2
    for row in section.rows:
        _measured(row)
    # the same job on both sides: the two SEGs agree
    (dice,) = [line for line in section.details if line.startswith("Same job")]
    assert float(dice.rsplit("=", 1)[1]) > 0.99


def test_stow_smoke(tmp_path: Path) -> None:
    section = stow.run(smoke=True, workdir=tmp_path)
    assert [r.name for r in section.rows] == ["STOW-RS 0.5 MB x 4"]
    for row in section.rows:
        if row.note:
            assert row.note == f"not measured yet ({stow.UNAVAILABLE})"
        else:
            _measured(row)


def test_triton_rows_smoke(tmp_path: Path) -> None:
    section = serving.run(smoke=True, workdir=tmp_path)
    assert len(section.rows) == 2
    missing = serving.triton_missing()
    for row in section.rows:
        if missing is None:
            _measured(row)
        else:
            assert row.note == f"not measured yet ({missing})"


def test_receive_breakdown_smoke() -> None:
    """The probes behind the receive rows run too (not sections: no ratio)."""
    elapsed, totals = receive_breakdown.measure(5)
    assert elapsed > 0
    assert set(totals) == set(receive_breakdown.ORDER)
    assert totals["durable store, all"] >= totals["header parse"] > 0


def test_disk_probe_smoke(tmp_path: Path) -> None:
    for way in (disk_probe.renamed, disk_probe.direct):
        assert disk_probe.writes_per_second(way, tmp_path, 2, way.__name__, writes=3) > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        f"{way}-{n}-{k}" for way in ("renamed", "direct") for n in range(2) for k in range(3)
    )


def test_summary_table_has_every_row() -> None:
    assert list(SECTIONS) == ["receive", "stow", "time-to-result", "memory", "appsdk", "triton"]
    sections = [
        Section("a", rows=[Row("measured", "2 s", "1 s", 2.0, "≤ 1.2", False)]),
        Section("b", rows=[Row("skipped", target="≥ 1.5", note="not measured yet (why)")]),
    ]
    lines = summary_table(sections).splitlines()
    assert lines[2] == "| measured | 2 s | 1 s | 2.00 | ≤ 1.2 | no |"
    assert lines[3] == "| skipped | not measured yet (why) | | | ≥ 1.5 | |"
