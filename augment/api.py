"""The Python API for notebooks and pipeline steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .config import RunConfig, build_config
from .drivers import resolve_device
from .engines.precision import resolve_precision, use_channels_last
from .engines.transfer import Finish
from .engines.transfer import stylize as _stylize
from .errors import ConfigError
from .images import load_rgb, resize_long_side, to_image, to_rgb, to_tensor
from .parallel import run as _run
from .progress import ProgressFn
from .runner import RunSummary
from .weights import build_vgg19, resolve_vgg19


def run(
    config: RunConfig | str | Path | None = None,
    *,
    progress: ProgressFn | None = None,
    **options: Any,
) -> RunSummary:
    """Run a job. ``config`` is a RunConfig or a run.yaml path; keyword options override it.

    >>> augment.run(manifest="data/manifest.csv", styles="styles/", per_image=3, out="aug")
    """
    if isinstance(config, RunConfig):
        config = dataclasses.replace(config, **options)
    else:
        config = build_config(config, **options)
    return _run(config, progress=progress)


def stylize(
    content: Image.Image | str | Path,
    style: Image.Image | str | Path,
    *,
    weights: str | None = None,
    device: str = "auto",
    seed: int = 0,
    **options: Any,
) -> Image.Image:
    """Repaint one image in one style; returns an RGB image whose long side is ``size``.

    ``options`` are RunConfig fields (size, iterations, style_weight, scales, precision,
    preserve_color, alpha, style_scale, ...). The image is made as `augment run` makes it:
    the same engine path (augment/engines/transfer.py), the same pixels for the same settings.
    """
    config = RunConfig(weights=weights, device=device, seed=seed, **options)
    if isinstance(config.alpha, tuple):
        raise ConfigError("alpha: augment.stylize takes one number, not a range")
    content_img = to_rgb(content) if isinstance(content, Image.Image) else load_rgb(content)
    style_img = to_rgb(style) if isinstance(style, Image.Image) else load_rgb(style)
    target = resolve_device(config.device)
    precision = resolve_precision(config.precision, target)
    gatys = config.gatys_options()
    resolved = resolve_vgg19(config.weights, flavour=config.weights_flavour, download=config.download)
    net = build_vgg19(resolved, gatys.layers, pooling=config.pooling, device=target)
    channels_last = use_channels_last(target, precision)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    sizes = config.stage_sizes()
    contents = [to_tensor(resize_long_side(content_img, size)).to(target) for size in sizes]
    styles = [[to_tensor(resize_long_side(style_img, config.style_size(size))).to(target)] for size in sizes]
    result = _stylize(
        net, contents, styles, gatys, config.stage_iterations, precision=precision, channels_last=channels_last,
        finish=Finish(preserve_color=config.preserve_color, alpha=float(config.alpha)), seed=seed,
    )  # fmt: skip
    return to_image(result.image)
