from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_stylize_and_run_make_the_same_image(tmp_path: Path, one_thread: None) -> None:
    # One path from a task to a finished image: coarse-to-fine stages, Gram rescaling for a
    # style of another size, preserve-colour and alpha all go through augment/engines/transfer.py.
    # fp32 on one thread and a batch of one: the arithmetic repeats exactly (tests/conftest.py).
    data = tmp_path / "data"
    (data / "ants").mkdir(parents=True)
    noise_image(40, 28, 1).save(data / "ants" / "a.png")
    (data / "manifest.csv").write_text("path,label\nants/a.png,ants\n")
    styles = tmp_path / "styles"
    styles.mkdir()
    noise_image(30, 36, 2).convert("RGBA").save(styles / "waves.png")
    settings = {"size": 32, "iterations": 8, "scales": "0.5,1", "preserve_color": True, "alpha": 0.7,
                "style_scale": 0.8, "precision": "fp32"}  # fmt: skip
    summary = augment.run(manifest=str(data / "manifest.csv"), styles=str(styles), out=str(tmp_path / "out"),
                          weights="random", batch_size=1, **settings)  # fmt: skip
    assert summary.exit_code == 0
    (made,) = (tmp_path / "out" / "images" / "ants").iterdir()
    alone = augment.stylize(data / "ants" / "a.png", styles / "waves.png", weights="random", **settings)
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(alone))
    # ... and the settings mattered: without the coarse stage the picture differs.
    plain = augment.stylize(
        data / "ants" / "a.png", styles / "waves.png", weights="random", **{**settings, "scales": "1"}
    )
    assert not np.array_equal(np.asarray(plain), np.asarray(alone))
