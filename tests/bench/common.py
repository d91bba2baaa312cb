"""What the benchmark sections share: result rows, the summary table, series synthesis, probes.

Every section returns a :class:`Section`: its rows for the one summary table that
``python -m tests.bench`` prints, and the detail lines (conditions, breakdowns) printed above it.
A row that could not be measured says why instead of carrying a number.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.paths import shared_data_root
from tests.peers import Orthanc, RunningNode, start_node, start_orthanc, stop_process, wait_for

#: The shared LIDC chest CT: 55 axial 512x512 slices, a different FrameOfReferenceUID on each.
LIDC = Path("fnndsc-data") / "LIDC-IDRI-0314_CT_chest_every5th_slice"
#: Job states after which a job does nothing more by itself.
FINAL_STATES = frozenset({"done", "rejected", "failed", "dead"})


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary table: the node's figure, the reference's, their ratio, the target.

    ``met`` is None when the issue sets no target or nothing was measured; ``note`` replaces the
    figures when the row was not measured.
    """

    name: str
    node: str = ""
    reference: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Section:
    """One section's rows and the lines that say how they were measured."""

    title: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def not_measured(name: str, why: str, target: str = "") -> Row:
    """A row that says why it has no figures."""
    return Row(name=name, target=target, note=f"not measured yet ({why})")


def summary_table(sections: Sequence[Section]) -> str:
    """One Markdown table with every section's rows."""
    lines = [
        "| row | node | reference | ratio | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for section in sections:
        for row in section.rows:
            if row.note:
                lines.append(f"| {row.name} | {row.note} | | | {row.target} | |")
                continue
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
            met = "" if row.met is None else ("yes" if row.met else "no")
            lines.append(
                f"| {row.name} | {row.node} | {row.reference} | {ratio} | {row.target} | {met} |"
            )
    return "\n".join(lines)


def print_section(section: Section) -> None:
    """Print a section's details and its rows (what a section run alone shows)."""
    print(f"## {section.title}", flush=True)
    for line in section.details:
        print(line)
    print(summary_table([section]), flush=True)


def lidc_files() -> list[Path]:
    """The LIDC chest CT's files, by name (not in slice order)."""
    files = sorted((shared_data_root() / LIDC).glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no LIDC files under {shared_data_root() / LIDC}")
    return files


def read_lidc_in_z_order() -> list[Dataset]:
    """The LIDC slices, read with their pixels, sorted by position from feet to head."""
    datasets = [pydicom.dcmread(p) for p in lidc_files()]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def write_series(
    out: Path,
    count: int,
    *,
    tag: str,
    sources: Sequence[Dataset] | None = None,
    new_study: bool = False,
    one_frame_of_reference: bool = False,
    restack: bool = False,
    spacing_mm: float = 1.0,
) -> list[Path]:
    """Write ``count`` instances of one new CT series built from the LIDC slices.

    Parameters
    ----------
    out
        Folder for the files (created).
    count
        Instances to write; the LIDC slices are used in z order, cycling when ``count`` is larger.
    tag
        Makes the new UIDs unique and deterministic.
    sources
        The LIDC datasets in z order (read once by the caller when writing several series).
    new_study
        Give the series a new StudyInstanceUID too (otherwise it stays in the LIDC study).
    one_frame_of_reference
        One new FrameOfReferenceUID for every instance (the LIDC slices each have their own).
    restack
        Give each instance its own position, ``spacing_mm`` apart along z, and InstanceNumber, so
        that ``count`` above 55 is a longer series (the pixels repeat), not duplicate positions.
    spacing_mm
        The slice spacing of a restacked series (the LIDC scan's own was 1 mm).

    Returns
    -------
    list of Path
        The files, in the order written.
    """
    datasets = list(sources) if sources is not None else read_lidc_in_z_order()
    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=["bench", tag, "series"])
    study_uid = generate_uid(entropy_srcs=["bench", tag, "study"]) if new_study else None
    frame_uid = generate_uid(entropy_srcs=["bench", tag, "for"]) if one_frame_of_reference else None
    z0 = float(datasets[0].ImagePositionPatient[2])
    files = []
    for k in range(count):
        ds = copy.deepcopy(datasets[k % len(datasets)])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench", tag, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        if frame_uid is not None:
            ds.FrameOfReferenceUID = frame_uid
        if restack:
            x, y, _ = (float(v) for v in ds.ImagePositionPatient)
            z = round(z0 + spacing_mm * k, 3)
            ds.ImagePositionPatient = [x, y, z]
            ds.InstanceNumber = k + 1
            if "SliceLocation" in ds:
                ds.SliceLocation = z
        path = out / f"{k:05d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


@contextmanager
def orthanc_and_node(
    workdir: Path, *, quiet_period_s: float, torch_threads: int
) -> Iterator[tuple[Orthanc, RunningNode]]:
    """A fresh Orthanc, and a node (shipped rules) that sends its results there; both are
    stopped on the way out, whatever happened (also when the node fails to start)."""
    orthanc = start_orthanc(workdir / "orthanc")
    try:
        node = start_node(
            workdir / "node",
            destinations=orthanc.as_destination(),
            quiet_period_s=quiet_period_s,
            torch_threads=torch_threads,
            log_level="WARNING",
        )
        try:
            yield orthanc, node
        finally:
            stop_process(node.process, timeout_s=60)
    finally:
        stop_process(orthanc.process)


def series_uid_of(path: Path) -> str:
    """The SeriesInstanceUID of a file."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def http_json(url: str, *, timeout_s: float = 10) -> Any:
    """GET ``url`` and decode its JSON."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
        return json.loads(response.read())


def node_http_port(node: RunningNode) -> int:
    """The HTTP API port in the node's configuration file."""
    import yaml

    return int(yaml.safe_load(node.config_path.read_text())["http_port"])


def node_jobs(node: RunningNode) -> list[dict[str, Any]]:
    """The node's jobs (``GET /jobs``), newest first."""
    return list(http_json(f"http://127.0.0.1:{node_http_port(node)}/jobs?limit=1000"))


def node_job(node: RunningNode, job_id: int) -> dict[str, Any]:
    """One job with its history (``GET /jobs/{id}``)."""
    return dict(http_json(f"http://127.0.0.1:{node_http_port(node)}/jobs/{job_id}"))


def wait_for_final_jobs(
    node: RunningNode, count: int, *, timeout_s: float, interval_s: float = 0.05
) -> list[dict[str, Any]]:
    """Wait until the node has ``count`` jobs, all in a final state; return them, oldest first."""
    found: list[dict[str, Any]] = []

    def all_final() -> bool:
        nonlocal found
        try:
            found = node_jobs(node)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return len(found) >= count and all(j["state"] in FINAL_STATES for j in found)

    wait_for(all_final, timeout_s=timeout_s, what=f"{count} final job(s)", interval_s=interval_s)
    return sorted(found, key=lambda j: int(j["id"]))


def history_times(job: dict[str, Any]) -> dict[str, float]:
    """Epoch seconds of the first event of each state in a job's history (``GET /jobs/{id}``)."""
    times: dict[str, float] = {}
    for event in job["history"]:
        at = dt.datetime.fromisoformat(event["at"])
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        times.setdefault(event["state"], at.timestamp())
    return times


def orthanc_seg_series(orthanc: Orthanc) -> set[str]:
    """Orthanc ids of every SEG series Orthanc holds."""
    found = orthanc.request(
        "POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SEG"}}, timeout_s=10
    )
    return set(found)


def wait_for_new_seg(
    orthanc: Orthanc, known: set[str], *, timeout_s: float, interval_s: float = 0.02
) -> tuple[float, set[str]]:
    """Poll Orthanc every ``interval_s`` until it holds a SEG series not in ``known``.

    Returns
    -------
    tuple
        ``time.time()`` when it was first seen, and every SEG series id then held.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = orthanc_seg_series(orthanc)
        if held - known:
            return time.time(), held
        time.sleep(interval_s)
    raise TimeoutError(f"no new SEG in Orthanc after {timeout_s:.0f} s")


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> Iterator[int]:
    """The process ids of every living descendant of ``pid``."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            yield int(child)
            yield from descendants(int(child))


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` (peak resident set) of ``pid`` plus that of its living descendants, in MiB."""
    kib = _status_kib(pid, "VmHWM") + sum(_status_kib(c, "VmHWM") for c in descendants(pid))
    return kib / 1024


def rss_mib(pid: int) -> float:
    """``VmRSS`` (resident set now) of ``pid`` and its living descendants, in MiB."""
    kib = _status_kib(pid, "VmRSS") + sum(_status_kib(c, "VmRSS") for c in descendants(pid))
    return kib / 1024


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
