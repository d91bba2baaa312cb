"""Inference backends behind one protocol: the embedded torch backend and Triton.

Importing this package imports neither torch nor tritonclient; each backend loads its library on
first use. :func:`build_backend` picks one from the settings.
"""

from node.backends.base import Backend, Tensors
from node.backends.registry import build_backend
from node.backends.torch import TorchBackend
from node.backends.triton import TritonBackend

__all__ = ["Backend", "Tensors", "TorchBackend", "TritonBackend", "build_backend"]
