"""The output as a training set: originals, sampled settings, exports, the Dataset, the report."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from .conftest import FAST, load_imagefolder_offline, make_dataset, make_styles
from .test_cli import invoke


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def _yiq(rgb: np.ndarray) -> np.ndarray:
    matrix = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
    return rgb @ matrix.T


def _by_style(out: Path) -> dict[tuple[str, str], Path]:
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    return {(r.source, r.style): out / r.path for r in rows.itertuples()}


def test_originals_alpha_and_preserve_color(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "zero"
    code, _, err = invoke(
        "run", manifest, "--styles", styles, "--out", out, "--include-originals", "--alpha", "0", *FAST
    )
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    originals = rows[rows["style"] == "original"]
    assert len(originals) == 3 and set(originals["engine"]) == {"original"} and (originals["seed"] == "").all()
    assert all(max(Image.open(out / p).size) == 32 for p in originals["path"])  # re-encoded at --size
    # alpha 0: all source, no style. The variant is the original, pixel for pixel.
    images = _by_style(out)
    for row in rows[rows["style"] != "original"].itertuples():
        assert np.array_equal(_pixels(out / row.path), _pixels(images[(row.source, "original")]))

    out = tmp_path / "colour"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--include-originals", "--preserve-color",
                          "--weights", "random", "--size", "32", "--iterations", "10")  # fmt: skip
    assert code == 0, err
    images = _by_style(out)
    for (source, style), path in images.items():
        if style == "original":
            continue
        stylized, original = _yiq(_pixels(path)), _yiq(_pixels(images[(source, "original")]))
        colour_gap = np.abs(stylized[..., 1:] - original[..., 1:]).mean()
        luminance_gap = np.abs(stylized[..., 0] - original[..., 0]).mean()
        assert colour_gap < 0.02 < luminance_gap, (colour_gap, luminance_gap)  # colour kept, brightness styled


def test_blends_and_sampled_style_weights_are_recorded(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--blend", "0.5",
                          "--style-weight", "1e4:1e6", "--per-image", "2", *FAST)  # fmt: skip
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert set(rows["style"]) == {"waves+grey_stone", "grey_stone+waves"} and (rows["style_mix"] == 0.5).all()
    assert rows["style_weight"].between(1e4, 1e6).all() and rows["style_weight"].nunique() == len(rows)
    # Two styles at half weight each is a different target from either style alone.
    single = tmp_path / "single"
    assert invoke("run", manifest, "--styles", styles, "--out", single, "--per-image", "2", *FAST)[0] == 0
    blended = {(r.source, r.style.split("+")[0]): r.total_loss for r in rows.itertuples()}
    alone = {(r.source, r.style): r.total_loss for r in pd.read_csv(single / "manifest.csv").itertuples()}
    assert all(blended[key] != alone[key] for key in blended)


def test_exports_load_in_imagefolder_manifest_dataset_and_webdataset(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    manifest = make_dataset(tmp_path, rows=[("zebra/z1.png", "zebra"), ("Ant/a1.png", "Ant"), ("ant/a2.png", "ant")])
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", out, "--include-originals",
                          "--per-image", "2", "--webdataset", *FAST)  # fmt: skip
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    classes = json.loads((out / "classes.json").read_text())
    folder = torchvision.datasets.ImageFolder(out / "images")
    assert classes == folder.class_to_idx == {"Ant": 0, "ant": 1, "zebra": 2}  # torchvision's order
    assert sorted(Path(p).relative_to(out).as_posix() for p, _ in folder.samples) == sorted(rows["path"])

    from augment.data import ManifestDataset

    data = ManifestDataset(out)
    assert len(data) == len(rows) == 9
    image, label = data[0]
    assert image.mode == "RGB" and label == classes[data.rows["label"][0]]
    assert len(ManifestDataset(out, styles=["original"])) == 3
    assert len(ManifestDataset(out, exclude_styles=["original"], engines=["gatys"])) == 6
    assert ManifestDataset(out, transform=lambda im: im.size)[0][0] == image.size
    # A typo is an error naming what there is, not an empty dataset.
    with pytest.raises(ValueError, match="no style 'gray_stone'.*did you mean 'grey_stone'"):
        ManifestDataset(out, styles=["gray_stone"])
    with pytest.raises(ValueError, match="no engine 'gatsy'.*did you mean 'gatys'"):
        ManifestDataset(out, engines=["gatsy"])
    with pytest.raises(ValueError, match="no style 'wave'"):
        ManifestDataset(out, exclude_styles=["wave"])

    # No metadata file: with one, Hugging Face's loader would ignore the class folders (below).
    assert not list((out / "images").rglob("metadata.*"))

    with tarfile.open(out / "webdataset" / "train-000000.tar") as tar:
        names = tar.getnames()
        assert len(names) == 27  # image, .cls, .json per sample
        cls = {n[: -len(".cls")]: int(tar.extractfile(n).read()) for n in names if n.endswith(".cls")}  # type: ignore[union-attr]
    assert all(cls[key] == classes[key.split("/")[0]] for key in cls)


def _load_hf(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``load_dataset("imagefolder", data_dir=images)`` offline, every split, each example's
    image as its file path (to compare with its class folder)."""
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")
    load_imagefolder_offline(images, tmp_path, monkeypatch)  # offline, private cache
    loaded = datasets.load_dataset("imagefolder", data_dir=str(images), cache_dir=str(tmp_path / "hf"))
    return {name: split.cast_column("image", datasets.Image(decode=False)) for name, split in loaded.items()}


def test_hugging_face_imagefolder_reads_the_labels(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, "--include-originals", *FAST)[0] == 0
    loaded = load_imagefolder_offline(out / "images", tmp_path, monkeypatch)
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    classes = json.loads((out / "classes.json").read_text())
    # A ClassLabel (what the HF image-classification scripts read), in classes.json's order.
    assert loaded.features["label"].names == list(classes) == ["ants", "bees"]
    assert sorted(loaded.features["label"].names[i] for i in loaded["label"]) == sorted(rows["label"])
    assert loaded[0]["image"].size[0] <= 32


def test_hugging_face_class_labels_match_the_folders_in_every_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torchvision = pytest.importorskip("torchvision")
    rows = [("Bees/b1.png", "Bees"), ("ants/a1.png", "ants"), ("ants/a2.png", "ants"), ("Bees/b2.png", "Bees")]
    manifest = make_dataset(tmp_path, rows=rows)
    lines = manifest.read_text().splitlines()
    splits = ["train", "train", "val", "val"]
    manifest.write_text("\n".join([lines[0] + ",split"] + [f"{x},{s}" for x, s in zip(lines[1:], splits)]) + "\n")
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", out, "--include-originals",
                          "--per-image", "2", *FAST)  # fmt: skip
    assert code == 0, err
    (out / "images" / "train" / "metadata.csv").write_text("file_name,label\n")  # as an older augment left it
    code, _, err = invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", out, "--include-originals",
                          "--per-image", "2", *FAST)  # fmt: skip
    assert code == 0, err
    assert not (out / "images" / "train" / "metadata.csv").exists()
    classes = json.loads((out / "classes.json").read_text())
    assert list(classes) == ["Bees", "ants"]  # sorted as torchvision sorts, capitals first
    loaded = _load_hf(out / "images", tmp_path, monkeypatch)
    assert sorted(loaded) == ["train", "validation"]  # images/train/ and images/val/
    manifest_rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    for name, split in loaded.items():
        assert split.features["label"].names == list(classes)
        folders = [Path(example["image"]["path"]).parent.name for example in split]
        assert list(split["label"]) == [classes[folder] for folder in folders]
        own = "train" if name == "train" else "val"
        assert sorted(folders) == sorted(manifest_rows.loc[manifest_rows["split"] == own, "label"])
        assert torchvision.datasets.ImageFolder(out / "images" / own).class_to_idx == classes


def test_report_shows_counts_sources_and_failures_outside_images(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    with manifest.open("a") as handle:
        handle.write("ants/gone.png,ants\n")
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", out, "--per-image", "2", *FAST)[0] == 1
    before = sorted(p for p in (out / "images").rglob("*"))
    code, _, err = invoke("report", out, "--sample", "2")
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert page.count("<figure") == 2 * 3  # two sources, each beside its two variants
    assert "class='missing'" not in page  # the sources were found (relative to the manifest)
    assert "Failures (1)" in page and "gone.png" in page and "Made with random weights" in page
    assert len(list((out / "report").glob("*.jpg"))) == 6
    assert sorted(p for p in (out / "images").rglob("*")) == before  # nothing added under images/
    code, _, err = invoke("report", tmp_path / "nothing-here")
    assert code == 2 and "no manifest.csv" in err


def test_copying_other_splits_needs_no_weights_and_toggling_originals_keeps_the_variants(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",split"] + [f"{line},val" for line in lines[1:]]) + "\n")
    styles = make_styles(tmp_path)
    # Only val rows: nothing to stylize, so no network and no weights (offline, none cached).
    out = tmp_path / "copies"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--include-originals", "--size", "32")
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert (
        len(rows) == 3 and set(rows["style"]) == {"original"} and all(p.startswith("images/val/") for p in rows["path"])
    )

    manifest.write_text(manifest.read_text().replace(",val", ",train"))
    out = tmp_path / "toggle"
    assert invoke("run", manifest, "--styles", styles, "--out", out, "--per-image", "2", *FAST)[0] == 0
    variants = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert (
        invoke("run", manifest, "--styles", styles, "--out", out, "--per-image", "2", "--include-originals", *FAST)[0]
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["skipped"] == 6 and run["counts"]["written"] == 9  # only the 3 copies were made
    assert all(p.stat().st_mtime_ns == t for p, t in variants.items())
    assert invoke("run", manifest, "--styles", styles, "--out", out, "--per-image", "2", *FAST)[0] == 0
    assert json.loads((out / "run.json").read_text())["counts"]["removed"] == 3 and not list(
        (out / "images").rglob("*original*")
    )


def test_dream_variants_with_originals_and_alpha(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, _ = dataset
    out = tmp_path / "out"
    code, _, err = invoke(
        "run", manifest, "--engine", "dream", "--out", out, "--include-originals", "--alpha", "0", *FAST
    )
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(rows["engine"]) == ["dream"] * 3 + ["original"] * 3
    images = _by_style(out)
    for row in rows[rows["engine"] == "dream"].itertuples():  # alpha 0: the source itself
        assert np.array_equal(_pixels(out / row.path), _pixels(images[(row.source, "original")]))


def test_exports_follow_the_dataset_as_it_changes(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    from augment.data import ManifestDataset

    manifest = make_dataset(
        tmp_path, rows=[("ants/a.b.png", "ants"), ("ants/a_b.png", "ants"), ("bees/b1.png", "bees")]
    )
    styles, out = make_styles(tmp_path), tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, "--format", "webdataset", *FAST)[0] == 0
    with tarfile.open(out / "webdataset" / "train-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == len(set(names)) == 9  # a.b and a_b: two samples, not one key twice
    with pytest.raises(ValueError, match="no splits"):
        ManifestDataset(out, split="train")
    # The bees leave the manifest, and webdataset is no longer asked for.
    manifest.write_text("\n".join(line for line in manifest.read_text().splitlines() if "bees" not in line) + "\n")
    assert invoke("run", manifest, "--styles", styles, "--out", out, *FAST)[0] == 0
    assert not (out / "images" / "bees").exists() and not (out / "webdataset").exists()
    assert torchvision.datasets.ImageFolder(out / "images").classes == ["ants"]  # no empty class folder left
    assert json.loads((out / "classes.json").read_text()) == {"ants": 0}


def test_a_report_of_a_run_where_every_row_failed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("path,label\ngone.png,cat\n")
    out = tmp_path / "out"
    assert invoke("run", data / "manifest.csv", "--styles", make_styles(tmp_path), "--out", out, *FAST)[0] == 1
    code, _, err = invoke("report", out)
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert "No images." in page and "Failures (1)" in page


def test_a_changed_styles_yaml_setting_redoes_that_style(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    args = ["run", manifest, "--styles", styles, "--out", out, "--per-image", "2", *FAST]
    assert invoke(*args)[0] == 0
    (styles / "styles.yaml").write_text("waves: {style_weight: 5000}\n")
    assert invoke(*args)[0] == 0
    rows = pd.read_csv(out / "manifest.csv")
    assert json.loads((out / "run.json").read_text())["counts"]["skipped"] == 3  # the grey_stone images
    assert set(rows.loc[rows["style"] == "waves", "style_weight"]) == {5000}
