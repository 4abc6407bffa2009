"""Every way of splitting a job writes the same dataset (CPU, gloo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from augment.engines.vgg import random_state_dict
from augment.io.sources import SourceRow
from augment.io.styles import Style
from augment.io.weights import cached_vgg19
from augment.pipeline.job import Shard
from augment.pipeline.plan import plan_tasks

from .test_cli import invoke

# fp32 on every CPU, so that the comparison below is the same one everywhere (auto would be
# bf16 on some).
ARGS = ["--weights", "random", "--size", "32", "--iterations", "3", "--per-image", "2", "--seed", "7",
        "--precision", "fp32"]  # fmt: skip


def _run(manifest: Path, styles: Path, out: Path, *extra: str) -> None:
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *ARGS, *extra)
    assert code == 0, err


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same names, same manifest rows (timings and losses aside), same pixels within rounding:
    one level in at most 0.1% of values. fp32 convolutions round differently with the batch
    and thread count, which differ between the splits (workers and ranks get a share of the
    cores), and 3 L-BFGS steps amplify that. Measured on an AVX2-only Zen 3 (2 cores, 2 runs
    of this file): 48 images, all byte-identical, and equal losses."""
    ma = pd.read_csv(a / "manifest.csv").drop(columns=["seconds"])
    mb = pd.read_csv(b / "manifest.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(ma.filter(regex="^(?!.*_loss$)"), mb.filter(regex="^(?!.*_loss$)"))
    losses = ma.filter(regex="_loss$").columns
    assert len(ma) > 0 and len(losses) > 0
    assert np.allclose(ma[losses], mb[losses], rtol=1e-3, atol=0), (ma[losses], mb[losses])
    for rel in ma["path"]:
        pa, pb = a / rel, b / rel
        diff = np.abs(np.asarray(Image.open(pa), dtype=int) - np.asarray(Image.open(pb), dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.001, rel


def test_shards_partition_the_tasks() -> None:
    rows = [SourceRow(row=i, source=f"{i}.png", path=Path(f"/x/{i}.png"), label="a") for i in range(50)]
    styles = [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}") for i in range(3)]
    tasks = plan_tasks(rows, styles, per_image=2, seed=0)
    owners = [[Shard(k, 3).owns(t) for k in range(3)] for t in tasks]
    assert all(sum(o) == 1 for o in owners)
    assert all(any(o[k] for o in owners) for k in range(3))
    with pytest.raises(Exception, match="K/N"):
        Shard.parse("2")
    with pytest.raises(Exception, match="0..N-1"):
        Shard.parse("2/2")


@pytest.mark.slow
def test_two_workers_write_the_same_dataset(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    _run(manifest, styles, tmp_path / "one")
    _run(manifest, styles, tmp_path / "two", "--workers", "2")
    assert_same_dataset(tmp_path / "one", tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two" / "parts").glob("*.json")) == [
        "header.json", "worker-0-of-2.json", "worker-1-of-2.json",
    ]  # fmt: skip


def test_shards_into_one_out_then_merge(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    _run(manifest, styles, tmp_path / "one")
    shared = tmp_path / "shared"
    _run(manifest, styles, shared, "--shard", "0/2")
    assert not (shared / "manifest.csv").exists()  # nothing final until the merge
    _run(manifest, styles, shared, "--shard", "1/2")
    assert (shared / "parts" / "shard-0-of-2.json").exists()  # shard 1 left shard 0's part alone
    code, _, err = invoke("merge", shared)
    assert code == 0, err
    assert_same_dataset(tmp_path / "one", shared)


def test_shards_in_separate_outs_merge_into_the_first(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    _run(manifest, styles, tmp_path / "one")
    _run(manifest, styles, tmp_path / "a", "--shard", "0/2")
    _run(manifest, styles, tmp_path / "b", "--shard", "1/2")
    code, _, err = invoke("merge", tmp_path / "a", tmp_path / "b")
    assert code == 0, err
    assert_same_dataset(tmp_path / "one", tmp_path / "a")


def test_merge_refuses_parts_made_with_different_settings(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    _run(manifest, styles, tmp_path / "out", "--shard", "0/2")
    _run(manifest, styles, tmp_path / "out", "--shard", "1/2", "--tv-weight", "2")
    code, _, err = invoke("merge", tmp_path / "out")
    assert code == 2 and "different settings" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_same_dataset(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    _run(manifest, styles, tmp_path / "one")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(tmp_path / "ranks"), *ARGS, "-q",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_dataset(tmp_path / "one", tmp_path / "ranks")


def test_a_restarted_shard_does_only_what_is_left(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    _run(manifest, styles, out, "--shard", "0/1")
    rows = pd.read_csv(out / "parts" / "shard-0-of-1.manifest.csv")
    lost = out / rows["path"][0]
    lost.unlink()  # as if the shard died before writing this one
    kept = {p: (out / p).stat().st_mtime_ns for p in rows["path"][1:]}
    _run(manifest, styles, out, "--shard", "0/1")
    assert lost.is_file()
    assert all((out / p).stat().st_mtime_ns == t for p, t in kept.items())  # not redone
    assert len(pd.read_csv(out / "parts" / "shard-0-of-1.manifest.csv")) == len(rows)
    assert "5 of 6 tasks already done" in (out / "run.log").read_text()


def test_merge_refuses_shards_that_planned_different_images(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    _run(manifest, styles, tmp_path / "out", "--shard", "0/2")
    _run(manifest, styles, tmp_path / "out", "--shard", "1/2", "--include-originals")  # same pixels, other plan
    code, _, err = invoke("merge", tmp_path / "out")
    assert code == 2 and "different settings" in err


@pytest.mark.slow
def test_ranks_finishing_far_apart_still_merge_under_a_tiny_process_group_timeout(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    # Issue 22: one dist.barrier() after a part that may run for days timed out (NCCL's 10
    # minutes) when ranks finished apart, and rank 0 never merged. Here the group's timeout is
    # 3 s and rank 1 is stopped (SIGSTOP: a stalled node) for 12 s while rank 0 finishes.
    import json
    import os
    import signal
    import socket
    import time

    manifest, styles = dataset
    out = tmp_path / "ranks"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "AUGMENT_DIST_TIMEOUT_S": "3"}  # fmt: skip
    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
               *ARGS, "--iterations", "30", "--include-originals", "-q"]  # fmt: skip
    ranks = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]  # fmt: skip
    try:
        status = out / "parts" / "rank-1-of-2.json"
        for _ in range(600):  # rank 1 at work: past the start-up handshake
            if status.is_file() and json.loads(status.read_text()).get("status") == "running":
                break
            time.sleep(0.1)
        os.kill(ranks[1].pid, signal.SIGSTOP)
        time.sleep(12)
        assert ranks[0].poll() is None, ranks[0].communicate()[1][-2000:]  # waiting, not timed out
        os.kill(ranks[1].pid, signal.SIGCONT)
        results = [rank.communicate(timeout=300) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                os.kill(rank.pid, signal.SIGCONT)
                rank.kill()
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in results]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["exit_code"] == 0
    rows = pd.read_csv(out / "manifest.csv")
    assert len(rows) == 3 * 3 and {p.name for p in (out / "parts").glob("rank-*.json")} == {
        "rank-0-of-2.json", "rank-1-of-2.json"}  # fmt: skip


@pytest.mark.slow
def test_workers_of_a_later_run_see_its_environment(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers are forked from a server that the first run started, with that run's
    # environment: a later run's TORCH_HOME (where the hub cache is) must still be its own, as
    # it would be for spawned workers; and its relative paths its own.
    manifest, styles = dataset
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    fast = ["--size", "32", "--iterations", "1", "--per-image", "1", "--limit", "2", "--workers", "2"]

    def run(folder: Path, out: str, *weights: str) -> None:
        monkeypatch.chdir(folder)
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *fast, *weights)
        assert code == 0, err
        assert len(pd.read_csv(folder / out / "manifest.csv")) == 2

    run(first, "out", "--weights", "random")  # starts the server here
    torch.save(random_state_dict(5), later / "vgg19.pth")
    run(later, "relative", "--weights", "vgg19.pth")
    monkeypatch.setenv("TORCH_HOME", str(later / "home"))
    cached = later / "home" / "hub" / "checkpoints" / cached_vgg19().name
    cached.parent.mkdir(parents=True)
    (later / "vgg19.pth").rename(cached)
    run(later, "cached")  # no --weights: the hub cache, which only TORCH_HOME names
