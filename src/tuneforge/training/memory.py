"""Keeping a CPU training process's resident memory close to what its tensors need.

glibc's malloc serves large blocks from mmap only below a threshold that it raises every time
such a block is freed (up to 32 MiB). After the first few steps every activation therefore comes
from the heap, whose free holes between live blocks are never returned to the system: on this
project's CPU benchmark the peak RSS of a LoRA run grows ~700 MB above the model and data for
~200 MB of live activations. Fixing the threshold at a few MiB sends the big activation tensors
back to mmap (returned on free) while small tensors stay on the fast heap; see
docs/benchmarks.md for the measured memory and speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger("tuneforge")

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 4 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold at `threshold` bytes; False where that does not apply
    (not glibc, or the user chose a value through MALLOC_MMAP_THRESHOLD_)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False  # musl and others manage large blocks differently
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
