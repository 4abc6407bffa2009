"""Deep Dream, as the paper describes it: forward an image, pick middle layers, and change
the pixels by gradient ascent so those activations grow, over octaves, with random jitter and
a normalised step. A guided variant instead pulls each position's activations toward the most
similar activation of a guide image (a style image can be the guide).

Images are ``[B, 3, H, W]`` in [0, 1]; each image has its own seed (jitter) and gradient
normalisation, so an image's result does not depend on its batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .memory import next_batch_size

FeatureNet = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class DreamOptions:
    layers: tuple[str, ...] = ("inception4c",)
    octaves: int = 4
    octave_scale: float = 1.4
    iterations: int = 10  # per octave
    step: float = 0.01  # in [0, 1] pixel units, after normalising the gradient to mean |g| = 1
    jitter: int = 16  # pixels of random shift per step, at full size
    blend: float = 1.0  # 1: the dream; 0: the source
    min_side: int = 32  # what the network still accepts


def octave_sizes(height: int, width: int, options: DreamOptions) -> list[tuple[int, int]]:
    """Sizes from smallest to full. Octaves that would go under ``min_side`` are dropped
    (fewer octaves, never an error on small images)."""
    sizes = []
    for i in reversed(range(options.octaves)):
        scale = options.octave_scale**i
        h, w = round(height / scale), round(width / scale)
        if min(h, w) >= options.min_side or i == 0:
            sizes.append((max(h, 1), max(w, 1)))
    return sizes


def activation_objective(feats: dict[str, torch.Tensor], layers: tuple[str, ...]) -> torch.Tensor:
    """Mean squared activation of each layer, summed: per image ``[B]``."""
    return sum(feats[layer].float().pow(2).mean(dim=(1, 2, 3)) for layer in layers)  # type: ignore[return-value]


def guided_objective(
    feats: dict[str, torch.Tensor], guides: dict[str, list[torch.Tensor]], layers: tuple[str, ...]
) -> torch.Tensor:
    """For every position, the dot product with the most similar guide activation, averaged:
    ascent pulls each position toward the guide's features. ``guides[layer]`` holds one
    ``[C, N]`` per image (guides may differ in size)."""
    total = None
    for layer in layers:
        x = feats[layer].float().flatten(2)  # [B, C, P]
        term = torch.stack(
            [(xi.transpose(0, 1) @ yi.float()).max(dim=1).values.mean() for xi, yi in zip(x, guides[layer])]
        )
        total = term if total is None else total + term
    assert total is not None
    return total


def guide_features(
    net: FeatureNet, guide: torch.Tensor, layers: tuple[str, ...], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Activations of a guide image ``[1, 3, h, w]``, flattened to ``[C, N]`` per layer."""
    with torch.no_grad():
        feats = net(guide.to(dtype))
    return {layer: feats[layer].float().flatten(2)[0] for layer in layers}


def dream(
    net: FeatureNet,
    images: torch.Tensor,
    options: DreamOptions,
    *,
    seeds: list[int],
    guides: dict[str, list[torch.Tensor]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[float]]:
    """Dream a batch; returns the images and each one's final objective."""
    base = images.detach().float()
    b, _, height, width = base.shape
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    sizes = octave_sizes(height, width, options)
    detail = torch.zeros(b, 3, *sizes[0], device=base.device)
    objective = torch.zeros(b)
    for h, w in sizes:
        small = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        detail = F.interpolate(detail, size=(h, w), mode="bilinear", align_corners=False)
        image = (small + detail).clamp(0, 1)
        jitter = max(0, round(options.jitter * w / width))
        for _ in range(options.iterations):
            shifts = [tuple(int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g)) for g in generators]
            rolled = torch.stack([img.roll(s, dims=(1, 2)) for img, s in zip(image, shifts)]).requires_grad_(True)
            feats = net(rolled.to(dtype))
            value = (
                guided_objective(feats, guides, options.layers)
                if guides
                else activation_objective(feats, options.layers)
            )
            (grad,) = torch.autograd.grad(value.sum(), rolled)
            grad = torch.stack([g.roll((-s[0], -s[1]), dims=(1, 2)) for g, s in zip(grad, shifts)])
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)  # per image
            image = (image + options.step * grad).clamp(0, 1).detach()
            objective = value.detach().cpu()
        detail = image - small
    out = options.blend * image + (1.0 - options.blend) * base
    return out.clamp(0, 1), objective.tolist()


@dataclass
class DreamJob:
    """One image to dream. ``key`` is the caller's, handed back untouched."""

    key: object
    image: torch.Tensor  # [1, 3, H, W] in [0, 1]
    seed: int = 0
    guides: dict[str, torch.Tensor] | None = None  # guide activations, [C, N] per layer (guided dream)


@dataclass
class DreamResult:
    key: object
    image: torch.Tensor  # [1, 3, H, W] in [0, 1], on the CPU
    objective: float
    steps: int  # dream steps taken: octaves x steps per octave
    seconds: float  # wall time of its batch, divided by the batch's size


class DreamBatcher:
    """Dreams a stream of jobs, up to ``batch_size`` images of one size at a time (the caller
    orders jobs by size). Every image takes the same steps, so batches are fixed: an image's
    result does not depend on its batch (its own seed and gradient normalisation)."""

    def __init__(
        self,
        net: FeatureNet,
        options: DreamOptions,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.net, self.options, self.batch_size = net, options, batch_size
        self.device, self.dtype = torch.device(device), dtype
        self.oom_events = 0
        self._batch: list[DreamJob] = []

    def run(self, jobs: Iterable[DreamJob]) -> Iterator[DreamResult]:
        for job in jobs:
            yield from self.add(job)
        yield from self.flush()

    def add(self, job: DreamJob) -> list[DreamResult]:
        """Queue ``job``; returns the results of the batch it closes (a full one, or one of
        another size), if any."""
        done = []
        if self._batch and (self._batch[0].image.shape != job.image.shape or len(self._batch) >= self.batch_size):
            done = self.flush()
        self._batch.append(job)
        return done

    def flush(self) -> list[DreamResult]:
        """The results of the images queued so far."""
        batch, self._batch = self._batch, []
        return list(self._dream(batch))

    def steps(self, height: int, width: int) -> int:
        return len(octave_sizes(height, width, self.options)) * self.options.iterations

    def _dream(self, batch: list[DreamJob]) -> Iterator[DreamResult]:
        if not batch:
            return
        t0 = time.perf_counter()
        images = torch.cat([job.image for job in batch]).to(self.device)
        guided = batch[0].guides is not None
        guides = {layer: [job.guides[layer] for job in batch] for layer in self.options.layers} if guided else None  # type: ignore[index]
        try:
            out, objective = dream(
                self.net, images, self.options, seeds=[job.seed for job in batch], guides=guides, dtype=self.dtype
            )
        except torch.cuda.OutOfMemoryError:
            # E.g. gatys+dream, whose batch size was measured before style transfer took its
            # share: halve and go on. An image's dream does not depend on its batch.
            if len(batch) == 1:
                raise
            del images
            torch.cuda.empty_cache()
            self.batch_size = next_batch_size(len(batch))  # at least 1: len(batch) >= 2
            self.oom_events += 1
            for start in range(0, len(batch), self.batch_size):
                yield from self._dream(batch[start : start + self.batch_size])
            return
        share = (time.perf_counter() - t0) / len(batch)
        steps = self.steps(*images.shape[-2:])
        for j, job in enumerate(batch):
            yield DreamResult(job.key, out[j : j + 1].cpu(), objective[j], steps, share)
