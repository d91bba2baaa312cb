"""Builder of Parametric Maps holding explanation heat maps on the source series' geometry.

The map is a DICOM Parametric Map (``1.2.840.10008.5.1.4.1.1.30``) in the source's Frame of
Reference, one frame per source image, on that image's plane and pixel grid (a map given on a
coarser grid is repeated onto it, each coarse pixel covering the source pixels it stands for)
and referencing it. Values are 32-bit floats in ``[0, 1]`` (Float Pixel Data) with an identity
Real World Value Mapping (UCUM ``1``), whose LUT label, explanation and quantity definition say
what the map is and how it was made. The transfer syntax is Explicit VR Little Endian, which
every PACS accepts.

Why every frame, in floats, on the source grid: OHIF 3.13 (its ``cornerstone-dicom-pmap``
extension) loads only 32-bit maps whose rows and columns equal the source images' ("Only works
with 32 bit data", "different geometry dimensions") and places frame ``i`` by the source
image's index in a buffer as long as the map, so a map with fewer frames than the series fails
there. The price is size: 4 bytes per source pixel (57 MB for 55 slices of 512x512), paid only
by rules that ask for explanations.
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

__all__ = ["build_parametric_map"]

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
        ``heat_map.array[k]`` lies on ``source_images[k]``'s plane.
    heat_map
        The map and what it is.
    algorithm
        The model that was explained: named in ContentDescription (``name@version: ...``).
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
    factor = (source_rows // rows, source_cols // cols)
    values = np.clip(np.asarray(heat_map.array, dtype=np.float32), 0.0, 1.0)
    sources = with_frame_of_reference(source_images, frame_of_reference_uid)
    planes = np.repeat(np.repeat(values, factor[0], axis=1), factor[1], axis=2)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=heat_map.content_label,
        lut_explanation=heat_map.description,
        unit=_NO_UNITS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=heat_map.method,
    )
    now = datetime.datetime.now().astimezone()
    with warnings.catch_warnings():
        # highdicom warns about dubious source values (a one-part PatientName) quoting them.
        warnings.simplefilter("ignore", UserWarning)
        parametric_map = hd.pm.ParametricMap(
            source_images=list(sources),
            pixel_array=np.ascontiguousarray(planes, dtype=np.float32),
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
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            content_description=f"{algorithm.name}@{algorithm.version}: {heat_map.description}"[
                :_LO_MAX_CHARS
            ],
            content_label=heat_map.content_label,
            series_description=series_description,
            content_date=now.date(),
            content_time=now.time().replace(tzinfo=None),
        )
    parametric_map.TimezoneOffsetFromUTC = now.strftime("%z")
    # dciodvfy wants Laterality (General Series, type 2C) on a map of a body part that may be
    # paired; the source states none, so it is present and empty ("not applicable").
    parametric_map.Laterality = first.get("Laterality", "") or ""
    return parametric_map
