"""The inference backend interface: the embedded torch backend and Triton both implement it."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Backend", "Tensors"]

Tensors = dict[str, npt.NDArray[np.float32]]


class Backend(Protocol):
    """Runs a model version on batched named inputs and returns its named outputs.

    Two backends give the same numbers for the same model version; pipelines do not know which
    one they talk to.
    """

    def infer(self, model: str, version: str, inputs: Tensors) -> Tensors:
        """Run ``model`` at ``version`` on ``inputs`` (each batched on axis 0)."""
        ...
