from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import augment

from .conftest import noise_image


def test_run_returns_a_summary(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    seen: list[tuple[int, int]] = []
    summary = augment.run(
        manifest=str(manifest), styles=str(styles), out=str(tmp_path / "out"), weights="random",
        size=32, iterations=1, progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert summary.exit_code == 0 and summary.written == 3 and summary.failed_rows == 0
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)


def test_stylize_one_image() -> None:
    content, style = noise_image(40, 20, 1), noise_image(16, 16, 2)
    out = augment.stylize(content, style, weights="random", size=32, iterations=2)
    assert isinstance(out, Image.Image) and out.size == (32, 16) and out.mode == "RGB"


def test_run_refuses_unknown_options() -> None:
    with pytest.raises(augment.errors.ConfigError):
        augment.run(manifest="m.csv", styles="s", colour="red")
