"""A part's record: images encoded and written in background threads, each journaled as soon
as it is in place; the rows and failures so far; the part files (manifest, failures, status);
the --max-failures limit. Nothing here knows how an image was made.

The record's cost grows with what is new, never with what is done: the part's manifest and
failures CSVs are written once when the part starts work (with the rows it keeps from earlier
runs) and once when it ends; in between every image and every failure is one fsynced line of
the journal. A million-row part never rewrites its manifest while it runs."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

from ..config import RunConfig
from ..errors import OutputError, TooManyFailures
from ..io.atomic import write_text
from ..io.images import save_atomic, to_image
from ..io.sources import BASE_COLUMNS, Failure, write_csv, write_failures
from ..pipeline.prepare import Prepared
from .merge import JOURNAL, PARTS


def failure_limit(config: RunConfig, prepared: Prepared) -> int | None:
    """--max-failures as a number of rows (N, or P% of the manifest's rows); None: no limit."""
    if config.max_failures is None:
        return None
    text = str(config.max_failures).strip()
    if text.endswith("%"):
        return int(float(text[:-1]) / 100.0 * (len(prepared.rows) + len(prepared.failures)))
    return int(text)


def too_many_failures(failed: int, config: RunConfig) -> str:
    return f"{failed} rows failed, more than --max-failures {config.max_failures} allows"


class Recorder:
    def __init__(
        self, config: RunConfig, prepared: Prepared, out: Path, name: str, *, shared_failures: Any = None
    ) -> None:
        self.config, self.prepared, self.out, self.name = config, prepared, out, name
        self.rows: list[dict[str, Any]] = []
        self.failures: list[Failure] = list(prepared.failures)
        self._failed = {(f.row, f.path) for f in self.failures}
        self.max_failures = failure_limit(config, prepared)
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
            raise TooManyFailures(too_many_failures(failed, self.config))

    # -- part files ---------------------------------------------------------------------------
    def _part(self, suffix: str) -> Path:
        return self.out / PARTS / f"{self.name}{suffix}"

    def write_outputs(self) -> None:
        columns = BASE_COLUMNS + [c for c in self.prepared.inputs.extra_columns if c not in BASE_COLUMNS]
        try:
            write_csv(self._part(".manifest.csv"), sorted(self.rows, key=lambda r: r["path"]), columns)
            write_failures(self._part(".failures.csv"), sorted(self.failures, key=lambda f: (f.row or 0, f.path)))
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err

    def write_status(self, status: str, *, tasks: int, timings: dict[str, float], **about: Any) -> None:
        """The part's .json: status, config and its hashes, counts, timings and ``about``
        (engine, weights, device, versions)."""
        written = len(self.rows)
        compute = timings.get("compute_s")
        data = {
            "part": self.name,
            "status": status,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if status == "finished" else None,
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "plan_hash": self.config.plan_hash(),
            "inputs_root": str(self.prepared.inputs.root),  # relative sources are relative to it
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
