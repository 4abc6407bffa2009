"""The part files, one owner: written (``Recorder``: images encoded and written in background
threads, each journaled as soon as it is in place; the rows and failures so far; the part's
manifest, failures and status; the --max-failures limit), read (``part_frame``,
``recorded_rows``), listed (``part_names``) and cleared (``clear_parts``, stale images, dead
temp files). Nothing here knows how an image was made.

The record's cost grows with what is new, never with what is done: the part's manifest and
failures CSVs are written once when the part starts work (with the rows it keeps from earlier
runs) and once when it ends; in between every image and every failure is one fsynced line of
the journal. A million-row part never rewrites its manifest while it runs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from glob import escape as glob_escape
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

from ..config import RunConfig
from ..errors import OutputError, TooManyFailures, too_many_failures
from ..io.atomic import write_text
from ..io.images import save_atomic, to_image
from .schema import BASE_COLUMNS, FAILURE_COLUMNS, Failure, defuse_formula, write_csv, write_failures

log = logging.getLogger(__name__)


class Recorder:
    """The part files of part ``name``. ``identity`` (the config, its hashes, the inputs'
    root) heads its status file; ``rows`` are kept from earlier runs; ``failures`` failed
    before work; ``max_failures`` is --max-failures as a number of rows (None: no limit)."""

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        name: str,
        *,
        identity: dict[str, Any],
        extra_columns: Iterable[str] = (),
        rows: Iterable[dict[str, Any]] = (),
        failures: Iterable[Failure] = (),
        max_failures: int | None = None,
        shared_failures: Any = None,
    ) -> None:
        self.config, self.out, self.name, self.identity = config, out, name, identity
        self.columns = BASE_COLUMNS + [c for c in extra_columns if c not in BASE_COLUMNS]
        self.rows: list[dict[str, Any]] = list(rows)
        self.failures: list[Failure] = list(failures)
        self._failed = {(f.row, f.path) for f in self.failures}
        self.max_failures = max_failures
        # Workers of one job count their failed rows together (a multiprocessing Value) so
        # that --max-failures holds for the job, not for each worker.
        self.shared_failures = shared_failures
        self.started = time.time()
        self._pending: list[tuple[Future[None], dict[str, Any]]] = []  # images being written
        self._saver: ThreadPoolExecutor | None = None
        self._journal: IO[str] | None = None
        self._journal_lock = threading.Lock()

    def begin(self) -> None:
        """Work starts: the rows and failures so far (kept from earlier runs, failed up front)
        become the part's CSVs, and the journal (whose rows an earlier run's are now among
        them) starts empty."""
        self.write_outputs()
        self._part(JOURNAL).unlink(missing_ok=True)

    # -- images -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Threads that encode and write images while the device computes; on a normal exit
        every submitted image is written and recorded."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="augment-save") as saver:
            self._saver = saver
            yield
            self.collect(wait=True)

    def submit(self, image: torch.Tensor, row: dict[str, Any]) -> None:
        """Encode and write ``image`` to ``row["path"]`` in a saver thread; its row is recorded
        once the file is in place."""
        assert self._saver is not None, "submit() only inside saving()"
        future = self._saver.submit(self._save, to_image(image), row["path"], row)
        self._pending.append((future, row))

    def collect(self, *, wait: bool) -> None:
        """Record the rows of images written so far (all of them with ``wait``); re-raises a
        save's OutputError here."""
        still = []
        for future, row in self._pending:
            if not wait and not future.done():
                still.append((future, row))
                continue
            future.result()
            self.rows.append(row)
        self._pending = still

    def keep_finished(self) -> None:
        """On an interruption: record the images already written, drop the rest."""
        self._pending = [(f, r) for f, r in self._pending if f.done() and not f.exception()]
        self.collect(wait=True)

    def _save(self, image: Any, output: str, row: dict[str, Any]) -> None:
        path = self.out / output
        try:
            save_atomic(image, path, fmt=self.config.format, quality=self.config.quality)
            self._journal_append(row)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err}") from err

    def _journal_append(self, row: dict[str, Any]) -> None:
        """One JSON line per written image, flushed to disk right after the image is renamed
        into place (or per failure, ``{"failure": ...}``): what a kill -9 cannot take back.
        Called from the saving threads and the main one."""
        with self._journal_lock:
            if self._journal is None:
                self._journal = self._part(JOURNAL).open("a", encoding="utf-8")
            self._journal.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())

    # -- failures -----------------------------------------------------------------------------
    def fail(self, failure: Failure) -> None:
        """One failures.csv row per input row, even when several of its tasks fail."""
        if (failure.row, failure.path) not in self._failed:
            self._failed.add((failure.row, failure.path))
            self.failures.append(failure)
            try:
                self._journal_append({"failure": failure.as_dict()})
            except OSError as err:
                raise OutputError(f"cannot write to {self.out / PARTS}: {err}") from err
            if self.shared_failures is not None:
                with self.shared_failures.get_lock():
                    self.shared_failures.value += 1
        self.check_failures()

    def add_failures(self, failures: Iterable[Failure]) -> None:
        """Failures known before work starts (header reads): in the CSV ``begin`` writes."""
        for failure in failures:
            if (failure.row, failure.path) not in self._failed:
                self._failed.add((failure.row, failure.path))
                self.failures.append(failure)

    def check_failures(self) -> None:
        failed = len(self.failures) if self.shared_failures is None else self.shared_failures.value
        if self.max_failures is not None and failed > self.max_failures:
            raise TooManyFailures(too_many_failures(failed, self.config.max_failures))

    # -- part files ---------------------------------------------------------------------------
    def _part(self, suffix: str) -> Path:
        return self.out / PARTS / f"{self.name}{suffix}"

    def write_outputs(self) -> None:
        try:
            write_csv(self._part(".manifest.csv"), sorted(self.rows, key=lambda r: r["path"]), self.columns)
            write_failures(self._part(".failures.csv"), sorted(self.failures, key=lambda f: (f.row or 0, f.path)))
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err

    def write_status(self, status: str, *, tasks: int, timings: dict[str, float], **about: Any) -> None:
        """The part's .json: status, its identity (config and hashes), counts, timings and ``about``
        (engine, weights, device, versions)."""
        written = len(self.rows)
        compute = timings.get("compute_s")
        data = {
            "part": self.name,
            "status": status,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if status == "finished" else None,
            **self.identity,
            **about,
            "counts": {"tasks": tasks, "written": written, "failed_rows": len(self.failures)},
            "timings": {
                **{k: round(v, 3) for k, v in timings.items()},
                "seconds": round(time.time() - self.started, 3),
                "seconds_per_image": round(compute / written, 3) if compute and written else None,
            },
        }
        try:
            write_text(self._part(".json"), json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err

    def close(self) -> None:
        """The part manifest now holds every row: the journal is no longer needed."""
        if self._journal is not None:
            self._journal.close()
            self._part(JOURNAL).unlink(missing_ok=True)


PARTS = "parts"


JOURNAL = ".journal.jsonl"


# The parts augment writes: one process, the header part of workers, each worker, shard and rank.
PART_NAME = re.compile(r"main|header|(worker|shard|rank)-\d+-of-\d+")


def part_name(kind: str, index: int, count: int) -> str:
    """A shard's, rank's or worker's part: ``shard-2-of-8``."""
    return f"{kind}-{index}-of-{count}"


def part_info(out: Path, name: str) -> dict[str, Any] | None:
    """A part's status file (its .json), or None while it is not there, is being replaced or is
    not a JSON object."""
    try:
        data = json.loads((out / PARTS / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def part_names(out: Path) -> list[str]:
    """The parts in OUT/parts; a file of another name there is not augment's and is ignored."""
    names = (p.name[: -len(".json")] for p in (out / PARTS).glob("*.json"))
    return sorted(name for name in names if PART_NAME.fullmatch(name))


def clear_parts(out: Path, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Forget earlier parts (a whole-job run redoes every task); only part files are removed."""
    for name in part_names(out):
        if name not in keep:
            for suffix in (".json", ".manifest.csv", ".failures.csv", JOURNAL):
                (out / PARTS / f"{name}{suffix}").unlink(missing_ok=True)


def recorded_rows(out: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row the parts of OUT (or the named ones) recorded."""
    rows: list[dict[str, Any]] = []
    for name in part_names(out) if names is None else names:
        try:
            rows += part_rows(out, name)
        except ValueError as err:  # its images are made again; nothing of it is deleted
            log.warning("%s: unreadable part files, their images will be made again (%s)", out / PARTS / name, err)
    return rows


def part_rows(out: Path, name: str) -> list[dict[str, Any]]:
    """``part_frame`` as one dict per row."""
    return part_frame(out, name).to_dict("records")


def part_frame(out: Path, name: str) -> pd.DataFrame:
    """A part's rows: its manifest CSV (written when the part starts work and when it ends)
    plus its journal (a line appended as each image is written, so even a kill -9 loses
    none). Later entries win. Raises ValueError for a manifest that is not augment's CSV."""
    manifest, journal = out / PARTS / f"{name}.manifest.csv", out / PARTS / f"{name}{JOURNAL}"
    frame = pd.DataFrame({"path": pd.Series(dtype=str)})
    if manifest.is_file():
        try:
            frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ValueError(f"{manifest.name}: {err}") from err  # UnicodeDecodeError is one already
        if "path" not in frame.columns:
            raise ValueError(f"{manifest.name}: no path column")
    journaled = []
    if journal.is_file():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # the last line of a killed run may be cut short
                continue
            if isinstance(row, dict) and isinstance(row.get("path"), str):  # anything else is not a row
                journaled.append({str(k): "" if v is None else str(v) for k, v in row.items()})
    if journaled:
        frame = pd.concat([frame, pd.DataFrame(journaled, dtype=str)], ignore_index=True)
        frame = frame.drop_duplicates("path", keep="last").fillna("")
    return frame


def journal_failures(out: Path, name: str) -> pd.DataFrame:
    """The failures a part journaled since its failures CSV was written (a part killed before
    its end wrote them nowhere else), defused for a spreadsheet as the CSV's are."""
    journal, found = out / PARTS / f"{name}{JOURNAL}", []
    if journal.is_file():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            failure = entry.get("failure") if isinstance(entry, dict) else None
            if isinstance(failure, dict) and isinstance(failure.get("path"), str):
                found.append({k: defuse_formula(str(failure.get(k) or "")) for k in FAILURE_COLUMNS})
    return pd.DataFrame(found, columns=list(FAILURE_COLUMNS), dtype=str)


def reusable_rows(out: Path, keys: dict[str, str], names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Rows an earlier run already made for these exact tasks: same output path, same task key
    (source and style content, every pixel-changing option, weights, seed), image on disk
    (images are renamed into place whole, so one that exists is complete)."""
    return {
        row["path"]: row
        for row in recorded_rows(out, names)
        if keys.get(row["path"]) == row.get("key") and (out / row["path"]).is_file()
    }


def remove_stale(out: Path, keep: set[str]) -> int:
    """Delete images that earlier runs recorded and the plan no longer has. Only files named
    in augment's own part manifests are ever deleted."""
    removed = 0
    images = (out / "images").resolve()
    for row in recorded_rows(out):
        path = out / row["path"]
        if row["path"] not in keep and path.is_file() and path.resolve().is_relative_to(images):
            path.unlink()
            removed += 1
            # A class folder left empty would make ImageFolder fail ("no valid file for the classes").
            folder = path.parent.resolve()
            while folder != images and folder.is_relative_to(images) and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    return removed


def remove_temp_files(out: Path, outputs: Iterable[str] | None = None, part: str | None = None) -> None:
    """Temp files a killed run left (ours: ``.<name>.<random>.tmp``). A whole-job run holds
    OUT alone and removes them all; a shard, whose neighbours may be writing, only those of
    its own images (``outputs``) and of its own part files."""
    if outputs is None:
        for tmp in [*(out / "images").rglob(".*.tmp"), *out.glob(".*.tmp"), *(out / PARTS).glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)
        return
    for output in outputs:
        path = out / output
        for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in (out / PARTS).glob(f".{part}.*.tmp"):
        tmp.unlink(missing_ok=True)
