"""The pipelines the node knows, by name."""

from __future__ import annotations

from collections.abc import Callable

from node.errors import RoutingError
from node.pipelines.base import Pipeline

__all__ = ["PIPELINES", "get_pipeline"]


def _lung_seg() -> Pipeline:
    from node.pipelines.lung_seg import LungSegmentation

    return LungSegmentation()


def _nodule_det() -> Pipeline:
    from node.pipelines.nodule_det import NoduleDetection

    return NoduleDetection()


def _ct_region() -> Pipeline:
    from node.pipelines.ct_region import BodyRegion

    return BodyRegion()


#: Pipeline name → factory. Factories import lazily so the node starts without heavy imports.
PIPELINES: dict[str, Callable[[], Pipeline]] = {
    "lung_seg": _lung_seg,
    "nodule_det": _nodule_det,
    "ct_region": _ct_region,
}


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``."""
    try:
        return PIPELINES[name]()
    except KeyError:
        raise RoutingError(
            f"no pipeline named {name!r}; known: {', '.join(sorted(PIPELINES))}"
        ) from None
