"""Each loss against values computed by hand on small tensors."""

from __future__ import annotations

import pytest
import torch

from augment.engines.losses import content_loss, gram, style_layer_loss, style_loss, total_variation


def test_content_loss_matches_the_seed_formula() -> None:
    a_c = torch.zeros(1, 2, 1, 2)
    a_g = torch.tensor([[[[1.0, 2.0]], [[0.0, 3.0]]]])
    # Σ(a_C − a_G)² = 1 + 4 + 0 + 9 = 14; 4·nH·nW·nC = 4·1·2·2 = 16
    assert content_loss(a_g, a_c).item() == pytest.approx(14 / 16)


def test_gram_is_f_times_f_transposed() -> None:
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # C=2, H=1, W=2
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]])
    assert torch.equal(gram(f), expected)


def test_style_layer_loss_matches_the_seed_formula() -> None:
    g_s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    g_g = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])
    # Σ(G_S − G_G)² = 4 + 1 + 1 + 0 = 6; 4·nC²·(nH·nW)² with nC=2, nH·nW=3: 4·4·9 = 144
    assert style_layer_loss(g_g, g_s, hw=3).item() == pytest.approx(6 / 144)


def test_style_loss_sums_weighted_layers() -> None:
    f1 = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    f2 = torch.tensor([[[[1.0]]]])
    target = {"conv1_1": torch.zeros(1, 2, 2), "conv2_1": torch.zeros(1, 1, 1)}
    # layer 1: Σ gram² = 25+121+121+625 = 892, /(4·4·4) = 13.9375; layer 2: 1/(4·1·1) = 0.25
    loss = style_loss({"conv1_1": f1, "conv2_1": f2}, target, {"conv1_1": 0.5, "conv2_1": 2.0})
    assert loss.item() == pytest.approx(0.5 * 892 / 64 + 2.0 * 0.25)


def test_total_variation_beta_one() -> None:
    y = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # Only pixel (0,0) has both neighbours: (1−0)² + (2−0)² = 5
    assert total_variation(y, beta=1.0).item() == pytest.approx(5.0)


def test_total_variation_exponent_is_inside_the_sum() -> None:
    y = torch.tensor([[[[0.0, 1.0, 1.0], [2.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]])
    # per-pixel terms: (0,0): 1+4=5; (0,1): 0+9=9; (1,0): 4+4=8; (1,1): 16+16=32
    terms = [5.0, 9.0, 8.0, 32.0]
    assert total_variation(y, beta=1.25).item() == pytest.approx(sum(t**1.25 for t in terms), rel=1e-6)
    # Not the whole sum raised to β, as the seed's prose would have it.
    assert total_variation(y, beta=1.25).item() != pytest.approx(sum(terms) ** 1.25)


def test_total_variation_gradient_is_finite_on_flat_images_for_beta_below_one() -> None:
    y = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    total_variation(y, beta=0.5).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_losses_are_per_image() -> None:
    a = torch.rand(3, 4, 5, 5)
    per_image = content_loss(a, torch.zeros_like(a))
    assert per_image.shape == (3,)
    assert per_image[1].item() == pytest.approx(content_loss(a[1:2], torch.zeros(1, 4, 5, 5)).item())


def test_style_loss_gradient_matches_autograd_through_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = gram(torch.rand(1, 4, 3, 5, generator=g, dtype=torch.float64))
    weights = {"conv1_1": 0.7}
    fused = style_loss({"conv1_1": feats}, {"conv1_1": target}, weights)
    (fused_grad,) = torch.autograd.grad(fused.sum(), feats)
    plain = 0.7 * style_layer_loss(gram(feats), target, hw=15)
    (plain_grad,) = torch.autograd.grad(plain.sum(), feats)
    assert torch.allclose(fused, plain) and torch.allclose(fused_grad, plain_grad)
    assert torch.autograd.gradcheck(lambda f: style_loss({"conv1_1": f}, {"conv1_1": target}, weights), (feats,))


def test_style_loss_gradient_in_bf16_is_within_rounding_of_exact_maths() -> None:
    # The bf16 backward multiplies in bf16 with fp32 accumulation. Against fp64 maths on the
    # same bf16 activations it measured 0.24% relative error (an fp32 product rounded to bf16:
    # 0.17%); an error in the formula would be of order 100%.
    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(2, 64, 24, 20, generator=g)).to(torch.bfloat16)
    exact = feats.double().flatten(2)
    target = exact @ exact.transpose(1, 2) * (1 + 0.3 * torch.rand(2, 64, 64, generator=g, dtype=torch.float64))
    target = (target + target.transpose(1, 2)) / 2
    x = feats.clone().requires_grad_(True)
    style_loss({"l": x}, {"l": target.float()}, {"l": 1.0}).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    diff = exact @ exact.transpose(1, 2) - target
    reference = (4.0 / (4.0 * 64 * 64 * (24 * 20) ** 2)) * (diff @ exact)
    error = (x.grad.double().flatten(2) - reference).norm() / reference.norm()
    assert error < 0.005, error
