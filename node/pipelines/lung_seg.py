"""Lung segmentation on chest CT: a 2D per-slice U-Net, with its pre- and postprocessing.

The preprocessing and postprocessing here are shared with the training script
(``training/lung_seg/train.py`` imports this module), so the node feeds the network exactly what
it was trained on. Everything here is numpy/scipy; the network itself runs in a backend.

Steps of :meth:`LungSegmentation.run`:

1. window the Hounsfield units to :data:`HU_WINDOW` and scale to ``[0, 1]``;
2. resize every slice to :data:`INPUT_SIZE` (Gaussian anti-aliasing, then linear interpolation);
3. ``backend.infer`` in batches of :data:`BATCH_SIZE` slices (input ``"image"``, output
   ``"logits"``, two channels: background, lung);
4. resize the lung-minus-background logit margin back to the slice's rows and columns (linear)
   and threshold it at 0 (the two-class argmax);
5. keep the largest 3D component, and the second largest when it is at least
   :data:`SECOND_LUNG_FRACTION` of the largest (two lungs that the network did not join), then
   fill holes smaller than :data:`MAX_HOLE_AREA_MM2` in every slice.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from node.assembly.volume import Volume
from node.backends.base import Backend
from node.errors import PipelineError
from node.pipelines.findings import CodedConcept, Findings, LabelMap, SegmentDescription
from node.pipelines.requirements import require_one_orientation, require_square_pixels

__all__ = [
    "BATCH_SIZE",
    "HU_WINDOW",
    "INPUT_NAME",
    "INPUT_SIZE",
    "LUNG_SEGMENT",
    "OUTPUT_NAME",
    "LungSegmentation",
    "fill_small_holes",
    "fill_small_holes_in_place",
    "keep_largest_components",
    "keep_largest_components_in_place",
    "logits_to_mask",
    "postprocess",
    "postprocess_in_place",
    "preprocess",
    "resize_slices",
]

#: Hounsfield units mapped to 0 and 1; values outside are clipped.
HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)
#: ``(rows, columns)`` every slice is resized to before the network.
INPUT_SIZE: tuple[int, int] = (256, 256)
#: Name of the network's input tensor, ``(batch, 1, rows, columns)`` float32.
INPUT_NAME = "image"
#: Name of the network's output tensor, ``(batch, 2, rows, columns)`` float32 logits.
OUTPUT_NAME = "logits"
#: Slices sent to the backend per call.
BATCH_SIZE = 16
#: A second 3D component is kept as the other lung when at least this fraction of the largest.
SECOND_LUNG_FRACTION = 0.25
#: Holes in a slice's lung mask up to this area (mm²) are filled: vessels, nodules; not the
#: mediastinum, should the two lungs touch in front of and behind it.
MAX_HOLE_AREA_MM2 = 2000.0

LUNG_SEGMENT = SegmentDescription(
    label=1,
    name="Lung",
    category=CodedConcept("123037004", "SCT", "Anatomical Structure"),
    property_type=CodedConcept("39607008", "SCT", "Lung"),
    rgb=(128, 174, 128),
)


def preprocess(
    hu: npt.NDArray[np.floating], size: tuple[int, int] = INPUT_SIZE
) -> npt.NDArray[np.float32]:
    """Turn CT slices in Hounsfield units into the network's input.

    Parameters
    ----------
    hu
        ``(slices, rows, columns)`` in Hounsfield units; any rows and columns.
    size
        ``(rows, columns)`` of the network input.

    Returns
    -------
    numpy.ndarray
        ``(slices, 1, size[0], size[1])`` float32 in ``[0, 1]``.
    """
    low, high = HU_WINDOW
    scaled = (np.clip(np.asarray(hu, dtype=np.float32), low, high) - low) / (high - low)
    return resize_slices(scaled, size)[:, np.newaxis]


def resize_slices(
    stack: npt.NDArray[np.floating], size: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Resize every slice of ``stack`` to ``size`` with linear interpolation.

    Pixel areas are aligned (``grid_mode``: the image edges map to the image edges, like
    ``align_corners=False``). When shrinking, a Gaussian with sigma ``(factor - 1) / 2`` pixels
    is applied first against aliasing.

    Parameters
    ----------
    stack
        ``(slices, rows, columns)``.
    size
        ``(rows, columns)`` wanted.

    Returns
    -------
    numpy.ndarray
        ``(slices, size[0], size[1])`` float32.
    """
    data = np.asarray(stack, dtype=np.float32)
    rows, cols = data.shape[1:]
    if (rows, cols) == size:
        return data.copy()
    factors = (rows / size[0], cols / size[1])
    sigmas = (0.0, max(0.0, (factors[0] - 1) / 2), max(0.0, (factors[1] - 1) / 2))
    if sigmas[1] > 0 or sigmas[2] > 0:
        data = ndimage.gaussian_filter(data, sigma=sigmas, mode="nearest")
    zoomed = ndimage.zoom(
        data,
        (1.0, size[0] / rows, size[1] / cols),
        order=1,
        mode="nearest",
        grid_mode=True,
    )
    return np.ascontiguousarray(zoomed, dtype=np.float32)


def logits_to_mask(
    logits: npt.NDArray[np.floating], shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Two-class logits at network size → lung mask at the slices' own size.

    The lung-minus-background margin is resized (linear interpolation commutes with the
    difference, so this equals resizing both channels and taking the argmax; ties go to
    background).

    Parameters
    ----------
    logits
        ``(slices, 2, rows, columns)``: channel 0 background, channel 1 lung.
    shape
        ``(rows, columns)`` of the original slices.

    Returns
    -------
    numpy.ndarray
        ``(slices, shape[0], shape[1])`` bool.
    """
    margin = np.asarray(logits[:, 1], dtype=np.float32) - np.asarray(logits[:, 0], np.float32)
    return resize_slices(margin, shape) > 0


def keep_largest_components(
    mask: npt.NDArray[np.bool_], second_fraction: float = SECOND_LUNG_FRACTION
) -> npt.NDArray[np.bool_]:
    """Keep the largest 3D component, and the second if it is big enough to be the other lung.

    Components are 6-connected (face neighbours) on the voxel grid. Equally large components
    rank in the order of their first voxel (slice, then row, then column), as
    ``scipy.ndimage.label`` numbers them.

    Parameters
    ----------
    mask
        ``(slices, rows, columns)`` bool.
    second_fraction
        The second largest component is kept when its voxel count is at least this fraction of
        the largest one's.

    Returns
    -------
    numpy.ndarray
        A bool mask of the same shape; all False when ``mask`` is.
    """
    kept = np.array(mask, dtype=bool, copy=True)
    keep_largest_components_in_place(kept, second_fraction)
    return kept


def keep_largest_components_in_place(
    mask: npt.NDArray[np.bool_], second_fraction: float = SECOND_LUNG_FRACTION
) -> None:
    """:func:`keep_largest_components` on ``mask`` itself, with memory for two slices.

    Each slice is labelled in 2D (4-connected); labels of neighbouring slices that share a
    voxel are joined in a graph whose connected components are the 3D components, each named
    by its smallest label (its first voxel). A second pass labels every slice again and clears
    what is not kept. A 3D label array would take 4 bytes per voxel: 2 GB for a 2,000-slice
    CT.
    """
    firsts: list[int] = []  # each slice's first label minus one; label 0 is the background
    voxels: list[npt.NDArray[np.intp]] = [np.zeros(1, dtype=np.intp)]
    links: list[npt.NDArray[np.int64]] = []
    previous: npt.NDArray[np.int32] | None = None
    total = 0
    for k in range(mask.shape[0]):
        labels, count = ndimage.label(mask[k])
        firsts.append(total)
        voxels.append(np.bincount(labels.ravel(), minlength=count + 1)[1:])
        if previous is not None and count:
            touching = (labels > 0) & (previous > 0)
            if touching.any():
                below = previous[touching].astype(np.int64) + firsts[-2]
                here = labels[touching].astype(np.int64) + total
                links.append(np.unique(below * (1 << 32) + here))
        previous = labels
        total += count
    if total == 0:
        return
    pairs = np.concatenate(links) if links else np.zeros(0, dtype=np.int64)
    graph = sparse.coo_matrix(
        (np.ones(pairs.size, dtype=np.int8), (pairs >> 32, pairs & 0xFFFFFFFF)),
        shape=(total + 1, total + 1),
    )
    components, component = csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(component, weights=np.concatenate(voxels), minlength=components)
    sizes[component[0]] = 0  # the background's own component
    first_label = np.full(components, total + 1, dtype=np.int64)
    np.minimum.at(first_label, component, np.arange(total + 1))
    candidates = np.flatnonzero(sizes)
    order = candidates[np.lexsort((first_label[candidates], -sizes[candidates]))]
    keep = [int(order[0])]
    if len(order) > 1 and sizes[order[1]] >= second_fraction * sizes[order[0]]:
        keep.append(int(order[1]))
    kept_label = np.isin(component, keep)
    kept_label[0] = False
    for k, first in enumerate(firsts):
        if mask[k].any():
            labels, count = ndimage.label(mask[k])
            lookup = np.concatenate([[False], kept_label[first + 1 : first + count + 1]])
            mask[k] = lookup[labels]


def fill_small_holes(mask: npt.NDArray[np.bool_], max_area_px: float) -> npt.NDArray[np.bool_]:
    """Fill, slice by slice, the holes of ``mask`` no larger than ``max_area_px`` pixels.

    Parameters
    ----------
    mask
        ``(slices, rows, columns)`` bool.
    max_area_px
        Largest hole (4-connected background region not reaching the slice edge) filled.

    Returns
    -------
    numpy.ndarray
        A bool mask of the same shape.
    """
    filled = np.array(mask, dtype=bool, copy=True)
    fill_small_holes_in_place(filled, max_area_px)
    return filled


def fill_small_holes_in_place(mask: npt.NDArray[np.bool_], max_area_px: float) -> None:
    """:func:`fill_small_holes` on ``mask`` itself.

    A hole is a 4-connected background component that does not reach the slice's edge (what
    ``scipy.ndimage.binary_fill_holes`` fills), found with one labelling per slice.
    """
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        background, count = ndimage.label(~mask[k])
        sizes = np.bincount(background.ravel(), minlength=count + 1)
        fill = sizes <= max_area_px
        fill[0] = False
        edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        fill[edge] = False
        mask[k] |= fill[background]


def postprocess(
    mask: npt.NDArray[np.bool_], pixel_spacing: tuple[float, float]
) -> npt.NDArray[np.bool_]:
    """Clean the network's lung mask: two largest 3D components, small holes filled.

    Parameters
    ----------
    mask
        ``(slices, rows, columns)`` bool at the original resolution.
    pixel_spacing
        ``(row, column)`` spacing in mm, to turn :data:`MAX_HOLE_AREA_MM2` into pixels.

    Returns
    -------
    numpy.ndarray
        A bool mask of the same shape.
    """
    cleaned = np.array(mask, dtype=bool, copy=True)
    postprocess_in_place(cleaned, pixel_spacing)
    return cleaned


def postprocess_in_place(mask: npt.NDArray[np.bool_], pixel_spacing: tuple[float, float]) -> None:
    """:func:`postprocess` on ``mask`` itself, with memory for a few slices."""
    keep_largest_components_in_place(mask)
    fill_small_holes_in_place(mask, MAX_HOLE_AREA_MM2 / (pixel_spacing[0] * pixel_spacing[1]))


class LungSegmentation:
    """Segments both lungs on an axial chest CT, one slice at a time (label 1 = lung).

    What series the model is for (modality, body part, orientation, slices, field of view,
    slice thickness, intensities) is the model card's to say, and the intended-use guard
    (:func:`node.models.guard.check_intended_use`) checks it before this pipeline sees the
    volume. :meth:`check` adds what this implementation needs whatever the card: one slice
    orientation, and square pixels with the same PixelSpacing on every slice (each slice is
    resized to the network's 256x256 as a whole).

    Because the network sees one slice at a time, irregular slice spacing, missing slices,
    duplicate positions, gantry tilt and inconsistent FrameOfReferenceUIDs are all acceptable:
    they change nothing within a slice. Only the 3D cleanup (keeping the largest connected
    components) treats the stack as neighbours in index order.
    """

    name = "lung_seg"

    def check(self, volume: Volume) -> None:
        """Raise :class:`node.errors.NotAccepted` if this implementation cannot take ``volume``.

        Parameters
        ----------
        volume
            The assembled series (already within its model card's intended use).

        Raises
        ------
        NotAccepted
            With the reason, for mixed orientations, non-square or varying pixel spacing.
        """
        require_one_orientation(volume)
        require_square_pixels(volume)

    def run(self, volume: Volume, backend: Backend, model: str, version: str) -> Findings:
        """Segment the lungs of ``volume`` with ``model`` at ``version`` through ``backend``.

        Parameters
        ----------
        volume
            An axial CT that passed :meth:`check`.
        backend
            Where the network runs.
        model, version
            The model repository entry to run.

        Returns
        -------
        Findings
            One label map on the volume's grid, label 1 = lung.

        Raises
        ------
        PipelineError
            If the backend's output is missing or not shaped as declared.
        """
        slices, rows, cols = volume.shape
        # The mask is the only thing kept for the whole series (1 byte a voxel, and it is the
        # SEG's label map as it is); the CT is read, windowed and inferred a batch at a time.
        mask = np.zeros((slices, rows, cols), dtype=np.bool_)
        for start, hu in volume.slabs(BATCH_SIZE):
            batch = preprocess(hu)
            outputs = backend.infer(model, version, {INPUT_NAME: batch})
            logits = outputs.get(OUTPUT_NAME)
            expected = (batch.shape[0], 2, *INPUT_SIZE)
            if logits is None or tuple(logits.shape) != expected:
                got = None if logits is None else tuple(logits.shape)
                raise PipelineError(
                    f"backend output {OUTPUT_NAME!r} has shape {got}, expected {expected}"
                )
            mask[start : start + batch.shape[0]] = logits_to_mask(logits, (rows, cols))
        postprocess_in_place(mask, (volume.spacing[1], volume.spacing[2]))
        return Findings(
            model_name=model,
            model_version=version,
            label_maps=(LabelMap(array=mask.view(np.uint8), segments=(LUNG_SEGMENT,)),),
        )
