"""augment vs neural-style-pt (PyPI ``neural-style`` 0.5.7) on the same job, whole commands timed.

The job: 4 photos from hymenoptera-mini (the GIF among them) x 1 style, as a user
runs it: the peer once per image, ``augment run`` once over a manifest, default options.
Both use the same seeded random VGG19 (the same FLOPs as the real one; nothing to download),
saved as ``vgg19-d01eb7cb.pth``: the peer picks its network from the file name, augment knows the
name as the Caffe conversion and runs its caffe defaults (neural-style's weights, converted).
Each output is then scored by the peer's own objective (its loss modules, parity_neural_style.py),
so that a speed figure stands beside the quality it bought. augment runs with ``--shape-step 1``
so that its outputs have the peer's exact shapes (the objective compares them pixel for pixel).

    pip install --no-deps neural-style==0.5.7
    python benchmarks/vs_neural_style.py                      # CPU: 128 px, 50 iterations
    python benchmarks/vs_neural_style.py --size 512 --iterations 300 --gpu --augment-images 64
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from parity_neural_style import peer_objective  # same folder: run as a script
from PIL import Image
from profile_iteration import PEAKS, flops_per_iteration

from augment.engines.vgg import random_state_dict

# hymenoptera-mini/ (manifest.csv + photos) and styles/: the repository's small copies by
# default; --data a folder of the same layout with the full-size photos for the recorded figures.
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
PHOTOS = [
    "ants/0013035.jpg", "ants/imageNotFound.gif",
    "bees/1092977343_cb42b38d62.jpg", "bees/1093831624_fb5fbe2308.jpg",
]  # fmt: skip
STYLE = "starry_night.jpg"


# Dense bf16 spec peak of an H100/H200 SXM, for model FLOP utilisation.
PEAK_BF16_FLOPS = PEAKS["H100"]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--gpu", action="store_true", help="run both on cuda:0")
    parser.add_argument("--peer-images", type=int, default=4, help="images the peer runs (one command each)")
    parser.add_argument("--augment-images", type=int, default=4, help="images augment runs (photos repeated)")
    parser.add_argument("--tol", type=float, default=1e-3, help="for the separate early-stopping figure")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--scales", default="1", help="augment's --scales")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    peer = shutil.which("neural-style", path=str(bin_dir)) or shutil.which("neural-style")
    if not peer:
        sys.exit("neural-style is not installed: pip install --no-deps neural-style==0.5.7")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = tmp / "vgg19-d01eb7cb.pth"
        torch.save(random_state_dict(0), weights)
        styles = tmp / "styles"
        styles.mkdir()
        shutil.copy(args.data / "styles" / STYLE, styles / STYLE)
        photos = [args.data / "hymenoptera-mini" / p for p in PHOTOS]
        rows = [photos[i % len(photos)] for i in range(args.augment_images)]
        # Repeated photos get distinct paths so augment does not treat them as duplicates.
        for i, photo in enumerate(rows):
            link = tmp / "photos" / f"{i:03d}_{photo.name}"
            link.parent.mkdir(exist_ok=True)
            shutil.copy(photo, link)
        manifest = tmp / "manifest.csv"
        manifest.write_text(
            "path,label\n" + "".join(f"photos/{i:03d}_{p.name},{p.parent.name}\n" for i, p in enumerate(rows))
        )

        gpu = ["-gpu", "0", "-backend", "cudnn"] if args.gpu else ["-gpu", "c", "-backend", "mkl"]
        peer_seconds = []
        for i in range(args.peer_images):
            peer_seconds.append(timed([
                peer, "-content_image", str(photos[i % len(photos)]), "-style_image", str(styles / STYLE),
                "-image_size", str(args.size), "-num_iterations", str(args.iterations),
                "-model_file", str(weights), "-disable_check", *gpu, "-print_iter", "0", "-save_iter", "0",
                "-output_image", str(tmp / f"peer_{i}.png"),
            ]))  # fmt: skip

        augment = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles),
                   "--weights", str(weights), "--size", str(args.size), "--iterations", str(args.iterations),
                   "--shape-step", "1", "--scales", args.scales, "--quiet",
                   "--device", "cuda" if args.gpu else "cpu"]  # fmt: skip
        ours = timed([*augment, "--out", str(tmp / "out")])
        run = json.loads((tmp / "out" / "run.json").read_text())
        with (tmp / "out" / "manifest.csv").open() as handle:
            written = list(csv.DictReader(handle))
        out_sizes = [(int(row["height"]), int(row["width"])) for row in written]
        # The peer's objective of each tool's output of the same photo (the peer's first
        # args.peer_images photos; augment's rows are the photos in the same order).
        peer_scores, ours_scores, resized = [], [], 0
        for i in range(min(args.peer_images, len(written))):
            content = photos[i % len(photos)]
            (row,) = [r for r in written if Path(r["source"]).name.startswith(f"{i:03d}_")]
            ours_png, peer_png = tmp / "out" / row["path"], tmp / f"peer_{i}.png"
            peer_size = Image.open(peer_png).size
            if Image.open(ours_png).size != peer_size:  # a rounding apart: scored at the peer's shape
                Image.open(ours_png).convert("RGB").resize(peer_size, Image.LANCZOS).save(tmp / f"ours_{i}.png")
                ours_png, resized = tmp / f"ours_{i}.png", resized + 1
            style = styles / STYLE
            theirs, mine = peer_objective(weights, args.size, content, style, [peer_png, ours_png])
            peer_scores.append(theirs)
            ours_scores.append(mine)
        early = timed([*augment, "--out", str(tmp / "out_tol"), "--tol", str(args.tol)])
        with (tmp / "out_tol" / "manifest.csv").open() as handle:
            run_tol_iterations = [int(row["iterations"]) for row in csv.DictReader(handle)]

    peer_per_image = sum(peer_seconds) / len(peer_seconds)
    ours_per_image = ours / args.augment_images
    report = {
        "device": run["device"], "torch": torch.__version__, "size": args.size, "iterations": args.iterations,
        "precision": run["config"]["precision"], "batch_size": run["timings"].get("batch_size"),
        "peer_seconds_per_image": round(peer_per_image, 2), "peer_runs": [round(s, 2) for s in peer_seconds],
        "peer_images_per_hour": round(3600 / peer_per_image, 1),
        "augment_seconds_total": round(ours, 2), "augment_seconds_per_image": round(ours_per_image, 3),
        "augment_images_per_hour": round(3600 / ours_per_image, 1),
        "ratio": round(peer_per_image / ours_per_image, 2),
        "peer_objective_of_peer_outputs": [round(v, 1) for v in peer_scores],
        "peer_objective_of_augment_outputs": [round(v, 1) for v in ours_scores],
        "augment_over_peer_objective": [round(b / a, 3) for a, b in zip(peer_scores, ours_scores)],
        "augment_outputs_resized_to_the_peers_shape": resized,
        "augment_timings": run["timings"],
        f"early_stop_tol_{args.tol}": {
            "seconds_total": round(early, 2),
            "images_per_hour": round(3600 * args.augment_images / early, 1),
            "ratio": round(peer_per_image / (early / args.augment_images), 2),
            "mean_iterations": round(sum(run_tol_iterations) / max(1, len(run_tol_iterations)), 1),
        },
    }  # fmt: skip
    if args.gpu:
        # The photos come out at several sizes: FLOPs from each output's actual size.
        flops = sum(flops_per_iteration(h, w) for h, w in out_sizes) * (args.iterations + 1)
        report["model_flop_utilisation_bf16"] = round(flops / run["timings"]["compute_s"] / PEAK_BF16_FLOPS, 3)
        report["peak_memory_mb"] = run["timings"].get("peak_memory_mb")
        report["memory_per_image_mb"] = round(
            run["timings"].get("peak_memory_mb", 0) / max(1, run["timings"]["batch_size"]), 1
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
