"""What a re-run keeps: rows whose image is there with the same key are not redone, images of
tasks that left the plan are removed (only ones augment recorded), and rows of sources that
fail to read this time keep their images until the row leaves the manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import TooManyFailures
from ..outputs.parts import clear_parts, recorded_rows, remove_stale, remove_temp_files
from ..outputs.schema import Failure
from .prepare import Prepared, failure_limit

log = logging.getLogger(__name__)


def reuse_and_clean(
    config: RunConfig,
    prepared: Prepared,
    out: Path,
    keys: dict[str, str],
    done: dict[str, dict[str, Any]],
    header_failures: list[Failure],
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Incremental: tasks whose image exists with the same key (``done``) are kept, not redone;
    images of tasks that left the plan are removed (only ones augment recorded). Returns the
    stale rows kept recorded, and the counts for run.json."""
    # Limits first: a run that is going to abort must not remove or clear anything.
    limit = failure_limit(config, prepared)
    failed = len(prepared.failures) + len(header_failures)
    if limit is not None and failed > limit:
        raise TooManyFailures(f"{failed} rows failed up front, more than --max-failures {config.max_failures} allows")
    stale = {
        row["path"]: row for row in recorded_rows(out) if row["path"] not in keys and (out / row["path"]).is_file()
    }
    partial_plan = config.limit is not None  # a trial on the first rows: the rest is not stale
    # A row still in the manifest but failing this time (its file missing for a moment, say)
    # is not gone: its images stay, recorded, until the row itself leaves the manifest.
    failing = {failure.path for failure in prepared.failures}
    protected = {path: row for path, row in stale.items() if row.get("source") in failing}
    removed = 0
    if config.keep_stale or partial_plan:
        kept_stale = stale  # stay recorded, so a later run can still remove them
    else:
        kept_stale, removed = protected, remove_stale(out, keep=set(keys) | set(protected))
    clear_parts(out)  # their rows live on in `done`
    remove_temp_files(out)
    if done or removed:
        log.info("%d images up to date, %d stale removed, %d to make", len(done), removed, len(keys) - len(done))
    # tasks: the job's, once (workers each report the whole job's total).
    counts = {"tasks": len(prepared.tasks), "skipped": len(done), "kept_stale": len(kept_stale), "removed": removed}
    return kept_stale, counts


def previous_rows(
    out: Path, keys: dict[str, str], done: dict[str, dict[str, Any]], names: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Rows earlier runs recorded for tasks still planned but not up to date. A task whose
    source cannot be read this time keeps its row (and image), as a failing row keeps its
    images: dropped from the manifest, the image would stay on disk unrecorded, for ever."""
    return {row["path"]: row for row in recorded_rows(out, names) if row["path"] in keys and row["path"] not in done}


def held_rows(out: Path, previous: dict[str, dict[str, Any]] | None, failures: list[Any]) -> list[dict[str, Any]]:
    """The earlier rows of sources that failed their header read now, whose image is there.
    ``previous`` is emptied: the rest are not needed again, and a million rows are gigabytes."""
    failing = {failure.path for failure in failures}
    held = [row for row in (previous or {}).values() if row.get("source") in failing and (out / row["path"]).is_file()]
    if previous:
        previous.clear()
    return held
