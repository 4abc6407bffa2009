"""Runs one part of a job: has the engine's driver make its tasks and records what the
driver yields.

A part is the whole job (one process), one worker, one shard or one torchrun rank; each writes
``OUT/parts/<name>.manifest.csv``, ``.failures.csv`` and ``.json``, which ``merge`` joins into
the final manifest.csv, failures.csv and run.json. A part knows nothing of losses: the
drivers (drivers.py) hand tensors to the engines and yield finished images back.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Engine, RunConfig
from ..engines.jobs import Steps
from ..engines.precision import resolve_precision
from ..engines.vgg import Flavour
from ..errors import Interrupted, Stopped
from ..outputs.parts import Recorder
from ..outputs.schema import Failure, engine_name, manifest_row
from .decode import Decoder, order_by_shape
from .devices import describe_device, resolve_device
from .drivers import CopyDriver, DreamDriver, Driver, Failed, GatysDriver, Made
from .keys import config_hash, plan_hash
from .networks import NetWeights
from .options import row_params, row_style_weight, stage_iterations
from .plan import Task
from .prepare import Prepared, failure_limit
from .process import return_freed_memory
from .progress import ProgressFn, ProgressTracker
from .reuse import held_rows

log = logging.getLogger(__name__)


@dataclass
class PartSummary:
    name: str
    written: int
    failed_rows: int
    device: torch.device


def versions() -> dict[str, str]:
    # importlib.metadata, not imports: importing torchvision alone costs ~0.5 s of start-up.
    from importlib.metadata import PackageNotFoundError, version

    found = {"augment": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "torchvision", "pillow", "pandas"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


class PartRun:
    """One part of a job. ``run`` takes the part's tasks as groups (one per source image, in
    processing order), has the engine's driver make them, and consumes what the driver yields:
    images and failures recorded in ``Recorder`` (written in threads, journaled,
    ``OUT/parts/<name>.*``), progress counted in ``ProgressTracker``, in one loop.

    ``kept_rows``: rows kept from earlier runs; ``keys``: output path -> task key, recorded in
    each row (a worker fills its dict as tasks arrive); ``prefetch``: sources decoded ahead of
    the device (workers sharing one queue take 1, so that one worker does not hoard work)."""

    def __init__(
        self,
        config: RunConfig,
        prepared: Prepared,
        out: Path,
        *,
        name: str = "main",
        device: str | None = None,
        progress: ProgressFn | None = None,
        keys: dict[str, str] | None = None,
        kept_rows: Iterable[dict[str, Any]] = (),
        deadline: float | None = None,
        shared_failures: Any = None,
        about: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
        prefetch: int = 4,
    ) -> None:
        self.config, self.out, self.name, self.prefetch = config, out, name, prefetch
        self.about = about or {}  # more for the part's status file
        self.keys = keys if keys is not None else {}
        self.device = resolve_device(device or config.device)
        self.precision = resolve_precision(config.precision, self.device)
        identity = {"config": config.to_dict(), "config_hash": config_hash(config), "plan_hash": plan_hash(config),
                    "inputs_root": str(prepared.inputs.root)}  # relative sources are relative to it  # fmt: skip
        self.record = Recorder(
            config, out, name, identity=identity, extra_columns=prepared.inputs.extra_columns, rows=kept_rows,
            failures=prepared.failures, max_failures=failure_limit(config, prepared), shared_failures=shared_failures,
        )  # fmt: skip
        self.tracker = ProgressTracker(progress, deadline=deadline, max_seconds=config.max_seconds)
        self.timings: dict[str, float] = dict(timings or {})
        self.weights_id = ""
        self.flavour = Flavour.TORCHVISION  # of the VGG19 weights: decides the default loss weights
        self._params: str | None = None  # the manifest's params column, the same for every image

    def run(
        self, weights: NetWeights, groups: Iterable[list[Task]], *, total: int, failures: Iterable[Failure] = ()
    ) -> PartSummary:
        self.record.add_failures(failures)
        self.weights_id = weights.identity
        if weights.gatys is not None:
            self.flavour = weights.gatys.flavour
        self._write_status("running")
        kept = len(self.record.rows)  # rows kept from an earlier run: done, not made now
        self.tracker.start(kept, total)
        try:
            self.record.check_failures()
            if isinstance(groups, list) and not groups:
                self.tracker.callback(total, total)  # nothing to make: no network is built
            else:
                self.record.begin()
                driver = self._driver(weights)
                return_freed_memory()
                self._make(driver, groups)
        except (KeyboardInterrupt, Stopped) as err:
            # Keep what is finished: images already written are recorded, then re-raise.
            self.record.keep_finished()
            self.record.write_outputs()
            self._write_status(err.status if isinstance(err, Stopped) else Interrupted.status)
            raise
        self.record.write_outputs()
        self._write_status("finished")
        self.record.close()
        made, failed = len(self.record.rows) - kept, len(self.record.failures)
        log.info("%s done: %d images made, %d kept from earlier runs, %d rows failed", self.name, made, kept, failed)
        return PartSummary(self.name, len(self.record.rows), len(self.record.failures), self.device)

    def record_failures(self, failures: Iterable[Failure]) -> None:
        """A part with failures only (no model, no images): rows that failed before any work."""
        self.record.add_failures(failures)
        self.record.write_outputs()
        self._write_status("finished")
        self.record.close()

    def _driver(self, weights: NetWeights) -> Driver:
        decoder = Decoder(self.config, self.prefetch)
        if weights.gatys is None and weights.dream is None:
            return CopyDriver(decoder)  # only originals to copy
        dreamer = None
        if self.config.engine is not Engine.GATYS:
            assert weights.dream is not None
            dreamer = DreamDriver(self.config, self.device, self.precision, weights.dream, decoder)
        if self.config.engine is Engine.DREAM:
            assert dreamer is not None
            return dreamer
        assert weights.gatys is not None
        return GatysDriver(self.config, self.device, self.precision, weights.gatys, decoder, dreamer=dreamer)

    def _make(self, driver: Driver, groups: Iterable[list[Task]]) -> None:
        """The driver's outcomes, each recorded and counted here: the one loop of a part."""
        iterations = sum(stage_iterations(self.config)) if isinstance(driver, GatysDriver) else 1
        self.tracker.begin(iterations)
        # closing: a deadline or a signal raised here ends the driver and the engine at once
        # (their buffers freed), not when the traceback that holds them goes.
        with self.record.saving(), contextlib.closing(driver.run(groups)) as outcomes:
            for outcome in outcomes:
                if isinstance(outcome, Steps):
                    self.tracker.iteration(outcome.count)
                    continue
                if isinstance(outcome, Made):
                    self.record.submit(outcome.image, self._row(outcome))
                else:
                    self._fail(outcome)
                self.tracker.advance(outcome.tasks, outcome.steps)
                self.record.collect(wait=False)
        self.timings.update(driver.timings)

    def _row(self, made: Made) -> dict[str, Any]:
        task = made.task
        if self._params is None and not task.original:
            self._params = row_params(self.config, self.flavour)
        return manifest_row(
            task, size=tuple(made.image.shape[-2:]), losses=made.losses, iterations=made.iterations,
            seconds=made.seconds, precision=made.precision.value, dream_objective=made.dream_objective,
            config=self.config, weights_id=self.weights_id, key=self.keys.get(task.output, ""),
            style_weight=row_style_weight(self.config, task, self.flavour), params=self._params or "",
        )  # fmt: skip

    def _fail(self, failed: Failed) -> None:
        source, message = failed.source, failed.message
        if not message.startswith("row "):
            message = f"row {source.row}: {message}"
        log.warning("%s", message)
        self.record.fail(Failure(source.row, source.source, source.label, failed.reason, message))

    def _write_status(self, status: str) -> None:
        self.record.write_status(
            status, tasks=self.tracker.total, timings=self.timings, engine=engine_name(self.config),
            weights=self.weights_id or None, device=describe_device(self.device), versions=versions(), **self.about,
        )  # fmt: skip


def run_part(
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
    held = held_rows(out, previous, failures)
    kept_rows = [done[t.output] for t in tasks if t.output in done] + list((kept or {}).values()) + held
    part = PartRun(config, prepared, out, name=name, device=device, progress=progress, keys=keys, deadline=deadline,
                   about={"run": run_token} if run_token else None, kept_rows=kept_rows, timings=timings)  # fmt: skip
    return part.run(weights, groups, total=len(tasks) + len(kept or {}), failures=failures)
