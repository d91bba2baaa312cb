"""Inference backends behind one protocol: the embedded torch backend (and Triton).

Importing this package does not import torch; :class:`TorchBackend` loads it on first use.
"""

from node.backends.base import Backend, Tensors
from node.backends.torch import TorchBackend

__all__ = ["Backend", "Tensors", "TorchBackend"]
