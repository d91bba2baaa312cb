"""Logs carry allow-listed fields only, UIDs as hashes, and no library chatter below WARNING."""

from __future__ import annotations

import json
import logging

import pytest

from node.logging import configure_logging, get_logger, short_uid


def test_unknown_keys_are_dropped_and_json_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    get_logger("node.test").info(
        "series.routed",
        series=short_uid("1.2.3"),
        count=1,
        patient_name="DOE^JANE",
        accession_number="A123",
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "series.routed"
    assert event["series"] == short_uid("1.2.3") != "1.2.3"
    assert "DOE^JANE" not in line
    assert "A123" not in line


def test_library_info_is_silenced_but_warnings_pass(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    logging.getLogger("highdicom.base").info('copy attributes from dataset "1.2.3.4"')
    logging.getLogger("pynetdicom.acse").warning("association rejected")
    err = capsys.readouterr().err
    assert "1.2.3.4" not in err
    assert "association rejected" in err


def test_short_uid_is_stable_and_short() -> None:
    assert short_uid("1.2.840.10008") == short_uid("1.2.840.10008")
    assert len(short_uid("1.2.840.10008")) == 12
