"""Shadow runs: a second model version on the same volume, compared with the job's, never sent.

A shadow lets an administrator see how a candidate version would do on the node's real traffic
before promoting it (``pacs-ai-node models shadow NAME@VERSION``, or a rule's ``shadow``). It
runs after the job's own result is written; its SEG stays in the spool next to the job's and its
outcome (Dice against the job's result per segment, or why it did not run) is stored on the job
(``jobs show``). Nothing the shadow does changes the job: a refusal or a failure is recorded and
the job goes on to export its own result.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from node.assembly.volume import Volume
from node.backends.base import Backend
from node.errors import NodeError, NotAccepted
from node.jobs.results import write_results
from node.logging import get_logger
from node.models.guard import check_intended_use
from node.models.repository import ModelRepository
from node.pipelines.base import Pipeline
from node.pipelines.findings import Findings
from node.store.models import Job
from node.store.spool import Spool

__all__ = ["SHADOW_PREFIX", "compare", "describe_shadow", "dice", "run_shadow", "summarize_shadow"]

log = get_logger(__name__)

#: Output name prefix of a shadow's result files (the job's own are ``seg<index>``, ``sr``, ...;
#: the shadow's ``shadow-seg<index>``, ...).
SHADOW_PREFIX = "shadow-"


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice overlap of two masks of the same shape; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare(primary: Findings, shadow: Findings) -> dict[str, float]:
    """Dice per segment name between the job's findings and the shadow's (same label maps)."""
    scores: dict[str, float] = {}
    for mine, theirs in zip(primary.label_maps, shadow.label_maps, strict=False):
        if mine.array.shape != theirs.array.shape:
            continue
        for segment in mine.segments:
            scores[segment.name] = round(
                dice(mine.array == segment.label, theirs.array == segment.label), 5
            )
    return scores


def run_shadow(
    *,
    job: Job,
    volume: Volume,
    findings: Findings,
    pipeline: Pipeline,
    backend: Backend,
    models: ModelRepository,
    spool: Spool,
    series_number: int,
) -> dict[str, Any]:
    """Run ``job.shadow_version`` on ``volume`` and compare it with the job's ``findings``.

    Returns
    -------
    dict
        ``{"version", "outcome": "compared", "dice": {segment: value}, "paths": [...],
        "duration_s"}``, or ``{"version", "outcome": "refused" | "failed", "reason"}``.
    """
    version = str(job.shadow_version)
    started = time.monotonic()
    try:
        check_intended_use(volume, models.card(job.model, version))
        pipeline.check(volume)
        shadow = pipeline.run(volume, backend, job.model, version)
        files = write_results(
            shadow,
            volume,
            job_uid=job.uid,
            spool=spool,
            series_number=series_number,
            output_prefix=SHADOW_PREFIX,
        )
    except NotAccepted as exc:
        log.info("shadow.refused", job_id=job.id, version=version, reason=exc.reason)
        return {"version": version, "outcome": "refused", "reason": exc.reason}
    except NodeError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("shadow.failed", job_id=job.id, version=version, reason=reason)
        return {"version": version, "outcome": "failed", "reason": reason}
    except Exception as exc:  # a shadow's bug must never fail the job
        reason = f"unexpected {type(exc).__name__}"
        log.exception("shadow.failed", job_id=job.id, version=version, reason=reason)
        return {"version": version, "outcome": "failed", "reason": reason}
    scores = compare(findings, shadow)
    duration = round(time.monotonic() - started, 2)
    log.info("shadow.compared", job_id=job.id, version=version, duration_s=duration)
    return {
        "version": version,
        "outcome": "compared",
        "dice": scores,
        "paths": [f.path for f in files],
        "duration_s": duration,
    }


def summarize_shadow(outcome: dict[str, Any]) -> str:
    """The shadow's outcome in words, e.g. ``"Dice against this job's result: Lung 0.9871"``."""
    if outcome.get("outcome") == "compared":
        scores = ", ".join(f"{name} {value:.4f}" for name, value in outcome["dice"].items())
        return f"Dice against this job's result: {scores or 'nothing to compare'}"
    return f"{outcome.get('outcome', '?')}: {outcome.get('reason', '')}"


def describe_shadow(outcome: dict[str, Any]) -> str:
    """One line for the job's history: ``"shadow @2: Dice against this job's result: ..."``."""
    return f"shadow @{outcome.get('version', '?')}: {summarize_shadow(outcome)}"
