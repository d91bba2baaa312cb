"""Load: 20 concurrent associations of 500 small images each, into the real node."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import REPO_ROOT, start_node, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENDERS = 20
PER_SENDER = 500
NO_RULES = "rules: []\n"


def test_twenty_concurrent_associations_of_500_instances_are_all_stored(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(NO_RULES)
    node = start_node(tmp_path / "node", rules_file=str(rules))  # default limit: 32
    try:
        started = time.monotonic()
        senders = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.load.sender",
                    str(node.dicom_port),
                    str(PER_SENDER),
                    str(index),
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for index in range(SENDERS)
        ]
        outputs = [sender.communicate(timeout=900)[0] for sender in senders]
        elapsed = time.monotonic() - started
    finally:
        stop_process(node.process)
    counts = [re.search(r"acknowledged=(\d+)", out) for out in outputs]
    acknowledged = [int(found.group(1)) if found else -1 for found in counts]
    assert acknowledged == [PER_SENDER] * SENDERS, outputs
    with sqlite3.connect(node.data_dir / "index.sqlite") as connection:
        [(indexed,)] = connection.execute("SELECT count(*) FROM instances")
        [(series,)] = connection.execute("SELECT count(*) FROM series")
        paths = [row[0] for row in connection.execute("SELECT path FROM instances")]
    assert (indexed, series) == (SENDERS * PER_SENDER, SENDERS)
    assert all((node.data_dir / "spool" / p).stat().st_size > 0 for p in paths)
    rate = SENDERS * PER_SENDER / elapsed
    (tmp_path / "load.json").write_text(
        json.dumps({"instances": indexed, "seconds": elapsed, "per_second": rate})
    )
    print(
        f"load: {indexed} instances over {SENDERS} associations in {elapsed:.1f} s ({rate:.0f}/s)"
    )
