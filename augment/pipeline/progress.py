"""A part's progress: images done out of the total, the progress callback, the --max-seconds
deadline and an ETA line in the log for cron users. (No periodic checkpoint: the part's
journal records each image as it is written, see outputs/parts.py.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import BudgetExhausted

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, int], None]
"""(images done, total images): done counts finished or failed images plus the finished share
of those being made (an image 30 of 300 iterations in counts 0.1), so it moves every iteration."""
ETA_EVERY_S = 30.0  # a log line this often: run.log and a pipeline's stderr never go quiet
FIRST_ETA_AFTER_S = 5.0  # the first estimate, once a few iterations have been timed


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
    ) -> None:
        self.callback = callback or (lambda done, total: None)
        self.deadline = deadline  # --max-seconds, as a time.time() the caller computed
        self.max_seconds = max_seconds
        self.done = self.total = 0
        self.units_per_image = 1  # iterations (or steps) one image takes
        self._partial = 0.0  # iterations made by images not finished yet
        self._t0 = time.monotonic()
        self._start_progress = 0.0
        self._eta_logged = 0.0

    def start(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def progress(self) -> float:
        """Images done, with the running ones' finished share."""
        return self.done + min(self._partial / self.units_per_image, max(self.total - self.done, 0))

    def report(self) -> None:
        self.callback(self.progress, self.total)

    def begin(self, units_per_image: int = 1) -> None:
        """Computing starts now, each image ``units_per_image`` iterations: the clock for the ETA."""
        self.units_per_image = max(1, units_per_image)
        self._t0, self._eta_logged, self._start_progress = time.monotonic(), 0.0, self.progress
        self.report()

    def check_deadline(self) -> None:
        """BudgetExhausted once --max-seconds is spent: called between images and between a
        batch's iterations, so a long image cannot overrun the budget."""
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetExhausted(self.max_seconds or 0.0)  # drops the rest of the current batch

    def iteration(self, steps: int) -> None:
        """A batch iteration made ``steps`` image-steps (negative: steps thrown away, which no
        finished image will account for)."""
        self.check_deadline()
        self._partial = max(0.0, self._partial + steps)
        self.report()
        self._log_eta()

    def advance(self, count: int, units: int = 0) -> None:
        """``count`` images finished (or failed); ``units``: the iterations they had made."""
        self.check_deadline()
        self.done += count
        self._partial = max(0.0, self._partial - units)
        self.report()
        self._log_eta()

    def _log_eta(self) -> None:
        """A line for logs and cron: a first estimate after a few seconds, then every ETA_EVERY_S."""
        now = time.monotonic()
        elapsed = now - self._t0
        made = self.progress - self._start_progress
        left = self.total - self.progress
        due = now - self._eta_logged >= ETA_EVERY_S if self._eta_logged else elapsed >= FIRST_ETA_AFTER_S
        if left > 0 and made > 0 and due:
            share, eta = 100 * self.progress / max(self.total, 1), duration(left * elapsed / made)
            log.info("%d/%d images (%.0f%%), %s elapsed, about %s left",
                     int(self.progress), self.total, share, duration(elapsed), eta)  # fmt: skip
            self._eta_logged = now
