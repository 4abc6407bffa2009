"""How many images fit in one pass: an estimate from layer shapes or a measurement, and the OOM
back-off."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .losses import layer_positions
from .vgg import LAYER_CHANNELS, VGG19Features
from .weighting import DEFAULT_STYLE_LAYERS

MAX_AUTO_BATCH = 64
CPU_BATCH = 4  # measured: bf16 at 128 px, 4 per pass ran 1.36x faster per image than 1


def bytes_per_image(
    net: VGG19Features,
    height: int,
    width: int,
    *,
    history_size: int,
    half: bool,
    style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS,
    content_layer: str = "conv4_2",
) -> int:
    """Memory one image needs while it is optimised: every activation kept for the backward
    pass (and its gradient), the optimiser's state (L-BFGS history of 2·m image-sized
    vectors, previous image and gradient, the image itself and the best image so far), and
    its Gram matrices in fp32 (target, generated and gradient: C² each, whatever the size,
    so they dominate below about 64 px), and at the content layer the target and the loss's
    four temporaries (difference, square, their gradients) in fp32."""
    element = 2 if half else 4
    h, w, channels, activations = height, width, 3, 0
    for module in net.features:
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            h, w = h // 2, w // 2
        activations += channels * h * w
    pixels = 3 * height * width
    grams = 3 * sum(LAYER_CHANNELS[layer] ** 2 for layer in style_layers)
    content = 5 * LAYER_CHANNELS[content_layer] * layer_positions(content_layer, height, width)
    return int(2 * activations * element + ((2 * history_size + 7) * pixels + grams + content) * 4)


def auto_batch_size(free_bytes: int, per_image: int, *, fraction: float = 0.7) -> int:
    """Images that fit in ``fraction`` of the free memory, between 1 and MAX_AUTO_BATCH."""
    return max(1, min(MAX_AUTO_BATCH, int(free_bytes * fraction) // max(1, per_image)))


def next_batch_size(current: int) -> int:
    """After an out-of-memory error: half as many (0 means even one image does not fit)."""
    return current // 2


def measured_bytes(run_one: Callable[[], object], device: torch.device) -> int:
    """Peak GPU memory ``run_one`` allocates above what was already allocated (CUDA only)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_one()
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - before)
