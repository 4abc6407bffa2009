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

from ..errors import EXIT_LOCKED, AugmentError, ConfigError, OutputError
from .atomic import OUT_FILES, OUT_FOLDERS, foreign_symlinks, write_text

# Written into OUT by the first run: from then on the files augment writes there are its own to
# replace. Outputs of earlier versions are known by their run.json or a part's .json.
MARKER = ".augment-out"
MARKER_TEXT = "An augment output folder: augment replaces and removes the files it made here.\n"


def is_marked(out: Path) -> bool:
    """OUT was made (or taken) by a run of augment."""
    return (out / MARKER).is_file() or _made_by_an_earlier_version(out)


def _made_by_an_earlier_version(out: Path) -> bool:
    """An output of a version before the mark: run.json, or a part's .json (shards before their
    merge), with augment's config hash in it."""
    from ..outputs.parts import part_names  # a part's name, not any .json a user left in parts/

    for path in (out / "run.json", *(out / "parts" / f"{name}.json" for name in part_names(out)[:1])):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "config_hash" in data:
            return True
    return False


def check_ours(out: Path) -> None:
    """Refuse an existing folder augment did not make that holds a file or folder of the names
    augment writes (the user's own manifest.csv, say): it would be replaced. A new folder, an
    empty one or one with other files only (``--out .`` beside data/) is fine, and gets marked."""
    if not out.is_dir() or is_marked(out):
        return
    clashes = [name for name in (*OUT_FILES, *OUT_FOLDERS) if os.path.lexists(out / name)]
    if clashes:
        raise ConfigError(
            f"--out {out} was not made by augment and holds {', '.join(clashes)}, which a run would replace; "
            "choose a new or empty --out"
        )


def mark_ours(out: Path) -> None:
    """Mark OUT as augment's, once, just before the first run writes into it."""
    if not (out / MARKER).is_file():
        write_text(out / MARKER, MARKER_TEXT)


class RunLocked(AugmentError):
    exit_code = EXIT_LOCKED


RAY_LOCK = ".augment-ray.lock"


def lock_name(shard: str | None = None, rank: int = 0, *, ray: bool = False) -> str:
    """Whole job and torchrun rank 0: ``.augment.lock``; shard K/N and rank R each their own,
    so shards run side by side and the ranks of one job do not lock each other out; the
    driver of a --ray job its own, beside the shards its tasks run."""
    if ray:
        return RAY_LOCK
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
        self.lock_was_there = self.path.exists()
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
        # A run that stopped before taking OUT (refused, or no weights) leaves nothing behind:
        # not OUT if it made it, nor its lock file, which would mark someone's folder as augment's.
        if not self.lock_was_there and not (self.path.parent / MARKER).is_file():
            self.path.unlink(missing_ok=True)
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()

    def _busy_neighbour(self) -> str | None:
        """A whole-job run and a shard run of one OUT exclude each other (the whole run clears
        the parts a live shard is writing): the holder of the other kind's lock, if any."""
        whole = self.path.parent / lock_name()
        if self.path == whole:
            others = sorted(self.path.parent.glob(".augment-shard-*.lock")) + [self.path.parent / RAY_LOCK]
            others = [other for other in others if other.exists()]
        elif self.path.name.startswith(".augment-shard-") or self.path.name == RAY_LOCK:
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
