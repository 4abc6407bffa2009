"""``RunSummary``: what a run did, as ``augment.run`` returns it and the CLI prints it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import EXIT_OK, EXIT_SOME_FAILED
from ..outputs.parts import PARTS
from .devices import describe_device


def summarize(
    out: Path, images: int, failed: int, tasks: int, started: float, weights: str, device: torch.device,
    *, part: str | None = None, reused: int = 0, skipped: int = 0, removed: int = 0,
    merged: dict[str, Any] | None = None,
) -> RunSummary:  # fmt: skip
    """The summary of a whole job, or (``part``) of this process's share of it: ``images`` in
    its manifest, of which ``reused`` were there before (``skipped`` of them up to date). A
    merged job's exit code is run.json's (``merged``), so it never says done when run.json
    says incomplete."""
    failures_csv = out / PARTS / f"{part}.failures.csv" if part else out / "failures.csv"
    exit_code = merged["exit_code"] if merged else EXIT_SOME_FAILED if failed else EXIT_OK
    return RunSummary(
        out=str(out), exit_code=exit_code, tasks=tasks, written=images - reused,
        failed_rows=failed, seconds=round(time.time() - started, 3), weights=weights,
        device=describe_device(device), failures=read_failures(failures_csv), skipped=skipped, removed=removed,
        images=images, incomplete=merged["exit_reason"] if merged and merged["status"] == "incomplete" else None,
    )  # fmt: skip


def read_failures(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


@dataclass
class RunSummary:
    """What a run did. ``written``: images this run made; ``skipped``: up to date from an
    earlier run, not redone; ``removed``: stale images of rows that left the job;
    ``failed_rows``: rows that gave no image; ``images``: what the dataset now holds;
    ``incomplete``: what is missing when the merge found the job not done (run.json's reason)."""

    out: str
    exit_code: int
    tasks: int
    written: int
    failed_rows: int
    seconds: float
    weights: str
    device: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    removed: int = 0
    images: int = 0
    incomplete: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
