"""STOW-RS export against a real Orthanc with its DICOMweb plugin.

What Orthanc cannot do by itself (bearer tokens, a 5xx, a study-level STOW that it refuses, and
HTTPS: Debian's Orthanc 1.10.1 segfaults in civetweb on the first HTTPS request) is put in front
of it by a small reverse proxy on loopback (:class:`Gate`), which forwards the real requests and
relays Orthanc's real answers. Confirmation is checked by QIDO-RS on Orthanc.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from node.config import DicomwebDestination
from node.errors import PeerRejected, PeerUnreachable
from node.export.dicomweb import DicomwebExporter
from tests.peers import (
    DICOMWEB_PLUGIN,
    Orthanc,
    free_port,
    nodelay_env,
    port_open,
    start_node,
    start_orthanc,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.integration

TOKEN = "s3cret-bearer-token-for-tests"  # noqa: S105 - a throwaway token for a loopback proxy
OTHER_TOKEN = "another-token-entirely"  # noqa: S105 - likewise
USER, PASSWORD, WRONG = "node", "p4ssw0rd-for-tests", "wrong-password"


# --- peers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc with DICOMweb for the module, emptied after each test."""
    peer = start_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True)
    yield peer
    stop_process(peer.process)


@pytest.fixture
def pacs(orthanc: Orthanc) -> Iterator[Orthanc]:
    """The module's Orthanc, holding nothing when the test starts and after it ends."""
    _wipe(orthanc)
    yield orthanc
    _wipe(orthanc)


def _wipe(orthanc: Orthanc) -> None:
    for patient in orthanc.request("GET", "/patients"):
        orthanc.request("DELETE", f"/patients/{patient}")


def start_custom_orthanc(workdir: Path, **settings: Any) -> tuple[subprocess.Popen[bytes], int]:
    """An Orthanc with DICOMweb and extra ``settings``; return it and its HTTP port.

    For authentication: :func:`tests.peers.start_orthanc` waits for its REST API to answer
    without credentials, so it never sees an Orthanc that requires them as ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        **settings,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", f"--logfile={workdir / 'orthanc.log'}", str(workdir / "orthanc.json")],
        env=nodelay_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited; see {workdir / 'orthanc.log'}")
        return port_open(http_port) and port_open(dicom_port)

    try:
        wait_for(ready, timeout_s=30, what="Orthanc to listen")
    except BaseException:
        stop_process(process)
        raise
    return process, http_port


@dataclass
class Gate:
    """A reverse proxy in front of a DICOMweb service, for what Orthanc does not do itself.

    It records the Authorization header of every request; with ``token`` it answers 401 unless
    that bearer token is sent; with ``status`` it answers that status without forwarding; with
    ``rewrite`` it replaces one path by another before forwarding; with ``tls`` it serves HTTPS.
    """

    target: str
    token: str | None = None
    status: int | None = None
    rewrite: tuple[str, str] | None = None
    tls: ssl.SSLContext | None = None
    authorizations: list[str | None] = field(default_factory=list)
    port: int = 0


@contextmanager
def running_gate(gate: Gate) -> Iterator[Gate]:
    """Serve ``gate`` on a free loopback port until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self._body()
            gate.authorizations.append(self.headers.get("Authorization"))
            if gate.status is not None:
                self._answer(gate.status, "application/json", b"{}")
                return
            if (
                gate.token is not None
                and self.headers.get("Authorization") != f"Bearer {gate.token}"
            ):
                self._answer(401, "text/plain", b"unauthorized")
                return
            path = self.path
            if gate.rewrite is not None and path == gate.rewrite[0]:
                path = gate.rewrite[1]
            request = urllib.request.Request(  # noqa: S310 - loopback http only
                gate.target + path,
                data=body,
                method="POST",
                headers={k: v for k, v in self.headers.items() if k in ("Content-Type", "Accept")},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                    self._answer(response.status, response.headers["Content-Type"], response.read())
            except urllib.error.HTTPError as exc:
                self._answer(exc.code, exc.headers.get("Content-Type"), exc.read())

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)

        def _answer(self, status: int, content_type: str | None, payload: bytes) -> None:
            self.send_response(status)
            if content_type is not None:  # Orthanc sends its 409 answer without one
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if gate.tls is not None:
        server.socket = gate.tls.wrap_socket(server.socket, server_side=True)
    gate.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        server.shutdown()
        server.server_close()


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_and_seg(shared_data: Path) -> list[Path]:
    """A real 3-slice CT and the DICOM-SEG (dcmqi) that references it: one study."""
    folder = shared_data / "dcmqi" / "ct-3slice_with_SEG"
    return [*sorted((folder / "CT").glob("*.dcm")), folder / "SEG_liver.dcm"]


def exporter(url: str, timeout_s: float = 10, **auth: Any) -> DicomwebExporter:
    return DicomwebExporter("pacs", DicomwebDestination(url=url, **auth), timeout_s=timeout_s)


def stored_by_qido(url: str, paths: list[Path], **kwargs: Any) -> dict[str, int]:
    """SOP Instance UID → how many instances with it QIDO-RS finds in its series."""
    found: dict[str, int] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        response = requests.get(
            f"{url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            "/instances",
            headers={"Accept": "application/dicom+json"},
            timeout=30,
            **kwargs,
        )
        instances = response.json() if response.status_code == 200 and response.content else []
        found[ds.SOPInstanceUID] = sum(
            1 for item in instances if item["00080018"]["Value"][0] == ds.SOPInstanceUID
        )
    return found


# --- tests --------------------------------------------------------------------------------------


def test_ct_and_seg_are_stored_and_found_by_qido(pacs: Orthanc, ct_and_seg: list[Path]) -> None:
    exporter(pacs.url + "/dicom-web").send(ct_and_seg)
    assert stored_by_qido(pacs.url, ct_and_seg) == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: 1 for p in ct_and_seg
    }


def test_sending_again_keeps_one_copy(pacs: Orthanc, ct_and_seg: list[Path]) -> None:
    web = exporter(pacs.url + "/dicom-web/")  # a trailing slash is fine
    web.send(ct_and_seg)
    web.send(ct_and_seg)
    assert set(stored_by_qido(pacs.url, ct_and_seg).values()) == {1}
    assert pacs.request("GET", "/statistics")["CountInstances"] == len(ct_and_seg)


def test_large_request_goes_chunked_and_is_confirmed(pacs: Orthanc, lidc_dir: Path) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))[:6]  # about 3 MB: over dicomweb-client's 1 MB chunk
    exporter(pacs.url + "/dicom-web").send(files)
    assert set(stored_by_qido(pacs.url, files).values()) == {1}


def test_wrong_path_is_rejected_at_once(pacs: Orthanc, ct_and_seg: list[Path]) -> None:
    started = time.monotonic()
    with pytest.raises(PeerRejected, match="HTTP 404") as caught:
        exporter(pacs.url + "/not-dicom-web").send(ct_and_seg[:1])
    assert caught.value.status == 404
    assert time.monotonic() - started < 5  # no retries inside the exporter
    assert pacs.request("GET", "/statistics")["CountInstances"] == 0


def test_closed_port_is_unreachable(ct_and_seg: list[Path]) -> None:
    with pytest.raises(PeerUnreachable, match="could not be reached"):
        exporter(f"http://127.0.0.1:{free_port()}/dicom-web").send(ct_and_seg[:1])


def test_server_errors_and_throttling_are_retryable(ct_and_seg: list[Path]) -> None:
    for status in (503, 500, 429, 408):
        with (
            running_gate(Gate(target="http://127.0.0.1:1", status=status)) as gate,
            pytest.raises(PeerUnreachable, match=f"HTTP {status}"),
        ):
            exporter(f"http://127.0.0.1:{gate.port}/dicom-web").send(ct_and_seg[:1])


def test_a_silent_server_times_out_as_unreachable(ct_and_seg: list[Path]) -> None:
    import socket

    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match="timed out"):
            exporter(f"http://127.0.0.1:{port}/dicom-web", timeout_s=1).send(ct_and_seg[:1])
        assert time.monotonic() - started < 10


def test_failed_sop_sequence_is_a_refusal_with_its_reason(
    pacs: Orthanc, ct_and_seg: list[Path]
) -> None:
    # Orthanc refuses instances posted to another study's URL: HTTP 409, FailedSOPSequence,
    # FailureReason 0x0110. The gate turns our POST /studies into POST /studies/1.2.3.
    gate = Gate(target=pacs.url, rewrite=("/dicom-web/studies", "/dicom-web/studies/1.2.3"))
    with running_gate(gate), pytest.raises(PeerRejected, match="0x0110") as caught:
        exporter(f"http://127.0.0.1:{gate.port}/dicom-web").send(ct_and_seg[:2])
    assert caught.value.status == 0x0110
    assert "refused 2 of 2" in str(caught.value)


def test_a_200_that_lists_nothing_is_not_a_confirmation(
    pacs: Orthanc, ct_and_seg: list[Path], tmp_path: Path
) -> None:
    # Orthanc answers 200 with empty sequences to an instance without a SOP Instance UID.
    ds = pydicom.dcmread(ct_and_seg[0])
    ds.SOPInstanceUID = ""
    ds.save_as(tmp_path / "no-uid.dcm")
    with pytest.raises(PeerRejected, match="without confirming 1 of 1") as caught:
        exporter(pacs.url + "/dicom-web").send([tmp_path / "no-uid.dcm"])
    assert caught.value.status == 0


def test_bearer_token_is_sent(pacs: Orthanc, ct_and_seg: list[Path]) -> None:
    with running_gate(Gate(target=pacs.url, token=TOKEN)) as gate:
        url = f"http://127.0.0.1:{gate.port}/dicom-web"
        exporter(url, token=TOKEN).send(ct_and_seg)
        with pytest.raises(PeerRejected, match="HTTP 401") as caught:
            exporter(url, token=OTHER_TOKEN).send(ct_and_seg)
    assert gate.authorizations == [f"Bearer {TOKEN}", f"Bearer {OTHER_TOKEN}"]
    assert caught.value.status == 401
    assert TOKEN not in str(caught.value)
    assert OTHER_TOKEN not in str(caught.value)
    assert set(stored_by_qido(pacs.url, ct_and_seg).values()) == {1}


def test_basic_auth_against_orthanc_users(tmp_path: Path, ct_and_seg: list[Path]) -> None:
    process, port = start_custom_orthanc(
        tmp_path / "orthanc-auth",
        AuthenticationEnabled=True,
        RegisteredUsers={USER: PASSWORD},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(PeerRejected, match="HTTP 401") as anonymous:
            exporter(url + "/dicom-web").send(ct_and_seg)
        with pytest.raises(PeerRejected, match="HTTP 401") as wrong:
            exporter(url + "/dicom-web", username=USER, password=WRONG).send(ct_and_seg)
        exporter(url + "/dicom-web", username=USER, password=PASSWORD).send(ct_and_seg)
        stored = stored_by_qido(url, ct_and_seg, auth=(USER, PASSWORD))
    finally:
        stop_process(process)
    assert anonymous.value.status == wrong.value.status == 401
    assert PASSWORD not in str(wrong.value)
    assert WRONG not in str(wrong.value)
    assert set(stored.values()) == {1}


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, made by openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out",
            "server.crt", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        cwd=folder, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return folder / "server.crt", folder / "server.key"


def test_https_is_verified_against_the_configured_ca(
    pacs: Orthanc, tmp_path: Path, ct_and_seg: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = _self_signed(tmp_path / "tls")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, key)
    # requests would let this variable win over a session's CA file; the exporter must not.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    with running_gate(Gate(target=pacs.url, tls=tls)) as gate:
        url = f"https://127.0.0.1:{gate.port}/dicom-web"
        with pytest.raises(PeerRejected, match="certificate is not trusted"):
            exporter(url).send(ct_and_seg)  # the system's CAs do not know ours
        assert gate.authorizations == []  # refused before any request went out
        exporter(url, ca_certificates=certificate).send(ct_and_seg)
    assert set(stored_by_qido(pacs.url, ct_and_seg).values()) == {1}


@pytest.mark.slow
def test_the_node_delivers_its_seg_by_stow_rs(
    pacs: Orthanc, lidc_dir: Path, tmp_path: Path
) -> None:
    # The whole node: Orthanc pushes the chest CT by C-STORE, the SEG comes back by STOW-RS.
    node = start_node(
        tmp_path / "node",
        allowed_calling_ae_titles=[pacs.ae_title],
        destinations={"pacs": {"kind": "dicomweb", "url": f"{pacs.url}/dicom-web"}},
    )
    try:
        files = sorted(lidc_dir.glob("*.dcm"))
        series = pacs.push_to_node(files, ae_title=node.ae_title, port=node.dicom_port)
        wait_for(
            lambda: bool(pacs.seg_series(series["ParentStudy"])),
            timeout_s=240,
            interval_s=0.5,
            what=f"a SEG in Orthanc (node log: {node.log_path})",
        )
        wait_for(
            lambda: "job.done" in node.log_path.read_text(),
            timeout_s=30,
            what="the job to be done",
        )
        shown = node.cli("jobs", "show", "1")
    finally:
        stop_process(node.process)
    [seg] = pacs.seg_series(series["ParentStudy"])
    assert len(seg["Instances"]) == 1
    assert "pacs: confirmed" in shown.stdout
