"""One driver per engine: each takes a part's task groups and yields every task's outcome, a
finished image (``Made``) or a failed one (``Failed``), with the engine's ``Steps`` between
them; the part (part.py) records and counts what comes out. A driver writes nothing and reads
no file but the style images it makes its targets from.

- ``CopyDriver``: originals only, re-encoded at the output size; no network.
- ``GatysDriver``: style transfer through ``GatysBatcher`` (continuous batching), with the
  fp32 redo of images whose loss overflowed in half precision, and Deep Dream on top for
  ``--engine gatys+dream``.
- ``DreamDriver``: Deep Dream through ``DreamBatcher``, and the dream stage of ``gatys+dream``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ..config import RunConfig
from ..engines.batcher import GatysBatcher
from ..engines.dream import DreamBatcher, DreamJob, DreamResult, dream, guide_features, octave_sizes
from ..engines.jobs import Job, Result, Steps
from ..engines.memory import CPU_BATCH, auto_batch_size, bytes_per_image, measured_bytes
from ..engines.precision import HALF_DTYPES, Precision, use_channels_last
from ..engines.transfer import Finish, GramCache, Grams, StyleGrams, make_job, stage_targets
from ..io.images import ImageProblem, fit_long_side, load_rgb, resize_long_side, to_tensor
from ..io.sources import SourceRow
from ..io.styles import Style
from ..io.weights import ResolvedWeights
from .decode import Decoded, Decoder
from .devices import describe_device
from .networks import build_dream_net, build_vgg19
from .options import dream_options, gatys_options, stage_iterations
from .plan import Task

log = logging.getLogger(__name__)


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

    @property
    def tasks(self) -> int:  # tasks this outcome finishes
        return 1

    @property
    def steps(self) -> int:  # the steps it made, now counted in a finished image
        return self.iterations


@dataclass
class Failed:
    source: SourceRow
    reason: str  # failures.csv's reason column
    message: str
    tasks: int = 1  # tasks this outcome ends (an undecodable source: all of its group)
    steps: int = 0


Outcome = Made | Failed | Steps


def dream_failure(task: Task, image: torch.Tensor, objective: float) -> Failed | None:
    """A dream whose image or objective is not finite is a failed row, never NaN pixels
    written as black (uint8 has no NaN)."""
    if math.isfinite(objective) and bool(torch.isfinite(image).all()):
        return None
    return Failed(task.source, "non_finite", f"{task.output}: the dream became {objective}")


def copy_of(task: Task, content: torch.Tensor) -> Made:
    """An original, re-encoded at the output size: no network involved."""
    return Made(task, content.cpu(), Precision.FP32)


def undecodable(group: list[Task], problem: ImageProblem) -> Failed:
    return Failed(group[0].source, problem.reason, str(problem), tasks=len(group))


def group_by_source(tasks: Iterable[Task]) -> list[list[Task]]:
    groups: dict[SourceRow, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.source, []).append(task)
    return list(groups.values())


def _finish(config: RunConfig, task: Task) -> Finish:
    return Finish(preserve_color=config.preserve_color, alpha=task.alpha)


def _largest_image(config: RunConfig) -> tuple[int, int]:
    """(height, width) of the largest output --size allows (a square): what a batch is sized for."""
    w, h = fit_long_side(config.size, config.size, config.size)
    return h, w


class CopyDriver:
    """A part with only originals to copy (rows of splits that are not stylized)."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.timings: dict[str, float] = {}

    def run(self, groups: Iterable[list[Task]]) -> Iterator[Outcome]:
        t0 = time.perf_counter()
        for group, decoded in self.decoder(groups):
            if isinstance(decoded, ImageProblem):
                yield undecodable(group, decoded)
                continue
            for task in group:
                yield copy_of(task, decoded[-1])
        self.timings["compute_s"] = time.perf_counter() - t0


class DreamDriver:
    """Deep Dream variants; also the dream stage of --engine gatys+dream (``add``, ``flush``)."""

    def __init__(
        self, config: RunConfig, device: torch.device, precision: Precision, weights: ResolvedWeights, decoder: Decoder
    ) -> None:
        self.config, self.device, self.precision, self.decoder = config, device, precision, decoder
        self.options = dream_options(config)
        self.dtype = HALF_DTYPES.get(precision, torch.float32)
        self.net = build_dream_net(weights, self.options.layers, device=device).to(self.dtype)
        self.batch_size = config.batch_size or self._auto_batch_size()
        self.timings: dict[str, float] = {}
        self._guides: dict[str, dict[str, torch.Tensor] | ImageProblem] = {}
        self._octave_note: set[tuple[int, int]] = set()
        self.batcher = DreamBatcher(
            self.net, self.options, batch_size=self.batch_size, device=self.device, dtype=self.dtype
        )
        log.info("dream network %s on %s, %s", weights.identity, describe_device(device), precision.value)

    def run(self, groups: Iterable[list[Task]]) -> Iterator[Outcome]:
        """Batches of equal-size images, every image the same steps (no continuous batching)."""
        t0 = time.perf_counter()
        contents: dict[Task, torch.Tensor] = {}
        for group, decoded in self.decoder(groups):
            if isinstance(decoded, ImageProblem):
                yield undecodable(group, decoded)
                continue
            for task in group:
                guides = self.guide(task.style) if self.config.guide and not task.original else None
                if task.original:
                    yield copy_of(task, decoded[-1])
                elif isinstance(guides, ImageProblem):
                    yield Failed(task.source, "bad_style", f"style {task.style.name}: {guides}")
                else:
                    contents[task] = decoded[-1]
                    yield from self._finished(
                        self.batcher.add(DreamJob(task, decoded[-1], task.seed, guides)), contents
                    )
        yield from self._finished(self.batcher.flush(), contents)
        self.timings.update(compute_s=time.perf_counter() - t0, batch_size=self.batch_size)

    def _finished(self, results: list[DreamResult], contents: dict[Task, torch.Tensor]) -> Iterator[Outcome]:
        for result in results:
            task: Task = result.key  # type: ignore[assignment]
            self.note_octaves(*result.image.shape[-2:])
            content = contents.pop(task)
            failure = dream_failure(task, result.image, result.objective)
            if failure is not None:
                yield failure
                continue
            image = _finish(self.config, task).apply(result.image, content)
            yield Made(task, image, self.precision, iterations=result.steps, seconds=result.seconds,
                       dream_objective=result.objective)  # fmt: skip

    def dream_job(self, task: Task, image: torch.Tensor, stylized: object) -> DreamJob:
        """The dream stage of a stylized image (--engine gatys+dream); ``stylized`` comes back
        with the dream's result (in its key)."""
        return DreamJob((task, stylized), image, task.seed, self._guides_of(task))

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

    def _guides_of(self, task: Task) -> dict[str, torch.Tensor] | None:
        if not self.config.guide:
            return None
        guide = self.guide(task.style)
        if isinstance(guide, ImageProblem):  # the style decoded for gatys; cannot happen twice
            raise guide
        return guide


GRAM_BUDGET_GPU = 1 << 30  # ~430 (style, size) Gram targets; --no-upscale makes one per size
GRAM_BUDGET_CPU = 256 << 20


@dataclass
class _Pass:
    """One pass of a part's tasks through one batcher (one precision)."""

    batcher: GatysBatcher
    grams: GramCache  # this precision's style targets
    contents: dict[Task, torch.Tensor] = field(default_factory=dict)  # for --preserve-color / --alpha
    ready: deque[Outcome] = field(default_factory=deque)  # copies and failures found while making jobs
    retry: list[Task] = field(default_factory=list)  # non-finite in half precision: redo in fp32


class GatysDriver:
    """Style transfer; with ``dreamer``, Deep Dream on top of each stylized image."""

    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        precision: Precision,
        weights: ResolvedWeights,
        decoder: Decoder,
        *,
        dreamer: DreamDriver | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.config, self.device, self.precision, self.dreamer = config, device, precision, dreamer
        self.decoder = decoder
        self.options = gatys_options(config)
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

    def run(self, groups: Iterable[list[Task]]) -> Iterator[Outcome]:
        t0 = time.perf_counter()
        passes = [_Pass(self._batcher(self.precision), GramCache(self.gram_budget))]
        yield from self._pass(passes[0], self.decoder(groups))
        if passes[0].retry:  # mixed precision overflowed for these: redo them in fp32
            retry = passes[0].retry
            log.warning("%d images had a non-finite loss in %s; redoing them in fp32", len(retry), self.precision.value)
            passes.append(_Pass(self._batcher(Precision.FP32, allow_tf32=False), GramCache(self.gram_budget)))
            yield from self._pass(passes[-1], self.decoder(group_by_source(retry)))  # full fp32, Grams too
        batchers = [p.batcher for p in passes]
        self.timings.update(
            compute_s=time.perf_counter() - t0, batch_size=self.batch_size,
            oom_backoffs=sum(b.oom_events for b in batchers),
            # Summed over parts by the merge into run.json's batch_fill.
            image_steps=sum(b.image_steps for b in batchers), slot_steps=sum(b.slot_steps for b in batchers),
        )  # fmt: skip
        if self.device.type == "cuda":
            self.timings["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 1e6

    def _batcher(self, precision: Precision, *, allow_tf32: bool = True) -> GatysBatcher:
        return GatysBatcher(self.net, self.options, batch_size=self.batch_size, precision=precision,
                            channels_last=self.channels_last, allow_tf32=allow_tf32)  # fmt: skip

    def _pass(self, run: _Pass, decoded: Decoded) -> Iterator[Outcome]:
        """Every task through ``run.batcher``: what it yields, with the copies and failures
        found while its jobs were made handed out at the next event."""
        for event in run.batcher.events(self._jobs(run, decoded)):
            while run.ready:
                yield run.ready.popleft()
            if isinstance(event, Steps):
                yield event
            elif not math.isfinite(event.losses["total"]):
                yield Steps(-event.iterations)  # its steps made no image: out of the progress
                task: Task = event.key
                if run.batcher.precision is not Precision.FP32:
                    run.retry.append(task)
                else:
                    yield Failed(task.source, "non_finite", f"{task.output}: the loss became {event.losses['total']}")
            elif self.dreamer is None:
                yield self._made(run, event.key, event.image, event, None)
            else:
                yield from self._dreamed(
                    run, self.dreamer.batcher.add(self.dreamer.dream_job(event.key, event.image, event))
                )
        while run.ready:
            yield run.ready.popleft()
        if self.dreamer is not None:
            yield from self._dreamed(run, self.dreamer.batcher.flush())

    def _dreamed(self, run: _Pass, results: list[DreamResult]) -> Iterator[Outcome]:
        assert self.dreamer is not None
        for result in results:
            task, stylized = result.key  # type: ignore[misc]
            self.dreamer.note_octaves(*result.image.shape[-2:])
            failure = dream_failure(task, result.image, result.objective)
            if failure is not None:
                run.contents.pop(task, None)
                yield failure
            else:
                yield self._made(run, task, result.image, stylized, result.objective)

    def _made(self, run: _Pass, task: Task, image: torch.Tensor, result: Result, objective: float | None) -> Made:
        if task in run.contents:
            image = _finish(self.config, task).apply(image, run.contents.pop(task))
        return Made(task, image, run.batcher.precision, result.losses, result.iterations, result.seconds, objective)

    def _jobs(self, run: _Pass, decoded: Decoded) -> Iterator[Job | None]:
        """Jobs in group order, the sources decoded ahead while the device computes. Copies and
        failures go to ``run.ready``, and a None hands control back so they go out now."""
        iterations = stage_iterations(self.config)
        for group, found in decoded:
            if isinstance(found, ImageProblem):
                run.ready.append(undecodable(group, found))
                yield None
                continue
            scales = [c.to(self.device) for c in found]  # one per scale, full size last
            sizes = [max(c.shape[-2:]) for c in scales]  # --size, or less with --no-upscale
            features = [run.batcher.content_features(c) for c in scales]  # once per image, shared by its styles
            for task in group:
                if task.original:
                    run.ready.append(copy_of(task, scales[-1]))
                    yield None
                    continue
                targets = [self._targets(run, task, size, c) for size, c in zip(sizes, scales)]
                problem = next((t for t in targets if isinstance(t, ImageProblem)), None)
                if problem is not None:
                    run.ready.append(Failed(task.source, "bad_style", f"style {task.style_name}: {problem}"))
                    yield None
                    continue
                if _finish(self.config, task).needs_content:
                    run.contents[task] = scales[-1]
                options = gatys_options(self.config, **task.loss_overrides)
                yield make_job(task, scales, targets, features, iterations, options, task.seed)  # type: ignore[arg-type]

    def _targets(self, run: _Pass, task: Task, size: int, content: torch.Tensor) -> Grams | ImageProblem:
        """Gram targets of the task's style (or blend of two) for a content image of this size;
        each style's once per size and pass. The style image is --style-scale times the
        content's long side."""
        found, grams = [], run.grams
        for style in (task.style, task.style2):
            if style is None:
                continue
            if (style.name, size) not in grams:
                try:
                    image = load_rgb(style.path, max_pixels=self.config.max_pixels)
                    image = resize_long_side(image, self.config.style_size(size))
                    grams[style.name, size] = StyleGrams(
                        run.batcher.style_targets(to_tensor(image)), (image.height, image.width)
                    )
                except ImageProblem as err:
                    grams[style.name, size] = err
            found.append(grams[style.name, size])  # kept to the end of this task, even if evicted next
        problem = next((s for s in found if isinstance(s, ImageProblem)), None)
        return problem or stage_targets(found, content, task.mix)  # type: ignore[arg-type]


Driver = CopyDriver | DreamDriver | GatysDriver
