from __future__ import annotations

from collections import Counter
from pathlib import Path

from augment.io.sources import SourceRow
from augment.io.styles import Style
from augment.pipeline.plan import plan_tasks


def _styles(*weights: float) -> list[Style]:
    return [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}", w) for i, w in enumerate(weights)]


def _row(source: str, label: str = "cat", row: int = 1) -> SourceRow:
    return SourceRow(row=row, source=source, path=Path("/x") / source, label=label)


def test_styles_are_distinct_while_the_bank_lasts() -> None:
    tasks = plan_tasks([_row("a.png")], _styles(1, 1, 1), per_image=3, seed=0)
    assert sorted(t.style.name for t in tasks) == ["s0", "s1", "s2"]
    assert [t.k for t in tasks] == [0, 0, 0]  # k counts a style's uses for its source
    more = plan_tasks([_row("a.png")], _styles(1, 1), per_image=5, seed=0)
    counts = Counter(t.style.name for t in more)
    assert sorted(counts.values()) == [2, 3]
    assert sorted(t.k for t in more) == [0, 0, 1, 1, 2]
    assert len({t.output for t in more}) == 5


def test_removing_a_style_changes_only_the_images_that_used_it() -> None:
    # Issue 21: dropping one painting from the bank re-drew other styles' images too
    # (7 of 12 changed where 3 used it). Each style's rank is its own hash now.
    rows = [_row(f"{i}.png", row=i) for i in range(60)]
    bank = _styles(1, 2, 1, 1, 3)
    before = plan_tasks(rows, bank, per_image=2, seed=3)
    after = plan_tasks(rows, [s for s in bank if s.name != "s1"], per_image=2, seed=3)
    used_s1 = {t.source.source for t in before if t.style.name == "s1"}
    assert 0 < len(used_s1) < len(rows)
    key = lambda t: (t.output, t.seed, t.alpha)  # noqa: E731
    kept = {key(t) for t in before if t.style.name != "s1"}
    assert kept <= {key(t) for t in after}  # every image without s1 is planned as it was
    changed = {key(t) for t in after} - kept
    assert len(changed) == len(used_s1)  # one new image per source that lost s1


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
