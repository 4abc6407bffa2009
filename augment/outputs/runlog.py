"""OUT/run.log: the run's log lines in a file, for cron users who never see a progress bar."""

from __future__ import annotations

import logging
from pathlib import Path


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
