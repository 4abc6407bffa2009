"""Default loss weights: the conversion from published objectives, and --normalize-gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from augment.engines.batcher import content_target, style_targets
from augment.engines.losses import total_variation, unit_l1_gradient
from augment.engines.objective import loss_terms, loss_weights, objective
from augment.engines.options import GatysOptions
from augment.engines.vgg import Flavour, VGG19Features
from augment.engines.weighting import (
    DEFAULTS,
    NEURAL_STYLE,
    TUTORIAL,
    inverse_square_channel_weights,
    loss_defaults,
    parse_layer_weights,
)


def _published_objective(
    net: VGG19Features,
    image: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    options: GatysOptions,
    content_weight: float,
    style_weight: float,
    tv_weight: float,
) -> float:
    """neural-style's / the PyTorch tutorial's objective, written out as they write it:
    w_c·MSE(F, P) + Σ_l w_s·MSE(F·Fᵀ/(C·H·W), A/(C·H·W)) + w_tv·½·Σ(dx² + dy²) on 0..255
    pixels (the function whose gradient the Lua neural-style's TV module returns)."""
    f, p, s = net(image), net(content), net(style)

    def normalised_gram(x: torch.Tensor) -> torch.Tensor:
        flat = x[0].reshape(x.shape[1], -1).double()
        return flat @ flat.T / x[0].numel()

    layer = options.content_layer
    total = content_weight * torch.nn.functional.mse_loss(f[layer].double(), p[layer].double())
    for layer in options.style_layers:
        total = total + style_weight * torch.nn.functional.mse_loss(
            normalised_gram(f[layer]), normalised_gram(s[layer])
        )
    pixels = 255.0 * image[0].double()
    x_diff = pixels[:, :-1, :-1] - pixels[:, :-1, 1:]
    y_diff = pixels[:, :-1, :-1] - pixels[:, 1:, :-1]
    return float(total + tv_weight * 0.5 * (x_diff.pow(2) + y_diff.pow(2)).sum())


@pytest.mark.parametrize(("flavour", "published"), [(Flavour.CAFFE, NEURAL_STYLE), (Flavour.TORCHVISION, TUTORIAL)])
def test_the_default_objective_is_the_published_one_up_to_one_constant(flavour: Flavour, published: dict) -> None:
    options = GatysOptions()  # the defaults, TV included (the tutorial has none: 0 for it)
    tv_weight = published.get("tv", 0.0)
    if "tv" not in published:
        options = dataclasses.replace(options, tv_weight=0.0)
    net = VGG19Features(options.layers, flavour=flavour)
    net.init_random(0)
    g = torch.Generator().manual_seed(3)
    content, style = torch.rand(1, 3, 48, 64, generator=g), torch.rand(1, 3, 48, 64, generator=g) ** 2
    features, grams = content_target(net, content, options), style_targets(net, style, options)
    ratios = []
    for image in (content * 0.5 + 0.25, style, torch.rand(1, 3, 48, 64, generator=g)):
        ours = objective(net, image, features, grams, options)["total"].item()
        theirs = _published_objective(
            net, image, content, style, options, published["content"], published["style"], tv_weight
        )
        ratios.append(theirs / ours)
    # One constant for every image: the same minimum. It is 4·w_c/α (both scaled to α = 10).
    assert ratios == pytest.approx([4 * published["content"] / 10.0] * 3, rel=1e-4)


def test_the_defaults_per_flavour() -> None:
    # Both published settings weight a layer by 1/C² in this engine's units.
    assert inverse_square_channel_weights(["conv1_1", "conv2_1"]) == pytest.approx((0.8, 0.2))
    caffe, torchvision = DEFAULTS[Flavour.CAFFE], DEFAULTS[Flavour.TORCHVISION]
    assert caffe.content_weight == torchvision.content_weight == 10.0
    assert caffe.style_weight == pytest.approx(0.06561, rel=1e-3)  # 200·Σ 1/C_l²
    assert torchvision.style_weight == pytest.approx(3280.6, rel=1e-3)  # 1e7·Σ 1/C_l²
    assert loss_defaults(Flavour.CAFFE, normalize_gradients=True).style_weight == 1000.0
    resolved = GatysOptions(style_weight=5.0).resolved(Flavour.CAFFE)
    assert resolved.style_weight == 5.0 and resolved.content_weight == 10.0  # given values win
    assert resolved.style_layer_weights == pytest.approx(inverse_square_channel_weights(resolved.style_layers))


def test_the_tv_gradient_is_the_lua_neural_styles_backward_exactly() -> None:
    # neural-style's TVLoss:updateGradInput, transcribed: on 0..255 pixels, x_diff = x[:, i, j]
    # − x[:, i, j+1] and y_diff = x[:, i, j] − x[:, i+1, j] over rows and columns 1..H−1, 1..W−1;
    # grad[i, j] += x_diff + y_diff, grad[i, j+1] −= x_diff, grad[i+1, j] −= y_diff; times w.
    image = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pixels = 255.0 * image[0]
    x_diff = pixels[:, :-1, :-1] - pixels[:, :-1, 1:]
    y_diff = pixels[:, :-1, :-1] - pixels[:, 1:, :-1]
    lua = torch.zeros_like(pixels)
    lua[:, :-1, :-1] += x_diff + y_diff
    lua[:, :-1, 1:] -= x_diff
    lua[:, 1:, :-1] -= y_diff
    lua *= NEURAL_STYLE["tv"]
    # Ours, with the caffe default λ_TV: the same gradient times k = α/(4·w_c) (every default is
    # the published objective times k) and 255 (our pixels are 0..1).
    x = image.clone().requires_grad_(True)
    options = GatysOptions().resolved(Flavour.CAFFE)
    (options.tv_weight * total_variation(x, options.tv_beta)).sum().backward()
    k = options.content_weight / (4 * NEURAL_STYLE["content"])
    assert options.tv_beta == 1.0
    torch.testing.assert_close(x.grad[0], k * 255.0 * lua, rtol=1e-12, atol=1e-9)


def test_parse_layer_weights() -> None:
    assert parse_layer_weights("1, 0.5,0", 3) == (1.0, 0.5, 0.0)
    assert parse_layer_weights([1, 2], 2) == (1.0, 2.0)
    for bad, layers in (("1,2", 3), ("a,b", 2), ("-1,1", 2), ("inf,1", 2)):
        with pytest.raises(ValueError):
            parse_layer_weights(bad, layers)


def test_unit_l1_gradient_gives_each_image_its_weight_as_gradient_norm() -> None:
    features = torch.randn(3, 4, 5, 5, requires_grad=True)
    weight = torch.tensor([1.0, 2.0, 0.0])
    (unit_l1_gradient(features, weight).pow(3).sum() * 7.0).backward()
    norms = features.grad.abs().sum(dim=(1, 2, 3))
    assert norms == pytest.approx([1.0, 2.0, 0.0], abs=1e-5)


def _image_gradient(
    net: VGG19Features, options: GatysOptions, content: torch.Tensor, style: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    options = options.resolved(net.normalize.flavour)
    x = image.clone().requires_grad_(True)
    weights = loss_weights(options)
    grams = style_targets(net, style, options)
    loss_terms(net(x), x, content_target(net, content, options), grams, options, weights)["total"].sum().backward()
    return x.grad


@pytest.mark.parametrize("normalize", [True, False])
def test_normalized_gradients_do_not_depend_on_the_activation_scale(normalize: bool) -> None:
    # Weights whose first convolution is 10x larger (biases are zero, so every activation is
    # 10x larger): the content term grows 100x, the style term 10⁴x. With normalised gradients
    # the image gradient only scales; without, its direction changes.
    options = GatysOptions(tv_weight=0.0, style_weight=1e2, normalize_gradients=normalize)
    net = VGG19Features(options.layers)
    net.init_random(0)
    g = torch.Generator().manual_seed(4)
    content, style, image = (torch.rand(1, 3, 32, 32, generator=g) for _ in range(3))
    base = _image_gradient(net, options, content, style, image).flatten()
    with torch.no_grad():
        net.features[0].weight.mul_(10.0)
    scaled = _image_gradient(net, options, content, style, image).flatten()
    cosine = float(torch.nn.functional.cosine_similarity(base, scaled, dim=0))
    if normalize:
        assert cosine > 0.9999 and float((scaled - 10.0 * base).norm() / (10.0 * base).norm()) < 1e-3
    else:
        assert cosine < 0.99
