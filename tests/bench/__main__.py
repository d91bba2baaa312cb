"""``python -m tests.bench``: every issue-6 benchmark in one run, then one table of ratios.

Sections (each also runs alone, e.g. ``python -m tests.bench.memory``):

- ``receive``: receive throughput, node vs storescp and Orthanc (``ingest.py``);
- ``stow``: STOW-RS throughput, node vs Orthanc's DICOMweb (``stow.py``);
- ``time-to-result``: last instance acknowledged -> SEG in Orthanc, vs model time;
- ``memory``: the node's peak RSS at 200 and 2,000 instances;
- ``appsdk``: the same job by the MONAI Deploy App SDK (``appsdk.py``, ``appsdk_app.py``);
- ``triton``: Triton vs embedded, dynamic batching (``serving.py``; the Triton issue's rows).

Each section prints how it measured as it finishes; the summary table comes last, with the
machine, the date and the load average before and after. A section that fails is reported as
such, the others still run, and the exit status is 1. ``--smoke`` runs tiny sizes, one run
each (what the test suite does, so the harness cannot rot).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

from tests.bench.common import Row, Section, load_average, print_section, summary_table
from tests.bench.sections import SECTIONS
from tests.bench.time_to_result import QUIET_PERIOD_S
from tests.peers import REPO_ROOT


def machine() -> str:
    """Cores, memory, OS and Python, in one line."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (
        f"{os.cpu_count()} cores, {pages / 2**30:.0f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )


def revision() -> str:
    """The commit, and whether the working tree had changes when the run started."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def run(
    names: list[str], *, smoke: bool, workdir: Path | None, quiet_period_s: float
) -> tuple[list[Section], list[str]]:
    """Run the named sections in order; return them and the names of those that failed."""
    sections, failed = [], []
    for name in names:
        try:
            section = SECTIONS[name](smoke, workdir, quiet_period_s)
        except Exception as exc:
            traceback.print_exc()
            failed.append(name)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            note = f"failed: {type(exc).__name__}: {first_line}"[:160]
            section = Section(name, rows=[Row(name=name, note=note)])
        print_section(section)
        print(flush=True)
        sections.append(section)
    return sections, failed


def main() -> None:
    """Parse the options, run, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)}; all"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--workdir", type=Path, help="where temporary files go")
    parser.add_argument(
        "--quiet-period",
        type=float,
        default=QUIET_PERIOD_S,
        help="the node's quiet_period_s in the sections that process a series",
    )
    args = parser.parse_args()
    names = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    started = dt.datetime.now().astimezone()
    load_before = load_average()
    sections, failed = run(
        names, smoke=args.smoke, workdir=args.workdir, quiet_period_s=args.quiet_period
    )
    print("## Summary (issue 6): the node against the references, measured in this run")
    print(
        f"Machine: {machine()}. Started {started:%Y-%m-%d %H:%M %Z}, took "
        f"{(dt.datetime.now().astimezone() - started).total_seconds() / 60:.0f} min. "
        f"Commit {revision()}. Load average (1/5/15 min) before {load_before}, after "
        f"{load_average()}. quiet_period_s = {args.quiet_period:g}."
        + (" SMOKE RUN: tiny sizes, not figures." if args.smoke else "")
    )
    print(summary_table(sections), flush=True)
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
