"""What the Gatys engine takes and hands back: a ``Job`` (one image with its coarse-to-fine
stages) in; ``Result``s, and ``Steps`` between them, out. ``Steps`` carries the engine's
progress to its caller, so that the engine never calls back into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .options import GatysOptions


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


@dataclass
class Result:
    key: Any
    image: torch.Tensor  # [1, 3, H, W] in [0, 1], on the CPU
    losses: dict[str, float] = field(default_factory=dict)  # content, style, tv, total
    iterations: int = 0  # optimiser steps taken
    seconds: float = 0.0  # wall time while in a batch, divided by the batch's occupancy
    trace: list[float] = field(default_factory=list)  # total loss at every evaluation, all stages
    restarts: int = 0  # spikes undone (back to the best image, fresh optimiser history)


@dataclass(frozen=True)
class Steps:
    """Image-steps made since the last event (one per image that stepped; negative for steps
    thrown away on out-of-memory, which no result will account for). 0: the job source handed
    control back (it yielded None), so the caller may hand out what it has."""

    count: int
