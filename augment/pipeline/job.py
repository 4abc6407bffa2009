"""Running a job: in this process, on N local workers, as one shard, or as a torchrun rank.

Every way writes part files (see runner.py) and the same final files after ``merge``; an
image does not depend on the split beyond the convolutions' rounding (per-task seeds, per-image
Gram products; see docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import (
    EXIT_OK,
    EXIT_SIGHUP,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_SOME_FAILED,
    BudgetExhausted,
    ConfigError,
    Interrupted,
    OutputError,
    Stopped,
    TooManyFailures,
    WorkerFailed,
)
from ..io.digests import SUFFIX as DIGESTS
from ..io.digests import DigestCache
from ..io.lock import OutLock, lock_name, mark_ours
from ..io.sources import Failure, InputRows
from ..io.weights import NetWeights, check_networks, resolve_for
from ..outputs.merge import PART_NAME, PARTS, clear_parts, merge, recorded_rows, remove_stale, reusable_rows
from ..outputs.parts import failure_limit, too_many_failures
from .drivers import describe_device, resolve_device
from .part import PartRun, RunLog, RunSummary, order_by_shape
from .plan import Shard, Task, task_keys
from .prepare import Prepared, prepare
from .progress import ProgressFn
from .uptodate import record_no_op, up_to_date

log = logging.getLogger(__name__)
EXIT_BUDGET = 75  # a worker's exit code when --max-seconds stopped it (BudgetExhausted's)
WORKER_PREFIX = "augment-"  # a worker process's name: augment-worker-K-of-N


def _owner(config: RunConfig) -> Shard | None:
    """The share of the job this process runs: a --shard, a torchrun rank, or all of it."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        return Shard(int(os.environ.get("RANK", 0)), world)
    if config.shard:
        try:
            return Shard.parse(config.shard)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return None


def run(config: RunConfig, *, progress: ProgressFn | None = None, lock: bool = True) -> RunSummary:
    """Run a whole job, or this process's share of it. Raises AugmentError (with its exit
    code) for whole-run problems; problems with single rows end up in failures.csv. SIGINT
    and SIGTERM keep what is finished and raise Interrupted. ``lock=False``: the caller
    already holds OUT's lock (the CLI takes it before reading the other options)."""
    rank = int(os.environ.get("RANK", 0))
    deadline = None if config.max_seconds is None else time.time() + config.max_seconds
    held = OutLock(Path(config.out), lock_name(config.shard, rank)) if lock else contextlib.nullcontext()
    with held, _signals_raise():
        return _run(config, progress, deadline)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal or ssh session) raise Interrupted(143 or 129) in
    the main thread, so both keep what is finished and say so (SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    codes = {signal.SIGTERM: EXIT_SIGTERM, signal.SIGHUP: EXIT_SIGHUP}
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:  # nohup: the user asked to outlive the terminal
        del codes[signal.SIGHUP]

    def on_signal(signum: int, frame: object) -> None:
        raise Interrupted(codes[signal.Signals(signum)], signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, on_signal) for signum in codes}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(config: RunConfig, progress: ProgressFn | None, deadline: float | None) -> RunSummary:
    # A shard or rank plans only its own sources' tasks (from the whole manifest: names and
    # class targets depend on every row).
    prepared = prepare(config, owner=_owner(config))
    # Weights before OUT: a run that cannot start leaves nothing behind.
    t0 = time.perf_counter()
    # Copies of originals need no network: a copy-only job (say, only val/test rows) needs no weights.
    weights = _weights(config, prepared)
    check_networks(config, weights)
    weights_s = time.perf_counter() - t0
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        mark_ours(out)  # prepare() checked that OUT is augment's to take
        (out / "images").mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {out}: {err}") from err
    started = time.time()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    log_name = f"run.rank{rank}.log" if world > 1 and rank else "run.log"
    with RunLog(out / log_name):
        log.info(
            "augment writing to %s: %d rows usable, %d failed up front, %d styles, %d tasks",
            out.resolve(), len(prepared.rows), len(prepared.failures), len(prepared.styles), len(prepared.tasks),
        )  # fmt: skip
        if world > 1:
            return _run_rank(config, prepared, out, weights, rank, world, progress, started, deadline)
        if config.shard:
            return _run_shard(config, prepared, out, weights, progress, started, deadline)
        return _run_whole(config, prepared, out, weights, progress, started, deadline, weights_s)


def _run_shard(
    config: RunConfig, prepared: Prepared, out: Path, weights: NetWeights,
    progress: ProgressFn | None, started: float, deadline: float | None,
) -> RunSummary:  # fmt: skip
    """One shard of K: its own part, joined by `augment merge` once every shard has run."""
    shard = _owner(config)
    assert shard is not None
    name = f"shard-{shard.index}-of-{shard.count}"
    tasks = [t for t in prepared.tasks if shard.owns(t)]
    keys = _keys(config, prepared, weights, out, name, tasks)
    done = reusable_rows(out, keys, names=[name])
    previous = _previous_rows(out, keys, done, names=[name])
    _remove_dead_temp_files(out, [t.output for t in tasks], part=name)
    part = _run_part(
        config, prepared, out, name, weights, tasks, progress=progress, keys=keys, done=done, deadline=deadline,
        previous=previous,
    )  # fmt: skip
    log.info("shard %s done; run `augment merge %s` once every shard has finished", config.shard, out)
    return _summary(
        out, part.written, part.failed_rows, len(tasks), started, weights.identity, part.device, part=name,
        reused=len(done), skipped=len(done),
    )  # fmt: skip


def _run_whole(
    config: RunConfig, prepared: Prepared, out: Path, weights: NetWeights,
    progress: ProgressFn | None, started: float, deadline: float | None, weights_s: float,
) -> RunSummary:  # fmt: skip
    """The whole job in this process or its local workers, merged into OUT at the end."""
    cuda = resolve_device(config.device).type == "cuda"
    workers = config.workers or (torch.cuda.device_count() if cuda else 1)
    cores = os.cpu_count() or 1
    if not cuda and workers > cores:  # each worker holds a network: more than the cores only costs memory
        log.warning("--workers %d on %d CPU cores: running %d", workers, cores, cores)
        workers = cores
    keys = _keys(config, prepared, weights, out, "main")
    unchanged = up_to_date(out, config, keys, prepared.failures)
    if unchanged is not None:  # the nightly re-run of a dataset that has not changed
        merged = record_no_op(out, unchanged, started, time.time() - started)
        log.info("%d images up to date, 0 stale removed, 0 to make (OUT left as it was)", len(keys))
        log.info("main done: 0 images made, %d kept from earlier runs, %d rows failed",
                 len(keys), merged["counts"]["failed_rows"])  # fmt: skip
        return _summary(out, len(keys), merged["counts"]["failed_rows"], len(prepared.tasks), started,
                        weights.identity, resolve_device(config.device), reused=len(keys), skipped=len(keys),
                        merged=merged)  # fmt: skip
    done = reusable_rows(out, keys)
    previous = _previous_rows(out, keys, done)  # read before _reuse_and_clean clears the parts
    # Header reads before anything is removed: a missing or broken file is a failed row, and
    # a run that has too many must stop with OUT as it was.
    ordered = order_by_shape([t for t in prepared.tasks if t.output not in done], config)
    kept_stale, counts = _reuse_and_clean(config, prepared, out, keys, done, ordered[1])
    interrupted = None
    try:
        if workers > 1:
            _run_workers(config, prepared, out, workers, progress, keys=keys, done=done, kept=kept_stale,
                         deadline=deadline, previous=previous, ordered=ordered)  # fmt: skip
        else:
            timings = {"weights_s": weights_s}
            _run_part(config, prepared, out, "main", weights, prepared.tasks, progress=progress, timings=timings,
                      keys=keys, done=done, kept=kept_stale, deadline=deadline, previous=previous,
                      ordered=ordered)  # fmt: skip
    except KeyboardInterrupt:
        interrupted = Interrupted(EXIT_SIGINT, "SIGINT")
    except Stopped as err:
        interrupted = err
    result = merge(
        [out], expected_hash=f"{config.config_hash()}/{config.plan_hash()}", interrupted=interrupted, counts=counts
    )
    if interrupted:
        log.warning("%s: kept %d finished images", interrupted, result["counts"]["written"])
        raise interrupted
    images, failed = result["counts"]["written"], result["counts"]["failed_rows"]
    device = resolve_device(config.device)
    return _summary(out, images, failed, len(prepared.tasks), started, weights.identity, device,
                    reused=len(done) + len(kept_stale), skipped=len(done), removed=counts["removed"],
                    merged=result)  # fmt: skip


def _reuse_and_clean(
    config: RunConfig,
    prepared: Prepared,
    out: Path,
    keys: dict[str, str],
    done: dict[str, dict[str, Any]],
    header_failures: list[Failure],
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Incremental: tasks whose image exists with the same key (``done``) are kept, not redone;
    images of tasks that left the plan are removed (only ones augment recorded). Returns the
    stale rows kept recorded, and the counts for run.json."""
    # Limits first: a run that is going to abort must not remove or clear anything.
    limit = failure_limit(config, prepared)
    failed = len(prepared.failures) + len(header_failures)
    if limit is not None and failed > limit:
        raise TooManyFailures(f"{failed} rows failed up front, more than --max-failures {config.max_failures} allows")
    stale = {
        row["path"]: row for row in recorded_rows(out) if row["path"] not in keys and (out / row["path"]).is_file()
    }
    partial_plan = config.limit is not None  # a trial on the first rows: the rest is not stale
    # A row still in the manifest but failing this time (its file missing for a moment, say)
    # is not gone: its images stay, recorded, until the row itself leaves the manifest.
    failing = {failure.path for failure in prepared.failures}
    protected = {path: row for path, row in stale.items() if row.get("source") in failing}
    removed = 0
    if config.keep_stale or partial_plan:
        kept_stale = stale  # stay recorded, so a later run can still remove them
    else:
        kept_stale, removed = protected, remove_stale(out, keep=set(keys) | set(protected))
    clear_parts(out)  # their rows live on in `done`
    _remove_dead_temp_files(out)
    if done or removed:
        log.info("%d images up to date, %d stale removed, %d to make", len(done), removed, len(keys) - len(done))
    # tasks: the job's, once (workers each report the whole job's total).
    counts = {"tasks": len(prepared.tasks), "skipped": len(done), "kept_stale": len(kept_stale), "removed": removed}
    return kept_stale, counts


def _previous_rows(
    out: Path, keys: dict[str, str], done: dict[str, dict[str, Any]], names: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Rows earlier runs recorded for tasks still planned but not up to date. A task whose
    source cannot be read this time keeps its row (and image), as a failing row keeps its
    images: dropped from the manifest, the image would stay on disk unrecorded, for ever."""
    return {row["path"]: row for row in recorded_rows(out, names) if row["path"] in keys and row["path"] not in done}


def _held_rows(out: Path, previous: dict[str, dict[str, Any]] | None, failures: list[Any]) -> list[dict[str, Any]]:
    """The earlier rows of sources that failed their header read now, whose image is there.
    ``previous`` is emptied: the rest are not needed again, and a million rows are gigabytes."""
    failing = {failure.path for failure in failures}
    held = [row for row in (previous or {}).values() if row.get("source") in failing and (out / row["path"]).is_file()]
    if previous:
        previous.clear()
    return held


def _run_part(
    config: RunConfig,
    prepared: Prepared,
    out: Path,
    name: str,
    weights: Any,
    tasks: list[Task],
    *,
    keys: dict[str, str],
    done: dict[str, dict[str, Any]],
    kept: dict[str, dict[str, Any]] | None = None,
    previous: dict[str, dict[str, Any]] | None = None,
    deadline: float | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
    run_token: str | None = None,
    ordered: tuple[list[list[Task]], list[Failure]] | None = None,
) -> Any:
    """Run ``tasks`` as part ``name``; rows in ``done`` are kept, not redone. ``run_token``
    goes into the part's status file (torchrun ranks: which run made it). ``ordered``: the
    tasks to do as ``order_by_shape`` gave them, when the caller has read the headers."""
    todo = [t for t in tasks if t.output not in done]
    if done:
        log.info("%s: %d of %d tasks already done, %d to go", name, len(tasks) - len(todo), len(tasks), len(todo))
    groups, failures = ordered or order_by_shape(todo, config)
    part = PartRun(config, prepared, out, name=name, device=device, progress=progress, keys=keys, deadline=deadline,
                   about={"run": run_token} if run_token else None)  # fmt: skip
    part.timings.update(timings or {})
    held = _held_rows(out, previous, failures)
    part.rows = [done[t.output] for t in tasks if t.output in done] + list((kept or {}).values()) + held
    return part.run(weights, groups, total=len(tasks) + len(kept or {}), failures=failures)


def _remove_dead_temp_files(out: Path, outputs: Iterable[str] | None = None, part: str | None = None) -> None:
    """Temp files a killed run left (ours: ``.<name>.<random>.tmp``). A whole-job run holds
    OUT alone and removes them all; a shard, whose neighbours may be writing, only those of
    its own images (``outputs``) and of its own part files."""
    if outputs is None:
        for tmp in [*(out / "images").rglob(".*.tmp"), *out.glob(".*.tmp"), *(out / PARTS).glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)
        return
    for output in outputs:
        path = out / output
        for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in (out / PARTS).glob(f".{part}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _weights(config: RunConfig, prepared: Prepared) -> NetWeights:
    """The networks the job needs; copies of originals need none, so a copy-only job (only
    val/test rows, say) runs without weights."""
    return resolve_for(config) if any(not t.original for t in prepared.tasks) else NetWeights(None, None)


def _keys(
    config: RunConfig, prepared: Prepared, weights: Any, out: Path, name: str, tasks: list[Task] | None = None
) -> dict[str, str]:
    """Every task's key, from content digests cached in OUT by file identity (digests.py): a
    file is read only when it is new or touched. Part ``name`` reads its own cache; the whole
    job (``tasks`` None) every part's, and keeps one."""
    parts = out / PARTS
    whole = tasks is None
    names = [p.name[: -len(DIGESTS)] for p in parts.glob(f"*{DIGESTS}")] if whole else [name]
    caches = [parts / f"{n}{DIGESTS}" for n in names if PART_NAME.fullmatch(n)]
    cache = DigestCache(caches, check_content=config.check_content)
    tasks = prepared.tasks if tasks is None else tasks
    cache.digest_all(sorted({t.source.path for t in tasks}))
    keys = task_keys(tasks, config_hash=config.config_hash(), copy_hash=config.copy_hash(),
                     weights=weights.identity, digest=cache.digest)  # fmt: skip
    try:
        own = parts / f"{name}{DIGESTS}"
        if cache.changed or caches != [own]:  # a no-op re-run leaves it as it was
            cache.save(own)
        for old in caches if whole else []:
            if old.name != f"{name}{DIGESTS}":
                old.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write to {parts}: {err}") from err
    if cache.read:
        log.info("%d files read for their content digest, %d known unchanged", cache.read, cache.reused)
    return keys


def _summary(
    out: Path, images: int, failed: int, tasks: int, started: float, weights: str, device: torch.device,
    *, part: str | None = None, reused: int = 0, skipped: int = 0, removed: int = 0,
    merged: dict[str, Any] | None = None,
) -> RunSummary:  # fmt: skip
    """The summary of a whole job, or (``part``) of this process's share of it: ``images`` in
    its manifest, of which ``reused`` were there before (``skipped`` of them up to date). A
    merged job's exit code is run.json's (``merged``), so it never says done when run.json
    says incomplete."""
    failures_csv = out / PARTS / f"{part}.failures.csv" if part else out / "failures.csv"
    exit_code = merged["exit_code"] if merged else EXIT_SOME_FAILED if failed else EXIT_OK
    return RunSummary(
        out=str(out), exit_code=exit_code, tasks=tasks, written=images - reused,
        failed_rows=failed, seconds=round(time.time() - started, 3), weights=weights,
        device=describe_device(device), failures=_read_failures(failures_csv), skipped=skipped, removed=removed,
        images=images, incomplete=merged["exit_reason"] if merged and merged["status"] == "incomplete" else None,
    )  # fmt: skip


def _read_failures(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


# -- torchrun ---------------------------------------------------------------------------------
def _run_rank(
    config: RunConfig, prepared: Prepared, out: Path, weights: Any, rank: int, world: int,
    progress: ProgressFn | None, started: float, deadline: float | None,
) -> RunSummary:  # fmt: skip
    """One rank of ``torchrun -m augment run``: sources split by hash, no padding, no
    duplicates. The only collective is at the start (rank 0's token for this run); rank 0
    merges once every rank's part says it finished this run, however far apart they finish
    (a barrier would time out after the process group's 30 minutes). A restarted rank
    redoes only its own part."""
    import datetime

    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = resolve_device(config.device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if not cuda:  # ranks on one machine share its cores
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    timeout = float(os.environ.get(DIST_TIMEOUT_ENV, DIST_TIMEOUT_S))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    try:
        token = [uuid.uuid4().hex if rank == 0 else None]
        dist.broadcast_object_list(token, src=0)  # every rank's part says which run made it
        shard = Shard(rank, world)
        tasks = [t for t in prepared.tasks if shard.owns(t)]
        name = f"rank-{rank}-of-{world}"
        if rank == 0:
            clear_parts(out, keep={f"rank-{r}-of-{world}" for r in range(world)})
        keys = _keys(config, prepared, weights, out, name, tasks)
        done = reusable_rows(out, keys, names=[name])
        previous = _previous_rows(out, keys, done, names=[name])
        part = _run_part(
            config,
            prepared,
            out,
            name,
            weights,
            tasks,
            device=device,
            progress=progress,
            keys=keys,
            done=done,
            deadline=deadline,
            previous=previous,
            run_token=token[0],
        )
        if rank == 0:
            _wait_for_ranks(out, world, token[0], deadline, config.max_seconds)
            result = merge([out], expected_hash=f"{config.config_hash()}/{config.plan_hash()}")
            return _summary(
                out, result["counts"]["written"], result["counts"]["failed_rows"], prepared.job_tasks, started,
                weights.identity, part.device, merged=result,
            )  # fmt: skip
        return _summary(
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
    waiting = {f"rank-{r}-of-{world}" for r in range(1, world)}
    logged = time.monotonic()
    while waiting:
        for name in sorted(waiting):
            info = _read_json(out / PARTS / f"{name}.json")
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not there yet, or being replaced
    return data if isinstance(data, dict) else None


# -- local workers ----------------------------------------------------------------------------
def _run_workers(
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
    header = PartRun(config, prepared, out, name="header", keys=keys)
    header.rows = list(done.values()) + list(kept.values()) + _held_rows(out, previous, failures)
    header.record_failures(failures)
    # --max-failures counts the job's failed rows: these, and every worker's (one shared count).
    limit = failure_limit(config, prepared)
    failed = ctx.Value("i", len(header.record.failures))
    if limit is not None and failed.value > limit:
        raise TooManyFailures(too_many_failures(failed.value, config))
    share = WorkerShare(
        config=dataclasses.replace(config, max_failures=limit), inputs=_no_rows(prepared.inputs),
        needs_weights=prepared.needs_weights, total=len(prepared.tasks), deadline=deadline,
        environ=dict(os.environ),
    )  # fmt: skip
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
    total = len(prepared.tasks)
    failed_up_front = total - sum(len(g) for g in groups)  # and kept: nothing left to do for them
    try:
        while any(p.is_alive() for p in procs):
            if progress:
                progress(failed_up_front + counter.value, total)
            if limit is not None and failed.value > limit:
                raise TooManyFailures(too_many_failures(failed.value, config))  # the workers stop below
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
        _remove_dead_temp_files(out)
    if progress:
        progress(failed_up_front + counter.value, total)
    if limit is not None and failed.value > limit:
        raise TooManyFailures(too_many_failures(failed.value, config))
    _check_workers(procs, out, config)


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
    torch.set_num_threads(threads)
    logging.getLogger("augment").setLevel(logging.INFO)
    config, deadline = share.config, share.deadline
    prepared = Prepared(inputs=share.inputs, rows=[], failures=[], styles=[], tasks=[])
    weights = resolve_for(config) if share.needs_weights else NetWeights(None, None)

    def groups() -> Any:
        # Each group comes with its tasks' keys: the job's 3 M keys stay in the parent.
        while (item := queue.get()) is not None:
            group, keys = item
            part.keys.update(keys)
            yield group

    reported = 0.0

    def count(finished: float, total: int) -> None:
        nonlocal reported
        with done.get_lock():
            done.value += finished - reported
        reported = finished

    with RunLog(out / f"run.{name}.log"):
        part = PartRun(config, prepared, out, name=name, device=device, progress=count, keys={}, deadline=deadline,
                       shared_failures=failed)  # fmt: skip
        part.prefetch = 1
        try:
            part.run(weights, groups(), total=share.total, failures=[])
        except BudgetExhausted as err:  # its part is recorded: tell the parent by the exit code
            log.info("%s: %s", name, err)
            sys.exit(EXIT_BUDGET)
