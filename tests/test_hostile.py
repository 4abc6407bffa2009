"""Unattended runs, round 3: a hostile user's inputs. No file of the user's is overwritten,
nothing is written outside OUT, nothing hangs, and the exit code never says done when
something is missing. Each test fails on the code before its fix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from augment.io.lock import MARKER
from augment.io.sources import SourceRow
from augment.pipeline.plan import output_stems, stable_hash

from .conftest import FAST, make_dataset, make_styles, noise_image
from .test_cli import files_under, invoke


def _run(manifest: Path, styles: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return invoke("run", manifest, "--styles", styles, "--out", out, *FAST, *extra)


# -- the user's files ------------------------------------------------------------------------
def test_an_existing_folder_with_the_users_own_manifest_is_refused(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    mine = tmp_path / "p"
    mine.mkdir()
    (mine / "manifest.csv").write_text("MINE\n")
    code, _, err = _run(manifest, styles, mine)
    assert code == 2 and "was not made by augment" in err and "manifest.csv" in err, err
    assert len(err.strip().splitlines()) == 1
    assert (mine / "manifest.csv").read_text() == "MINE\n"
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.csv"]  # nothing written there


def test_an_existing_folder_without_augments_names_is_taken_and_marked(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")  # not a name augment writes: left alone
    assert _run(manifest, styles, out)[0] == 0
    assert (out / MARKER).is_file() and (out / "notes.txt").read_text() == "mine\n"
    assert _run(manifest, styles, out)[0] == 0  # marked: its own files are augment's to replace
    assert invoke("report", out)[0] == 0


def test_an_output_folder_of_an_earlier_version_is_still_augments(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    out = tmp_path / "out"
    assert _run(manifest, styles, out)[0] == 0
    (out / MARKER).unlink()  # as an earlier version left it: its run.json marks it
    assert _run(manifest, styles, out)[0] == 0 and (out / MARKER).is_file()
    shards = tmp_path / "shards"
    assert _run(manifest, styles, shards, "--shard", "0/2")[0] == 0
    (shards / MARKER).unlink()  # shards before their merge: a part's .json
    assert _run(manifest, styles, shards, "--shard", "1/2")[0] == 0
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "run.json").write_text('{"status": "mine"}\n')
    assert _run(manifest, styles, lookalike)[0] == 2


def test_report_refuses_a_folder_augment_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "someone"
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "keep.txt").write_text("mine\n")
    (folder / "manifest.csv").write_text("path,label\nx.png,a\n")
    code, _, err = invoke("report", folder)
    assert code == 2 and "not made by augment" in err, err
    assert (folder / "report" / "keep.txt").is_file()  # its report/ was not emptied


# -- merge trusts no path ------------------------------------------------------------------
def _two_shard_outs(tmp_path: Path) -> tuple[Path, Path]:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    a, b = tmp_path / "a", tmp_path / "deep" / "b"
    assert _run(manifest, styles, a, "--per-image", "2", "--shard", "0/2")[0] == 0
    assert _run(manifest, styles, b, "--per-image", "2", "--shard", "1/2")[0] == 0
    return a, b


def test_merge_links_nothing_outside_images_from_a_tampered_part(tmp_path: Path) -> None:
    a, b = _two_shard_outs(tmp_path)
    (b.parent / "x").mkdir()
    (b.parent / "x" / "evil.png").write_bytes(b"not yours")  # b/../x/evil.png
    part = b / "parts" / "shard-1-of-2.manifest.csv"
    rows = pd.read_csv(part, dtype=str, keep_default_na=False)
    pd.concat([rows, rows.head(1).assign(path="../x/evil.png")]).to_csv(part, index=False)
    code, _, err = invoke("merge", a, b)
    assert code == 1 and "not under images/" in err, err
    assert not (tmp_path / "x").exists()  # a/../x/evil.png: outside OUT, never written
    assert "../x/evil.png" not in set(pd.read_csv(a / "manifest.csv")["path"])
    assert json.loads((a / "run.json").read_text())["status"] == "incomplete"


def test_merge_of_an_out_that_lost_an_image_says_so_and_keeps_the_manifest(tmp_path: Path) -> None:
    a, b = _two_shard_outs(tmp_path)
    assert invoke("merge", a, b)[0] == 0
    complete = pd.read_csv(a / "manifest.csv")
    # A later merge where B lost an image that A does not have yet.
    lost_rows = pd.read_csv(b / "parts" / "shard-1-of-2.manifest.csv")
    for rel in lost_rows["path"]:
        (a / rel).unlink()
    (b / lost_rows["path"][0]).unlink()
    code, _, err = invoke("merge", a, b)
    assert code == 1 and "listed but not there" in err and "Traceback" not in err, err
    assert len(pd.read_csv(a / "manifest.csv")) == len(complete)  # kept, not replaced by a shorter one


def test_a_truncated_part_manifest_never_replaces_a_complete_one(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    out = tmp_path / "out"
    assert _run(manifest, styles, out, "--per-image", "2", "--shard", "0/1")[0] == 0
    assert invoke("merge", out)[0] == 0
    complete = pd.read_csv(out / "manifest.csv")
    part = out / "parts" / "shard-0-of-1.manifest.csv"
    part.write_text("\n".join(part.read_text().splitlines()[:2]) + "\n")  # the header and one row
    (out / "parts" / "shard-0-of-1.journal.jsonl").unlink(missing_ok=True)
    code, _, err = invoke("merge", out)
    assert code == 1 and "run that part again" in err, err
    pd.testing.assert_frame_equal(pd.read_csv(out / "manifest.csv"), complete)


# -- names unique by construction ----------------------------------------------------------
def test_a_hashed_name_never_equals_another_sources_own_name(tmp_path: Path) -> None:
    rows = [SourceRow(1, "a/x.jpg", Path("/a/x.jpg"), "l"), SourceRow(2, "b/x.jpg", Path("/b/x.jpg"), "l")]
    suffix = f"{stable_hash('a/x.jpg'):016x}"[-6:]  # the name a/x.jpg's images got before
    rows.append(SourceRow(3, f"c/x-{suffix}.jpg", Path(f"/c/x-{suffix}.jpg"), "l"))
    stems = output_stems(rows)
    assert len({s.casefold() for s in stems.values()}) == 3
    assert stems[rows[2]] == f"x-{suffix}" and stems[rows[0]] != f"x-{suffix}" and stems[rows[0]].startswith("x-")
    other = f"{stable_hash('b/x.jpg'):016x}"[-6:]
    assert stems[rows[1]] == f"x-{other}"  # unchanged where nothing clashes

    # Through a run: 3 sources x 2 styles with --style-assignment all are 6 images, exit 0.
    data = tmp_path / "data"
    clash = f"{stable_hash('a/x.png'):016x}"[-6:]
    for rel in ("a/x.png", "b/x.png", f"c/x-{clash}.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        noise_image(24, 20, len(rel)).save(data / rel)
    lines = ["path,label"] + [f"{p.relative_to(data).as_posix()},l" for p in sorted(data.rglob("*.png"))]
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, err = _run(data / "manifest.csv", make_styles(tmp_path), out, "--style-assignment", "all")
    assert code == 0, err
    assert len(files_under(out / "images")) == 6 and len(pd.read_csv(out / "manifest.csv")) == 6
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_the_exit_code_follows_run_json_when_the_merge_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import augment.outputs.merge

    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    # What merge finds missing (a part lost, rows cut short) is injected: the path from there
    # to the exit code is what is tested.
    monkeypatch.setattr(augment.outputs.merge, "_missing_parts", lambda outs: ["worker-1-of-2 not run (simulated)"])
    code, _, err = _run(manifest, styles, tmp_path / "out")
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["status"] == "incomplete" and code == run_json["exit_code"] == 1, err
    assert "not done: incomplete: worker-1-of-2 not run (simulated)" in err
    summary = augment.run(manifest=str(manifest), styles=str(styles), out=str(tmp_path / "api"), weights="random",
                          size=32, iterations=2)  # fmt: skip
    assert summary.exit_code == 1 and "worker-1-of-2" in (summary.incomplete or "")


# -- bounded inputs ------------------------------------------------------------------------
def test_yaml_aliases_are_refused_in_a_config_file(tmp_path: Path) -> None:
    # ~400 bytes that expand to 9 x 3**12 names: parse_names spun on it for ever.
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    config = tmp_path / "run.yaml"
    levels = ["  - &l0 [a, a, a, a, a, a, a, a, a]"] + [
        f"  - &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}]" for i in range(1, 13)
    ]
    config.write_text("style_layers:\n" + "\n".join(levels) + "\n")
    started = time.monotonic()
    code, _, err = invoke("run", manifest, "--styles", styles, "--out", tmp_path / "out", "--config", config, *FAST)
    assert time.monotonic() - started < 30
    assert code == 2 and "aliases" in err and len(err.strip().splitlines()) == 1, err


def test_yaml_aliases_and_repeated_styles_are_refused_in_styles_yaml(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    (styles / "styles.yaml").write_text("waves:\n  style_layer_weights: &w [1, 1, 1, 1, 1]\ngrey_stone:\n"
                                        "  style_layer_weights: *w\n")  # fmt: skip
    code, _, err = _run(manifest, styles, tmp_path / "out")
    assert code == 2 and "aliases" in err, err
    (styles / "styles.yaml").write_text("waves:\n  weight: 0\nwaves.png:\n  weight: 3\n")
    code, _, err = _run(manifest, styles, tmp_path / "out")
    assert code == 2 and "both name style 'waves'" in err, err
    (styles / "styles.yaml").write_text("waves:\n  weight: 0\nwaves:\n  weight: 3\n")
    code, _, err = _run(manifest, styles, tmp_path / "out")
    assert code == 2 and "given twice" in err, err


def test_a_config_that_is_not_a_regular_file_is_named_as_such(tmp_path: Path) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    code, _, err = invoke("run", manifest, "--styles", styles, "--config", "/dev/zero", *FAST)
    assert code == 2 and "not a regular file" in err, err


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a" * 300 + ".png", "over the 255"),
        ("d/" * 2100 + "x.png", "over the 4096"),
        ("p" * 1_000_000, "over the 4096"),
    ],
    ids=["long-name", "long-path", "megabyte-path"],
)
def test_an_overlong_path_is_a_failed_row(tmp_path: Path, path: str, reason: str) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    manifest.write_text(manifest.read_text() + f"{path},ants\n")
    started = time.monotonic()
    code, _, err = _run(manifest, styles, tmp_path / "out")
    assert time.monotonic() - started < 60
    assert code == 1 and "Traceback" not in err, err
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["reason"]) == ["bad_path"] and reason in failures["message"][0]
    assert len(failures["path"][0]) < 400  # a megabyte path is shown cut short
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 3


# -- nothing orphaned ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["whole", "shard"])
def test_a_source_unreadable_for_one_run_keeps_its_images_recorded(tmp_path: Path, how: str) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    split = ["--shard", "0/1"] if how == "shard" else []

    def run() -> int:
        code = _run(manifest, styles, out, *split)[0]
        if how == "shard":
            assert invoke("merge", out)[0] == code
        return code

    assert run() == 0
    source = manifest.parent / "ants" / "a1.png"
    good = source.read_bytes()
    made = [p for p in pd.read_csv(out / "manifest.csv")["path"] if "a1__" in p]
    source.write_bytes(b"not an image any more")  # a half-synced file, say: it fails its header read
    assert run() == 1
    assert list(pd.read_csv(out / "failures.csv")["reason"]) == ["undecodable"]
    listed = set(pd.read_csv(out / "manifest.csv")["path"])
    assert set(made) <= listed and all((out / p).is_file() for p in made)  # recorded, not orphaned
    source.write_bytes(good)
    assert run() == 0
    assert json.loads((out / "run.json").read_text())["counts"]["written"] == 3
    if how == "shard":
        return  # shards remove no stale images (a whole-job run does)
    # ... and recorded, it is removed like any other once its row leaves the manifest.
    manifest.write_text("\n".join(line for line in manifest.read_text().splitlines() if "a1.png" not in line) + "\n")
    assert run() == 0
    assert not any((out / p).exists() for p in made)


def test_an_imagefolder_with_split_folders_and_a_stray_one_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for rel in ("train/ants/a.png", "train/bees/b.png", "val/ants/c.png", "misc/d.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        noise_image(24, 20, len(rel)).save(root / rel)
    code, _, err = invoke("run", root, "--styles", make_styles(tmp_path), "--out", tmp_path / "out", *FAST)
    assert code == 2 and "train, val are named like splits but misc not" in err, err
    assert not (tmp_path / "out" / "images").exists()


# -- part files and outputs that are not augment's -----------------------------------------
@pytest.mark.parametrize(
    "damage",
    ["random-bytes-manifest", "journal-line-not-a-row", "foreign-list-json", "foreign-status-json"],
)
def test_damaged_or_foreign_part_files_are_named_not_a_crash(tmp_path: Path, damage: str) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    assert _run(manifest, styles, out, "--shard", "0/1")[0] == 0
    parts = out / "parts"
    if damage == "random-bytes-manifest":
        (parts / "shard-0-of-1.manifest.csv").write_bytes(bytes(range(256)) * 8)
    elif damage == "journal-line-not-a-row":
        (parts / "shard-0-of-1.journal.jsonl").write_text('[1]\n"x"\n{"no": "path"}\n')
    elif damage == "foreign-list-json":
        (parts / "notes.json").write_text("[1, 2]\n")
    else:
        (parts / "notes.json").write_text('{"status": "finished"}\n')
    code, _, err = invoke("merge", out)
    assert code in (0, 1, 2) and "Traceback" not in err, err
    if damage == "random-bytes-manifest":  # the only part: nothing to merge (2), named
        assert code == 2 and "shard-0-of-1: unreadable" in err
    # A later run of the shard redoes what it cannot read, and the merge is then complete.
    code, _, err = _run(manifest, styles, out, "--shard", "0/1")
    assert code == 0, err
    assert invoke("merge", out)[0] == 0 and len(pd.read_csv(out / "manifest.csv")) == 3


@pytest.mark.parametrize("damage", ["binary-manifest", "no-path-column", "corrupt-run-json", "run-json-a-list"])
def test_report_names_a_damaged_output_file(tmp_path: Path, damage: str) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    assert _run(manifest, styles, out)[0] == 0
    if damage == "binary-manifest":
        (out / "manifest.csv").write_bytes(bytes(range(256)) * 8)
    elif damage == "no-path-column":
        (out / "manifest.csv").write_text("a,b\n1,2\n")
    elif damage == "corrupt-run-json":
        (out / "run.json").write_text("{ not json")
    else:
        (out / "run.json").write_text("[1]\n")
    code, _, err = invoke("report", out)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ("run.json" if "run-json" in damage else "manifest.csv") in err


# -- weights: validate refuses what run refuses -------------------------------------------
class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch pwned",))


def _bad_weights(tmp_path: Path, kind: str) -> Path:
    import pickle

    import torch

    from augment.engines.vgg import random_state_dict

    path = tmp_path / f"{kind}.pth"
    state = random_state_dict(0)
    if kind == "nan":
        state["features.5.weight"] = torch.full_like(state["features.5.weight"], float("nan"))
    elif kind == "wrong-shape":
        state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"features.0.weight": _Payload()}))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save(state, path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["nan", "wrong-shape", "truncated", "pickle", "empty"])
def test_bad_weights_are_refused_by_validate_and_by_run_before_out_is_made(tmp_path: Path, kind: str) -> None:
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    weights = _bad_weights(tmp_path, kind)
    args = ["--styles", styles, "--size", "32", "--iterations", "1", "--weights", weights, "--out", tmp_path / "out"]
    code, _, err = invoke("validate", manifest, *args)
    assert code == 2 and str(weights.name) in err and len(err.strip().splitlines()) == 1, err
    assert "weights_only=False" not in err and not (tmp_path / "pwned").exists()
    code, _, err = invoke("run", manifest, *args)
    assert code == 2 and str(weights.name) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing left behind: no images/, run.log, part
    if kind == "empty":
        assert "the file is empty" in err


# -- stdout and exit codes -----------------------------------------------------------------
@pytest.mark.slow
def test_json_is_printed_for_an_option_error_and_a_closed_stdout_is_no_crash(tmp_path: Path) -> None:
    import subprocess
    import sys

    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    base = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--json", *FAST]
    for bad in (["--size", "abc"], ["--no-such-flag"]):
        result = subprocess.run([*base, *bad], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["exit_code"] == 2, result.stdout
    for redirect in (">&-", ">/dev/full"):
        out = tmp_path / f"out{len(redirect)}"
        command = " ".join(f"'{a}'" for a in [*base, "--out", str(out)]) + f" {redirect}"
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr  # the run's own code: every image was made
        assert "cannot write the JSON summary" in result.stderr and "Traceback" not in result.stderr
        assert json.loads((out / "run.json").read_text())["exit_code"] == 0


@pytest.mark.slow
def test_a_reader_gone_from_stderr_ends_the_messages_not_the_run(tmp_path: Path) -> None:
    # Issue 21: `augment run ... 2>&1 | head -1` made every image and exited 1 (rich exits 1
    # on a broken pipe), while run.json said 0.
    import subprocess
    import sys

    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    base = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), *FAST]
    out = tmp_path / "head"
    proc = subprocess.Popen([*base, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith(b"augment: INFO: augment writing to")  # then `head` goes
    proc.stderr.close()  # before the network is built: every later line meets a broken pipe
    assert proc.wait(timeout=300) == 0
    assert json.loads((out / "run.json").read_text())["exit_code"] == 0
    for redirect in ("2>&-", "2>/dev/full"):  # closed from the start; a full disk
        out = tmp_path / f"out{len(redirect)}"
        command = " ".join(f"'{a}'" for a in [*base, "--out", str(out)]) + f" {redirect}"
        assert subprocess.run(["sh", "-c", command], timeout=300).returncode == 0, redirect
        assert json.loads((out / "run.json").read_text())["exit_code"] == 0


@pytest.mark.slow
def test_max_seconds_with_workers_is_exit_75_with_the_finished_images_listed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    # Work left in the queue, more than its pipe holds: the parent must still exit (it once
    # waited for ever at exit for its queue to be read).
    for i in range(400):
        os.link(manifest.parent / "ants" / "a1.png", manifest.parent / "ants" / f"c{i}.png")
    manifest.write_text(manifest.read_text() + "".join(f"ants/c{i}.png,ants\n" for i in range(400)))
    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
               "--weights", "random", "--size", "32", "--iterations", "100000000", "--per-image", "2",
               "--include-originals", "--batch-size", "1", "--workers", "2", "--max-seconds", "6", "-q"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 75, done.stderr  # the cron pattern: the next run carries on
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "budget" and run_json["exit_code"] == 75
    rows = pd.read_csv(out / "manifest.csv")
    assert set(rows["path"]) == {p.relative_to(out).as_posix() for p in files_under(out / "images")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_worker_killed_by_the_kernel_is_named_and_the_others_images_are_listed(tmp_path: Path) -> None:
    import os
    import signal

    from .test_unattended import _start_workers_run, _workers_of

    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    proc = _start_workers_run(manifest, styles, out)  # returns once the first image is there
    victim = min(_workers_of(proc.pid))
    os.kill(victim, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 3 and "killed by SIGKILL" in stderr, stderr
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "failed" and "killed by SIGKILL" in run_json["exit_reason"]
    rows = pd.read_csv(out / "manifest.csv")
    assert len(rows) >= 1 and set(rows["path"]) == {p.relative_to(out).as_posix() for p in files_under(out / "images")}
    assert "killed by SIGKILL" in (out / "run.log").read_text()


@pytest.mark.parametrize("which", ["out", "manifest", "styles"])
def test_a_path_argument_that_is_not_utf8_is_a_usage_error(tmp_path: Path, which: str) -> None:
    import os
    import shutil

    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    odd = os.fsdecode(b"caf\xe9")  # Latin-1 bytes, as argv hands them to Python
    if which == "out":
        out = tmp_path / odd
    elif which == "manifest":
        manifest = manifest.rename(manifest.with_name(odd + ".csv"))
    else:
        styles = Path(shutil.copytree(styles, tmp_path / odd))
    code, _, err = _run(manifest, styles, out)
    assert code == 2 and "not valid UTF-8" in err and "Traceback" not in err, err
    assert not (tmp_path / odd).is_dir() or which == "styles"  # no OUT made under that name


def test_more_cpu_workers_than_cores_are_cut_to_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import augment.pipeline.job

    started: list[int] = []
    monkeypatch.setattr(augment.pipeline.job.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(augment.pipeline.job, "run_workers", lambda *args, **kwargs: started.append(args[3]))
    manifest, styles = make_dataset(tmp_path), make_styles(tmp_path)
    code, _, err = _run(manifest, styles, tmp_path / "out", "--workers", "12")
    assert "--workers 12 on 1 CPU cores: running 1" in err
    assert started == []  # one worker is this process: no spawned workers at all
    assert code == 0 and len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 3


# -- found in review -----------------------------------------------------------------------
def test_a_long_source_path_failing_for_a_moment_keeps_its_images(tmp_path: Path) -> None:
    long_rel = "ants/" + "d" * 200 + "/" + "x" * 150 + ".png"  # over 300 characters, each name under 255
    manifest = make_dataset(tmp_path, rows=[("ants/a1.png", "ants"), (long_rel, "ants")])
    styles, out = make_styles(tmp_path), tmp_path / "out"
    assert _run(manifest, styles, out)[0] == 0
    before = sorted(p.name for p in files_under(out / "images"))
    source = manifest.parent / long_rel
    source.rename(source.with_suffix(".bak"))  # gone for a moment
    code, _, _ = _run(manifest, styles, out)
    assert code == 1 and sorted(p.name for p in files_under(out / "images")) == before
    assert pd.read_csv(out / "failures.csv")["path"][0] == long_rel  # the whole path, as in the manifest


def test_a_damaged_part_failures_csv_is_named_by_merge(tmp_path: Path) -> None:
    a, b = _two_shard_outs(tmp_path)
    (b / "parts" / "shard-1-of-2.failures.csv").write_bytes(bytes(range(256)) * 8)
    code, _, err = invoke("merge", a, b)
    assert code == 1 and "shard-1-of-2: unreadable" in err and "Traceback" not in err, err


def test_yaml_merge_keys_without_aliases_still_work(tmp_path: Path) -> None:
    from augment.errors import ConfigError
    from augment.io.yamlfile import read_mapping

    path = tmp_path / "run.yaml"
    path.write_text("size: 64\n<<: {iterations: 5}\n")
    assert read_mapping(path, ConfigError, "options") == {"size": 64, "iterations": 5}


@pytest.mark.slow
def test_sighup_is_left_alone_under_nohup(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    command = [sys.executable, "-m", "augment", "run", str(manifest), "--styles", str(styles), "--out", str(out),
               "--weights", "random", "--size", "32", "--iterations", "100000000", "--include-originals",
               "--batch-size", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((out / "images").rglob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)  # the terminal closed: nohup said to carry on
    time.sleep(2)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr


def test_an_unchanged_rerun_says_it_made_nothing(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    assert _run(manifest, styles, out)[0] == 0
    assert "main done: 3 images made, 0 kept from earlier runs" in (out / "run.log").read_text()
    code, _, err = _run(manifest, styles, out)
    assert code == 0 and "main done: 0 images made, 3 kept from earlier runs, 0 rows failed" in err, err
