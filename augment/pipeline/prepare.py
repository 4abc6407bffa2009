"""Everything checked before any work: inputs, style bank, the task plan.

``prepare`` is cheap (no decoding) and raises only for whole-run problems; ``validate``
also reads each image's header so ``augment validate`` catches unreadable files up front.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Engine, RunConfig
from ..errors import ConfigError, OutputError
from ..io.atomic import OUT_FOLDERS
from ..io.images import ImageProblem, probe_all
from ..io.lock import check_ours
from ..io.sources import InputRows, SourceRow, load_input
from ..io.styles import Style, load_style_bank
from ..outputs.schema import Failure
from .options import plan_options
from .plan import Plan, PlanTooLarge, Shard, Task, class_key, plan

log = logging.getLogger(__name__)

# Rough bytes per output pixel for a stylized image, for the disk estimate only.
BYTES_PER_PIXEL = {"png": 2.0, "jpg": 0.45, "webp": 0.3}


@dataclass
class Prepared:
    inputs: InputRows
    rows: list[SourceRow]
    failures: list[Failure]
    styles: list[Style]
    tasks: list[Task]
    plan: Plan | None = None

    @property
    def job_tasks(self) -> int:
        """The whole job's tasks (``tasks`` may be one shard's)."""
        return self.plan.job_tasks if self.plan else len(self.tasks)

    @property
    def needs_weights(self) -> bool:
        """Copies of originals need no network: a copy-only job (only val/test rows, say)
        runs without weights."""
        if self.plan is not None and not self.tasks:  # planned without tasks (validate)
            return self.plan.variants > 0
        return any(not t.original for t in self.tasks)


@dataclass
class Validation:
    prepared: Prepared
    tasks: int = 0  # what run would make of the rows that passed their header read
    class_counts: dict[str, int] = field(default_factory=dict)
    estimated_bytes: int = 0
    free_bytes: int | None = None  # on the disk OUT is (or would be made) on
    weights: list[str] = field(default_factory=list)  # what run would load, one line per network

    @property
    def warnings(self) -> list[str]:
        """What would not stop ``run`` at once but would stop it later."""
        if self.free_bytes is not None and self.estimated_bytes > self.free_bytes:
            return [f"the output needs about {human_bytes(self.estimated_bytes)} "
                    f"but the disk of OUT has {human_bytes(self.free_bytes)} free"]  # fmt: skip
        return []


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def check_out_apart(config: RunConfig) -> None:
    """OUT must not hold the manifest (OUT/manifest.csv would overwrite it) nor overlap an
    ImageFolder input (outputs would be read back as inputs on the next run)."""
    out, source = Path(config.out).resolve(), Path(config.manifest).resolve()  # type: ignore[arg-type]
    if source.is_dir():
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            raise ConfigError(
                f"--out {config.out} overlaps the image folder {config.manifest}: choose an --out outside it"
            )
    elif source.parent == out or any(source.is_relative_to(out / sub) for sub in OUT_FOLDERS):
        # OUT/manifest.csv, failures.csv, ... and the folders augment fills: the user's file could be overwritten.
        raise ConfigError(f"--out {config.out} holds the manifest {config.manifest}: choose another --out")


def check_out_writable(config: RunConfig) -> Path:
    """OUT, or the folder it would be made in, must be a folder augment can write to; that
    folder is returned."""
    out = Path(config.out).resolve()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"--out {config.out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {config.out}: {existing} is not writable")
    return existing


def prepare(config: RunConfig, owner: Shard | None = None, *, tasks: bool = True) -> Prepared:
    """Everything checked before work, and the plan: the whole job's tasks, or with ``owner``
    (a shard, a torchrun rank) only those of its sources; ``tasks=False``: the counts only."""
    if not config.manifest:
        raise ConfigError("no manifest given")
    needs_styles = config.engine is not Engine.DREAM or config.guide
    if needs_styles and not config.styles:
        raise ConfigError("no style folder given (--styles DIR)" + (" for --guide" if config.guide else ""))
    check_out_apart(config)
    check_ours(Path(config.out))
    inputs = load_input(config.manifest)
    if needs_styles:
        styles = load_style_bank(
            config.styles,
            max_pixels=config.max_pixels,
            style_layers=len(config.style_layers),  # type: ignore[arg-type]
        )
    else:
        # Plain dream: the variants are the dream layers, drawn like styles (distinct while
        # there are enough, then again with other seeds).
        styles = [Style(f"dream-{layer}", Path(), f"Deep Dream {layer}") for layer in config.dream_layers]
    rows, failures = inputs.rows, inputs.failures
    if config.limit is not None:
        rows = [r for r in rows if r.row <= config.limit]
        failures = [f for f in failures if f.row is None or f.row <= config.limit]
    try:
        made = plan(rows, styles, plan_options(config), owner, tasks=tasks)
    except PlanTooLarge as err:
        raise ConfigError(str(err)) from None
    if made.left_out:
        log.info(
            "%d rows of splits other than %s left out (--include-originals copies them)",
            made.left_out,
            ",".join(config.splits),
        )
    if made.copies:
        log.warning("%d variants repeat an earlier one of the same image (the bank has too few styles to vary them): "
                    "add styles, or lower --per-image / the balance target", made.copies)  # fmt: skip
    for label, count in made.short.items():
        log.warning(
            "class %s: %d images, not the balance target %d (its originals alone exceed it)",
            label,
            count,
            made.targets[label],
        )
    return Prepared(inputs=inputs, rows=rows, failures=list(failures), styles=styles, tasks=made.tasks, plan=made)


def validate(config: RunConfig) -> Validation:
    """All of ``prepare`` plus what ``run`` would refuse before any work (OUT not writable or
    not augment's, weights missing and not downloadable, or a weights file that does not load
    into its networks) and a header read of every image; no pixels decoded, no image made."""
    from .networks import check_weights  # torch: only for validate, not for every prepare

    prepared = prepare(config, tasks=False)  # counts are enough: no million task objects
    out_folder = check_out_writable(config)
    weights = check_weights(config) if prepared.needs_weights else []
    good: list[SourceRow] = []
    unreadable: list[Failure] = []
    pixels_per_source: dict[SourceRow, int] = {}
    for row, found in zip(prepared.rows, probe_all([r.path for r in prepared.rows], max_pixels=config.max_pixels)):
        if isinstance(found, ImageProblem):
            unreadable.append(Failure(row.row, row.source, row.label, found.reason, f"row {row.row}: {found}"))
            continue
        good.append(row)
        out_w, out_h = config.output_shape(*found)
        pixels_per_source[row] = out_w * out_h
    # What the header reads found, as a new Prepared: the caller's is left as it was.
    prepared = dataclasses.replace(prepared, rows=good, failures=[*prepared.failures, *unreadable])
    per_source = prepared.plan.per_source if prepared.plan else {}
    pixels = sum(pixels_per_source[row] * per_source.get(row, 0) for row in good)
    counts: Counter[str] = Counter()
    for row in good:
        if per_source.get(row):
            counts[class_key(row)] += per_source[row]
    return Validation(
        tasks=sum(per_source.get(row, 0) for row in good),
        prepared=prepared,
        class_counts=dict(sorted(counts.items())),
        estimated_bytes=int(pixels * BYTES_PER_PIXEL[config.format]),
        free_bytes=shutil.disk_usage(out_folder).free,
        weights=weights,
    )


def failure_limit(config: RunConfig, prepared: Prepared) -> int | None:
    """--max-failures as a number of rows (N, or P% of the manifest's rows); None: no limit."""
    if config.max_failures is None:
        return None
    text = str(config.max_failures).strip()
    if text.endswith("%"):
        return int(float(text[:-1]) / 100.0 * (len(prepared.rows) + len(prepared.failures)))
    return int(text)
