"""Freed tensors given back to the operating system at once (glibc's mmap threshold).

PyTorch allocates CPU tensors with the C library's malloc. glibc serves a large request from
its own mmap (returned to the system by free) only above a threshold that it raises, up to
32 MiB, each time such a block is freed; below it, blocks come from the heap, where freed
space stays in the process. A layer-by-layer calibration allocates and frees tensors of a
few MiB (Hessians, weight copies, block activations) between tensors it keeps (each layer's
result), so the heap fragments and the resident set grows by hundreds of MiB over a model
that never holds more than one layer's temporaries at a time (measured in
bench/llm_layerwise_memory.py). Fixing the threshold at 1 MiB makes every such block an mmap
of its own, unmapped when freed. `malloc_trim` alone does not help: the freed space is
scattered between live blocks.

The setting is process-wide and, once made, glibc keeps it (fixing the threshold turns its
adjustment off): memory-heavy PyTorch code on CPU runs with it the same, a little slower for
each 1 MiB+ tensor allocated (a system call and fresh zeroed pages). A threshold the user set
(`MALLOC_MMAP_THRESHOLD_`) is left alone; other C libraries are not touched.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD_BYTES = 2**20
"""Allocations from this size on are served by mmap and given back when freed."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_done = False


def unmap_large_allocations() -> bool:
    """Have glibc serve allocations of `MMAP_THRESHOLD_BYTES` or more by mmap from now on.

    Returns whether the threshold is now fixed this way (False on other C libraries, or where
    the user chose a threshold). Calling it again changes nothing.

    Example:
        >>> unmap_large_allocations() == unmap_large_allocations()
        True
    """
    global _done
    if _done:
        return True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
    return _done
