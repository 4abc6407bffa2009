"""Running a job: in this process, on N local workers, as one shard, or as a torchrun rank
(the last two in workers.py); then the merge.

Every way writes part files (see part.py) and the same final files after ``merge``; an
image does not depend on the split beyond the convolutions' rounding (per-task seeds, per-image
Gram products; see docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM, ConfigError, Interrupted, OutputError, Stopped
from ..io.lock import OutLock, lock_name, mark_ours
from ..outputs.merge import merge
from ..outputs.parts import part_name, remove_temp_files, reusable_rows
from ..outputs.runlog import RunLog
from .cluster import require_ray, run_on_ray
from .decode import order_by_shape
from .devices import resolve_device
from .keys import config_hash, digest_keys, plan_hash
from .networks import NetWeights, check_networks, resolve_for
from .part import run_part
from .plan import Shard
from .prepare import Prepared, prepare
from .progress import ProgressFn
from .reuse import previous_rows, reuse_and_clean
from .summary import RunSummary, summarize
from .uptodate import record_no_op, up_to_date
from .workers import run_rank, run_workers

log = logging.getLogger(__name__)


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
    name = lock_name(config.shard, rank, ray=config.ray is not None)
    held = OutLock(Path(config.out), name) if lock else contextlib.nullcontext()
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
    if config.ray is not None:
        require_ray()  # before anything is planned or written
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
        if config.ray is not None:
            return run_on_ray(config, prepared, out, weights, progress, started)
        if world > 1:
            return run_rank(config, prepared, out, weights, rank, world, progress, started, deadline)
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
    name = part_name("shard", shard.index, shard.count)
    tasks = [t for t in prepared.tasks if shard.owns(t)]
    keys = digest_keys(config, prepared, weights, out, name, tasks)
    done = reusable_rows(out, keys, names=[name])
    previous = previous_rows(out, keys, done, names=[name])
    remove_temp_files(out, [t.output for t in tasks], part=name)
    part = run_part(
        config, prepared, out, name, weights, tasks, progress=progress, keys=keys, done=done, deadline=deadline,
        previous=previous,
    )  # fmt: skip
    log.info("shard %s done; run `augment merge %s` once every shard has finished", config.shard, out)
    return summarize(
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
    keys = digest_keys(config, prepared, weights, out, "main")
    unchanged = up_to_date(out, config, keys, prepared.failures)
    if unchanged is not None:  # the nightly re-run of a dataset that has not changed
        merged = record_no_op(out, unchanged, started, time.time() - started)
        log.info("%d images up to date, 0 stale removed, 0 to make (OUT left as it was)", len(keys))
        log.info("main done: 0 images made, %d kept from earlier runs, %d rows failed",
                 len(keys), merged["counts"]["failed_rows"])  # fmt: skip
        return summarize(out, len(keys), merged["counts"]["failed_rows"], len(prepared.tasks), started,
                        weights.identity, resolve_device(config.device), reused=len(keys), skipped=len(keys),
                        merged=merged)  # fmt: skip
    done = reusable_rows(out, keys)
    previous = previous_rows(out, keys, done)  # read before reuse_and_clean clears the parts
    # Header reads before anything is removed: a missing or broken file is a failed row, and
    # a run that has too many must stop with OUT as it was.
    ordered = order_by_shape([t for t in prepared.tasks if t.output not in done], config)
    kept_stale, counts = reuse_and_clean(config, prepared, out, keys, done, ordered[1])
    interrupted = None
    try:
        if workers > 1:
            run_workers(config, prepared, out, workers, progress, keys=keys, done=done, kept=kept_stale,
                         deadline=deadline, previous=previous, ordered=ordered)  # fmt: skip
        else:
            timings = {"weights_s": weights_s}
            run_part(config, prepared, out, "main", weights, prepared.tasks, progress=progress, timings=timings,
                      keys=keys, done=done, kept=kept_stale, deadline=deadline, previous=previous,
                      ordered=ordered)  # fmt: skip
    except KeyboardInterrupt:
        interrupted = Interrupted(EXIT_SIGINT, "SIGINT")
    except Stopped as err:
        interrupted = err
    result = merge(
        [out], expected_hash=f"{config_hash(config)}/{plan_hash(config)}", interrupted=interrupted, counts=counts
    )
    if interrupted:
        log.warning("%s: kept %d finished images", interrupted, result["counts"]["written"])
        raise interrupted
    images, failed = result["counts"]["written"], result["counts"]["failed_rows"]
    device = resolve_device(config.device)
    return summarize(out, images, failed, len(prepared.tasks), started, weights.identity, device,
                    reused=len(done) + len(kept_stale), skipped=len(done), removed=counts["removed"],
                    merged=result)  # fmt: skip


def _weights(config: RunConfig, prepared: Prepared) -> NetWeights:
    """The networks the job needs; copies of originals need none, so a copy-only job (only
    val/test rows, say) runs without weights."""
    return resolve_for(config) if any(not t.original for t in prepared.tasks) else NetWeights(None, None)
