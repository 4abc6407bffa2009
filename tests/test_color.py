"""Finishing maths: luminance-only transfer, blending back, style targets of other sizes."""

from __future__ import annotations

import pytest
import torch

from augment.engines.color import _RGB_TO_YIQ, blend, preserve_color
from augment.engines.losses import gram, mix_grams, rescale_grams


def _yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ, image)


def test_preserve_color_keeps_the_stylized_luminance_and_the_source_colour() -> None:
    g = torch.Generator().manual_seed(0)
    stylized = 0.3 + 0.4 * torch.rand(1, 3, 8, 8, generator=g)  # mid-range: no clamping
    content = 0.3 + 0.4 * torch.rand(1, 3, 8, 8, generator=g)
    out = preserve_color(stylized, content)
    assert torch.allclose(_yiq(out)[:, 0], _yiq(stylized)[:, 0], atol=1e-5)
    assert torch.allclose(_yiq(out)[:, 1:], _yiq(content)[:, 1:], atol=1e-5)
    assert not torch.allclose(out, stylized, atol=1e-2)


def test_blend_is_linear_between_source_and_stylized() -> None:
    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert torch.equal(blend(b, a, 1.0), b)
    assert torch.allclose(blend(b, a, 0.25), torch.full_like(a, 0.25))
    assert torch.equal(blend(b, a, 0.0), a)


def test_rescaled_targets_of_a_larger_style_image_match_the_smaller_one() -> None:
    features = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    tiled = features.repeat(1, 1, 2, 2)  # the same texture over 4x the positions
    small, large = {"conv1_1": gram(features)}, {"conv1_1": gram(tiled)}
    assert torch.allclose(large["conv1_1"], 4 * small["conv1_1"], rtol=1e-5)
    assert torch.allclose(rescale_grams(large, (6, 10), (3, 5))["conv1_1"], small["conv1_1"], rtol=1e-5)
    assert rescale_grams(small, (3, 5), (3, 5)) is small


def test_grams_are_rescaled_by_each_layers_own_positions() -> None:
    # Pooling floors each halving: conv5_1 of 512x341 has 32 x 21 = 672 positions, where the
    # pixel ratio would say 682 (1.5 % off); conv1_1 has them all.
    from augment.engines.losses import layer_positions

    assert layer_positions("conv5_1", 341, 512) == 672 and layer_positions("conv1_1", 341, 512) == 341 * 512
    ones = {layer: torch.ones(1, 2, 2) for layer in ("conv1_1", "conv5_1")}
    scaled = rescale_grams(ones, (512, 512), (341, 512))  # a square style image, a 3:2 photo
    assert scaled["conv1_1"][0, 0, 0].item() == pytest.approx(341 / 512)
    assert scaled["conv5_1"][0, 0, 0].item() == pytest.approx(672 / 1024)


def test_mixed_targets_are_the_weighted_sum() -> None:
    first, second = {"l": torch.ones(1, 2, 2)}, {"l": torch.full((1, 2, 2), 3.0)}
    assert torch.allclose(mix_grams(first, second, 0.25)["l"], torch.full((1, 2, 2), 1.5))
