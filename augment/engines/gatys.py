"""Gatys et al. style transfer as described in the paper: optimise the pixels of a
generated image so its VGG19 features match the content image's (one layer) and its Gram
matrices match the style image's (several layers), with a total-variation regulariser.

Images are float tensors ``[B, 3, H, W]``, RGB in [0, 1]; the network normalises them itself.
``GatysBatcher`` optimises many images at once, each with its own optimiser state and stop,
admitting waiting images as others finish (continuous batching).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from .losses import content_loss, gram, style_loss, total_variation, unit_l1_gradient
from .memory import next_batch_size
from .optim import BatchAdam, BatchLBFGS
from .precision import HALF_DTYPES, Precision, tf32
from .vgg import Flavour, VGG19Features, check_layers
from .weighting import DEFAULT_STYLE_LAYERS, default_layer_weights, loss_defaults


class Optimizer(str, Enum):
    LBFGS = "lbfgs"
    ADAM = "adam"


class Init(str, Enum):
    CONTENT = "content"
    NOISE = "noise"


PATIENCE = 3  # early stop after this many iterations in a row under --tol
LOSS_SCALE_INIT, LOSS_SCALE_MAX, LOSS_SCALE_GROWTH_STEPS = 2.0**16, 2.0**24, 1000
# A step that leaves an image's loss this many times above its best so far is a spike (L-BFGS
# without line search on a non-smooth or clamped problem): back to the best image, fresh history.
RESTART_FACTOR = 1.5


@dataclass(frozen=True)
class GatysOptions:
    """Loss weights, layers and optimiser settings. Defaults: see docs/method.md.

    The loss weights (α, β, λ_TV, TV exponent, λ_l) may differ between the images of a batch
    (per-style overrides); the other fields must be the same for a whole batch. A weight left
    as None takes the weights flavour's default (weighting.py) when the engine runs.
    """

    iterations: int = 300
    content_weight: float | None = None  # α
    style_weight: float | None = None  # β
    tv_weight: float | None = None  # λ_TV
    tv_beta: float = 1.0  # exponent inside the TV sum (1: the Lua neural-style's smooth TV)
    content_layer: str = "conv4_2"
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    # λ_l per style layer; None: ∝ 1/C_l² summing to 1 (equal with normalize_gradients).
    style_layer_weights: tuple[float, ...] | None = None
    # neural-style's -normalize_gradients: each loss term's gradient scaled to unit L1 norm at
    # its layer (times its weight), so the balance does not depend on the activations' scale.
    normalize_gradients: bool = False
    optimizer: Optimizer = Optimizer.LBFGS
    learning_rate: float | None = None  # None: 1.0 for L-BFGS, 0.02 for Adam
    history_size: int = 100
    init: Init = Init.CONTENT
    tol: float = 0.0  # stop when the relative loss change stays below this (0: never)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", Optimizer(self.optimizer))
        object.__setattr__(self, "init", Init(self.init))
        object.__setattr__(self, "style_layers", tuple(self.style_layers))
        check_layers([self.content_layer, *self.style_layers])
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError("learning_rate must be > 0")
        if not self.tv_beta > 0:
            raise ValueError("tv_beta must be > 0 (at 0 the TV term is a constant)")
        weights = (self.content_weight, self.style_weight, self.tv_weight, *(self.style_layer_weights or ()))
        if any(w is not None and not w >= 0 for w in weights):
            raise ValueError("loss weights must be >= 0")
        if self.style_layer_weights is not None:
            weights = tuple(float(w) for w in self.style_layer_weights)
            if len(weights) != len(self.style_layers):
                raise ValueError("style_layer_weights needs one weight per style layer")
            object.__setattr__(self, "style_layer_weights", weights)

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer a loss reads; the network is truncated after the deepest."""
        return tuple(dict.fromkeys([self.content_layer, *self.style_layers]))

    @property
    def layer_weights(self) -> dict[str, float]:
        weights = self.style_layer_weights or default_layer_weights(self.style_layers, self.normalize_gradients)
        return dict(zip(self.style_layers, weights))

    @property
    def step_size(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1.0 if self.optimizer is Optimizer.LBFGS else 0.02

    def resolved(self, flavour: Flavour | str) -> GatysOptions:
        """These options with every weight left as None set to ``flavour``'s default."""
        defaults = loss_defaults(flavour, self.normalize_gradients)
        return dataclasses.replace(
            self,
            content_weight=defaults.content_weight if self.content_weight is None else self.content_weight,
            style_weight=defaults.style_weight if self.style_weight is None else self.style_weight,
            tv_weight=defaults.tv_weight if self.tv_weight is None else self.tv_weight,
            style_layer_weights=tuple(self.layer_weights.values()),
        )


@dataclass
class Stage:
    """One resolution of a coarse-to-fine run: its content, style targets and iterations."""

    content: torch.Tensor  # [1, 3, h, w]
    grams: dict[str, torch.Tensor]
    iterations: int
    content_features: torch.Tensor | None = None


@dataclass
class Job:
    """One image to stylize. ``key`` is the caller's, handed back untouched.

    ``coarse`` stages (lowest resolution first) run before the full-size one; each starts from
    the previous stage's result, upsampled.
    """

    key: Any
    content: torch.Tensor  # [1, 3, H, W] in [0, 1], on the engine's device
    grams: dict[str, torch.Tensor]  # style targets, [1, C, C] per style layer
    options: GatysOptions  # only the loss weights may differ from the batcher's options
    seed: int = 0
    # From GatysBatcher.content_features; share it between the styles of one image.
    content_features: torch.Tensor | None = None
    coarse: list[Stage] = field(default_factory=list)

    @property
    def stages(self) -> list[Stage]:
        final = Stage(self.content, self.grams, self.options.iterations, self.content_features)
        return [*self.coarse, final]


def scale_iterations(iterations: int, scales: int) -> list[int]:
    """Split ``iterations`` over coarse-to-fine scales: the full size gets a quarter (at least
    one), the lower scales share the rest evenly (the lowest takes any remainder)."""
    if scales <= 1:
        return [iterations]
    final = max(1, iterations // 4) if iterations else 0
    rest = iterations - final
    share, extra = divmod(rest, scales - 1)
    return [share + extra] + [share] * (scales - 2) + [final]


@dataclass
class _Work:
    """A job at one of its stages, waiting for a slot."""

    job: Job
    stage: int = 0
    init: torch.Tensor | None = None  # start image; None: content (or noise)
    steps_before: int = 0
    seconds_before: float = 0.0
    trace_before: list[float] = field(default_factory=list)
    restarts_before: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        content = self.job.stages[self.stage].content
        return int(content.shape[-2]), int(content.shape[-1])


@dataclass
class Result:
    key: Any
    image: torch.Tensor  # [1, 3, H, W] in [0, 1], on the CPU
    losses: dict[str, float] = field(default_factory=dict)  # content, style, tv, total
    iterations: int = 0  # optimiser steps taken
    seconds: float = 0.0  # wall time while in a batch, divided by the batch's occupancy
    trace: list[float] = field(default_factory=list)  # total loss at every evaluation, all stages
    restarts: int = 0  # spikes undone (back to the best image, fresh optimiser history)


def style_targets(net: VGG19Features, style: torch.Tensor, options: GatysOptions) -> dict[str, torch.Tensor]:
    """Gram matrices of a style image ``[1, 3, H, W]`` in fp32: compute once, reuse for every image."""
    return GatysBatcher(net, options, batch_size=1).style_targets(style)


def content_target(net: VGG19Features, content: torch.Tensor, options: GatysOptions) -> torch.Tensor:
    """The content target of an image ``[1, 3, H, W]`` in fp32."""
    return GatysBatcher(net, options, batch_size=1).content_features(content)


LOSS_WEIGHTS = ("content_weight", "style_weight", "tv_weight", "tv_beta")


def loss_weights(options: GatysOptions, batch: int = 1) -> dict[str, torch.Tensor]:
    """Per-image weights ``[B]`` (and λ_l as ``[B, L]``) of resolved options."""
    weights = {name: torch.full((batch,), float(getattr(options, name))) for name in LOSS_WEIGHTS}
    weights["layer_weights"] = torch.tensor([list(options.layer_weights.values())] * batch)
    return weights


def loss_terms(
    feats: dict[str, torch.Tensor],
    image: torch.Tensor,
    content_features: torch.Tensor,
    grams: dict[str, torch.Tensor],
    options: GatysOptions,
    weights: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """J(G) = α·J_content + β·Σ_l λ_l·J_style^l + λ_TV·TV, each term per image ``[B]`` in fp32,
    from the generated image's features; ``weights`` holds per-image α, β, λ_TV, TV exponent
    and λ_l (``[B, L]``)."""
    alpha, beta = weights["content_weight"], weights["style_weight"]
    layer_weights = {layer: weights["layer_weights"][:, i] for i, layer in enumerate(options.style_layers)}
    content_feats = feats[options.content_layer]
    style_feats = {layer: feats[layer] for layer in options.style_layers}
    if options.normalize_gradients:
        content_feats = unit_l1_gradient(content_feats, alpha)
        style_feats = {layer: unit_l1_gradient(f, beta * layer_weights[layer]) for layer, f in style_feats.items()}
    j_content = content_loss(content_feats, content_features)
    j_style = style_loss(style_feats, grams, layer_weights)
    tv = total_variation(image, weights["tv_beta"])
    total = alpha * j_content + beta * j_style + weights["tv_weight"] * tv
    return {"content": j_content, "style": j_style, "tv": tv, "total": total}


def objective(
    net: VGG19Features,
    image: torch.Tensor,
    content_features: torch.Tensor,
    grams: dict[str, torch.Tensor],
    options: GatysOptions,
) -> dict[str, torch.Tensor]:
    """The loss terms of ``image`` with the weights of ``options`` (fp32); weights left as
    None take the defaults of the network's flavour."""
    options = options.resolved(net.normalize.flavour)
    weights = {k: v.to(image.device) for k, v in loss_weights(options, image.shape[0]).items()}
    return loss_terms(net(image), image, content_features, grams, options, weights)


@dataclass
class _Slot:
    work: _Work
    content_features: torch.Tensor
    limit: int  # iterations of this stage
    iterations: int = 0
    last_total: float = float("inf")
    calm: int = 0  # iterations in a row with a relative change under tol
    seconds: float = 0.0
    best_total: float = float("inf")  # the image returned is the best one seen (in self.best)
    best_terms: dict[str, float] = field(default_factory=dict)
    trace: list[float] = field(default_factory=list)
    restarts: int = 0

    def checkpoint(self) -> tuple[Any, ...]:
        """What observe and a step change, to be put back if the step runs out of memory."""
        return self.iterations, self.last_total, self.calm, self.best_total, self.best_terms, len(self.trace)

    def rollback(self, saved: tuple[Any, ...]) -> None:
        self.iterations, self.last_total, self.calm, self.best_total, self.best_terms, kept = saved
        del self.trace[kept:]

    def observe(self, terms: dict[str, float], tol: float) -> bool:
        """Record an evaluation's loss terms; True when it is the best so far."""
        total = terms["total"]
        self.trace.append(total)
        change = abs(self.last_total - total) / max(abs(total), 1e-12)
        self.calm = self.calm + 1 if change < tol else 0
        self.last_total = total
        if total < self.best_total:
            self.best_total, self.best_terms = total, terms
            return True
        return False


def even_share(waiting: int, capacity: int) -> int:
    """The batch size for ``waiting`` images of one shape: full batches while at least two
    are left, then equal ones (the last batch of a shape costs a whole pass however small)."""
    if waiting >= 2 * capacity or waiting == 0:
        return capacity
    return math.ceil(waiting / math.ceil(waiting / capacity))


class GatysBatcher:
    """Optimises a stream of jobs, up to ``batch_size`` at a time through one VGG19 pass.

    Images of one batch must have the same height and width (the caller orders jobs by shape;
    a job of another shape waits until the running batch drains). Results come back in the
    order images finish. On out-of-memory the batch is halved and the evicted images start
    again later from scratch, so none is lost and results do not change.
    """

    def __init__(
        self,
        net: VGG19Features,
        options: GatysOptions,
        *,
        batch_size: int = 4,
        precision: Precision = Precision.FP32,
        channels_last: bool = False,
        after_iteration: Callable[[int], None] = lambda images: None,
        allow_tf32: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.flavour = net.normalize.flavour
        # The caller's hook, after each iteration: the steps it made (one per image that stepped;
        # negative for steps thrown away on out-of-memory). It may raise to stop the run.
        self.after_iteration = after_iteration
        self.options, self.precision = options.resolved(self.flavour), precision
        # Pixels, optimiser state and losses are kept in the network's own dtype: fp32, or fp64
        # where a test must tell scheduling apart from rounding. Half precision keeps its own
        # copy of the weights in that dtype: autocast would cast all 20M weights again on every
        # pass (measured 15% of a bf16 iteration on CPU).
        self.state_dtype = next(net.parameters()).dtype
        self.dtype = HALF_DTYPES.get(precision, self.state_dtype)
        self.net = net if self.dtype == self.state_dtype else copy.deepcopy(net).to(self.dtype)
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.allow_tf32 = allow_tf32  # on a GPU, for this batcher's passes only (precision.tf32)
        # fp16: dynamic loss scaling, as torch's GradScaler (its initial scale, halved on an
        # overflow, doubled after LOSS_SCALE_GROWTH_STEPS clean ones). Unscaled, feature
        # gradients of ~1e-6 fall below fp16's normal range and come out zero: no NaN, so no
        # fp32 redo, just an image that silently does not move (measured in a test).
        self.loss_scale = LOSS_SCALE_INIT if self.dtype == torch.float16 else 1.0
        self.clean_steps = 0
        self.device = next(net.parameters()).device
        self.oom_events = 0
        # Batch fill: images stepped over slots offered, summed over passes (image_steps /
        # slot_steps is the mean fill a user sees in run.json).
        self.image_steps = self.slot_steps = 0

    # -- public -------------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job]) -> Iterator[Result]:
        source = iter(jobs)
        waiting: list[_Work] = []  # stages not yet admitted: evicted, continued or of another shape
        slots: list[_Slot | None] = []
        shape: tuple[int, int] | None = None
        capacity = round_size = self.batch_size
        exhausted = False

        def pull(want: int) -> None:
            """Jobs from the source until ``want`` of the running shape wait, or one of another
            shape comes (the caller orders jobs by shape), or the source ends."""
            nonlocal exhausted
            while not exhausted and not any(w.shape != shape for w in waiting):
                if sum(w.shape == shape for w in waiting) >= want:
                    return
                job = next(source, None)
                exhausted = job is None
                if job is not None:
                    waiting.append(_Work(job))

        while True:
            active = [i for i, s in enumerate(slots) if s is not None]
            if not active:
                # A new round: look ahead up to two batches so that the last ones of a shape
                # split evenly (48 images at capacity 45: 24 + 24, not 45 and then 3 alone).
                pull(2 * capacity)
                if not any(w.shape == shape for w in waiting):
                    if not waiting:
                        return
                    shape = waiting[0].shape  # a new shape only once the last one drained
                    pull(2 * capacity)
                    capacity = self._allocate_fitting(capacity, 3 * shape[0] * shape[1])
                    slots = [None] * capacity
                round_size = even_share(sum(w.shape == shape for w in waiting), capacity)
            # Continuous batching: an image that stops early frees its slot for a waiting one.
            while len(active) < min(round_size, capacity):
                pull(1)
                work = next((w for w in waiting if w.shape == shape), None)
                if work is None:
                    break
                waiting.remove(work)
                index = slots.index(None)
                slots[index] = self._admit(index, work)
                active.append(index)
            try:
                finished = self._iterate(slots, sorted(active))
                self.image_steps += len(active)
                self.slot_steps += capacity
            except torch.cuda.OutOfMemoryError:
                capacity = next_batch_size(capacity)
                if capacity == 0:
                    raise
                self.oom_events += 1
                for index in sorted(active)[capacity:]:
                    slot = slots[index]
                    assert slot is not None
                    waiting.insert(0, slot.work)  # starts this stage again from its start
                    slots[index] = None
                    self.after_iteration(-slot.iterations)
                torch.cuda.empty_cache()
                continue
            for index, outcome in finished:
                slots[index] = None
                if isinstance(outcome, _Work):
                    waiting.insert(0, outcome)
                else:
                    yield outcome

    # -- internals ----------------------------------------------------------------------------
    def _allocate_fitting(self, capacity: int, numel: int) -> int:
        """The batch's buffers for a new shape, halved until they fit; returns the capacity."""
        while True:
            try:
                self._allocate(capacity, numel)
                return capacity
            except torch.cuda.OutOfMemoryError:
                capacity = next_batch_size(capacity)
                if capacity == 0:
                    raise
                self.oom_events += 1
                torch.cuda.empty_cache()

    def _allocate(self, capacity: int, numel: int) -> None:
        # The last shape's buffers go first: held while the new ones are made, the peak would
        # be both histories.
        for name in ("x", "best", "opt", "weights"):
            self.__dict__.pop(name, None)
        opts = self.options
        kw = {"device": self.device, "dtype": self.state_dtype}
        self.x = torch.zeros(capacity, numel, **kw)
        self.best = torch.zeros(capacity, numel, **kw)
        if opts.optimizer is Optimizer.LBFGS:
            self.opt: BatchLBFGS | BatchAdam = BatchLBFGS(
                capacity, numel, lr=opts.step_size, history_size=opts.history_size,
                tolerance_grad=0.0, tolerance_change=0.0, **kw,
            )  # fmt: skip
        else:
            self.opt = BatchAdam(capacity, numel, lr=opts.step_size, **kw)
        self.weights = {
            name: value.to(self.device).repeat(capacity, *([1] * (value.dim() - 1)))
            for name, value in loss_weights(opts, 1).items()
        }  # fmt: skip

    def _admit(self, index: int, work: _Work) -> _Slot:
        job, stage = work.job, work.job.stages[work.stage]
        content = stage.content.to(self.device)
        if work.init is not None:
            start = work.init.to(self.device)
        elif self.options.init is Init.NOISE:
            generator = torch.Generator().manual_seed(job.seed)
            start = torch.rand(content.shape, generator=generator).to(self.device)
        else:
            start = content
        self.x[index] = start.reshape(-1)
        self.opt.reset(torch.tensor([index], device=self.device))
        for name, value in loss_weights(job.options.resolved(self.flavour), 1).items():
            self.weights[name][index] = value[0].to(self.device)
        features = stage.content_features if stage.content_features is not None else self.content_features(content)
        return _Slot(work=work, content_features=features, limit=stage.iterations)

    def content_features(self, content: torch.Tensor) -> torch.Tensor:
        """The content target of an image ``[1, 3, H, W]`` (compute once per image)."""
        with torch.no_grad(), tf32(self.device, self.allow_tf32):
            return self._forward(content.to(self.device))[self.options.content_layer].to(self.state_dtype)

    def style_targets(self, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gram targets of a style image ``[1, 3, H, W]`` through this batcher's network and
        precision (compute once per style and size)."""
        with torch.no_grad(), tf32(self.device, self.allow_tf32):
            feats = self._forward(style.to(self.device))
            return {layer: gram(feats[layer]) for layer in self.options.style_layers}

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _iterate(self, slots: list[_Slot | None], active: list[int]) -> list[tuple[int, Result | _Work]]:
        """One evaluation for every active image; a step for those not yet done."""
        with tf32(self.device, self.allow_tf32):
            return self._evaluate_and_step(slots, active)

    def _evaluate_and_step(self, slots: list[_Slot | None], active: list[int]) -> list[tuple[int, Result | _Work]]:
        t0 = time.perf_counter()
        rows = torch.tensor(active, device=self.device)
        live = [slots[i] for i in active]
        assert all(s is not None for s in live)
        b = len(active)
        h, w = live[0].work.shape  # type: ignore[union-attr]
        image = self.x[rows].view(b, 3, h, w).requires_grad_(True)
        content = torch.cat([s.content_features for s in live])  # type: ignore[union-attr]
        stage_grams = [s.work.job.stages[s.work.stage].grams for s in live]  # type: ignore[union-attr]
        grams = {layer: torch.cat([g[layer] for g in stage_grams]) for layer in self.options.style_layers}
        weights = {name: value[rows] for name, value in self.weights.items()}
        feats = self._forward(image)
        terms = loss_terms(feats, image, content, grams, self.options, weights)
        total = terms["total"]
        finite = torch.isfinite(total)
        # A non-finite image ends now (the caller decides what to do); the others go on.
        scale = self.loss_scale
        (total.where(finite, torch.zeros_like(total)).sum() * scale).backward()
        grad = image.grad.reshape(b, -1)
        if scale != 1.0:
            if not bool((torch.isfinite(grad).all(dim=1) | ~finite).all()) and scale > 1.0:
                self.loss_scale, self.clean_steps = scale / 2, 0  # overflowed: again, nothing changed yet
                return self._evaluate_and_step(slots, active)
            grad = grad / scale  # L-BFGS sees the true gradient
            self.clean_steps += 1
            if self.clean_steps == LOSS_SCALE_GROWTH_STEPS:
                self.loss_scale, self.clean_steps = min(scale * 2, LOSS_SCALE_MAX), 0
        values = {name: value.detach().cpu().tolist() for name, value in terms.items()}
        saved = [slot.checkpoint() for slot in live]  # type: ignore[union-attr]
        try:
            done, stepping, restart = self._observe_and_step(live, active, rows, values, finite, grad)
        except torch.cuda.OutOfMemoryError:
            # The optimiser's state is as it was (BatchLBFGS.step commits last); so are the
            # kept images', and the caller goes on with a smaller batch as if this never ran.
            for slot, state in zip(live, saved):
                slot.rollback(state)  # type: ignore[union-attr]
            raise
        if restart:
            idx = rows[torch.tensor(restart, device=self.device)]
            self.x[idx] = self.best[idx]
            self.opt.reset(idx)
        for j in stepping + restart:
            live[j].iterations += 1  # type: ignore[union-attr]
        for j in restart:
            live[j].restarts += 1  # type: ignore[union-attr]
        share = (time.perf_counter() - t0) / b
        results: list[tuple[int, Result | _Work]] = []
        for j, slot in enumerate(live):
            assert slot is not None
            slot.seconds += share
            if j in done:
                results.append((active[j], self._finish(slot, active[j], finite[j].item(), values, j)))
        self.after_iteration(len(stepping) + len(restart))
        return results

    def _observe_and_step(
        self, live: list[Any], active: list[int], rows: torch.Tensor, values: dict[str, list[float]],
        finite: torch.Tensor, grad: torch.Tensor,
    ) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
        """Each image's evaluation recorded; a step for those going on. Returns the batch
        positions that are done, stepped and restarted."""
        done, stepping, restart, improved = [], [], [], []
        for j, slot in enumerate(live):
            assert slot is not None
            if slot.observe({name: value[j] for name, value in values.items()}, self.options.tol):
                improved.append(active[j])  # the image just evaluated is the best so far: keep it
            if slot.iterations >= slot.limit or slot.calm >= PATIENCE or not finite[j]:
                done.append(j)
            elif not self.options.normalize_gradients and slot.last_total > RESTART_FACTOR * slot.best_total:
                restart.append(j)
            else:
                stepping.append(j)
        if improved:  # one copy for the batch, before any step moves x
            idx = torch.tensor(improved, device=self.device)
            self.best[idx] = self.x[idx]
        if stepping:
            idx = torch.tensor(stepping, device=self.device)
            x_rows = self.x[rows[idx]]
            self.opt.step(rows[idx], x_rows, grad[idx])
            self.x[rows[idx]] = x_rows.clamp_(0.0, 1.0)  # keep pixels displayable
        return done, stepping, restart

    def _finish(self, slot: _Slot, index: int, finite: bool, values: dict[str, list[float]], j: int) -> Result | _Work:
        """An image's stage is over: the next stage starts from its best image, or the result.
        A non-finite loss is reported as it is (the caller redoes such images in fp32)."""
        work = slot.work
        h, w = work.shape
        # --normalize-gradients steps along a field that is not the loss's gradient, so the
        # loss is no judge of its iterates: no best-iterate (and no restart), the last one.
        best = finite and slot.best_total < float("inf") and not self.options.normalize_gradients
        image = (self.best if best else self.x)[index].view(1, 3, h, w)
        steps, seconds = work.steps_before + slot.iterations, work.seconds_before + slot.seconds
        trace, restarts = work.trace_before + slot.trace, work.restarts_before + slot.restarts
        if work.stage + 1 < len(work.job.stages) and finite:
            # Coarse stage done: the next stage starts from this result, upsampled.
            next_shape = work.job.stages[work.stage + 1].content.shape[-2:]
            init = torch.nn.functional.interpolate(image, size=tuple(next_shape), mode="bilinear", align_corners=False)
            return _Work(work.job, work.stage + 1, init.clamp(0, 1), steps, seconds, trace, restarts)
        losses = slot.best_terms if best else {name: value[j] for name, value in values.items()}
        return Result(
            key=work.job.key, image=image.detach().cpu().clone(), losses=dict(losses),
            iterations=steps, seconds=seconds, trace=trace, restarts=restarts,
        )  # fmt: skip


def stylize(
    net: VGG19Features,
    content: torch.Tensor,
    grams: dict[str, torch.Tensor],
    options: GatysOptions,
    *,
    seed: int = 0,
    precision: Precision = Precision.FP32,
) -> Result:
    """One image ``[1, 3, H, W]``: the batcher with a batch of one."""
    batcher = GatysBatcher(net, options, batch_size=1, precision=precision)
    (result,) = batcher.run([Job(key=None, content=content, grams=grams, options=options, seed=seed)])
    return result
