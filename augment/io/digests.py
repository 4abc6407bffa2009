"""Content digests of a job's sources and styles, cached in OUT by file identity.

A task's key hashes its source's and style's content (plan.task_keys), so that a file changed
under the same name is redone. Reading every file at every start would cost the whole
dataset's bytes (1.28 M photos: ~140 GB) on each run, resume and --max-seconds window. A file
whose identity — size, mtime_ns, inode and ctime_ns — is what it was when its digest was taken
keeps that digest; only new or touched files are read. The kernel sets ctime on every write
and no user call can set it back, so an edit that restores size and mtime (rsync's and make's
defaults compare only those) is still seen. What this misses, and ``--check-content`` reads
anyway: filesystems that report a made-up or coarse ctime (some FUSE and network mounts), and
a file written twice within one timestamp tick of a coarse-clock filesystem.

The cache is one file per part, ``OUT/parts/<name>.digests.tsv``, rewritten (atomically) once
per start with the entries that run used: one line per file, ``size mtime_ns inode ctime_ns
sha256 path``, tab-separated, path last (a path holding a line break is not cached).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from .atomic import atomic_write
from .threads import in_threads

SUFFIX = ".digests.tsv"
Identity = tuple[int, int, int, int]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identity(path: Path) -> Identity:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns


class DigestCache:
    """sha256 of files, read only when a file's identity differs from the cached one's.
    ``read`` counts the files read, ``reused`` those whose cached digest was kept."""

    def __init__(self, files: Iterable[Path] = (), *, check_content: bool = False) -> None:
        self.check_content = check_content
        self.known: dict[str, tuple[Identity, str]] = {}
        self.used: dict[str, tuple[Identity, str]] = {}
        self.read = self.reused = 0
        self._count = threading.Lock()
        for file in files:
            self._load(file)

    def _load(self, file: Path) -> None:
        try:
            lines = file.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
        except OSError:
            return  # no cache (or an unreadable one): every file is read, nothing is wrong
        for line in lines:
            fields = line.split("\t", 5)
            if len(fields) == 6 and len(fields[4]) == 64:
                try:
                    size, mtime, inode, ctime = (int(f) for f in fields[:4])
                except ValueError:
                    continue  # a damaged line: that file is read again
                self.known[fields[5]] = ((size, mtime, inode, ctime), fields[4])

    def digest_all(self, paths: Sequence[Path]) -> None:
        """Digests of many files at once, in threads: each waits on storage (a stat is 1-5 ms
        on network storage, a read more), and hashlib releases the GIL while it hashes."""
        in_threads(self.digest, paths)

    def digest(self, path: Path) -> str:
        """The file's sha256, or ``unreadable:<errno>`` (its row then fails at the header
        read, with the reason, like any other bad row)."""
        name = str(path)
        if name in self.used:  # asked before in this run
            return self.used[name][1]
        try:
            found = identity(path)
            cached = self.known.get(name)
            fresh = cached is None or cached[0] != found or self.check_content
            # The identity from before the read is kept: a write during it is seen next time.
            value = file_sha256(path) if fresh else cached[1]  # type: ignore[index]
        except OSError as err:
            return f"unreadable:{err.errno}"
        with self._count:
            self.read += fresh
            self.reused += not fresh
        self.used[name] = (found, value)
        return value

    @property
    def changed(self) -> bool:
        """Whether this run's entries differ from the cache it loaded (a file read, one added
        or dropped): an unchanged cache need not be written again."""
        return self.read > 0 or self.used.keys() != self.known.keys()

    def save(self, file: Path) -> None:
        """Write the entries this run used (files no longer in the job drop out)."""
        with atomic_write(file, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            for name, (ident, value) in self.used.items():
                if "\n" not in name and "\r" not in name:
                    handle.write(f"{ident[0]}\t{ident[1]}\t{ident[2]}\t{ident[3]}\t{value}\t{name}\n")
