"""Sources x styles x per-image -> a deterministic list of tasks.

Every choice is seeded from (run seed, source path[, style, k]), never from row order or from
which worker runs a task, so the same inputs always plan the same tasks and names.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .images import FORMAT_EXT
from .manifest import SourceRow
from .styles import Style

NAME_SEPARATOR = "__"


@dataclass(frozen=True)
class Task:
    source: SourceRow
    style: Style
    k: int  # variant index for this source, 0..per_image-1
    output: str  # relative to OUT, posix: images/<label>/<stem>__<style>__<k>.<ext>
    seed: int


def stable_hash(*parts: object) -> int:
    """A 63-bit hash that is the same in every process and on every machine."""
    text = "\0".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def choose_styles(styles: list[Style], count: int, rng: random.Random) -> list[Style]:
    """``count`` styles drawn by weight, without repeats until the bank is used up."""
    pool = [s for s in styles if s.weight > 0]
    chosen: list[Style] = []
    this_round: list[Style] = []
    while len(chosen) < count:
        left = [s for s in pool if s not in this_round]
        if not left:
            this_round, left = [], pool
        pick = rng.choices(left, weights=[s.weight for s in left])[0]
        this_round.append(pick)
        chosen.append(pick)
    return chosen


def plan_tasks(
    rows: list[SourceRow],
    styles: list[Style],
    *,
    per_image: int,
    seed: int,
    fmt: str = "png",
) -> list[Task]:
    # Two sources with the same label and stem (x.jpg and x.webp, train/x.jpg and val/x.jpg)
    # would write the same names: those get a short hash of their source path.
    stems = Counter((row.label, PurePosixPath(row.source).stem) for row in rows)
    ext = FORMAT_EXT[fmt]
    tasks = []
    for row in rows:
        stem = PurePosixPath(row.source).stem
        if stems[(row.label, stem)] > 1:
            stem = f"{stem}-{stable_hash(row.source) % 16**6:06x}"
        rng = random.Random(stable_hash(seed, row.source))
        for k, style in enumerate(choose_styles(styles, per_image, rng)):
            name = NAME_SEPARATOR.join((stem, style.name, str(k))) + ext
            tasks.append(Task(
                source=row, style=style, k=k,
                output=f"images/{row.label}/{name}",
                seed=stable_hash(seed, row.source, style.name, k),
            ))  # fmt: skip
    return tasks


def task_keys(tasks: list[Task], *, config_hash: str, weights: str, digest: Callable[[Path], str]) -> dict[str, str]:
    """Output path -> a key that changes whenever the image would: the source's and the
    style's content, every pixel-changing option (config hash, seed included), the weights."""
    keys = {}
    for task in tasks:
        style = digest(task.style.path) if task.style.path.is_file() else task.style.name
        keys[task.output] = f"{stable_hash(digest(task.source.path), style, config_hash, weights, task.seed):016x}"
    return keys
