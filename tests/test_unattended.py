"""Cron and pipeline safety: one run per OUT, signals keep finished work."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from augment.io.lock import OutLock

from .test_cli import files_under, invoke

pytestmark = pytest.mark.slow  # every test here runs augment in processes it starts or kills


def test_a_second_run_on_a_busy_out_exits_75_whatever_its_options(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    with OutLock(out):
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--size", "4")  # bad option too
    assert code == 75
    assert "in use by another run" in err and f"pid {os.getpid()}" in err


def test_shards_lock_apart(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    args = ["--weights", "random", "--size", "32", "--iterations", "1"]
    with OutLock(out, ".augment-shard-0-of-2.lock"):
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--shard", "1/2", *args)
        assert code == 0, err  # another shard may run beside it
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--shard", "0/2", *args)
        assert code == 75  # the same shard twice may not


def test_a_lock_left_by_a_killed_process_does_not_block(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from augment.io.lock import OutLock; import time\n"
            f"with OutLock(__import__('pathlib').Path({str(out)!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9: no clean-up ran
    holder.wait()
    code, _, err = invoke(
        "run", manifest, "--styles", styles, "--out", out, "--weights", "random", "--size", "32", "--iterations", "1"
    )
    assert code == 0, err


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_keeps_finished_images_and_exits_with_its_code(
    dataset: tuple[Path, Path], tmp_path: Path, sig: int, expected: int
) -> None:
    # The originals are copied at once; the stylized images could never finish (10^8
    # iterations), so the signal always lands mid-run whatever the machine's speed.
    manifest, styles = dataset
    out = tmp_path / "out"
    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
               "--weights", "random", "--size", "32", "--iterations", "100000000", "--per-image", "2",
               "--include-originals", "--batch-size", "1", "-q"]  # fmt: skip
    # The run as a terminal starts it: a suite launched under nohup or in a shell's background
    # passes its children SIGHUP and SIGINT ignored, and a signal ignored at exec stays ignored.
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    deadline = time.monotonic() + 120
    while not list((out / "images").rglob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never left running (10^8 iterations) when an assertion fails
    assert proc.returncode == expected, stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["exit_code"] == expected
    assert signal.Signals(sig).name in run["exit_reason"] and signal.Signals(sig).name in (out / "run.log").read_text()
    rows = pd.read_csv(out / "manifest.csv")
    on_disk = {p.relative_to(out).as_posix() for p in files_under(out / "images")}
    assert 1 <= len(rows) <= 3 and set(rows["style"]) == {"original"}  # what finished: originals
    assert set(rows["path"]) == on_disk  # finished kept, nothing half-written


ARGS = ["--weights", "random", "--size", "32", "--iterations", "2", "--per-image", "2"]


def _images(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in files_under(out / "images")}


def test_an_unchanged_rerun_makes_nothing_and_a_change_redoes_only_its_tasks(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, *ARGS)[0] == 0
    first = _images(out)
    code, stdout, err = invoke("run", manifest, "--styles", styles, "--out", out, *ARGS, "--json")
    assert code == 0 and _images(out) == first  # nothing rewritten
    # Said as it is: nothing written, all up to date (it used to say "6 images written").
    summary = json.loads(stdout)
    assert (summary["written"], summary["skipped"], summary["removed"], summary["images"]) == (0, 6, 0, 6)
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["skipped"] == 6 and run["counts"]["written"] == 6
    assert "6 images up to date" in (out / "run.log").read_text()
    # New content for one source: only its two images are made again.
    from .conftest import noise_image

    noise_image(24, 20, seed=99).save(manifest.parent / "ants" / "a1.png")
    assert invoke("run", manifest, "--styles", styles, "--out", out, *ARGS)[0] == 0
    changed = {p for p, t in _images(out).items() if first[p] != t}
    assert changed == {p for p in first if "/a1__" in p}


def test_rows_that_left_the_manifest_lose_their_images_unless_kept(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, *ARGS)[0] == 0
    (out / "images" / "ants" / "mine.txt").write_text("not augment's")  # never touched
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(line for line in lines if "b1.png" not in line) + "\n")
    assert invoke("run", manifest, "--styles", styles, "--out", out, *ARGS, "--keep-stale")[0] == 0
    assert any("/b1__" in p for p in _images(out))
    assert invoke("run", manifest, "--styles", styles, "--out", out, *ARGS)[0] == 0
    remaining = _images(out)
    assert not any("/b1__" in p for p in remaining) and "images/ants/mine.txt" in remaining
    assert json.loads((out / "run.json").read_text())["counts"]["removed"] == 2
    assert len(pd.read_csv(out / "manifest.csv")) == 4
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(line for line in lines if "a2.jpg" not in line) + "\n")
    code, stdout, err = invoke("run", manifest, "--styles", styles, "--out", out, *ARGS, "--json")
    summary = json.loads(stdout)
    assert (summary["written"], summary["skipped"], summary["removed"], summary["images"]) == (0, 2, 2, 2)
    assert "0 images written, 2 up to date, 2 stale removed: 2 images in" in err


def _wait_for(condition, seconds: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)


def _pngs(out: Path) -> list[Path]:
    return list((out / "images").rglob("*.png")) if (out / "images").exists() else []


KILL_POINTS = {
    # Before the model is loaded: only the lock and the log exist.
    "start-up": lambda out: (out / ".augment.lock").exists(),
    "first image": lambda out: len(_pngs(out)) >= 1,
    "mid-run": lambda out: len(_pngs(out)) >= 3,
}


# fp32 on one thread at batch size 1: each image is computed alone by the same kernels on the
# same inputs whatever else the run does, so a resumed run's images repeat the unbroken run's
# to the byte (with larger batches the resumed run would batch them differently).
# 40 iterations an image: after a kill point at least 3 images (~0.5 s on a fast CPU) are left,
# far more than the 0.1 s the kill may come after it, so the kill always lands mid-run.
KILL_OPTIONS = ["--weights", "random", "--size", "32", "--iterations", "40", "--per-image", "2",
                "--batch-size", "1", "--precision", "fp32", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images an uninterrupted run makes of the `dataset` fixture's data."""
    from .conftest import make_dataset, make_styles

    root = tmp_path_factory.mktemp("unbroken")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = invoke(
            "run", make_dataset(root), "--styles", make_styles(root), *KILL_OPTIONS, "--out", root / "out"
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    return root / "out"


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_gives_exactly_one_image_per_task_identical_to_an_unbroken_run(
    dataset: tuple[Path, Path], tmp_path: Path, point: str, one_thread: None, unbroken_run: Path
) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    options = [str(manifest), "--styles", str(styles), *KILL_OPTIONS]
    proc = subprocess.Popen([sys.executable, "-m", "augment", "run", *options, "--out", str(out)],
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    _wait_for(lambda: KILL_POINTS[point](out))
    time.sleep(random.Random(point).uniform(0.0, 0.1))  # somewhere after the point, not at it
    assert proc.poll() is None, "the run finished before the kill: make KILL_OPTIONS slower"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished
    # What a kill can leave: a temp file from a write cut short (once the run made images/) ...
    if (out / "images").is_dir():
        (out / "images" / "ants").mkdir(exist_ok=True)
        (out / "images" / "ants" / ".a1__waves__0.png.dead.tmp").write_bytes(b"half")
    # ... and an image renamed into place whose journal line was never written.
    from augment.outputs.parts import JOURNAL, PARTS, part_rows

    journal = out / PARTS / f"main{JOURNAL}"
    if journal.exists() and journal.read_text().strip():
        recorded = {row["path"] for row in part_rows(out, "main")}
        assert recorded <= {p.relative_to(out).as_posix() for p in _pngs(out)}  # journal never runs ahead
        lines = journal.read_text().splitlines(keepends=True)
        journal.write_text("".join(lines[:-1]))

    code, _, err = invoke("run", *options, "--out", out)
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    on_disk = {p.relative_to(out).as_posix() for p in files_under(out / "images")}
    assert len(rows) == 6 and rows["path"].is_unique and set(rows["path"]) == on_disk  # no orphan, no temp file
    assert not list(out.rglob("*.tmp"))
    for path in rows["path"]:
        assert (out / path).read_bytes() == (unbroken_run / path).read_bytes(), path


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount (user namespaces) to make a small disk"
)
def test_a_full_disk_or_read_only_out_stops_with_exit_3_and_one_line_leaving_no_partial_file(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, styles = dataset
    out, kept = tmp_path / "out", tmp_path / "kept"
    out.mkdir()
    run = (
        f"{sys.executable} -m augment run {manifest} --styles {styles} --out {out} "
        "--weights random --size 64 --iterations 2 --per-image 2 -q"
    )
    # A private 64 KiB file system on OUT (tmpfs counts 4 KiB pages: ~8 of bookkeeping files,
    # 2 an image): room for three or four of the six images, so that the first image's
    # journal line always fits (at 40 KiB the disk could fill there). The copy to `kept`
    # shows what was on the full disk; then the disk grows and the same run finishes; then
    # the file system turns read-only and a run that has work to do stops.
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {out} && {{ {run} 2>{tmp_path}/err1; echo $? >{tmp_path}/code1; "
        f"cp -a {out} {kept}; mount -o remount,size=10m {out}; {run} 2>{tmp_path}/err2; echo $? >{tmp_path}/code2; "
        f"cp -a {out}/. {kept}-after; mount -o remount,ro {out}; {run} --per-image 3 2>{tmp_path}/err3; echo $? "
        f">{tmp_path}/code3; }}"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=180)
    assert (tmp_path / "code1").read_text().strip() == "3"
    err = (tmp_path / "err1").read_text().strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and err[0].startswith("augment: error: cannot write")
    images = list(files_under(kept / "images"))
    assert images and not list(kept.rglob("*.tmp"))  # what was written is whole; no temp file left
    for path in images:
        Image.open(path).load()  # a truncated file would raise here
    assert (tmp_path / "code2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    after = tmp_path / "kept-after"
    rows = pd.read_csv(after / "manifest.csv")
    assert len(rows) == 6 and set(rows["path"]) == {
        p.relative_to(after).as_posix() for p in files_under(after / "images")
    }
    recorded = len((kept / "parts" / "main.journal.jsonl").read_text().splitlines())
    assert 1 <= recorded <= len(images)
    assert json.loads((after / "run.json").read_text())["counts"]["skipped"] == recorded  # kept, not redone
    # A read-only OUT: the same exit and one line.
    assert (tmp_path / "code3").read_text().strip() == "3"
    err = (tmp_path / "err3").read_text().strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0], err


def _hostile_dataset(root: Path) -> tuple[Path, int]:
    """Valid-but-odd rows and broken rows; returns the manifest and the number of valid rows."""
    import numpy as np
    from PIL import Image

    from .conftest import noise_image

    data = root / "data"
    (data / "odd").mkdir(parents=True)
    base = noise_image(30, 20, 1)
    odd = {
        "rgba.png": base.convert("RGBA"),
        "la.png": base.convert("LA"),
        "p.gif": base.convert("P"),
        "cmyk.jpg": base.convert("CMYK"),
        "grey16.png": Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)),
        "photo.webp": base,
        "tiny.png": noise_image(7, 5, 2),
    }
    for name, img in odd.items():
        img.save(data / "odd" / name)
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(data / "odd" / "rotated.jpg", exif=exif.tobytes())
    (data / "odd" / "empty.jpg").write_bytes(b"")
    (data / "odd" / "text.png").write_text("not an image")
    full = data / "odd" / "cut.jpg"
    noise_image(64, 64, 3).save(full)
    full.write_bytes(full.read_bytes()[:300])
    Image.new("L", (3000, 3000)).save(data / "odd" / "bomb.png")  # over --max-pixels 1000000
    (root / "outside.png").write_bytes((data / "odd" / "rgba.png").read_bytes())
    valid = [f"odd/{name},ok" for name in [*odd, "rotated.jpg"]] + ["odd/rgba.png,Ünïcode"]
    broken = [
        "odd/gone.png,ok",
        "odd/empty.jpg,ok",
        "odd/text.png,ok",
        "odd/cut.jpg,ok",
        "odd/bomb.png,ok",
        "odd/rgba.png,..",
        "odd/rgba.png,a/b",
        "odd/rgba.png,",
        "../outside.png,ok",
        f"odd/rgba.png,{root}",
    ]
    manifest = data / "manifest.csv"
    manifest.write_text("path,label\n" + "\n".join(valid + broken) + "\n", encoding="utf-8")
    return manifest, len(valid)


def test_hostile_input_every_valid_row_written_every_broken_row_explained(tmp_path: Path) -> None:
    from .conftest import make_styles

    manifest, valid = _hostile_dataset(tmp_path)
    styles = make_styles(tmp_path)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--max-pixels", "1000000",
                          "--weights", "random", "--size", "32", "--iterations", "1")  # fmt: skip
    assert code == 1, err
    rows = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(rows) == valid and "Ünïcode" in set(rows["label"])
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    assert list(failures["reason"]) == ["missing", "undecodable", "undecodable", "undecodable", "too_large",
                                        "bad_label", "bad_label", "bad_label", "outside_root", "bad_label"]  # fmt: skip
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert all(out in p.parents for p in written)  # nothing outside OUT


def test_max_failures_aborts_with_exit_3(tmp_path: Path) -> None:
    from .conftest import make_styles

    manifest, _ = _hostile_dataset(tmp_path)
    styles = make_styles(tmp_path)
    common = ["--styles", styles, "--weights", "random", "--size", "32", "--iterations", "1", "--max-pixels", "1000000"]
    code, _, err = invoke("run", manifest, "--out", tmp_path / "a", "--max-failures", "3", *common)
    assert code == 3 and "more than --max-failures 3" in err
    code, _, err = invoke("run", manifest, "--out", tmp_path / "b", "--max-failures", "60%", *common)
    assert code == 1, err  # 10 of 19 rows failed: within 60%


def test_max_seconds_stops_cleanly_with_exit_75_and_the_next_run_resumes(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    # An image that would take forever: the budget is checked between iterations, not only
    # when an image finishes, so the run stops on time however long its images are. (The old
    # form of this test, 25 iterations under 1 s, exited 0 on a fast machine.)
    manifest, styles = dataset
    out = tmp_path / "out"
    slow = ["--weights", "random", "--size", "32", "--per-image", "2", "--batch-size", "1"]
    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
               *slow, "--iterations", "100000000", "--max-seconds", "2", "-q"]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 75, done.stderr
    assert time.monotonic() - t0 < 120  # start-up plus the 2 s budget, not 10^8 iterations
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "budget" and run["exit_code"] == 75
    rows = pd.read_csv(out / "manifest.csv")
    assert set(rows["path"]) == {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *slow, "--iterations", "3")
    assert code == 0, err
    assert len(pd.read_csv(out / "manifest.csv")) == 6


def _workers_of(pid: int) -> set[int]:
    """The worker processes of ``pid``: the children of its fork server (or, where workers are
    spawned, its own children that run spawn_main; never multiprocessing's resource tracker)."""
    parents: dict[int, tuple[int, bytes]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents[int(stat.parent.name)] = (ppid, (stat.parent / "cmdline").read_bytes())
        except (OSError, ValueError, IndexError):
            continue
    servers = {p for p, (ppid, cmdline) in parents.items() if ppid == pid and b"forkserver" in cmdline}
    return {
        p for p, (ppid, cmdline) in parents.items()
        if ppid in servers or (ppid == pid and b"spawn_main" in cmdline)
    }  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_workers_run(manifest: Path, styles: Path, out: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
               "--weights", "random", "--size", "32", "--iterations", "40", "--per-image", "2", "--workers", "2",
               "--batch-size", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "images").rglob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_stop_with_sigterm_and_die_with_a_killed_parent(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    proc = _start_workers_run(manifest, styles, tmp_path / "term")
    workers = _workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    rows = pd.read_csv(tmp_path / "term" / "manifest.csv")
    assert len(rows) >= 1  # what the workers finished is recorded (their journals)
    assert not any(_alive(pid) for pid in workers)

    proc = _start_workers_run(manifest, styles, tmp_path / "kill")
    workers = _workers_of(proc.pid)
    assert len(workers) == 2
    proc.kill()  # kill -9: the parent cannot clean up; the kernel tells the workers
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.2)


@pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount (user namespaces) to make a small disk"
)
def test_a_disk_already_full_at_start_is_exit_3_with_one_line(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    # The lock's holder file is the first thing written: a full disk there was exit 70.
    manifest, styles = dataset
    out = tmp_path / "out"
    out.mkdir()
    run = f"{sys.executable} -m augment run {manifest} --styles {styles} --out {out} --weights random --size 32 -q"
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {out} && {{ dd if=/dev/zero of={out}/fill bs=1k count=64 2>/dev/null; "
        f"{run} 2>{tmp_path}/err; echo $? >{tmp_path}/code; }}"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=180)
    err = (tmp_path / "err").read_text().strip().splitlines()
    assert (tmp_path / "code").read_text().strip() == "3", err
    assert len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in err[0]


def test_the_report_counts_what_this_run_made(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, *ARGS)[0] == 0
    # --limit 1: the first source's images are up to date, the others' kept (not in this job).
    code, stdout, _ = invoke("run", manifest, "--styles", styles, "--out", out, *ARGS, "--limit", "1", "--json")
    assert code == 0 and json.loads(stdout)["written"] == 0
    assert invoke("report", out)[0] == 0
    page = (out / "report.html").read_text()
    assert re.search(r"made / up to date / removed this run</t[hd]>\s*<td>0 / 2 / 0<", page), page[:3000]
