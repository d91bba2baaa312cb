"""Process-wide memory settings of a serving node.

glibc's malloc serves a large block (above ``M_MMAP_THRESHOLD``, 128 KiB at start) with its own
mmap, and gives it back to the system when freed; but after the first such free it raises the
threshold (up to 32 MiB), so later blocks of that size (a 0.5 MB instance, a slab of slices) come
from the heap of the thread that asked, and stay there. With one thread per association and a
worker per job, that kept about 225 MiB more resident in a node that had run a few 55-slice jobs
(peak 873 against 648 MiB; measured with ``MALLOC_MMAP_THRESHOLD_=131072`` set in the node's
environment, which fixes the threshold as :func:`fix_mmap_threshold` does).
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["MMAP_THRESHOLD_BYTES", "fix_mmap_threshold"]

#: Blocks of this size or more get their own mapping, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 128 * 1024
#: ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (no dynamic raise); False where the C
    library has no ``mallopt`` (not glibc) or refuses."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
