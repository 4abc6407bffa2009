"""What keeps a million-row job's bookkeeping proportional to what is new (issue 22): content
digests cached by file identity, a record that grows by journal lines, shards that own
sources. The figures themselves come from benchmarks/scale.py, not from timed tests."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from augment.cli import app
from augment.config import RunConfig
from augment.io.digests import DigestCache, file_sha256
from augment.outputs.parts import Recorder, journal_failures
from augment.outputs.schema import Failure
from augment.pipeline.job import Shard
from augment.pipeline.plan import plan_tasks
from augment.pipeline.prepare import prepare

from .conftest import FAST, make_dataset, make_styles, noise_image

# Files opened by this process while a list is set here (an audit hook cannot be removed, so
# it stays installed and idle).
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, os.PathLike)):
        _OPENED.append(os.fspath(args[0]))  # type: ignore[arg-type]


sys.addaudithook(_audit)


def _run(manifest: Path, styles: Path, out: Path, *extra: str, code: int = 0) -> tuple[dict[str, object], list[str]]:
    """One in-process run: its JSON summary and the files under the dataset it opened."""
    global _OPENED
    _OPENED = []
    try:
        result = CliRunner().invoke(app, ["run", str(manifest), "--styles", str(styles), "--out", str(out),
                                          "--per-image", "1", "--json", *FAST, *extra])  # fmt: skip
    finally:
        opened, _OPENED = _OPENED, None
    assert result.exit_code == code, result.output
    data = manifest.parent
    sources = [p for p in opened if Path(p).is_relative_to(data) and Path(p).suffix in (".png", ".jpg")]
    return json.loads(result.stdout.strip().splitlines()[-1]), sources


def test_a_re_run_reads_only_new_or_touched_sources(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    data = manifest.parent
    first, opened = _run(manifest, styles, out)
    assert first["written"] == 3 and sorted(set(opened)) == sorted(str(p) for p in data.glob("*/*.*"))
    images = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}

    again, opened = _run(manifest, styles, out)
    assert again["written"] == 0 and again["skipped"] == 3
    assert opened == []  # untouched: not one byte of any source read

    a1 = data / "ants" / "a1.png"
    a1.write_bytes(a1.read_bytes())  # touched, content unchanged: new mtime and ctime
    touched, opened = _run(manifest, styles, out)
    assert opened == [str(a1)]  # read once, for its digest
    assert touched["written"] == 0  # same content, same key: not redone
    assert {p: p.stat().st_mtime_ns for p in images} == images
    assert _run(manifest, styles, out)[1] == []  # and its new identity is cached

    noise_image(28, 20, seed=99).save(data / "ants" / "a2.jpg")  # changed content
    changed, opened = _run(manifest, styles, out)
    assert changed["written"] == 1 and changed["skipped"] == 2
    assert set(opened) == {str(data / "ants" / "a2.jpg")}  # its digest, then its decode

    checked, opened = _run(manifest, styles, out, "--check-content")
    assert checked["written"] == 0 and len(set(opened)) == 3  # every source read, none redone


def test_a_damaged_digest_cache_costs_a_read_never_a_wrong_digest(tmp_path: Path) -> None:
    photo = tmp_path / "x.png"
    noise_image(8, 8, seed=1).save(photo)
    cache_file = tmp_path / "main.digests.tsv"
    cache = DigestCache()
    assert cache.digest(photo) == file_sha256(photo) and cache.read == 1
    cache.save(cache_file)
    line = cache_file.read_text()
    size, mtime, inode, ctime, _, name = line.rstrip("\n").split("\t")
    wrong = "0" * 64
    cache_file.write_text(f"garbage\n{size}\tNaN\t{inode}\t{ctime}\t{wrong}\t{name}\n{line[:20]}")
    damaged = DigestCache([cache_file])
    assert damaged.digest(photo) == file_sha256(photo) and damaged.read == 1
    cache_file.write_text(f"{size}\t{mtime}\t{inode}\t{ctime}\t{wrong}\t{name}\n")  # a cached digest is trusted
    assert DigestCache([cache_file]).digest(photo) == wrong
    assert DigestCache([cache_file], check_content=True).digest(photo) == file_sha256(photo)  # unless checked
    assert DigestCache().digest(tmp_path / "gone.png").startswith("unreadable:")


def test_the_record_grows_by_journal_lines_and_keeps_failures_of_a_killed_part(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    config = RunConfig(manifest=str(manifest), styles=str(styles), out=str(out), weights="random")
    kept = [{"path": f"images/ants/kept{i}.png", "label": "ants"} for i in range(5)]
    recorder = Recorder(config, out, "main", identity={}, rows=kept, failures=prepare(config).failures)
    recorder.begin()  # the rows kept from earlier runs: the part's manifest, once
    csv = out / "parts" / "main.manifest.csv"
    base = csv.read_bytes()
    assert len(pd.read_csv(csv)) == 5
    with recorder.saving():
        for i in range(40):
            recorder.submit(torch.rand(3, 8, 8), {"path": f"images/ants/new{i}.png", "label": "ants"})
            recorder.collect(wait=False)
    recorder.fail(Failure(7, "ants/bad.png", "ants", "undecodable", "=cmd|' /C calc'!A0"))
    # killed here (kill -9): the manifest was never rewritten, the journal holds the rest
    assert csv.read_bytes() == base
    journal = (out / "parts" / "main.journal.jsonl").read_text().splitlines()
    assert len(journal) == 41
    failures = journal_failures(out, "main")
    assert list(failures["path"]) == ["ants/bad.png"] and list(failures["row"]) == ["7"]
    assert failures["message"][0].startswith("'=")  # defused for a spreadsheet, as the CSV's are


def test_a_shard_owns_every_variant_of_its_sources(tmp_path: Path) -> None:
    from augment.io.sources import SourceRow
    from augment.io.styles import Style

    rows = [SourceRow(row=i, source=f"{i}.png", path=Path(f"/x/{i}.png"), label="c") for i in range(40)]
    styles = [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}", 1.0) for i in range(4)]
    tasks = plan_tasks(rows, styles, per_image=3, seed=0)
    shards = [Shard(k, 4) for k in range(4)]
    owner = {}
    for task in tasks:
        (shard,) = [s for s in shards if s.owns(task)]  # exactly one shard per task
        assert owner.setdefault(task.source.source, shard.index) == shard.index
    assert len(set(owner.values())) == 4


def test_a_worker_is_handed_its_tasks_and_never_plans_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import queue

    from augment.outputs.parts import part_rows
    from augment.pipeline import workers as parallel
    from augment.pipeline.decode import order_by_shape

    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    config = RunConfig(manifest=str(manifest), styles=str(styles), out=str(out), weights="random", size=32,
                       iterations=2, per_image=2)  # fmt: skip
    prepared = prepare(config)
    (out / "images").mkdir(parents=True)

    def no_second_plan(*args: object) -> None:
        raise AssertionError("a worker prepared the job again")

    monkeypatch.setattr("augment.pipeline.prepare.prepare", no_second_plan)
    monkeypatch.setattr("augment.pipeline.job.prepare", no_second_plan)
    monkeypatch.setattr(parallel, "_die_with_parent", lambda: None)  # this is the test process
    share = parallel.WorkerShare(config=config, inputs=parallel._no_rows(prepared.inputs), needs_weights=True,
                                 total=len(prepared.tasks), deadline=None, environ=dict(os.environ))  # fmt: skip
    work: queue.Queue[object] = queue.Queue()
    keys = {t.output: f"key{i}" for i, t in enumerate(prepared.tasks)}
    for group in order_by_shape(prepared.tasks, config)[0]:
        work.put((group, {t.output: keys[t.output] for t in group}))  # each group with its keys
    work.put(None)
    done, failed = multiprocessing.Value("d", 0.0), multiprocessing.Value("i", 0)
    threads = torch.get_num_threads()
    try:
        parallel._worker_main(share, out, "worker-0-of-1", "cpu", threads, work, done, failed)
    finally:
        torch.set_num_threads(threads)
        gc.unfreeze()  # a worker freezes what its server imported; this is the test process
    rows = part_rows(out, "worker-0-of-1")
    made = sorted(r["path"] for r in rows)
    assert made == sorted(t.output for t in prepared.tasks) and len(made) == 6
    assert all(r["key"] == keys[r["path"]] for r in rows)  # the keys came with the groups
    assert done.value == 6 and all((out / path).is_file() for path in made)


def test_a_shard_plans_exactly_the_whole_plans_tasks_of_its_sources() -> None:
    # A shard reaches its own tasks without building the job's (1 M rows x 3 are 3 M tasks,
    # ~1 KB each), and they are the same tasks: names, balance targets, round robin.
    from augment.config import Assignment
    from augment.io.sources import SourceRow
    from augment.io.styles import Style
    from augment.pipeline.plan import PlanOptions, plan

    rows = [SourceRow(row=i, source=f"d{i % 3}/x{i % 7}.png", path=Path(f"/x/{i}.png"), label="ab"[i % 5 == 0],
                      split=("train", "val")[i % 9 == 0]) for i in range(90)]  # fmt: skip
    rows = list({r.source + r.label + r.split: r for r in rows}.values())
    styles = [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}", 1.0 + i) for i in range(3)]
    for options in (PlanOptions(per_image=2, seed=1, include_originals=True, balance=True),
                    PlanOptions(per_image=3, seed=2, assignment=Assignment.CYCLE)):  # fmt: skip
        whole = plan(rows, styles, options)
        parts = [plan(rows, styles, options, Shard(k, 4)) for k in range(4)]
        assert sorted(t.output for p in parts for t in p.tasks) == sorted(t.output for t in whole.tasks)
        for k, part in enumerate(parts):
            assert part.tasks == [t for t in whole.tasks if Shard(k, 4).owns(t)]
            assert part.targets == whole.targets and part.short == whole.short and part.left_out == whole.left_out


def test_the_gram_cache_keeps_to_its_budget_dropping_the_least_recently_used() -> None:
    from augment.engines.transfer import GramCache, StyleGrams

    def grams(mb: int) -> StyleGrams:
        return StyleGrams({"conv1_1": torch.zeros(mb * 1024 * 256)}, (10, 10))  # mb MB of fp32

    cache = GramCache(budget=10 << 20)
    for size in range(6):  # --no-upscale: a new long side per source
        cache["waves", size] = grams(3)
        assert cache.bytes <= cache.budget
    assert [k in cache for k in [("waves", s) for s in range(6)]] == [False, False, False, True, True, True]
    _ = cache["waves", 3]  # used again: now the most recent
    cache["stone", 0] = grams(3)
    assert ("waves", 3) in cache and ("waves", 4) not in cache and cache.bytes == 9 << 20
    cache["bad", 0] = ValueError("not an image")  # a style that failed to load costs nothing
    assert len(cache) == 4 and cache.bytes == 9 << 20
    cache["huge", 0] = grams(40)  # over the budget alone: kept (it is about to be used), the rest go
    assert len(cache) == 1 and ("huge", 0) in cache


def test_validates_counts_without_tasks_are_the_plans_counts() -> None:
    # validate plans counts only (a million rows x 3 would be 3 M task objects): the same
    # numbers as the tasks run would make.
    from collections import Counter

    from augment.io.sources import SourceRow
    from augment.io.styles import Style
    from augment.pipeline.plan import PlanOptions, plan

    rows = [SourceRow(row=i, source=f"{i}.png", path=Path(f"/x/{i}.png"), label="ab"[i % 3 == 0],
                      split=("train", "test")[i % 4 == 0]) for i in range(50)]  # fmt: skip
    styles = [Style(f"s{i}", Path(f"s{i}.png"), f"s{i}", 1.0) for i in range(3)]
    for options in (PlanOptions(per_image=2, seed=0), PlanOptions(per_image=1, seed=0, balance=True,
                                                                  include_originals=True)):  # fmt: skip
        full, counts = plan(rows, styles, options), plan(rows, styles, options, tasks=False)
        assert counts.tasks == [] and counts.per_source == dict(Counter(t.source for t in full.tasks))
        assert (counts.job_tasks, counts.left_out, counts.targets, counts.short, counts.variants) == (
            len(full.tasks),
            full.left_out,
            full.targets,
            full.short,
            sum(not t.original for t in full.tasks),
        )


def _stamps(out: Path) -> dict[str, int]:
    """Modification times of what a run writes besides run.json."""
    files = [out / "manifest.csv", out / "failures.csv", *sorted((out / "parts").iterdir())]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def test_an_up_to_date_out_is_left_as_it_was_and_any_difference_takes_the_general_path(tmp_path: Path) -> None:
    manifest, styles, out = make_dataset(tmp_path), make_styles(tmp_path), tmp_path / "out"
    good = manifest.read_text()
    manifest.write_text(good + "gone/../../x.png,ants\n")  # a row that fails up front
    first, _ = _run(manifest, styles, out, code=1)
    before, listed = _stamps(out), (out / "manifest.csv").read_bytes()
    again, _ = _run(manifest, styles, out, code=1)
    assert again["skipped"] == again["images"] == first["images"] and again["written"] == 0
    assert _stamps(out) == before and (out / "manifest.csv").read_bytes() == listed  # nothing rewritten
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["exit_code"] == 1 and run["counts"]["skipped"] == first["images"]
    # Another row fails now instead (same count): failures.csv must say which.
    manifest.write_text(good + "../y.png,ants\n")
    _run(manifest, styles, out, code=1)
    assert "../y.png" in (out / "failures.csv").read_text() and "gone/" not in (out / "failures.csv").read_text()
    # An image gone: made again.
    victim = sorted((out / "images").rglob("*.png"))[0]
    victim.unlink()
    redo, _ = _run(manifest, styles, out, code=1)
    assert victim.is_file() and redo["written"] == 1
    # Another option (an export asked for): the general path builds it.
    _run(manifest, styles, out, "--webdataset", code=1)
    assert list((out / "webdataset").glob("*.tar"))
