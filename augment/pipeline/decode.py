"""Reading a part's sources for the device: header reads that order the tasks by output shape
(so that batches fill with images of one size), and decoding a few sources ahead in a thread
while the device computes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..config import RunConfig
from ..io.images import ImageProblem, load_rgb, probe_all, resize_to, to_tensor
from ..io.sources import SourceRow
from ..outputs.schema import Failure
from .plan import Task

Decoded = Iterator[tuple[list[Task], "list[torch.Tensor] | ImageProblem"]]
"""Each group (one source's tasks) with its source at every scale (full size last), or the
problem that kept it from decoding."""


def prefetch(items: Iterable[Any], work: Callable[[Any], Any], *, depth: int) -> Iterator[tuple[Any, Any]]:
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


class Decoder:
    """Groups in, each with its source decoded at every scale (or its ImageProblem) out,
    ``depth`` sources ahead of the device."""

    def __init__(self, config: RunConfig, depth: int) -> None:
        self.config, self.depth = config, depth

    def __call__(self, groups: Iterable[list[Task]]) -> Decoded:
        return prefetch(groups, lambda group: self.decode(group[0].source), depth=self.depth)

    def decode(self, source: SourceRow) -> list[torch.Tensor] | ImageProblem:
        try:
            image = load_rgb(source.path, max_pixels=self.config.max_pixels)
        except ImageProblem as err:
            return err
        return [to_tensor(resize_to(image, shape)) for shape in self.config.stage_shapes(*image.size)]
