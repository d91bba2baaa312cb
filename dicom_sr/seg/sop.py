"""Builder of DICOM Segmentation (SEG) instances from a label map and its source series."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import UID

from dicom_sr._common import (
    PACKAGE_NAME,
    AlgorithmIdentification,
    derive_uid,
    software_versions,
    with_frame_of_reference,
)
from dicom_sr.seg.content import SegmentSpec

__all__ = ["DEVICE_SERIAL_NUMBER", "build_segmentation"]

DEVICE_SERIAL_NUMBER = PACKAGE_NAME
"""DeviceSerialNumber of every object we write: stable, so no random or per-host value."""

_LO_MAX_CHARS = 64  # DICOM PS3.5 Table 6.2-1, VR LO


def build_segmentation(
    *,
    source_images: Sequence[Dataset],
    label_map: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmIdentification,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    series_description: str,
    manufacturer: str = PACKAGE_NAME,
    frame_of_reference_uid: str | None = None,
    content_label: str = "AI",
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM Segmentation of a single-frame image series from a label map.

    Every source slice gets one frame per segment (empty frames are kept, so viewers never
    misplace the frames that follow), every frame references its source image and carries
    its position (highdicom orders the frames along the slice normal, not necessarily in
    the order of ``source_images``), and the instance carries ReferencedSeriesSequence.
    Every segment is AUTOMATIC with the algorithm's name and version, and has a
    RecommendedDisplayCIELabValue.

    Parameters
    ----------
    source_images
        Single-frame images of one series, already sorted along the slice normal. Only their
        metadata is read; PixelData need not be loaded. They are never modified.
    label_map
        Integer (or boolean) array of shape ``(len(source_images), Rows, Columns)``;
        ``label_map[k]`` belongs to ``source_images[k]``. 0 is background; every other value
        must be the ``label`` of one of ``segments``.
    segments
        The segments, in the order they get SegmentNumber 1, 2, ...; labels and tracking ids
        must be unique. A segment whose label is absent from the map is kept (all its
        frames are empty).
    algorithm
        The model that produced the label map.
    series_instance_uid, sop_instance_uid
        UIDs of the new series and instance; derive them with :func:`dicom_sr.derive_uid`
        from the job and output so that a retried job writes the same object.
    series_number, instance_number
        SeriesNumber and InstanceNumber of the new instance (positive integers).
    series_description
        SeriesDescription (VR LO, at most 64 characters).
    manufacturer
        Manufacturer written in the Enhanced General Equipment module.
    frame_of_reference_uid
        The Frame of Reference the segmentation is declared in.

        * ``None`` (default): every source image must carry the same FrameOfReferenceUID,
          which the SEG then shares; if they disagree a :class:`ValueError` naming
          FrameOfReferenceUID is raised.
        * a UID: the SEG is built from shallow copies of ``source_images`` whose
          FrameOfReferenceUID is replaced by this value (the caller's datasets are left
          untouched), so the SEG's FrameOfReferenceUID is this value. Use it for series
          whose slices are one acquisition but were given a different FrameOfReferenceUID
          each (as in some anonymised TCIA series); the caller decides which UID to pass
          (the node passes the FrameOfReferenceUID of the first slice in sorted order) and
          is responsible for the slices really sharing one patient coordinate system.
    content_label
        ContentLabel (VR CS: upper-case letters, digits, space and underscore, at most 16).

    Returns
    -------
    highdicom.seg.Segmentation
        The Segmentation instance, with Explicit VR Little Endian transfer syntax; write it
        with ``save_as``.

    Raises
    ------
    ValueError
        If ``source_images`` is empty, holds a multi-frame image, or its images differ in
        StudyInstanceUID, SeriesInstanceUID, Rows or Columns (or FrameOfReferenceUID when
        ``frame_of_reference_uid`` is None); if ``label_map`` has the wrong shape, a
        non-integer type, negative values or labels no segment describes; if ``segments``
        is empty or repeats a label or tracking id; or if a UID or string value is invalid.

    Examples
    --------
    >>> seg = build_segmentation(  # doctest: +SKIP
    ...     source_images=slices, label_map=mask.astype(np.uint8), segments=[lung],
    ...     algorithm=AlgorithmIdentification("lung-seg", "3"),
    ...     series_instance_uid=derive_uid(job_id, "lung", "series"),
    ...     sop_instance_uid=derive_uid(job_id, "lung", "instance"),
    ...     series_number=9001, series_description="AI lung segmentation",
    ...     frame_of_reference_uid=slices[0].FrameOfReferenceUID,
    ... )
    >>> seg.save_as("lung.seg.dcm")  # doctest: +SKIP
    """
    _check_source_images(source_images)
    _check_shape(label_map, source_images)
    _check_segments(segments)
    for name, uid in (
        ("series_instance_uid", series_instance_uid),
        ("sop_instance_uid", sop_instance_uid),
    ):
        _check_uid(name, uid)
    _check_positive("series_number", series_number)
    _check_positive("instance_number", instance_number)
    _check_long_string("series_description", series_description)
    _check_long_string("manufacturer", manufacturer)

    sources = with_frame_of_reference(source_images, frame_of_reference_uid)
    segment_map = _to_segment_numbers(label_map, segments)
    descriptions = [
        spec.to_description(
            segment_number=number,
            algorithm=algorithm,
            tracking_uid=derive_uid(sop_instance_uid, "tracking", spec.tracking_id),
        )
        for number, spec in enumerate(segments, start=1)
    ]
    now = datetime.datetime.now().astimezone()
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segment_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=PACKAGE_NAME,
        software_versions=software_versions(),
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=_truncate(f"{algorithm.name} {algorithm.version}"),
        content_label=content_label,
        omit_empty_frames=False,
        series_description=series_description,
        content_date=now.date(),
        content_time=now.time().replace(tzinfo=None),
        # An empty SpecificCharacterSet in the source means the default repertoire; write
        # none rather than the empty value highdicom would copy and reject.
        specific_character_set=sources[0].get("SpecificCharacterSet") or None,
    )
    # highdicom writes InstanceCreation and Content date/time in local time; say which.
    seg.TimezoneOffsetFromUTC = now.strftime("%z")
    _set_dimension_organization_uid(seg, derive_uid(sop_instance_uid, "dimension-organization"))
    return seg


def _set_dimension_organization_uid(seg: hd.seg.Segmentation, uid: str) -> None:
    """Replace highdicom's random DimensionOrganizationUID with a derived one."""
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = uid


def _check_source_images(source_images: Sequence[Dataset]) -> None:
    if len(source_images) == 0:
        raise ValueError("source_images is empty: a Segmentation needs at least one image")
    for k, image in enumerate(source_images):
        if int(image.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(
                f"source_images[{k}] has NumberOfFrames {image.NumberOfFrames}; only "
                "single-frame images are supported"
            )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        values = {image.get(keyword) for image in source_images}
        if len(values) != 1:
            raise ValueError(
                f"source_images disagree on {keyword} ({len(values)} distinct values); "
                "they must be the images of one series"
            )


def _check_shape(
    label_map: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    source_images: Sequence[Dataset],
) -> None:
    if not isinstance(label_map, np.ndarray):
        raise TypeError(f"label_map must be a numpy array, got {type(label_map).__name__}")
    first = source_images[0]
    expected = (len(source_images), int(first.Rows), int(first.Columns))
    if label_map.shape != expected:
        raise ValueError(
            f"label_map has shape {label_map.shape}; expected (slices, Rows, Columns) = "
            f"{expected} from source_images"
        )
    if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == np.bool_):
        raise ValueError(f"label_map must hold integer labels, got dtype {label_map.dtype}")


def _check_segments(segments: Sequence[SegmentSpec]) -> None:
    if len(segments) == 0:
        raise ValueError("segments is empty: describe at least one segment")
    for attribute in ("label", "tracking_id"):
        values = [getattr(spec, attribute) for spec in segments]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"segments repeat {attribute} {repeated}; each must be unique")


def _check_uid(name: str, value: str) -> None:
    if not UID(value).is_valid:
        raise ValueError(f"{name} {value!r} is not a valid DICOM UID")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_long_string(name: str, value: str) -> None:
    if not value.strip() or len(value) > _LO_MAX_CHARS:
        raise ValueError(f"{name} must be 1 to {_LO_MAX_CHARS} characters long, got {value!r}")
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{name} {value!r} contains a backslash or a control character")


def _truncate(value: str) -> str:
    return value if len(value) <= _LO_MAX_CHARS else value[:_LO_MAX_CHARS]


def _to_segment_numbers(
    label_map: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    segments: Sequence[SegmentSpec],
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Map labels to SegmentNumbers 1..N (the order of ``segments``), checking every value."""
    if label_map.dtype == np.bool_:
        label_map = label_map.view(np.uint8)
    largest_label = max(spec.label for spec in segments)
    low = int(label_map.min())
    high = int(label_map.max())
    if low < 0:
        raise ValueError(f"label_map holds negative values (minimum {low}); labels are >= 0")
    described = {spec.label for spec in segments}
    if high > largest_label:
        present = {int(v) for v in np.unique(label_map)}
        _raise_undescribed(present - described - {0})
    # Counted a frame at a time: bincount makes an intp copy of its input, eight bytes a voxel.
    counts = np.zeros(largest_label + 1, dtype=np.int64)
    for frame in label_map:
        counts += np.bincount(frame.ravel(), minlength=largest_label + 1)
    present = {int(v) for v in np.flatnonzero(counts)}
    _raise_undescribed(present - described - {0})

    out_dtype = np.uint8 if len(segments) < 256 else np.uint16
    lookup: npt.NDArray[np.unsignedinteger[Any]] = np.zeros(largest_label + 1, dtype=out_dtype)
    for number, spec in enumerate(segments, start=1):
        lookup[spec.label] = number
    if label_map.dtype == out_dtype and np.array_equal(lookup, np.arange(largest_label + 1)):
        return label_map.view(out_dtype)  # the labels already are the SegmentNumbers 1..N
    segment_map: npt.NDArray[np.unsignedinteger[Any]] = lookup[label_map]
    return segment_map


def _raise_undescribed(undescribed: set[int]) -> None:
    if undescribed:
        shown = sorted(undescribed)[:10]
        raise ValueError(
            f"label_map holds labels {shown}{' ...' if len(undescribed) > 10 else ''} that "
            "no segment describes; add a SegmentSpec for each or zero them"
        )
