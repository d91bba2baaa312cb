"""Volume assembly on real series from the shared data, and on edited copies of them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.assembly.volume import AnomalyKind, load_volume, volume_from_datasets
from node.errors import AssemblyError


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".md"))


@pytest.fixture(scope="module")
def lidc_datasets(lidc_dir: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in _files(lidc_dir)]


def test_lidc_is_sorted_by_position_not_file_name(lidc_datasets: list[pydicom.Dataset]) -> None:
    volume = volume_from_datasets(lidc_datasets)
    assert volume.array.shape == (55, 512, 512)
    assert volume.spacing == pytest.approx((5.0, 0.78125, 0.78125))
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z)
    assert z[0] == pytest.approx(-679.8, abs=0.1)
    assert volume.origin[2] == pytest.approx(z[0])
    np.testing.assert_allclose(volume.direction, np.eye(3))
    # HU: air outside the body is about -1000 after the rescale intercept.
    assert float(np.median(volume.array[:, :10, :10])) < -900
    kinds = {a.kind for a in volume.anomalies}
    assert kinds == {AnomalyKind.INCONSISTENT_FRAME_OF_REFERENCE}
    assert volume.frame_of_reference_uid == str(volume.datasets[0].FrameOfReferenceUID)
    assert "PixelData" not in volume.datasets[0]


def test_gantry_tilt_and_irregular_spacing_are_recorded(shared_data: Path) -> None:
    folder = shared_data / "dcm_qa_ct" / "GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing"
    volume = load_volume(_files(folder))
    assert volume.array.shape == (28, 512, 512)
    assert volume.has(AnomalyKind.GANTRY_TILT)
    assert volume.has(AnomalyKind.IRREGULAR_SPACING)
    # 7 mm steps in a 4 mm stack are variable spacing, not missing slices.
    assert not volume.has(AnomalyKind.MISSING_SLICES)
    tilt = next(a for a in volume.anomalies if a.kind == AnomalyKind.GANTRY_TILT)
    assert "18.5" in tilt.detail


@pytest.mark.parametrize("series", ["S006_AX_FSE_T2", "S005_mocoMEMPRAGE_220FOV_RMS"])
def test_missing_slice_is_recorded(shared_data: Path, series: str) -> None:
    folder = shared_data / "fnndsc-data" / "BCH_brain_MR_Siemens_TrioTim" / series
    volume = load_volume(_files(folder))
    missing = [a for a in volume.anomalies if a.kind == AnomalyKind.MISSING_SLICES]
    assert len(missing) == 1
    assert "about 1 slice(s) missing" in missing[0].detail
    assert not volume.has(AnomalyKind.IRREGULAR_SPACING)


def test_duplicate_positions_are_dropped_and_recorded(lidc_datasets: list[pydicom.Dataset]) -> None:
    duplicate = copy.deepcopy(lidc_datasets[3])
    duplicate.SOPInstanceUID = pydicom.uid.generate_uid()
    volume = volume_from_datasets([*lidc_datasets, duplicate])
    assert volume.array.shape[0] == 55
    assert volume.has(AnomalyKind.DUPLICATE_POSITIONS)


def test_mixed_orientations_keep_the_commonest(lidc_datasets: list[pydicom.Dataset]) -> None:
    scout = copy.deepcopy(lidc_datasets[0])
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    volume = volume_from_datasets([*lidc_datasets[1:], scout])
    assert volume.has(AnomalyKind.MIXED_ORIENTATIONS)
    assert volume.array.shape[0] == 54


def test_inputs_that_make_no_volume_are_refused(
    lidc_datasets: list[pydicom.Dataset], shared_data: Path
) -> None:
    with pytest.raises(AssemblyError, match="no instances"):
        volume_from_datasets([])
    other = copy.deepcopy(lidc_datasets[0])
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(AssemblyError, match="2 series"):
        volume_from_datasets([lidc_datasets[1], other])
    waveform = pydicom.dcmread(shared_data / "pydicom-3.0.2/test_files/waveform_ecg.dcm")
    with pytest.raises(AssemblyError, match="not a cross-sectional image"):
        volume_from_datasets([waveform])
    with pytest.raises(AssemblyError, match="not readable as DICOM"):
        load_volume([shared_data / "MANIFEST.md"])


def test_undecodable_pixel_data_is_an_assembly_error(shared_data: Path) -> None:
    with pytest.raises(AssemblyError, match="pixel data not decodable"):
        load_volume([shared_data / "pydicom-3.0.2/test_files/MR_truncated.dcm"])


def test_files_are_read_a_slab_at_a_time(
    lidc_dir: Path, lidc_datasets: list[pydicom.Dataset], tmp_path: Path
) -> None:
    """load_volume holds headers only; slabs decode the files when asked for, in sorted order,
    and equal the stack built from datasets in memory."""
    copies = []
    for path in _files(lidc_dir):
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    volume = load_volume(copies)
    assert volume.shape == (55, 512, 512)
    assert all("PixelData" not in ds for ds in volume.datasets)
    assert all(isinstance(source, Path) for source in volume.sources)
    assert "array" not in volume.__dict__  # nothing decoded but the first slice, as a check
    slabs = list(volume.slabs(16))
    assert [start for start, _ in slabs] == [0, 16, 32, 48]
    stacked = np.concatenate([slab for _, slab in slabs])
    np.testing.assert_array_equal(stacked, volume_from_datasets(lidc_datasets).array)
    np.testing.assert_array_equal(volume.read(30, 31)[0], stacked[30])
    # A file gone after assembly (the spool lost it) is the job's AssemblyError, by name.
    missing = volume.sources[40]
    assert isinstance(missing, Path)
    missing.unlink()
    with pytest.raises(AssemblyError, match=f"{missing.name}: not readable as DICOM"):
        volume.read(32, 48)


def test_a_volume_can_carry_an_array_of_its_own(lidc_datasets: list[pydicom.Dataset]) -> None:
    volume = volume_from_datasets(lidc_datasets)
    crop = volume.with_array(volume.array[10:13, 5:25, 7:30])
    assert crop.shape == (3, 20, 23)
    np.testing.assert_array_equal(crop.read(1, 3), volume.array[11:13, 5:25, 7:30])
    with pytest.raises(ValueError, match="3D"):
        volume.with_array(volume.array[0])
