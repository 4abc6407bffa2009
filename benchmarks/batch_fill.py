"""How full the batches of a job of real photos are: N images made from 21 real photos, at
their own aspect ratios (--aspects photos) or each centre-cropped to one drawn log-uniformly
from 1:2 to 2:1 (--aspects uniform, seeded: a harsh case, real sets cluster at 4:3 and 3:2),
stylized with --batch-size 45 and the output sides on the --shape-step grid or exact (1).

Reports, per setting, run.json's mean batch fill (images per VGG19 pass over the batch size),
the number of distinct output shapes and the largest change of aspect ratio that the grid made.

The grid is --size/32 by default, so a run at --size 64 (step 2) puts every image in the same
bucket as at --size 512 (step 16): round(64 r / 2) = round(512 r / 16). The network is random
and runs 4 iterations over the default two scales (3 at half size, 1 at full): only the
scheduling is measured.

python benchmarks/batch_fill.py [--images 1000] [--per-image 3] [--batch-size 45] [--aspects photos]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The real photos beside the checkout where there are (up to 500 px), else the repository's
# (64 px: enough for --size 64).
SHARED = REPO.parent / "shared" / "data" / "hymenoptera-mini"
PHOTOS = SHARED if SHARED.is_dir() else REPO / "tests" / "data" / "hymenoptera-mini"
STYLES = REPO / "tests" / "data" / "styles"


def make_images(folder: Path, count: int, aspects: str, seed: int = 0) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    photos = sorted(PHOTOS.glob("*/*.jpg"))
    lines = ["path,label"]
    for i in range(count):
        photo = photos[i % len(photos)]
        ratio = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
        with Image.open(photo) as img:
            img = img.convert("RGB")
            w, h = img.size
            if aspects == "photos":
                ratio = w / h
            cw, ch = (round(h * ratio), h) if w / h > ratio else (w, round(w / ratio))  # narrower or lower
            left, top = (w - cw) // 2, (h - ch) // 2
            crop = img.crop((left, top, left + cw, top + ch))
            crop.thumbnail((160, 160))
            name = f"{photo.parent.name}/{i:05d}.jpg"
            (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
            crop.save(folder / name, quality=90)
        lines.append(f"{name},{photo.parent.name}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def measure(manifest: Path, out: Path, args: argparse.Namespace, step: str) -> dict[str, object]:
    import pandas as pd
    from PIL import Image

    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(STYLES), "--out", str(out),
               "--weights", "random", "--size", str(args.size), "--iterations", str(args.iterations), "--per-image",
               str(args.per_image), "--batch-size", str(args.batch_size), "--shape-step", step,
               "--scales", args.scales, "-q"]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO)
    timings = json.loads((out / "run.json").read_text())["timings"]
    rows = pd.read_csv(out / "manifest.csv")
    moved = 0.0
    for source, width, height in rows[["source", "width", "height"]].drop_duplicates().itertuples(index=False):
        with Image.open(manifest.parent / source) as img:
            moved = max(moved, abs((width / height) / (img.width / img.height) - 1))
    return {
        "shape_step": step, "images": len(rows), "batch_fill": timings["batch_fill"],
        "shapes": int(rows.groupby(["width", "height"]).ngroups), "largest_aspect_change": round(moved, 4),
        "compute_s": timings["compute_s"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-image", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=45)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=4, help="split over --scales as run splits them")
    parser.add_argument("--scales", default="0.5,1", help="--scales (the default: two stages per image)")
    parser.add_argument("--aspects", choices=["photos", "uniform"], default="uniform")
    parser.add_argument("--steps", default="0,1", help="--shape-step values to run (0: the default grid)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_images(Path(tmp) / "photos", args.images, args.aspects)
        results = [measure(manifest, Path(tmp) / f"out-{step}", args, step) for step in args.steps.split(",")]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
