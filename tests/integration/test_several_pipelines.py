"""One series, three pipelines: lung segmentation, nodule detection and body-region
classification, each its own job with its own results, all delivered to a real storescp.

The rules use ``continue: true`` so that the chest CT matches all three; the nodule and region
rules ask for explanations. Each job's objects are dciodvfy-clean, reference the source
series, name their model and version, and have UIDs no other job shares; a job run again (a
retry) writes and sends the same objects, never new ones.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import update

from dicom_sr import dciodvfy_errors
from node.backends.embedded import EmbeddedBackend
from node.config import DimseDestination
from node.export.dimse import DimseExporter
from node.jobs.queue import claim_next, get_job, release
from node.jobs.runner import ExportRetry, JobRunner
from node.models.repository import ModelRepository
from node.routing.rules import RuleSet
from node.store.database import Database
from node.store.models import Job, JobState
from node.store.spool import Spool
from tests.integration.test_job_runner import _receive_folder
from tests.peers import REPO_ROOT, start_storescp, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
RULES = RuleSet.model_validate(
    {
        "rules": [
            {"name": "lungs", "priority": 30, "continue": True, "pipeline": "lung_seg",
             "model": "lung_seg@1", "destinations": ["pacs"]},
            {"name": "nodules", "priority": 20, "continue": True, "pipeline": "nodule_det",
             "model": "nodule_det@1", "explain": True, "destinations": ["pacs"]},
            {"name": "region", "priority": 10, "pipeline": "ct_region", "model": "ct_region@1",
             "explain": True, "destinations": ["pacs"]},
        ]
    }
)  # fmt: skip


def _runner(spool: Spool, db: Database, port: int) -> JobRunner:
    exporter = DimseExporter(
        "pacs",
        DimseDestination(host="127.0.0.1", port=port, ae_title="STORESCP"),
        calling_ae_title="AINODE",
        timeout_s=10,
    )
    return JobRunner(
        db=db,
        spool=spool,
        backend=EmbeddedBackend(REPO_ROOT / "model_repository", num_threads=2),
        exporters={"pacs": exporter},
        retry=ExportRetry(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02),
        series_number=9001,
        models=ModelRepository(REPO_ROOT / "model_repository"),
    )


def _run_all(db: Database, runner: JobRunner) -> None:
    while (job := claim_next(db)) is not None:
        try:
            runner.run(job)
        finally:
            release(db, job.id)


def test_one_series_three_pipelines_independent_results(
    spool_and_db: tuple[Spool, Database], lidc_dir: Path, tmp_path: Path
) -> None:
    spool, db = spool_and_db
    _receive_folder(spool, db, lidc_dir, RULES)
    received = tmp_path / "received"
    storescp, port = start_storescp(received)
    try:
        runner = _runner(spool, db, port)
        _run_all(db, runner)
        jobs = {j.rule_name: j for j in (get_job(db, i) for i in (1, 2, 3)) if j is not None}
        assert {name: job.state for name, job in jobs.items()} == dict.fromkeys(
            ("lungs", "nodules", "region"), JobState.DONE
        )
        assert [jobs[n].explain for n in ("lungs", "nodules", "region")] == [False, True, True]
        objects = {
            name: [pydicom.dcmread(spool.absolute(p)) for p in job.result_paths]
            for name, job in jobs.items()
        }
        assert [d.SOPClassUID for d in objects["lungs"]] == [SEG]
        assert [d.SOPClassUID for d in objects["nodules"]] == [
            SEG,
            COMPREHENSIVE_SR,
            PARAMETRIC_MAP,
        ]
        assert [d.SOPClassUID for d in objects["region"]] == [COMPREHENSIVE_SR, PARAMETRIC_MAP]
        every = [d for found in objects.values() for d in found]
        assert len({d.SOPInstanceUID for d in every}) == len(every) == 6
        assert len({d.SeriesInstanceUID for d in every}) == 6
        for name, job in jobs.items():
            for path in job.result_paths:
                assert dciodvfy_errors(spool.absolute(path)) == [], (name, path)
        # The region job's report: the chest, with its probability, from ct_region 1.
        [group] = hd.sr.srread(
            spool.absolute(jobs["region"].result_paths[0])
        ).content.get_image_measurement_groups()
        assert group.finding_type.meaning == "Chest"
        # storescp holds exactly the six objects.
        delivered = {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()}
        assert delivered == {d.SOPInstanceUID for d in every}

        # A retry of the nodule job (as after a crash mid-export) writes and sends the same
        # objects: the same files, UIDs and deliveries, nothing new.
        before = list(jobs["nodules"].result_paths)
        with db.session() as session:
            session.execute(
                update(Job).where(Job.id == jobs["nodules"].id).values(state=JobState.PENDING)
            )
        _run_all(db, runner)
        again = get_job(db, jobs["nodules"].id)
        assert again is not None
        assert again.state == JobState.DONE
        assert list(again.result_paths) == before
        assert {pydicom.dcmread(spool.absolute(p)).SOPInstanceUID for p in again.result_paths} == {
            d.SOPInstanceUID for d in objects["nodules"]
        }
        assert len(again.deliveries) == 3
        assert {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()} == delivered
    finally:
        stop_process(storescp)
