"""Shared fixtures: tiny synthetic images and datasets made in tmp_path; never a download."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# Settings that keep an end-to-end run to a fraction of a second per image on the CPU.
FAST = ["--weights", "random", "--size", "32", "--iterations", "2", "--dream-iterations", "2"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may download weights or see a developer's real cache."""
    monkeypatch.setenv("AUGMENT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """fp32 oneDNN convolutions on two threads differ from run to run (measured: total loss
    15.32 / 15.32 / 15.18 for the same image and settings); one thread makes fp32 results
    repeatable. (bf16 ones are repeatable at any thread count.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_imagefolder_offline(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Hugging Face's imagefolder loader on ``images``, offline, with a private cache."""
    datasets = pytest.importorskip(
        "datasets", reason="Hugging Face datasets is not installed (pip install -e '.[test]')"
    )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return datasets.load_dataset("imagefolder", data_dir=str(images), split="train", cache_dir=str(tmp_path / "hf"))


def noise_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    # A smooth gradient plus noise: something for the losses to see.
    array[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return Image.fromarray(array, "RGB").convert(mode)


def make_dataset(root: Path, *, rows: list[tuple[str, str]] | None = None) -> Path:
    """root/data/<label>/<name>.png + root/data/manifest.csv; returns the manifest path."""
    data = root / "data"
    rows = rows or [("ants/a1.png", "ants"), ("ants/a2.jpg", "ants"), ("bees/b1.png", "bees")]
    for i, (rel, _label) in enumerate(rows):
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        noise_image(24 + 4 * i, 20, seed=i).save(path)
    lines = ["path,label"] + [f"{rel},{label}" for rel, label in rows]
    (data / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data / "manifest.csv"


def make_styles(root: Path) -> Path:
    styles = root / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    noise_image(30, 30, seed=10).save(styles / "waves.png")
    noise_image(28, 36, seed=11, mode="L").save(styles / "grey_stone.jpg")  # greyscale is allowed
    return styles


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """(manifest.csv, styles folder) of a tiny two-class dataset."""
    return make_dataset(tmp_path), make_styles(tmp_path)
