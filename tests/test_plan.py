from __future__ import annotations

from collections import Counter
from pathlib import Path

from augment.manifest import SourceRow
from augment.plan import plan_tasks
from augment.styles import Style


def _styles(*weights: float) -> list[Style]:
    return [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}", w) for i, w in enumerate(weights)]


def _row(source: str, label: str = "cat", row: int = 1) -> SourceRow:
    return SourceRow(row=row, source=source, path=Path("/x") / source, label=label)


def test_styles_are_distinct_while_the_bank_lasts() -> None:
    tasks = plan_tasks([_row("a.png")], _styles(1, 1, 1), per_image=3, seed=0)
    assert sorted(t.style.name for t in tasks) == ["s0", "s1", "s2"]
    assert [t.k for t in tasks] == [0, 1, 2]
    more = plan_tasks([_row("a.png")], _styles(1, 1), per_image=5, seed=0)
    counts = Counter(t.style.name for t in more)
    assert sorted(counts.values()) == [2, 3]


def test_weights_steer_sampling_and_zero_excludes() -> None:
    rows = [_row(f"{i}.png", row=i) for i in range(400)]
    tasks = plan_tasks(rows, _styles(1, 4, 0), per_image=1, seed=0)
    counts = Counter(t.style.name for t in tasks)
    assert "s2" not in counts
    assert 2.5 < counts["s1"] / counts["s0"] < 6


def test_plan_is_deterministic_and_independent_of_row_order() -> None:
    rows = [_row("a.png", row=1), _row("b.png", row=2)]
    first = plan_tasks(rows, _styles(1, 1, 1), per_image=2, seed=7)
    again = plan_tasks(list(reversed(rows)), _styles(1, 1, 1), per_image=2, seed=7)
    assert sorted((t.output, t.seed) for t in first) == sorted((t.output, t.seed) for t in again)
    other_seed = plan_tasks(rows, _styles(1, 1, 1), per_image=2, seed=8)
    assert [t.seed for t in first] != [t.seed for t in other_seed]


def test_output_names() -> None:
    (task,) = plan_tasks([_row("dir/x.jpg")], _styles(1), per_image=1, seed=0, fmt="jpg")
    assert task.output == "images/cat/x__s0__0.jpg"


def test_same_label_and_stem_get_distinct_names() -> None:
    rows = [
        _row("x.jpg"),
        _row("x.webp", row=2),
        _row("train/x.jpg", row=3),
        _row("x.png", "dog", row=4),
        _row("X.png", row=5),
    ]
    outputs = [t.output for t in plan_tasks(rows, _styles(1), per_image=1, seed=0)]
    assert len({o.casefold() for o in outputs}) == 5  # distinct on case-insensitive file systems too
    assert outputs[3] == "images/dog/x__s0__0.png"  # no clash, no hash
    assert all(o.startswith("images/cat/x-") for o in outputs[:3])
