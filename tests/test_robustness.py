"""Issue 14, round 2 of unattended runs: inputs that used to crash a run, lose data or give the
wrong exit code. Each test fails on the code before its fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from augment.config import RunConfig, build_config
from augment.errors import ConfigError, StyleBankError
from augment.io.images import probe
from augment.io.styles import load_style_bank

from .conftest import FAST, make_dataset, make_styles, noise_image
from .test_cli import files_under, invoke


def test_a_trailing_comma_on_every_row_keeps_the_columns(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    lines = manifest.read_text().splitlines()
    # The header as it was, a trailing comma on every row (pandas then took the first field as the index).
    manifest.write_text("\n".join([lines[0]] + [line + "," for line in lines[1:]]) + "\n")
    code, _, err = invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 3


@pytest.mark.skipif(os.name != "posix", reason="file names as raw bytes are a POSIX thing")
def test_an_imagefolder_file_name_that_is_not_utf8_is_stylized(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "ants").mkdir(parents=True)
    noise_image(24, 20, 1).save(root / "ants" / "ok.png")
    odd = os.path.join(os.fsencode(root / "ants"), b"caf\xe9.png")  # Latin-1, not UTF-8
    with open(odd, "wb") as handle:
        noise_image(24, 20, 2).save(handle, format="PNG")
    code, _, err = invoke("run", root, "--styles", make_styles(tmp_path), "--out", tmp_path / "out", *FAST)
    assert code in (0, 1), err  # never 70: the odd name is made, or explained in failures.csv
    rows = len(pd.read_csv(tmp_path / "out" / "manifest.csv"))
    failed = len(pd.read_csv(tmp_path / "out" / "failures.csv"))
    assert rows + failed == 2 and rows >= 1


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs /proc/self/mem (Linux)")
def test_an_unreadable_source_is_a_failed_row_not_a_crash(tmp_path: Path) -> None:
    # /proc/self/mem is a file that every read of fails (EIO): task keys hash each source's
    # bytes before anything else, and that used to end the run with exit 70.
    manifest = make_dataset(tmp_path)
    manifest.write_text(manifest.read_text() + "/proc/self/mem,ants\n")
    code, _, err = invoke("run", manifest, "--styles", make_styles(tmp_path), "--out", tmp_path / "out", *FAST)
    assert code == 1, err
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["path"]) == ["/proc/self/mem"]
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 3


def test_an_upfront_max_failures_abort_removes_and_clears_nothing(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, *FAST)[0] == 0
    before = {p: p.read_bytes() for p in files_under(out / "images")}
    run_json = (out / "run.json").read_text()
    good = manifest.read_text()
    # One row renamed (its old image is now stale) and two broken rows: over the limit.
    manifest.write_text(good.replace("ants/a1.png,ants", "ants/a1.png,bees") + "gone.png,ants\nalso.png,ants\n")
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--max-failures", "1", *FAST)
    assert code == 3 and "more than --max-failures 1" in err
    assert {p: p.read_bytes() for p in files_under(out / "images")} == before  # nothing removed
    assert (out / "run.json").read_text() == run_json and (out / "parts").is_dir()
    assert "TooManyFailures" in (out / "run.log").read_text()  # the fatal error is in run.log
    manifest.write_text(good)
    code, stdout, err = invoke("run", manifest, "--styles", styles, "--out", out, "--json", *FAST)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["counts"]["skipped"] == 3  # nothing redone


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--device", "bogus", "unknown device 'bogus'"), ("--out", "", "out must name a folder"),
     ("--scales", "abc", "scales: expected numbers")],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line(dataset: tuple[Path, Path], tmp_path: Path, flag: str, value: str,
                                        message: str) -> None:  # fmt: skip
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, flag, value, *FAST)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_a_usage_error(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "o", "--device", "cuda:3", *FAST)
    assert code == 2 and "this machine has no GPU" in err


@pytest.mark.parametrize(("yaml_line", "message"), [
    ("out: 123", "out: expected text, got 123"),
    ("shard: 1", "shard: expected text, got 1"),
    ("styles: [a, b]", "styles: expected text"),
    ("size: 1.0e+20", "size: expected a whole number"),
    ("quiet: 3", "quiet: expected true or false"),
])  # fmt: skip
def test_yaml_values_of_the_wrong_type_name_their_option(tmp_path: Path, yaml_line: str, message: str) -> None:
    (tmp_path / "run.yaml").write_text(yaml_line + "\n")
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path / "run.yaml")


def test_yaml_dream_weights_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("dream_weights: nets/googlenet.pth\nweights: random\n")
    assert build_config(tmp_path / "run.yaml").dream_weights == str(tmp_path / "nets" / "googlenet.pth")


def test_a_header_read_does_not_decode_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    noise_image(40, 30, 1).save(tmp_path / "a.png")
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or real_load(self))
    assert probe(tmp_path / "a.png") == (40, 30) and not decoded
    with pytest.raises(Exception, match="pixel limit"):
        probe(tmp_path / "a.png", max_pixels=100)
    assert not decoded  # refused on its header


def test_a_truncated_or_non_finite_style_is_refused_when_the_bank_loads(tmp_path: Path) -> None:
    styles = make_styles(tmp_path)
    noise_image(64, 64, 3).save(styles / "stone.jpg", quality=95)
    cut = (styles / "stone.jpg").read_bytes()
    (styles / "stone.jpg").write_bytes(cut[: len(cut) // 2])  # the header reads fine
    assert probe(styles / "stone.jpg") == (64, 64)
    with pytest.raises(StyleBankError, match="stone.jpg"):
        load_style_bank(styles)
    (styles / "stone.jpg").unlink()
    for value in (".inf", ".nan"):
        (styles / "styles.yaml").write_text(f"waves:\n  weight: {value}\n")
        with pytest.raises(StyleBankError, match="waves.weight must be a number >= 0"):
            load_style_bank(styles)


@pytest.mark.slow
def test_run_json_counts_each_task_once_with_workers(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--workers", "2", *FAST)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["counts"]["tasks"] == 3


def test_path_values_are_accepted_as_text() -> None:
    assert RunConfig(out=Path("x")).out == "x"


def test_json_is_printed_on_every_exit(tmp_path: Path) -> None:
    from augment.io.lock import OutLock

    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    manifest.write_text(manifest.read_text() + "gone.png,ants\n")
    code, stdout, _ = invoke("run", manifest, "--styles", styles, "--out", out, "--json", "--max-failures", "0", *FAST)
    assert code == 3 and json.loads(stdout)["exit_code"] == 3 and "max-failures" in json.loads(stdout)["error"]
    with OutLock(out):  # another run holds OUT
        code, stdout, _ = invoke("run", manifest, "--styles", styles, "--out", out, "--json", *FAST)
    assert code == 75 and json.loads(stdout)["exit_code"] == 75
    code, stdout, _ = invoke("run", manifest, "--styles", styles, "--out", out, "--json", "--size", "8", *FAST[:2])
    assert code == 2 and json.loads(stdout) == {
        "out": str(out),
        "exit_code": 2,
        "error": "size must be at least 16 pixels",
    }


def test_overlong_file_names_and_reserved_labels(tmp_path: Path) -> None:
    # A 240-character stem made names over 255 bytes: exit 3 on every run, forever.
    data = tmp_path / "data"
    (data / "ants").mkdir(parents=True)
    long_stem = "é" * 120  # 240 bytes in UTF-8
    noise_image(24, 20, 1).save(data / "ants" / f"{long_stem}.png")
    noise_image(24, 20, 2).save(data / "ants" / "short.png")
    (data / "metadata.csv").mkdir()
    noise_image(24, 20, 3).save(data / "metadata.csv" / "x.png")
    lines = [f"ants/{long_stem}.png,ants", "ants/short.png,ants", "metadata.csv/x.png,metadata.csv"]
    (data / "manifest.csv").write_text("path,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = invoke("run", data / "manifest.csv", "--styles", make_styles(tmp_path), "--out", out,
                          "--per-image", "2", *FAST)  # fmt: skip
    assert code == 1, err
    names = [p.name for p in files_under(out / "images")]
    assert len(names) == 4 and all(len(n.encode()) <= 220 for n in names)
    assert sum(n.startswith("short__") for n in names) == 2  # short names are unchanged
    long_names = [n for n in names if not n.startswith("short")]
    assert len(set(long_names)) == 2 and all(n.startswith("éé") for n in long_names)
    failures = pd.read_csv(out / "failures.csv")
    assert list(failures["reason"]) == ["bad_label"] and "metadata.csv" in failures["message"][0]


def test_out_may_not_hold_the_manifest_or_overlap_an_image_folder(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    before = manifest.read_text()
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", manifest.parent, *FAST)
    assert code == 2 and "holds the manifest" in err and manifest.read_text() == before
    folder = tmp_path / "folder"
    (folder / "ants").mkdir(parents=True)
    noise_image(24, 20, 1).save(folder / "ants" / "a.png")
    for out in (folder, folder / "aug", tmp_path):
        code, _, err = invoke("run", folder, "--styles", styles, "--out", out, *FAST)
        assert code == 2 and "overlaps the image folder" in err, out
    assert invoke("validate", manifest, "--styles", styles, "--config", _yaml(tmp_path, manifest.parent))[0] == 2


def _yaml(tmp_path: Path, out: Path) -> Path:
    (tmp_path / "run.yaml").write_text(f"out: {out}\n")
    return tmp_path / "run.yaml"


@pytest.mark.slow
def test_max_failures_counts_the_whole_job_with_workers(tmp_path: Path) -> None:
    # Three bad rows of six, --max-failures 1: exit 3 alone, and with two workers too (each
    # worker used to count only its own failures, and the header part's not at all).
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    data = manifest.parent
    for name in ("cut1.jpg", "cut2.jpg"):  # headers read fine, decoding fails: found by the workers
        noise_image(40, 30, 5).save(data / "ants" / name, quality=95)
        whole = (data / "ants" / name).read_bytes()
        (data / "ants" / name).write_bytes(whole[: len(whole) // 2])
    manifest.write_text(manifest.read_text() + "ants/cut1.jpg,ants\nants/cut2.jpg,ants\ngone.png,ants\n")
    for extra in ([], ["--workers", "2"]):
        out = tmp_path / f"out{len(extra)}"
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--max-failures", "1", *extra, *FAST)
        assert code == 3 and "more than --max-failures 1" in err, (extra, err)
        assert json.loads((out / "run.json").read_text())["status"] == "aborted"
    out = tmp_path / "lenient"
    code, _, err = invoke(
        "run", manifest, "--styles", styles, "--out", out, "--max-failures", "3", "--workers", "2", *FAST
    )
    assert code == 1, err
    assert len(pd.read_csv(out / "failures.csv")) == 3 and len(pd.read_csv(out / "manifest.csv")) == 3


def test_a_row_failing_for_a_moment_keeps_its_images_and_an_empty_manifest_removes_nothing(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, *FAST)[0] == 0
    before = sorted(p.name for p in files_under(out / "images"))
    source = manifest.parent / "ants" / "a1.png"
    source.rename(source.with_suffix(".bak"))  # gone for a moment (a sync, a remount)
    code, _, _ = invoke("run", manifest, "--styles", styles, "--out", out, *FAST)
    assert code == 1 and sorted(p.name for p in files_under(out / "images")) == before
    source.with_suffix(".bak").rename(source)
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *FAST)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["counts"]["skipped"] == 3  # it was kept, not redone
    header_only = tmp_path / "empty.csv"
    header_only.write_text("path,label\n")
    code, _, err = invoke("run", header_only, "--styles", styles, "--out", out, *FAST)
    assert code == 2 and "no rows" in err
    assert sorted(p.name for p in files_under(out / "images")) == before


def test_merge_says_done_only_when_every_shard_and_row_is_there(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    run = ["run", manifest, "--styles", styles, "--out", out, *FAST]
    assert invoke(*run, "--shard", "0/2")[0] == 0
    code, _, err = invoke("merge", out)
    assert code == 1 and "shard-1-of-2 not run" in err
    assert json.loads((out / "run.json").read_text())["status"] == "incomplete"
    assert invoke(*run, "--shard", "1/2")[0] == 0
    assert invoke("merge", out)[0] == 0  # both halves: done
    assert invoke(*run, "--shard", "2/3")[0] == 0  # another split of the job beside them
    code, _, err = invoke("merge", out)
    assert code == 1 and "different splits" in err
    (out / "parts" / "shard-2-of-3.json").unlink()
    (out / "parts" / "shard-2-of-3.manifest.csv").unlink()
    (out / "parts" / "shard-2-of-3.failures.csv").unlink()
    part = max((out / "parts").glob("shard-*-of-2.manifest.csv"), key=lambda p: len(p.read_text().splitlines()))
    rows = part.read_text().splitlines()
    assert len(rows) >= 2  # a header and at least one row
    part.write_text("\n".join(rows[:-1]) + "\n")  # a part manifest that lost a row
    code, _, err = invoke("merge", out)
    assert code == 1 and "rows are left" in err
    (out / "parts" / "shard-1-of-2.json").write_text("{ not json")
    code, _, err = invoke("merge", out)
    assert code == 1 and "unreadable" in err and "Traceback" not in err


@pytest.mark.parametrize("planted", ["images", "run.log", ".augment.holder.json", "images/ants"])
def test_symlinks_planted_in_out_are_refused_and_nothing_is_written_outside(tmp_path: Path, planted: str) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target"
    if planted in ("images", "images/ants"):
        target.mkdir()
    else:
        target.write_text("a user's file\n")
    link = out / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *FAST)
    assert code == 3 and "symlinks augment did not make" in err
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["target"]  # nothing written through the link
    if target.is_file():
        assert target.read_text() == "a user's file\n"


def test_a_batch_size_larger_than_memory_is_cut_to_what_fits(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "o", "--batch-size", "100000",
                          "--device", "cpu", *FAST)  # fmt: skip
    assert code == 0 and "--batch-size 100000 would need" in err


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() >= 8, reason="this machine has a cuda:7")
def test_workers_on_a_gpu_that_is_not_there_exit_2(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "o", "--workers", "2",
                          "--devices", "cuda:7", *FAST)  # fmt: skip
    assert code == 2 and "cuda:7" in err


def test_a_whole_job_and_a_shard_exclude_each_other_on_one_out(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    from augment.io.lock import OutLock, lock_name

    manifest, styles = dataset
    out = tmp_path / "out"
    with OutLock(out, lock_name("0/2")):  # a shard is running
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, *FAST)
        assert code == 75 and "in use by another run" in err
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--shard", "1/2", *FAST)
        assert code == 0, err  # shards run side by side
    with OutLock(out):  # the whole job is running
        code, _, err = invoke("run", manifest, "--styles", styles, "--out", out, "--shard", "0/2", *FAST)
        assert code == 75 and "in use by another run" in err


def test_dead_temp_files_are_cleaned_by_shards_and_merge(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, "--shard", "0/1", *FAST)[0] == 0
    name = next(p for p in files_under(out / "images"))
    dead = [
        name.parent / f".{name.name}.x1y2.tmp",
        out / ".manifest.csv.a1b2.tmp",
        out / "parts" / ".shard-0-of-1.json.q.tmp",
    ]
    for path in dead:
        path.write_bytes(b"half")
    assert invoke("run", manifest, "--styles", styles, "--out", out, "--shard", "0/1", *FAST)[0] == 0
    assert invoke("merge", out)[0] == 0
    assert not list(out.rglob("*.tmp"))


def test_report_on_an_out_it_cannot_write_exits_3(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    out = tmp_path / "out"
    assert invoke("run", manifest, "--styles", styles, "--out", out, *FAST)[0] == 0
    (out / "report").write_text("a file where the thumbnails folder goes\n")  # writing there fails
    code, _, err = invoke("report", out)
    assert code == 3 and "cannot write the report" in err and "Traceback" not in err


def test_a_huge_target_per_class_is_refused_before_planning(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "o", "--target-per-class",
                          "100000000", *FAST)  # fmt: skip
    assert code == 2 and "would plan 200,000,000 images" in err  # two classes x 10^8


def test_json_is_one_line_so_airflow_pushes_all_of_it(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, styles = dataset
    code, stdout, _ = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "o", "--json", "-q", *FAST)
    assert code == 0 and len(stdout.strip().splitlines()) == 1
    assert json.loads(stdout.strip().splitlines()[-1])["written"] == 3


def test_failures_csv_defuses_spreadsheet_formulas(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    manifest.write_text(manifest.read_text() + '"=HYPERLINK(""http://x"")",ants\n@SUM(A1),ants\n')
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "out", *FAST)
    assert code == 1, err
    failures = pd.read_csv(tmp_path / "out" / "failures.csv", dtype=str)
    assert all(not str(v).startswith(("=", "@")) for v in failures["path"]) and len(failures) == 2
    assert all(not str(v).startswith(("=", "@")) for v in failures["message"])


def test_yaml_lists_and_numbers_where_text_is_also_accepted(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("format: [jpg, webdataset]\nmax_failures: 10\n")
    config = build_config(tmp_path / "run.yaml")
    assert config.format == "jpg" and config.webdataset and str(config.max_failures) == "10"


def test_out_may_be_a_parent_of_the_manifests_folder(tmp_path: Path) -> None:
    # --out . with the manifest in ./data: augment writes ./manifest.csv, never ./data/manifest.csv.
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    before = manifest.read_text()
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path, *FAST)
    assert code == 0, err
    assert manifest.read_text() == before and (tmp_path / "manifest.csv").is_file()
