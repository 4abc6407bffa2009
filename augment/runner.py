"""Runs a planned job: decode, call the engine, write images, manifest, failures and run.json.

The runner knows nothing of losses: it hands tensors to ``engines.gatys`` and gets tensors back.
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import write_text
from .config import RunConfig
from .engines.gatys import content_target, style_targets, stylize
from .errors import EXIT_OK, EXIT_SOME_FAILED, OutputError
from .images import ImageProblem, load_rgb, resize_long_side, save_atomic, to_image, to_tensor
from .manifest import Failure, write_csv, write_failures
from .prepare import Prepared, prepare
from .styles import Style
from .weights import ResolvedWeights, build_vgg19, resolve_vgg19

log = logging.getLogger(__name__)

ENGINE = "gatys"
BASE_COLUMNS = [
    "path", "label", "split", "source", "style", "k", "engine", "seed", "weights",
    "size", "width", "height", "iterations",
    "content_loss", "style_loss", "tv_loss", "total_loss", "seconds",
]  # fmt: skip
CHECKPOINT_EVERY_S = 30.0

ProgressFn = Callable[[int, int], None]  # (tasks finished or failed, total tasks)


@dataclass
class RunSummary:
    out: str
    exit_code: int
    tasks: int
    written: int
    failed_rows: int
    seconds: float
    weights: str
    device: str
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import pandas
    import PIL
    import torchvision

    return {
        "augment": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": torchvision.__version__, "pillow": PIL.__version__, "pandas": pandas.__version__,
        "platform": platform.platform(),
    }  # fmt: skip


class _RunLog:
    """OUT/run.log: timestamped lines for cron users who never see a progress bar."""

    def __init__(self, path: Path) -> None:
        self.logger = logging.getLogger("augment")
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.previous_level = self.logger.level

    def __enter__(self) -> _RunLog:
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)
        self.handler.close()


def run(config: RunConfig, *, progress: ProgressFn | None = None) -> RunSummary:
    """Run a whole job. Raises AugmentError (with its exit code) for whole-run problems;
    problems with single rows end up in failures.csv and in the summary."""
    prepared = prepare(config)
    # Weights before OUT: a run that cannot start leaves nothing behind.
    t0 = time.perf_counter()
    weights = resolve_vgg19(config.weights, flavour=config.weights_flavour, download=config.download)
    weights_s = time.perf_counter() - t0
    out = Path(config.out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {out}: {err}") from err
    with _RunLog(out / "run.log"):
        job = _Job(config, prepared, out, progress)
        job.timings["weights_s"] = weights_s
        return job.run(weights)


class _Job:
    def __init__(self, config: RunConfig, prepared: Prepared, out: Path, progress: ProgressFn | None):
        self.config, self.prepared, self.out = config, prepared, out
        self.progress = progress or (lambda done, total: None)
        self.device = resolve_device(config.device)
        self.failures: list[Failure] = list(prepared.failures)
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.weights_id = ""
        self.last_checkpoint = time.monotonic()
        self._grams: dict[str, dict[str, torch.Tensor] | ImageProblem] = {}

    def run(self, weights: ResolvedWeights) -> RunSummary:
        config, tasks = self.config, self.prepared.tasks
        log.info(
            "augment %s writing to %s: %d rows usable, %d failed up front, %d styles, %d tasks",
            __version__, self.out.resolve(), len(self.prepared.rows), len(self.failures),
            len(self.prepared.styles), len(tasks),
        )  # fmt: skip
        self.weights_id = weights.identity
        self._write_run_json("running", None)
        t0 = time.perf_counter()
        self.net = build_vgg19(
            weights, config.gatys_options().layers, pooling=config.pooling, device=self.device
        )
        self.timings["model_build_s"] = time.perf_counter() - t0
        log.info("weights %s (%s) on %s", weights.identity, weights.flavour.value, describe_device(self.device))

        done = 0
        self.progress(done, len(tasks))
        compute_t0 = time.perf_counter()
        for source, group in itertools.groupby(tasks, key=lambda t: t.source):
            group = list(group)
            try:
                image = resize_long_side(load_rgb(source.path, max_pixels=config.max_pixels), config.size)
            except ImageProblem as err:
                self._fail(source.row, source.source, source.label, err.reason, str(err))
                done += len(group)
                self.progress(done, len(tasks))
                continue
            content = to_tensor(image).to(self.device)
            features = content_target(self.net, content, config.gatys_options())
            for task in group:
                self._run_task(task, content, features)
                done += 1
                self.progress(done, len(tasks))
                self._maybe_checkpoint()
        self.timings["compute_s"] = time.perf_counter() - compute_t0
        exit_code = EXIT_SOME_FAILED if self.failures else EXIT_OK
        self._write_outputs()
        self._write_run_json("finished", exit_code)
        summary = RunSummary(
            out=str(self.out), exit_code=exit_code, tasks=len(tasks), written=len(self.rows),
            failed_rows=len(self.failures), seconds=round(time.time() - self.started, 3),
            weights=self.weights_id, device=describe_device(self.device),
            failures=[f.as_dict() for f in self.failures],
        )  # fmt: skip
        log.info("done: %d images written, %d rows failed, %.1f s", summary.written, summary.failed_rows, summary.seconds)
        return summary

    def _style_grams(self, style: Style) -> dict[str, torch.Tensor] | ImageProblem:
        """Style Gram targets, computed once per style per run."""
        if style.name not in self._grams:
            try:
                image = resize_long_side(load_rgb(style.path, max_pixels=self.config.max_pixels), self.config.size)
                self._grams[style.name] = style_targets(
                    self.net, to_tensor(image).to(self.device), self.config.gatys_options()
                )
            except ImageProblem as err:
                self._grams[style.name] = err
        return self._grams[style.name]

    def _run_task(self, task: Any, content: torch.Tensor, features: torch.Tensor) -> None:
        source = task.source
        grams = self._style_grams(task.style)
        if isinstance(grams, ImageProblem):
            self._fail(source.row, source.source, source.label, "bad_style", f"style {task.style.name}: {grams}")
            return
        options = self.config.gatys_options(**task.style.overrides)
        t0 = time.perf_counter()
        try:
            result = stylize(self.net, content, grams, options, content_features=features, seed=task.seed)
        except torch.cuda.OutOfMemoryError as err:
            self._fail(source.row, source.source, source.label, "out_of_memory", f"{task.output}: {err}")
            return
        seconds = time.perf_counter() - t0
        path = self.out / task.output
        try:
            save_atomic(to_image(result.image), path, fmt=self.config.format, quality=self.config.quality)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err}") from err
        height, width = result.image.shape[-2:]
        self.rows.append({
            "path": task.output, "label": source.label, "split": source.split,
            "source": source.source, "style": task.style.name, "k": task.k, "engine": ENGINE,
            "seed": task.seed, "weights": self.weights_id, "size": self.config.size,
            "width": width, "height": height, "iterations": options.iterations,
            **{f"{name}_loss": f"{values[0]:.6g}" for name, values in result.losses.items()},
            "seconds": round(seconds, 3), **source.extra,
        })  # fmt: skip

    def _fail(self, row: int, path: str, label: str, reason: str, message: str) -> None:
        if not message.startswith("row "):
            message = f"row {row}: {message}"
        log.warning("%s", message)
        # One failures.csv row per input row, even when several of its tasks fail.
        if not any(f.row == row and f.path == path for f in self.failures):
            self.failures.append(Failure(row, path, label, reason, message))

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_EVERY_S:
            self._write_outputs()
            self.last_checkpoint = time.monotonic()

    def _write_outputs(self) -> None:
        columns = BASE_COLUMNS + [c for c in self.prepared.inputs.extra_columns if c not in BASE_COLUMNS]
        try:
            write_csv(self.out / "manifest.csv", self.rows, columns)
            write_failures(self.out / "failures.csv", sorted(self.failures, key=lambda f: (f.row or 0, f.path)))
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err

    def _write_run_json(self, status: str, exit_code: int | None) -> None:
        written = len(self.rows)
        compute = self.timings.get("compute_s")
        data = {
            "status": status,
            "exit_code": exit_code,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if status == "finished" else None,
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "engine": ENGINE,
            "weights": self.weights_id or None,
            "device": describe_device(self.device),
            "versions": versions(),
            "counts": {
                "rows": len(self.prepared.rows) + len(self.prepared.failures),
                "styles": len(self.prepared.styles),
                "tasks": len(self.prepared.tasks),
                "written": written,
                "failed_rows": len(self.failures),
            },
            "timings": {
                **{k: round(v, 3) for k, v in self.timings.items()},
                "seconds": round(time.time() - self.started, 3),
                "seconds_per_image": round(compute / written, 3) if compute and written else None,
            },
        }
        try:
            write_text(self.out / "run.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err
