"""Seconds per stylized image for `augment run` at a given size and iteration count.

Random weights cost exactly what real ones do (same layers, same FLOPs), so this runs
offline. Usage:

    python benchmarks/seconds_per_image.py --size 128 --iterations 50 --images 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import augment

# hymenoptera-mini/ (manifest.csv + photos) and styles/: the repository's small copies by
# default; --data a folder of the same layout with the full-size photos for the recorded figures.
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", default="gatys", help="gatys, dream or gatys+dream")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        summary = augment.run(
            manifest=str(args.data / "hymenoptera-mini" / "manifest.csv"),
            styles=str(args.data / "styles"),
            out=str(out),
            limit=args.images,
            per_image=1,
            size=args.size,
            iterations=args.iterations,
            weights="random",
            device=args.device,
            engine=args.engine,
            quiet=True,
        )
        wall = time.perf_counter() - t0
        run = json.loads((out / "run.json").read_text())
    print(json.dumps({
        "device": summary.device,
        "threads": torch.get_num_threads(),
        "engine": args.engine,
        "size": args.size,
        "iterations": args.iterations if args.engine != "dream" else None,  # style transfer's
        "dream_steps_per_octave": run["config"]["dream_iterations"] if "dream" in args.engine else None,
        "images": summary.written,
        "seconds_per_image_compute": run["timings"]["seconds_per_image"],
        "wall_seconds_total": round(wall, 2),
        "wall_seconds_per_image": round(wall / max(1, summary.written), 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
