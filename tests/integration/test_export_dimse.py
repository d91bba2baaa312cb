"""C-STORE export against real peers: dcmtk's storescp, and a listener that refuses us."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from node.config import DimseDestination
from node.errors import PeerRejected, PeerUnreachable
from node.export.base import backoff_delay
from node.export.dimse import DimseExporter
from tests.peers import free_port, running_listener, start_storescp, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "received"
    process, port = start_storescp(out)
    yield port, out
    stop_process(process)


def _exporter(port: int, ae_title: str = "STORESCP") -> DimseExporter:
    destination = DimseDestination(host="127.0.0.1", port=port, ae_title=ae_title)
    return DimseExporter("pacs", destination, calling_ae_title="AINODE", timeout_s=5)


def test_files_reach_storescp(storescp: tuple[int, Path], lidc_dir: Path) -> None:
    port, out = storescp
    files = sorted(lidc_dir.glob("*.dcm"))[:3]
    _exporter(port).send(files)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert received == {pydicom.dcmread(p).SOPInstanceUID for p in files}


def test_no_listener_is_unreachable(lidc_dir: Path) -> None:
    with pytest.raises(PeerUnreachable):
        _exporter(free_port()).send(sorted(lidc_dir.glob("*.dcm"))[:1])


def test_rejected_association_is_permanent(tmp_path: Path, lidc_dir: Path) -> None:
    with (
        running_listener(tmp_path, ae_title="PICKY", allowed=["SOMEONE_ELSE"]) as peer,
        pytest.raises(PeerRejected, match="permanently"),
    ):
        _exporter(peer.port, "PICKY").send(sorted(lidc_dir.glob("*.dcm"))[:1])


def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff_delay(n, initial_s=2, max_s=30) for n in range(1, 7)]
    assert delays == [2, 4, 8, 16, 30, 30]
