"""The Gatys engine's options: loss weights, layers and optimiser settings (the defaults and
their derivation are in docs/method.md), and how coarse-to-fine scales share the iterations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from .vgg import Flavour, check_layers
from .weighting import DEFAULT_STYLE_LAYERS, default_layer_weights, loss_defaults


class Optimizer(str, Enum):
    LBFGS = "lbfgs"
    ADAM = "adam"


class Init(str, Enum):
    CONTENT = "content"
    NOISE = "noise"


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


def scale_iterations(iterations: int, scales: int) -> list[int]:
    """Split ``iterations`` over coarse-to-fine scales: the full size gets a quarter (at least
    one), the lower scales share the rest evenly (the lowest takes any remainder)."""
    if scales <= 1:
        return [iterations]
    final = max(1, iterations // 4) if iterations else 0
    rest = iterations - final
    share, extra = divmod(rest, scales - 1)
    return [share + extra] + [share] * (scales - 2) + [final]
