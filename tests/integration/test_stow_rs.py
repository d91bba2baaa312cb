"""STOW-RS into the node: PS3.18 statuses and bodies, streaming, and the durable path."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from node.api.app import create_app
from node.ingest.dicomweb import STOW_SOURCE, StowService
from node.ingest.durable import InstanceStore
from node.store.database import Database
from node.store.models import Instance, Job, JobState, Series
from node.store.spool import Spool
from tests.peers import RunningNode, start_node, start_storescp, stop_process, wait_for

pytestmark = pytest.mark.integration

BOUNDARY = "node-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"
SOP_INSTANCE = "00081155"
MB = 1024 * 1024


def multipart(parts: list[bytes], *, content_type: str = "application/dicom") -> bytes:
    """A multipart/related body with ``parts``, closed properly."""
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def uids(response_body: dict[str, Any], sequence: str) -> list[str | None]:
    """The SOP Instance UIDs in one sequence of a STOW-RS response (None where absent)."""
    items = response_body.get(sequence, {}).get("Value", [])
    return [item.get(SOP_INSTANCE, {}).get("Value", [None])[0] for item in items]


def reasons(response_body: dict[str, Any]) -> list[int]:
    """The FailureReason of each failed instance."""
    return [item[REASON]["Value"][0] for item in response_body[FAILED]["Value"]]


class StowApp:
    """The API with STOW-RS over a fresh spool and index, in this process."""

    def __init__(self, root: Path, *, token: str | None = None, free_bytes: int | None = None):
        self.db = Database(f"sqlite:///{root / 'index.sqlite'}")
        self.db.create_schema()
        self.spool = Spool(root / "spool")
        store = InstanceStore(
            self.spool,
            self.db,
            min_free_disk_bytes=1024 * MB if free_bytes is not None else 0,
            free_disk_bytes=(lambda: free_bytes) if free_bytes is not None else None,
        )
        self.client = TestClient(
            create_app(
                self.db,
                api_token=SecretStr(token) if token else None,
                stow=StowService(store),
            )
        )

    def post(self, body: bytes, *, study: str | None = None, **headers: str) -> httpx.Response:
        """POST ``body`` to /dicomweb/studies[/study] as multipart/related (unless overridden)."""
        path = "/dicomweb/studies" + (f"/{study}" if study else "")
        return self.client.post(path, content=body, headers={"content-type": MULTIPART, **headers})

    def indexed(self) -> set[str]:
        """SOP Instance UIDs in the index."""
        with self.db.session() as session:
            return set(session.scalars(select(Instance.sop_instance_uid)))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[StowApp]:
    stow = StowApp(tmp_path)
    yield stow
    stow.db.dispose()


@pytest.fixture
def slices(lidc_dir: Path) -> list[Path]:
    return sorted(lidc_dir.glob("*.dcm"))[:4]


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_all_stored_is_200_with_every_instance_referenced(app: StowApp, slices: list[Path]) -> None:
    response = app.post(multipart([p.read_bytes() for p in slices]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    expected = {sop_uid(p) for p in slices}
    assert set(uids(response.json(), REFERENCED)) == expected
    assert FAILED not in response.json()
    assert app.indexed() == expected
    for path in slices:  # the bytes as sent, on disk
        [stored] = app.spool.root.rglob(f"{sop_uid(path)}*.dcm")
        assert stored.read_bytes() == path.read_bytes()
    with app.db.session() as session:
        [series] = session.scalars(select(Series))
        assert series.calling_ae_title == STOW_SOURCE
        assert series.instance_count == len(slices)


def test_mixed_good_and_malformed_parts_are_202_with_the_failed_listed(
    app: StowApp, slices: list[Path]
) -> None:
    good = [p.read_bytes() for p in slices[:2]]
    truncated = slices[2].read_bytes()[:1000]
    response = app.post(multipart([good[0], b"not DICOM at all", good[1], truncated]))
    assert response.status_code == 202
    body = response.json()
    assert set(uids(body, REFERENCED)) == {sop_uid(p) for p in slices[:2]}
    assert len(body[FAILED]["Value"]) == 2
    assert reasons(body) == [0xC000, 0xC000]
    assert app.indexed() == {sop_uid(p) for p in slices[:2]}


def test_a_part_of_another_media_type_fails_alone(app: StowApp, slices: list[Path]) -> None:
    body = multipart([slices[0].read_bytes()]).replace(b"--\r\n", b"\r\n")  # reopen the end
    body += f"Content-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--{BOUNDARY}--\r\n".encode()
    response = app.post(body)
    assert response.status_code == 202
    assert uids(response.json(), REFERENCED) == [sop_uid(slices[0])]


def test_instances_of_another_study_fail_one_by_one(app: StowApp, slices: list[Path]) -> None:
    own_study = str(pydicom.dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID)
    other = pydicom.dcmread(slices[1])
    other.StudyInstanceUID = generate_uid()
    other.SOPInstanceUID = generate_uid()
    other_path = app.spool.root.parent / "other.dcm"
    other.save_as(other_path, enforce_file_format=True)
    response = app.post(
        multipart([slices[0].read_bytes(), other_path.read_bytes()]), study=own_study
    )
    assert response.status_code == 202
    assert uids(response.json(), REFERENCED) == [sop_uid(slices[0])]
    assert uids(response.json(), FAILED) == [str(other.SOPInstanceUID)]
    assert reasons(response.json()) == [0xA901]
    every_wrong = app.post(multipart([other_path.read_bytes()]), study=own_study)
    assert every_wrong.status_code == 409
    assert app.indexed() == {sop_uid(slices[0])}


def test_wrong_media_types_are_415(app: StowApp, slices: list[Path]) -> None:
    data = slices[0].read_bytes()
    for content_type in (
        "application/dicom",
        "application/json",
        f"multipart/related; type=application/dicom+json; boundary={BOUNDARY}",
        f"multipart/form-data; boundary={BOUNDARY}",
        'multipart/related; type="application/dicom"',  # no boundary
    ):
        response = app.post(multipart([data]), **{"content-type": content_type})
        assert response.status_code == 415, content_type
        assert response.headers["content-type"] == "application/problem+json"
    assert app.indexed() == set()


def test_broken_multipart_is_400_and_keeps_what_came_before(
    app: StowApp, slices: list[Path]
) -> None:
    body = multipart([p.read_bytes() for p in slices[:2]])
    cut = body[: len(body) - 200]  # inside the second part: no closing boundary
    response = app.post(cut)
    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]
    assert app.indexed() == {sop_uid(slices[0])}  # the complete part is stored
    assert app.post(b"").status_code == 400
    assert app.post(b"garbage without any boundary").status_code == 400


def test_bearer_token_guards_stow(tmp_path: Path, slices: list[Path]) -> None:
    token = "s3cret-token-0123456789"  # noqa: S105 - a test token
    stow = StowApp(tmp_path, token=token)
    body = multipart([slices[0].read_bytes()])
    assert stow.post(body).status_code == 401
    assert stow.post(body, authorization="Bearer wrong-token-0123456789").status_code == 401
    assert stow.indexed() == set()
    assert stow.post(body, authorization=f"Bearer {token}").status_code == 200
    assert stow.indexed() == {sop_uid(slices[0])}


def test_low_disk_is_503_with_retry_after(tmp_path: Path, slices: list[Path]) -> None:
    stow = StowApp(tmp_path, free_bytes=5 * MB)
    response = stow.post(multipart([slices[0].read_bytes()]))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert stow.indexed() == set()


# --- against the node as users run it -------------------------------------------------------


def _http_base(node: RunningNode) -> str:
    config = yaml.safe_load(node.config_path.read_text())
    return f"http://127.0.0.1:{config['http_port']}"


@pytest.fixture
def result_peer(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    process, port = start_storescp(tmp_path / "received")
    yield tmp_path / "received", port
    stop_process(process)


def _job_done(node: RunningNode) -> bool:
    db = Database(f"sqlite:///{node.data_dir / 'index.sqlite'}")
    try:
        with db.session() as session:
            states = list(session.scalars(select(Job.state)))
    finally:
        db.dispose()
    if JobState.FAILED in states or JobState.DEAD in states:
        raise AssertionError(f"job ended {states}")
    return states == [JobState.DONE]


@pytest.mark.slow
@pytest.mark.parametrize("client", ["dicomweb-client", "curl"])
def test_a_series_posted_by_stow_is_stored_and_processed(
    tmp_path: Path, lidc_dir: Path, result_peer: tuple[Path, int], client: str
) -> None:
    received, port = result_peer
    files = sorted(lidc_dir.glob("*.dcm"))
    node = start_node(
        tmp_path / "node",
        destinations={"pacs": {"host": "127.0.0.1", "port": port, "ae_title": "STORESCP"}},
    )
    try:
        base = _http_base(node) + "/dicomweb"
        if client == "dicomweb-client":
            stored = DICOMwebClient(url=base).store_instances([pydicom.dcmread(f) for f in files])
            assert len(stored.ReferencedSOPSequence) == len(files)
        else:
            body = tmp_path / "body.multipart"
            body.write_bytes(multipart([f.read_bytes() for f in files]))
            curl = shutil.which("curl")
            if curl is None:
                pytest.fail("curl is not installed (make system-deps installs it)")
            result = subprocess.run(
                [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                 "-H", f"Content-Type: {MULTIPART}", "--data-binary", f"@{body}",
                 f"{base}/studies"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert result.stdout == "200", result.stderr
        wait_for(lambda: _job_done(node), timeout_s=240, interval_s=0.5, what="the job to finish")
        [seg] = [p for p in received.rglob("*") if p.is_file()]
        assert pydicom.dcmread(seg).Modality == "SEG"
    finally:
        stop_process(node.process)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_large_body_is_streamed_not_held(tmp_path: Path, lidc_dir: Path) -> None:
    """A 300 MB body raises the node's memory by a few tens of MB, not by its size."""
    template = pydicom.dcmread(sorted(lidc_dir.glob("*.dcm"))[0])
    template.Modality = "OT"  # routed by no rule: this measures ingest alone
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    node = start_node(tmp_path / "node", rules_file=str(rules), destinations={})
    count = 600  # x about 0.5 MB
    series = generate_uid()

    def parts() -> Iterator[bytes]:
        for _ in range(count):
            template.SeriesInstanceUID = series
            template.SOPInstanceUID = generate_uid()
            with pydicom.filebase.DicomBytesIO() as buffer:
                pydicom.dcmwrite(buffer, template, enforce_file_format=True)
                data = buffer.getvalue()
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield data
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb(node.process.pid))
            stop.wait(0.05)

    try:
        url = _http_base(node) + "/dicomweb/studies"
        with httpx.Client(timeout=300) as http:
            http.post(url, content=b"\r\n", headers={"content-type": MULTIPART})  # warm up
            baseline = _rss_kb(node.process.pid)
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                response = http.post(url, content=parts(), headers={"content-type": MULTIPART})
            finally:
                stop.set()
                sampler.join()
        assert response.status_code == 200
        assert len(response.json()[REFERENCED]["Value"]) == count
        db = Database(f"sqlite:///{node.data_dir / 'index.sqlite'}")
        with db.session() as session:
            assert session.scalar(select(func.count(Instance.id))) == count
        db.dispose()
    finally:
        stop_process(node.process)
    grown_mb = (peak[0] - baseline) / 1024
    assert grown_mb < 60, f"memory grew by {grown_mb:.0f} MB for a ~300 MB body"
