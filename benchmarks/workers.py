"""Throughput of `augment run` with 1 vs N local workers (whole commands timed).

python benchmarks/workers.py --images 12 --size 128 --iterations 50 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# hymenoptera-mini/ (manifest.csv + photos) and styles/: the repository's small copies by
# default; --data a folder of the same layout with the full-size photos for the recorded figures.
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    photos = sorted(p for p in (args.data / "hymenoptera-mini").glob("*/*") if p.suffix in (".jpg", ".gif"))
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest = tmp / "manifest.csv"
        manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in photos[: args.images]))
        styles = tmp / "styles"
        styles.mkdir()
        (styles / "starry_night.jpg").write_bytes((args.data / "styles" / "starry_night.jpg").read_bytes())
        for workers in args.workers:
            out = tmp / f"out{workers}"
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
                 "--weights", "random", "--size", str(args.size), "--iterations", str(args.iterations),
                 "--workers", str(workers), "--quiet"],
                check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            run = json.loads((out / "run.json").read_text())
            images = run["counts"]["written"]
            results.append({"workers": workers, "images": images, "seconds": round(seconds, 2),
                            "images_per_hour": round(3600 * images / seconds, 1), "device": run["device"]})  # fmt: skip
    base = results[0]["images_per_hour"]
    for row in results:
        row["speedup"] = round(row["images_per_hour"] / base, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
