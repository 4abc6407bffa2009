"""One iteration of a batch on the device: the network at the batch's precision, the batch's
pixels, best images, optimiser state and per-image loss weights; each active image evaluated,
recorded and stepped. ``GatysBatcher`` (batcher.py) decides which images are active."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .jobs import Job, Result
from .losses import gram
from .objective import loss_terms, loss_weights
from .optim import BatchAdam, BatchLBFGS
from .options import GatysOptions, Init, Optimizer
from .precision import HALF_DTYPES, Precision, tf32
from .vgg import VGG19Features

PATIENCE = 3  # early stop after this many iterations in a row under --tol
LOSS_SCALE_INIT, LOSS_SCALE_MAX, LOSS_SCALE_GROWTH_STEPS = 2.0**16, 2.0**24, 1000
# A step that leaves an image's loss this many times above its best so far is a spike (L-BFGS
# without line search on a non-smooth or clamped problem): back to the best image, fresh history.
RESTART_FACTOR = 1.5


@dataclass
class Work:
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
class Slot:
    """An image in the batch: its stage's progress and the best evaluation so far."""

    work: Work
    content_features: torch.Tensor
    limit: int  # iterations of this stage
    iterations: int = 0
    last_total: float = float("inf")
    calm: int = 0  # iterations in a row with a relative change under tol
    seconds: float = 0.0
    best_total: float = float("inf")  # the image returned is the best one seen (in BatchStep.best)
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


Finished = list[tuple[int, Result | Work]]  # (slot index, its result, or its next stage)


class BatchStep:
    """The device side of a batch of one shape, ``capacity`` slots."""

    def __init__(
        self,
        net: VGG19Features,
        options: GatysOptions,
        *,
        precision: Precision = Precision.FP32,
        channels_last: bool = False,
        allow_tf32: bool = False,
    ) -> None:
        self.flavour = net.normalize.flavour
        self.options, self.precision = options.resolved(self.flavour), precision
        # Pixels, optimiser state and losses are kept in the network's own dtype: fp32, or fp64
        # where a test must tell scheduling apart from rounding. Half precision keeps its own
        # copy of the weights in that dtype: autocast would cast all 20M weights again on every
        # pass (measured 15% of a bf16 iteration on CPU).
        self.state_dtype = next(net.parameters()).dtype
        self.dtype = HALF_DTYPES.get(precision, self.state_dtype)
        self.net = net if self.dtype == self.state_dtype else copy.deepcopy(net).to(self.dtype)
        self.channels_last = channels_last
        self.allow_tf32 = allow_tf32  # on a GPU, for this batch's passes only (precision.tf32)
        # fp16: dynamic loss scaling, as torch's GradScaler (its initial scale, halved on an
        # overflow, doubled after LOSS_SCALE_GROWTH_STEPS clean ones). Unscaled, feature
        # gradients of ~1e-6 fall below fp16's normal range and come out zero: no NaN, so no
        # fp32 redo, just an image that silently does not move (measured in a test).
        self.loss_scale = LOSS_SCALE_INIT if self.dtype == torch.float16 else 1.0
        self.clean_steps = 0
        self.device = next(net.parameters()).device

    def allocate(self, capacity: int, numel: int) -> None:
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

    def admit(self, index: int, work: Work) -> Slot:
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
        return Slot(work=work, content_features=features, limit=stage.iterations)

    def content_features(self, content: torch.Tensor) -> torch.Tensor:
        """The content target of an image ``[1, 3, H, W]`` (compute once per image)."""
        with torch.no_grad(), tf32(self.device, self.allow_tf32):
            return self.forward(content.to(self.device))[self.options.content_layer].to(self.state_dtype)

    def style_targets(self, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gram targets of a style image ``[1, 3, H, W]`` through this network and precision
        (compute once per style and size)."""
        with torch.no_grad(), tf32(self.device, self.allow_tf32):
            feats = self.forward(style.to(self.device))
            return {layer: gram(feats[layer]) for layer in self.options.style_layers}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def iterate(self, slots: list[Slot | None], active: list[int]) -> tuple[Finished, int]:
        """One evaluation for every active image, a step for those not yet done. Returns the
        images whose stage ended and the image-steps made."""
        with tf32(self.device, self.allow_tf32):
            return self._evaluate_and_step([slots[i] for i in active], active)  # type: ignore[misc]

    def _gradient(self, live: list[Slot], rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every active image's loss terms and their gradient ``[b, numel]``, with fp16's loss
        scaling (an overflow halves the scale and evaluates again: nothing has changed yet)."""
        b, (h, w) = len(live), live[0].work.shape
        while True:
            image = self.x[rows].view(b, 3, h, w).requires_grad_(True)
            content = torch.cat([s.content_features for s in live])
            stage_grams = [s.work.job.stages[s.work.stage].grams for s in live]
            grams = {layer: torch.cat([g[layer] for g in stage_grams]) for layer in self.options.style_layers}
            weights = {name: value[rows] for name, value in self.weights.items()}
            terms = loss_terms(self.forward(image), image, content, grams, self.options, weights)
            total, scale = terms["total"], self.loss_scale
            finite = torch.isfinite(total)
            # A non-finite image ends now (the caller decides what to do); the others go on.
            (total.where(finite, torch.zeros_like(total)).sum() * scale).backward()
            grad = image.grad.reshape(b, -1)
            if scale == 1.0:
                return terms, grad
            if not bool((torch.isfinite(grad).all(dim=1) | ~finite).all()) and scale > 1.0:
                self.loss_scale, self.clean_steps = scale / 2, 0
                continue
            self.clean_steps += 1
            if self.clean_steps == LOSS_SCALE_GROWTH_STEPS:
                self.loss_scale, self.clean_steps = min(scale * 2, LOSS_SCALE_MAX), 0
            return terms, grad / scale  # L-BFGS sees the true gradient

    def _evaluate_and_step(self, live: list[Slot], active: list[int]) -> tuple[Finished, int]:
        t0 = time.perf_counter()
        rows = torch.tensor(active, device=self.device)
        terms, grad = self._gradient(live, rows)
        finite = torch.isfinite(terms["total"])
        values = {name: value.detach().cpu().tolist() for name, value in terms.items()}
        saved = [slot.checkpoint() for slot in live]
        try:
            done, stepping, restart = self._observe_and_step(live, active, rows, values, finite, grad)
        except torch.cuda.OutOfMemoryError:
            # The optimiser's state is as it was (BatchLBFGS.step commits last); so are the
            # kept images', and the caller goes on with a smaller batch as if this never ran.
            for slot, state in zip(live, saved):
                slot.rollback(state)
            raise
        if restart:
            idx = rows[torch.tensor(restart, device=self.device)]
            self.x[idx] = self.best[idx]
            self.opt.reset(idx)
        for j in stepping + restart:
            live[j].iterations += 1
        for j in restart:
            live[j].restarts += 1
        share = (time.perf_counter() - t0) / len(live)
        finished: Finished = []
        for j, slot in enumerate(live):
            slot.seconds += share
            if j in done:
                finished.append((active[j], self._finish(slot, active[j], finite[j].item(), values, j)))
        return finished, len(stepping) + len(restart)

    def _observe_and_step(
        self, live: list[Slot], active: list[int], rows: torch.Tensor, values: dict[str, list[float]],
        finite: torch.Tensor, grad: torch.Tensor,
    ) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
        """Each image's evaluation recorded; a step for those going on. Returns the batch
        positions that are done, stepped and restarted."""
        done, stepping, restart, improved = [], [], [], []
        for j, slot in enumerate(live):
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

    def _finish(self, slot: Slot, index: int, finite: bool, values: dict[str, list[float]], j: int) -> Result | Work:
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
            return Work(work.job, work.stage + 1, init.clamp(0, 1), steps, seconds, trace, restarts)
        losses = slot.best_terms if best else {name: value[j] for name, value in values.items()}
        return Result(
            key=work.job.key, image=image.detach().cpu().clone(), losses=dict(losses),
            iterations=steps, seconds=seconds, trace=trace, restarts=restarts,
        )  # fmt: skip
