"""One job three ways, whole commands timed: in one process, as shards on a local Ray cluster,
and on Ray with one shard's worker killed after its first image (what a retry costs). The
outputs are compared with the one-process run's (a CPU Ray task runs one thread, which rounds
differently from two).

python benchmarks/ray_local.py --size 128 --iterations 50 --shards 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "example"


def _run(args: argparse.Namespace, out: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
    command = [sys.executable, "-m", "augment", "run", str(EXAMPLE / "manifest.csv"), "--styles",
               str(EXAMPLE / "styles"), "--out", str(out), "--weights", "random", "--per-image", str(args.per_image),
               "--size", str(args.size), "--iterations", str(args.iterations), "--quiet", *extra]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    run = json.loads((out / "run.json").read_text())
    return {"how": " ".join(extra) or "one process", "images": run["counts"]["written"], "seconds": round(seconds, 2)}


def _compare(a: Path, b: Path) -> dict[str, object]:
    """Equal manifest rows (seconds and losses aside), images byte-equal, the largest pixel
    difference and the share of values that differ."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    left, right = (pd.read_csv(d / "manifest.csv", dtype=str, keep_default_na=False) for d in (a, b))
    keep = [c for c in left.columns if c != "seconds" and not c.endswith("_loss")]
    diffs = [np.abs(np.asarray(Image.open(a / p), dtype=int) - np.asarray(Image.open(b / p), dtype=int))
             for p in left["path"]]  # fmt: skip
    return {"rows_equal": left[keep].equals(right[keep]), "images_byte_equal": sum(int(d.max() == 0) for d in diffs),
            "max_level_diff": int(max(d.max() for d in diffs)),
            "values_differing": round(float(np.mean([(d > 0).mean() for d in diffs])), 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--per-image", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ray = ("--ray", "local", "--shards", str(args.shards))
        results = [_run(args, tmp / "one"), _run(args, tmp / "ray", *ray)]
        # The test hook: the first shard to write an image exits its worker process, once.
        crashed = _run(args, tmp / "retry", *ray, env={"AUGMENT_TEST_CRASH_ONCE": str(tmp / "crashed")})
        crashed["how"] += " (one worker killed)"
        results.append(crashed)
        for row, out in zip(results, ("one", "ray", "retry"), strict=True):
            row["vs_one_process"] = _compare(tmp / "one", tmp / out)
        retry_log = (tmp / "retry" / "run.log").read_text(encoding="utf-8")
        results[-1]["retried"] = retry_log.count("running it again")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
