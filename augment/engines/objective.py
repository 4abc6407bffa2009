"""The paper's objective, per image of a batch: J(G) = α·J_content + β·Σ_l λ_l·J_style^l +
λ_TV·TV, with per-image weights (per-style overrides differ within a batch)."""

from __future__ import annotations

import torch

from .losses import content_loss, style_loss, total_variation, unit_l1_gradient
from .options import GatysOptions
from .vgg import VGG19Features

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
