"""What a pipeline's implementation may require of a volume, checked the same way by each.

These are limits of the code, not of the model's intended use (the model card's guard checks
that): a pipeline's ``check`` calls the ones it needs and the node ends the job with the reason.
"""

from __future__ import annotations

from node.assembly.volume import AnomalyKind, Volume
from node.errors import NotAccepted

__all__ = ["PIXEL_ASPECT_TOLERANCE", "require_one_orientation", "require_square_pixels"]

#: Two PixelSpacing values (or one slice's against another's) further apart than this fraction
#: are different.
PIXEL_ASPECT_TOLERANCE = 0.01


def require_one_orientation(volume: Volume) -> None:
    """Raise :class:`NotAccepted` when the series mixes slice orientations."""
    if volume.has(AnomalyKind.MIXED_ORIENTATIONS):
        raise NotAccepted("series mixes slice orientations (e.g. a localizer among axials)")


def require_square_pixels(volume: Volume) -> None:
    """Raise :class:`NotAccepted` unless pixels are square and every slice has the same
    PixelSpacing (what a resize of whole slices to the network's grid assumes)."""
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    if abs(row_mm - col_mm) > PIXEL_ASPECT_TOLERANCE * max(row_mm, col_mm):
        raise NotAccepted(f"PixelSpacing {row_mm:g}\\{col_mm:g}: pixels are not square")
    for ds in volume.datasets:
        spacing = [float(v) for v in ds.PixelSpacing]
        if any(
            abs(a - b) > PIXEL_ASPECT_TOLERANCE * b
            for a, b in zip(spacing, (row_mm, col_mm), strict=True)
        ):
            raise NotAccepted("PixelSpacing differs between slices")
