from __future__ import annotations

import torch

from augment.engines.gatys import GatysOptions, content_target, objective, style_targets, stylize
from augment.engines.vgg import VGG19Features


def _setup(options: GatysOptions) -> tuple[VGG19Features, torch.Tensor, torch.Tensor]:
    net = VGG19Features(options.layers)
    net.init_random(0)
    g = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, 32, 32, generator=g)
    style = torch.rand(1, 3, 32, 32, generator=g).pow(3)  # a different colour distribution
    return net, content, style


def test_lbfgs_lowers_the_total_loss_by_a_large_factor() -> None:
    options = GatysOptions(iterations=30, content_weight=1.0, style_weight=1e6, tv_weight=0.0, init="noise")
    net, content, style = _setup(options)
    grams = style_targets(net, style, options)
    start = stylize(net, content, grams, GatysOptions(**{**options.__dict__, "iterations": 0}))
    end = stylize(net, content, grams, options)
    assert end.losses["total"][0] < start.losses["total"][0] / 20
    assert 0.0 <= end.image.min() and end.image.max() <= 1.0


def test_adam_lowers_the_loss_too() -> None:
    options = GatysOptions(iterations=20, style_weight=1e6, optimizer="adam", learning_rate=0.05)
    net, content, style = _setup(options)
    grams = style_targets(net, style, options)
    before = objective(net, content, content_target(net, content, options), grams, options)["total"].item()
    after = stylize(net, content, grams, options).losses["total"][0]
    assert after < before * 0.8


def test_same_seed_same_pixels_and_noise_init_depends_on_seed() -> None:
    options = GatysOptions(iterations=3, init="noise")
    net, content, style = _setup(options)
    grams = style_targets(net, style, options)
    a = stylize(net, content, grams, options, seed=5).image
    b = stylize(net, content, grams, options, seed=5).image
    c = stylize(net, content, grams, options, seed=6).image
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_losses_are_reported_per_term() -> None:
    options = GatysOptions(iterations=1)
    net, content, style = _setup(options)
    result = stylize(net, content, style_targets(net, style, options), options)
    terms = result.losses
    expected = options.content_weight * terms["content"][0] + options.style_weight * terms["style"][0] + options.tv_weight * terms["tv"][0]
    assert abs(terms["total"][0] - expected) <= 1e-4 * max(1.0, expected)
