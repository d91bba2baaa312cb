"""The embedded backend: runs model repository entries in-process with PyTorch and MONAI.

It reads the same folder Triton serves (``<repository>/<model>/<version>/``) and needs two files
there:

``network.json``
    The architecture and its constructor arguments, the input and output tensor names and shapes,
    and the preprocessing constants (documentation for the pipeline and the model card)::

        {"architecture": "monai.networks.nets.UNet",
         "kwargs": {"spatial_dims": 2, ...},
         "inputs": [{"name": "image", "data_type": "FP32", "dims": [1, 256, 256]}],
         "outputs": [{"name": "logits", "data_type": "FP32", "dims": [2, 256, 256]}], ...}

``model.pt``
    The network's ``state_dict``, loaded with ``weights_only=True`` (no pickled code runs).

torch and MONAI are imported on first use, so the rest of the node imports without them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from node.backends.base import Tensors
from node.errors import BackendError, BackendUnavailable, ModelNotFound

if TYPE_CHECKING:
    import torch as torch_module

__all__ = ["ARCHITECTURES", "NETWORK_FILE", "WEIGHTS_FILE", "TorchBackend"]

#: Default ``max_batch`` on the CPU, and on other devices (see :class:`TorchBackend`).
CPU_MAX_BATCH, DEVICE_MAX_BATCH = 4, 16

NETWORK_FILE = "network.json"
WEIGHTS_FILE = "model.pt"
#: Architectures ``network.json`` may name; nothing else is ever imported from it.
ARCHITECTURES = frozenset({"monai.networks.nets.UNet"})


@dataclass(frozen=True, slots=True)
class _TensorSpec:
    name: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Loaded:
    network: torch_module.nn.Module
    inputs: tuple[_TensorSpec, ...]
    outputs: tuple[_TensorSpec, ...]


class TorchBackend:
    """Runs models of a Triton-layout model repository in this process.

    Parameters
    ----------
    repository
        The model repository folder (holding ``<model>/<version>/``).
    num_threads
        If given, ``torch.set_num_threads(num_threads)`` is called when torch is first loaded.
        This setting is process-wide. By default torch's own setting is left alone.
    max_batch
        Largest number of items run through the network at once; bigger batches are split.
        By default 4 on the CPU (the shipped lung U-Net ran 55 slices in 0.41 s in batches of
        4 against 0.53 s in batches of 16 on 2 cores, with 200 MB less peak memory: the
        activations of a batch are the job's largest transient) and 16 on other devices.
    device
        The torch device to run on, ``"cpu"`` by default.

    Notes
    -----
    Loaded networks are cached per ``(model, version)``; loading is guarded by a lock, and
    inference runs under ``torch.inference_mode()`` on networks in ``eval()`` mode, so several
    threads may call :meth:`infer` at once.
    """

    def __init__(
        self,
        repository: Path,
        *,
        num_threads: int | None = None,
        max_batch: int | None = None,
        device: str = "cpu",
    ) -> None:
        if max_batch is None:
            max_batch = CPU_MAX_BATCH if device == "cpu" else DEVICE_MAX_BATCH
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.repository = Path(repository)
        self.num_threads = num_threads
        self.max_batch = max_batch
        self.device = device
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], _Loaded] = {}

    def infer(self, model: str, version: str, inputs: Tensors) -> Tensors:
        """Run ``model`` at ``version`` on ``inputs``.

        Parameters
        ----------
        model, version
            The repository entry, ``<repository>/<model>/<version>/``.
        inputs
            One array per input named in ``network.json``, batched on axis 0; the other axes
            must match the declared ``dims``.

        Returns
        -------
        dict of str to numpy.ndarray
            float32 outputs keyed by the output names in ``network.json``, batched on axis 0.

        Raises
        ------
        ModelNotFound
            If the version folder, ``network.json`` or ``model.pt`` is missing.
        BackendUnavailable
            If torch or MONAI cannot be imported.
        BackendError
            If ``network.json`` or the weights are unusable, or the inputs do not match.
        """
        loaded = self._load(model, version)
        if len(loaded.inputs) != 1:
            raise BackendError(f"{model}/{version}: only single-input networks are supported")
        spec = loaded.inputs[0]
        if spec.name not in inputs:
            raise BackendError(f"{model}/{version}: input {spec.name!r} not given")
        array = np.ascontiguousarray(inputs[spec.name], dtype=np.float32)
        if array.ndim != len(spec.dims) + 1 or any(
            d not in (-1, n) for d, n in zip(spec.dims, array.shape[1:], strict=True)
        ):
            raise BackendError(
                f"{model}/{version}: input {spec.name!r} has shape {array.shape}, "
                f"expected (batch, {', '.join(str(d) for d in spec.dims)})"
            )
        return self._run(loaded, array)

    def _run(self, loaded: _Loaded, array: npt.NDArray[np.float32]) -> Tensors:
        torch = _import_torch()
        chunks: list[npt.NDArray[np.float32]] = []
        with torch.inference_mode():
            for start in range(0, array.shape[0], self.max_batch):
                batch = torch.from_numpy(array[start : start + self.max_batch]).to(self.device)
                output = loaded.network(batch)
                chunks.append(output.detach().to("cpu").numpy().astype(np.float32, copy=False))
        name = loaded.outputs[0].name
        if chunks:
            return {name: np.concatenate(chunks)}
        dims = tuple(max(d, 0) for d in loaded.outputs[0].dims)
        return {name: np.zeros((0, *dims), dtype=np.float32)}

    def _load(self, model: str, version: str) -> _Loaded:
        key = (model, version)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                cached = self._build(model, version)
                self._cache[key] = cached
            return cached

    def _build(self, model: str, version: str) -> _Loaded:
        folder = self.repository / model / version
        network_path, weights_path = folder / NETWORK_FILE, folder / WEIGHTS_FILE
        if not (
            _is_plain_name(model)
            and _is_plain_name(version)
            and network_path.is_file()
            and weights_path.is_file()
        ):
            raise ModelNotFound(model, version)
        torch = _import_torch()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            description = json.loads(network_path.read_text(encoding="utf-8"))
            architecture = description["architecture"]
            kwargs = dict(description["kwargs"])
            inputs = tuple(_spec(item) for item in description["inputs"])
            outputs = tuple(_spec(item) for item in description["outputs"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"{model}/{version}: {NETWORK_FILE} is invalid ({exc!r})") from exc
        if architecture not in ARCHITECTURES:
            raise BackendError(f"{model}/{version}: architecture {architecture!r} not supported")
        if not outputs:
            raise BackendError(f"{model}/{version}: {NETWORK_FILE} declares no outputs")
        network = _construct(architecture, kwargs)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        except Exception as exc:
            raise BackendError(f"{model}/{version}: {WEIGHTS_FILE} unusable ({exc!r})") from exc
        network.to(self.device)
        network.eval()
        return _Loaded(network=network, inputs=inputs, outputs=outputs)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable("the embedded backend needs torch (extra 'torch')") from exc
    return torch


def _construct(architecture: str, kwargs: dict[str, Any]) -> torch_module.nn.Module:
    try:
        from monai.networks.nets.unet import UNet
    except ImportError as exc:
        raise BackendUnavailable("the embedded backend needs monai (extra 'torch')") from exc
    assert architecture == "monai.networks.nets.UNet"
    try:
        network: torch_module.nn.Module = UNet(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"cannot build {architecture} from {kwargs!r} ({exc!r})") from exc
    return network


def _spec(item: dict[str, Any]) -> _TensorSpec:
    return _TensorSpec(name=str(item["name"]), dims=tuple(int(d) for d in item["dims"]))


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
