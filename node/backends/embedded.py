"""The embedded backend for every weights format a version folder may hold.

``network.json`` in ``<repository>/<model>/<version>/`` names the format (``"format"``) and the
tensors (``inputs``, ``outputs``: name and dims without the batch axis):

``"monai-state-dict"`` (the default, no ``format`` key)
    ``model.pt`` is a ``state_dict`` of a MONAI architecture ``network.json`` names: run by
    :class:`~node.backends.torch.TorchBackend` (the shipped ``lung_seg`` and our retrains).
``"torchscript"``
    ``model.ts`` is a TorchScript module (``torch.jit.save``), loaded with ``torch.jit.load``
    onto the CPU. TorchScript runs no pickled Python, but it is still code: import only weights
    you trust (``pacs-ai-node models add`` records who did).
``"onnx"``
    ``model.onnx``, run by ONNX Runtime on the CPU (:mod:`node.backends.onnx`).

:class:`EmbeddedBackend` is a :class:`TorchBackend` (same constructor, same repository) that picks
the runner per version folder; loaded modules are cached per ``(model, version)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from node.backends.base import Tensors
from node.backends.onnx import ONNX_FILE, OnnxSession
from node.backends.torch import NETWORK_FILE, TorchBackend, _import_torch, _is_plain_name
from node.errors import BackendError, ModelNotFound

__all__ = ["FORMATS", "TORCHSCRIPT_FILE", "EmbeddedBackend", "WeightsFormat", "weights_format"]

WeightsFormat = Literal["monai-state-dict", "torchscript", "onnx"]
#: Formats ``network.json`` may name, and the weights file each needs.
TORCHSCRIPT_FILE = "model.ts"
FORMATS: dict[str, str] = {
    "monai-state-dict": "model.pt",
    "torchscript": TORCHSCRIPT_FILE,
    "onnx": ONNX_FILE,
}


@dataclass(frozen=True, slots=True)
class _Io:
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class _Runner:
    forward: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]  # one batch
    io: _Io


def weights_format(folder: Path) -> str:
    """The format ``folder/network.json`` names (``"monai-state-dict"`` when it names none).

    Raises
    ------
    BackendError
        If ``network.json`` is unreadable or names an unknown format.
    """
    try:
        description = json.loads((folder / NETWORK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{folder}: {NETWORK_FILE} unreadable ({exc})") from exc
    fmt = str(description.get("format", "monai-state-dict"))
    if fmt not in FORMATS:
        raise BackendError(f"{folder}: format {fmt!r} not supported ({', '.join(FORMATS)})")
    return fmt


class EmbeddedBackend(TorchBackend):
    """Runs each version in-process by the format its folder declares (see module docs).

    TorchScript and ONNX runners are cached per ``(model, version)``; batches larger than
    ``max_batch`` are split, as :class:`TorchBackend` does.
    """

    def __init__(
        self,
        repository: Path,
        *,
        num_threads: int | None = None,
        max_batch: int = 16,
        device: str = "cpu",
    ) -> None:
        super().__init__(repository, num_threads=num_threads, max_batch=max_batch, device=device)
        self._runners: dict[tuple[str, str], _Runner] = {}
        self._modules_lock = threading.Lock()

    def infer(self, model: str, version: str, inputs: Tensors) -> Tensors:
        """Run ``model`` at ``version`` on ``inputs`` with the runner its format needs.

        Raises
        ------
        ModelNotFound
            If the version folder or its files are missing.
        BackendUnavailable
            If torch (or, for an ONNX version, onnxruntime) cannot be imported.
        BackendError
            If the weights are unusable or the inputs do not match the declared tensors.
        """
        folder = self.repository / model / version
        if (
            not (_is_plain_name(model) and _is_plain_name(version))
            or not (folder / NETWORK_FILE).is_file()
        ):
            raise ModelNotFound(model, version)
        fmt = weights_format(folder)
        if fmt == "monai-state-dict":
            return super().infer(model, version, inputs)
        runner = self._runner(model, version, folder, fmt)
        array = _checked_input(model, version, runner.io, inputs)
        chunks = [
            runner.forward(array[start : start + self.max_batch])
            for start in range(0, array.shape[0], self.max_batch)
        ]
        name, dims = runner.io.outputs[0]
        if chunks:
            return {name: np.concatenate(chunks)}
        return {name: np.zeros((0, *(max(d, 0) for d in dims)), dtype=np.float32)}

    def _runner(self, model: str, version: str, folder: Path, fmt: str) -> _Runner:
        key = (model, version)
        with self._modules_lock:
            cached = self._runners.get(key)
            if cached is not None:
                return cached
            path = folder / FORMATS[fmt]
            if not path.is_file():
                raise ModelNotFound(model, version)
            io = _read_io(model, version, folder)
            forward = (
                self._torchscript(model, version, path)
                if fmt == "torchscript"
                else self._onnx(path, io)
            )
            runner = _Runner(forward=forward, io=io)
            self._runners[key] = runner
            return runner

    def _torchscript(
        self, model: str, version: str, path: Path
    ) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
        torch = _import_torch()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise BackendError(f"{model}/{version}: {path.name} unusable ({exc!r})") from exc
        module.to(self.device)
        module.eval()

        def forward(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            with torch.inference_mode():
                output = module(torch.from_numpy(batch).to(self.device))
            return np.asarray(output.detach().to("cpu").numpy(), dtype=np.float32)

        return forward

    def _onnx(
        self, path: Path, io: _Io
    ) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
        session = OnnxSession(path, num_threads=self.num_threads)
        input_name, output_name = io.inputs[0][0], io.outputs[0][0]

        def forward(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            result: npt.NDArray[np.float32] = session.run(input_name, batch, output_name)
            return result

        return forward


def _read_io(model: str, version: str, folder: Path) -> _Io:
    try:
        description = json.loads((folder / NETWORK_FILE).read_text(encoding="utf-8"))
        inputs = tuple(
            (str(i["name"]), tuple(int(d) for d in i["dims"])) for i in description["inputs"]
        )
        outputs = tuple(
            (str(o["name"]), tuple(int(d) for d in o["dims"])) for o in description["outputs"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"{model}/{version}: {NETWORK_FILE} is invalid ({exc!r})") from exc
    if len(inputs) != 1 or len(outputs) != 1:
        raise BackendError(f"{model}/{version}: one input and one output are supported")
    return _Io(inputs=inputs, outputs=outputs)


def _checked_input(model: str, version: str, io: _Io, inputs: Tensors) -> npt.NDArray[np.float32]:
    name, dims = io.inputs[0]
    if name not in inputs:
        raise BackendError(f"{model}/{version}: input {name!r} not given")
    array = np.ascontiguousarray(inputs[name], dtype=np.float32)
    if array.ndim != len(dims) + 1 or any(
        d not in (-1, n) for d, n in zip(dims, array.shape[1:], strict=True)
    ):
        raise BackendError(
            f"{model}/{version}: input {name!r} has shape {array.shape}, "
            f"expected (batch, {', '.join(str(d) for d in dims)})"
        )
    return array
