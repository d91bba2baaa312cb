"""Tests of dicom_sr._common: derived UIDs, algorithm identification, software versions."""

from __future__ import annotations

import importlib.metadata
import uuid

import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from dicom_sr import (
    PACKAGE_NAME,
    UID_NAMESPACE,
    AlgorithmIdentification,
    derive_uid,
    software_versions,
)


def test_derive_uid_is_stable_and_valid() -> None:
    first = derive_uid("job-0001", "lung-seg", "instance")
    again = derive_uid("job-0001", "lung-seg", "instance")

    assert first == again
    assert first.startswith("2.25.")
    assert len(first) <= 64
    assert UID(first).is_valid


def test_derive_uid_is_the_uuid5_of_the_joined_parts() -> None:
    expected = uuid.uuid5(UID_NAMESPACE, "job-0001/lung-seg/series").int

    assert derive_uid("job-0001", "lung-seg", "series") == f"2.25.{expected}"


def test_derive_uid_differs_for_different_parts() -> None:
    uids = {
        derive_uid("job-0001", "lung-seg", "series"),
        derive_uid("job-0001", "lung-seg", "instance"),
        derive_uid("job-0002", "lung-seg", "series"),
        derive_uid("job-0001", "liver-seg", "series"),
    }

    assert len(uids) == 4


@pytest.mark.parametrize("parts", [(), ("job", ""), ("",)])
def test_derive_uid_rejects_missing_parts(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="derive_uid"):
        derive_uid(*parts)


def test_algorithm_family_defaults_to_artificial_intelligence() -> None:
    algorithm = AlgorithmIdentification(name="lung-seg", version="3")

    assert algorithm.family == codes.DCM.ArtificialIntelligence
    assert algorithm.family.value == "123110"
    assert algorithm.family.scheme_designator == "DCM"


def test_algorithm_to_sequence_carries_name_version_family_source() -> None:
    algorithm = AlgorithmIdentification(name="lung-seg", version="3", source="pacs-ai-node")

    (item,) = algorithm.to_sequence()

    assert item.AlgorithmName == "lung-seg"
    assert item.AlgorithmVersion == "3"
    assert item.AlgorithmSource == "pacs-ai-node"
    assert item.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"


def test_algorithm_without_source_writes_no_source() -> None:
    (item,) = AlgorithmIdentification(name="lung-seg", version="3").to_sequence()

    assert "AlgorithmSource" not in item


@pytest.mark.parametrize(
    ("name", "version", "match"),
    [
        ("", "1", "name must not be empty"),
        ("lung", " ", "version must not be empty"),
        ("x" * 65, "1", "at most 64"),
        ("a\\b", "1", "backslash"),
    ],
)
def test_algorithm_rejects_invalid_values(name: str, version: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AlgorithmIdentification(name=name, version=version)


def test_software_versions_is_the_installed_package_version() -> None:
    try:
        expected = importlib.metadata.version(PACKAGE_NAME)
    except importlib.metadata.PackageNotFoundError:
        expected = "0+unknown"

    assert software_versions() == expected
