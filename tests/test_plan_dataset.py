"""Planning a training set: originals, splits, balance, style assignment, sampled settings."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from augment.config import Assignment, RunConfig
from augment.errors import ConfigError
from augment.io.sources import SourceRow, load_input
from augment.io.styles import Style
from augment.pipeline.options import plan_options
from augment.pipeline.plan import PlanOptions, plan


def _styles(count: int) -> list[Style]:
    return [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}") for i in range(count)]


def _rows(**per_class: int) -> list[SourceRow]:
    rows = []
    for label, count in per_class.items():
        rows += [SourceRow(len(rows) + 1, f"{label}/{i}.jpg", Path(f"/x/{label}/{i}.jpg"), label) for i in range(count)]
    return rows


def _per_class(tasks: list) -> Counter:  # type: ignore[type-arg]
    return Counter(t.source.label for t in tasks)


def test_balance_with_originals_ends_with_equal_classes() -> None:
    rows = _rows(ants=12, bees=4)
    made = plan(rows, _styles(4), PlanOptions(per_image=1, balance=True, include_originals=True))
    assert _per_class(made.tasks) == {"ants": 24, "bees": 24}
    originals = [t for t in made.tasks if t.original]
    assert len(originals) == 16 and {t.style_name for t in originals} == {"original"}
    bees = Counter(t.source.source for t in made.tasks if t.source.label == "bees" and not t.original)
    assert set(bees.values()) == {5}  # 20 variants over 4 bees
    # Without originals the variants balance on their own; a target overrides --per-image.
    assert _per_class(plan(rows, _styles(4), PlanOptions(per_image=2, balance=True)).tasks) == {"ants": 24, "bees": 24}
    assert _per_class(plan(rows, _styles(4), PlanOptions(target_per_class=30, include_originals=True)).tasks) == {
        "ants": 30,
        "bees": 30,
    }


def test_uneven_targets_give_the_remainder_to_some_sources_and_never_drop_originals() -> None:
    rows = _rows(ants=12, bees=3)
    made = plan(rows, _styles(3), PlanOptions(target_per_class=10, include_originals=True))
    counts = _per_class(made.tasks)
    assert counts == {"ants": 12, "bees": 10}  # 12 ant originals stay, though the target is 10
    assert made.short == {"ants": 12} and made.targets == {"ants": 10, "bees": 10}
    per_bee = Counter(t.source.source for t in made.tasks if t.source.label == "bees" and not t.original)
    assert sorted(per_bee.values()) == [2, 2, 3]  # 7 variants over 3 bees


def test_extra_variants_are_new_images_not_repeats() -> None:
    (row,) = _rows(bees=1)
    made = plan([row], _styles(2), PlanOptions(target_per_class=6))
    settings = [(t.style_name, t.mix) for t in made.tasks]
    assert len(made.tasks) == 6 and len(set(settings)) == 6
    singles = [t for t in made.tasks if t.style2 is None]
    assert sorted(t.style.name for t in singles) == ["s0", "s1"]  # each style alone first
    assert all(0.25 <= t.mix <= 0.75 for t in made.tasks if t.style2 is not None)


def test_splits_only_train_is_stylized_other_splits_copied_or_left_out() -> None:
    rows = [
        SourceRow(i + 1, f"{i}.jpg", Path(f"/x/{i}.jpg"), "cat", split)
        for i, split in enumerate(["train", "train", "val", "test"])
    ]
    copied = plan(rows, _styles(2), PlanOptions(per_image=2, include_originals=True))
    by_split = Counter((t.source.split, t.original) for t in copied.tasks)
    assert by_split == {("train", True): 2, ("train", False): 4, ("val", True): 1, ("test", True): 1}
    assert all(t.output.startswith(f"images/{t.source.split}/cat/") for t in copied.tasks)
    dropped = plan(rows, _styles(2), PlanOptions(per_image=2))
    assert {t.source.split for t in dropped.tasks} == {"train"} and dropped.left_out == 2
    both = plan(rows, _styles(2), PlanOptions(per_image=1, splits=("train", "val")))
    assert Counter(t.source.split for t in both.tasks) == {"train": 2, "val": 1}


def test_cycle_uses_the_bank_evenly_and_all_uses_every_style() -> None:
    rows = _rows(cat=10)
    cycled = plan(rows, _styles(4), PlanOptions(per_image=3, assignment=Assignment.CYCLE))
    counts = Counter(t.style.name for t in cycled.tasks)
    assert sum(counts.values()) == 30 and max(counts.values()) - min(counts.values()) <= 1
    every = plan(rows, _styles(4), PlanOptions(per_image=1, assignment=Assignment.ALL))
    assert all(sorted(t.style.name for t in every.tasks if t.source == r) == ["s0", "s1", "s2", "s3"] for r in rows)


def test_sampled_settings_stay_in_range_vary_and_repeat_with_the_seed() -> None:
    rows = _rows(cat=40)
    options = PlanOptions(per_image=1, style_weight=(1e4, 1e6), alpha=(0.3, 0.7), blend=(0.2, 0.4))
    made = plan(rows, _styles(3), options).tasks
    weights = [t.style_weight for t in made]
    assert all(1e4 <= w <= 1e6 for w in weights)  # type: ignore[operator]
    assert sum(w < 1e5 for w in weights) >= 10 and sum(w > 1e5 for w in weights) >= 10  # type: ignore[operator]  # log-uniform
    assert all(0.3 <= t.alpha <= 0.7 and 0.2 <= t.mix <= 0.4 and t.style2 is not None for t in made)
    again = plan(rows, _styles(3), options).tasks
    assert [(t.style_weight, t.alpha, t.mix) for t in made] == [(t.style_weight, t.alpha, t.mix) for t in again]


def test_config_reads_ranges_formats_and_targets() -> None:
    config = RunConfig(
        style_weight="1e4:1e6", alpha="0.5", format="jpg,webdataset", target_per_class=8, splits="train,val"
    )
    assert config.style_weight == (1e4, 1e6) and config.alpha == 0.5
    assert config.format == "jpg" and config.webdataset and config.balance and config.splits == ("train", "val")
    assert RunConfig(format="webdataset").format == "png"
    for bad in ({"style_weight": "9:1"}, {"alpha": "x"}, {"alpha": 1.5}, {"blend": 1.0}, {"style_assignment": "some"}):
        with pytest.raises(ConfigError):
            RunConfig(**bad)  # type: ignore[arg-type]


def test_a_split_column_needs_a_split_on_every_row(tmp_path: Path) -> None:
    from .conftest import noise_image

    noise_image(8, 8, 0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,cat,train\na.png,dog,\na.png,cow,../up\n")
    inputs = load_input(tmp_path / "m.csv")
    assert [r.label for r in inputs.rows] == ["cat"]
    assert [(f.row, f.reason) for f in inputs.failures] == [(2, "bad_split"), (3, "bad_split")]
    assert "empty split" in inputs.failures[0].message


def test_each_split_is_balanced_on_its_own_and_split_names_are_lowercase(tmp_path: Path) -> None:
    rows = [
        SourceRow(i + 1, f"{i}.jpg", Path(f"/x/{i}.jpg"), label, split)
        for i, (label, split) in enumerate([("a", "train")] * 4 + [("b", "train")] * 2 + [("a", "val"), ("b", "val")])
    ]
    made = plan(rows, _styles(3), PlanOptions(balance=True, splits=("train", "val")))
    assert made.targets == {"train/a": 4, "train/b": 4, "val/a": 1, "val/b": 1}
    assert Counter((t.source.split, t.source.label) for t in made.tasks) == {
        ("train", "a"): 4,
        ("train", "b"): 4,
        ("val", "a"): 1,
        ("val", "b"): 1,
    }
    from .conftest import noise_image

    noise_image(8, 8, 0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,cat,Train\n")
    assert load_input(tmp_path / "m.csv").rows[0].split == "train"
    assert RunConfig(splits="Train,VAL").splits == ("train", "val")


def test_a_one_style_bank_counts_its_repeated_variants_and_dream_never_blends() -> None:
    (row,) = _rows(cat=1)
    made = plan([row], _styles(1), PlanOptions(per_image=3))
    assert made.copies == 2 and all(t.style2 is None for t in made.tasks)
    dream = plan([row], _styles(2), plan_options(RunConfig(engine="dream", guide=True, per_image=4)))
    assert all(t.style2 is None for t in dream.tasks) and dream.copies == 0
    with pytest.raises(ConfigError, match="blend"):
        RunConfig(engine="dream", blend=0.5)


def test_input_columns_named_like_output_columns_are_kept_apart(tmp_path: Path) -> None:
    from .conftest import noise_image

    noise_image(8, 8, 0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,style,key,photographer\na.png,cat,noir,k1,Ann\n")
    (row,) = load_input(tmp_path / "m.csv").rows
    assert row.extra == {"input_style": "noir", "input_key": "k1", "photographer": "Ann"}


def test_task_keys_change_with_a_styles_yaml_override() -> None:
    from augment.pipeline.keys import task_keys

    (row,) = _rows(cat=1)
    plain = Style("s0", Path("s0.png"), "s0")
    tuned = Style("s0", Path("s0.png"), "s0", overrides={"style_weight": 5000.0})
    keys = [task_keys(plan([row], [s], PlanOptions()).tasks, config_hash="c", copy_hash="c", weights="w", digest=str)
            for s in (plain, tuned)]  # fmt: skip
    assert keys[0].keys() == keys[1].keys() and keys[0] != keys[1]
