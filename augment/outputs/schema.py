"""The output's columns, one place: manifest.csv's (what a finished image's row says: pure
functions of the task, its result and the run's settings) and failures.csv's, and writing
them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..config import Engine, RunConfig
from ..io.atomic import atomic_write

if TYPE_CHECKING:
    from ..pipeline.plan import Task


FAILURE_COLUMNS = ("row", "path", "label", "reason", "message")
# The output manifest's columns (the input's own extra columns follow them).
BASE_COLUMNS = [
    "path", "label", "split", "source", "style", "k", "engine", "seed", "weights",
    "style_mix", "style_weight", "alpha",
    "size", "width", "height", "iterations", "precision",
    "content_loss", "style_loss", "tv_loss", "total_loss", "dream_objective", "params", "key", "seconds",
]  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """One input row (or one task) that produced no output, and why."""

    row: int | None
    path: str
    label: str
    reason: str  # short class: missing, undecodable, too_large, bad_label, outside_root, ...
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"row": "" if self.row is None else self.row, "path": self.path,
                "label": self.label, "reason": self.reason, "message": self.message}  # fmt: skip


def write_csv(path: str | Path, records: list[dict[str, object]], columns: list[str]) -> None:
    """Write rows atomically with a fixed column order (an empty file still has its header)."""
    frame = pd.DataFrame.from_records(records, columns=columns)
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)


def write_failures(path: str | Path, failures: list[Failure]) -> None:
    """failures.csv is read by people, often in a spreadsheet: text from the input that would
    start a formula (= + - @) gets a leading apostrophe (OWASP's CSV-injection advice).
    manifest.csv keeps every value verbatim: it is data, and its paths and labels must match
    the files."""
    rows = [{k: defuse_formula(v) if isinstance(v, str) else v for k, v in f.as_dict().items()} for f in failures]
    write_csv(path, rows, list(FAILURE_COLUMNS))


def defuse_formula(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def engine_name(config: RunConfig) -> str:
    engine = config.engine.value
    return f"{engine}-guided" if config.guide and config.engine is not Engine.GATYS else engine


def manifest_row(
    task: Task,
    *,
    size: tuple[int, int],
    losses: dict[str, float],
    iterations: int,
    seconds: float,
    precision: str,
    dream_objective: float | None,
    config: RunConfig,
    weights_id: str,
    style_weight: float | None,
    params: str,
    key: str,
) -> dict[str, Any]:
    """One output image's row (``size`` is its height and width; ``style_weight`` the β it
    was made with, ``params`` the engine's settings, both as the engine resolved them)."""
    source, original = task.source, task.original
    return {
        "path": task.output, "label": source.label, "split": source.split,
        "source": source.source, "style": task.style_name, "k": task.k,
        "engine": "original" if original else engine_name(config),
        "seed": "" if original else task.seed, "weights": "" if original else weights_id,
        "style_mix": task.mix if task.style2 else "",
        "style_weight": "" if style_weight is None else f"{style_weight:.6g}",
        "alpha": "" if original else task.alpha, "size": config.size,
        "width": size[1], "height": size[0], "iterations": iterations,
        "precision": precision,
        **{f"{name}_loss": f"{value:.6g}" for name, value in losses.items()},
        "dream_objective": "" if dream_objective is None else f"{dream_objective:.6g}",
        "params": "" if original else params,
        "key": key,
        "seconds": round(seconds, 3), **source.extra,
    }  # fmt: skip
