"""The node's security and availability against real peers: called AE title, DICOM TLS with dcmtk,
the HTTP API token, and the free-disk watermark.

Certificates are throwaway ones made by ``openssl`` for each test session (EC P-256).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select
from structlog.testing import capture_logs

from node.api.app import HttpServer, create_app
from node.export.requestor import answers_only_to_caller
from node.ingest.dimse import STATUS_OUT_OF_RESOURCES, DimseListener
from node.ingest.tls import server_context
from node.logging import ALLOWED_KEYS
from node.store.database import Database
from node.store.models import Instance
from tests.peers import free_port, nodelay_env, port_open, running_listener, storescu, wait_for

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def instance_count(listener: DimseListener) -> int:
    with listener.store.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def echo(port: int, *args: str, called: str = "AINODE") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aec", called, *args, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=nodelay_env(),
        check=False,
    )


def assert_no_phi(events: list[dict[str, Any]]) -> None:
    """Only allow-listed keys; no raw UID of the test data in any value."""
    for event in events:
        assert set(event) <= ALLOWED_KEYS | {"log_level"}, event
        assert "1.3.6.1.4.1.14519" not in repr(event), event


# --- called AE title -------------------------------------------------------------------------


def test_wrong_called_ae_title_is_rejected_and_logged(tmp_path: Path) -> None:
    with running_listener(tmp_path) as listener, capture_logs() as logs:
        refused = echo(listener.port, called="SOMEONE_ELSE")
        assert refused.returncode != 0
        assert "called ae title not recognized" in (refused.stdout + refused.stderr).lower()
        assert echo(listener.port).returncode == 0
    [rejected] = [e for e in logs if e["event"] == "association.rejected"]
    assert rejected["called_ae"] == "SOMEONE_ELSE"
    assert rejected["reason"] == "called AE title is not this node's"


def test_called_ae_title_check_can_be_turned_off(tmp_path: Path) -> None:
    with running_listener(tmp_path, require_called_ae_title=False) as listener:
        assert echo(listener.port, called="ANY_TITLE").returncode == 0


# --- DICOM TLS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _key_and_csr(name: str, subject: str, cwd: Path) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd,
    )  # fmt: skip


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        cwd=cwd,
    )  # fmt: skip


def _sign(name: str, ca: str, serial: int, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-set_serial", str(serial), "-out", f"{name}.crt", "-days", "2",
        "-extfile", f"{name}.ext", cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    _ca("test-ca", folder)
    _ca("rogue-ca", folder)
    _key_and_csr("server", "/CN=localhost", folder)
    _sign("server", "test-ca", 2, "subjectAltName=IP:127.0.0.1,DNS:localhost\n", folder)
    _key_and_csr("client", "/CN=SENDER", folder)
    _sign("client", "test-ca", 3, "extendedKeyUsage=clientAuth\n", folder)
    _key_and_csr("rogue", "/CN=SENDER", folder)
    _sign("rogue", "rogue-ca", 4, "extendedKeyUsage=clientAuth\n", folder)
    return Certificates(
        folder / "test-ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
        folder / "rogue.crt",
        folder / "rogue.key",
    )


@contextmanager
def tls_listener(
    tmp_path: Path, certificates: Certificates, *, require_client_certificate: bool = False
) -> Iterator[DimseListener]:
    context = server_context(
        certificate=certificates.server_cert,
        private_key=certificates.server_key,
        ca_certificates=certificates.ca,
        require_client_certificate=require_client_certificate,
    )
    with running_listener(tmp_path, tls_port=free_port(), ssl_context=context) as listener:
        yield listener


def storescu_tls(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return storescu(port, files, extra=tls)


def test_storescu_over_tls_stores_and_plain_port_keeps_serving(
    tmp_path: Path, certificates: Certificates, lidc_dir: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))[:3]
    with tls_listener(tmp_path, certificates) as listener:
        assert listener.tls_port is not None
        # +tla: no client certificate; +cf: trust the test CA for the server's certificate.
        sent = storescu_tls(listener.tls_port, files, "+tla", "+cf", str(certificates.ca))
        assert sent.returncode == 0, sent.stderr
        assert instance_count(listener) == 3
        assert storescu(listener.port, files[:1]).returncode == 0


def test_plain_client_on_the_tls_port_fails_and_an_idle_one_blocks_nobody(
    tmp_path: Path, certificates: Certificates, lidc_dir: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))[:1]
    with tls_listener(tmp_path, certificates) as listener, capture_logs() as logs:
        assert listener.tls_port is not None
        plain = echo(listener.tls_port)
        assert plain.returncode != 0
        # A client that connects and never speaks: pynetdicom's own TLS server would wait for
        # its handshake in the accept loop, and every other TLS client would hang behind it.
        with socket.create_connection(("127.0.0.1", listener.tls_port)):
            sent = storescu_tls(listener.tls_port, files, "+tla", "+cf", str(certificates.ca))
            assert sent.returncode == 0, sent.stderr
        assert instance_count(listener) == 1
    failed = [e for e in logs if e["event"] == "tls.handshake_failed"]
    assert any(e["error"] == "WRONG_VERSION_NUMBER" for e in failed), failed
    assert_no_phi(logs)


def test_client_certificate_required(
    tmp_path: Path, certificates: Certificates, lidc_dir: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))[:1]
    ca = str(certificates.ca)
    with (
        tls_listener(tmp_path, certificates, require_client_certificate=True) as listener,
        capture_logs() as logs,
    ):
        assert listener.tls_port is not None
        anonymous = storescu_tls(listener.tls_port, files, "+tla", "+cf", ca)
        assert anonymous.returncode != 0
        rogue = storescu_tls(
            listener.tls_port,
            files,
            "+tls",
            str(certificates.rogue_key),
            str(certificates.rogue_cert),
            "+cf",
            ca,
        )
        assert rogue.returncode != 0
        assert instance_count(listener) == 0
        trusted = storescu_tls(
            listener.tls_port,
            files,
            "+tls",
            str(certificates.client_key),
            str(certificates.client_cert),
            "+cf",
            ca,
        )
        assert trusted.returncode == 0, trusted.stderr
        assert instance_count(listener) == 1
    errors = {e["error"] for e in logs if e["event"] == "tls.handshake_failed"}
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in errors
    assert "CERTIFICATE_VERIFY_FAILED" in errors


def test_tls_configuration_errors_name_the_key(tmp_path: Path, certificates: Certificates) -> None:
    from node.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        server_context(certificate=certificates.server_cert, private_key=certificates.client_key)
    assert caught.value.key == "tls.certificate"
    with pytest.raises(ConfigError) as caught:
        server_context(
            certificate=certificates.server_cert,
            private_key=certificates.server_key,
            ca_certificates=tmp_path / "missing.pem",
        )
    assert caught.value.key == "tls.ca_certificates"


# --- HTTP API token --------------------------------------------------------------------------

TOKEN = "test-token-5f1c9a0e"  # noqa: S105


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    database.create_schema()
    yield database
    database.dispose()


def test_api_token_guards_every_path_but_health(db: Database) -> None:
    client = TestClient(create_app(db, api_token=SecretStr(TOKEN)))
    assert client.get("/health").status_code == 200
    for path in ("/jobs", "/jobs/1", "/no-such-path", "/docs", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/health").status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/jobs", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    good = client.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200
    assert good.json() == []
    assert client.get("/jobs/7", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 404
    assert TOKEN not in client.get("/jobs", headers={"Authorization": "Bearer x"}).text


def test_api_without_token_is_open_and_says_so(db: Database) -> None:
    assert TestClient(create_app(db)).get("/jobs").status_code == 200
    port = free_port()
    with capture_logs() as logs:
        server = HttpServer(db, host="127.0.0.1", port=port)
        server.start()
        try:
            wait_for(lambda: port_open(port), timeout_s=10, what="the HTTP API")
        finally:
            server.stop()
    assert [e["http_port"] for e in logs if e["event"] == "api.open"] == [port]


def test_api_token_over_http_and_never_logged(db: Database) -> None:
    import httpx

    port = free_port()
    with capture_logs() as logs:
        server = HttpServer(db, host="127.0.0.1", port=port, api_token=SecretStr(TOKEN))
        server.start()
        try:
            wait_for(lambda: port_open(port), timeout_s=10, what="the HTTP API")
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/jobs").status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert httpx.get(f"{base}/jobs", headers=auth).status_code == 200
        finally:
            server.stop()
    assert not [e for e in logs if e["event"] == "api.open"]
    assert TOKEN not in repr(logs)


def test_secrets_stay_out_of_config_show_and_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from node.admin.cli import app

    monkeypatch.setenv("NODE_API_TOKEN", TOKEN)
    config = tmp_path / "node.yaml"
    config.write_text("ae_title: AINODE\n")
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert TOKEN not in shown.output
    assert '"api_token": "**********"' in shown.output
    for command in ([], ["serve"], ["config", "show"], ["jobs", "list"]):
        helped = CliRunner().invoke(app, [*command, "--help"])
        assert TOKEN not in helped.output


# --- free-disk watermark ---------------------------------------------------------------------


class FakeDisk:
    """A free-space probe a test turns down and up."""

    def __init__(self, free_bytes: int) -> None:
        self.free_bytes = free_bytes

    def __call__(self) -> int:
        return self.free_bytes


def test_low_disk_rejects_new_associations_transiently_and_keeps_what_is_stored(
    tmp_path: Path, lidc_dir: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))[:4]
    disk = FakeDisk(10_000 * MB)
    with (
        running_listener(tmp_path, min_free_disk_bytes=1024 * MB, free_disk_bytes=disk) as listener,
        capture_logs() as logs,
    ):
        assert storescu(listener.port, files[:2]).returncode == 0
        stored = sorted((tmp_path / "spool" / "instances").rglob("*.dcm"))
        before = {p: p.read_bytes() for p in stored}

        disk.free_bytes = 100 * MB
        refused = storescu(listener.port, files[2:])
        assert refused.returncode != 0
        output = (refused.stdout + refused.stderr).lower()
        assert "rejected transient" in output
        assert "temporary congestion" in output
        assert echo(listener.port).returncode == 0  # C-ECHO stores nothing: still answered
        assert instance_count(listener) == 2
        assert {p: p.read_bytes() for p in stored} == before  # nothing stored is touched

        disk.free_bytes = 2000 * MB
        assert storescu(listener.port, files[2:]).returncode == 0
        assert instance_count(listener) == 4
    [low] = [e for e in logs if e["event"] == "ingest.disk_low"]
    assert (low["free_mb"], low["min_free_mb"], low["calling_ae"]) == (100, 1024, "STORESCU")
    assert low["log_level"] == "warning"
    assert_no_phi(logs)


def test_disk_filling_during_an_association_answers_out_of_resources(
    tmp_path: Path, lidc_dir: Path
) -> None:
    first, second = (pydicom.dcmread(p) for p in sorted(lidc_dir.glob("*.dcm"))[:2])
    disk = FakeDisk(10_000 * MB)
    with (
        running_listener(tmp_path, min_free_disk_bytes=1024 * MB, free_disk_bytes=disk) as listener,
        capture_logs() as logs,
    ):
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(CTImageStorage, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AINODE")
        assert assoc.is_established
        answers_only_to_caller(assoc)
        try:
            assert assoc.send_c_store(first).Status == 0x0000
            disk.free_bytes = 5 * MB
            response = assoc.send_c_store(second)
            assert response.Status == STATUS_OUT_OF_RESOURCES
            assert "min_free_disk_mb" in response.ErrorComment
        finally:
            assoc.release()
        assert instance_count(listener) == 1
    assert [e["reason"] for e in logs if e["event"] == "ingest.disk_low"] == [
        "store refused (0xA700)"
    ]
    assert_no_phi(logs)


def test_watermark_with_the_real_free_space_probe(tmp_path: Path, lidc_dir: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    watermark = free + 1024 * 1024 * MB  # a TiB more than there is
    with (
        running_listener(tmp_path, min_free_disk_bytes=watermark) as listener,
        capture_logs() as logs,
    ):
        refused = storescu(listener.port, sorted(lidc_dir.glob("*.dcm"))[:1])
        assert refused.returncode != 0
        assert "temporary congestion" in (refused.stdout + refused.stderr).lower()
        assert instance_count(listener) == 0
        # A pynetdicom sender sees the same: rejected, transient.
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AINODE")
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (2, 1)
    [low] = [e for e in logs if e["event"] == "ingest.disk_low"][:1]
    assert abs(low["free_mb"] - free // MB) < 1024  # the real figure, give or take other writers


# --- all of it, wired by the service ---------------------------------------------------------


@pytest.mark.slow
def test_node_serves_tls_guards_its_api_and_watches_its_disk(
    tmp_path: Path, certificates: Certificates, lidc_dir: Path
) -> None:
    """``pacs-ai-node serve`` with TLS (client certificates required), an API token, and a disk
    watermark above the free space: C-ECHO over TLS works with a client certificate, stores are
    rejected as transient, the API wants the token, and the token is nowhere in the log."""
    import shutil

    import httpx

    from tests.peers import start_node, stop_process

    tls_port = free_port()
    free_mb = shutil.disk_usage(tmp_path).free // MB
    node = start_node(
        tmp_path,
        tls={
            "port": tls_port,
            "certificate": str(certificates.server_cert),
            "private_key": str(certificates.server_key),
            "ca_certificates": str(certificates.ca),
            "require_client_certificate": True,
        },
        api_token=TOKEN,
        min_free_disk_mb=free_mb + 1024 * 1024,
        destinations={"pacs": {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}},
    )
    try:
        wait_for(lambda: port_open(tls_port), timeout_s=30, what="the TLS port")
        client_tls = ("+tls", str(certificates.client_key), str(certificates.client_cert))
        tls_echo = echo(tls_port, *client_tls, "+cf", str(certificates.ca))
        assert tls_echo.returncode == 0, tls_echo.stderr
        assert echo(tls_port, "+tla", "+cf", str(certificates.ca)).returncode != 0
        refused = storescu(node.dicom_port, sorted(lidc_dir.glob("*.dcm"))[:1])
        assert "temporary congestion" in (refused.stdout + refused.stderr).lower()

        config = node.config_path.read_text()
        http_port = int(config.split("http_port:")[1].split()[0])
        base = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: port_open(http_port), timeout_s=30, what="the HTTP API")
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/jobs").status_code == 401
        assert httpx.get(f"{base}/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json() == []
    finally:
        stop_process(node.process)
    log = node.log_path.read_text()
    assert '"dimse.listening_tls"' in log
    assert '"ingest.disk_low"' in log
    assert '"api.open"' not in log
    assert TOKEN not in log


def test_associations_beyond_the_limit_are_rejected_transiently(tmp_path: Path) -> None:
    with running_listener(tmp_path, max_associations=1) as listener, capture_logs() as logs:
        # Port probes (a load balancer's TCP check) are not associations: pynetdicom alone would
        # count each against the limit for 30 s.
        for _ in range(3):
            socket.create_connection(("127.0.0.1", listener.port)).close()
        assert echo(listener.port).returncode == 0
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", listener.port, ae_title="AINODE")
        assert held.is_established
        try:
            refused = echo(listener.port)
            assert refused.returncode != 0
            assert "local limit exceeded" in (refused.stdout + refused.stderr).lower()
        finally:
            held.release()
        wait_for(lambda: echo(listener.port).returncode == 0, timeout_s=10, what="a free slot")
    assert [e["reason"] for e in logs if e["event"] == "association.rejected"] == [
        "too many associations"
    ]
