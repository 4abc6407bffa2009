"""The run modes that span processes: N local workers pulling source images from one queue
(forked from a server that imported torch once), and a torchrun rank (its share of the sources
by hash; rank 0 merges once every rank's part says it finished this run)."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import BudgetExhausted, OutputError, TooManyFailures, WorkerFailed, too_many_failures
from ..io.sources import InputRows
from ..outputs.merge import merge
from ..outputs.parts import clear_parts, part_info, part_name, remove_temp_files, reusable_rows
from ..outputs.runlog import RunLog
from ..outputs.schema import Failure
from .decode import order_by_shape
from .devices import resolve_device
from .keys import config_hash, digest_keys, plan_hash
from .networks import NetWeights, resolve_for
from .part import PartRun, run_part
from .plan import Shard, Task
from .prepare import Prepared, failure_limit
from .process import torch_threads
from .progress import ProgressFn
from .reuse import held_rows, previous_rows
from .summary import RunSummary, summarize

log = logging.getLogger(__name__)

EXIT_BUDGET = 75  # a worker's exit code when --max-seconds stopped it (BudgetExhausted's)


WORKER_PREFIX = "augment-"  # a worker process's name: augment-worker-K-of-N


# -- torchrun ---------------------------------------------------------------------------------
def run_rank(
    config: RunConfig, prepared: Prepared, out: Path, weights: Any, rank: int, world: int,
    progress: ProgressFn | None, started: float, deadline: float | None,
) -> RunSummary:  # fmt: skip
    """One rank of ``torchrun -m augment run``: sources split by hash, no padding, no
    duplicates. The only collective is at the start (rank 0's token for this run); rank 0
    merges once every rank's part says it finished this run, however far apart they finish
    (a barrier would time out after the process group's 30 minutes). A restarted rank
    redoes only its own part."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = resolve_device(config.device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    device = f"cuda:{local_rank}" if cuda else "cpu"
    # Ranks on one machine share its cores.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    threads = torch.get_num_threads() if cuda else max(1, (os.cpu_count() or 1) // local_world)
    with torch_threads(threads):
        return _rank(config, prepared, out, weights, rank, world, progress, started, deadline, backend, device)


def _rank(
    config: RunConfig, prepared: Prepared, out: Path, weights: Any, rank: int, world: int,
    progress: ProgressFn | None, started: float, deadline: float | None, backend: str, device: str,
) -> RunSummary:  # fmt: skip
    import datetime

    import torch.distributed as dist

    timeout = float(os.environ.get(DIST_TIMEOUT_ENV, DIST_TIMEOUT_S))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    try:
        token = [uuid.uuid4().hex if rank == 0 else None]
        dist.broadcast_object_list(token, src=0)  # every rank's part says which run made it
        shard = Shard(rank, world)
        tasks = [t for t in prepared.tasks if shard.owns(t)]
        name = part_name("rank", rank, world)
        if rank == 0:
            clear_parts(out, keep={part_name("rank", r, world) for r in range(world)})
        keys = digest_keys(config, prepared, weights, out, name, tasks)
        done = reusable_rows(out, keys, names=[name])
        previous = previous_rows(out, keys, done, names=[name])
        part = run_part(config, prepared, out, name, weights, tasks, device=device, progress=progress, keys=keys,
                        done=done, deadline=deadline, previous=previous, run_token=token[0])  # fmt: skip
        if rank == 0:
            _wait_for_ranks(out, world, token[0], deadline, config.max_seconds)
            result = merge([out], expected_hash=f"{config_hash(config)}/{plan_hash(config)}")
            return summarize(
                out, result["counts"]["written"], result["counts"]["failed_rows"], prepared.job_tasks, started,
                weights.identity, part.device, merged=result,
            )  # fmt: skip
        return summarize(
            out, part.written, part.failed_rows, len(tasks), started, weights.identity, part.device, part=name,
            reused=len(done), skipped=len(done),
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


DIST_TIMEOUT_ENV = "AUGMENT_DIST_TIMEOUT_S"  # the process group's timeout: only the start waits on it


DIST_TIMEOUT_S = 1800.0


RANK_POLL_S = 2.0


def _wait_for_ranks(out: Path, world: int, token: str, deadline: float | None, max_seconds: float | None) -> None:
    """Rank 0, its own part done: wait until every rank's part file says this run (``token``)
    finished it. A rank that stopped (--max-seconds, a signal) ends the wait with its reason;
    one that dies is torchrun's to restart or to stop the job (it stops rank 0 too)."""
    waiting = {part_name("rank", r, world) for r in range(1, world)}
    logged = time.monotonic()
    while waiting:
        for name in sorted(waiting):
            info = part_info(out, name)
            if not info or info.get("run") != token or info.get("status") == "running":
                continue
            if info.get("status") != "finished":
                if info.get("status") == BudgetExhausted.status:
                    raise BudgetExhausted(max_seconds or 0.0)
                raise OutputError(f"{name} ended with status {info.get('status')}: run the job again to finish it")
            waiting.discard(name)
        if not waiting:
            return
        if deadline is not None and time.time() > deadline:
            raise BudgetExhausted(max_seconds or 0.0)
        if time.monotonic() - logged >= 60:
            log.info("rank 0 waiting for %s to finish", ", ".join(sorted(waiting)))
            logged = time.monotonic()
        time.sleep(RANK_POLL_S)


# -- local workers ----------------------------------------------------------------------------
def run_workers(
    config: RunConfig, prepared: Prepared, out: Path, workers: int, progress: ProgressFn | None,
    *, keys: dict[str, str], done: dict[str, dict[str, Any]], kept: dict[str, dict[str, Any]], deadline: float | None,
    previous: dict[str, dict[str, Any]] | None = None, ordered: tuple[list[list[Task]], list[Failure]] | None = None,
) -> None:  # fmt: skip
    """N worker processes pulling source images from one queue (GPUs: one each; CPU: the
    cores split between them). The parent header-reads and orders the work."""

    groups, failures = ordered or order_by_shape([t for t in prepared.tasks if t.output not in done], config)
    devices = _devices(config, workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = _worker_context()
    queue = ctx.Queue()
    for group in groups:  # the tasks themselves, with their keys: a worker never plans the job again
        queue.put((group, {t.output: keys[t.output] for t in group}))
    for _ in range(workers):
        queue.put(None)
    counter = ctx.Value("d", 0.0)  # images done, with the running ones' share (ProgressFn)
    # Rows failed up front or at the header read, and images kept from earlier runs, belong to
    # no worker: a part of their own.
    kept_rows = list(done.values()) + list(kept.values()) + held_rows(out, previous, failures)
    header = PartRun(config, prepared, out, name="header", keys=keys, kept_rows=kept_rows)
    header.record_failures(failures)
    # --max-failures counts the job's failed rows: these, and every worker's (one shared count).
    limit = failure_limit(config, prepared)
    failed = ctx.Value("i", len(header.record.failures))
    if limit is not None and failed.value > limit:
        raise TooManyFailures(too_many_failures(failed.value, config.max_failures))
    share = WorkerShare(
        config=dataclasses.replace(config, max_failures=limit), inputs=_no_rows(prepared.inputs),
        needs_weights=prepared.needs_weights, total=len(prepared.tasks), deadline=deadline,
        environ=dict(os.environ),
    )  # fmt: skip
    procs = _start_workers(ctx, share, out, devices, threads, queue, counter, failed)
    total = len(prepared.tasks)
    failed_up_front = total - sum(len(g) for g in groups)  # and kept: nothing left to do for them
    try:
        while any(p.is_alive() for p in procs):
            if progress:
                progress(failed_up_front + counter.value, total)
            if limit is not None and failed.value > limit:
                raise TooManyFailures(too_many_failures(failed.value, config.max_failures))  # the workers stop below
            time.sleep(0.5)
    finally:  # interrupted: stop the workers before the merge reads their parts
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        # Work no worker took (a --max-seconds window ended, a worker died) is still in the
        # queue's buffer: without this, exit would wait for ever for someone to read it.
        queue.cancel_join_thread()
        # A worker killed mid-write (out of memory, say) leaves its temporary file; every
        # writer is gone now.
        remove_temp_files(out)
    if progress:
        progress(failed_up_front + counter.value, total)
    if limit is not None and failed.value > limit:
        raise TooManyFailures(too_many_failures(failed.value, config.max_failures))
    _check_workers(procs, out, config)


def _start_workers(
    ctx: Any, share: WorkerShare, out: Path, devices: list[str], threads: int, queue: Any, counter: Any, failed: Any
) -> list[Any]:
    workers = len(devices)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(share, out, f"worker-{i}-of-{workers}", devices[i], threads, queue, counter, failed),
            name=f"{WORKER_PREFIX}worker-{i}-of-{workers}",
            daemon=True,
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    return procs


def _check_workers(procs: list[Any], out: Path, config: RunConfig) -> None:
    """How the workers ended, as the parent's outcome: all done; the --max-seconds budget spent
    (a worker exits 75, the job is resumable: BudgetExhausted); or one died, killed by a signal
    or an error (WorkerFailed, naming it). Either way the caller merges what they finished."""
    broken = [p for p in procs if p.exitcode not in (0, EXIT_BUDGET)]
    if broken:
        described = [
            f"{p.name} was killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0
            else f"{p.name} exited with {p.exitcode} (see {out / f'run.{p.name.removeprefix(WORKER_PREFIX)}.log'})"
            for p in broken
        ]  # fmt: skip
        hint = "; out of memory? (see dmesg)" if any(p.exitcode == -signal.SIGKILL for p in broken) else ""
        raise WorkerFailed(f"{', '.join(described)}{hint}")
    if any(p.exitcode == EXIT_BUDGET for p in procs):
        raise BudgetExhausted(config.max_seconds or 0.0)


def _worker_context() -> Any:
    """Workers are forked from a server process that has imported torch and augment once
    (multiprocessing's forkserver): they share those ~300 MB of pages instead of each making
    its own, as spawned processes do. The server never touches CUDA or runs a torch op, so a
    fork from it is as safe as a spawn. Spawn where there is no fork (Windows)."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["augment.pipeline.job"])  # no effect once the server runs
    return ctx


def _devices(config: RunConfig, workers: int) -> list[str]:
    if config.devices:
        listed = [d.strip() for d in config.devices.split(",") if d.strip()]
        for device in listed:
            resolve_device(device)  # a GPU this machine does not have: exit 2 here, not in a worker
        return [listed[i % len(listed)] for i in range(workers)]
    if resolve_device(config.device).type == "cuda":
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return ["cpu"] * workers


def _die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGTERM when its parent dies, even by kill -9, so no
    worker outlives the run that started it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() == 1:  # the parent died before the line above ran
            os._exit(1)


@dataclass(frozen=True)
class WorkerShare:
    """What a worker is handed: the job's settings and facts, not its rows or plan
    (the tasks come through the queue), so a worker's memory and start-up do not grow with
    the job. ``config.max_failures`` is the job's limit as a number of rows."""

    config: RunConfig
    inputs: InputRows  # the manifest's root and extra columns; no rows
    needs_weights: bool
    total: int  # the job's tasks
    deadline: float | None
    # The server a worker is forked from started with the first run's environment (TORCH_HOME,
    # say); a worker takes the current one, as a spawned process would. (Paths are absolute.)
    environ: dict[str, str]


def _no_rows(inputs: InputRows) -> InputRows:
    return InputRows(rows=[], failures=[], root=inputs.root, extra_columns=inputs.extra_columns)


def _worker_main(
    share: WorkerShare, out: Path, name: str, device: str, threads: int, queue: Any, done: Any, failed: Any
) -> None:
    _die_with_parent()
    # What the server imported stays shared only while no one writes to it: the collector
    # would (it marks every object it visits).
    gc.freeze()
    os.environ.clear()
    os.environ.update(share.environ)
    logging.getLogger("augment").setLevel(logging.INFO)
    config, deadline = share.config, share.deadline
    prepared = Prepared(inputs=share.inputs, rows=[], failures=[], styles=[], tasks=[])
    weights = resolve_for(config) if share.needs_weights else NetWeights(None, None)

    keys: dict[str, str] = {}  # this worker's tasks' keys, as they arrive (the job's stay in the parent)

    def groups() -> Any:
        while (item := queue.get()) is not None:
            group, group_keys = item
            keys.update(group_keys)
            yield group

    reported = 0.0

    def count(finished: float, total: int) -> None:
        nonlocal reported
        with done.get_lock():
            done.value += finished - reported
        reported = finished

    with torch_threads(threads), RunLog(out / f"run.{name}.log"):
        part = PartRun(config, prepared, out, name=name, device=device, progress=count, keys=keys, deadline=deadline,
                       shared_failures=failed, prefetch=1)  # fmt: skip
        try:
            part.run(weights, groups(), total=share.total, failures=[])
        except BudgetExhausted as err:  # its part is recorded: tell the parent by the exit code
            log.info("%s: %s", name, err)
            sys.exit(EXIT_BUDGET)
