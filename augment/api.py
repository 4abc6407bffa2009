"""The Python API for notebooks and pipeline steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .config import RunConfig, build_config
from .engines.precision import resolve_precision, use_channels_last
from .engines.transfer import Finish, transfer
from .errors import ConfigError
from .io.images import load_rgb, resize_long_side, resize_to, to_image, to_rgb, to_tensor
from .io.styles import load_style_bank, safe_name
from .io.weights import resolve_vgg19
from .pipeline.devices import resolve_device
from .pipeline.job import run as _run
from .pipeline.networks import build_vgg19
from .pipeline.options import gatys_options, stage_iterations
from .pipeline.progress import ProgressFn
from .pipeline.summary import RunSummary


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


StyleInput = Image.Image | str | Path


class Stylizer:
    """Style transfer with the network loaded once, for many images: ``stylizer(image)``
    returns the image repainted in one of its styles (drawn with its seed, or named). A
    torchvision-style transform, PIL image in and out, for augmentation while training:

    >>> stylize = augment.Stylizer("styles/", size=256, iterations=100)
    >>> transform = torchvision.transforms.Compose([stylize, torchvision.transforms.ToTensor()])

    ``styles``: a folder (its styles.yaml names apply), an image path, a PIL image, or a list
    of images or paths. ``options`` are RunConfig fields (size, iterations, style_weight,
    scales, precision, preserve_color, alpha, style_scale, upscale, ...). Each image is made as
    `augment run` makes it: the same engine path (augment/engines/transfer.py).
    """

    def __init__(
        self,
        styles: StyleInput | list[StyleInput],
        *,
        weights: str | None = None,
        device: str = "auto",
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.config = RunConfig(weights=weights, device=device, seed=seed, **options)
        for name in ("alpha", "style_weight"):
            if isinstance(getattr(self.config, name), tuple):
                raise ConfigError(f"{name}: a Stylizer takes one number, not a range")
        if self.config.blend:
            raise ConfigError("blend: a Stylizer repaints in one style at a time (augment run mixes two)")
        self.styles = _style_images(styles, self.config.max_pixels)
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)
        self.options = gatys_options(self.config)
        config = self.config
        resolved = resolve_vgg19(config.weights, flavour=config.weights_flavour, download=config.download)
        self.weights = resolved.identity
        self.channels_last = use_channels_last(self.device, self.precision)
        self.net = build_vgg19(resolved, self.options.layers, pooling=self.config.pooling, device=self.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def __call__(self, image: StyleInput, style: str | None = None) -> Image.Image:
        """``image`` repainted in ``style`` (a name from ``self.styles``), or in one drawn at
        random; an RGB image whose long side is ``size``. The draw uses torch's generator, which
        a DataLoader seeds apart in each worker and epoch (``torch.manual_seed`` repeats it)."""
        if style is None:
            names = sorted(self.styles)
            style = names[int(torch.randint(len(names), ()))]
        elif style not in self.styles:
            raise ConfigError(f"unknown style {style!r}: known are {', '.join(sorted(self.styles))}")
        config = self.config
        content = to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)
        shapes = config.stage_shapes(*content.size)  # as in run: the same images
        contents = [to_tensor(resize_to(content, shape)).to(self.device) for shape in shapes]
        sizes = [max(shape) for shape in shapes]
        style_image = self.styles[style]  # at --style-scale times the content's size, as in run
        styles = [[to_tensor(resize_long_side(style_image, config.style_size(size))).to(self.device)] for size in sizes]
        result = transfer(
            self.net, contents, styles, self.options, stage_iterations(config), precision=self.precision,
            channels_last=self.channels_last, seed=config.seed,
            finish=Finish(preserve_color=config.preserve_color, alpha=float(config.alpha)),
        )  # fmt: skip
        return to_image(result.image)

    def __repr__(self) -> str:
        return (f"Stylizer(styles={sorted(self.styles)}, size={self.config.size}, "
                f"iterations={self.config.iterations}, weights={self.weights!r}, device={self.device})")  # fmt: skip


def _style_images(styles: StyleInput | list[StyleInput], max_pixels: int) -> dict[str, Image.Image]:
    """Name -> style image, from a folder, an image, a path or a list of them."""
    if isinstance(styles, (str, Path)) and Path(styles).is_dir():
        return {s.name: load_rgb(s.path, max_pixels=max_pixels) for s in load_style_bank(styles, max_pixels=max_pixels)}
    found: dict[str, Image.Image] = {}
    for i, item in enumerate(styles if isinstance(styles, list) else [styles]):
        if isinstance(item, Image.Image):
            found[f"style{i}"] = to_rgb(item)
        else:
            found[safe_name(Path(item).stem)] = load_rgb(item, max_pixels=max_pixels)
    if not found:
        raise ConfigError("no styles given")
    return found


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
    Loads the network on every call: for many images, make a ``Stylizer`` once.

    ``options`` are RunConfig fields (size, iterations, style_weight, scales, precision,
    preserve_color, alpha, style_scale, ...). The image is made as `augment run` makes it:
    the same engine path (augment/engines/transfer.py), the same pixels for the same settings.
    """
    return Stylizer(style, weights=weights, device=device, seed=seed, **options)(content)
