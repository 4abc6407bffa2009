"""The CLI end to end on tiny synthetic data with the real engine on a random-weight VGG19."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from augment.cli import app

from .conftest import FAST

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def files_under(root: Path) -> set[Path]:
    """The dataset's files under ``root`` (not the metadata.csv written for Hugging Face)."""
    return {p for p in root.rglob("*") if p.is_file() and p.name != "metadata.csv"}


def test_run_writes_images_manifest_and_run_json(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--per-image", "2", "--out", out, *FAST)
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(rows) == 3 * 2
    assert sorted(rows["label"]) == ["ants"] * 4 + ["bees"] * 2
    for row in rows.itertuples():
        path = out / row.path
        assert path.is_file() and path.parent.name == row.label
        assert Image.open(path).size == (row.width, row.height) and max(row.width, row.height) == 32
    # Each source got two distinct styles.
    assert all(group.nunique() == 2 for _, group in rows.groupby("source")["style"])
    assert set(rows["engine"]) == {"gatys"} and rows["weights"].str.startswith("random@").all()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["exit_code"] == 0
    assert run["counts"]["written"] == 6 and run["weights"] == rows["weights"][0]
    assert (out / "failures.csv").read_text().startswith("row,path,label,reason,message")
    assert "6 images written" in (out / "run.log").read_text() or "done: 6 images" in (out / "run.log").read_text()


def test_broken_rows_are_recorded_and_the_rest_runs(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    (manifest.parent / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    manifest.write_text(manifest.read_text() + "ants/broken.jpg,ants\nants/gone.png,ants\nbees/b1.png,../x\n")
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *FAST)
    assert code == 1, err
    failures = pd.read_csv(out / "failures.csv")
    assert list(failures["reason"]) == ["undecodable", "missing", "bad_label"]
    assert list(failures["row"]) == [4, 5, 6]
    assert len(pd.read_csv(out / "manifest.csv")) == 3
    assert not (out / "images" / "..").resolve().joinpath("x").exists()


def test_two_runs_give_the_same_bytes(dataset: tuple[Path, Path], tmp_path: Path, one_thread: None) -> None:
    # --precision auto is fp32 on a CPU without native bf16, and fp32 convolutions on two
    # threads differ from run to run (conftest.one_thread): one thread makes bytes repeat.
    manifest, styles = dataset
    for name in ("a", "b"):
        code, _, err = invoke("run", manifest, "--styles", styles, "--per-image", "2", "--out", tmp_path / name, *FAST)
        assert code == 0, err
    a, b = files_under(tmp_path / "a" / "images"), files_under(tmp_path / "b" / "images")
    assert len(a) == 6 and {p.relative_to(tmp_path / "a") for p in a} == {p.relative_to(tmp_path / "b") for p in b}
    for path in a:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    drop = ["seconds"]
    ma = pd.read_csv(tmp_path / "a" / "manifest.csv").drop(columns=drop)
    mb = pd.read_csv(tmp_path / "b" / "manifest.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(ma, mb)


def test_image_folder_input(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest.parent, "--styles", styles, "--out", out, *FAST)
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert sorted(rows["source"]) == ["ants/a1.png", "ants/a2.jpg", "bees/b1.png"]


@pytest.mark.parametrize("case", ["no_manifest", "no_columns", "no_styles"])
def test_whole_run_problems_exit_2_before_any_work(dataset: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    manifest, styles = dataset
    if case == "no_manifest":
        manifest = tmp_path / "missing.csv"
    elif case == "no_columns":
        manifest.write_text("file,class\nants/a1.png,ants\n")
    else:
        styles = tmp_path / "no-styles"
    before = files_under(tmp_path)
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "out", *FAST)
    assert code == 2
    assert err.startswith("augment: error:") and err.count("\n") == 1
    assert files_under(tmp_path) == before


def test_missing_weights_offline_exit_2(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "out", "--size", "32")
    assert code == 2
    assert "no VGG19 weights" in err and "--weights PATH" in err
    assert not (tmp_path / "out").exists()


def test_nothing_is_written_outside_out(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    before = files_under(tmp_path)
    code, _, _ = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "out", *FAST)
    assert code == 0
    assert {p for p in files_under(tmp_path) - before if tmp_path / "out" not in p.parents} == set()


def test_config_file_limit_and_json(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    config = tmp_path / "run.yaml"
    config.write_text(f"styles: {styles}\nweights: random\nsize: 32\niterations: 1\nper_image: 2\n")
    code, stdout, err = invoke(
        "run", manifest, "--config", config, "--limit", "1", "--out", tmp_path / "out", "--json", "-q"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["written"] == 2 and summary["exit_code"] == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["config"]["iterations"] == 1


def test_validate_reports_tasks_classes_and_failures(dataset: tuple[Path, Path]) -> None:
    manifest, styles = dataset
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--per-image", "2", "--weights", "random")
    assert code == 0
    assert "6 tasks" in stdout and "ants" in stdout and "MB of output" in stdout
    (manifest.parent / "bees" / "b1.png").write_bytes(b"nope")
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--weights", "random")
    assert code == 1 and "undecodable" in stdout


def test_validate_refuses_what_run_refuses(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    # Weights: none cached and downloads off (tests/conftest.py): run exits 2, so does validate.
    code, _, err = invoke("validate", manifest, "--styles", styles, "--out", tmp_path / "o")
    assert code == 2 and "no VGG19 weights" in err and "--weights PATH" in err
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--out", tmp_path / "o", "--json")
    assert code == 2 and "no VGG19 weights" in json.loads(stdout)["error"]
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "o")
    assert code == 2 and "no VGG19 weights" in err
    # OUT a file: nothing could be written.
    (tmp_path / "file").write_text("x")
    code, _, err = invoke("validate", manifest, "--styles", styles, "--out", tmp_path / "file", "--weights", "random")
    assert code == 3 and "is a file, not a folder" in err
    # OUT inside an ImageFolder input: outputs would be read back as inputs.
    code, _, err = invoke("validate", manifest.parent, "--styles", styles, "--out", manifest.parent / "aug",
                          "--weights", "random")  # fmt: skip
    assert code == 2 and "overlaps the image folder" in err
    # A copy-only job (every row of a split not stylized, originals kept) needs no weights.
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",split"] + [f"{line},val" for line in lines[1:]]) + "\n")
    for command in ("validate", "run"):
        code, _, err = invoke(command, manifest, "--styles", styles, "--out", tmp_path / "c", "--include-originals")
        assert code == 0, (command, err)


def test_validate_estimates_with_no_upscale(dataset: tuple[Path, Path]) -> None:
    manifest, styles = dataset  # sources up to 32 px wide
    sizes = {}
    for flag in ("--upscale", "--no-upscale"):
        args = ["--styles", styles, "--size", "2000", flag, "--weights", "random", "--json"]
        code, stdout, _ = invoke("validate", manifest, *args)
        assert code == 0
        sizes[flag] = json.loads(stdout)["estimated_bytes"]
    assert sizes["--no-upscale"] * 1000 < sizes["--upscale"]


def test_validate_warns_when_the_output_will_not_fit(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 21: validate said "226 GB needed" beside 73 GB free with no warning. A full disk
    # cannot be made here without root, so the free space the OS reports is what is faked.
    import shutil

    manifest, styles = dataset
    args = ["--styles", styles, "--out", tmp_path / "out", "--size", "2000", "--weights", "random"]
    code, stdout, _ = invoke("validate", manifest, *args, "--json")
    found = json.loads(stdout)
    assert code == 0 and found["warnings"] == [] and found["free_bytes"] > 0
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("augment.pipeline.prepare.shutil.disk_usage", lambda _: usage._replace(free=1_000_000))
    found = json.loads(invoke("validate", manifest, *args, "--json")[1])
    assert found["free_bytes"] == 1_000_000
    assert found["warnings"] == [f"the output needs about {found['estimated_bytes'] / 1e6:.1f} MB "
                                 "but the disk of OUT has 1.0 MB free"]  # fmt: skip
    code, stdout, _ = invoke("validate", manifest, *args)
    assert code == 0 and "warning: the output needs about" in stdout


def test_validate_json_and_piped_output(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / ("a-long-folder-name-" * 6) / "out"  # past 80 columns: piped lines must not wrap
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--out", out, "--weights", "random", "--json")
    found = json.loads(stdout)
    assert code == 0 and found["tasks"] == 3 and found["classes"] == {"ants": 2, "bees": 1}
    assert found["weights"] == ["VGG19: random (smoke tests only: no real features)"]
    assert 0 < found["estimated_bytes"] < 5_000_000 and stdout.count("\n") == 1
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--out", out, "--weights", "random")
    assert code == 0 and f"of output in {out}" in stdout.splitlines()[-2]
    assert "0.0 MB" not in stdout and "ants: 2 images out" in stdout


def test_validate_shows_the_balanced_plan_per_split(dataset: tuple[Path, Path]) -> None:
    manifest, styles = dataset
    lines = manifest.read_text().splitlines()
    splits = ["train", "train", "test"]
    manifest.write_text("\n".join([lines[0] + ",split"] + [f"{line},{s}" for line, s in zip(lines[1:], splits)]) + "\n")
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--balance", "--include-originals",
                             "--weights", "random")  # fmt: skip
    assert code == 0, stdout
    assert "train/ants" in stdout and "test/bees" in stdout and "left out" not in stdout
    code, stdout, _ = invoke("validate", manifest, "--styles", styles, "--weights", "random")
    assert "1 rows of splits other than train left out" in stdout and "test/bees" not in stdout


def test_weights_command_shows_the_cache(tmp_path: Path) -> None:
    code, stdout, _ = invoke("weights")
    assert code == 0 and "vgg19-dcbb9e9d.pth" in stdout and "not cached" in stdout
    code, _, err = invoke("weights", "download")
    assert code == 2 and "AUGMENT_OFFLINE" in err


def test_python_dash_m_is_the_same_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "augment", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("augment ")
    result = subprocess.run(
        [sys.executable, "-m", "augment", "run", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--per-image" in result.stdout


def test_bad_option_value_is_exit_2(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--size", "4", *FAST[:2])
    assert code == 2 and "size must be at least 16" in err


def test_coarse_to_fine_and_batch_options(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke(
        "run",
        manifest,
        "--styles",
        styles,
        "--out",
        out,
        "--weights",
        "random",
        "--size",
        "32",
        "--iterations",
        "4",
        "--scales",
        "0.5,1",
        "--batch-size",
        "2",
        "--precision",
        "fp32",
    )
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert list(rows["iterations"]) == [4, 4, 4]  # 3 at 16 px + 1 at 32 px
    assert all(max(Image.open(out / p).size) == 32 for p in rows["path"])
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["scales"] == [0.5, 1.0] and run["timings"]["batch_size"] == 2
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--scales", "1,0.5", *FAST)
    assert code == 2 and "scales must rise to 1" in err


def test_a_non_finite_loss_in_mixed_precision_is_redone_in_fp32(dataset: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from augment.engines import step as gatys

    real = gatys.loss_terms

    def overflow_in_bf16(feats, image, *args, **kwargs):  # type: ignore[no-untyped-def]
        terms = real(feats, image, *args, **kwargs)
        if any(f.dtype == torch.bfloat16 for f in feats.values()):
            terms["total"] = terms["total"] * float("inf")  # what an fp16/bf16 overflow looks like
        return terms

    monkeypatch.setattr(gatys, "loss_terms", overflow_in_bf16)
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--precision", "bf16", *FAST)
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert len(rows) == 3 and set(rows["precision"]) == {"fp32"}
    assert "redoing them in fp32" in (out / "run.log").read_text()


def _mean_abs_difference(out: Path, rows: pd.DataFrame, data_root: Path, size: int) -> list[float]:
    from augment.io.images import load_rgb, resize_long_side

    diffs = []
    for row in rows.itertuples():
        source = np.asarray(resize_long_side(load_rgb(data_root / row.source), size), dtype=float)
        diffs.append(float(np.abs(np.asarray(Image.open(out / row.path), dtype=float) - source).mean() / 255))
    return diffs


def test_dream_engine_needs_no_styles(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, _ = dataset
    out = tmp_path / "out"
    code, _, err = invoke(
        "run",
        manifest,
        "--engine",
        "dream",
        "--per-image",
        "2",
        "--dream-layers",
        "inception3b,inception4c",
        "--weights",
        "random",
        "--size",
        "40",
        "--iterations",
        "2",
        "--out",
        out,
    )
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert len(rows) == 6 and set(rows["engine"]) == {"dream"}
    assert all(group.nunique() == 2 for _, group in rows.groupby("source")["style"])  # both layers per image
    assert (
        set(rows["style"]) == {"dream-inception3b", "dream-inception4c"}
        and rows["params"].str.contains("octaves=4").all()
    )
    assert min(_mean_abs_difference(out, rows, manifest.parent, 40)) >= 1 / 255
    assert "too small for 4 octaves" in (out / "run.log").read_text()  # 40 px: fewer octaves, a note


def test_dream_twice_gives_the_same_bytes(dataset: tuple[Path, Path], tmp_path: Path, one_thread: None) -> None:
    manifest, _ = dataset  # one thread: see test_two_runs_give_the_same_bytes
    for name in ("a", "b"):
        code, _, err = invoke("run", manifest, "--engine", "dream", "--weights", "random", "--size", "32",
                              "--iterations", "2", "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
    for path in (tmp_path / "a" / "images").rglob("*.png"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_guided_dream_on_top_of_style_transfer(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--engine", "gatys+dream", "--guide", "--out", out,
                          "--dream-iterations", "1", *FAST)  # fmt: skip
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert set(rows["engine"]) == {"gatys+dream-guided"} and rows["weights"].str.count("@").eq(2).all()
    assert rows["dream_objective"].notna().all() and rows["total_loss"].notna().all()
    code, _, err = invoke("run", manifest, "--engine", "dream", "--guide", "--out", tmp_path / "x", *FAST)
    assert code == 2 and "no style folder" in err


def test_every_config_option_is_a_flag_of_run_in_its_panel() -> None:
    from augment.config import FIELD_NAMES, PANELS

    code, stdout, _ = invoke("run", "--help")
    assert code == 0
    text = " ".join(stdout.split())  # rich wraps long lines
    for name in FIELD_NAMES:
        if name != "manifest":
            assert "--" + name.replace("_", "-") in text, name
    assert all(panel in text for panel in PANELS)
    code, stdout, _ = invoke("validate", "--help")  # the same options: validate the command line you run
    text = " ".join(stdout.split())
    assert code == 0 and all("--" + name.replace("_", "-") in text for name in FIELD_NAMES if name != "manifest")


def test_help_reads_well(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, stdout, _ = invoke("run", "--help")
    text = " ".join(stdout.replace("│", " ").split())  # the panels' borders out, wrapped lines joined
    assert code == 0 and "{MANIFEST}" in text and "{manifest}" not in text
    # Defaults shown (rich would eat an unescaped [default: ...] as markup), without parentheses.
    for shown in ("[default: 512]", "[default: 300]", "[default: augmented]", "[default: random]"):
        assert shown in text, shown
    assert "[default: (" not in text
    # Readable metavars: no type names, flags take no value, choices or a word for enums.
    assert "<str>" not in text and "<int>" not in text and "<float>" not in text
    assert text.count("<bool>") == 1  # only click's own --help
    assert "--size N" in text and "--out -o PATH" in text and "--alpha X|LO:HI" in text
    assert "--pooling max|avg" in text and "--engine MODE" in text
    assert "as the seed" not in text  # read as --seed
    assert len(stdout.splitlines()) < 195  # 301 lines at 80 columns before; 189 with the Ray panel (measured)
    code, stdout, _ = invoke("merge", "--help")
    assert code == 0 and "{OUT...}" in stdout


def test_short_flags_and_negatable_booleans(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "-s", styles, "-k", "1", "-o", out, "-q", "--no-download",
                          "--normalize-gradients", "--style-layer-weights", "1,1,1,1,1", *FAST)  # fmt: skip
    assert code == 0, err
    params = pd.read_csv(out / "manifest.csv")["params"]
    assert params.str.contains("normalize_gradients").all() and params.str.contains("style_layer_weights=1,1").all()


def test_no_upscale_keeps_small_sources_at_their_size(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset  # sources 24x20, 28x20, 32x20
    args = ["--styles", styles, "--weights", "random", "--iterations", "1", "--size", "30"]
    code, _, err = invoke("run", manifest, *args, "--out", tmp_path / "up")
    assert code == 0, err
    assert sorted(pd.read_csv(tmp_path / "up" / "manifest.csv")["width"]) == [30, 30, 30]
    code, _, err = invoke("run", manifest, *args, "--out", tmp_path / "kept", "--no-upscale")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "kept" / "manifest.csv").sort_values("width")
    assert list(zip(rows["width"], rows["height"])) == [(24, 20), (28, 20), (30, 19)]  # 32x20: smaller
    assert all(
        Image.open(tmp_path / "kept" / p).size == (w, h) for p, w, h in zip(rows["path"], rows["width"], rows["height"])
    )
