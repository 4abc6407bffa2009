"""Runs one part of a job: decode, call the engine, write images and the part's files.

A part is the whole job (one process), one worker, one shard or one torchrun rank; each writes
``OUT/parts/<name>.manifest.csv``, ``.failures.csv`` and ``.json``, which ``merge`` joins into
the final manifest.csv, failures.csv and run.json. The runner knows nothing of losses: it hands
tensors to ``engines.gatys`` and gets tensors back.
"""

from __future__ import annotations

import json
import math
import logging
import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import __version__
from .atomic import write_text
from .config import RunConfig
from .engines.gatys import GatysBatcher, Job, Result, Stage
from .engines.memory import CPU_BATCH, auto_batch_size, bytes_per_image
from .engines.precision import Precision, enable_fast_fp32, resolve_precision
from .errors import OutputError
from .images import ImageProblem, fit_long_side, load_rgb, probe, resize_long_side, save_atomic, to_image, to_tensor
from .manifest import Failure, SourceRow, write_csv, write_failures
from .merge import PARTS
from .plan import Task
from .prepare import Prepared
from .styles import Style
from .weights import ResolvedWeights, build_vgg19

log = logging.getLogger(__name__)

ENGINE = "gatys"
BASE_COLUMNS = [
    "path", "label", "split", "source", "style", "k", "engine", "seed", "weights",
    "size", "width", "height", "iterations", "precision",
    "content_loss", "style_loss", "tv_loss", "total_loss", "seconds",
]  # fmt: skip
CHECKPOINT_EVERY_S = 30.0


ProgressFn = Callable[[int, int], None]  # (tasks finished or failed, total tasks)


@dataclass
class _Saving:
    """An image being written in the background, and what its manifest row needs."""

    task: Task
    result: Result
    precision: Precision
    future: Future[None]


@dataclass
class PartSummary:
    name: str
    written: int
    failed_rows: int
    device: torch.device


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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _prefetch(items: Iterable[Any], work: Callable[[Any], Any], *, depth: int) -> Iterator[tuple[Any, Any]]:
    """(item, work(item)) in order, computed up to ``depth`` items ahead in a thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment-decode") as pool:
        queue: deque[tuple[Any, Future[Any]]] = deque()
        for item in items:
            queue.append((item, pool.submit(work, item)))
            if len(queue) > depth:
                head, future = queue.popleft()
                yield head, future.result()
        while queue:
            head, future = queue.popleft()
            yield head, future.result()


def order_by_shape(tasks: list[Task], config: RunConfig) -> tuple[list[list[Task]], list[Failure]]:
    """Header-read every source (cheap) and group its tasks, groups ordered by output shape so
    batches fill with images of one size. Unreadable sources become failures here."""
    shapes: dict[SourceRow, tuple[int, int]] = {}
    failures = []
    groups: dict[SourceRow, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.source, []).append(task)
    for source in groups:
        try:
            w, h = probe(source.path, max_pixels=config.max_pixels)
        except ImageProblem as err:
            failures.append(Failure(source.row, source.source, source.label, err.reason, f"row {source.row}: {err}"))
            continue
        out_w, out_h = fit_long_side(w, h, config.size)
        shapes[source] = (out_h, out_w)
    ordered = sorted((s for s in groups if s in shapes), key=lambda s: shapes[s])  # stable: task order within a shape
    return [groups[s] for s in ordered], failures


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    # importlib.metadata, not imports: importing torchvision alone costs ~0.5 s of start-up.
    from importlib.metadata import PackageNotFoundError, version

    found = {"augment": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "torchvision", "pillow", "pandas"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


class RunLog:
    """OUT/run.log: timestamped lines for cron users who never see a progress bar."""

    def __init__(self, path: Path) -> None:
        self.logger = logging.getLogger("augment")
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.previous_level = self.logger.level

    def __enter__(self) -> RunLog:
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)
        self.handler.close()


class PartRun:
    """One part of a job. ``run`` takes the part's tasks as groups (one per source image, in
    processing order) and writes ``OUT/parts/<name>.*``."""

    def __init__(
        self,
        config: RunConfig,
        prepared: Prepared,
        out: Path,
        *,
        name: str = "main",
        device: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.config, self.prepared, self.out, self.name = config, prepared, out, name
        self.progress = progress or (lambda done, total: None)
        self.device = resolve_device(device or config.device)
        self.failures: list[Failure] = list(prepared.failures)
        self.total = self.done = 0
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.weights_id = ""
        self.last_checkpoint = time.monotonic()
        self._grams: dict[tuple[str, int], dict[str, torch.Tensor] | ImageProblem] = {}
        self._pending: list[_Saving] = []  # images being written in the background

    def run(
        self, weights: ResolvedWeights, groups: Iterable[list[Task]], *, total: int, failures: Iterable[Failure] = ()
    ) -> PartSummary:
        config = self.config
        self.failures += list(failures)
        self.weights_id = weights.identity
        self._write_part_json("running")
        t0 = time.perf_counter()
        options = config.gatys_options()
        enable_fast_fp32(self.device)
        self.net = build_vgg19(weights, options.layers, pooling=config.pooling, device=self.device)
        self.precision = resolve_precision(config.precision, self.device)
        # channels_last: faster with cuDNN, and with bf16 on CPU (measured 1.3x at 128 px);
        # slower for fp32 on CPU (0.95x).
        channels_last = self.device.type == "cuda" or self.precision is not Precision.FP32
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.timings["model_build_s"] = time.perf_counter() - t0
        log.info(
            "weights %s (%s) on %s, %s",
            weights.identity, weights.flavour.value, describe_device(self.device), self.precision.value,
        )  # fmt: skip

        self.total, self.done = total, len(self.rows)  # rows kept from an earlier run count as done
        self.progress(self.done, self.total)
        batch_size = self._batch_size()
        self.batch_size = batch_size
        batcher = GatysBatcher(
            self.net, options, batch_size=batch_size, precision=self.precision, channels_last=channels_last
        )
        compute_t0 = time.perf_counter()
        self._eta_t0, self._eta_logged = time.monotonic(), 0.0
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="augment-save") as saver:
            retry = self._consume(batcher, groups, saver, self.precision)
            if retry:  # mixed precision overflowed for these: redo them in fp32
                log.warning("%d images had a non-finite loss in %s; redoing them in fp32", len(retry), self.precision.value)
                fp32 = GatysBatcher(self.net, options, batch_size=batch_size, channels_last=channels_last)
                self._grams = {}  # style targets again, in fp32
                self._consume(fp32, _group_by_source(retry), saver, Precision.FP32)
            self._collect(self._pending, wait=True)
        self.timings["compute_s"] = time.perf_counter() - compute_t0
        self.timings["batch_size"] = batch_size
        self.timings["oom_backoffs"] = batcher.oom_events
        if self.device.type == "cuda":
            self.timings["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 1e6
        self._write_outputs()
        self._write_part_json("finished")
        log.info("%s done: %d images written, %d rows failed", self.name, len(self.rows), len(self.failures))
        return PartSummary(self.name, len(self.rows), len(self.failures), self.device)

    def _consume(
        self, batcher: GatysBatcher, groups: Iterable[list[Task]], saver: ThreadPoolExecutor, precision: Precision
    ) -> list[Task]:
        """Run ``groups`` through ``batcher``, handing finished images to ``saver``. Returns
        the tasks whose loss went non-finite in half precision (in fp32 they fail)."""
        self._batcher = batcher
        retry = []
        for result in batcher.run(self._jobs(groups, batcher)):
            if math.isfinite(result.losses["total"]):
                self._pending.append(self._submit(saver, result, precision))
            elif precision is not Precision.FP32:
                retry.append(result.key)
                continue
            else:
                self._fail_non_finite(result)
            self._advance(1)
            self._pending = self._collect(self._pending, wait=False)
        return retry

    def _batch_size(self) -> int:
        if self.config.batch_size:
            return self.config.batch_size
        if self.device.type != "cuda":
            return CPU_BATCH
        free, _ = torch.cuda.mem_get_info(self.device)
        w, h = fit_long_side(self.config.size, self.config.size, self.config.size)  # square: the largest
        per_image = bytes_per_image(
            self.net, h, w, history_size=self.config.gatys_options().history_size,
            half=self.precision in (Precision.BF16, Precision.FP16),
        )  # fmt: skip
        size = auto_batch_size(free, per_image)
        log.info("batch size %d (%.0f MB free, about %.0f MB per image)", size, free / 1e6, per_image / 1e6)
        return size

    def _jobs(self, groups: Iterable[list[Task]], batcher: GatysBatcher) -> Iterator[Job]:
        """Jobs in group order; decoding runs ahead in a thread while the device computes."""
        iterations = self.config.stage_iterations
        for group, decoded in _prefetch(groups, lambda g: self._decode(g[0].source), depth=4):
            source = group[0].source
            if isinstance(decoded, ImageProblem):
                self._fail(source.row, source.source, source.label, decoded.reason, str(decoded))
                self._advance(len(group))
                continue
            contents = [c.to(self.device) for c in decoded]  # one per scale, full size last
            features = [batcher.content_features(c) for c in contents]  # once per image, shared by its styles
            for task in group:
                grams = [self._style_grams(task.style, size) for size in self.config.stage_sizes()]
                problem = next((g for g in grams if isinstance(g, ImageProblem)), None)
                if problem is not None:
                    self._fail(source.row, source.source, source.label, "bad_style", f"style {task.style.name}: {problem}")
                    self._advance(1)
                    continue
                coarse = [Stage(c, g, n, f) for c, g, n, f in zip(contents, grams, iterations, features)][:-1]  # type: ignore[arg-type]
                yield Job(
                    key=task, content=contents[-1], grams=grams[-1],  # type: ignore[arg-type]
                    options=self.config.gatys_options(**task.style.overrides), seed=task.seed,
                    content_features=features[-1], coarse=coarse,
                )  # fmt: skip

    def _decode(self, source: SourceRow) -> list[torch.Tensor] | ImageProblem:
        try:
            image = load_rgb(source.path, max_pixels=self.config.max_pixels)
        except ImageProblem as err:
            return err
        return [to_tensor(resize_long_side(image, size)) for size in self.config.stage_sizes()]

    def _style_grams(self, style: Style, size: int) -> dict[str, torch.Tensor] | ImageProblem:
        """Style Gram targets, computed once per style and size per run."""
        key = (style.name, size)
        if key not in self._grams:
            try:
                image = resize_long_side(load_rgb(style.path, max_pixels=self.config.max_pixels), size)
                self._grams[key] = self._batcher.style_targets(to_tensor(image))
            except ImageProblem as err:
                self._grams[key] = err
        return self._grams[key]

    def _submit(self, saver: ThreadPoolExecutor, result: Result, precision: Precision) -> _Saving:
        """Encode and write in a thread so the device goes on computing."""
        task: Task = result.key
        return _Saving(task, result, precision, saver.submit(self._save, to_image(result.image), task.output))

    def _fail_non_finite(self, result: Result) -> None:
        task: Task = result.key
        self._fail(task.source.row, task.source.source, task.source.label, "non_finite",
                   f"{task.output}: the loss became {result.losses['total']}")  # fmt: skip

    def _save(self, image: Image.Image, output: str) -> None:
        path = self.out / output
        try:
            save_atomic(image, path, fmt=self.config.format, quality=self.config.quality)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err}") from err

    def _collect(self, pending: list[_Saving], *, wait: bool) -> list[_Saving]:
        """Manifest rows for saved images; re-raises a save's OutputError here."""
        still = []
        for saving in pending:
            if not wait and not saving.future.done():
                still.append(saving)
                continue
            saving.future.result()
            self.rows.append(self._manifest_row(saving))
        return still

    def _manifest_row(self, saving: _Saving) -> dict[str, Any]:
        task, result, source = saving.task, saving.result, saving.task.source
        height, width = result.image.shape[-2:]
        return {
            "path": task.output, "label": source.label, "split": source.split,
            "source": source.source, "style": task.style.name, "k": task.k, "engine": ENGINE,
            "seed": task.seed, "weights": self.weights_id, "size": self.config.size,
            "width": width, "height": height, "iterations": result.iterations,
            "precision": saving.precision.value,
            **{f"{name}_loss": f"{value:.6g}" for name, value in result.losses.items()},
            "seconds": round(result.seconds, 3), **source.extra,
        }  # fmt: skip

    def _advance(self, count: int) -> None:
        self.done += count
        self.progress(self.done, self.total)
        self._maybe_checkpoint()
        # An estimate from the first finished images, then once a minute: for logs and cron.
        now = time.monotonic()
        left = self.total - self.done
        if left and (not self._eta_logged or now - self._eta_logged >= 60.0):
            rate = self.done / max(now - self._eta_t0, 1e-9)
            if self.done >= min(self.batch_size, self.total):
                log.info("%d/%d images, about %s left", self.done, self.total, _duration(left / max(rate, 1e-9)))
                self._eta_logged = now

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

    def record_failures(self, failures: Iterable[Failure]) -> None:
        """A part with failures only (no model, no images): rows that failed before any work."""
        self.failures += list(failures)
        self._write_outputs()
        self._write_part_json("finished")

    def _part(self, suffix: str) -> Path:
        return self.out / PARTS / f"{self.name}{suffix}"

    def _write_outputs(self) -> None:
        columns = BASE_COLUMNS + [c for c in self.prepared.inputs.extra_columns if c not in BASE_COLUMNS]
        try:
            write_csv(self._part(".manifest.csv"), sorted(self.rows, key=lambda r: r["path"]), columns)
            write_failures(self._part(".failures.csv"), sorted(self.failures, key=lambda f: (f.row or 0, f.path)))
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err

    def _write_part_json(self, status: str) -> None:
        written = len(self.rows)
        compute = self.timings.get("compute_s")
        data = {
            "part": self.name,
            "status": status,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if status == "finished" else None,
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "engine": ENGINE,
            "weights": self.weights_id or None,
            "device": describe_device(self.device),
            "versions": versions(),
            "counts": {"tasks": self.total, "written": written, "failed_rows": len(self.failures)},
            "timings": {
                **{k: round(v, 3) for k, v in self.timings.items()},
                "seconds": round(time.time() - self.started, 3),
                "seconds_per_image": round(compute / written, 3) if compute and written else None,
            },
        }
        try:
            write_text(self._part(".json"), json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {err}") from err


def _group_by_source(tasks: list[Task]) -> list[list[Task]]:
    groups: dict[SourceRow, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.source, []).append(task)
    return list(groups.values())
