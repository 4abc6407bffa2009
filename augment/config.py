"""RunConfig: every option of ``augment run``, settable from YAML and overridden by flags.

Each field's help text lives here once; the CLI's ``--help`` and docs/config.md use it.
Precedence: defaults < ``--config run.yaml`` < command-line flags.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .engines.googlenet import INCEPTION_LAYERS
from .engines.options import Init, Optimizer
from .engines.precision import Precision
from .engines.vgg import CONV_LAYERS, Flavour, Pooling
from .engines.weighting import ALPHA, DEFAULT_STYLE_LAYERS, DEFAULTS, NORMALIZED_DEFAULTS, parse_layer_weights
from .errors import ConfigError
from .io.images import DEFAULT_MAX_PIXELS, FORMAT_EXT, bucket_shape, fit_long_side, shape_step, snap_to_grid
from .io.yamlfile import read_mapping


class Engine(str, Enum):
    GATYS = "gatys"
    DREAM = "dream"
    GATYS_DREAM = "gatys+dream"


class Assignment(str, Enum):
    RANDOM = "random"
    CYCLE = "cycle"
    ALL = "all"


Spread = float | tuple[float, float]  # a number, or a range a task's value is sampled from


class WeightsFlavour(str, Enum):
    AUTO = "auto"
    TORCHVISION = "torchvision"
    CAFFE = "caffe"


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _per_flavour(name: str) -> str:
    """The default of a loss weight for each flavour, as --help and docs/config.md show it."""
    values = (getattr(DEFAULTS[Flavour.TORCHVISION], name), getattr(DEFAULTS[Flavour.CAFFE], name),
              getattr(NORMALIZED_DEFAULTS, name))  # fmt: skip
    return "torchvision {:.4g}, caffe {:.4g}, with --normalize-gradients {:.4g}".format(*values)


@dataclass(frozen=True)
class RunConfig:
    # Inputs and outputs
    manifest: str | None = _opt(None, "CSV manifest (path,label[,split]) or an ImageFolder directory.")
    styles: str | None = _opt(None, "Folder of style images (optional styles.yaml beside them).", short="-s")
    out: str = _opt("augmented", "Output folder; created if missing.", short="-o")
    per_image: int = _opt(1, "Stylized variants per source image (distinct styles while the bank lasts).", short="-k")
    limit: int | None = _opt(None, "Only the first N rows of the manifest (or of the folder listing): a quick trial.")
    format: str | tuple[str, ...] = _opt(  # YAML may give a list: [jpg, webdataset]
        "png",
        "Image encoding: png, jpg or webp (also inside --webdataset shards). The old spelling jpg,webdataset "
        "still means --format jpg --webdataset.",
    )
    webdataset: bool = _opt(
        False, "Also write the dataset as webdataset tar shards, shuffled by --seed, to OUT/webdataset/."
    )
    shard_size: int = _opt(
        1000, "Samples per webdataset tar shard (--webdataset); the last shard of a split has the rest."
    )
    images: bool = _opt(
        True,
        "Keep the image tree OUT/images/. --webdataset --no-images: only the shards stay once a run finishes (a "
        "re-run then makes every image again).",
    )
    quality: int = _opt(95, "JPEG/WebP quality (1-100).")
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "Refuse images larger than this many pixels (decompression bombs).")
    # What goes into the dataset (docs/training.md)
    include_originals: bool = _opt(
        False, "Also put each source image in the output, re-encoded at --size (style 'original')."
    )
    splits: tuple[str, ...] = _opt(
        ("train",),
        "With a split column: the splits to stylize, comma-separated. Rows of other splits are copied with "
        "--include-originals, else left out.",
    )
    balance: bool = _opt(
        False, "More variants for smaller classes so every class ends with as many images as the largest."
    )
    target_per_class: int | None = _opt(None, "Images per class to end with (originals + variants); implies --balance.")
    style_assignment: Assignment = _opt(
        Assignment.RANDOM,
        "random (weighted draw, distinct per image), "
        "cycle (even use of every style over the dataset) "
        "or all (every style for every image).",
    )
    alpha: Spread = _opt(
        1.0, "Blend of the stylized image with its source: 1 all style, 0.5 half. A range lo:hi is sampled per image."
    )
    blend: Spread = _opt(
        0.0, "Weight of a second style mixed into every variant (0: none). A range lo:hi is sampled per image."
    )
    preserve_color: bool = _opt(False, "Keep the source's colours: only the luminance takes the style.")
    style_scale: float = _opt(1.0, "Size of the style image relative to --size: smaller gives finer brush strokes.")
    # The method
    size: int = _opt(512, "Long side of the output in pixels; aspect kept within --shape-step.")
    upscale: bool = _opt(True, "Enlarge images smaller than --size to it; --no-upscale keeps them at their own size.")
    shape_step: int = _opt(
        0,
        "Short sides rounded to multiples of N px, so that near aspect ratios share a batch. 0: --size/32 as a "
        "power of two (16 at 512: aspect moved 3.1% at most at 2:1); 1: exact.",
    )
    iterations: int = _opt(300, "Optimiser iterations per image (one VGG19 forward+backward each).")
    content_weight: float | None = _opt(None, f"α, weight of the content loss. Default: {ALPHA:g}.")
    style_weight: Spread | None = _opt(
        None,
        "β, weight of the style loss. Default: per weights flavour, converted from published settings "
        f"({_per_flavour('style_weight')}; docs/method.md). A range lo:hi (e.g. 1e3:1e4) is sampled per image, "
        "log-uniformly.",
    )
    tv_weight: float | None = _opt(
        None,
        f"λ_TV, weight of the total-variation regulariser. Default: per weights flavour ({_per_flavour('tv_weight')}).",
    )
    tv_beta: float = _opt(1.0, "Exponent inside the total-variation sum (default λ_TV is for 1).")
    content_layer: str = _opt("conv4_2", "VGG19 layer for the content loss.")
    style_layers: tuple[str, ...] = _opt(DEFAULT_STYLE_LAYERS, "VGG19 layers for the style loss, comma-separated.")
    style_layer_weights: tuple[float, ...] | None = _opt(
        None,
        "λ_l, one weight per style layer, comma-separated. Default: proportional to 1/channels², summing to 1 "
        "(equal with --normalize-gradients).",
    )
    normalize_gradients: bool = _opt(
        False,
        "Scale each loss term's gradient to unit L1 norm at its layer (neural-style's -normalize_gradients): the "
        "balance no longer depends on the weights' activation scale.",
    )
    pooling: Pooling = _opt(Pooling.MAX, "Pooling in VGG19: max or avg.")
    optimizer: Optimizer = _opt(Optimizer.LBFGS, "lbfgs (as in the paper) or adam.")
    learning_rate: float | None = _opt(None, "Step size; default 1.0 for lbfgs, 0.02 for adam.")
    init: Init = _opt(Init.CONTENT, "Start from the content image or from noise.")
    seed: int = _opt(0, "Random seed: style sampling and noise init.")
    scales: tuple[float, ...] = _opt(
        (0.5, 1.0),
        "Coarse-to-fine: fractions of --size run in turn, ending at 1 (1: full size only). The full size gets a "
        "quarter of --iterations.",
    )
    tol: float = _opt(
        0.0,
        "Stop an image early when its relative loss change stays under this for 3 iterations (0: always run "
        "--iterations).",
    )
    # Speed
    batch_size: int | None = _opt(None, "Images per VGG19 pass. Default: from free GPU memory; 4 on CPU.")
    precision: Precision = _opt(
        Precision.AUTO,
        "fp32, bf16 or fp16 convolutions (losses stay fp32). auto: bf16 where the device computes in it "
        "natively (GPUs of compute capability 8.0 or newer; CPUs with avx512_bf16 or AMX), else fp32.",
    )
    # Deep Dream (docs/dream.md)
    engine: Engine = _opt(
        Engine.GATYS,
        "gatys (style transfer), dream (Deep Dream; --styles optional) or gatys+dream (dream on top of the style).",
    )
    dream_layers: tuple[str, ...] = _opt(
        ("inception4c",),
        "Layers whose activations the dream amplifies: GoogLeNet inception3a..inception5b, or VGG19 convN_M. "
        "Comma-separated; variants draw from them like styles.",
    )
    octaves: int = _opt(4, "Dream octaves (fewer, with a note, when an image is too small for them).")
    octave_scale: float = _opt(1.4, "Size ratio between dream octaves.")
    dream_iterations: int = _opt(
        10, "Dream steps per octave (10, as the reference DeepDream code); --iterations is style transfer's."
    )
    dream_step: float = _opt(0.01, "Dream step size, in [0,1] pixel units per normalised gradient step.")
    jitter: int = _opt(16, "Random shift in pixels per dream step.")
    dream_blend: float = _opt(1.0, "Blend of the dream with its source image (1: all dream).")
    guide: bool = _opt(False, "Guided dream: pull activations toward a style image's instead of amplifying them.")
    dream_weights: str | None = _opt(
        None,
        "GoogLeNet weights: a state-dict path, or 'random'. Default: random with --weights random, else the hub "
        "cache, then a download.",
    )
    # Weights and device
    weights: str | None = _opt(
        None,
        "VGG19 weights: a state-dict path, or 'random' for smoke tests. Default: the torch hub cache, then a download.",
    )
    weights_flavour: WeightsFlavour = _opt(
        WeightsFlavour.AUTO, "Preprocessing of --weights: auto, torchvision, caffe (alone: Caffe's VGG19)."
    )
    download: bool = _opt(True, "Allow downloading weights when none are cached.")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N.")
    workers: int | None = _opt(
        None,
        "Local worker processes. Default: one per visible GPU; 1 on CPU (each of N CPU workers gets cores/N threads).",
    )
    devices: str | None = _opt(
        None, "Devices for the workers, comma-separated (cuda:0,cuda:1); default: every visible GPU."
    )
    shard: str | None = _opt(None, "K/N: run only shard K of N (tasks split by hash); then `augment merge OUT`.")
    ray: str | None = _opt(
        None, "Run on Ray, a task per shard: auto (the cluster `ray start` made), local, or its address."
    )
    shards: int | None = _opt(None, "With --ray: shards of the job. Default: 4 per GPU, else 2 per CPU.")
    shard_retries: int = _opt(2, "With --ray: reruns of a shard that failed or was lost.")
    shard_timeout: float | None = _opt(
        None, "With --ray: seconds a shard may run (once started) before it is stopped and rerun."
    )
    max_seconds: float | None = _opt(
        None, "Stop cleanly after this many seconds (exit 75: the next run resumes), for cron windows."
    )
    max_failures: str | int | None = _opt(  # YAML may give a number
        None, "Abort (exit 3) when more rows than this fail: N, or P% of the manifest's rows. Default: no limit."
    )
    keep_stale: bool = _opt(False, "Keep images whose source left the manifest (default: remove them, and only them).")
    check_content: bool = _opt(
        False, "Re-read every source and style to see whether it changed, instead of trusting an unchanged "
        "size, mtime, inode and ctime (docs/operations.md)."
    )  # fmt: skip
    # Messages (do not change pixels)
    quiet: bool = _opt(False, "No progress bar; warnings and errors only.", short="-q")
    log_level: str = _opt("info", "debug, info, warning or error.")

    def __post_init__(self) -> None:
        # Values from YAML or flags arrive as text ("0.5,1", "1e3:1e4", "png,webdataset"):
        # types checked, then parsed, then every value checked; the first problem is a ConfigError.
        _check_types(self)
        for name, value in _parsed(self).items():
            object.__setattr__(self, name, value)
        _check_layers(self)
        for ok, message in _checks(self):
            if not ok:
                raise ConfigError(message)

    def style_size(self, size: int) -> int:
        """Long side of the style image for a content image whose long side is ``size``."""
        return max(16, round(size * self.style_scale))

    def long_side(self, width: int, height: int) -> int:
        """The output's long side for an image of this size: --size, or its own if smaller
        with --no-upscale."""
        return self.size if self.upscale else min(self.size, max(width, height))

    def output_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) written for a source of this size: long side --size (or its own
        with --no-upscale, then on the --shape-step grid), the short side on the grid."""
        step = self.shape_step or shape_step(self.size)
        long_side = self.long_side(width, height)
        return bucket_shape(width, height, long_side if long_side == self.size else snap_to_grid(long_side, step), step)

    def stage_shapes(self, width: int, height: int) -> list[tuple[int, int]]:
        """(width, height) of each scale for a source of this size, lowest first, the output
        shape last; made from the output shape alone, so that images of one bucket share every
        stage's shape (and batch)."""
        w, h = self.output_shape(width, height)
        long_side = max(w, h)
        return [(w, h) if size == long_side else fit_long_side(w, h, size) for size in self.stage_sizes(long_side)]

    def stage_sizes(self, long_side: int | None = None) -> list[int]:
        """Long side of each scale, lowest first (at least 16 px, what VGG19 can pool), for
        an output of ``long_side`` (default --size)."""
        return [max(16, round((long_side or self.size) * scale)) for scale in self.scales]

    def to_dict(self) -> dict[str, Any]:
        """A new plain dict (enums as their values, tuples as lists): safe to dump as JSON/YAML."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
        return out


def parse_names(value: str | Iterable[str], option: str) -> tuple[str, ...]:
    """A comma-separated list ("a, b") or a list, as a tuple of its non-empty names."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if any(not isinstance(item, (str, int, float)) for item in items):  # a nested list: YAML's [[a]]
        raise ConfigError(f"{option}: expected names separated by commas, or a list of names")
    return tuple(str(item).strip() for item in items if str(item).strip())


def parse_scales(value: str | float | Iterable[float]) -> tuple[float, ...]:
    """--scales: "0.5,1", a number or a list; they must rise to 1."""
    try:
        if isinstance(value, str):
            scales = tuple(float(x) for x in value.split(",") if x.strip())
        elif isinstance(value, (int, float)):
            scales = (float(value),)
        else:
            scales = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ConfigError(f"scales: expected numbers separated by commas, e.g. 0.5,1 (got {value!r})") from None
    if not scales or scales[-1] != 1.0 or list(scales) != sorted(set(scales)) or scales[0] <= 0:
        raise ConfigError(f"scales must rise to 1, e.g. 0.5,1 (got {','.join(map(str, scales))})")
    return scales


def parse_format(value: str | Iterable[str]) -> tuple[str, bool]:
    """--format: the image format, and whether it carried the old spelling of --webdataset
    (``jpg,webdataset``, or ``webdataset`` alone for png), kept so that older configs still run."""
    formats = list(parse_names(value, "format"))
    webdataset = "webdataset" in formats
    formats = [f for f in formats if f != "webdataset"]
    return (formats[0] if len(formats) == 1 else "png" if not formats else ",".join(formats)), webdataset


_ENUMS = {"pooling": Pooling, "optimizer": Optimizer, "init": Init, "weights_flavour": WeightsFlavour,
          "precision": Precision, "engine": Engine, "style_assignment": Assignment}  # fmt: skip


_SCALARS = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


def _check_types(c: RunConfig) -> None:
    """A YAML value of the wrong type (out: 123, shard: 1, styles: [a, b]) names its option."""
    for f in fields(c):
        hint = _HINTS[f.name]
        kinds = [k for k in typing.get_args(hint) or (hint,) if k is not type(None)]
        if len(kinds) != 1 or kinds[0] not in _SCALARS:
            continue  # enums, lists and ranges are parsed (and checked) below
        kind, value = kinds[0], getattr(c, f.name)
        if value is None and type(None) in typing.get_args(hint):
            continue
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is str:
            ok = isinstance(value, (str, Path))
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{f.name}: expected {_SCALARS[kind]}, got {value!r}")


def _parsed(c: RunConfig) -> dict[str, Any]:
    """Every field given as text or a list, in its typed form."""
    values: dict[str, Any] = {}
    try:
        values.update({name: kind(getattr(c, name)) for name, kind in _ENUMS.items()})
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for name in ("style_weight", "alpha", "blend"):
        if getattr(c, name) is not None:  # style_weight None: the flavour's default
            values[name] = _spread(name, getattr(c, name))
    values["splits"] = tuple(s.lower() for s in parse_names(c.splits, "splits"))  # split names are read lowercase
    values["format"], webdataset = parse_format(c.format)
    values["webdataset"] = c.webdataset or webdataset
    values["balance"] = c.balance or c.target_per_class is not None
    values["style_layers"] = parse_names(c.style_layers, "style_layers")
    if c.style_layer_weights is not None:
        try:
            values["style_layer_weights"] = parse_layer_weights(c.style_layer_weights, len(values["style_layers"]))
        except ValueError as err:
            raise ConfigError(f"style_layer_weights: {err}") from None
    values["dream_layers"] = parse_names(c.dream_layers, "dream_layers")
    values["scales"] = parse_scales(c.scales)
    for name in ("manifest", "styles", "out", "weights", "dream_weights"):
        if isinstance(getattr(c, name), Path):
            values[name] = str(getattr(c, name))
    return values


def _check_layers(c: RunConfig) -> None:
    """Every layer name known, with a did-you-mean; dream layers all of one network."""
    dream_conv = [layer for layer in c.dream_layers if not layer.startswith("inception")]
    if not c.dream_layers or (dream_conv and len(dream_conv) != len(c.dream_layers)):
        raise ConfigError("dream_layers: all GoogLeNet inception layers or all VGG19 conv layers")
    for layer in c.dream_layers:
        if layer not in INCEPTION_LAYERS and layer not in CONV_LAYERS:
            hint = difflib.get_close_matches(layer, INCEPTION_LAYERS + CONV_LAYERS, n=1)
            raise ConfigError(f"unknown dream layer {layer!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    for layer in (c.content_layer, *c.style_layers):
        if layer not in CONV_LAYERS:
            hint = difflib.get_close_matches(layer, CONV_LAYERS, n=1)
            raise ConfigError(f"unknown layer {layer!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if c.format not in FORMAT_EXT:
        raise ConfigError(f"unknown format {c.format!r}; use one of {', '.join(FORMAT_EXT)}")


def _checks(c: RunConfig) -> list[tuple[bool, str]]:
    """(holds, message if not) for every value with a range."""
    return [
        (c.per_image >= 1, "per_image must be at least 1"),
        (c.size >= 16, "size must be at least 16 pixels"),
        (c.iterations >= 0, "iterations must be >= 0"),
        (1 <= c.quality <= 100, "quality must be between 1 and 100"),
        (c.limit is None or c.limit >= 1, "limit must be at least 1"),
        (c.shard_size >= 1, "shard_size must be at least 1"),
        (c.images or c.webdataset, "--no-images (images: false) needs --webdataset, or no image would be kept"),
        (c.batch_size is None or c.batch_size >= 1, "batch_size must be at least 1"),
        (c.workers is None or c.workers >= 1, "workers must be at least 1"),
        *_ray_checks(c),
        (c.max_seconds is None or c.max_seconds > 0, "max_seconds must be > 0"),
        (
            c.max_failures is None or re.fullmatch(r"\d+(\.\d+)?%|\d+", str(c.max_failures).strip()) is not None,
            "max_failures takes N or P%, e.g. 10 or 5%",
        ),
        (c.octaves >= 1 and c.octave_scale > 1.0, "octaves must be >= 1 and octave_scale > 1"),
        (0.0 <= c.dream_blend <= 1.0, "dream_blend must be between 0 and 1"),
        (
            c.jitter >= 0 and c.dream_step > 0 and c.dream_iterations >= 0,
            "jitter >= 0, dream_step > 0, dream_iterations >= 0",
        ),
        (c.tol >= 0, "tol must be >= 0"),
        (
            all(w is None or w >= 0 for w in (c.content_weight, low(c.style_weight), c.tv_weight)),
            "loss weights must be >= 0",
        ),
        (c.learning_rate is None or c.learning_rate > 0, "learning_rate must be > 0"),
        (0.0 <= low(c.alpha) and high(c.alpha) <= 1.0, "alpha must be between 0 and 1"),
        (0.0 <= low(c.blend) and high(c.blend) < 1.0, "blend must be at least 0 and under 1"),
        (c.style_scale > 0, "style_scale must be > 0"),
        (c.shape_step >= 0, "shape_step must be >= 0 (0: automatic, 1: exact aspect ratios)"),
        (
            c.engine is not Engine.DREAM or c.blend == 0.0,
            "blend mixes styles for gatys and gatys+dream, not for --engine dream",
        ),
        (c.target_per_class is None or c.target_per_class >= 1, "target_per_class must be at least 1"),
        (bool(c.splits), "splits must name at least one split"),
        (c.tv_beta > 0, "tv_beta must be > 0"),
        (
            c.log_level.lower() in ("debug", "info", "warning", "error"),
            "log_level must be debug, info, warning or error",
        ),
        (bool(str(c.out).strip()), "out must name a folder (give . for the current one)"),
        (
            re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", c.device) is not None,
            f"device: unknown device {c.device!r}; use auto, cpu, cuda or cuda:N",
        ),
        *(
            (
                _utf8(getattr(c, name)),
                f"{name}: the path {getattr(c, name)!r} is not valid UTF-8 (rename it): "
                "augment records its paths in UTF-8 files (run.json, manifest.csv)",
            )
            for name in PATH_FIELDS
        ),
    ]


def _ray_checks(c: RunConfig) -> list[tuple[bool, str]]:
    return [
        (c.shards is None or c.shards >= 1, "shards must be at least 1"),
        (c.shard_retries >= 0, "shard_retries must be >= 0"),
        (c.shard_timeout is None or c.shard_timeout > 0, "shard_timeout must be > 0"),
        (c.ray is None or not (c.shard or c.workers), "--ray runs every shard itself: leave out --shard and --workers"),
        (c.ray is not None or c.shards is None and c.shard_timeout is None, "--shards and --shard-timeout need --ray"),
        (c.ray is None or c.max_seconds is None, "--max-seconds does not apply with --ray: use --shard-timeout"),
    ]


PATH_FIELDS = ("manifest", "styles", "out", "weights", "dream_weights")


def _utf8(value: object) -> bool:
    """A path argument of undecodable bytes reaches Python as lone surrogates (PEP 383)."""
    try:
        str(value or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _spread(name: str, value: Any) -> Spread:
    """A number, or a range "lo:hi" / [lo, hi] with lo <= hi."""
    try:
        if isinstance(value, str):
            parts = [float(p) for p in value.split(":")]
        elif isinstance(value, (list, tuple)):
            parts = [float(p) for p in value]
        else:
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number or a range lo:hi, got {value!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 2 or parts[0] > parts[1]:
        raise ConfigError(f"{name}: a range is lo:hi with lo <= hi, got {value!r}")
    return (parts[0], parts[1]) if parts[0] != parts[1] else parts[0]


def low(value: Spread) -> float:
    return value[0] if isinstance(value, tuple) else value


def high(value: Spread) -> float:
    return value[1] if isinstance(value, tuple) else value


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
_HINTS = typing.get_type_hints(RunConfig)

# The option groups of `augment run --help` (and docs/config.md), every field in one.
PANELS: dict[str, tuple[str, ...]] = {
    "Inputs": ("manifest", "styles", "splits", "limit", "max_pixels"),
    "Output": ("out", "per_image", "include_originals", "balance", "target_per_class", "format", "webdataset",
               "shard_size", "images", "quality", "keep_stale"),
    "Style": ("engine", "style_assignment", "alpha", "blend", "preserve_color", "style_scale", "size", "upscale",
              "shape_step", "content_weight", "style_weight", "tv_weight", "tv_beta", "content_layer", "style_layers",
              "style_layer_weights", "normalize_gradients", "pooling"),
    "Optimiser": ("iterations", "optimizer", "learning_rate", "init", "seed", "scales", "tol"),
    "Deep Dream": ("dream_layers", "octaves", "octave_scale", "dream_iterations", "dream_step", "jitter",
                   "dream_blend", "guide", "dream_weights"),
    "Weights and devices": ("weights", "weights_flavour", "download", "device", "precision", "batch_size",
                            "workers", "devices"),
    "Past one machine": ("shard", "ray", "shards", "shard_retries", "shard_timeout"),
    "Operations": ("max_seconds", "max_failures", "check_content", "quiet", "log_level"),
}  # fmt: skip
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def _default_text(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


# Help text with the default appended, for --help and docs/config.md.
HELP = {
    f.name: f.metadata["help"] + (f" [default: {_default_text(f.default)}]" if f.default is not None else "")
    for f in fields(RunConfig)
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run.yaml; keys may use - or _. Unknown keys are an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():  # a FIFO or a device would never end (or block)
        raise ConfigError(f"config file {path} is not a regular file")
    data = read_mapping(path, ConfigError, "option names to values")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        hints = [difflib.get_close_matches(k, FIELD_NAMES, n=1) for k in unknown]
        described = ", ".join(k + (f" (did you mean {h[0]}?)" if h else "") for k, h in zip(unknown, hints))
        raise ConfigError(f"{path}: unknown option(s) {described}")
    # Relative paths in a config file are relative to the file, not to where augment runs.
    for key in ("manifest", "styles", "out"):
        if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            values[key] = str(path.parent / values[key])
    for key in ("weights", "dream_weights"):
        if isinstance(values.get(key), str) and values[key] != "random" and not Path(values[key]).is_absolute():
            values[key] = str(path.parent / values[key])
    return values


def build_config(config_file: str | Path | None = None, **flags: Any) -> RunConfig:
    """defaults < YAML < flags; a flag left as None means "not given"."""
    values = load_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return RunConfig(**values)
    except TypeError as err:
        raise ConfigError(f"invalid option: {err}") from err
