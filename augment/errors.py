"""Errors that end a whole run. Each carries the exit code the CLI returns for it.

A problem with one input row is never an exception: it becomes a row in failures.csv.
"""

from __future__ import annotations


class AugmentError(Exception):
    """A whole-run problem the user can fix; the message is one line."""

    exit_code = 2


class ConfigError(AugmentError):
    """Bad options, bad YAML, unknown keys."""


class ManifestError(AugmentError):
    """The input manifest is missing, unreadable or lacks required columns."""


class StyleBankError(AugmentError):
    """The style folder is missing, empty or its styles.yaml is invalid."""


class WeightsUnavailable(AugmentError):
    """Real network weights could not be found or fetched."""


class OutputError(AugmentError):
    """OUT cannot be written (read-only, full disk)."""

    exit_code = 3


class Stopped(Exception):
    """A run stopped before the end: finished work is kept and recorded, then it exits."""

    status = "stopped"

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(Stopped):
    """SIGHUP, SIGINT or SIGTERM: exit 129, 130 or 143."""

    status = "interrupted"

    def __init__(self, exit_code: int, signal_name: str) -> None:
        super().__init__(exit_code, f"interrupted by {signal_name}")
        self.signal_name = signal_name


class BudgetExhausted(Stopped):
    """--max-seconds reached: finished work kept, exit 75 so the next run carries on."""

    status = "budget"

    def __init__(self, seconds: float) -> None:
        super().__init__(75, f"stopped after --max-seconds {seconds:g}; the next run resumes")


class WorkerFailed(Stopped):
    """A local worker died (killed by the kernel, say): what the others finished is merged and
    recorded, then exit 3."""

    status = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(3, message)


class ShardsFailed(Stopped):
    """--ray: shards still failed after their retries; the others are merged, run.json says
    incomplete, exit 1, and the same command runs only those shards again."""

    status = "incomplete"

    def __init__(self, message: str) -> None:
        super().__init__(1, message)


class TooManyFailures(Stopped):
    """More failed rows than --max-failures allows: exit 3."""

    status = "aborted"

    def __init__(self, message: str) -> None:
        super().__init__(3, message)


# Exit codes, documented in README.md and docs/cli.md.
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_SOFTWARE = 70  # an unexpected exception: a bug, not bad input
EXIT_LOCKED = 75  # EX_TEMPFAIL: OUT is in use by another run
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 129, 130, 143


def too_many_failures(failed: int, allowed: object) -> str:
    """TooManyFailures' message: ``allowed`` is --max-failures as given (N or P%)."""
    return f"{failed} rows failed, more than --max-failures {allowed} allows"
