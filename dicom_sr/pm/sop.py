"""Builder of Parametric Maps holding explanation heat maps on the source series' geometry.

The map is a DICOM Parametric Map (``1.2.840.10008.5.1.4.1.1.30``) in the source's Frame of
Reference, one frame per source image on which the map is not all zero (at least one), on that
image's plane (position and orientation) and referencing it; its in-plane grid is the source's
or a whole fraction of it. Values are stored as unsigned 16-bit integers ``0 .. 1000`` with a
Real World Value Mapping of slope 0.001 to the heat map's ``[0, 1]`` (UCUM ``1``), whose LUT
label, explanation and quantity definition say what the map is and how it was made. The
transfer syntax is Explicit VR Little Endian, which every PACS accepts (dcmtk's storescp, for
one, refuses RLE unless told otherwise).
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_sr._common import (
    PACKAGE_NAME,
    AlgorithmIdentification,
    software_versions,
    with_frame_of_reference,
)
from dicom_sr.pm.content import HeatMapSpec

__all__ = ["STORED_MAX", "build_parametric_map"]

#: The stored value of 1.0 (the mapping's slope is ``1 / STORED_MAX``).
STORED_MAX = 1000
_NO_UNITS = Code("1", "UCUM", "no units")
_LO_MAX_CHARS = 64


def build_parametric_map(
    *,
    source_images: Sequence[Dataset],
    heat_map: HeatMapSpec,
    algorithm: AlgorithmIdentification,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
    frame_of_reference_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = PACKAGE_NAME,
) -> hd.pm.ParametricMap:
    """Build the Parametric Map of ``heat_map`` on the geometry of ``source_images``.

    Parameters
    ----------
    source_images
        Single-frame images of one series, sorted along the slice normal (metadata only);
        ``heat_map.array[k]`` lies on ``source_images[k]``'s plane. Planes of the map that are
        all zero are left out.
    heat_map
        The map and what it is.
    algorithm
        The model that was explained: named in ContentDescription (``name@version: ...``) and
        ContentCreatorName.
    series_instance_uid, sop_instance_uid, series_number, instance_number
        The map's identity (derive the UIDs from the job).
    series_description
        SeriesDescription (at most 64 characters).
    frame_of_reference_uid
        As for :func:`dicom_sr.seg.build_segmentation`: ``None`` requires one shared Frame of
        Reference; a UID declares the one the map is written in.
    manufacturer
        Manufacturer of the device (this node).

    Returns
    -------
    highdicom.pm.ParametricMap

    Raises
    ------
    ValueError
        If the map's shape does not fit the source images, a UID or text is invalid.
    """
    if not source_images:
        raise ValueError("build_parametric_map needs the source series' images")
    first = source_images[0]
    slices, rows, cols = heat_map.array.shape
    source_rows, source_cols = int(first.Rows), int(first.Columns)
    if slices != len(source_images) or source_rows % rows or source_cols % cols:
        raise ValueError(
            f"heat map of shape {heat_map.array.shape} does not fit {len(source_images)} "
            f"images of {source_rows}x{source_cols} (planes must divide them)"
        )
    for name, uid in (("series_instance_uid", series_instance_uid), ("sop", sop_instance_uid)):
        if not UID(uid).is_valid:
            raise ValueError(f"{name} {uid!r} is not a valid DICOM UID")
    if not series_description.strip() or len(series_description) > _LO_MAX_CHARS:
        raise ValueError(f"series_description must be 1 to 64 characters: {series_description!r}")
    stored = np.rint(np.clip(heat_map.array, 0.0, 1.0) * STORED_MAX).astype(np.uint16)
    kept = [k for k in range(slices) if stored[k].any()] or [0]
    every = with_frame_of_reference(source_images, frame_of_reference_uid)
    sources = [every[k] for k in kept]
    stored = stored[kept]
    factor = (source_rows // rows, source_cols // cols)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=heat_map.content_label,
        lut_explanation=heat_map.description,
        unit=_NO_UNITS,
        value_range=(0, STORED_MAX),
        slope=1.0 / STORED_MAX,
        intercept=0.0,
        quantity_definition=heat_map.method,
    )
    now = datetime.datetime.now().astimezone()
    with warnings.catch_warnings():
        # highdicom warns about dubious source values (a one-part PatientName) quoting them.
        warnings.simplefilter("ignore", UserWarning)
        parametric_map = hd.pm.ParametricMap(
            source_images=list(sources),
            pixel_array=stored,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=PACKAGE_NAME,
            software_versions=software_versions(),
            device_serial_number=PACKAGE_NAME,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=STORED_MAX / 2, window_width=STORED_MAX)
            ],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            content_description=f"{algorithm.name}@{algorithm.version}: {heat_map.description}"[
                :_LO_MAX_CHARS
            ],
            content_label=heat_map.content_label,
            pixel_measures=hd.PixelMeasuresSequence(
                pixel_spacing=[
                    float(v) * f for v, f in zip(first.PixelSpacing, factor, strict=True)
                ],
                slice_thickness=float(first.get("SliceThickness", 0) or 0) or None,
            ),
            plane_orientation=hd.PlaneOrientationSequence(
                coordinate_system="PATIENT",
                image_orientation=[float(v) for v in first.ImageOrientationPatient],
            ),
            plane_positions=[_plane_position(image, factor) for image in sources],
            series_description=series_description,
            content_date=now.date(),
            content_time=now.time().replace(tzinfo=None),
        )
    parametric_map.TimezoneOffsetFromUTC = now.strftime("%z")
    # dciodvfy wants Laterality (General Series, type 2C) on a map of a body part that may be
    # paired; the source states none, so it is present and empty ("not applicable").
    parametric_map.Laterality = first.get("Laterality", "") or ""
    return parametric_map


def _plane_position(image: Dataset, factor: tuple[int, int]) -> hd.PlanePositionSequence:
    """The position of a coarse plane's first pixel centre on ``image``'s plane."""
    position = np.array([float(v) for v in image.ImagePositionPatient])
    orientation = np.array([float(v) for v in image.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in image.PixelSpacing)
    # Coarse pixel (0, 0) covers source pixels 0 .. f - 1: its centre is (f - 1) / 2 along.
    shifted = (
        position
        + orientation[:3] * col_mm * (factor[1] - 1) / 2
        + orientation[3:] * row_mm * (factor[0] - 1) / 2
    )
    return hd.PlanePositionSequence(
        coordinate_system="PATIENT", image_position=[float(v) for v in shifted]
    )
