"""Runs one part of a job: orders its tasks, decodes ahead, has the engine's driver make
them and records the outcome.

A part is the whole job (one process), one worker, one shard or one torchrun rank; each writes
``OUT/parts/<name>.manifest.csv``, ``.failures.csv`` and ``.json``, which ``merge`` joins into
the final manifest.csv, failures.csv and run.json. The runner knows nothing of losses: the
drivers (drivers.py) hand tensors to the engines and give finished images back.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Engine, RunConfig
from ..engines.precision import resolve_precision
from ..engines.vgg import Flavour
from ..errors import Interrupted, Stopped
from ..io.images import ImageProblem, load_rgb, probe_all, resize_to, to_tensor
from ..io.sources import Failure, SourceRow
from ..io.weights import NetWeights
from ..outputs.parts import Recorder
from ..outputs.schema import engine_name, manifest_row
from .drivers import CopyDriver, DreamDriver, Failed, GatysDriver, Made, describe_device, resolve_device
from .plan import Task
from .prepare import Prepared
from .progress import ProgressFn, ProgressTracker

log = logging.getLogger(__name__)


def _return_freed_memory() -> None:
    """glibc keeps memory that was freed (the weights file's or random weights' tensors, once
    copied into the network) for later allocations, ~110 MB a process: hand it back to the
    system, which matters with a worker per GPU. A no-op where glibc is not the allocator."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class PartSummary:
    name: str
    written: int
    failed_rows: int
    device: torch.device


@dataclass
class RunSummary:
    """What a run did. ``written``: images this run made; ``skipped``: up to date from an
    earlier run, not redone; ``removed``: stale images of rows that left the job;
    ``failed_rows``: rows that gave no image; ``images``: what the dataset now holds;
    ``incomplete``: what is missing when the merge found the job not done (run.json's reason)."""

    out: str
    exit_code: int
    tasks: int
    written: int
    failed_rows: int
    seconds: float
    weights: str
    device: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    removed: int = 0
    images: int = 0
    incomplete: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prefetch(items: Iterable[Any], work: Callable[[Any], Any], *, depth: int) -> Iterator[tuple[Any, Any]]:
    """(item, work(item)) in order, computed up to ``depth`` items ahead in a thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment-decode") as pool:
        queue: deque[tuple[Any, Future[Any]]] = deque()
        for item in items:
            queue.append((item, pool.submit(work, item)))
            if len(queue) > depth:
                head, future = queue.popleft()
                yield head, future.result()
        while queue:
            head, future = queue.popleft()
            yield head, future.result()


def order_by_shape(tasks: list[Task], config: RunConfig) -> tuple[list[list[Task]], list[Failure]]:
    """Header-read every source (cheap) and group its tasks, groups ordered by output shape so
    batches fill with images of one size. Unreadable sources become failures here."""
    shapes: dict[SourceRow, tuple[int, int]] = {}
    failures = []
    groups: dict[SourceRow, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.source, []).append(task)
    for s, found in zip(groups, probe_all([s.path for s in groups], max_pixels=config.max_pixels)):
        if isinstance(found, ImageProblem):
            failures.append(Failure(s.row, s.source, s.label, found.reason, f"row {s.row}: {found}"))
            continue
        out_w, out_h = config.output_shape(*found)
        shapes[s] = (out_h, out_w)
    ordered = sorted((s for s in groups if s in shapes), key=lambda s: shapes[s])  # stable: task order within a shape
    return [groups[s] for s in ordered], failures


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


class RunLog:
    """OUT/run.log: timestamped lines for cron users who never see a progress bar."""

    def __init__(self, path: Path) -> None:
        self.logger = logging.getLogger("augment")
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.previous_level = self.logger.level

    def __enter__(self) -> RunLog:
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:  # cron users read run.log: how the run ended goes there (the console has it already)
            message = f"run stopped: {type(exc).__name__}: {exc}"
            self.handler.handle(self.logger.makeRecord(self.logger.name, logging.ERROR, __file__, 0, message, (), None))
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)
        self.handler.close()


class PartRun:
    """One part of a job. ``run`` takes the part's tasks as groups (one per source image, in
    processing order), has the engine's driver make them, and records each outcome: images in
    ``Recorder`` (written in threads, journaled, ``OUT/parts/<name>.*``), counts in
    ``ProgressTracker``."""

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
        deadline: float | None = None,
        shared_failures: Any = None,
        about: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.prepared, self.out, self.name = config, prepared, out, name
        self.about = about or {}  # more for the part's status file
        self.keys = keys or {}  # output path -> task key, recorded in each row
        self.device = resolve_device(device or config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.record = Recorder(config, prepared, out, name, shared_failures=shared_failures)
        self.tracker = ProgressTracker(progress, deadline=deadline, max_seconds=config.max_seconds)
        self.timings: dict[str, float] = {}
        self.weights_id = ""
        self.flavour = Flavour.TORCHVISION  # of the VGG19 weights: decides the default loss weights
        # Sources decoded ahead of the device. Workers sharing one queue take 1, so that one
        # worker does not pull (and hoard) work the others are waiting for.
        self.prefetch = 4

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.record.rows

    @rows.setter
    def rows(self, rows: list[dict[str, Any]]) -> None:  # rows kept from an earlier run
        self.record.rows = rows

    def run(
        self, weights: NetWeights, groups: Iterable[list[Task]], *, total: int, failures: Iterable[Failure] = ()
    ) -> PartSummary:
        self.record.add_failures(failures)
        self.weights_id = weights.identity
        if weights.gatys is not None:
            self.flavour = weights.gatys.flavour
        self._write_status("running")
        kept = len(self.rows)  # rows kept from an earlier run: done, not made now
        self.tracker.start(kept, total)
        try:
            self.record.check_failures()
            if isinstance(groups, list) and not groups:
                self.tracker.callback(total, total)  # nothing to make: no network is built
            else:
                self.record.begin()
                driver = self._driver(weights)
                _return_freed_memory()
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
        log.info("%s done: %d images made, %d kept from earlier runs, %d rows failed",
                 self.name, len(self.rows) - kept, kept, len(self.record.failures))  # fmt: skip
        return PartSummary(self.name, len(self.rows), len(self.record.failures), self.device)

    def record_failures(self, failures: Iterable[Failure]) -> None:
        """A part with failures only (no model, no images): rows that failed before any work."""
        self.record.add_failures(failures)
        self.record.write_outputs()
        self._write_status("finished")
        self.record.close()

    def _driver(self, weights: NetWeights) -> CopyDriver | DreamDriver | GatysDriver:
        engine = self.config.engine
        if weights.gatys is None and weights.dream is None:
            return CopyDriver()  # only originals to copy
        if engine is Engine.DREAM:
            assert weights.dream is not None
            return DreamDriver(self.config, self.device, self.precision, weights.dream)
        assert weights.gatys is not None
        dreamer = None
        if engine is Engine.GATYS_DREAM:
            assert weights.dream is not None
            dreamer = DreamDriver(self.config, self.device, self.precision, weights.dream)
        return GatysDriver(self.config, self.device, self.precision, weights.gatys, dreamer=dreamer,
                           after_iteration=self.tracker.iteration)  # fmt: skip

    def _make(self, driver: CopyDriver | DreamDriver | GatysDriver, groups: Iterable[list[Task]]) -> None:
        """Has the engine's driver make the groups; each outcome goes through ``_emit``."""
        iterations = sum(self.config.stage_iterations) if isinstance(driver, GatysDriver) else 1
        self.tracker.begin(iterations)
        with self.record.saving():
            driver.run(groups, self._decoded, self._emit)
        self.timings.update(driver.timings)

    def _emit(self, outcome: Made | Failed) -> None:
        """The one place every engine's outcomes go: recorded, then counted."""
        if isinstance(outcome, Made):
            self.record.submit(outcome.image, self._row(outcome))
        else:
            self._fail(outcome)
        self.tracker.advance(1, outcome.iterations if isinstance(outcome, Made) and outcome.iterations else 0)
        self.record.collect(wait=False)

    def _decoded(self, groups: Iterable[list[Task]]) -> Iterator[tuple[list[Task], list[torch.Tensor]]]:
        """Each group with its source decoded (one tensor per scale, full size last), decoding
        a few ahead in a thread; an undecodable source becomes a failure and is skipped."""
        for group, decoded in _prefetch(groups, lambda g: self._decode(g[0].source), depth=self.prefetch):
            if isinstance(decoded, ImageProblem):
                self._fail(Failed(group[0].source, decoded.reason, str(decoded)))
                self.tracker.advance(len(group))
                continue
            yield group, decoded

    def _decode(self, source: SourceRow) -> list[torch.Tensor] | ImageProblem:
        try:
            image = load_rgb(source.path, max_pixels=self.config.max_pixels)
        except ImageProblem as err:
            return err
        return [to_tensor(resize_to(image, shape)) for shape in self.config.stage_shapes(*image.size)]

    def _row(self, made: Made) -> dict[str, Any]:
        return manifest_row(
            made.task, size=tuple(made.image.shape[-2:]), losses=made.losses, iterations=made.iterations,
            seconds=made.seconds, precision=made.precision.value, dream_objective=made.dream_objective,
            config=self.config, weights_id=self.weights_id, flavour=self.flavour,
            key=self.keys.get(made.task.output, ""),
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
