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


def test_an_object_written_as_it_is_encoded(tmp_path: Path) -> None:
    """``writing`` puts the bytes in place only when the block ends; an error inside the block
    (an encoder failing half way) leaves neither the file nor a temporary."""
    spool = Spool(tmp_path)
    relative = spool.result_path("job", "seg0")
    with spool.writing(relative) as handle:
        handle.write(b"part one, ")
        assert not spool.absolute(relative).exists()
        handle.write(b"part two")
    assert spool.absolute(relative).read_bytes() == b"part one, part two"
    other = spool.result_path("job", "sr")

    def encode_half_then_fail() -> None:
        with spool.writing(other) as handle:
            handle.write(b"half")
            raise ValueError("encoder failed")

    with pytest.raises(ValueError, match="encoder"):
        encode_half_then_fail()
    assert sorted(p.name for p in spool.absolute(relative).parent.iterdir()) == ["seg0.dcm"]


def test_temporaries_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    leftover = tmp_path / "instances" / "s" / ".x.dcm.abc.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    assert spool.remove_temporaries() == 1
    assert not leftover.exists()
