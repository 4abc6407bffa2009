"""Runs one part of a job: decode, call the engine, write images and the part's files.

A part is the whole job (one process), one worker, one shard or one torchrun rank; each writes
``OUT/parts/<name>.manifest.csv``, ``.failures.csv`` and ``.json``, which ``merge`` joins into
the final manifest.csv, failures.csv and run.json. The runner knows nothing of losses: it hands
tensors to ``engines.gatys`` and gets tensors back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image

from . import __version__
from .atomic import write_text
from .config import Engine, RunConfig
from .engines.dream import dream, guide_features, octave_sizes
from .engines.gatys import GatysBatcher, Job, Result
from .engines.memory import CPU_BATCH, auto_batch_size, bytes_per_image
from .engines.precision import HALF_DTYPES, Precision, enable_fast_fp32, resolve_precision, use_channels_last
from .engines.transfer import Finish, Grams, StyleGrams, make_job, stage_targets
from .engines.vgg import Flavour
from .errors import BudgetExhausted, Interrupted, OutputError, Stopped, TooManyFailures
from .images import (
    ImageProblem,
    fit_long_side,
    load_rgb,
    probe,
    resize_long_side,
    save_atomic,
    to_image,
    to_tensor,
)
from .manifest import BASE_COLUMNS, Failure, SourceRow, write_csv, write_failures
from .merge import JOURNAL, PARTS
from .plan import Task
from .prepare import Prepared
from .styles import Style
from .weights import NetWeights, ResolvedWeights, build_dream_net, build_vgg19

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 30.0


ProgressFn = Callable[[int, int], None]  # (tasks finished or failed, total tasks)


@dataclass
class _Saving:
    """An image being written in the background, and what its manifest row needs."""

    task: Task
    result: Result
    precision: Precision
    future: Future[None]
    dream_objective: float | None = None
    row: dict[str, Any] = field(default_factory=dict)


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


def failure_limit(config: RunConfig, prepared: Prepared) -> int | None:
    """--max-failures as a number of rows (N, or P% of the manifest's rows); None: no limit."""
    if config.max_failures is None:
        return None
    text = str(config.max_failures).strip()
    if text.endswith("%"):
        return int(float(text[:-1]) / 100.0 * (len(prepared.rows) + len(prepared.failures)))
    return int(text)


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
        keys: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.config, self.prepared, self.out, self.name = config, prepared, out, name
        self.keys = keys or {}  # output path -> task key, recorded in each row
        self.max_failures = failure_limit(config, prepared)
        self.deadline = deadline  # --max-seconds, as a time.time() the caller computed
        self.progress = progress or (lambda done, total: None)
        self.device = resolve_device(device or config.device)
        self.failures: list[Failure] = list(prepared.failures)
        self.total = self.done = 0
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.weights_id = ""
        self.flavour = Flavour.TORCHVISION  # of the VGG19 weights: decides the default loss weights
        self.last_checkpoint = time.monotonic()
        # (style, long side) -> (Gram targets, the style image's pixel count)
        self._grams: dict[tuple[str, int], StyleGrams | ImageProblem] = {}
        self._contents: dict[Task, torch.Tensor] = {}  # sources kept for --preserve-color / --alpha
        self._pending: list[_Saving] = []  # images being written in the background
        self._journal: IO[str] | None = None
        self._journal_lock = threading.Lock()
        # Sources decoded ahead of the device. Workers sharing one queue take 1, so that one
        # worker does not pull (and hoard) work the others are waiting for.
        self.prefetch = 4

    def run(
        self, weights: NetWeights, groups: Iterable[list[Task]], *, total: int, failures: Iterable[Failure] = ()
    ) -> PartSummary:
        self.failures += list(failures)
        self.weights_id = weights.identity
        if weights.gatys is not None:
            self.flavour = weights.gatys.flavour
        self._write_part_json("running")
        self.total, self.done = total, len(self.rows)  # rows kept from an earlier run count as done
        self.precision = resolve_precision(self.config.precision, self.device)
        try:
            self._check_failures()
            if isinstance(groups, list) and not groups:
                self.progress(self.total, self.total)  # nothing to make: no network is built
            elif weights.gatys is None and weights.dream is None:
                self._run_copies(groups)  # only originals to copy
            elif self.config.engine is Engine.DREAM:
                assert weights.dream is not None
                self._run_dream(weights.dream, groups)
            else:
                assert weights.gatys is not None
                if self.config.engine is Engine.GATYS_DREAM:
                    assert weights.dream is not None
                    self._build_dream_net(weights.dream)
                self._run_gatys(weights.gatys, groups)
        except (KeyboardInterrupt, Stopped) as err:
            # Keep what is finished: images already written are recorded, then re-raise.
            self._collect([p for p in self._pending if p.future.done() and not p.future.exception()], wait=True)
            self._write_outputs()
            self._write_part_json(err.status if isinstance(err, Stopped) else Interrupted.status)
            raise
        self._write_outputs()
        self._write_part_json("finished")
        if self._journal is not None:  # the part manifest now holds every row
            self._journal.close()
            self._part(JOURNAL).unlink(missing_ok=True)
        log.info("%s done: %d images written, %d rows failed", self.name, len(self.rows), len(self.failures))
        return PartSummary(self.name, len(self.rows), len(self.failures), self.device)

    def _build_dream_net(self, weights: ResolvedWeights) -> None:
        options = self.config.dream_options()
        self.dream_dtype = HALF_DTYPES.get(self.precision, torch.float32)
        self.dream_net = build_dream_net(weights, options.layers, device=self.device).to(self.dream_dtype)
        self._guides: dict[str, dict[str, torch.Tensor] | ImageProblem] = {}
        self._octave_note: set[tuple[int, int]] = set()
        log.info("dream network %s on %s, %s", weights.identity, describe_device(self.device), self.precision.value)

    def _guide(self, style: Style) -> dict[str, torch.Tensor] | ImageProblem:
        """A guide image's activations (guided dream), once per style."""
        if style.name not in self._guides:
            try:
                image = load_rgb(style.path, max_pixels=self.config.max_pixels)
                tensor = to_tensor(resize_long_side(image, self.config.size)).to(self.device)
                self._guides[style.name] = guide_features(
                    self.dream_net, tensor, self.config.dream_layers, self.dream_dtype
                )
            except ImageProblem as err:
                self._guides[style.name] = err
        return self._guides[style.name]

    def _dream_steps(self, height: int, width: int) -> int:
        """Steps an image of this size gets; logs once per size when octaves had to be dropped."""
        options = self.config.dream_options()
        octaves = len(octave_sizes(height, width, options))
        if octaves < options.octaves and (height, width) not in self._octave_note:
            self._octave_note.add((height, width))
            log.info(
                "%dx%d is too small for %d octaves at scale %s: using %d",
                width,
                height,
                options.octaves,
                options.octave_scale,
                octaves,
            )
        return octaves * options.iterations

    def _dream_one(self, result: Result) -> float:
        """Dream on top of a stylized result (--engine gatys+dream); returns the objective."""
        task: Task = result.key
        guides = None
        if self.config.guide:
            guide = self._guide(task.style)
            if isinstance(guide, ImageProblem):  # the style decoded for gatys; cannot happen twice
                raise guide
            guides = {layer: [value] for layer, value in guide.items()}
        out, objective = dream(self.dream_net, result.image.to(self.device), self.config.dream_options(),
                               seeds=[task.seed], guides=guides, dtype=self.dream_dtype)  # fmt: skip
        result.image = out.cpu()
        self._dream_steps(*out.shape[-2:])  # notes dropped octaves
        return objective[0]

    def _run_dream(self, weights: ResolvedWeights, groups: Iterable[list[Task]]) -> None:
        """Deep Dream over batches of equal-size images (fixed steps: no continuous batching)."""
        config, options = self.config, self.config.dream_options()
        self._build_dream_net(weights)
        dtype = self.dream_dtype
        self.progress(self.done, self.total)
        self.batch_size = config.batch_size or CPU_BATCH
        self._eta_t0, self._eta_logged = time.monotonic(), 0.0
        compute_t0 = time.perf_counter()
        guide = self._guide

        def flush(batch: list[tuple[Task, torch.Tensor]]) -> None:
            if not batch:
                return
            tasks = [task for task, _ in batch]
            per_image = [guide(t.style) for t in tasks] if config.guide else []
            for task, g in zip(tasks, per_image):
                if isinstance(g, ImageProblem):
                    self._fail(
                        task.source.row,
                        task.source.source,
                        task.source.label,
                        "bad_style",
                        f"style {task.style.name}: {g}",
                    )
            keep = [i for i in range(len(tasks)) if not per_image or not isinstance(per_image[i], ImageProblem)]
            if keep:
                t0 = time.perf_counter()
                images = torch.cat([batch[i][1] for i in keep]).to(self.device)
                guide_lists = (
                    {layer: [per_image[i][layer] for i in keep] for layer in options.layers} if per_image else None
                )  # type: ignore[index]
                out, objective = dream(
                    self.dream_net,
                    images,
                    options,
                    seeds=[tasks[i].seed for i in keep],
                    guides=guide_lists,
                    dtype=dtype,
                )
                share = (time.perf_counter() - t0) / len(keep)
                for j, i in enumerate(keep):
                    steps = self._dream_steps(*images.shape[-2:])
                    result = Result(
                        key=tasks[i], image=out[j : j + 1].cpu(), losses={}, iterations=steps, seconds=share
                    )
                    self._pending.append(
                        self._submit(result, self.precision, dream_objective=objective[j], content=batch[i][1])
                    )
            self._advance(len(tasks))
            self._pending = self._collect(self._pending, wait=False)

        with self._saving():
            batch: list[tuple[Task, torch.Tensor]] = []
            for group, decoded in self._decoded(groups):
                content = decoded[-1]
                for task in group:
                    if task.original:
                        self._save_copy(task, content)
                        continue
                    if batch and (batch[0][1].shape != content.shape or len(batch) >= self.batch_size):
                        flush(batch)
                        batch = []
                    batch.append((task, content))
            flush(batch)
        self.timings["compute_s"] = time.perf_counter() - compute_t0
        self.timings["batch_size"] = self.batch_size

    def _run_gatys(self, weights: ResolvedWeights, groups: Iterable[list[Task]]) -> None:
        config = self.config
        t0 = time.perf_counter()
        options = config.gatys_options()
        enable_fast_fp32(self.device)
        self.net = build_vgg19(weights, options.layers, pooling=config.pooling, device=self.device)
        channels_last = use_channels_last(self.device, self.precision)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.timings["model_build_s"] = time.perf_counter() - t0
        log.info(
            "weights %s (%s) on %s, %s",
            weights.identity, weights.flavour.value, describe_device(self.device), self.precision.value,
        )  # fmt: skip

        self.progress(self.done, self.total)
        batch_size = self._batch_size()
        self.batch_size = batch_size
        batcher = GatysBatcher(
            self.net, options, batch_size=batch_size, precision=self.precision, channels_last=channels_last
        )
        compute_t0 = time.perf_counter()
        self._eta_t0, self._eta_logged = time.monotonic(), 0.0
        with self._saving():
            retry = self._consume(batcher, groups, self.precision)
            if retry:  # mixed precision overflowed for these: redo them in fp32
                log.warning(
                    "%d images had a non-finite loss in %s; redoing them in fp32", len(retry), self.precision.value
                )
                fp32 = GatysBatcher(self.net, options, batch_size=batch_size, channels_last=channels_last)
                self._grams = {}  # style targets again, in fp32
                self._consume(fp32, _group_by_source(retry), Precision.FP32)
        self.timings["compute_s"] = time.perf_counter() - compute_t0
        self.timings["batch_size"] = batch_size
        self.timings["oom_backoffs"] = batcher.oom_events
        if self.device.type == "cuda":
            self.timings["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 1e6

    def _consume(self, batcher: GatysBatcher, groups: Iterable[list[Task]], precision: Precision) -> list[Task]:
        """Run ``groups`` through ``batcher``, handing finished images to the saver. Returns
        the tasks whose loss went non-finite in half precision (in fp32 they fail)."""
        self._batcher = batcher
        retry = []
        for result in batcher.run(self._jobs(groups, batcher)):
            if math.isfinite(result.losses["total"]):
                objective = self._dream_one(result) if self.config.engine is Engine.GATYS_DREAM else None
                content = self._contents.pop(result.key, None)
                self._pending.append(self._submit(result, precision, dream_objective=objective, content=content))
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
        for group, decoded in self._decoded(groups):
            source = group[0].source
            contents = [c.to(self.device) for c in decoded]  # one per scale, full size last
            features = [batcher.content_features(c) for c in contents]  # once per image, shared by its styles
            for task in group:
                if task.original:
                    self._save_copy(task, contents[-1])
                    continue
                grams = [self._targets(task, size, c) for size, c in zip(self.config.stage_sizes(), contents)]
                problem = next((g for g in grams if isinstance(g, ImageProblem)), None)
                if problem is not None:
                    self._fail(
                        source.row, source.source, source.label, "bad_style", f"style {task.style_name}: {problem}"
                    )
                    self._advance(1)
                    continue
                if self._finish(task).needs_content:
                    self._contents[task] = contents[-1]
                options = self.config.gatys_options(**self._overrides(task))
                yield make_job(task, contents, grams, features, iterations, options, task.seed)  # type: ignore[arg-type]

    def _overrides(self, task: Task) -> dict[str, float]:
        """Loss weights for this image: its sampled β, then the style's styles.yaml settings
        (the more specific wins)."""
        sampled = {} if task.style_weight is None else {"style_weight": task.style_weight}
        return {**sampled, **task.style.overrides}

    def _finish(self, task: Task) -> Finish:
        return Finish(preserve_color=self.config.preserve_color, alpha=task.alpha)

    def _targets(self, task: Task, size: int, content: torch.Tensor) -> Grams | ImageProblem:
        """Gram targets of the task's style (or blend of two) for a content image of this size."""
        styles = [self._style_grams(style, size) for style in (task.style, task.style2) if style is not None]
        problem = next((s for s in styles if isinstance(s, ImageProblem)), None)
        return problem or stage_targets(styles, content, task.mix)  # type: ignore[arg-type]

    def _save_copy(self, task: Task, content: torch.Tensor) -> None:
        """An original, re-encoded at the output size: no network involved."""
        result = Result(key=task, image=content.cpu(), losses={}, iterations=0, seconds=0.0)
        self._pending.append(self._submit(result, Precision.FP32))
        self._advance(1)

    def _run_copies(self, groups: Iterable[list[Task]]) -> None:
        """A part with only originals to copy (rows of splits that are not stylized)."""
        t0 = time.perf_counter()
        self.progress(self.done, self.total)
        self.batch_size = 1
        self._eta_t0, self._eta_logged = time.monotonic(), 0.0
        with self._saving():
            for group, decoded in self._decoded(groups):
                for task in group:
                    self._save_copy(task, decoded[-1])
                self._pending = self._collect(self._pending, wait=False)
        self.timings["compute_s"] = time.perf_counter() - t0

    def _decoded(self, groups: Iterable[list[Task]]) -> Iterator[tuple[list[Task], list[torch.Tensor]]]:
        """Each group with its source decoded (one tensor per scale, full size last), decoding
        a few ahead in a thread; an undecodable source becomes a failure and is skipped."""
        for group, decoded in _prefetch(groups, lambda g: self._decode(g[0].source), depth=self.prefetch):
            if isinstance(decoded, ImageProblem):
                source = group[0].source
                self._fail(source.row, source.source, source.label, decoded.reason, str(decoded))
                self._advance(len(group))
                continue
            yield group, decoded

    def _decode(self, source: SourceRow) -> list[torch.Tensor] | ImageProblem:
        try:
            image = load_rgb(source.path, max_pixels=self.config.max_pixels)
        except ImageProblem as err:
            return err
        return [to_tensor(resize_long_side(image, size)) for size in self.config.stage_sizes()]

    def _style_grams(self, style: Style, size: int) -> StyleGrams | ImageProblem:
        """Style Gram targets and the style image's pixel count, once per style and size per
        run. The style image is --style-scale times the content's long side."""
        key = (style.name, size)
        if key not in self._grams:
            try:
                image = resize_long_side(
                    load_rgb(style.path, max_pixels=self.config.max_pixels), self.config.style_size(size)
                )
                self._grams[key] = StyleGrams(self._batcher.style_targets(to_tensor(image)), image.width * image.height)
            except ImageProblem as err:
                self._grams[key] = err
        return self._grams[key]

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Threads that encode and write images while the device computes; on a normal exit
        every submitted image is written and recorded."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="augment-save") as saver:
            self._saver = saver
            yield
            self._collect(self._pending, wait=True)

    def _submit(
        self, result: Result, precision: Precision, *,
        dream_objective: float | None = None, content: torch.Tensor | None = None,
    ) -> _Saving:  # fmt: skip
        """Encode and write in a saver thread (see ``_saving``) so the device goes on computing."""
        task: Task = result.key
        if content is not None and not task.original:
            result.image = self._finish(task).apply(result.image, content)
        saving = _Saving(task, result, precision, None, dream_objective)  # type: ignore[arg-type]
        saving.row = self._manifest_row(saving)
        saving.future = self._saver.submit(self._save, to_image(result.image), task.output, saving.row)
        return saving

    def _fail_non_finite(self, result: Result) -> None:
        task: Task = result.key
        self._fail(task.source.row, task.source.source, task.source.label, "non_finite",
                   f"{task.output}: the loss became {result.losses['total']}")  # fmt: skip

    def _save(self, image: Image.Image, output: str, row: dict[str, Any]) -> None:
        path = self.out / output
        try:
            save_atomic(image, path, fmt=self.config.format, quality=self.config.quality)
            self._journal_append(row)
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
            self.rows.append(saving.row)
        return still

    def _journal_append(self, row: dict[str, Any]) -> None:
        """One JSON line per written image, flushed to disk right after the image is renamed
        into place: what a kill -9 cannot take back. Called from the saving threads."""
        with self._journal_lock:
            if self._journal is None:
                self._journal = self._part(JOURNAL).open("a", encoding="utf-8")
            self._journal.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())

    def _manifest_row(self, saving: _Saving) -> dict[str, Any]:
        task, result, source = saving.task, saving.result, saving.task.source
        height, width = result.image.shape[-2:]
        return {
            "path": task.output, "label": source.label, "split": source.split,
            "source": source.source, "style": task.style_name, "k": task.k,
            "engine": "original" if task.original else self._engine_name(),
            "seed": "" if task.original else task.seed, "weights": "" if task.original else self.weights_id,
            "style_mix": task.mix if task.style2 else "",
            "style_weight": ""
            if task.original or self.config.engine is Engine.DREAM
            else f"{self._style_weight(task):.6g}",
            "alpha": "" if task.original else task.alpha, "size": self.config.size,
            "width": width, "height": height, "iterations": result.iterations,
            "precision": saving.precision.value,
            **{f"{name}_loss": f"{value:.6g}" for name, value in result.losses.items()},
            "dream_objective": "" if saving.dream_objective is None else f"{saving.dream_objective:.6g}",
            "params": "" if task.original else self._params(),
            "key": self.keys.get(task.output, ""),
            "seconds": round(result.seconds, 3), **source.extra,
        }  # fmt: skip

    def _style_weight(self, task: Task) -> float:
        return self.config.gatys_options(**self._overrides(task)).resolved(self.flavour).style_weight  # type: ignore[return-value]

    def _engine_name(self) -> str:
        engine = self.config.engine.value
        return f"{engine}-guided" if self.config.guide and self.config.engine is not Engine.GATYS else engine

    def _params(self) -> str:
        """The engine's settings, in the manifest row (the full config is in run.json)."""
        c = self.config
        resolved = c.gatys_options().resolved(self.flavour)
        gatys = f"content_weight={resolved.content_weight:.6g} tv_weight={resolved.tv_weight:.6g}"
        if c.style_layer_weights is not None:
            gatys += " style_layer_weights=" + ",".join(f"{w:g}" for w in c.style_layer_weights)
        gatys += " normalize_gradients" * c.normalize_gradients
        extras = [f"style_scale={c.style_scale}"] * (c.style_scale != 1.0) + ["preserve_color"] * c.preserve_color
        gatys = " ".join([gatys, *extras])
        dream = (
            f"layers={','.join(c.dream_layers)} octaves={c.octaves} octave_scale={c.octave_scale} "
            f"iterations={c.dream_options().iterations} step={c.dream_step} jitter={c.jitter} blend={c.dream_blend}"
        )
        return {Engine.GATYS: gatys, Engine.DREAM: dream}.get(c.engine, f"{gatys} {dream}")

    def _advance(self, count: int) -> None:
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetExhausted(self.config.max_seconds or 0.0)  # drops the rest of the current batch
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
        self._check_failures()

    def _check_failures(self) -> None:
        if self.max_failures is not None and len(self.failures) > self.max_failures:
            raise TooManyFailures(
                f"{len(self.failures)} rows failed, more than --max-failures {self.config.max_failures} allows"
            )

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_EVERY_S:
            self._write_outputs()
            self.last_checkpoint = time.monotonic()

    def record_failures(self, failures: Iterable[Failure]) -> None:
        """A part with failures only (no model, no images): rows that failed before any work."""
        self.failures += list(failures)
        self._write_outputs()
        self._write_part_json("finished")
        if self._journal is not None:  # the part manifest now holds every row
            self._journal.close()
            self._part(JOURNAL).unlink(missing_ok=True)

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
            "plan_hash": self.config.plan_hash(),
            "inputs_root": str(self.prepared.inputs.root),  # relative sources are relative to it
            "engine": self._engine_name(),
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
