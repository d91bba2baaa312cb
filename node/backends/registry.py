"""Which backend the node runs models on, from ``settings.inference``."""

from __future__ import annotations

from node.backends.base import Backend
from node.backends.embedded import EmbeddedBackend
from node.backends.triton import TritonBackend
from node.config import Settings

__all__ = ["build_backend"]


def build_backend(settings: Settings) -> Backend:
    """The backend ``settings.inference.backend`` names.

    Parameters
    ----------
    settings
        The node's settings: ``inference`` picks the backend and, for Triton, its URL, protocol
        and timeout; ``model_repository`` and ``torch_threads`` configure the embedded one.

    Returns
    -------
    Backend
        :class:`~node.backends.embedded.EmbeddedBackend` (a
        :class:`~node.backends.torch.TorchBackend` that also runs TorchScript versions) on the
        model repository (``"embedded"``), or
        :class:`TritonBackend` on the configured server (``"triton"``). Neither connects nor
        imports torch or tritonclient before its first inference.
    """
    inference = settings.inference
    if inference.backend == "triton":
        return TritonBackend(
            inference.triton_url, protocol=inference.triton_protocol, timeout_s=inference.timeout_s
        )
    return EmbeddedBackend(settings.model_repository, num_threads=settings.torch_threads or None)
