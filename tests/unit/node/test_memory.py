"""The node fixes glibc's mmap threshold: large blocks freed go back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from node.memory import fix_mmap_threshold

#: Allocates 200 blocks of 0.5 MB with a small object kept after each (as a job's slabs and
#: instance buffers are, among long-lived objects), frees the blocks, prints VmRSS in MiB.
_WORKLOAD = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "fixed":
        from node.memory import fix_mmap_threshold
        assert fix_mmap_threshold()
    warm = bytearray(1 << 20)
    del warm  # glibc raises its threshold after this first free, unless it is fixed
    blocks, kept = [], []
    for _ in range(200):
        blocks.append(bytearray(512 * 1024))
        kept.append(bytearray(4096))  # above pymalloc's 512 bytes: from the C heap
    del blocks
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            print(int(line.split()[1]) // 1024)
    """
)


def _rss_after_frees(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_leave_the_process() -> None:
    assert fix_mmap_threshold()
    default, fixed = _rss_after_frees("default"), _rss_after_frees("fixed")
    # 100 MB were allocated and freed: kept by default, given back with the fixed threshold.
    assert default - fixed > 60, (default, fixed)
