"""Process-wide settings, each as a context that puts back what it found (a library caller's
process goes on after a run), and handing freed memory back to the system."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` (a worker's or a rank's share of the cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def return_freed_memory() -> None:
    """glibc keeps memory that was freed (the weights file's or random weights' tensors, once
    copied into the network) for later allocations, ~110 MB a process: hand it back to the
    system, which matters with a worker per GPU. A no-op where glibc is not the allocator."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
