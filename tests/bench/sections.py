"""Every section of ``python -m tests.bench``, by name, with one calling convention."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.bench import appsdk, ingest, memory, serving, stow, time_to_result
from tests.bench.common import Row, Section

#: Targets of issue 6 for receive throughput: (case, reference) -> minimum node / reference.
RECEIVE_TARGETS = {
    ("0.5 MB x 4", "storescp"): 1.0,
    ("0.5 MB x 4", "orthanc"): 2.5,
    ("0.5 MB x 1", "storescp"): 0.6,
    ("15 KB x 4", "storescp"): 1.0,
}

Runner = Callable[[bool, Path | None, float], Section]


def receive(smoke: bool, workdir: Path | None, quiet_period_s: float) -> Section:
    """Receive throughput (``tests/bench/ingest.py``) as summary rows."""
    results = ingest.run(smoke=smoke, workdir=workdir)
    section = Section("Receive throughput (issue 6)")
    section.details += [
        "Receivers: node (durable, fsync + index before success, no rules), storescp (no "
        "fsync; --fork with 4 associations), Orthanc (SyncStorageArea). Sender: storescu. "
        f"dcmtk and Orthanc run with TCP_NODELAY=1. Median of {1 if smoke else 3} run(s).",
        ingest.table(results),
    ]
    for case, by_receiver in results.items():
        by = {r.receiver: r for r in by_receiver}
        node = by["node"]
        for reference in ("storescp", "orthanc"):
            other = by[reference]
            ratio = node.instances_per_s / other.instances_per_s
            target = RECEIVE_TARGETS.get((case, reference))
            section.rows.append(
                Row(
                    name=f"receive {case} vs {reference}",
                    node=f"{node.instances_per_s:.0f} inst/s",
                    reference=f"{other.instances_per_s:.0f} inst/s",
                    ratio=ratio,
                    target="(none set)" if target is None else f"≥ {target}",
                    met=None if target is None else ratio >= target,
                )
            )
    return section


SECTIONS: dict[str, Runner] = {
    "receive": receive,
    "stow": lambda smoke, workdir, quiet: stow.run(smoke=smoke, workdir=workdir),
    "time-to-result": lambda smoke, workdir, quiet: time_to_result.run(
        smoke=smoke, workdir=workdir, quiet_period_s=quiet
    ),
    "memory": lambda smoke, workdir, quiet: memory.run(
        smoke=smoke, workdir=workdir, quiet_period_s=quiet
    ),
    "appsdk": lambda smoke, workdir, quiet: appsdk.run(
        smoke=smoke, workdir=workdir, quiet_period_s=quiet
    ),
    "triton": lambda smoke, workdir, quiet: serving.run(smoke=smoke, workdir=workdir),
}
