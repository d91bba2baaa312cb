"""A real Triton Inference Server for tests: the tritonserver of the nvidia-pytriton wheel.

:func:`start_triton` runs ``deploy/triton/start-local.sh`` (what ``make triton`` runs) on free
loopback ports, in explicit model-control mode, over the environment ``make triton-deps``
installs under ``.cache/triton/``, and waits until the server is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import REPO_ROOT, free_port, wait_for

START_SCRIPT = REPO_ROOT / "deploy" / "triton" / "start-local.sh"
TRITON_HOME = Path(os.environ.get("TRITON_HOME", REPO_ROOT / ".cache" / "triton"))


def triton_missing() -> str | None:
    """Why no local Triton can start here (``make triton-deps`` was not run), or None."""
    python = TRITON_HOME / "venv" / "bin" / "python"
    if not python.is_file():
        return f"no Triton environment at {TRITON_HOME / 'venv'} (run 'make triton-deps')"
    return None


def require_triton() -> None:
    """Skip the calling test when no local Triton can start; in CI (``CI`` set), fail it:
    ``make test`` installs Triton, so its absence there is a broken install."""
    reason = triton_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; `make test` installs it", pytrace=False)
    pytest.skip(reason)


@dataclass
class Triton:
    """A running tritonserver on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: Path
    log_path: Path

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint."""
        return f"127.0.0.1:{self.http_port}"

    def is_ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200."""
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL: a server stuck on a model load ignores SIGTERM."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_triton(
    repository: Path,
    workdir: Path,
    *,
    grpc_port: int | None = None,
    timeout_s: float = 60.0,
    extra: tuple[str, ...] = (),
) -> Triton:
    """Start tritonserver on ``repository`` (explicit model control, nothing loaded).

    Parameters
    ----------
    repository
        The model repository to serve.
    workdir
        Where the server's log goes (``triton.log``).
    grpc_port
        The gRPC port to listen on (a free one by default); HTTP and metrics get free ones.
    timeout_s
        Longest wait for the server to be ready.
    extra
        More tritonserver options (``--load-model=NAME``, ``--log-verbose=1``, ...).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {"http": free_port(), "grpc": grpc_port or free_port(), "metrics": free_port()}
    env = {
        **os.environ,
        "TRITON_HOME": str(TRITON_HOME),
        "TRITON_REPOSITORY": str(repository),
        "TRITON_HTTP_PORT": str(ports["http"]),
        "TRITON_GRPC_PORT": str(ports["grpc"]),
        "TRITON_METRICS_PORT": str(ports["metrics"]),
    }
    log_path = workdir / "triton.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(START_SCRIPT), *extra], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    triton = Triton(process, ports["http"], ports["grpc"], ports["metrics"], repository, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"tritonserver exited with {process.returncode}:\n{triton.log_tail()}"
            )
        return triton.is_ready()

    try:
        wait_for(ready, timeout_s=timeout_s, what="tritonserver to be ready")
    except BaseException:
        triton.stop()
        raise
    return triton
