"""PACS-side routing: a real Orthanc running the shipped ``deploy/orthanc`` configuration and
routing script forwards the series it selects to a real node, and nothing else.

Only what a test machine needs is changed from the shipped configuration: ports, storage folders,
the node's port, a short ``StableAge``, the script's absolute path and, per test, the
``PacsAiNode`` keys named in the test.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.peers import (
    REPO_ROOT,
    Orthanc,
    free_port,
    start_node,
    start_orthanc,
    stop_process,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration

SHIPPED = REPO_ROOT / "deploy" / "orthanc"
# Keys start_orthanc sets for a test machine (ports, folders, plugin list) are not taken over.
_SET_BY_THE_TEST = {"StorageDirectory", "IndexDirectory", "HttpPort", "DicomPort", "Plugins"}
_MARGIN_S = 2.0  # after a series is stable, time for the plugin to have acted on it


def shipped_config() -> dict[str, Any]:
    """The sample Orthanc configuration a PACS administrator adapts."""
    config: dict[str, Any] = json.loads((SHIPPED / "orthanc.json").read_text())
    return config


@pytest.fixture
def routing_orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """A factory: start Orthanc on the shipped configuration pointing at the node's port."""
    started: list[Orthanc] = []

    def start(node_port: int, **routing: Any) -> Orthanc:
        shipped = shipped_config()
        overrides = {k: v for k, v in shipped.items() if k not in _SET_BY_THE_TEST}
        node = shipped["PacsAiNode"]["NodeModality"]
        overrides["DicomModalities"] = {
            node: {**shipped["DicomModalities"][node], "Port": node_port}
        }
        overrides["PythonScript"] = str(SHIPPED / "route_to_node.py")
        overrides["StableAge"] = 1
        overrides["PacsAiNode"] = {**shipped["PacsAiNode"], **routing}
        orthanc = start_orthanc(
            tmp_path / f"orthanc{len(started)}",
            plugins=[Path(p) for p in shipped["Plugins"]],
            config_overrides=overrides,
        )
        started.append(orthanc)
        return orthanc

    yield start
    for orthanc in started:
        stop_process(orthanc.process)


def routing_log(orthanc: Orthanc) -> list[str]:
    """The routing script's lines in Orthanc's log."""
    if not orthanc.log_path.exists():
        return []
    return [line for line in orthanc.log_path.read_text().splitlines() if "PacsAiNode:" in line]


def wait_until_acted_on(orthanc: Orthanc) -> None:
    """Wait until Orthanc holds every series as stable, then a margin for the plugin."""
    wait_for(
        lambda: all(s["IsStable"] for s in orthanc.request("GET", "/series?expand")),
        timeout_s=60,
        interval_s=0.2,
        what="every series in Orthanc to be stable",
    )
    time.sleep(_MARGIN_S)


def store_jobs(orthanc: Orthanc) -> list[dict[str, Any]]:
    """Orthanc's C-STORE jobs (to any modality)."""
    jobs: list[dict[str, Any]] = orthanc.request("GET", "/jobs?expand")
    return [job for job in jobs if job["Type"] == "DicomModalityStore"]


def series_id_of(orthanc: Orthanc, instance_id: str) -> str:
    """The Orthanc ID of the series an instance belongs to."""
    series: dict[str, Any] = orthanc.request("GET", f"/instances/{instance_id}/series")
    return str(series["ID"])


def node_series(data_dir: Path) -> dict[str, int]:
    """SeriesInstanceUID → number of instances, for every series the node has received."""
    with sqlite3.connect(data_dir / "index.sqlite", timeout=5) as connection:
        rows = connection.execute("SELECT series_instance_uid, instance_count FROM series")
        return {str(uid): int(count) for uid, count in rows}


@pytest.mark.slow
def test_selected_series_reach_the_node_and_the_seg_comes_back_nothing_else_is_sent(
    routing_orthanc: Callable[..., Orthanc], lidc_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    node_port = free_port()
    orthanc = routing_orthanc(node_port)
    node = start_node(
        tmp_path / "node",
        dicom_port=node_port,
        allowed_calling_ae_titles=[orthanc.ae_title],
        destinations=orthanc.as_destination(),
    )
    try:
        chest_ct = sorted(lidc_dir.glob("*.dcm"))
        # Excluded by the shipped selector: a CT of another body part, and an MR.
        head_ct = sorted((shared_data / "dcm_qa_ct").glob("GE_HiSpeedDual_*/*.dcm"))
        brain_mr = sorted(
            (shared_data / "fnndsc-data/BCH_brain_MR_Siemens_TrioTim").glob("S018_*/*")
        )
        assert (len(chest_ct), len(head_ct), len(brain_mr)) == (55, 28, 1)

        # Only uploads to the PACS: nothing calls the node.
        chest_id = series_id_of(orthanc, orthanc.upload(chest_ct)[0])
        head_id = series_id_of(orthanc, orthanc.upload(head_ct)[0])
        mr_id = series_id_of(orthanc, orthanc.upload(brain_mr)[0])
        study_id = orthanc.request("GET", f"/series/{chest_id}")["ParentStudy"]

        wait_for(
            lambda: bool(orthanc.seg_series(study_id)),
            timeout_s=240,
            interval_s=0.5,
            what=f"a SEG in Orthanc (Orthanc log: {orthanc.log_path}, node log: {node.log_path})",
        )
        [seg] = orthanc.seg_series(study_id)
        wait_until_acted_on(orthanc)  # the SEG itself has become stable too

        # The node received the chest CT, whole, and nothing else: one job, done.
        chest = pydicom.dcmread(chest_ct[0], stop_before_pixels=True)
        assert node_series(node.data_dir) == {str(chest.SeriesInstanceUID): 55}
        listing = node.cli("jobs", "list")
        assert listing.returncode == 0, listing.stderr
        [job_line] = listing.stdout.splitlines()[1:]
        assert " done " in job_line

        # Orthanc ran one store job, to the node, for the chest CT; the log says so.
        [job] = store_jobs(orthanc)
        assert job["State"] == "Success"
        assert job["Content"]["RemoteAet"] == node.ae_title
        log = routing_log(orthanc)
        forwarded = [line for line in log if "forwarding series" in line]
        assert len(forwarded) == 1
        assert f"series {chest_id} " in forwarded[0]
        assert forwarded[0].endswith(f"as job {job['ID']}")
        assert any(f"series {chest_id} sent to 'ainode'" in line for line in log)
        assert not [line for line in log if any(i in line for i in (head_id, mr_id, seg["ID"]))]

        # No patient data and no DICOM UID in what the script logged.
        identifiers = set()
        for path in (chest_ct[0], head_ct[0], brain_mr[0]):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            identifiers |= {str(ds.get(k, "")) for k in ("PatientName", "PatientID")}
            identifiers |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
        identifiers |= {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in chest_ct
        }
        leaked = [i for i in identifiers if len(i) >= 4 and any(i in line for line in log)]
        assert leaked == []
    finally:
        stop_process(node.process)


def _copy_as_new_series(files: list[Path], out: Path) -> list[Path]:
    """Copies of ``files`` as a new series (new Series and SOP Instance UIDs)."""
    out.mkdir(parents=True)
    series_uid = generate_uid()
    copies = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copies.append(out / path.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


def test_node_down_fails_visibly_with_bounded_retries_and_the_nodes_own_series_is_not_sent_back(
    routing_orthanc: Callable[..., Orthanc], lidc_dir: Path, tmp_path: Path
) -> None:
    node_port = free_port()  # nothing listens there: the node is down
    orthanc = routing_orthanc(node_port, Retries=1, RetryDelaySeconds=1)
    files = sorted(lidc_dir.glob("*.dcm"))[:3]
    chest_id = series_id_of(orthanc, orthanc.upload(files)[0])

    wait_for(
        lambda: any("gave up after 2 attempt(s)" in line for line in routing_log(orthanc)),
        timeout_s=60,
        interval_s=0.2,
        what=f"the routing script to give up (Orthanc log: {orthanc.log_path})",
    )
    jobs = store_jobs(orthanc)
    assert [job["State"] for job in jobs] == ["Failure", "Failure"]
    log = routing_log(orthanc)
    assert any(
        f"series {chest_id} to 'ainode' failed" in line and "retry 1 of 1" in line for line in log
    )

    # A selected series that the node's AE title sent (as the node sends its results) is not
    # sent back: no new job.
    own = _copy_as_new_series(files, tmp_path / "from-node")
    sent = storescu(orthanc.dicom_port, own, called=orthanc.ae_title, calling="AINODE")
    assert sent.returncode == 0, sent.stderr
    wait_until_acted_on(orthanc)
    own_uid = str(pydicom.dcmread(own[0], stop_before_pixels=True).SeriesInstanceUID)
    [own_series] = orthanc.request("POST", "/tools/lookup", raw=own_uid.encode())
    own_id = own_series["ID"]
    assert any(f"series {own_id} came from the node" in line for line in routing_log(orthanc))
    assert len(store_jobs(orthanc)) == 2


# The validation errors share one path (the callback is never registered), so one of them and the
# undeclared node, found only once Orthanc runs, are enough to show that nothing is forwarded.
@pytest.mark.parametrize(
    ("routing", "error", "upload"),
    [
        pytest.param(
            {"Selectors": [{"Modality": "CT", "BodyPart": "CHEST"}]},
            "invalid configuration, nothing will be forwarded: Selectors[0]: unknown key(s) "
            "BodyPart",
            True,
            id="unknown-key",
        ),
        pytest.param(
            {"Selectors": [{"Modality": ["CT", "SEG"]}]},
            "Selectors[0].Modality: SEG are results of the node, never forwarded",
            False,
            id="result-modality",
        ),
        pytest.param(
            {"Selectors": [{"BodyPartExamined": "CHEST"}]},
            "Selectors[0]: 'Modality' is required",
            False,
            id="no-modality",
        ),
        pytest.param(
            {"NodeModality": "elsewhere"},
            "NodeModality 'elsewhere' is not declared in DicomModalities",
            True,
            id="undeclared-node",
        ),
    ],
)
def test_a_bad_routing_block_is_one_clear_error_at_start_and_nothing_is_forwarded(
    routing_orthanc: Callable[..., Orthanc],
    lidc_dir: Path,
    routing: dict[str, Any],
    error: str,
    upload: bool,
) -> None:
    orthanc = routing_orthanc(free_port(), **routing)
    wait_for(
        lambda: any(error in line for line in routing_log(orthanc)),
        timeout_s=20,
        what=f"the error {error!r} in Orthanc's log ({orthanc.log_path})",
    )
    [line] = routing_log(orthanc)
    assert line.startswith("E")  # logged as an error
    assert orthanc.request("GET", "/system")["Version"]  # Orthanc keeps running
    if upload:
        orthanc.upload(sorted(lidc_dir.glob("*.dcm"))[:2])
        wait_until_acted_on(orthanc)
        assert store_jobs(orthanc) == []
