"""Reference lung masks from a classical threshold algorithm (no expert annotation exists).

:func:`reference_lung_mask` is the training label of the ``lung_seg`` model and the reference the
integration tests compare the node's DICOM-SEG against. It is deterministic (thresholds and
connected components only) and runs in about a second on a 55-slice chest CT.

The algorithm, on a volume in Hounsfield units (``(slices, rows, columns)``):

1. **Air**: voxels below :data:`AIR_HU` (-320 HU, between aerated lung at about -850 and soft
   tissue at about 40).
2. **Outside air removed**: 3D components (6-connected) of air that touch an in-plane edge of the
   image are the air around the body, the table and the area outside the reconstruction circle.
   Components touching only the first or last slice are kept: lungs often reach them.
3. **Lung components**: the largest remaining 3D component is kept, and the second largest when
   it is at least :data:`SECOND_LUNG_FRACTION` of it (the two lungs, when the airways do not
   join them). Everything smaller (bowel and stomach gas, oesophageal air, air in the soft
   tissue) is dropped.
4. **Trachea and extrapulmonary bronchi removed**: in each slice, a 2D component of the lung
   mask that is small (at most :data:`AIRWAY_MAX_AREA_MM2`), dark (mean at most
   :data:`AIRWAY_MAX_MEAN_HU`: an air-filled lumen, not aerated parenchyma) and near the midline
   (centroid within :data:`AIRWAY_MAX_OFFSET_MM` of the middle of the lungs' left-right extent)
   is an airway and is removed. Bronchi that run inside the lung in a slice stay in the mask.
   Step 3 is then repeated, which drops airway-wall fragments that hung on the removed trachea
   (and splits lungs that only the trachea joined).
5. **Holes filled**: in each slice, holes of the mask up to :data:`MAX_HOLE_AREA_MM2` are
   filled, so vessels and nodules inside the lung are lung, but the mediastinum is not, even
   when the two lungs touch in front of and behind it. A cross-section of the diaphragm dome
   that lung surrounds in a slice is filled too (one LIDC slice has such a 434 mm² island).

Assumptions: an axial CT in Hounsfield units whose field of view contains the lungs, with padding
outside the reconstruction circle below -320 HU (true of the usual -1000, -1024, -2000, -3024).
On a scan without lungs (a head CT, an abdomen below the lung bases) it returns the largest
internal air pocket instead (sinuses, bowel gas): it is not a lung detector.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.pipelines.lung_seg import (
    MAX_HOLE_AREA_MM2,
    SECOND_LUNG_FRACTION,
    fill_small_holes,
    keep_largest_components,
)

__all__ = [
    "AIRWAY_MAX_AREA_MM2",
    "AIRWAY_MAX_MEAN_HU",
    "AIRWAY_MAX_OFFSET_MM",
    "AIR_HU",
    "MAX_HOLE_AREA_MM2",
    "SECOND_LUNG_FRACTION",
    "reference_lung_mask",
]

#: Voxels below this (HU) are air or aerated lung.
AIR_HU = -320.0
#: Largest in-slice area (mm²) of a 2D component that can be called an airway.
AIRWAY_MAX_AREA_MM2 = 1000.0
#: Largest mean HU of a 2D component that can be called an airway (lumen air, with partial volume).
AIRWAY_MAX_MEAN_HU = -870.0
#: Largest distance (mm) of an airway component's centroid from the lungs' left-right middle.
AIRWAY_MAX_OFFSET_MM = 50.0


def reference_lung_mask(
    volume_hu: npt.NDArray[np.floating], spacing: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    """Segment both lungs of a chest CT with thresholds and connected components.

    See the module docstring for the algorithm and its assumptions.

    Parameters
    ----------
    volume_hu
        ``(slices, rows, columns)`` in Hounsfield units, slices sorted along the normal.
    spacing
        ``(slice, row, column)`` spacing in mm (the slice spacing is not used: every step is
        in-plane or topological).

    Returns
    -------
    numpy.ndarray
        ``(slices, rows, columns)`` bool, True in the lungs.
    """
    hu = np.asarray(volume_hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ValueError(f"volume_hu must be 3D (slices, rows, columns), got shape {hu.shape}")
    inner_air = _without_outside_air(hu < AIR_HU)
    lungs = keep_largest_components(inner_air, SECOND_LUNG_FRACTION)
    lungs = _without_airways(lungs, hu, (spacing[1], spacing[2]))
    lungs = keep_largest_components(lungs, SECOND_LUNG_FRACTION)
    return fill_small_holes(lungs, MAX_HOLE_AREA_MM2 / (spacing[1] * spacing[2]))


def _without_outside_air(air: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    labels, count = ndimage.label(air)
    if count == 0:
        return air
    edge = np.zeros(count + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        edge[np.unique(face)] = True
    edge[0] = True
    outside: npt.NDArray[np.bool_] = edge[labels]
    return ~outside


def _without_airways(
    lungs: npt.NDArray[np.bool_], hu: npt.NDArray[np.float32], pixel_mm: tuple[float, float]
) -> npt.NDArray[np.bool_]:
    columns = np.flatnonzero(lungs.any(axis=(0, 1)))
    if columns.size == 0:
        return lungs
    midline = (columns[0] + columns[-1]) / 2.0
    pixel_area = pixel_mm[0] * pixel_mm[1]
    cleaned = lungs.copy()
    for k in range(lungs.shape[0]):
        labels, count = ndimage.label(lungs[k])
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        area = ndimage.sum_labels(np.ones_like(labels), labels, index) * pixel_area
        mean_hu = ndimage.mean(hu[k], labels, index)
        centroid_col = np.array([c[1] for c in ndimage.center_of_mass(lungs[k], labels, index)])
        offset = np.abs(centroid_col - midline) * pixel_mm[1]
        airway = (
            (area <= AIRWAY_MAX_AREA_MM2)
            & (mean_hu <= AIRWAY_MAX_MEAN_HU)
            & (offset <= AIRWAY_MAX_OFFSET_MM)
        )
        if airway.any():
            cleaned[k] &= ~np.isin(labels, index[airway])
    return cleaned
