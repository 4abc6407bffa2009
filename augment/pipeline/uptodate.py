"""Is a finished OUT already what this run would make? The nightly re-run of an unchanged
dataset is the common case, and at a million rows x 3 the general path (every recorded row
read as a dict, the part manifest written again, then merged again: three passes over 3 M
rows) costs minutes for nothing. Checking needs only each recorded image's path and key, the
recorded failures and a listing of the image folders; when everything matches, OUT is left as
it is and only run.json is written again."""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..io.atomic import write_text
from ..outputs.export import exports_current
from ..outputs.parts import JOURNAL, PARTS, part_names
from ..outputs.schema import Failure, defuse_formula

log = logging.getLogger(__name__)

# Options about how a run goes, not what it leaves in OUT: a cron line with another -q,
# --workers or --max-seconds still finds OUT up to date.
RUN_ONLY = frozenset(
    {"quiet", "log_level", "download", "device", "batch_size", "workers", "devices", "check_content", "max_seconds",
     "ray", "shards", "shard_retries", "shard_timeout"}
)  # fmt: skip


def _same_job(before: dict[str, Any], config: RunConfig) -> bool:
    now = json.loads(json.dumps(config.to_dict()))  # as run.json holds it: lists, not tuples
    return {k: v for k, v in before.items() if k not in RUN_ONLY} == {k: v for k, v in now.items() if k not in RUN_ONLY}


def up_to_date(out: Path, config: RunConfig, keys: dict[str, str], failures: list[Failure]) -> dict[str, Any] | None:
    """OUT's run.json when OUT already holds this job exactly: the last run finished with the
    same options, its parts recorded every planned image with the same key and nothing else,
    the same failed rows, and every image is on disk. None when anything differs (or cannot
    be read): the general path then decides image by image."""
    try:
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        same = run.get("status") == "finished" and _same_job(run["config"], config)
        if not same or run.get("counts", {}).get("written") != len(keys) or not (out / "manifest.csv").is_file():
            return None
        if not exports_current(out, run["config"]):
            return None
        recorded, failed = _recorded(out)
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if recorded is None or len(recorded) != len(keys):
        return None
    if any(keys.get(path) != key for path, key in zip(recorded["path"], recorded["key"])):
        return None
    expected = {("" if f.row is None else str(f.row), defuse_formula(f.path)) for f in failures}
    if failed != expected or not _all_on_disk(out, keys):
        return None
    return run


def _recorded(out: Path) -> tuple[pd.DataFrame | None, set[tuple[str, str]]]:
    """Every finished part's (path, key) rows and (row, path) failures; None for the rows when
    a part is unfinished or has a journal (a run was stopped: the general path reads it)."""
    frames, failed = [], set()
    for name in part_names(out):
        info = json.loads((out / PARTS / f"{name}.json").read_text(encoding="utf-8"))
        if info.get("status") != "finished" or (out / PARTS / f"{name}{JOURNAL}").exists():
            return None, failed
        # object: plain str values (pandas' string dtype makes a new str for each one read).
        frames.append(pd.read_csv(out / PARTS / f"{name}.manifest.csv", usecols=["path", "key"], dtype=object,
                                  keep_default_na=False))  # fmt: skip
        rows = pd.read_csv(out / PARTS / f"{name}.failures.csv", usecols=["row", "path"], dtype=object,
                           keep_default_na=False)  # fmt: skip
        failed.update(zip(rows["row"], rows["path"]))
    if not frames:
        return None, failed
    recorded = pd.concat(frames, ignore_index=True)
    return (None if recorded["path"].duplicated().any() else recorded), failed


def _all_on_disk(out: Path, paths: dict[str, str]) -> bool:
    """Every path a file under OUT: one listing per folder, not a stat per image."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        folder, _, name = path.rpartition("/")
        by_folder[folder].append(name)
    for folder, names in by_folder.items():
        try:
            with os.scandir(out / folder) as entries:
                files = {e.name for e in entries if e.is_file()}
        except OSError:
            return False
        if not files.issuperset(names):
            return False
    return True


def record_no_op(out: Path, run: dict[str, Any], started: float, seconds: float) -> dict[str, Any]:
    """run.json again for a run that found OUT up to date: this run's times, every image
    skipped; the parts, manifest and exports stay as they were."""
    images = run["counts"]["written"]
    run = {
        **run,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {**run["counts"], "tasks": images, "skipped": images, "kept_stale": 0, "removed": 0},
        "timings": {"compute_s": 0.0, "seconds": round(seconds, 3), "seconds_per_image": None},
    }
    write_text(out / "run.json", json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    return run
