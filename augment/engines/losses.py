"""The paper's loss functions, on batched tensors ``[B, C, H, W]``.

Every function returns one value per image (shape ``[B]``) so a batch of images can be
optimised together with each image's loss kept apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision activations up to fp32 for the sums; fp32/fp64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def per_image_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for each image of a batch, one product per image rather than one bmm.

    A batched product rounds differently depending on the batch size; per image, an image's
    result does not depend on its neighbours. Where the convolutions are batch-invariant too
    (bf16 on a Zen 4 measured so; oneDNN does not promise it) the whole iteration is, and
    any split of the work gives the same bytes.
    """
    with torch.autocast(device_type=a.device.type, enabled=False):
        if a.is_cuda:
            # cuDNN's convolutions are not batch-invariant anyway, and one launch per image
            # was 225 small kernels per iteration at B=45.
            return torch.bmm(a, b)
        return torch.stack([x @ y for x, y in zip(a, b)])


_BMM_OUT_DTYPE: list[bool] = []  # whether this torch has bmm(..., out_dtype=) on CUDA; found once


def _gram_fp32(flat: torch.Tensor) -> torch.Tensor:
    """F·Fᵀ in fp32 of ``[B, C, N]`` activations of any dtype. bf16 on a GPU: tensor cores with
    fp32 output, no fp32 copy of the activations (bf16 products are exact in fp32, so only the
    order of the fp32 sums differs)."""
    if flat.is_cuda and flat.dtype == torch.bfloat16 and _BMM_OUT_DTYPE != [False]:
        try:
            result = torch.bmm(flat, flat.transpose(1, 2), out_dtype=torch.float32)
            _BMM_OUT_DTYPE[:] = [True]
            return result
        except (TypeError, RuntimeError):
            _BMM_OUT_DTYPE[:] = [False]
    flat = _fp32(flat)
    return per_image_matmul(flat, flat.transpose(1, 2))


def content_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """J_content = 1/(4·nH·nW·nC) · Σ (a_C − a_G)²  (seed, "Content Cost Function"), in fp32."""
    _, c, h, w = generated.shape
    return (_fp32(generated) - _fp32(target)).pow(2).sum(dim=(1, 2, 3)) / (4.0 * c * h * w)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix F·Fᵀ of the unrolled activations, ``[B, C, C]``, unnormalised as in the paper.

    Computed in fp32 whatever the feature dtype (Gram entries are sums over H·W products and
    overflow fp16), with autocast off so the product itself is not cast back down.
    """
    b, c, h, w = features.shape
    return _gram_fp32(features.reshape(b, c, h * w))


def mix_grams(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], mix: float) -> dict[str, torch.Tensor]:
    """Style targets for a blend of two styles: ``mix`` of the second's Gram matrices."""
    return {layer: (1.0 - mix) * first[layer] + mix * second[layer] for layer in first}


def layer_positions(layer: str, height: int, width: int) -> int:
    """H·W of a VGG19 layer's activations for an input of this size: each 2x2 pooling before
    it (convB_N has B−1) floors the halving, so conv5 of 512×341 has 32·21 = 672 positions,
    not the 682 the pixel ratio would give."""
    h, w = height, width
    for _ in range(int(layer[4]) - 1 if layer.startswith("conv") else 0):
        h, w = h // 2, w // 2
    return h * w


def rescale_grams(
    grams: dict[str, torch.Tensor], style_shape: tuple[int, int], image_shape: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Gram targets of a style image (height, width) for an image of another size. A Gram
    matrix sums over a layer's positions, so it grows with the image; scaled by the ratio of
    each layer's own positions, a style's targets mean the same for any content size, aspect
    ratio or --style-scale."""
    if tuple(style_shape) == tuple(image_shape):
        return grams
    return {
        layer: g * (layer_positions(layer, *image_shape) / layer_positions(layer, *style_shape))
        for layer, g in grams.items()
    }


def style_layer_loss(gram_generated: torch.Tensor, gram_target: torch.Tensor, hw: int) -> torch.Tensor:
    """J_style^[l] = 1/(4·nC²·(nH·nW)²) · Σ_ij (G_S − G_G)²  (seed, "Style cost function").

    Dividing by (nH·nW)² rather than by the image size keeps each layer's term on a comparable
    scale, so equal λ per layer means roughly equal influence.
    """
    c = gram_generated.shape[-1]
    return (gram_generated - gram_target).pow(2).sum(dim=(1, 2)) / (4.0 * c * c * hw * hw)


class _GramLoss(torch.autograd.Function):
    """J_style^[l] from the activations in one step, with a hand-written backward.

    d/dF Σ(F·Fᵀ − T)² = 4·(F·Fᵀ − T)·F for a symmetric T: one batched product, where autograd
    through ``gram`` takes two and a sum (measured ~15% of a bf16 iteration at conv1_1).
    """

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, c, h, w = features.shape
        diff = _gram_fp32(features.reshape(b, c, h * w)) - target
        norm = 4.0 * c * c * (h * w) ** 2
        ctx.save_for_backward(features, diff)  # not the fp32 copy: half the memory when half
        ctx.norm, ctx.shape = norm, features.shape
        return diff.pow(2).sum(dim=(1, 2)) / norm

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        features, diff = ctx.saved_tensors
        b, c, h, w = features.shape
        scaled = diff * ((4.0 / ctx.norm) * grad_out.view(-1, 1, 1))
        flat = features.reshape(b, c, h * w)
        if features.dtype == torch.bfloat16:
            # bf16 inputs, fp32 accumulation: the result is rounded to bf16 anyway. Measured:
            # relative error 0.24% against fp64 maths, vs 0.17% for an fp32 product rounded to
            # bf16; a bf16 iteration 16% faster (CPU). Not fp16: ``scaled`` (~1e-8) underflows.
            return per_image_matmul(scaled.to(torch.bfloat16), flat).reshape(ctx.shape), None
        return per_image_matmul(scaled, _fp32(flat)).reshape(ctx.shape).to(features.dtype), None


def style_loss(
    features: Mapping[str, torch.Tensor],
    target_grams: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float | torch.Tensor],
) -> torch.Tensor:
    """J_style = Σ_l λ_l · J_style^[l]; target Grams are ``[B, C, C]`` or ``[1, C, C]``, each
    λ_l a number or one weight per image (``[B]``)."""
    total: torch.Tensor | None = None
    for layer, weight in layer_weights.items():
        f = features[layer]
        target = target_grams[layer].expand(f.shape[0], -1, -1)
        term = weight * _GramLoss.apply(f, target)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no style layers")
    return total


class _UnitL1Gradient(torch.autograd.Function):
    """Identity forward; backward scales each image's incoming gradient to unit L1 norm times
    ``weight``. The incoming gradient is weight·∂J/∂F, so the result is weight·∂J/∂F / |∂J/∂F|₁:
    neural-style's -normalize_gradients (its loss modules divide their own gradient by its L1
    norm, plus 1e-8, before the strength multiplies it)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        weight = weight.to(torch.float32).view(-1, 1, 1, 1)
        norm = grad.float().abs().sum(dim=(1, 2, 3), keepdim=True)
        # |incoming|₁ = weight·|∂J/∂F|₁; the 1e-8 is neural-style's, on |∂J/∂F|₁.
        scale = weight / (norm + 1e-8 * weight).clamp_min(1e-30)
        return (grad.float() * scale).to(grad.dtype), None


def unit_l1_gradient(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``features`` unchanged, with the gradient of the loss term computed from them rescaled
    to ``weight`` (per image, ``[B]``) times unit L1 norm."""
    return _UnitL1Gradient.apply(features, weight)


def total_variation(image: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Σ_{i,j,k} ((y[i,j+1,k] − y[i,j,k])² + (y[i+1,j,k] − y[i,j,k])²)^β, per image.

    The exponent applies to each pixel's term inside the sum, as the paper's formula writes it
    (its prose says the whole sum is raised to β; we follow the formula, as the Keras example
    the paper draws on does). Only pixels with both a right and a lower neighbour contribute.
    ``beta`` is a number or one exponent per image (``[B]``).
    """
    image = _fp32(image)
    dx = image[:, :, :-1, 1:] - image[:, :, :-1, :-1]
    dy = image[:, :, 1:, :-1] - image[:, :, :-1, :-1]
    per_pixel = dx.pow(2) + dy.pow(2)
    beta = torch.as_tensor(beta, dtype=per_pixel.dtype, device=per_pixel.device).expand(image.shape[0])
    # d/ds s^β is infinite at s = 0 for β < 1: a flat patch would turn the gradient to NaN.
    floor = torch.where(beta < 1.0, 1e-12, 0.0).view(-1, 1, 1, 1)
    return torch.maximum(per_pixel, floor).pow(beta.view(-1, 1, 1, 1)).sum(dim=(1, 2, 3))
