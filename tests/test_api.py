from __future__ import annotations

import re
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


def _progress_of_a_run(dataset: tuple[Path, Path], out: Path, **options: object) -> list[float]:
    """The images-done values a run hands its progress callback, in order."""
    manifest, styles = dataset
    seen: list[float] = []
    augment.run(
        manifest=str(manifest), styles=str(styles), out=str(out), weights="random", size=32,
        progress=lambda done, total: seen.append(done), **options,
    )  # fmt: skip
    return seen


def test_progress_moves_every_iteration_and_the_log_says_how_long(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the defaults a CPU spends minutes on one batch: the bar and run.log must not wait for
    # the first finished image. A running image counts by its share of iterations done.
    import augment.pipeline.progress

    monkeypatch.setattr(augment.pipeline.progress, "FIRST_ETA_AFTER_S", 0.0)
    seen = _progress_of_a_run(dataset, tmp_path / "out", iterations=10, batch_size=3, scales="1")
    assert seen == sorted(seen) and seen[-1] == 3
    before_first_image = [done for done in seen if 0 < done < 1]
    assert len(before_first_image) >= 8  # 3 images x 10 iterations in one batch: ~0.1 per iteration
    log = (tmp_path / "out" / "run.log").read_text()
    assert re.search(r"\d+/3 images \(\d+%\), 0m\d\ds elapsed, about 0m\d\ds left", log), log


def test_progress_reaches_the_total_only_when_the_last_image_is_done(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    # One image at a time, 3 iterations each: progress moves by 1/3 of an image per step and
    # a finished image's steps are its own (its last evaluation takes no step).
    seen = _progress_of_a_run(dataset, tmp_path / "out", iterations=3, batch_size=1, scales="1")
    # Per image: three steps, then its last evaluation and its recording report where it is.
    expected = [0.0] + [i + k / 3 for i in range(3) for k in (1, 2, 3, 3, 3)]
    assert seen == pytest.approx(expected)


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


def test_a_stylizer_loads_the_weights_once_and_is_a_torchvision_transform(
    monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    # one_thread: the pixel-equality below holds on CPUs where precision auto means fp32 too.
    import torchvision.transforms as T

    import augment.api

    loads: list[str | None] = []
    real = augment.api.resolve_vgg19
    monkeypatch.setattr(augment.api, "resolve_vgg19", lambda spec, **kw: loads.append(spec) or real(spec, **kw))
    styles = [noise_image(16, 16, 2), noise_image(20, 12, 3)]
    stylizer = augment.Stylizer(styles, weights="random", size=32, iterations=2, seed=1)
    transform = T.Compose([stylizer, T.ToTensor()])
    images = [transform(noise_image(40, 20, seed)) for seed in range(4)]
    assert len(loads) == 1  # not once per image
    assert all(x.shape == (3, 16, 32) for x in images)
    # A named style gives what augment.stylize gives for that style alone.
    alone = augment.stylize(noise_image(40, 20, 0), styles[1], weights="random", size=32, iterations=2)
    assert np.array_equal(np.asarray(stylizer(noise_image(40, 20, 0), style="style1")), np.asarray(alone))
    with pytest.raises(augment.errors.ConfigError, match="unknown style 'style9'"):
        stylizer(noise_image(40, 20, 0), style="style9")


def test_no_upscale_keeps_small_images_at_their_size() -> None:
    small = noise_image(40, 20, 0)
    assert augment.stylize(small, noise_image(16, 16, 2), weights="random", size=64, iterations=1).size == (64, 32)
    kept = augment.stylize(small, noise_image(16, 16, 2), weights="random", size=64, iterations=1, upscale=False)
    assert kept.size == (40, 20)
    big = noise_image(80, 40, 0)  # larger than --size: still made smaller
    shrunk = augment.stylize(big, noise_image(16, 16, 2), weights="random", size=64, iterations=1, upscale=False)
    assert shrunk.size == (64, 32)


def test_a_stylizer_draws_styles_with_torchs_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    # A DataLoader seeds torch apart in each worker and epoch; a private generator copied into
    # every worker would repeat the same styles everywhere.
    import torch

    import augment.api

    drawn: list[tuple[int, ...]] = []

    def record(net, contents, styles, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(tuple(styles[-1][0].shape[-2:]))  # the two styles differ in shape
        raise StopIteration

    stylizer = augment.Stylizer([noise_image(16, 16, 2), noise_image(24, 12, 3)], weights="random", size=32)
    monkeypatch.setattr(augment.api, "transfer", record)

    def draws(seed: int) -> list[tuple[int, ...]]:
        torch.manual_seed(seed)
        drawn.clear()
        for _ in range(12):
            with pytest.raises(StopIteration):
                stylizer(noise_image(40, 20, 0))
        return list(drawn)

    assert draws(0) == draws(0) and draws(0) != draws(1) and len(set(draws(0))) == 2
    with pytest.raises(augment.errors.ConfigError, match="style_weight: a Stylizer takes one number"):
        augment.Stylizer(noise_image(16, 16, 2), weights="random", style_weight="1e3:1e4")
    with pytest.raises(augment.errors.ConfigError, match="blend"):
        augment.Stylizer(noise_image(16, 16, 2), weights="random", blend=0.5)
