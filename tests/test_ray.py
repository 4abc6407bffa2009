"""--ray on a real local Ray cluster (2 CPUs, started here): the same dataset as one process,
shards that crash, stall or fail for good, and a re-run that submits only what is left."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from augment.config import RunConfig
from augment.io.lock import mark_ours
from augment.pipeline.cluster import CRASH_ONCE_ENV, STALL_ONCE_ENV
from augment.pipeline.job import run

from .conftest import make_dataset, make_styles
from .test_parallel import assert_same_dataset

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    """The job's options and its output made in one process, to compare with."""
    root = tmp_path_factory.mktemp("job")
    options = dict(manifest=str(make_dataset(root)), styles=str(make_styles(root)), weights="random", size=32,
                   iterations=2, per_image=2, precision="fp32")  # fmt: skip
    assert run(RunConfig(**options, out=str(root / "one"))).exit_code == 0
    return options, root / "one"


def _same_dataset(one: Path, ray_out: Path) -> None:
    """The one-process dataset within fp32 rounding (a Ray task on the CPU runs one thread, the
    reference two, and its shard batches other images together: test_parallel's tolerance),
    and each image exactly once: a retried shard doubles nothing."""
    assert_same_dataset(one, ray_out)
    paths = pd.read_csv(ray_out / "manifest.csv")["path"]
    assert paths.is_unique
    assert sorted(p.relative_to(ray_out).as_posix() for p in (ray_out / "images").rglob("*.png")) == sorted(paths)


def test_eight_shards_on_ray_make_the_same_dataset_as_one_process(cluster: object, job, tmp_path: Path) -> None:
    options, one = job
    summary = run(RunConfig(**options, out=str(tmp_path / "ray"), ray="auto", shards=8))
    assert summary.exit_code == 0 and summary.images == len(pd.read_csv(one / "manifest.csv"))
    assert sorted(p.name for p in (tmp_path / "ray" / "parts").glob("shard-*.json")) == sorted(
        f"shard-{k}-of-8.json" for k in range(8)
    )
    _same_dataset(one, tmp_path / "ray")


@pytest.mark.parametrize(
    ("hook", "extra", "reason"),
    [
        (CRASH_ONCE_ENV, {}, "WorkerCrashedError: "),  # its worker process exits: a lost worker or node
        (STALL_ONCE_ENV, {"shard_timeout": 12}, "over --shard-timeout 12 s; running it again"),  # it hangs: a straggler
    ],
    ids=["worker dies mid-shard", "past its time limit"],
)
def test_a_shard_that_dies_or_stalls_is_run_again_and_the_dataset_is_complete(
    cluster: object, job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    hook: str, extra: dict[str, float], reason: str,
) -> None:  # fmt: skip
    options, one = job
    monkeypatch.setenv(hook, str(tmp_path / "hooked"))  # the first shard to write an image, once
    with caplog.at_level(logging.INFO, logger="augment"):
        summary = run(RunConfig(**options, out=str(tmp_path / "ray"), ray="auto", shards=4, **extra))
    assert (tmp_path / "hooked").exists() and summary.exit_code == 0
    again = [r.message for r in caplog.records if "running it again" in r.message]
    assert len(again) == 1 and "attempt 2" in again[0] and reason in again[0], again
    _same_dataset(one, tmp_path / "ray")


def test_a_shard_that_fails_every_retry_ends_the_job_incomplete_and_a_rerun_submits_only_it(
    cluster: object, job, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options, one = job
    out = tmp_path / "ray"
    (out / "parts" / "shard-1-of-4.json").mkdir(parents=True)  # its status file cannot be written, even by root
    mark_ours(out)
    with caplog.at_level(logging.INFO, logger="augment"):
        summary = run(RunConfig(**options, out=str(out), ray="auto", shards=4, shard_retries=1))
    assert summary.exit_code == 1 and summary.incomplete and "shard-1-of-4" in summary.incomplete
    failed = [r.message for r in caplog.records if "still failed after 1 retries" in r.message]
    assert len(failed) == 1 and "shard-1-of-4" in failed[0] and "shard-0-of-4" not in failed[0]
    (out / "parts" / "shard-1-of-4.json").rmdir()  # the cause fixed: the same command again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="augment"):
        assert run(RunConfig(**options, out=str(out), ray="auto", shards=4)).exit_code == 0
    assert any("ray: 1 of 4 shards to run (3 finished before)" in r.message for r in caplog.records)
    _same_dataset(one, out)


def test_a_driver_killed_mid_job_and_run_again_submits_only_the_unfinished_shards(
    cluster: object, job, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options, one = job
    out, stalled = tmp_path / "ray", tmp_path / "stalled"
    flags = ["--weights", "random", "--size", "32", "--iterations", "2", "--per-image", "2", "--precision", "fp32"]
    command = [sys.executable, "-m", "augment", "run", options["manifest"], "--styles", options["styles"], *flags,
               "--out", str(out), "--ray", "local", "--shards", "8"]  # fmt: skip
    # Its own local cluster; the first shard to write an image hangs, so the job cannot end.
    driver = subprocess.Popen(command, env={**os.environ, STALL_ONCE_ENV: str(stalled)}, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _finished_shards(out) < 7 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
        assert _finished_shards(out) == 7 and stalled.exists() and driver.poll() is None
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # nothing of the driver's runs after this, nor its cluster
        driver.wait(timeout=60)
    with caplog.at_level(logging.INFO, logger="augment"):
        assert run(RunConfig(**options, out=str(out), ray="auto", shards=8)).exit_code == 0
    assert any("ray: 1 of 8 shards to run (7 finished before)" in r.message for r in caplog.records)
    _same_dataset(one, out)


def _finished_shards(out: Path) -> int:
    statuses = []
    for path in (out / "parts").glob("shard-*.json"):
        try:
            statuses.append(json.loads(path.read_text())["status"])
        except (OSError, ValueError, KeyError):
            pass  # being written
    return statuses.count("finished")


def test_without_ray_installed_the_ray_mode_says_how_to_install_it_and_writes_nothing(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    from .test_cli import invoke

    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--weights", "random", "--out", tmp_path / "out",
                          "--ray", "local")  # fmt: skip
    assert code == 2 and "--ray needs Ray: pip install 'augment[ray]'" in " ".join(err.split())
    assert not (tmp_path / "out").exists()
