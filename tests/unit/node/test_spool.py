"""The spool writes durably and never leaves a partial file under its final name."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.store.spool import Spool


def test_write_is_complete_and_replaces(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    relative = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(relative, b"first") == 5
    spool.write(relative, b"second")
    assert spool.absolute(relative).read_bytes() == b"second"
    assert [p.name for p in spool.absolute(relative).parent.iterdir()] == ["1.2.3.4.dcm"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    relative = spool.result_path("job", "seg0")
    spool.absolute(relative).parent.mkdir(parents=True)

    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("node.store.spool.os.fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        spool.write(relative, b"data")
    assert [p for p in (tmp_path / "results").rglob("*") if p.is_file()] == []


def test_temporaries_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    leftover = tmp_path / "instances" / "s" / ".x.dcm.abc.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    assert spool.remove_temporaries() == 1
    assert not leftover.exists()
