"""TODO docstring"""

from __future__ import annotations

import contextlib
import sys


def return_freed_memory() -> None:
    """glibc keeps memory that was freed (the weights file's or random weights' tensors, once
    copied into the network) for later allocations, ~110 MB a process: hand it back to the
    system, which matters with a worker per GPU. A no-op where glibc is not the allocator."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
