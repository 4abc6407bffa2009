"""Pixel-space finishing of a stylized image: colour preservation and blending back toward
the source. Images are ``[B, 3, H, W]`` in [0, 1]."""

from __future__ import annotations

import torch

# RGB -> YIQ (NTSC). Y carries luminance; I and Q carry colour.
_RGB_TO_YIQ = torch.tensor([
    [0.299, 0.587, 0.114],
    [0.595716, -0.274453, -0.321263],
    [0.211456, -0.522591, 0.311135],
])  # fmt: skip
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _convert(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance-only transfer (Gatys et al. 2016, "Preserving colour in neural artistic style
    transfer"): the stylized image's luminance with the source's colour channels."""
    y = _convert(stylized, _RGB_TO_YIQ)[:, :1]
    iq = _convert(content, _RGB_TO_YIQ)[:, 1:]
    return _convert(torch.cat([y, iq], dim=1), _YIQ_TO_RGB).clamp(0.0, 1.0)


def blend(stylized: torch.Tensor, content: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha`` of the stylized image, the rest of the source (style augmentation's strength)."""
    if alpha >= 1.0:
        return stylized
    return (alpha * stylized + (1.0 - alpha) * content).clamp(0.0, 1.0)
