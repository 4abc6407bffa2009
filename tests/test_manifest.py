from __future__ import annotations

from pathlib import Path

import pytest

from augment.errors import ManifestError
from augment.io.sources import label_problem, load_input

from .conftest import make_dataset, noise_image


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_rows_with_relative_and_absolute_paths(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    absolute = tmp_path / "elsewhere.png"
    noise_image(8, 8, 0).save(absolute)
    _write(manifest, manifest.read_text() + f"{absolute},bees\n")
    inputs = load_input(manifest)
    assert [r.label for r in inputs.rows] == ["ants", "ants", "bees", "bees"]
    assert Path(inputs.rows[0].path) == (manifest.parent / "ants" / "a1.png").resolve()
    assert inputs.rows[3].path == str(absolute) and inputs.rows[3].source == str(absolute)
    assert inputs.failures == []


def test_extra_columns_and_split_are_carried(tmp_path: Path) -> None:
    noise_image(8, 8, 0).save(tmp_path / "a.png")
    manifest = _write(tmp_path / "m.csv", "path,label,split,photographer\na.png,cat,train,Ann\n")
    inputs = load_input(manifest)
    assert inputs.rows[0].split == "train"
    assert inputs.rows[0].extra == {"photographer": "Ann"}
    assert inputs.extra_columns == ["photographer"]


def test_row_problems_become_failures_and_the_rest_survive(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    noise_image(8, 8, 0).save(root / "ok.png")
    (tmp_path / "outside.png").write_bytes(b"x")
    manifest = _write(root / "manifest.csv", "\n".join([
        "path,label", "ok.png,cat", "gone.png,cat", "ok.png,", "ok.png,../evil", "../outside.png,cat",
        "ok.png,a/b", ",cat", "ok.png,Ödön",
    ]) + "\n")  # fmt: skip
    inputs = load_input(manifest)
    reasons = {f.row: f.reason for f in inputs.failures}
    assert reasons == {3: "bad_label", 4: "bad_label", 5: "outside_root", 6: "bad_label", 7: "missing"}
    # A file that is not there is found by the header read of the part that owns the row
    # (test_cli's broken-rows test): reading the manifest opens no file.
    assert [(r.row, r.label) for r in inputs.rows] == [(1, "cat"), (2, "cat"), (8, "Ödön")]
    assert all(f.message.startswith(f"row {f.row}:") for f in inputs.failures)


def test_duplicate_rows_are_done_once_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    noise_image(8, 8, 0).save(tmp_path / "a.png")
    manifest = _write(tmp_path / "m.csv", "path,label\na.png,cat\n./a.png,cat\na.png,dog\n")
    inputs = load_input(manifest)
    assert [(r.row, r.label) for r in inputs.rows] == [(1, "cat"), (3, "dog")]
    assert "row 2: duplicate" in caplog.text


def test_missing_manifest_and_columns_are_whole_run_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        load_input(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="missing column.*label"):
        load_input(_write(tmp_path / "m.csv", "path,class\na.png,cat\n"))


def test_image_folder_input(tmp_path: Path) -> None:
    for rel in ("cats/1.png", "cats/sub/2.jpg", "dogs/3.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        noise_image(8, 8, 0).save(tmp_path / rel)
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    (tmp_path / "manifest.csv").write_text("not a class folder")
    inputs = load_input(tmp_path)
    assert [(r.source, r.label) for r in inputs.rows] == [
        ("cats/1.png", "cats"), ("cats/sub/2.jpg", "cats"), ("dogs/3.png", "dogs"),
    ]  # fmt: skip


def test_empty_image_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no class folders"):
        load_input(tmp_path)


@pytest.mark.parametrize("label", ["", " x", ".", "..", "a/b", "a\\b", "tab\there"])
def test_unsafe_labels(label: str) -> None:
    assert label_problem(label) is not None


@pytest.mark.parametrize("label", ["cat", "Ödön", "n01440764", "two words", "蜂"])
def test_safe_labels(label: str) -> None:
    assert label_problem(label) is None


def test_image_folder_with_train_and_val_folders_reads_them_as_splits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The usual hymenoptera layout: root/train/<class>/, root/val/<class>/ (Hugging Face's
    # imagefolder reads these as splits too); not classes named train and val.
    for split, label, name in [("train", "ants", "a.png"), ("train", "bees", "b.png"), ("val", "ants", "c.png")]:
        (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
        noise_image(8, 8, 0).save(tmp_path / split / label / name)
    with caplog.at_level("INFO", logger="augment"):
        rows = load_input(tmp_path).rows
    assert [(r.split, r.label, r.source) for r in rows] == [
        ("train", "ants", "train/ants/a.png"), ("train", "bees", "train/bees/b.png"), ("val", "ants", "val/ants/c.png"),
    ]  # fmt: skip
    assert "read as splits" in caplog.text
    (tmp_path / "extra" / "x").mkdir(parents=True)  # a stray folder beside the splits: neither layout
    noise_image(8, 8, 0).save(tmp_path / "extra" / "x" / "d.png")
    with pytest.raises(ManifestError, match="train, val are named like splits but extra not"):
        load_input(tmp_path)
