"""The Triton backend: runs model repository entries on a Triton Inference Server.

The server runs in explicit model-control mode (``--model-control-mode=explicit``): a model is
loaded the first time a job asks for it, and again after Triton restarts (a restarted server has
nothing loaded). The node talks gRPC by default, HTTP as an option; both through ``tritonclient``
(extra ``triton``), imported on first use so that the rest of the node imports without it.

Errors, as the job runner treats them:

- :class:`~node.errors.BackendUnavailable` (the job waits and is retried with backoff): nothing
  answers at the URL, the connection broke, or a request or a load timed out.
- :class:`~node.errors.ModelNotFound` (the job fails at once): the server's repository has no
  such model, or the loaded model has no such version.
- :class:`~node.errors.BackendError` (the job fails): the server refused the request or could not
  load the model; the message is Triton's (tensor names, shapes, model names: no patient data).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from node.backends.base import Tensors
from node.errors import BackendError, BackendUnavailable, ModelNotFound
from node.logging import get_logger

__all__ = ["TritonBackend"]

log = get_logger(__name__)

TritonProtocol = Literal["grpc", "http"]

#: gRPC statuses and HTTP problems that mean "try again later".
_UNAVAILABLE_STATUSES = frozenset(
    {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", "503"}
)
_NOT_FOUND_STATUSES = frozenset({"StatusCode.NOT_FOUND", "404"})
#: Triton's datatype names for the numpy dtypes the node sends.
_DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT32": np.int32}


@dataclass(frozen=True, slots=True)
class _TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis


@dataclass(frozen=True, slots=True)
class _ModelSpec:
    inputs: tuple[_TensorSpec, ...]
    outputs: tuple[_TensorSpec, ...]
    max_batch: int  # 0: the model takes no batch axis from Triton (not supported here)


class _TritonFailure(Exception):
    """A tritonclient error turned into one shape: a status string and Triton's message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TritonBackend:
    """Runs models on a Triton Inference Server (explicit model control).

    Parameters
    ----------
    url
        ``host:port`` of Triton's gRPC endpoint (or its HTTP endpoint with ``protocol="http"``).
    protocol
        ``"grpc"`` (default) or ``"http"``.
    timeout_s
        Longest wait for one request: a load, an inference, a readiness check.

    Notes
    -----
    Each thread gets its own client (tritonclient's HTTP client is not thread-safe). Model
    descriptions are cached per ``(model, version)`` once the model is ready; a request that
    finds the model gone (Triton restarted, or someone unloaded it) drops the cache entry and
    loads the model again, once.
    """

    def __init__(
        self, url: str, *, protocol: TritonProtocol = "grpc", timeout_s: float = 120.0
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the model cache and model loading
        self._clients_lock = threading.Lock()
        self._clients: list[Any] = []
        self._specs: dict[tuple[str, str], _ModelSpec] = {}

    # -- the Backend protocol -------------------------------------------------------------------

    def infer(self, model: str, version: str, inputs: Tensors) -> Tensors:
        """Run ``model`` at ``version`` on ``inputs``, loading the model first if needed.

        Parameters
        ----------
        model, version
            The model repository entry, as Triton serves it (``<model>/<version>/``).
        inputs
            One array per model input, batched on axis 0; the other axes must match the
            model's configured dims. Batches larger than the model's ``max_batch_size`` are
            split.

        Returns
        -------
        dict of str to numpy.ndarray
            One array per model output, batched on axis 0.

        Raises
        ------
        BackendUnavailable
            If Triton cannot be reached or does not answer within ``timeout_s``.
        ModelNotFound
            If Triton's repository has no such model or version.
        BackendError
            If the inputs do not match the model, the model fails to load, or Triton refuses
            the request.
        """
        if not (_is_plain_name(model) and _is_plain_name(version)):
            raise ModelNotFound(model, version)
        spec = self._ready(model, version)
        arrays = _check_inputs(model, version, spec, inputs)
        try:
            return self._run(model, version, spec, arrays)
        except ModelNotFound:
            # Loaded a moment ago, gone now (a restart, an unload): load once more.
            with self._lock:
                self._specs.pop((model, version), None)
            spec = self._ready(model, version)
            return self._run(model, version, spec, arrays)

    # -- model control --------------------------------------------------------------------------

    def load(self, model: str) -> None:
        """Load (or reload) ``model`` on the server, every version its version policy names.

        Raises
        ------
        BackendUnavailable, ModelNotFound, BackendError
            As for :meth:`infer`.
        """
        with self._lock:
            self._specs = {k: v for k, v in self._specs.items() if k[0] != model}
            self._load(model)

    def unload(self, model: str) -> None:
        """Unload ``model`` from the server (a later :meth:`infer` loads it again).

        Raises
        ------
        BackendUnavailable, BackendError
            As for :meth:`infer`.
        """
        with self._lock:
            self._specs = {k: v for k, v in self._specs.items() if k[0] != model}
            self._call("unload_model", model)
        log.info("triton.model_unloaded", model=model)

    def is_ready(self, model: str, version: str) -> bool:
        """Whether the server has ``model`` at ``version`` loaded and ready.

        Raises
        ------
        BackendUnavailable
            If Triton cannot be reached.
        """
        return bool(self._call("is_model_ready", model, version))

    def close(self) -> None:
        """Close every client this backend opened (in any thread); later calls open new ones."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
            self._local = threading.local()
        for client in clients:
            _close_quietly(client)

    # -- internals ------------------------------------------------------------------------------

    def _ready(self, model: str, version: str) -> _ModelSpec:
        """The model's description, loading the model first when it is not ready."""
        key = (model, version)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        with self._lock:
            spec = self._specs.get(key)
            if spec is not None:
                return spec
            if not self._call("is_model_ready", model, version):
                self._load(model, version)
                if not self._call("is_model_ready", model, version):
                    raise ModelNotFound(model, version)
            spec = self._describe(model, version)
            self._specs[key] = spec
            return spec

    def _load(self, model: str, version: str = "*") -> None:
        """``load_model``, after checking the repository has the model (caller holds the lock).

        ``version`` only names what was asked for in a :class:`ModelNotFound`.
        """
        index = self._call("get_model_repository_index")
        if model not in _index_names(index):
            raise ModelNotFound(model, version)
        try:
            self._call("load_model", model)
        except BackendError as exc:
            raise BackendError(f"Triton could not load model {model!r}: {exc}") from exc
        log.info("triton.model_loaded", model=model)

    def _describe(self, model: str, version: str) -> _ModelSpec:
        metadata = self._call("get_model_metadata", model, version)
        config = self._call("get_model_config", model, version)
        config = config.get("config", config)
        max_batch = int(config.get("max_batch_size", 0))
        try:
            inputs = tuple(_tensor(item, max_batch) for item in metadata["inputs"])
            outputs = tuple(_tensor(item, max_batch) for item in metadata["outputs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{model}/{version}: unusable model metadata ({exc!r})") from exc
        if max_batch < 1:
            raise BackendError(f"{model}/{version}: max_batch_size must be at least 1 for the node")
        return _ModelSpec(inputs=inputs, outputs=outputs, max_batch=max_batch)

    def _run(
        self, model: str, version: str, spec: _ModelSpec, arrays: dict[str, npt.NDArray[Any]]
    ) -> Tensors:
        size = next(iter(arrays.values())).shape[0]
        if size == 0:
            return {
                o.name: np.zeros((0, *(max(d, 0) for d in o.dims)), dtype=np.float32)
                for o in spec.outputs
            }
        module = self._module()
        chunks: dict[str, list[npt.NDArray[np.float32]]] = {o.name: [] for o in spec.outputs}
        for start in range(0, size, spec.max_batch):
            requested = []
            for item in spec.inputs:
                part = np.ascontiguousarray(arrays[item.name][start : start + spec.max_batch])
                tensor = module.InferInput(item.name, list(part.shape), item.datatype)
                tensor.set_data_from_numpy(part)
                requested.append(tensor)
            outputs = [module.InferRequestedOutput(o.name) for o in spec.outputs]
            try:
                result = self._call(
                    "infer", model, requested, model_version=version, outputs=outputs
                )
            except _ModelGone:
                raise ModelNotFound(model, version) from None
            count = requested[0].shape()[0]
            for o in spec.outputs:
                chunks[o.name].append(_output(model, version, result, o, count))
        return {name: np.concatenate(parts) for name, parts in chunks.items()}

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on this thread's client, with the timeout, errors mapped."""
        client = self._client()
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
            if method.startswith("get_"):
                kwargs["as_json"] = True
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            if method == "infer" and (
                failure.status in _NOT_FOUND_STATUSES or "unknown model" in failure.message
            ):
                # Not loaded (NOT_FOUND), or being unloaded (UNAVAILABLE "... not at ready state").
                raise _ModelGone(failure.status, failure.message) from exc
            if failure.status in _UNAVAILABLE_STATUSES or failure.status == "unreachable":
                self._drop_client()  # a fresh channel reconnects at once when Triton is back
                raise BackendUnavailable(
                    f"Triton at {self.url} ({self.protocol}) unavailable: {failure.message}"
                ) from exc
            raise BackendError(f"Triton {method}: {failure.message}") from exc

    def _module(self) -> Any:
        return _import_client(self.protocol)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            module = self._module()
            try:
                if self.protocol == "grpc":
                    client = module.InferenceServerClient(self.url)
                else:
                    client = module.InferenceServerClient(
                        self.url,
                        connection_timeout=min(self.timeout_s, 10.0),
                        network_timeout=self.timeout_s,
                    )
            except Exception as exc:  # tritonclient checks the URL's form here
                raise BackendError(f"cannot make a Triton client for {self.url!r}: {exc}") from exc
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._clients_lock:
                if client in self._clients:
                    self._clients.remove(client)
            _close_quietly(client)


class _ModelGone(_TritonFailure):
    """An inference found the model not loaded (any more)."""


def _import_client(protocol: TritonProtocol) -> Any:
    try:
        return importlib.import_module(f"tritonclient.{protocol}")
    except ImportError as exc:
        raise BackendUnavailable(
            f"the Triton backend needs tritonclient[{protocol}] (extra 'triton')"
        ) from exc


def _failure(exc: Exception) -> _TritonFailure | None:
    """Read a tritonclient or socket error; ``None`` for anything else (a bug: re-raised)."""
    if isinstance(exc, OSError):  # HTTP: refused, reset, timed out (socket.timeout)
        return _TritonFailure("unreachable", f"{type(exc).__name__}: {exc}")
    try:
        utils = importlib.import_module("tritonclient.utils")
    except ImportError:
        return None
    if isinstance(exc, utils.InferenceServerException):
        message = exc.message() or str(exc)
        return _TritonFailure(str(exc.status()), message)
    return None


def _check_inputs(
    model: str, version: str, spec: _ModelSpec, inputs: Tensors
) -> dict[str, npt.NDArray[Any]]:
    """The inputs as contiguous arrays of the model's datatypes, or a clear BackendError."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for item in spec.inputs:
        if item.name not in inputs:
            raise BackendError(f"{model}/{version}: input {item.name!r} not given")
        dtype = _DATATYPES.get(item.datatype)
        if dtype is None:
            raise BackendError(f"{model}/{version}: input datatype {item.datatype} not supported")
        array = np.asarray(inputs[item.name], dtype=dtype)
        if array.ndim != len(item.dims) + 1 or any(
            d not in (-1, n) for d, n in zip(item.dims, array.shape[1:], strict=True)
        ):
            raise BackendError(
                f"{model}/{version}: input {item.name!r} has shape {array.shape}, "
                f"expected (batch, {', '.join(str(d) for d in item.dims)})"
            )
        arrays[item.name] = array
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) > 1:
        raise BackendError(f"{model}/{version}: inputs have different batch sizes {sorted(sizes)}")
    return arrays


def _output(
    model: str, version: str, result: Any, spec: _TensorSpec, count: int
) -> npt.NDArray[np.float32]:
    """One output of an inference result, checked against the model's dims and batch size."""
    try:
        array = result.as_numpy(spec.name)
    except (ValueError, TypeError) as exc:  # e.g. a payload that does not fit its shape
        raise BackendError(f"{model}/{version}: unusable output {spec.name!r} ({exc})") from exc
    if array is None:
        raise BackendError(f"{model}/{version}: Triton returned no output {spec.name!r}")
    if (
        array.ndim != len(spec.dims) + 1
        or array.shape[0] != count
        or any(d not in (-1, n) for d, n in zip(spec.dims, array.shape[1:], strict=True))
    ):
        raise BackendError(
            f"{model}/{version}: output {spec.name!r} has shape {array.shape} for {count} items"
        )
    return np.asarray(array, dtype=np.float32)


def _tensor(item: dict[str, Any], max_batch: int) -> _TensorSpec:
    """One entry of the model metadata; its shape loses the batch axis Triton prepends."""
    shape = [int(d) for d in item["shape"]]
    dims = shape[1:] if max_batch > 0 else shape
    return _TensorSpec(name=str(item["name"]), datatype=str(item["datatype"]), dims=tuple(dims))


def _index_names(index: Any) -> set[str]:
    """Model names of a repository index (gRPC's ``{"models": [...]}`` or HTTP's list)."""
    entries = index.get("models", []) if isinstance(index, dict) else index
    return {str(entry["name"]) for entry in entries}


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a broken client must not hide the error that broke it
        log.debug("triton.client_close_failed")


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
