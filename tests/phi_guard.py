"""A pytest plugin: no test may leave a patient identifier from the shared data in a log.

It harvests PatientName, PatientID, PatientBirthDate, AccessionNumber, InstitutionName and
ReferringPhysicianName values from every DICOM file in the shared data, then fails any test whose
log output contains one: what the test's process logged (captured stderr and log records) and the
``node.log`` files of node subprocesses under its ``tmp_path``. Values too short or too generic to
identify anyone (``Anonymous``, ``0010``) are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from pathlib import Path

import pydicom
import pytest

from tests.paths import shared_data_root

_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
)
_GENERIC = {"anonymized", "anonymous", "unknown", "removed", "^^^^", "last name^first name"}


@functools.cache
def identifiers() -> dict[str, str]:
    """Identifier value → the attribute it came from, for every file in the shared data."""
    found: dict[str, str] = {}
    for path in shared_data_root().rglob("*"):
        if not path.is_file() or path.suffix in {".md", ".txt", ".gz", ".json"}:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: S112 - not DICOM: nothing to harvest
            continue
        for keyword in _KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            if value.isdigit():
                identifying = len(value) >= 8  # dates, long IDs and accession numbers
            else:
                identifying = len(value) >= 5 and value.lower() not in _GENERIC
            if identifying:
                found[value] = keyword
    return found


def _leaks(text: str) -> set[str]:
    return {keyword for value, keyword in identifiers().items() if value in text}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Turn a passing phase into a failure when its logs hold a patient identifier."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if "pytester" in getattr(item, "fixturenames", ()):
        return  # it runs other tests in this process on purpose: they are judged themselves
    # Captured output accumulates over the phases: read it at "call", the node logs at teardown.
    text = report.capstderr + report.caplog if report.when == "call" else ""
    if report.when == "teardown":
        tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
        if isinstance(tmp_path, Path):
            for log in tmp_path.rglob("node.log"):
                text += log.read_text(errors="replace")
    leaks = _leaks(text) if text else set()
    if leaks and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"patient identifiers from the test data appear in the logs: {sorted(leaks)}"
        )
