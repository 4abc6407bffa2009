"""Gatys et al. style transfer as described in the seed paper: optimise the pixels of a
generated image so its VGG19 features match the content image's (one layer) and its Gram
matrices match the style image's (several layers), with a total-variation regulariser.

Images are float tensors ``[B, 3, H, W]``, RGB in [0, 1]; the network normalises them itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from .losses import content_loss, gram, style_loss, total_variation
from .vgg import VGG19Features, check_layers


class Optimizer(str, Enum):
    LBFGS = "lbfgs"
    ADAM = "adam"


class Init(str, Enum):
    CONTENT = "content"
    NOISE = "noise"


DEFAULT_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


@dataclass(frozen=True)
class GatysOptions:
    """Loss weights, layers and optimiser settings. Defaults: see docs/method.md."""

    iterations: int = 300
    content_weight: float = 10.0  # α
    style_weight: float = 40.0  # β
    tv_weight: float = 1.0  # λ_TV
    tv_beta: float = 1.25  # exponent inside the TV sum
    content_layer: str = "conv4_2"
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    # λ_l per style layer; None means equal weights summing to 1.
    style_layer_weights: tuple[float, ...] | None = None
    optimizer: Optimizer = Optimizer.LBFGS
    learning_rate: float | None = None  # None: 1.0 for L-BFGS, 0.02 for Adam
    history_size: int = 100
    init: Init = Init.CONTENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", Optimizer(self.optimizer))
        object.__setattr__(self, "init", Init(self.init))
        object.__setattr__(self, "style_layers", tuple(self.style_layers))
        check_layers([self.content_layer, *self.style_layers])
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
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
        weights = self.style_layer_weights or (1.0 / len(self.style_layers),) * len(self.style_layers)
        return dict(zip(self.style_layers, weights))


@dataclass
class StylizeResult:
    image: torch.Tensor  # [B, 3, H, W] in [0, 1], detached
    losses: dict[str, list[float]] = field(default_factory=dict)  # per image: content, style, tv, total


def style_targets(net: VGG19Features, style: torch.Tensor, options: GatysOptions) -> dict[str, torch.Tensor]:
    """Gram matrices of a style image ``[1, 3, H, W]``: compute once, reuse for every image."""
    with torch.no_grad():
        feats = net(style)
        return {layer: gram(feats[layer]) for layer in options.style_layers}


def content_target(net: VGG19Features, content: torch.Tensor, options: GatysOptions) -> torch.Tensor:
    with torch.no_grad():
        return net(content)[options.content_layer].detach()


def objective(
    net: VGG19Features,
    image: torch.Tensor,
    content_features: torch.Tensor,
    grams: dict[str, torch.Tensor],
    options: GatysOptions,
) -> dict[str, torch.Tensor]:
    """J(G) = α·J_content + β·J_style + λ_TV·TV, each term per image ``[B]``."""
    feats = net(image)
    j_content = content_loss(feats[options.content_layer], content_features)
    j_style = style_loss(feats, grams, options.layer_weights)
    tv = total_variation(image, options.tv_beta)
    total = options.content_weight * j_content + options.style_weight * j_style + options.tv_weight * tv
    return {"content": j_content, "style": j_style, "tv": tv, "total": total}


def stylize(
    net: VGG19Features,
    content: torch.Tensor,
    grams: dict[str, torch.Tensor],
    options: GatysOptions,
    *,
    content_features: torch.Tensor | None = None,
    seed: int = 0,
) -> StylizeResult:
    """Optimise the pixels of a generated image; ``content`` is ``[B, 3, H, W]`` in [0, 1].

    The same inputs, options and seed give the same result on the same machine and thread count.
    """
    if content_features is None:
        content_features = content_target(net, content, options)
    if options.init is Init.NOISE:
        generator = torch.Generator().manual_seed(seed)
        start = torch.rand(content.shape, generator=generator).to(content)
    else:
        start = content.detach().clone(memory_format=torch.contiguous_format)
    image = start.requires_grad_(True)

    def loss_terms() -> dict[str, torch.Tensor]:
        return objective(net, image, content_features, grams, options)

    if options.optimizer is Optimizer.LBFGS:
        # One L-BFGS iteration per step() with no line search: one forward+backward per
        # iteration, so --iterations is the exact cost. The history persists across steps.
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [image],
            lr=options.learning_rate or 1.0,
            max_iter=1,
            history_size=options.history_size,
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
    else:
        opt = torch.optim.Adam([image], lr=options.learning_rate or 0.02)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = loss_terms()["total"].sum()
        total.backward()
        return total

    for _ in range(options.iterations):
        if options.optimizer is Optimizer.LBFGS:
            opt.step(closure)
        else:
            closure()
            opt.step()
        with torch.no_grad():
            image.clamp_(0.0, 1.0)  # keep pixels displayable; the next step starts from here

    with torch.no_grad():
        final = loss_terms()
    return StylizeResult(
        image=image.detach(),
        losses={name: value.detach().float().cpu().tolist() for name, value in final.items()},
    )
