"""Past one machine on Ray: the job split into shards, one Ray task per shard that is not yet
finished, each a ``--shard K/N`` run on whichever node Ray picks; a task that fails or is
lost (worker or node gone, preempted, out of memory) is run again up to ``--shard-retries``
times, one past ``--shard-timeout`` is stopped and run again; then the merge, as for any other
way of running the job. A shard resumes from its own journal, so a retry redoes only the
images its last attempt did not finish, and re-running the command submits only the shards
that are not finished. OUT must be a filesystem every node sees (docs/scaling.md)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..config import RunConfig
from ..errors import ConfigError, OutputError, ShardsFailed
from ..io.lock import lock_name
from ..outputs.merge import merge
from ..outputs.parts import clear_parts, part_info, part_name
from .keys import config_hash, plan_hash
from .networks import NetWeights
from .prepare import Prepared
from .progress import ETA_EVERY_S, ProgressFn
from .summary import RunSummary, summarize

log = logging.getLogger(__name__)
SHARDS_PER_GPU, SHARDS_PER_CPU = 4, 2  # several per device, so that a straggler holds back little
POLL_S = 1.0
LOCK_WAIT_S = 30.0
STARTED = "started"  # what a shard's task says first, once a worker has it
# Passed on to every task: augment's own settings and where torch keeps its weights.
FORWARDED_ENV = ("AUGMENT_", "TORCH_HOME", "XDG_CACHE_HOME")
# Test hooks (files): the first attempt to see the file absent creates it and, once it has
# written an image, exits (a lost worker) or stalls (a straggler).
CRASH_ONCE_ENV, STALL_ONCE_ENV = "AUGMENT_TEST_CRASH_ONCE", "AUGMENT_TEST_STALL_ONCE"


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'augment[ray]'") from None
    return ray


def shard_name(index: int, count: int) -> str:
    return part_name("shard", index, count)


def _finished(out: Path, name: str, hashes: tuple[str, str]) -> bool:
    """The shard's part says it finished this job (the same config and plan hashes)."""
    info = part_info(out, name) or {}
    return info.get("status") == "finished" and (info.get("config_hash"), info.get("plan_hash")) == hashes


def _connect(ray: Any, address: str) -> None:
    if ray.is_initialized():
        return
    # "local" starts a cluster of this machine for this job; "auto" joins the one `ray start` made.
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)


def default_shards(resources: dict[str, float]) -> int:
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    return SHARDS_PER_GPU * gpus if gpus else SHARDS_PER_CPU * max(1, cpus)


def _shard_task(config: RunConfig, index: int, count: int, threads: int) -> Iterator[str | dict[str, Any]]:
    """One shard, on whatever node Ray chose: a ``--shard K/N`` run with its own lock. It says
    when it starts, so that the time limit leaves out the time it waited for a GPU."""
    from .job import run  # here: job imports this module
    from .process import torch_threads

    yield STARTED
    out = Path(config.out)
    if not out.is_dir():
        raise OutputError(
            f"{out} is not there on {socket.gethostname()}: with --ray, OUT must be a filesystem every node "
            "sees (NFS, Lustre, a mounted bucket)"
        )
    shard = dataclasses.replace(config, ray=None, shards=None, shard_timeout=None, shard=f"{index}/{count}", quiet=True)
    _wait_for_the_last_attempt(out, shard.shard)
    with torch_threads(threads):
        yield run(shard, progress=_test_hook()).as_dict()


def _wait_for_the_last_attempt(out: Path, shard: str) -> None:
    """A stopped attempt's process can take a moment to end and free the shard's lock."""
    try:
        with FileLock(str(out / lock_name(shard)), timeout=LOCK_WAIT_S):
            pass
    except Timeout:
        pass  # someone else's run: the shard's own lock says whose


def _test_hook() -> Callable[[float, int], None] | None:
    crash, stall = os.environ.get(CRASH_ONCE_ENV), os.environ.get(STALL_ONCE_ENV)
    if not (crash or stall):
        return None

    def after_an_image(done: float, total: int) -> None:
        for path, act in ((crash, lambda: os._exit(1)), (stall, lambda: time.sleep(3600))):
            if path and done >= 1 and not os.path.exists(path):
                Path(path).touch()
                act()

    return after_an_image


@dataclass
class _Attempt:
    index: int
    started: float | None = None  # when a worker began it (monotonic); None while it waits for one


@dataclass
class _Shards:
    """The driver's view: the task to submit, the attempts running (by their Ray task),
    attempts per shard, what failed for good, and the counts its log line shows."""

    count: int
    remote: Any  # _shard_task as a Ray remote function
    resources: dict[str, Any]  # its options: GPUs, CPUs, no retries of Ray's own, the environment
    threads: int  # torch threads per task: 1 on a CPU, 0 (torch's choice) beside a GPU
    running: dict[Any, _Attempt] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    done: int = 0
    retried: int = 0
    images: int = 0


def _shards(ray: Any, config: RunConfig) -> _Shards:
    """The shard count and the task, decided once from the cluster's resources."""
    resources = ray.cluster_resources()
    gpu = resources.get("GPU", 0) > 0
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    options = dict(num_gpus=1 if gpu else 0, num_cpus=1, max_retries=0, runtime_env={"env_vars": env})
    return _Shards(config.shards or default_shards(resources), ray.remote(_shard_task), options, 0 if gpu else 1)


def _submit(ray: Any, config: RunConfig, shards: _Shards, index: int) -> None:
    remote = shards.remote.options(**shards.resources, name=shard_name(index, shards.count))
    task = remote.remote(config, index, shards.count, shards.threads)
    shards.running[task] = _Attempt(index)
    shards.attempts[index] = shards.attempts.get(index, 0) + 1


def _again_or_fail(ray: Any, config: RunConfig, shards: _Shards, index: int, why: str) -> None:
    name = shard_name(index, shards.count)
    if shards.attempts[index] > config.shard_retries:
        shards.failed[index] = why
        log.error("%s failed %d times, the last: %s", name, shards.attempts[index], why)
        return
    log.warning("%s: %s; running it again (attempt %d)", name, why, shards.attempts[index] + 1)
    shards.retried += 1
    _submit(ray, config, shards, index)


def _collect(ray: Any, config: RunConfig, shards: _Shards) -> None:
    """What the running shards said since the last look; those past --shard-timeout stopped."""
    tasks = list(shards.running)
    ready, _ = ray.wait(tasks, num_returns=len(tasks), timeout=POLL_S)
    for task in ready:
        attempt = shards.running[task]
        try:
            said = ray.get(next(task))
        except Exception as err:  # a task's error, a lost worker or node: Ray's exceptions all
            del shards.running[task]
            _again_or_fail(ray, config, shards, attempt.index, f"{type(err).__name__}: {_last_line(err)}")
            continue
        if said == STARTED:
            attempt.started = time.monotonic()
            continue
        del shards.running[task]
        shards.done += 1
        shards.images += said["images"]
    if config.shard_timeout is None:
        return
    for task, attempt in list(shards.running.items()):
        if attempt.started is not None and time.monotonic() - attempt.started > config.shard_timeout:
            ray.cancel(task, force=True)  # ends its worker process; its journal keeps what it wrote
            del shards.running[task]
            _again_or_fail(ray, config, shards, attempt.index, f"over --shard-timeout {config.shard_timeout:g} s")


def _last_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else "no message"


def run_on_ray(
    config: RunConfig, prepared: Prepared, out: Path, weights: NetWeights, progress: ProgressFn | None, started: float
) -> RunSummary:
    """Every unfinished shard as a Ray task, then the merge."""
    ray = require_ray()
    _connect(ray, config.ray or "auto")
    shards = _shards(ray, config)
    count = shards.count
    clear_parts(out, keep={shard_name(k, count) for k in range(count)})  # an earlier split's parts
    hashes = config_hash(config), plan_hash(config)
    todo = [k for k in range(count) if not _finished(out, shard_name(k, count), hashes)]
    log.info("ray: %d of %d shards to run (%d finished before)", len(todo), count, count - len(todo))
    for index in todo:
        _submit(ray, config, shards, index)
    logged = time.monotonic()
    while shards.running:
        _collect(ray, config, shards)
        if progress:
            progress(min(shards.images, len(prepared.tasks)), len(prepared.tasks))
        if time.monotonic() - logged >= ETA_EVERY_S or not shards.running:
            log.info("ray: %d/%d shards done, %d running, %d retried, %d failed; %d images from finished shards",
                     shards.done + count - len(todo), count, len(shards.running), shards.retried, len(shards.failed),
                     shards.images)  # fmt: skip
            logged = time.monotonic()
    stopped = None
    if shards.failed:
        names = ", ".join(f"{shard_name(k, count)} ({why})" for k, why in sorted(shards.failed.items()))
        stopped = ShardsFailed(f"still failed after {config.shard_retries} retries: {names}")
        log.error("ray: %s; run the same command again to retry them", stopped)
    result = merge([out], expected_hash="/".join(hashes), interrupted=stopped)
    written, failed_rows = result["counts"]["written"], result["counts"]["failed_rows"]
    return summarize(out, written, failed_rows, prepared.job_tasks, started, weights.identity, _device(), merged=result)


def _device() -> Any:
    import torch

    return torch.device("cpu")  # the driver's; each shard's part names its own
