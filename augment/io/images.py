"""Safe image decoding, resizing, tensor conversion and atomic saving (Pillow).

Decoding problems are returned as ``ImageProblem`` exceptions carrying a short reason class
(``missing``, ``undecodable``, ``too_large``) that the pipeline turns into failures.csv rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_write
from .threads import in_threads

# A decompression bomb is refused from its header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 100_000_000

FORMAT_EXT = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


class ImageProblem(Exception):
    """One image could not be used; ``reason`` is a short class for failures.csv."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_extensions() -> set[str]:
    """File extensions Pillow can decode here (lower case, with the dot)."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


# EXIF orientations that turn the picture on its side (exif_transpose swaps width and height).
_SIDEWAYS = {5, 6, 7, 8}


def probe(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Read only the header: (width, height) as displayed, EXIF orientation applied. Raises
    ImageProblem for missing, non-image or oversized files."""
    path = Path(path)
    if not path.is_file():
        raise ImageProblem("missing", f"file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
                if size[0] * size[1] > max_pixels:
                    raise ImageProblem(
                        "too_large", f"{path}: {size[0]}x{size[1]} is over the {max_pixels:,}-pixel limit"
                    )
                # Pillow finds a PNG's EXIF only by decoding the whole image, unless the chunk
                # came before the pixels: a header read must not decode.
                if (img.format != "PNG" or "exif" in img.info) and img.getexif().get(0x0112) in _SIDEWAYS:
                    size = (size[1], size[0])
    except Image.DecompressionBombError as err:
        # Pillow refuses at open, before the header reaches the check above, over twice its
        # MAX_IMAGE_PIXELS: say the user's limit; Pillow's only where it is the lower one.
        pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = f"the {max_pixels:,}-pixel limit" if max_pixels <= pillow else f"Pillow's {pillow:,}-pixel limit"
        raise ImageProblem("too_large", f"{path}: over {limit}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageProblem("undecodable", f"{path}: not a readable image ({err})") from err
    if size[0] < 1 or size[1] < 1:
        raise ImageProblem("undecodable", f"{path}: image has no pixels")
    return size


def probe_all(paths: Sequence[Path], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[int, int] | ImageProblem]:
    """``probe`` of every path, in threads (augment/threads.py), in input order: each one's
    size, or the ImageProblem it raised."""

    def one(path: Path) -> tuple[int, int] | ImageProblem:
        try:
            return probe(path, max_pixels=max_pixels)
        except ImageProblem as err:
            return err

    return in_threads(one, paths)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit scaled (not
    clipped), palette and CMYK converted."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PNG opens as I;16 or I): scale 0..65535 to 0..255.
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        peak = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        img = Image.fromarray(np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file to RGB with EXIF orientation applied. Raises ImageProblem."""
    probe(path, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageProblem("undecodable", f"{path}: cannot decode ({err})") from err


# VGG19 pools four times before conv5_1: a side under 16 px would vanish before the last layer.
MIN_SIDE = 16


def fit_long_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so the long side is ``size``, aspect kept, except that no side
    is under MIN_SIDE (a long thin panorama gets a slightly taller strip, not a crash)."""
    scale = size / max(width, height)
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def shape_step(size: int) -> int:
    """The default grid of output sides for --size: the largest power of two at most size/32
    (16 px at 512, 32 at 1024, 1 under 64: exact). Half a step over the short side bounds how
    far the aspect ratio moves: 1/64 of the long side, 3.1 % at 2:1, 2.1 % at 4:3."""
    step = 1
    while step * 2 <= size // 32:
        step *= 2
    return step


def snap_to_grid(side: int, step: int) -> int:
    """The nearest multiple of ``step``, and not under MIN_SIDE."""
    return side if step == 1 else max(-(-MIN_SIDE // step) * step, round(side / step) * step)


def bucket_shape(width: int, height: int, long_side: int, step: int) -> tuple[int, int]:
    """(width, height) of the output: scaled so the long side is ``long_side``, the short side
    then rounded to a multiple of ``step``. Images of near aspect ratios so share a shape, and
    with it a batch."""
    w, h = fit_long_side(width, height, long_side)
    return (w, snap_to_grid(h, step)) if w >= h else (snap_to_grid(w, step), h)


def resize_to(img: Image.Image, shape: tuple[int, int]) -> Image.Image:
    """Resize to exactly (width, height): a bucket's shape moves the aspect ratio by a few
    percent at most (bucket_shape)."""
    return img if img.size == shape else img.resize(shape, Image.Resampling.LANCZOS)


def resize_long_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so the long side is ``size`` pixels, aspect ratio kept."""
    new = fit_long_side(*img.size, size)
    if new == img.size:
        return img
    return img.resize(new, Image.Resampling.LANCZOS)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor ``[1, 3, H, W]`` in [0, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Float tensor ``[3, H, W]`` or ``[1, 3, H, W]`` in [0, 1] -> RGB PIL image (rounded)."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


def save_atomic(img: Image.Image, path: str | Path, *, fmt: str = "png", quality: int = 95) -> None:
    """Encode ``img`` as ``fmt`` and write it atomically (see augment.io.atomic)."""
    options: dict[str, object] = {"quality": quality} if fmt in ("jpg", "webp") else {}
    with atomic_write(path) as handle:
        img.save(handle, format=_PIL_FORMAT[fmt], **options)
