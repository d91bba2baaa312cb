"""Tests of dicom_sr.validate against real files and the real dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_sr import DciodvfyNotInstalledError, dciodvfy_errors, dciodvfy_messages


def test_errors_of_a_source_file_are_reported(shared_data: Path) -> None:
    # The dcmqi CT is known to violate the CT IOD (PS3.3 C.7.3.1, C.12.1): we must see it.
    errors = dciodvfy_errors(shared_data / "dcmqi/ct-3slice_with_SEG/CT/01.dcm")

    assert any("<Laterality>" in line for line in errors)
    assert any("<SpecificCharacterSet>" in line for line in errors)
    assert all(line.startswith("Error") for line in errors)


def test_a_valid_third_party_seg_has_warnings_but_no_errors(shared_data: Path) -> None:
    path = shared_data / "dcmqi/ct-3slice_with_SEG/SEG_liver.dcm"

    messages = dciodvfy_messages(path)

    assert "Segmentation" in messages
    assert any(line.startswith("Warning") for line in messages)
    assert dciodvfy_errors(path) == []


def test_a_dataset_is_written_to_a_temporary_file(shared_data: Path) -> None:
    dataset = pydicom.dcmread(shared_data / "dcmqi/ct-3slice_with_SEG/SEG_liver.dcm")

    assert dciodvfy_errors(dataset) == []


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no DICOM file"):
        dciodvfy_errors(tmp_path / "absent.dcm")


def test_a_missing_dciodvfy_raises_a_clear_error(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(DciodvfyNotInstalledError, match="dciodvfy was not found on PATH"):
        dciodvfy_errors(shared_data / "dcmqi/ct-3slice_with_SEG/SEG_liver.dcm")
