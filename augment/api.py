"""The Python API for notebooks and pipeline steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from PIL import Image

from .config import RunConfig, build_config
from .engines.gatys import style_targets
from .engines.gatys import stylize as _stylize
from .images import load_rgb, resize_long_side, to_image, to_tensor
from .parallel import run as _run
from .runner import ProgressFn, RunSummary, resolve_device
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

    ``options`` are RunConfig fields (size, iterations, content_weight, style_weight, ...).
    """
    config = RunConfig(weights=weights, device=device, seed=seed, **options)
    content_img = content if isinstance(content, Image.Image) else load_rgb(content)
    style_img = style if isinstance(style, Image.Image) else load_rgb(style)
    target = resolve_device(config.device)
    gatys = config.gatys_options()
    net = build_vgg19(
        resolve_vgg19(config.weights, flavour=config.weights_flavour, download=config.download),
        gatys.layers, pooling=config.pooling, device=target,
    )  # fmt: skip
    content_t = to_tensor(resize_long_side(content_img.convert("RGB"), config.size)).to(target)
    style_t = to_tensor(resize_long_side(style_img.convert("RGB"), config.size)).to(target)
    result = _stylize(net, content_t, style_targets(net, style_t, gatys), gatys, seed=seed)
    return to_image(result.image)
