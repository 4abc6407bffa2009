"""A part's progress: images done out of the total, the progress callback, the --max-seconds
deadline, an ETA line in the log for cron users, and the periodic checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import BudgetExhausted

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (tasks finished or failed, total tasks)
CHECKPOINT_EVERY_S = 30.0
ETA_EVERY_S = 60.0


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressTracker:
    def __init__(
        self,
        callback: ProgressFn | None = None,
        *,
        deadline: float | None = None,
        max_seconds: float | None = None,
        checkpoint: Callable[[], None] = lambda: None,
    ) -> None:
        self.callback = callback or (lambda done, total: None)
        self.deadline = deadline  # --max-seconds, as a time.time() the caller computed
        self.max_seconds = max_seconds
        self.checkpoint = checkpoint  # writes the part files; called every CHECKPOINT_EVERY_S
        self.done = self.total = 0
        self.batch_size = 1
        self._t0 = time.monotonic()
        self._eta_logged = 0.0
        self._last_checkpoint = time.monotonic()

    def start(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def report(self) -> None:
        self.callback(self.done, self.total)

    def begin(self, batch_size: int) -> None:
        """Computing starts now, ``batch_size`` images at a time: the clock for the ETA."""
        self.batch_size = batch_size
        self._t0, self._eta_logged = time.monotonic(), 0.0
        self.report()

    def check_deadline(self) -> None:
        """BudgetExhausted once --max-seconds is spent: called between images and between a
        batch's iterations, so a long image cannot overrun the budget."""
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetExhausted(self.max_seconds or 0.0)  # drops the rest of the current batch

    def advance(self, count: int) -> None:
        self.check_deadline()
        self.done += count
        self.report()
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            self.checkpoint()
            self._last_checkpoint = time.monotonic()
        # An estimate from the first finished images, then once a minute: for logs and cron.
        now = time.monotonic()
        left = self.total - self.done
        if left and (not self._eta_logged or now - self._eta_logged >= ETA_EVERY_S):
            rate = self.done / max(now - self._t0, 1e-9)
            if self.done >= min(self.batch_size, self.total):
                log.info("%d/%d images, about %s left", self.done, self.total, duration(left / max(rate, 1e-9)))
                self._eta_logged = now
