"""Atomic file writes: write to a temp name in the same folder, fsync, rename into place.

A reader (or a re-run after a crash) never sees a half-written file. Temp names end in
``.tmp``, never in an image extension, so no image glob picks one up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# mkstemp makes files 0600; a dataset is read by other users' training jobs, so give each
# file the permissions a plain open() would have. (umask can only be read by setting it.)
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


# The folders augment fills in OUT. With the files it appends to or locks, they are what it
# writes through by path rather than renaming over: a symlink there would send writes outside OUT.
OUT_FOLDERS = ("images", "parts", "webdataset", "report")
# The files augment writes at OUT's top level (run.rank<R>.log too): its own to replace.
OUT_FILES = ("manifest.csv", "failures.csv", "run.json", "run.log", "classes.json", "report.html")


def foreign_symlinks(out: str | Path) -> list[Path]:
    """Symlinks in OUT that augment would write through (it never makes one itself)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_symlink() and (p.name in OUT_FOLDERS or p.suffix in (".log", ".lock"))]
    found += [p for p in out.glob(".augment*.holder.json") if p.is_symlink()]
    for folder in (out / name for name in OUT_FOLDERS):
        if folder.is_dir() and not folder.is_symlink():
            for root, dirs, files in os.walk(folder):  # os.walk does not follow symlinked folders
                found += [Path(root, d) for d in dirs if Path(root, d).is_symlink()]
                found += [Path(root, f) for f in files if f.endswith(".jsonl") and Path(root, f).is_symlink()]
    return found
