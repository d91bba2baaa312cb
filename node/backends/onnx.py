"""ONNX models in the node's process, through ONNX Runtime (CPU).

Used by :class:`~node.backends.embedded.EmbeddedBackend` for version folders whose
``network.json`` says ``"format": "onnx"`` (weights in ``model.onnx``). ``onnxruntime`` is
imported on first use, so the node runs without it until such a version is asked for; Triton
runs the same file through onnxruntime inside its Python-backend ``model.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import BackendError, BackendUnavailable

__all__ = ["ONNX_FILE", "OnnxSession"]

ONNX_FILE = "model.onnx"


class OnnxSession:
    """One ONNX Runtime inference session on the CPU.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    num_threads
        Intra-op threads (ONNX Runtime's own default when None).

    Raises
    ------
    BackendUnavailable
        If onnxruntime is not installed.
    BackendError
        If the file is not a model ONNX Runtime can load.
    """

    def __init__(self, path: Path, *, num_threads: int | None = None) -> None:
        runtime = _import_runtime()
        options = runtime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self._session: Any = runtime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidProtobuf, ...)
            raise BackendError(f"{path.name}: not a model ONNX Runtime can load ({exc})") from exc

    def run(self, input_name: str, array: npt.NDArray[np.float32], output_name: str) -> Any:
        """The output ``output_name`` for ``array`` fed as ``input_name``.

        Raises
        ------
        BackendError
            If ONNX Runtime refuses the input (names, shapes) or fails.
        """
        try:
            (output,) = self._session.run([output_name], {input_name: array})
        except Exception as exc:
            raise BackendError(f"ONNX Runtime: {exc}") from exc
        return np.asarray(output, dtype=np.float32)


def _import_runtime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise BackendUnavailable("ONNX versions need onnxruntime (extra 'onnx')") from exc
