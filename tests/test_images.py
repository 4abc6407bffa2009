"""Decoding every mode to the right RGB values, the pixel limit, EXIF, atomic saving."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.io.images import ImageProblem, load_rgb, probe, resize_long_side, save_atomic, to_image, to_tensor


def _pixel(path: Path, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    return load_rgb(path).getpixel(xy)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    img.putpixel((1, 0), (255, 0, 0, 128))  # half transparent red -> pink
    img.save(tmp_path / "a.png")
    assert _pixel(tmp_path / "a.png", (0, 0)) == (255, 255, 255)
    r, g, b = _pixel(tmp_path / "a.png", (1, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_la_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    assert _pixel(tmp_path / "la.png") == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.gif", transparency=0)
    assert _pixel(tmp_path / "p.gif", (0, 0)) == (255, 255, 255)
    assert _pixel(tmp_path / "p.gif", (1, 0)) == (200, 100, 50)


def test_greyscale(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 77).save(tmp_path / "l.png")
    assert _pixel(tmp_path / "l.png") == (77, 77, 77)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.array([[65535, 32896, 1000]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "i16.png")
    img = load_rgb(tmp_path / "i16.png")
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [255, 128, 4]


def test_cmyk(tmp_path: Path) -> None:
    Image.new("CMYK", (1, 1), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = _pixel(tmp_path / "c.jpg")
    assert r < 10 and g > 245 and b > 245  # pure cyan


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    out = load_rgb(tmp_path / "r.jpg")
    assert out.size == (20, 40)
    assert out.getpixel((10, 2))[0] > 200  # red is now on top


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageProblem) as err:
        load_rgb(tmp_path / "big.png", max_pixels=5000)
    assert err.value.reason == "too_large"


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG signature, IHDR and an empty IDAT: a header claiming any size, in 45 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b""))


def test_a_header_over_pillows_own_limit_names_the_users_limit(tmp_path: Path) -> None:
    # Issue 21: Pillow refuses such a header at open, and the message quoted its 178956970
    # limit, not --max-pixels.
    _png_header(tmp_path / "huge.png", 20_000, 10_000)  # 200 M pixels
    with pytest.raises(ImageProblem) as err:
        probe(tmp_path / "huge.png", max_pixels=100_000_000)
    assert err.value.reason == "too_large"
    assert "100,000,000-pixel limit" in str(err.value) and "178956970" not in str(err.value)
    with pytest.raises(ImageProblem) as err:  # a --max-pixels above Pillow's: Pillow's is named
        probe(tmp_path / "huge.png", max_pixels=500_000_000)
    assert "Pillow's 178,956,970-pixel limit" in str(err.value)


@pytest.mark.parametrize(("content", "reason"), [(b"", "undecodable"), (b"not an image", "undecodable")])
def test_non_images(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(ImageProblem) as err:
        load_rgb(tmp_path / "x.jpg")
    assert err.value.reason == reason


def test_truncated_file_is_undecodable(tmp_path: Path) -> None:
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageProblem) as err:
        load_rgb(tmp_path / "t.jpg")
    assert err.value.reason == "undecodable"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageProblem) as err:
        probe(tmp_path / "nope.png")
    assert err.value.reason == "missing"


def test_resize_keeps_aspect_and_upscales_tiny_images() -> None:
    assert resize_long_side(Image.new("RGB", (200, 100)), 64).size == (64, 32)
    assert resize_long_side(Image.new("RGB", (7, 5)), 64).size == (64, 46)


def test_tensor_round_trip_is_exact() -> None:
    img = Image.effect_noise((9, 7), 80).convert("RGB")
    assert np.array_equal(np.asarray(to_image(to_tensor(img))), np.asarray(img))


def test_save_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    save_atomic(Image.new("RGB", (4, 4)), tmp_path / "sub" / "x.png")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]
    save_atomic(Image.new("RGB", (4, 4)), tmp_path / "y.jpg", fmt="jpg", quality=50)
    assert Image.open(tmp_path / "y.jpg").format == "JPEG"


def test_failed_save_removes_its_temp_file(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        save_atomic(Image.new("RGB", (4, 4)), tmp_path / "x.png", fmt="nope")
    assert list(tmp_path.iterdir()) == []


def test_no_side_is_smaller_than_what_vgg19_can_pool() -> None:
    assert resize_long_side(Image.new("RGB", (1000, 50)), 64).size == (64, 16)
