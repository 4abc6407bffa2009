"""One driver per engine: each takes a part's task groups, decoded, and hands every task's
outcome, a finished image (``Made``) or a failed one (``Failed``), to ``emit`` the moment it is
known (a copied original at once, not when the next stylized image finishes). The runner's
``emit`` records them; a driver writes nothing and knows no file but the style images it reads
its targets from.

- ``CopyDriver``: originals only, re-encoded at the output size; no network.
- ``GatysDriver``: style transfer through ``GatysBatcher`` (continuous batching), with the
  fp32 redo of images whose loss overflowed in half precision, and Deep Dream on top for
  ``--engine gatys+dream``.
- ``DreamDriver``: Deep Dream through ``DreamBatcher``, and the dream stage of ``gatys+dream``
  (``dream_on``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from ..config import RunConfig
from ..engines.dream import DreamBatcher, DreamJob, dream, guide_features, octave_sizes
from ..engines.gatys import GatysBatcher, Job, Result
from ..engines.memory import CPU_BATCH, auto_batch_size, bytes_per_image, measured_bytes
from ..engines.precision import HALF_DTYPES, Precision, use_channels_last
from ..engines.transfer import Finish, GramCache, Grams, StyleGrams, make_job, stage_targets
from ..errors import ConfigError
from ..io.images import ImageProblem, fit_long_side, load_rgb, resize_long_side, to_tensor
from ..io.sources import SourceRow
from ..io.styles import Style
from ..io.weights import ResolvedWeights, build_dream_net, build_vgg19
from .plan import Task

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Made:
    """A finished image and what its manifest row needs."""

    task: Task
    image: torch.Tensor  # [1, 3, H, W] in [0, 1], finished (colour, alpha)
    precision: Precision
    losses: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    seconds: float = 0.0
    dream_objective: float | None = None


@dataclass
class Failed:
    source: SourceRow
    reason: str  # failures.csv's reason column
    message: str


Outcome = Made | Failed
Decoded = Iterator[tuple[list[Task], list[torch.Tensor]]]  # a group and its source, one tensor per scale
DecodeFn = Callable[[Iterable[list[Task]]], Decoded]
EmitFn = Callable[[Outcome], None]


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N; a GPU that this machine does not have is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            have = f"{count} GPU(s)" if count else "no GPU"
            raise ConfigError(f"device {name}: this machine has {have} (use --device cpu or auto)")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def group_by_source(tasks: Iterable[Task]) -> list[list[Task]]:
    groups: dict[SourceRow, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.source, []).append(task)
    return list(groups.values())


def dream_failure(task: Task, image: torch.Tensor, objective: float) -> Failed | None:
    """A dream whose image or objective is not finite is a failed row, never NaN pixels
    written as black (uint8 has no NaN)."""
    if math.isfinite(objective) and bool(torch.isfinite(image).all()):
        return None
    return Failed(task.source, "non_finite", f"{task.output}: the dream became {objective}")


def copy_of(task: Task, content: torch.Tensor) -> Made:
    """An original, re-encoded at the output size: no network involved."""
    return Made(task, content.cpu(), Precision.FP32)


def _finish(config: RunConfig, task: Task) -> Finish:
    return Finish(preserve_color=config.preserve_color, alpha=task.alpha)


def _largest_image(config: RunConfig) -> tuple[int, int]:
    """(height, width) of the largest output --size allows (a square): what a batch is sized for."""
    w, h = fit_long_side(config.size, config.size, config.size)
    return h, w


class CopyDriver:
    """A part with only originals to copy (rows of splits that are not stylized)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, groups: Iterable[list[Task]], decode: DecodeFn, emit: EmitFn) -> None:
        t0 = time.perf_counter()
        for group, decoded in decode(groups):
            for task in group:
                emit(copy_of(task, decoded[-1]))
        self.timings["compute_s"] = time.perf_counter() - t0


class DreamDriver:
    """Deep Dream variants; also the dream stage of --engine gatys+dream (``dream_on``)."""

    def __init__(self, config: RunConfig, device: torch.device, precision: Precision, weights: ResolvedWeights) -> None:
        self.config, self.device, self.precision = config, device, precision
        self.options = config.dream_options()
        self.dtype = HALF_DTYPES.get(precision, torch.float32)
        self.net = build_dream_net(weights, self.options.layers, device=device).to(self.dtype)
        self.batch_size = config.batch_size or self._auto_batch_size()
        self.timings: dict[str, float] = {}
        self._guides: dict[str, dict[str, torch.Tensor] | ImageProblem] = {}
        self._octave_note: set[tuple[int, int]] = set()
        log.info("dream network %s on %s, %s", weights.identity, describe_device(device), precision.value)

    def guide(self, style: Style) -> dict[str, torch.Tensor] | ImageProblem:
        """A guide image's activations (guided dream), once per style."""
        if style.name not in self._guides:
            try:
                image = load_rgb(style.path, max_pixels=self.config.max_pixels)
                tensor = to_tensor(resize_long_side(image, self.config.size)).to(self.device)
                self._guides[style.name] = guide_features(self.net, tensor, self.config.dream_layers, self.dtype)
            except ImageProblem as err:
                self._guides[style.name] = err
        return self._guides[style.name]

    def note_octaves(self, height: int, width: int) -> None:
        """Logs once per size when octaves had to be dropped for a small image."""
        octaves = len(octave_sizes(height, width, self.options))
        if octaves < self.options.octaves and (height, width) not in self._octave_note:
            self._octave_note.add((height, width))
            log.info("%dx%d is too small for %d octaves at scale %s: using %d",
                     width, height, self.options.octaves, self.options.octave_scale, octaves)  # fmt: skip

    def _auto_batch_size(self) -> int:
        """On a GPU, as many images as fit, from the memory one dream step on one full-size image
        was measured to take; on a CPU, CPU_BATCH."""
        if self.device.type != "cuda":
            return CPU_BATCH
        image = torch.rand(1, 3, *_largest_image(self.config), device=self.device)
        one_step = dataclasses.replace(self.options, octaves=1, iterations=1)
        per_image = measured_bytes(lambda: dream(self.net, image, one_step, seeds=[0], dtype=self.dtype), self.device)
        free, _ = torch.cuda.mem_get_info(self.device)
        size = auto_batch_size(free, per_image)
        log.info("dream batch size %d (%.0f MB free, %.0f MB per image measured)", size, free / 1e6, per_image / 1e6)
        return size

    def dream_on(
        self, stylized: Iterable[tuple[Task, torch.Tensor, T]]
    ) -> Iterator[tuple[Task, torch.Tensor, T, float]]:
        """Dream on top of stylized images (--engine gatys+dream), batched like --engine dream:
        ``(task, image, extra)`` in, ``(task, dreamed image, extra, objective)`` out."""
        batcher = self._batcher()
        jobs = (DreamJob((task, extra), image, task.seed, self._guides_of(task)) for task, image, extra in stylized)
        for result in batcher.run(jobs):
            task, extra = result.key  # type: ignore[misc]
            self.note_octaves(*result.image.shape[-2:])
            yield task, result.image, extra, result.objective

    def _batcher(self) -> DreamBatcher:
        return DreamBatcher(self.net, self.options, batch_size=self.batch_size, device=self.device, dtype=self.dtype)

    def _guides_of(self, task: Task) -> dict[str, torch.Tensor] | None:
        if not self.config.guide:
            return None
        guide = self.guide(task.style)
        if isinstance(guide, ImageProblem):  # the style decoded for gatys; cannot happen twice
            raise guide
        return guide

    def run(self, groups: Iterable[list[Task]], decode: DecodeFn, emit: EmitFn) -> None:
        """Batches of equal-size images, every image the same steps (no continuous batching)."""
        t0 = time.perf_counter()
        batcher = self._batcher()
        contents: dict[Task, torch.Tensor] = {}
        for result in batcher.run(self._jobs(groups, decode, emit, contents)):
            task: Task = result.key  # type: ignore[assignment]
            self.note_octaves(*result.image.shape[-2:])
            content = contents.pop(task)
            failure = dream_failure(task, result.image, result.objective)
            if failure is not None:
                emit(failure)
                continue
            image = _finish(self.config, task).apply(result.image, content)
            emit(Made(task, image, self.precision, iterations=result.steps, seconds=result.seconds,
                      dream_objective=result.objective))  # fmt: skip
        self.timings.update(compute_s=time.perf_counter() - t0, batch_size=self.batch_size)

    def _jobs(
        self, groups: Iterable[list[Task]], decode: DecodeFn, emit: EmitFn, contents: dict[Task, torch.Tensor]
    ) -> Iterator[DreamJob]:
        for group, decoded in decode(groups):
            content = decoded[-1]
            for task in group:
                if task.original:
                    emit(copy_of(task, content))
                    continue
                guides = self.guide(task.style) if self.config.guide else None
                if isinstance(guides, ImageProblem):
                    emit(Failed(task.source, "bad_style", f"style {task.style.name}: {guides}"))
                    continue
                contents[task] = content
                yield DreamJob(task, content, task.seed, guides)


GRAM_BUDGET_GPU = 1 << 30  # ~430 (style, size) Gram targets; --no-upscale makes one per size
GRAM_BUDGET_CPU = 256 << 20


class GatysDriver:
    """Style transfer; with ``dreamer``, Deep Dream on top of each stylized image."""

    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        precision: Precision,
        weights: ResolvedWeights,
        *,
        dreamer: DreamDriver | None = None,
        after_iteration: Callable[[int], None] = lambda images: None,
    ) -> None:
        t0 = time.perf_counter()
        self.after_iteration = after_iteration
        self.config, self.device, self.precision, self.dreamer = config, device, precision, dreamer
        self.options = config.gatys_options()
        self.channels_last = use_channels_last(device, precision)
        self.net = build_vgg19(weights, self.options.layers, pooling=config.pooling, device=device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.timings: dict[str, float] = {"model_build_s": time.perf_counter() - t0}
        # Style Gram targets kept on the device (GramCache): out of the memory batches get.
        self.gram_budget = GRAM_BUDGET_GPU if device.type == "cuda" else GRAM_BUDGET_CPU
        log.info("weights %s (%s) on %s, %s",
                 weights.identity, weights.flavour.value, describe_device(device), precision.value)  # fmt: skip
        self.batch_size = self._batch_size()

    def _batch_size(self) -> int:
        if self.config.batch_size:
            return self._fitting(self.config.batch_size)
        if self.device.type != "cuda":
            return CPU_BATCH
        free, _ = torch.cuda.mem_get_info(self.device)
        free = max(0, free - self.gram_budget)
        per_image = self._bytes_per_image()
        size = auto_batch_size(free, per_image)
        log.info("batch size %d (%.0f MB free, about %.0f MB per image)", size, free / 1e6, per_image / 1e6)
        return size

    def _fitting(self, requested: int) -> int:
        """--batch-size, or as many images as the CPU's free memory holds if that is fewer (the
        batch's buffers are allocated up front: 100000 would ask for far more than there is)."""
        if self.device.type != "cpu" or not hasattr(os, "sysconf"):
            return requested
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        per_image = self._bytes_per_image()
        fits = max(1, int(max(0, free - self.gram_budget) * 0.7) // per_image)
        if requested > fits:
            log.warning("--batch-size %d would need %.0f GB; using %d (what %.0f GB of free memory holds)",
                        requested, requested * per_image / 1e9, fits, free / 1e9)  # fmt: skip
        return min(requested, fits)

    def _bytes_per_image(self) -> int:
        """Memory one image of the largest size takes while it is optimised (estimated)."""
        half = self.precision in (Precision.BF16, Precision.FP16)
        h, w = _largest_image(self.config)
        o = self.options
        return bytes_per_image(self.net, h, w, history_size=o.history_size, half=half,
                               style_layers=o.style_layers, content_layer=o.content_layer)  # fmt: skip

    def run(self, groups: Iterable[list[Task]], decode: DecodeFn, emit: EmitFn) -> None:
        t0 = time.perf_counter()
        batchers = [self._batcher(self.precision)]
        retry = self._pass(batchers[0], groups, decode, emit)
        if retry:  # mixed precision overflowed for these: redo them in fp32
            log.warning("%d images had a non-finite loss in %s; redoing them in fp32", len(retry), self.precision.value)
            batchers.append(self._batcher(Precision.FP32, allow_tf32=False))  # full fp32, Grams too
            self._pass(batchers[-1], group_by_source(retry), decode, emit)
        self.timings.update(
            compute_s=time.perf_counter() - t0, batch_size=self.batch_size,
            oom_backoffs=sum(b.oom_events for b in batchers),
            # Summed over parts by the merge into run.json's batch_fill.
            image_steps=sum(b.image_steps for b in batchers), slot_steps=sum(b.slot_steps for b in batchers),
        )  # fmt: skip
        if self.device.type == "cuda":
            self.timings["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 1e6

    def _batcher(self, precision: Precision, *, allow_tf32: bool = True) -> GatysBatcher:
        return GatysBatcher(
            self.net, self.options, batch_size=self.batch_size, precision=precision, channels_last=self.channels_last,
            after_iteration=self.after_iteration, allow_tf32=allow_tf32,
        )  # fmt: skip

    def _pass(self, batcher: GatysBatcher, groups: Iterable[list[Task]], decode: DecodeFn, emit: EmitFn) -> list[Task]:
        """Every task through ``batcher``; returns those whose loss went non-finite in half
        precision (in fp32 they fail)."""
        contents: dict[Task, torch.Tensor] = {}  # sources kept for --preserve-color / --alpha
        grams = GramCache(self.gram_budget)  # per pass: this precision's
        retry: list[Task] = []

        def stylized() -> Iterator[tuple[Task, torch.Tensor, Result]]:
            for result in batcher.run(self._jobs(batcher, groups, decode, emit, contents, grams)):
                task: Task = result.key
                if math.isfinite(result.losses["total"]):
                    yield task, result.image, result
                    continue
                self.after_iteration(-result.iterations)  # its steps made no image: out of the progress
                if batcher.precision is not Precision.FP32:
                    retry.append(task)
                else:
                    emit(Failed(task.source, "non_finite", f"{task.output}: the loss became {result.losses['total']}"))

        made: Iterable[tuple[Task, torch.Tensor, Result, float | None]]
        if self.dreamer is None:
            made = ((task, image, result, None) for task, image, result in stylized())
        else:
            made = self.dreamer.dream_on(stylized())
        for task, image, result, objective in made:
            failure = None if objective is None else dream_failure(task, image, objective)
            if failure is not None:
                contents.pop(task, None)
                emit(failure)
                continue
            if task in contents:
                image = _finish(self.config, task).apply(image, contents.pop(task))
            emit(Made(task, image, batcher.precision, result.losses, result.iterations, result.seconds, objective))
        return retry

    def _jobs(
        self,
        batcher: GatysBatcher,
        groups: Iterable[list[Task]],
        decode: DecodeFn,
        emit: EmitFn,
        contents: dict[Task, torch.Tensor],
        grams: GramCache,
    ) -> Iterator[Job]:
        """Jobs in group order; the source is decoded ahead while the device computes."""
        iterations = self.config.stage_iterations
        for group, decoded in decode(groups):
            scales = [c.to(self.device) for c in decoded]  # one per scale, full size last
            sizes = [max(c.shape[-2:]) for c in scales]  # --size, or less with --no-upscale
            features = [batcher.content_features(c) for c in scales]  # once per image, shared by its styles
            for task in group:
                if task.original:
                    emit(copy_of(task, scales[-1]))
                    continue
                targets = [self._targets(batcher, grams, task, size, c) for size, c in zip(sizes, scales)]
                problem = next((t for t in targets if isinstance(t, ImageProblem)), None)
                if problem is not None:
                    emit(Failed(task.source, "bad_style", f"style {task.style_name}: {problem}"))
                    continue
                if _finish(self.config, task).needs_content:
                    contents[task] = scales[-1]
                options = self.config.gatys_options(**task.loss_overrides)
                yield make_job(task, scales, targets, features, iterations, options, task.seed)  # type: ignore[arg-type]

    def _targets(
        self,
        batcher: GatysBatcher,
        grams: GramCache,
        task: Task,
        size: int,
        content: torch.Tensor,
    ) -> Grams | ImageProblem:
        """Gram targets of the task's style (or blend of two) for a content image of this size;
        each style's once per size and pass. The style image is --style-scale times the
        content's long side."""
        found = []
        for style in (task.style, task.style2):
            if style is None:
                continue
            if (style.name, size) not in grams:
                try:
                    image = load_rgb(style.path, max_pixels=self.config.max_pixels)
                    image = resize_long_side(image, self.config.style_size(size))
                    grams[style.name, size] = StyleGrams(
                        batcher.style_targets(to_tensor(image)), (image.height, image.width)
                    )
                except ImageProblem as err:
                    grams[style.name, size] = err
            found.append(grams[style.name, size])  # kept to the end of this task, even if evicted next
        problem = next((s for s in found if isinstance(s, ImageProblem)), None)
        return problem or stage_targets(found, content, task.mix)  # type: ignore[arg-type]
