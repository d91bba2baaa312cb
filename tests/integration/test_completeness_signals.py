"""Explicit completeness signals on the running node: a count, and clean releases.

The node runs with a 60 s quiet period, so a job that starts at once was started by a signal.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from node.export.requestor import answers_only_to_caller
from node.store.database import Database
from node.store.index import series_instance_paths
from node.store.models import Job, JobEvent, JobState
from tests.peers import RunningNode, start_node, stop_process, wait_for

pytestmark = pytest.mark.integration

SLICES = 12  # the shipped lung rule wants 10 or more


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    running = start_node(
        tmp_path / "node",
        quiet_period_s=60,
        destinations={"pacs": {"host": "127.0.0.1", "port": 9, "ae_title": "NOBODY"}},
    )
    yield running
    stop_process(running.process)


def new_series(lidc_dir: Path, *, images_in_acquisition: int | None) -> list[Dataset]:
    """The first slices of the LIDC chest CT as a new series (fresh UIDs)."""
    series, study = generate_uid(), generate_uid()
    out = []
    for path in sorted(lidc_dir.glob("*.dcm"))[:SLICES]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if images_in_acquisition is None:
            ds.pop("ImagesInAcquisition", None)
        else:
            ds.ImagesInAcquisition = images_in_acquisition
        out.append(ds)
    return out


def associate(node: RunningNode, transfer_syntax: str) -> Association:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, transfer_syntax)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    answers_only_to_caller(assoc)
    return assoc


def send(assoc: Association, datasets: list[Dataset]) -> None:
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000


def jobs_and_starts(node: RunningNode) -> list[tuple[Job, dt.datetime | None]]:
    db = Database(f"sqlite:///{node.data_dir / 'index.sqlite'}")
    try:
        with db.session() as session:
            jobs = list(session.scalars(select(Job)))
            starts = {
                event.job_id: event.at
                for event in session.scalars(
                    select(JobEvent).where(JobEvent.state == JobState.RUNNING)
                )
            }
            return [(job, starts.get(job.id)) for job in jobs]
    finally:
        db.dispose()


def test_a_counted_series_starts_its_job_without_waiting(node: RunningNode, lidc_dir: Path) -> None:
    datasets = new_series(lidc_dir, images_in_acquisition=SLICES)
    assoc = associate(node, datasets[0].file_meta.TransferSyntaxUID)
    try:
        send(assoc, datasets)
        last_acknowledged = dt.datetime.now(dt.UTC)
        wait_for(
            lambda: any(start for _, start in jobs_and_starts(node)),
            timeout_s=10,
            what="the job to start while the association is still open",
        )
    finally:
        assoc.release()
    [(_, started)] = jobs_and_starts(node)
    assert started is not None
    lag = (started.replace(tzinfo=dt.UTC) - last_acknowledged).total_seconds()
    assert lag <= 0.5, f"the job started {lag:.2f} s after the last instance"


def test_two_associations_sending_halves_make_one_job_after_both(
    node: RunningNode, lidc_dir: Path
) -> None:
    datasets = new_series(lidc_dir, images_in_acquisition=None)
    syntax = datasets[0].file_meta.TransferSyntaxUID
    first, second = associate(node, syntax), associate(node, syntax)
    try:
        send(first, datasets[: SLICES // 2])
        send(second, datasets[SLICES // 2 :])
        first.release()
        time.sleep(1.5)  # many polls of the completeness watcher
        assert jobs_and_starts(node) == [], "routed while the second association was open"
    finally:
        second.release()
    wait_for(lambda: len(jobs_and_starts(node)) > 0, timeout_s=5, what="the job after both")
    time.sleep(0.5)
    [(job, _)] = jobs_and_starts(node)
    assert job.inputs_up_to is not None
    db = Database(f"sqlite:///{node.data_dir / 'index.sqlite'}")
    try:
        assert len(series_instance_paths(db, job.series_id, up_to=job.inputs_up_to)) == SLICES
    finally:
        db.dispose()
