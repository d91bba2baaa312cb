"""Real peers for tests: Orthanc, dcmtk's storescp, and the node itself as a subprocess.

Each is started on 127.0.0.1 on free ports with its own folders, waited for with a deadline, and
stopped by PID. Debian's dcmtk and Orthanc get ``TCP_NODELAY=1`` in their environment (without it
they stall about 45 ms per instance).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE

from node.export.requestor import answers_only_to_caller
from node.ingest.dimse import DimseListener
from node.store.database import Database
from node.store.spool import Spool

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; always reaps the child."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_started(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], *, timeout_s: float, what: str
) -> None:
    """Wait until ``ready``; on failure or time-out stop ``process`` and re-raise."""
    try:
        wait_for(ready, timeout_s=timeout_s, what=what)
    except BaseException:
        stop_process(process)
        raise


def start_storescp(
    out: Path, *, ae_title: str = "STORESCP", port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start dcmtk's storescp writing what it receives into ``out``; return it and its port."""
    port = port or free_port()
    out.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-aet", ae_title, "--output-directory", str(out), str(port)],
        env=nodelay_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_started(process, lambda: port_open(port), timeout_s=20, what="storescp")
    return process, port


@contextmanager
def running_listener(
    tmp_path: Path, *, ae_title: str = "AINODE", allowed: list[str] | None = None, **options: Any
) -> Iterator[DimseListener]:
    """The node's DICOM listener in this process, on a free port, over a fresh spool and index.

    ``options`` go to :class:`DimseListener` (TLS, disk watermark, limits, ...).
    """
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    db.create_schema()
    listener = DimseListener(
        ae_title=ae_title,
        bind_address="127.0.0.1",
        port=free_port(),
        spool=Spool(tmp_path / "spool"),
        db=db,
        allowed_calling_ae_titles=allowed or [],
        **options,
    )
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()
        db.dispose()


def c_store(port: int, ds: Dataset, *, called: str = "AINODE") -> int:
    """Send one dataset with a pynetdicom SCU (for what storescu cannot send); return the status."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"no association with 127.0.0.1:{port}")
    answers_only_to_caller(assoc)
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def nodelay_env() -> dict[str, str]:
    """The environment for Debian's dcmtk and Orthanc, with Nagle's algorithm off."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Orthanc:
    """A running Orthanc with its REST API on ``http_port`` and DICOM on ``dicom_port``."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    ae_title: str
    log_path: Path

    @property
    def url(self) -> str:
        """The REST API's root."""
        return f"http://127.0.0.1:{self.http_port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        timeout_s: float = 120,
    ) -> Any:
        """Call the REST API; JSON in and out (``raw`` sends bytes as they are)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            payload = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(payload)
        return payload

    def upload(self, paths: list[Path]) -> list[str]:
        """Store files through the REST API; return their Orthanc instance ids."""
        return [self.request("POST", "/instances", raw=p.read_bytes())["ID"] for p in paths]

    def add_modality(self, name: str, *, ae_title: str, port: int) -> None:
        """Declare a DICOM modality (the node) that Orthanc may send to."""
        self.request(
            "PUT", f"/modalities/{name}", {"AET": ae_title, "Host": "127.0.0.1", "Port": port}
        )

    def as_destination(self) -> dict[str, dict[str, Any]]:
        """The node's ``destinations`` setting that sends results here, as ``pacs``."""
        return {"pacs": {"host": "127.0.0.1", "port": self.dicom_port, "ae_title": self.ae_title}}

    def push_to_node(self, paths: list[Path], *, ae_title: str, port: int) -> dict[str, Any]:
        """Upload ``paths`` (one series) and have Orthanc C-STORE it to the node, as a PACS
        routing rule would; return Orthanc's series resource (``ID``, ``ParentStudy``, ...)."""
        ids = self.upload(paths)
        series: dict[str, Any] = self.request("GET", f"/instances/{ids[0]}/series")
        self.add_modality("ainode", ae_title=ae_title, port=port)
        self.request(
            "POST", "/modalities/ainode/store", {"Resources": [series["ID"]], "Synchronous": True}
        )
        return series

    def seg_series(self, study_id: str) -> list[dict[str, Any]]:
        """The SEG series Orthanc holds in a study."""
        found: list[dict[str, Any]] = self.request("GET", f"/studies/{study_id}/series")
        return [s for s in found if s["MainDicomTags"].get("Modality") == "SEG"]


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def start_orthanc(
    workdir: Path,
    *,
    ae_title: str = "ORTHANC",
    dicomweb: bool = False,
    http_port: int | None = None,
    dicom_port: int | None = None,
    accept_unknown_senders: bool = True,
    plugins: list[Path] | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> Orthanc:
    """Start Debian's Orthanc with its own storage under ``workdir`` (and DICOMweb if asked).

    ``plugins`` are loaded besides DICOMweb; ``config_overrides`` replace or add top-level keys
    of the configuration last (e.g. the shipped ``deploy/orthanc`` settings).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = http_port or free_port(), dicom_port or free_port()
    config = {
        "Name": "test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": accept_unknown_senders,
        "DicomModalities": {},
        "Plugins": ([str(DICOMWEB_PLUGIN)] if dicomweb else []) + [str(p) for p in plugins or []],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "StableAge": 2,
        "SyncStorageArea": True,
    }
    config.update(config_overrides or {})
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "orthanc.log"
    process = subprocess.Popen(
        ["Orthanc", f"--logfile={log_path}", str(config_path)],
        env=nodelay_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    orthanc = Orthanc(process, http_port, dicom_port, ae_title, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}; see {log_path}")
        try:
            orthanc.request("GET", "/system", timeout_s=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return port_open(dicom_port)

    _wait_started(process, ready, timeout_s=30, what="Orthanc to answer")
    return orthanc


@dataclass
class RunningNode:
    """The node running as a subprocess (``pacs-ai-node serve``)."""

    process: subprocess.Popen[bytes]
    config_path: Path
    data_dir: Path
    dicom_port: int
    ae_title: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``pacs-ai-node ARGS --config <this node's config>``."""
        return subprocess.run(
            [sys.executable, "-m", "node.admin.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env=self.env,
            check=False,
        )


def write_node_config(workdir: Path, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """Write a node configuration for tests under ``workdir``; return its path and values."""
    config: dict[str, Any] = {
        "ae_title": "AINODE",
        "dicom_port": free_port(),
        "http_port": free_port(),
        "bind_address": "127.0.0.1",
        "data_dir": str(workdir / "data"),
        "rules_file": str(REPO_ROOT / "deploy" / "rules.yaml"),
        "model_repository": str(REPO_ROOT / "model_repository"),
        "quiet_period_s": 1.0,
        "torch_threads": 2,
        "log_format": "json",
        "export": {"backoff_initial_s": 0.5, "backoff_max_s": 2.0, "timeout_s": 10},
    }
    config.update(overrides)
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def start_node(workdir: Path, **overrides: Any) -> RunningNode:
    """Start ``pacs-ai-node serve`` with a test configuration; wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, config = write_node_config(workdir, **overrides)
    return launch_node(config_path, config, workdir / "node.log")


def restart_node(node: RunningNode) -> RunningNode:
    """Start the node again on the same configuration, spool and index."""
    stop_process(node.process)
    config = yaml.safe_load(node.config_path.read_text())
    return launch_node(node.config_path, config, node.log_path)


def launch_node(
    config_path: Path,
    config: dict[str, Any],
    log_path: Path,
    *,
    extra_env: dict[str, str] | None = None,
    may_die: bool = False,
) -> RunningNode:
    """Run ``pacs-ai-node serve --config config_path``; wait until its DICOM port answers.

    With ``may_die`` (crash tests), a node that kills itself while starting is returned as it is.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
    env.update(extra_env or {})
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "node.admin.cli", "serve", "--config", str(config_path)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = RunningNode(
        process,
        config_path,
        Path(config["data_dir"]),
        config["dicom_port"],
        config["ae_title"],
        log_path,
        env,
    )

    def ready() -> bool:
        if process.poll() is not None:
            if may_die:
                return True
            raise RuntimeError(
                f"node exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        return port_open(node.dicom_port)

    _wait_started(process, ready, timeout_s=60, what="the node's DICOM port")
    return node


def storescu(
    port: int,
    paths: list[Path],
    *,
    called: str = "AINODE",
    calling: str = "STORESCU",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu to 127.0.0.1:``port``."""
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            called,
            *extra,
            "127.0.0.1",
            str(port),
            *[str(p) for p in paths],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=nodelay_env(),
        check=False,
    )


def require_tool(name: str) -> str:
    """The path of a system tool the Makefile installs; fail (never skip) if it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH: run `make test`, which installs it")
    return path
