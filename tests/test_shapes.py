"""Shape buckets: output sides on a grid, so that photos of near aspect ratios share a batch."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
from PIL import Image

from augment.config import RunConfig
from augment.io.images import MIN_SIDE, bucket_shape, shape_step

from .conftest import make_styles
from .test_cli import invoke


def test_the_default_grid_is_a_32nd_of_the_size_in_a_power_of_two() -> None:
    assert [shape_step(s) for s in (32, 63, 64, 128, 500, 512, 1024, 2048)] == [1, 1, 2, 4, 8, 16, 32, 64]


def test_buckets_keep_size_snap_the_other_side_and_move_the_aspect_by_at_most_half_a_step() -> None:
    # Sizes of real photos: 500x375 (4:3), 500x333..500x334 and 333x500 (3:2), 640x427, 500x281 (16:9).
    photos = [(500, 375), (500, 333), (500, 334), (500, 332), (640, 427), (333, 500), (500, 281), (612, 612)]
    shapes = [bucket_shape(w, h, 512, 16) for w, h in photos]
    assert shapes == [(512, 384), (512, 336), (512, 336), (512, 336), (512, 336), (336, 512), (512, 288), (512, 512)]
    rng = random.Random(0)
    for _ in range(2000):
        w, h = rng.randint(100, 4000), rng.randint(100, 4000)
        if not 0.5 <= w / h <= 2:
            continue
        bw, bh = bucket_shape(w, h, 512, 16)
        assert 512 in (bw, bh) and max(bw, bh) == 512
        short = min(bw, bh)
        assert short % 16 == 0 and short >= MIN_SIDE
        # Half a step over the short side, plus the pixel fit_long_side rounds to.
        assert abs((bw / bh) / (w / h) - 1) <= (8 + 1) / (short - 8), (w, h, bw, bh)


def test_images_of_one_bucket_share_every_stages_shape() -> None:
    config = RunConfig(size=512, scales=(0.25, 0.5, 1.0))
    a, b = config.stage_shapes(500, 333), config.stage_shapes(640, 427)  # 3:2, sizes apart
    assert a == b == [(128, 84), (256, 168), (512, 336)]
    assert RunConfig(size=512, shape_step=1).output_shape(500, 333) == (512, 341)  # exact
    # --no-upscale: the long side is the image's own, on the grid too.
    assert RunConfig(size=512, upscale=False).output_shape(300, 200) == (304, 208)


def test_one_bucket_fills_the_batch_and_run_json_says_how_full(tmp_path: Path) -> None:
    # Two photos of near aspect ratios (1.5 and 1.455): one shape on the grid, two exactly.
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("a.png", (300, 200)), ("b.png", (291, 200))):
        Image.effect_noise(size, 60).convert("RGB").save(data / name)
    (data / "m.csv").write_text("path,label\na.png,x\nb.png,x\n")
    styles = make_styles(tmp_path)
    fill = {}
    for step in ("0", "1"):
        out = tmp_path / f"out{step}"
        code, _, err = invoke("run", data / "m.csv", "--styles", styles, "--out", out, "--weights", "random",
                              "--size", "64", "--iterations", "2", "--per-image", "2", "--batch-size", "4",
                              "--shape-step", step, "--scales", "1")  # fmt: skip
        assert code == 0, err
        rows = pd.read_csv(out / "manifest.csv")
        fill[step] = json.loads((out / "run.json").read_text())["timings"]["batch_fill"]
        shapes = set(zip(rows["width"], rows["height"]))
        assert shapes == ({(64, 44)} if step == "0" else {(64, 43), (64, 44)})
        assert all(Image.open(out / p).size == (w, h) for p, w, h in zip(rows["path"], rows["width"], rows["height"]))
    assert fill["0"] == 1.0  # 4 images of one shape in 4 slots, every pass
    assert fill["1"] == 0.5  # a pass for each shape, 2 images in 4 slots
