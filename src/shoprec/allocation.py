"""Large temporary tensors without a page fault per use (glibc's malloc).

Evaluation, hybrid tuning and validation allocate tensors of ``batch x n_items`` floats again
and again (88 MB for 512 cases of a 43k-item catalogue). glibc serves any allocation above its
mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it when freed, so every such
tensor is page-faulted and zeroed by the kernel on first touch. Measured on this project's
2-core VM: ``s + 1.0`` on a (512, 43098) float32 tensor took 75 ms that way and 15.5 ms when
the memory came back from the heap (``experiments/2026-11-23-evaluate-speed.md``).

:func:`reuse_large_allocations` raises the mmap threshold (and the heap trim threshold with
it, or freed memory would be handed back and faulted in again) so such buffers are recycled
by the heap. The process keeps its peak heap instead of returning it to the system, which is
what a batch job (``shoprec evaluate``, ``train``, ``hybrid tune``) wants; the service does not
call it. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["reuse_large_allocations"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3


@functools.cache
def reuse_large_allocations(threshold: int = 1 << 30) -> bool:
    """Serve allocations below ``threshold`` bytes from the heap and keep freed heap memory.

    Returns whether glibc accepted both settings (False on other platforms / C libraries).
    Idempotent.
    """
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
                trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(2 * threshold, 2**31 - 1)))
                mmap = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(threshold, 2**31 - 1)))
                ok = trim == 1 and mmap == 1
        except OSError:
            ok = False
    return ok
