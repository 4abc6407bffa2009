"""Gatys et al. style transfer as described in the paper: optimise the pixels of a
generated image so its VGG19 features match the content image's (one layer) and its Gram
matrices match the style image's (several layers), with a total-variation regulariser.

Images are float tensors ``[B, 3, H, W]``, RGB in [0, 1]; the network normalises them itself.
``GatysBatcher`` optimises many images at once, each with its own optimiser state and stop,
admitting waiting images as others finish (continuous batching). What one iteration does is in
step.py; this module decides which images are in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from .jobs import Job, Result, Steps
from .memory import next_batch_size
from .options import GatysOptions
from .precision import Precision
from .step import BatchStep, Slot, Work
from .vgg import VGG19Features


def even_share(waiting: int, capacity: int) -> int:
    """The batch size for ``waiting`` images of one shape: full batches while at least two
    are left, then equal ones (the last batch of a shape costs a whole pass however small)."""
    if waiting >= 2 * capacity or waiting == 0:
        return capacity
    return math.ceil(waiting / math.ceil(waiting / capacity))


class GatysBatcher:
    """Optimises a stream of jobs, up to ``batch_size`` at a time through one VGG19 pass.

    Images of one batch must have the same height and width (the caller orders jobs by shape;
    a job of another shape waits until the running batch drains). ``run`` yields each result as
    its image finishes (``events``: and a ``Steps`` after every iteration). On out-of-memory the batch is
    halved and the evicted images start again later from scratch, so none is lost and results
    do not change.
    """

    def __init__(
        self,
        net: VGG19Features,
        options: GatysOptions,
        *,
        batch_size: int = 4,
        precision: Precision = Precision.FP32,
        channels_last: bool = False,
        allow_tf32: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.step = BatchStep(net, options, precision=precision, channels_last=channels_last, allow_tf32=allow_tf32)
        self.options, self.precision, self.batch_size = self.step.options, precision, batch_size
        self.oom_events = 0
        # Batch fill: images stepped over slots offered, summed over passes (image_steps /
        # slot_steps is the mean fill a user sees in run.json).
        self.image_steps = self.slot_steps = 0

    def content_features(self, content: torch.Tensor) -> torch.Tensor:
        """The content target of an image ``[1, 3, H, W]`` (compute once per image)."""
        return self.step.content_features(content)

    def style_targets(self, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gram targets of a style image ``[1, 3, H, W]`` through this batcher's network and
        precision (compute once per style and size)."""
        return self.step.style_targets(style)

    def run(self, jobs: Iterable[Job]) -> Iterator[Result]:
        """Results as images finish."""
        return (event for event in self.events(jobs) if isinstance(event, Result))

    def events(self, jobs: Iterable[Job | None]) -> Iterator[Result | Steps]:
        """Results as images finish, a ``Steps`` after each iteration. ``jobs`` may yield None
        to hand control back (a ``Steps(0)`` comes out): its caller has something to hand out."""
        self._source, self._exhausted = iter(jobs), False
        self._waiting: list[Work] = []  # stages not yet admitted: evicted, continued or of another shape
        self._shape: tuple[int, int] | None = None
        slots: list[Slot | None] = []
        capacity = round_size = self.batch_size
        while True:
            active = [i for i, s in enumerate(slots) if s is not None]
            if not active:
                yield from self._pull(2 * capacity)
                if not any(w.shape == self._shape for w in self._waiting):
                    if not self._waiting:
                        return
                    self._shape = self._waiting[0].shape  # a new shape only once the last one drained
                    yield from self._pull(2 * capacity)
                    capacity = self._allocate_fitting(capacity)
                    slots = [None] * capacity
                # A new round looks ahead up to two batches so that the last ones of a shape
                # split evenly (48 images at capacity 45: 24 + 24, not 45 and then 3 alone).
                round_size = even_share(sum(w.shape == self._shape for w in self._waiting), capacity)
            yield from self._fill(slots, active, min(round_size, capacity))
            try:
                finished, steps = self.step.iterate(slots, sorted(active))
            except torch.cuda.OutOfMemoryError:
                capacity = next_batch_size(capacity)
                if capacity == 0:
                    raise
                thrown_away = self._evict(slots, active, capacity)
                yield Steps(-thrown_away)
                continue
            self.image_steps += len(active)
            self.slot_steps += capacity
            yield Steps(steps)
            for index, outcome in finished:
                slots[index] = None
                if isinstance(outcome, Work):
                    self._waiting.insert(0, outcome)
                else:
                    yield outcome

    def _pull(self, want: int) -> Iterator[Steps]:
        """Jobs from the source until ``want`` of the running shape wait, or one of another
        shape comes (the caller orders jobs by shape), or the source ends."""
        while not self._exhausted and not any(w.shape != self._shape for w in self._waiting):
            if sum(w.shape == self._shape for w in self._waiting) >= want:
                return
            job = next(self._source, StopIteration)
            if job is StopIteration:
                self._exhausted = True
            elif job is None:
                yield Steps(0)
            else:
                self._waiting.append(Work(job))  # type: ignore[arg-type]

    def _fill(self, slots: list[Slot | None], active: list[int], size: int) -> Iterator[Steps]:
        """Continuous batching: an image that stopped early frees its slot for a waiting one."""
        while len(active) < size:
            yield from self._pull(1)
            work = next((w for w in self._waiting if w.shape == self._shape), None)
            if work is None:
                return
            self._waiting.remove(work)
            index = slots.index(None)
            slots[index] = self.step.admit(index, work)
            active.append(index)

    def _evict(self, slots: list[Slot | None], active: list[int], capacity: int) -> int:
        """Out of memory in an iteration: the images past the new capacity go back to wait
        (each starts its stage again). Returns the image-steps thrown away."""
        self.oom_events += 1
        thrown_away = 0
        for index in sorted(active)[capacity:]:
            slot = slots[index]
            assert slot is not None
            self._waiting.insert(0, slot.work)  # starts this stage again from its start
            slots[index] = None
            thrown_away += slot.iterations
        torch.cuda.empty_cache()
        return thrown_away

    def _allocate_fitting(self, capacity: int) -> int:
        """The batch's buffers for a new shape, halved until they fit; returns the capacity."""
        assert self._shape is not None
        while True:
            try:
                self.step.allocate(capacity, 3 * self._shape[0] * self._shape[1])
                return capacity
            except torch.cuda.OutOfMemoryError:
                capacity = next_batch_size(capacity)
                if capacity == 0:
                    raise
                self.oom_events += 1
                torch.cuda.empty_cache()


def style_targets(net: VGG19Features, style: torch.Tensor, options: GatysOptions) -> dict[str, torch.Tensor]:
    """Gram matrices of a style image ``[1, 3, H, W]`` in fp32: compute once, reuse for every image."""
    return BatchStep(net, options).style_targets(style)


def content_target(net: VGG19Features, content: torch.Tensor, options: GatysOptions) -> torch.Tensor:
    """The content target of an image ``[1, 3, H, W]`` in fp32."""
    return BatchStep(net, options).content_features(content)
