"""The Triton backend when no Triton answers: real sockets on loopback, no server needed.

The tests against a real tritonserver are in ``tests/integration/test_triton.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from node.backends import TorchBackend, TritonBackend, build_backend
from node.config import InferenceSettings, Settings
from node.errors import BackendUnavailable, ModelNotFound
from tests.peers import free_port

INPUTS = {"image": np.zeros((1, 1, 256, 256), np.float32)}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_nothing_listening_is_unavailable_at_once(protocol: str) -> None:
    url = f"127.0.0.1:{free_port()}"
    backend = TritonBackend(url, protocol=protocol, timeout_s=10)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unavailable") as caught:
        backend.infer("lung_seg", "1", INPUTS)
    assert time.monotonic() - started < 2  # refused: no need to wait for the timeout
    assert url in str(caught.value)
    assert protocol in str(caught.value)
    backend.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_hung_server_is_unavailable_after_the_timeout(protocol: str, silent_port: int) -> None:
    backend = TritonBackend(f"127.0.0.1:{silent_port}", protocol=protocol, timeout_s=1.0)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.infer("lung_seg", "1", INPUTS)
    assert time.monotonic() - started < 5
    backend.close()


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_names_that_are_no_folder_are_not_found_without_asking(name: str) -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}")
    with pytest.raises(ModelNotFound):
        backend.infer(name, "1", INPUTS)
    with pytest.raises(ModelNotFound):
        backend.infer("lung_seg", name, INPUTS)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="protocol"):
        TritonBackend("127.0.0.1:8001", protocol="ftp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        TritonBackend("127.0.0.1:8001", timeout_s=0)


def test_settings_pick_the_backend(tmp_path: Path) -> None:
    embedded = build_backend(Settings(model_repository=tmp_path))
    assert isinstance(embedded, TorchBackend)
    assert embedded.repository == tmp_path
    triton = build_backend(
        Settings(
            inference=InferenceSettings(
                backend="triton", triton_url="triton.example:8001", triton_protocol="http"
            )
        )
    )
    assert isinstance(triton, TritonBackend)
    assert (triton.url, triton.protocol, triton.timeout_s) == ("triton.example:8001", "http", 120)
