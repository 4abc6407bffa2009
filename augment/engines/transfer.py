"""One style-transfer task, from its inputs to the finished image: the path `augment run` and
`augment.stylize` share, so both give the same pixels for the same settings.

A task's inputs are its content image at every coarse-to-fine scale, the Gram targets of its
style (or of two, mixed) at each scale, its options and its finishing (colour preservation,
blend with the source). ``make_job`` turns them into a ``Job`` for ``GatysBatcher``;
``finish`` applies the finishing to the batcher's result; ``transfer`` does all of it for one
image, retrying in fp32 if half precision overflows.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .batcher import GatysBatcher
from .color import blend, preserve_color
from .jobs import Job, Result, Stage
from .losses import mix_grams, rescale_grams
from .options import GatysOptions
from .precision import Precision
from .vgg import VGG19Features

Grams = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StyleGrams:
    """A style image's Gram targets at one scale, with the image's (height, width) (a Gram
    matrix sums over positions, so targets are rescaled to each content image's size)."""

    grams: Grams
    shape: tuple[int, int]


class GramCache:
    """Style Gram targets by key (style, long side), least recently used dropped once they
    hold more than ``budget`` bytes. Each entry is ~2.4 MB (VGG19's five style layers, fp32),
    and --no-upscale gives one per distinct size: 100 styles x 400 sizes unbounded would be
    ~98 GB, an out-of-memory that halving the batch cannot cure. Sources come ordered by
    size, so an evicted size is seldom wanted again. Values that hold no tensors (a style
    that failed to load) cost nothing."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, key: Any) -> Any:
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        size = sum(t.numel() * t.element_size() for t in value.grams.values()) if isinstance(value, StyleGrams) else 0
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.budget and len(self._entries) > 1:  # the newest stays: it is about to be used
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped


@dataclass(frozen=True)
class Finish:
    """What happens to a stylized image after optimisation."""

    preserve_color: bool = False  # keep the source's colours, the style's luminance
    alpha: float = 1.0  # blend with the source: 1 all style

    @property
    def needs_content(self) -> bool:
        return self.preserve_color or self.alpha < 1.0

    def apply(self, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        content = content.to(image)
        if self.preserve_color:
            image = preserve_color(image, content)
        return blend(image, content, self.alpha)


def stage_targets(styles: Sequence[StyleGrams], content: torch.Tensor, mix: float = 0.0) -> Grams:
    """Gram targets for ``content`` (one scale): each style's rescaled to the content's size;
    with two styles, ``mix`` of the second."""
    shape = (content.shape[-2], content.shape[-1])
    targets = [rescale_grams(style.grams, style.shape, shape) for style in styles]
    return mix_grams(targets[0], targets[1], mix) if len(targets) == 2 else targets[0]


def make_job(
    key: Any,
    contents: Sequence[torch.Tensor],
    targets: Sequence[Grams],
    features: Sequence[torch.Tensor],
    iterations: Sequence[int],
    options: GatysOptions,
    seed: int = 0,
) -> Job:
    """A batcher job from per-scale inputs (lowest scale first, full size last): the content
    images, their Gram targets, their content features and the iterations of each scale."""
    coarse = [Stage(c, g, n, f) for c, g, n, f in zip(contents[:-1], targets, iterations, features)]
    return Job(key=key, content=contents[-1], grams=targets[-1], options=options, seed=seed,
               content_features=features[-1], coarse=coarse)  # fmt: skip


def transfer(
    net: VGG19Features,
    contents: Sequence[torch.Tensor],
    styles: Sequence[Sequence[torch.Tensor]],
    options: GatysOptions,
    iterations: Sequence[int],
    *,
    mix: float = 0.0,
    finish: Finish = Finish(),
    precision: Precision = Precision.FP32,
    channels_last: bool = False,
    seed: int = 0,
) -> Result:
    """One image through every scale: ``contents`` per scale, ``styles[i]`` the style images
    (one, or two to mix) at scale i. Half precision that overflows is redone in fp32."""
    for attempt in dict.fromkeys([precision, Precision.FP32]):
        batcher = GatysBatcher(net, options, batch_size=1, precision=attempt, channels_last=channels_last)
        targets = [
            stage_targets([StyleGrams(batcher.style_targets(s), (s.shape[-2], s.shape[-1])) for s in scale], c, mix)
            for scale, c in zip(styles, contents)
        ]  # fmt: skip
        features = [batcher.content_features(c) for c in contents]
        (result,) = batcher.run([make_job(None, contents, targets, features, iterations, options, seed)])
        if math.isfinite(result.losses["total"]):
            break
    result.image = finish.apply(result.image, contents[-1]) if finish.needs_content else result.image
    return result
