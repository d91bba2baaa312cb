"""The Volume: one series as a 3D array with its patient-space geometry and its anomalies.

A Volume is built once from the spooled instances of a series and is the only thing pipelines see.
Slices are sorted by their position along the slice normal (never by file name or InstanceNumber).
Geometric irregularities are detected and recorded as :class:`Anomaly` values; nothing is
resampled here. Each pipeline decides which anomalies it accepts.

Only headers are held: pixels are decoded when asked for, a slab of slices at a time
(:meth:`Volume.slabs`, :meth:`Volume.read`), so a pipeline that works slab by slab needs memory for
a slab, not for the series (a 2,000-slice CT is 2 GB as float32). :attr:`Volume.array` reads the
whole stack once, for pipelines that need it all.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from node.errors import AssemblyError

__all__ = ["Anomaly", "AnomalyKind", "Volume", "load_volume", "volume_from_datasets"]

#: Two positions closer than this (mm) along the normal are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: Values longer than this (bytes) are left in the file when headers are read: the pixel data.
_DEFER_BYTES = 64 * 1024
_PIXEL_DATA = 0x7FE00010
#: Relative deviation from the median spacing above which spacing is called irregular.
IRREGULAR_TOLERANCE = 0.01
#: A gap this many times the median spacing (or more) counts as missing slices.
MISSING_GAP_FACTOR = 1.5
#: ... and lies within this fraction of a whole multiple of it (7 mm in a 4 mm stack is not).
MISSING_GAP_SNAP = 0.15
#: Two orientations whose cosines differ by more than this are different orientations.
ORIENTATION_TOLERANCE = 1e-3
#: A slice-to-slice step whose angle to the normal exceeds this (degrees) is a tilted stack.
TILT_TOLERANCE_DEG = 0.5


class AnomalyKind(enum.StrEnum):
    """Kinds of geometric or header irregularity a series can have."""

    IRREGULAR_SPACING = "irregular_spacing"
    MISSING_SLICES = "missing_slices"
    DUPLICATE_POSITIONS = "duplicate_positions"
    GANTRY_TILT = "gantry_tilt"
    MIXED_ORIENTATIONS = "mixed_orientations"
    INCONSISTENT_FRAME_OF_REFERENCE = "inconsistent_frame_of_reference"
    SINGLE_SLICE = "single_slice"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One irregularity found while building a volume, with a short human-readable detail."""

    kind: AnomalyKind
    detail: str


@dataclass(frozen=True)
class Volume:
    """A series' slices in sorted order, their geometry and sources; pixels read on demand.

    Attributes
    ----------
    origin
        LPS position (mm) of the first voxel: row 0, column 0 of the first slice in sorted order.
    spacing
        ``(slice, row, column)`` spacing in mm; the slice spacing is the median step along the
        normal.
    direction
        3x3 matrix whose columns are the row direction (along a row, increasing column), the
        column direction (down a column, increasing row) and the slice normal, in LPS.
    datasets
        The source datasets in sorted order, without pixel data; ``datasets[k]`` is slice ``k``.
    positions
        Each slice's position along the normal (mm), in sorted order.
    anomalies
        What was found irregular; empty for a clean series.
    sources
        Where slice ``k``'s pixels come from: its file (read again when asked for) or a dataset
        that holds them; or the whole stack as an array (:meth:`with_array`).
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: npt.NDArray[np.float64]
    datasets: tuple[Dataset, ...]
    positions: tuple[float, ...]
    anomalies: tuple[Anomaly, ...]
    sources: tuple[Path | Dataset, ...] | npt.NDArray[np.float32] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        if isinstance(self.sources, np.ndarray):
            slices, rows, cols = self.sources.shape
            return (slices, rows, cols)
        first = self.datasets[0]
        return (len(self.datasets), int(first.Rows), int(first.Columns))

    def read(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """Slices ``start`` to ``stop`` (exclusive) in modality units (Hounsfield units for CT:
        the rescale slope and intercept are applied), ``(stop - start, rows, columns)`` float32.

        Raises
        ------
        AssemblyError
            If a slice's file is no longer readable or its pixel data cannot be decoded.
        """
        if isinstance(self.sources, np.ndarray):
            return np.array(self.sources[start:stop], dtype=np.float32)
        _, rows, cols = self.shape
        out = np.empty((len(self.sources[start:stop]), rows, cols), dtype=np.float32)
        for offset, source in enumerate(self.sources[start:stop]):
            out[offset] = _modality_pixels(_with_pixels(source), (rows, cols))
        return out

    def slabs(self, size: int) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
        """``(start, slab)`` for consecutive slabs of at most ``size`` slices (see :meth:`read`)."""
        slices = self.shape[0]
        for start in range(0, slices, size):
            yield start, self.read(start, min(start + size, slices))

    @cached_property
    def array(self) -> npt.NDArray[np.float32]:
        """The whole stack, ``(slices, rows, columns)`` float32 (see :meth:`read`), read once and
        kept: for pipelines that need the series at once. Slab-wise work should use
        :meth:`slabs`."""
        if isinstance(self.sources, np.ndarray):
            return self.sources
        return self.read(0, len(self.sources))

    def with_array(self, array: npt.ArrayLike, **changes: Any) -> Volume:
        """A copy of this volume whose pixels are ``array`` (held in memory), with the other
        fields in ``changes`` replaced: a crop, a slab, a series with something drawn in."""
        pixels = np.asarray(array, dtype=np.float32)
        if pixels.ndim != 3:
            raise ValueError(f"a volume's array is 3D, got shape {pixels.shape}")
        return dataclasses.replace(self, sources=pixels, **changes)

    @property
    def modality(self) -> str:
        """The series' Modality (e.g. ``"CT"``)."""
        return str(self.datasets[0].get("Modality", ""))

    @property
    def series_instance_uid(self) -> str:
        """The SeriesInstanceUID shared by every slice."""
        return str(self.datasets[0].get("SeriesInstanceUID", ""))

    @property
    def frame_of_reference_uid(self) -> str:
        """The FrameOfReferenceUID of the first slice in sorted order.

        When the series is inconsistent (an :attr:`AnomalyKind.INCONSISTENT_FRAME_OF_REFERENCE`
        anomaly), this is the one results are written in.
        """
        return str(self.datasets[0].get("FrameOfReferenceUID", ""))

    def has(self, kind: AnomalyKind) -> bool:
        """Whether an anomaly of ``kind`` was recorded."""
        return any(a.kind == kind for a in self.anomalies)


def load_volume(paths: Iterable[Path]) -> Volume:
    """Read the headers of one series' files and build its :class:`Volume` (pixels stay in the
    files until a pipeline reads them).

    Raises
    ------
    AssemblyError
        If a file is not readable DICOM, has no pixel data or image geometry, if the files
        belong to more than one series, or if slice dimensions differ.
    """
    datasets: list[Dataset] = []
    sources: list[Path | Dataset] = []
    for path in paths:
        try:
            # Values over 64 KiB (the pixel data) stay in the file until asked for.
            datasets.append(pydicom.dcmread(path, defer_size=_DEFER_BYTES))
        except Exception as exc:
            raise AssemblyError(
                f"{path.name}: not readable as DICOM ({type(exc).__name__})"
            ) from exc
        sources.append(path)
    volume = _assemble(datasets, sources)
    volume.read(0, 1)  # an undecodable series fails here, before any model runs
    return volume


def volume_from_datasets(datasets: Sequence[Dataset]) -> Volume:
    """Build a :class:`Volume` from read datasets with pixel data (see :func:`load_volume`)."""
    volume = _assemble(datasets, list(datasets))
    volume.read(0, 1)
    return volume


def _assemble(datasets: Sequence[Dataset], sources: Sequence[Path | Dataset]) -> Volume:
    if not datasets:
        raise AssemblyError("no instances to assemble")
    _require_one_series(datasets)
    by_id = {id(ds): source for ds, source in zip(datasets, sources, strict=True)}
    anomalies: list[Anomaly] = []

    orientations = [_orientation(ds) for ds in datasets]
    keys = [tuple(np.round(o, 3)) for o in orientations]
    majority, _ = Counter(keys).most_common(1)[0]
    if len(set(keys)) > 1:
        kept = [i for i, k in enumerate(keys) if k == majority]
        anomalies.append(
            Anomaly(
                AnomalyKind.MIXED_ORIENTATIONS,
                f"{len(set(keys))} orientations; kept the {len(kept)} slices of the commonest",
            )
        )
        datasets = [datasets[i] for i in kept]
        orientations = [orientations[i] for i in kept]
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_dir, col_dir)

    ipps = np.array([_position(ds) for ds in datasets])
    along = ipps @ normal
    order = np.argsort(along, kind="stable")
    datasets = [datasets[i] for i in order]
    ipps, along = ipps[order], along[order]

    keep = [0]
    for i in range(1, len(datasets)):
        if along[i] - along[keep[-1]] > DUPLICATE_TOLERANCE_MM:
            keep.append(i)
    if len(keep) < len(datasets):
        anomalies.append(
            Anomaly(
                AnomalyKind.DUPLICATE_POSITIONS,
                f"{len(datasets) - len(keep)} slices share a position with another; kept the first",
            )
        )
        datasets = [datasets[i] for i in keep]
        ipps, along = ipps[keep], along[keep]

    slice_spacing = _slice_spacing(along, anomalies)
    _check_tilt(datasets, ipps, normal, anomalies)
    frames_of_reference = {str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}
    if len(frames_of_reference) > 1:
        anomalies.append(
            Anomaly(
                AnomalyKind.INCONSISTENT_FRAME_OF_REFERENCE,
                f"{len(frames_of_reference)} different FrameOfReferenceUID values in one series",
            )
        )

    _require_one_size(datasets)
    pixel_spacing = [float(v) for v in datasets[0].PixelSpacing]
    headers = tuple(_without_pixels(ds) for ds in datasets)
    return Volume(
        origin=(float(ipps[0][0]), float(ipps[0][1]), float(ipps[0][2])),
        spacing=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        direction=np.stack([row_dir, col_dir, normal], axis=1),
        datasets=headers,
        positions=tuple(float(a) for a in along),
        anomalies=tuple(anomalies),
        sources=tuple(by_id[id(ds)] for ds in datasets),
    )


def _require_one_series(datasets: Sequence[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise AssemblyError(f"instances of {len(series)} series given as one")
    for ds in datasets:
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if keyword not in ds:
                raise AssemblyError(f"instance without {keyword}: not a cross-sectional image")
        if "PixelData" not in ds:
            raise AssemblyError("instance without PixelData")


def _orientation(ds: Dataset) -> npt.NDArray[np.float64]:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    if iop.shape != (6,):
        raise AssemblyError(f"ImageOrientationPatient has {iop.size} values, expected 6")
    row, col = iop[:3], iop[3:]
    return np.concatenate([row / np.linalg.norm(row), col / np.linalg.norm(col)])


def _position(ds: Dataset) -> npt.NDArray[np.float64]:
    ipp = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    if ipp.shape != (3,):
        raise AssemblyError(f"ImagePositionPatient has {ipp.size} values, expected 3")
    return ipp


def _slice_spacing(along: npt.NDArray[np.float64], anomalies: list[Anomaly]) -> float:
    if len(along) < 2:
        anomalies.append(Anomaly(AnomalyKind.SINGLE_SLICE, "one slice: no slice spacing"))
        return 0.0
    steps = np.diff(along)
    median = float(np.median(steps))
    ratios = steps / median
    gaps = (ratios >= MISSING_GAP_FACTOR) & (np.abs(ratios - np.round(ratios)) < MISSING_GAP_SNAP)
    if gaps.any():
        missing = int(np.sum(np.round(steps[gaps] / median) - 1))
        anomalies.append(
            Anomaly(
                AnomalyKind.MISSING_SLICES,
                f"{int(gaps.sum())} gap(s) in the stack, about {missing} slice(s) missing "
                f"at a median spacing of {median:.3f} mm",
            )
        )
    regular = steps[~gaps]
    if regular.size and float(np.max(np.abs(regular - median))) > IRREGULAR_TOLERANCE * median:
        anomalies.append(
            Anomaly(
                AnomalyKind.IRREGULAR_SPACING,
                f"slice spacing from {float(steps.min()):.3f} to {float(steps.max()):.3f} mm "
                f"(median {median:.3f})",
            )
        )
    return median


def _check_tilt(
    datasets: Sequence[Dataset],
    ipps: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    anomalies: list[Anomaly],
) -> None:
    tilt_header = float(datasets[0].get("GantryDetectorTilt", 0) or 0)
    sheared_deg = 0.0
    if len(ipps) >= 2:
        step = ipps[-1] - ipps[0]
        cos = abs(float(step @ normal)) / max(float(np.linalg.norm(step)), 1e-9)
        sheared_deg = float(np.degrees(np.arccos(min(cos, 1.0))))
    if abs(tilt_header) > TILT_TOLERANCE_DEG or sheared_deg > TILT_TOLERANCE_DEG:
        anomalies.append(
            Anomaly(
                AnomalyKind.GANTRY_TILT,
                f"GantryDetectorTilt {tilt_header:g} deg; slice stack {sheared_deg:.1f} deg "
                "off the slice normal",
            )
        )


def _require_one_size(datasets: Sequence[Dataset]) -> None:
    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    for ds in datasets:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise AssemblyError(
                f"slice size {int(ds.Rows)}x{int(ds.Columns)} differs from {shape[0]}x{shape[1]}"
            )


def _with_pixels(source: Path | Dataset) -> Dataset:
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(source)
    except Exception as exc:
        raise AssemblyError(f"{source.name}: not readable as DICOM ({type(exc).__name__})") from exc


def _modality_pixels(ds: Dataset, shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        ts = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID", "unknown")
        raise AssemblyError(
            f"pixel data not decodable (TransferSyntaxUID {ts}: {type(exc).__name__})"
        ) from exc
    if pixels.shape != shape:
        raise AssemblyError(f"pixel data of shape {pixels.shape}, expected {shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _without_pixels(ds: Dataset) -> Dataset:
    header = Dataset()
    # By tag: iterating a Dataset yields its elements, reading deferred pixel data.
    for tag in ds.keys():  # noqa: SIM118
        if tag != _PIXEL_DATA:
            header.add(ds[tag])
    header.file_meta = getattr(ds, "file_meta", FileMetaDataset())
    return header
