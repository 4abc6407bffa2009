"""One run per OUT (or per shard of it): an OS file lock, taken before anything else.

The lock is the kernel's (filelock over flock), so a run that dies, even by kill -9, leaves
nothing that blocks the next one. Who holds it is written beside it for the message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from .atomic import foreign_symlinks, write_text
from .errors import EXIT_LOCKED, AugmentError, OutputError


class RunLocked(AugmentError):
    exit_code = EXIT_LOCKED


def lock_name(shard: str | None = None, rank: int = 0) -> str:
    """Whole job and torchrun rank 0: ``.augment.lock``; shard K/N and rank R each their own,
    so shards run side by side and the ranks of one job do not lock each other out."""
    if shard:
        return f".augment-shard-{shard.replace('/', '-of-')}.lock"
    return f".augment-rank-{rank}.lock" if rank else ".augment.lock"


class OutLock:
    """``with OutLock(out, name):`` holds ``OUT/<name>`` for the run."""

    def __init__(self, out: Path, name: str = ".augment.lock") -> None:
        self.path = Path(out) / name
        self.info = self.path.with_suffix(".holder.json")
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> OutLock:
        self.created = not self.path.parent.exists()
        planted = foreign_symlinks(self.path.parent)
        if planted:  # augment makes no symlinks: writing through one would write outside OUT
            shown = ", ".join(map(str, planted[:3]))
            raise OutputError(
                f"{self.path.parent} holds symlinks augment did not make ({shown}); remove them or choose another --out"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise RunLocked(
                f"{self.path.parent} is in use by another run ({self._holder()}); try again when it ends"
            ) from None
        except OSError as err:  # read-only or full file system: exit 3 with one line
            raise OutputError(f"cannot write to {self.path.parent}: {err}") from err
        busy = self._busy_neighbour()
        if busy is not None:
            self._lock.release()
            raise RunLocked(f"{self.path.parent} is in use by another run ({busy}); try again when it ends")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "command": " ".join(sys.argv)}  # fmt: skip
        try:  # a full disk can fail this too; renamed into place, never written through a link
            write_text(self.info, json.dumps(holder) + "\n")
        except OSError as err:
            self._lock.release()
            raise OutputError(f"cannot write to {self.path.parent}: {err}") from err
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.info.unlink(missing_ok=True)
        self._lock.release()
        # A run that stopped before writing anything leaves no OUT behind it.
        if self.created and [p.name for p in self.path.parent.iterdir()] == [self.path.name]:
            self.path.unlink(missing_ok=True)
            self.path.parent.rmdir()

    def _busy_neighbour(self) -> str | None:
        """A whole-job run and a shard run of one OUT exclude each other (the whole run clears
        the parts a live shard is writing): the holder of the other kind's lock, if any."""
        whole = self.path.parent / lock_name()
        if self.path == whole:
            others = sorted(self.path.parent.glob(".augment-shard-*.lock"))
        elif self.path.name.startswith(".augment-shard-"):
            others = [whole] if whole.exists() else []
        else:
            return None
        for other in others:
            probe = FileLock(str(other), timeout=0)
            try:
                probe.acquire()
            except Timeout:
                return OutLock(self.path.parent, other.name)._holder()
            probe.release()
        return None

    def _holder(self) -> str:
        try:
            holder = json.loads(self.info.read_text(encoding="utf-8"))
            return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"
