"""The pipeline interface: volume(s) → preprocess → backend.infer → postprocess → Findings."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from node.assembly.volume import Volume
from node.backends.base import Backend
from node.pipelines.findings import Findings, HeatMap

__all__ = ["Explainer", "Pipeline"]


class Pipeline(Protocol):
    """One kind of AI work on a volume.

    A pipeline declares what it accepts in :meth:`check`; the node calls it before inference and
    ends the job with the reason when it raises :class:`node.errors.NotAccepted`.
    """

    name: str

    def check(self, volume: Volume) -> None:
        """Raise :class:`node.errors.NotAccepted`, with the reason, if ``volume`` is unsuitable."""
        ...

    def run(self, volume: Volume, backend: Backend, model: str, version: str) -> Findings:
        """Run ``model`` at ``version`` through ``backend`` on ``volume``."""
        ...


@runtime_checkable
class Explainer(Protocol):
    """A pipeline that can explain its findings with heat maps (when a rule asks: ``explain``).

    Explaining costs more inference (occlusion sensitivity runs the model many times), so the
    node asks only for jobs whose rule wants it.
    """

    def explain(
        self, volume: Volume, backend: Backend, model: str, version: str, findings: Findings
    ) -> tuple[HeatMap, ...]:
        """Heat maps of why ``model`` found ``findings`` on ``volume`` (may be empty)."""
        ...
