"""webdataset shards (``--webdataset``): shuffled by the seed, sized by --shard-size, listed in
shards.json, typed per-sample JSON, portable sources, shards only with --no-images. Read with
tarfile: the webdataset package is not a dependency."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from augment.config import RunConfig
from augment.errors import ConfigError
from augment.outputs import export

from .conftest import FAST, make_dataset, make_styles
from .test_cli import invoke

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _samples(tar_path: Path) -> list[tuple[str, dict[str, Any], int]]:
    """(key, .json, .cls) of every sample, in the order of the tar."""
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        read = {n: tar.extractfile(n).read() for n in names}  # type: ignore[union-attr]
    keys = list(dict.fromkeys(n[: -len(".json")] for n in names if n.endswith(".json")))
    assert len(names) == 3 * len(keys)  # image, .cls, .json per sample
    return [(k, json.loads(read[f"{k}.json"]), int(read[f"{k}.cls"])) for k in keys]


def _run(tmp_path: Path, out: Path, *extra: str, manifest: Path | None = None) -> None:
    manifest = manifest or make_dataset(tmp_path)
    code, _, err = invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", out, "--include-originals",
                          "--per-image", "2", "--webdataset", *extra, *FAST)  # fmt: skip
    assert code == 0, err


def test_shards_are_shuffled_by_the_seed_sized_and_listed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(tmp_path, out, "--shard-size", "4")  # 9 samples: 6 ants, then 3 bees in manifest order
    folder = out / "webdataset"
    index = json.loads((folder / "shards.json").read_text())
    classes = json.loads((out / "classes.json").read_text())
    train = index["splits"]["train"]
    assert index["shard_size"] == 4 and index["seed"] == 0 and index["classes"] == classes
    assert train["samples"] == 9 and train["classes"] == {"ants": 6, "bees": 3}
    assert [(s["url"], s["samples"]) for s in train["shards"]] == [
        ("train-000000.tar", 4), ("train-000001.tar", 4), ("train-000002.tar", 1),
    ]  # fmt: skip
    assert sorted(p.name for p in folder.glob("*.tar")) == [s["url"] for s in train["shards"]]
    shards = [_samples(folder / s["url"]) for s in train["shards"]]
    assert [len(s) for s in shards] == [4, 4, 1]
    order = [row["path"] for shard in shards for _, row, _ in shard]
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(order) == sorted(manifest["path"]) and order != list(manifest["path"])  # shuffled, none lost
    assert len({row["label"] for _, row, _ in shards[0]}) == 2  # in manifest order: ants only
    assert all(cls == classes[row["label"]] for shard in shards for _, row, cls in shard)

    # The same seed gives the same bytes; another seed another order (samples, not shard names).
    run = json.loads((out / "run.json").read_text())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    shutil.rmtree(folder)
    export.write_exports(out, run)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    export.write_exports(out, {**run, "config": {**run["config"], "seed": 1}})
    reordered = [row["path"] for s in train["shards"] for _, row, _ in _samples(folder / s["url"])]
    assert sorted(reordered) == sorted(order) and reordered != order
    assert json.loads((folder / "shards.json").read_text())["seed"] == 1


def test_shard_size_and_no_images_are_checked(tmp_path: Path) -> None:
    assert RunConfig().shard_size == 1000 and RunConfig(shard_size=7).shard_size == 7
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="shard_size must be at least 1"):
            RunConfig(shard_size=bad)
    with pytest.raises(ConfigError, match="no-images .* needs --webdataset"):
        RunConfig(images=False)
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    code, _, err = invoke("run", manifest, "--styles", styles, "--webdataset", "--shard-size", "0", *FAST)
    assert code == 2 and "shard_size must be at least 1" in err
    code, _, err = invoke("run", manifest, "--styles", styles, "--no-images", *FAST)
    assert code == 2 and "needs --webdataset" in err
    # One way to ask for shards: --webdataset; the old --format jpg,webdataset still means it.
    assert RunConfig(format="jpg,webdataset") == RunConfig(format="jpg", webdataset=True)


def test_sample_json_is_typed_and_sources_are_relative(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    data = manifest.parent
    elsewhere = tmp_path / "elsewhere" / "far.png"
    elsewhere.parent.mkdir()
    shutil.copy(data / "bees" / "b1.png", elsewhere)
    # Absolute paths (inside the manifest's folder and outside it), and columns of the user's own.
    manifest.write_text(
        "path,label,id,weight,note\n"
        f"{data / 'ants' / 'a1.png'},ants,007,3,\n"
        f"{data / 'ants' / 'a2.jpg'},ants,12,0.5,x\n"
        f"{elsewhere},bees,13,,\n"
    )
    out = tmp_path / "out"
    _run(tmp_path, out, manifest=manifest)
    rows = {row["path"]: row for _, row, _ in _samples(out / "webdataset" / "train-000000.tar")}
    assert len(rows) == 9
    for row in rows.values():
        assert row["source"] in ("ants/a1.png", "ants/a2.jpg", "far.png")  # no host path
        assert isinstance(row["k"], int) and isinstance(row["width"], int) and isinstance(row["iterations"], int)
        assert isinstance(row["label"], str) and isinstance(row["id"], str)  # "007" stays an id
        assert row["weight"] is None or isinstance(row["weight"], float)  # 3 and 0.5: one column, floats
        assert row["note"] in (None, "x") and row["split"] is None and "key" not in row
        if row["style"] == "original":
            assert row["seed"] is None and row["alpha"] is None and row["total_loss"] is None
        else:
            assert isinstance(row["seed"], int) and isinstance(row["alpha"], float)
            assert isinstance(row["total_loss"], float) and isinstance(row["style_weight"], float)
    assert {r["id"] for r in rows.values()} == {"007", "12", "13"}
    assert not any(str(tmp_path) in json.dumps(r) for r in rows.values())


def test_no_images_leaves_only_the_shards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(tmp_path, out)
    run = json.loads((out / "run.json").read_text())
    shards_only = {**run, "config": {**run["config"], "images": False}}
    export.write_exports(out, shards_only, finished=False)  # a stopped run keeps its images, to resume
    assert len(list((out / "images").rglob("*.png"))) == 9

    for _ in range(2):  # and again: a re-run makes the images again, then packs them
        _run(tmp_path, out, "--no-images")
        assert not [p for p in (out / "images").rglob("*") if p.is_file()]
        samples = _samples(out / "webdataset" / "train-000000.tar")
        manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
        assert sorted(row["path"] for _, row, _ in samples) == sorted(manifest["path"]) and len(samples) == 9
        assert json.loads((out / "webdataset" / "shards.json").read_text())["splits"]["train"]["samples"] == 9
        assert json.loads((out / "classes.json").read_text()) == {"ants": 0, "bees": 1}


def test_the_docs_loader_reads_the_shard_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/training.md's webdataset snippet, run against a real output with a stand-in for the
    webdataset package: it must open exactly the shards there are (no guessed brace pattern)."""
    out = tmp_path / "aug"
    _run(tmp_path, out, "--shard-size", "4")
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if "import webdataset" in b)
    opened: list[Any] = []

    class WebDataset:
        def __init__(self, urls: Any, **_: Any) -> None:
            opened.append(urls)

        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: self

    monkeypatch.setitem(sys.modules, "webdataset", types.SimpleNamespace(WebDataset=WebDataset))
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})  # noqa: S102
    assert opened and all(not re.search(r"[{}]", str(u)) for u in opened)
    assert sorted(opened[0]) == sorted(f"aug/webdataset/{p.name}" for p in (out / "webdataset").glob("train-*.tar"))


def test_an_interrupted_windows_merge_leaves_the_shards_as_they_were(tmp_path: Path) -> None:
    # Issue 22: every merge deleted and rewrote every shard, the merge at the end of each
    # --max-seconds window of a long job included. Shards are built when the job is complete.
    out = tmp_path / "out"
    manifest = make_dataset(tmp_path)
    _run(tmp_path, out, manifest=manifest)
    folder = out / "webdataset"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    assert any(name.endswith(".tar") for name in before)
    args = ["run", manifest, "--styles", tmp_path / "styles", "--out", out, "--include-originals", "--webdataset",
            *FAST, "--per-image", "3", "--iterations", "100000", "--max-seconds", "3"]  # fmt: skip
    code, _, err = invoke(*args)
    assert code == 75, err  # the window ended with work left: the merge of what is done
    assert json.loads((out / "run.json").read_text())["status"] == "budget"
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before
    _run(tmp_path, out, "--per-image", "3", manifest=manifest)  # the job done: built again, once
    index = json.loads((folder / "shards.json").read_text())
    assert index["splits"]["train"]["samples"] == 3 * 4  # 3 originals and 9 variants
