"""How augment's bookkeeping grows with the dataset: N synthetic rows (hard links to the
repository's small photos, 1,000 per folder), per-image 3, random weights, 32 px, 1 iteration,
so that planning, keys, checkpoints and merges dominate, not the network.

For each N it reports:
- `augment validate`: seconds and peak memory;
- one shard (`--shard 0/S`): seconds to its first image, in all, peak memory;
- the same shard re-run, nothing to do: seconds, peak memory, and how many source images it
  opened (and their bytes), counted by an audit hook on open();
- a re-run of a whole finished OUT, nothing to do (the OUT synthesized as the run would leave
  it: every task's row and key, its image a hard link to one the shard made): the same figures;
- `--workers 1` and `--workers 2` on the whole job, stopped by `--max-seconds` (max(60, N/5000))
  after its planning, keys, header reads and some images: the peak memory of the process tree,
  as RSS and as PSS;
- a checkpoint of a part that holds N rows: the seconds of what a part writes while it runs
  (before issue 22: its whole manifest, rewritten every 30 s; since: one fsynced journal line
  per image, timed over 100 images);
- `augment merge` of S finished shard parts (synthesized from the real shard's files: its
  rows copied under new names, its images hard-linked), N x 3 rows in all: seconds, peak memory.

python benchmarks/scale.py --rows 10000 100000 [--shards 1000] [--work /big/disk]
Run it alone on the machine: it times whole commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from augment.pipeline.keys import config_hash, plan_hash

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "hymenoptera-mini"
STYLES = REPO / "tests" / "data" / "styles"
FAST = ["--weights", "random", "--size", "32", "--iterations", "1", "--per-image", "3", "--quiet"]


def child(result: Path, sources: str, argv: list[str]) -> None:
    """Runs the CLI in this process, counting opens of files under ``sources``; writes what it
    measured to ``result``."""
    import resource

    opened: dict[str, int] = {}

    def audit(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and isinstance(args[0], (str, Path)) and str(args[0]).startswith(sources):
            name = str(args[0])
            opened[name] = opened.get(name, 0) + 1

    sys.addaudithook(audit)
    from augment.cli import main

    sys.argv = ["augment", *argv]
    t0 = time.perf_counter()
    code = 0
    try:
        main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 0
    seconds = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: Linux carries a process's pre-exec peak into ru_maxrss, so a child
    # started by this (by then large) benchmark process would report the benchmark's memory.
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    sizes = sum(os.path.getsize(p) for p in opened if os.path.exists(p))
    result.write_text(json.dumps({"code": code, "seconds": round(seconds, 2), "peak_mb": round(peak / 1e6),
                                  "children_peak_mb": round(children / 1e6), "source_files_opened": len(opened),
                                  "source_bytes_opened": sizes}))  # fmt: skip


def augment(work: Path, *argv: str, first_image: Path | None = None) -> dict[str, object]:
    """``augment ARGV`` in a fresh process; with ``first_image``, also the seconds until that
    file (a part's journal: its first image is in place) appears."""
    result = work / "result.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", str(result), str(work / "src"), "--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)})
    first = None
    while proc.poll() is None:
        if first_image is not None and first is None and first_image.exists():
            first = round(time.perf_counter() - t0, 2)
        time.sleep(0.05)
    found = json.loads(result.read_text())
    found["wall_s"] = round(time.perf_counter() - t0, 2)
    if first_image is not None:
        found["first_image_s"] = first
    return found


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def _memory_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(work: Path, *argv: str) -> dict[str, object]:
    """``augment ARGV`` with its workers: the peak of the whole process tree's memory, as RSS
    (shared library pages counted in every process) and as PSS (each shared page split among
    the processes that map it: what the tree costs the machine)."""
    command = [sys.executable, "-m", "augment", *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)})
    peak_rss = peak_pss = processes = 0
    while proc.poll() is None:
        tree = _tree(proc.pid)
        processes = max(processes, len(tree))
        peak_rss = max(peak_rss, sum(_memory_kb(p, "Rss") for p in tree))
        peak_pss = max(peak_pss, sum(_memory_kb(p, "Pss") for p in tree))
        time.sleep(0.2)
    return {"code": proc.returncode, "seconds": round(time.perf_counter() - t0, 2), "processes": processes,
            "peak_rss_mb": round(peak_rss / 1e3), "peak_pss_mb": round(peak_pss / 1e3)}  # fmt: skip


def make_rows(work: Path, rows: int) -> Path:
    photos = sorted(p for p in PHOTOS.glob("*/*.jpg"))
    src = work / "src"
    with open(work / "manifest.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["path", "label"])
        for i in range(rows):
            photo = photos[i % len(photos)]
            folder = src / photo.parent.name / f"{i // 1000:04d}"
            if i % 1000 == 0 or not folder.exists():
                folder.mkdir(parents=True, exist_ok=True)
            link = folder / f"img{i:07d}.jpg"
            if not link.exists():
                os.link(photo, link)
            out.writerow([link.relative_to(work).as_posix(), photo.parent.name])
    (work / "styles").mkdir(exist_ok=True)
    for style in STYLES.glob("*.jpg"):
        shutil.copy(style, work / "styles" / style.name)
    return work / "manifest.csv"


def checkpoint_seconds(out: Path, part: str, rows: int) -> float:
    """One checkpoint of part ``part`` grown to ``rows`` rows (its real rows, copied)."""
    sys.path.insert(0, str(REPO))
    from augment.config import build_config
    from augment.outputs.parts import Recorder
    from augment.pipeline.prepare import prepare

    run = json.loads((out / "parts" / f"{part}.json").read_text())
    config = build_config(None, **run["config"])
    with open(out / "parts" / f"{part}.manifest.csv", newline="") as handle:
        real = list(csv.DictReader(handle))
    prepared = prepare(build_config(None, **{**run["config"], "limit": 1, "out": str(out.parent / "ck")}))
    recorder = Recorder(config, prepared, out.parent / "ck", part)
    (out.parent / "ck" / "parts").mkdir(parents=True, exist_ok=True)
    recorder.rows = [{**real[i % len(real)], "path": f"images/x/{i}.png"} for i in range(rows)]
    if hasattr(recorder, "begin"):  # the journal is the record: 100 more rows, each one line
        recorder.begin()
        t0 = time.perf_counter()
        for i in range(100):
            recorder._journal_append({**real[0], "path": f"images/y/{i}.png"})
        return round(time.perf_counter() - t0, 3)
    recorder.write_outputs()  # before: the first writes everything; time the next, after 100 more rows
    recorder.rows += [{**real[0], "path": f"images/y/{i}.png"} for i in range(100)]
    t0 = time.perf_counter()
    recorder.write_outputs()
    return round(time.perf_counter() - t0, 3)


def synthesize_shards(out: Path, part: str, shards: int, rows: int, target: Path) -> None:
    """``shards`` finished parts in ``target`` holding ``rows`` rows in all: the real part's
    status file and rows, paths renamed, images hard-linked."""
    info = json.loads((out / "parts" / f"{part}.json").read_text())
    with open(out / "parts" / f"{part}.manifest.csv", newline="") as handle:
        real = list(csv.DictReader(handle))
    columns = list(real[0])
    (target / "parts").mkdir(parents=True)
    (target / ".augment-out").write_text("")
    per = -(-rows // shards)
    for j in range(shards):
        name = f"shard-{j}-of-{shards}"
        folder = target / "images" / f"s{j:04d}"
        folder.mkdir(parents=True)
        made = []
        for i in range(min(per, rows - j * per)):
            row = dict(real[i % len(real)])
            link = f"images/s{j:04d}/{i}.png"
            os.link(out / row["path"], target / link)
            made.append({**row, "path": link})
        with open(target / "parts" / f"{name}.manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(made)
        (target / "parts" / f"{name}.failures.csv").write_text("row,path,label,reason,message\n")
        counts = {**info["counts"], "written": len(made), "tasks": len(made)}
        (target / "parts" / f"{name}.json").write_text(json.dumps({**info, "part": name, "counts": counts}))


def finished_out(out: Path, part: str, target: Path) -> int:
    """``target`` as a finished whole run of the job would leave it, without running the
    network: every planned task's row (the real shard's row as a template, with the task's own
    path, source, style and key), every image (a hard link to one real image), the digest
    cache, the merged manifest. A re-run of the same command then has nothing to do. Returns
    the number of images."""
    sys.path.insert(0, str(REPO))
    from augment.config import build_config
    from augment.io.lock import mark_ours
    from augment.outputs.merge import merge
    from augment.outputs.schema import write_csv
    from augment.pipeline.keys import digest_keys
    from augment.pipeline.networks import resolve_for
    from augment.pipeline.prepare import prepare

    run = json.loads((out / "parts" / f"{part}.json").read_text())
    config = build_config(None, **{**run["config"], "shard": None, "out": str(target)})
    with open(out / "parts" / f"{part}.manifest.csv", newline="") as handle:
        made = list(csv.DictReader(handle))
    template = made[0]
    prepared = prepare(config)
    (target / "parts").mkdir(parents=True)
    mark_ours(target)
    keys = digest_keys(config, prepared, resolve_for(config), target, "main")  # and the digest cache
    folders = set()
    rows = []
    for i, task in enumerate(prepared.tasks):
        image = out / made[i % len(made)]["path"]  # a file takes at most 65,000 links (ext4)
        folder = (target / task.output).parent
        if folder not in folders:
            folder.mkdir(parents=True, exist_ok=True)
            folders.add(folder)
        os.link(image, target / task.output)
        rows.append({**template, "path": task.output, "source": task.source.source, "label": task.source.label,
                     "split": task.source.split, "style": task.style_name, "k": task.k, "seed": task.seed,
                     "key": keys[task.output]})  # fmt: skip
    rows.sort(key=lambda r: r["path"])
    write_csv(target / "parts" / "main.manifest.csv", rows, list(template))
    (target / "parts" / "main.failures.csv").write_text("row,path,label,reason,message\n")
    counts = {"tasks": len(rows), "written": len(rows), "failed_rows": 0}
    info = {**run, "part": "main", "config": config.to_dict(), "counts": counts}
    (target / "parts" / "main.json").write_text(json.dumps(info))
    merge([target], expected_hash=f"{config_hash(config)}/{plan_hash(config)}")
    return len(rows)


def measure(rows: int, shards: int, base: Path) -> dict[str, object]:
    work = base / f"n{rows}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = make_rows(work, rows)
    print(f"{rows} rows made in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    common = [str(manifest), "--styles", str(work / "styles"), *FAST]
    found: dict[str, object] = {"rows": rows, "images": 3 * rows}
    found["validate"] = augment(work, "validate", *common, "--out", str(work / "out"))
    shutil.rmtree(work / "out", ignore_errors=True)
    part = f"shard-0-of-{shards}"
    journal = work / "out" / "parts" / f"{part}.journal.jsonl"
    shard = [*common, "--out", str(work / "out"), "--shard", f"0/{shards}"]
    found["shard"] = augment(work, "run", *shard, first_image=journal)
    found["shard_rerun"] = augment(work, "run", *shard)
    found["checkpoint_s"] = checkpoint_seconds(work / "out", part, rows)
    merged = work / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    synthesize_shards(work / "out", part, shards, 3 * rows, merged)
    found["merge"] = augment(work, "merge", str(merged))
    shutil.rmtree(merged)
    whole = work / "whole"
    shutil.rmtree(whole, ignore_errors=True)
    finished_out(work / "out", part, whole)
    found["whole_rerun"] = augment(work, "run", *common, "--out", str(whole))
    shutil.rmtree(whole)
    # --workers: the whole job (every row read, planned, keyed and header-read), then a window
    # of work, stopped by --max-seconds.
    seconds = str(max(60, rows // 5000))
    for workers in (1, 2):
        shutil.rmtree(work / "w", ignore_errors=True)
        found[f"workers_{workers}"] = tree_memory(work, "run", *common, "--out", str(work / "w"), "--max-seconds",
                                                  seconds, "--workers", str(workers))  # fmt: skip
        found[f"workers_{workers}"]["images"] = json.loads((work / "w" / "run.json").read_text())["counts"]["written"]
    print(json.dumps(found), file=sys.stderr)
    return found


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        child(Path(sys.argv[2]), sys.argv[3], sys.argv[5:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="a folder for the synthetic rows (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = [measure(n, args.shards, Path(tmp)) for n in args.rows]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
