"""Joining part files (one process, workers, shards, torchrun ranks) into the final dataset:
OUT/manifest.csv, OUT/failures.csv and OUT/run.json. Also ``augment merge OUT [OUT ...]`` for
shards that wrote into separate folders: their images are copied into the first OUT.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import EXIT_OK, EXIT_SOME_FAILED, AugmentError, OutputError, Stopped
from ..io.atomic import atomic_write, write_text
from .export import write_exports
from .parts import PARTS, journal_failures, part_frame, part_names
from .schema import FAILURE_COLUMNS

log = logging.getLogger(__name__)


class MergeError(AugmentError):
    """Parts missing, unfinished, or made with different settings."""


def merge(
    outs: list[Path],
    *,
    expected_hash: str | None = None,
    interrupted: Stopped | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Join every part under ``outs`` into ``outs[0]``; returns the run.json written there.

    Refuses parts with different pixel-changing settings, and unfinished parts.
    """
    target = outs[0]
    infos, manifests, failures, missing = _read_parts(outs, interrupted)
    _check_same_settings(infos, expected_hash)
    missing += _missing_parts(outs)
    frames = []
    for out, frame in manifests:
        frame, refused = _inside_images(out, frame)
        missing += refused
        if out != target:
            frame, lost = _copy_images(out, target, frame)
            missing += lost
        frames.append(frame)
    for problem in missing:
        log.warning("incomplete: %s", problem)
    manifest = pd.concat(frames, ignore_index=True).drop_duplicates("path").sort_values("path", kind="stable")
    failed = pd.concat(failures, ignore_index=True).drop_duplicates(["row", "path"])
    failed = (
        failed.assign(_row=pd.to_numeric(failed["row"], errors="coerce"))
        .sort_values(["_row", "path"])
        .drop(columns="_row")
    )
    keep_manifest = bool(missing) and interrupted is None and _would_lose_rows(target, manifest)
    if keep_manifest:
        missing.append(f"{target / 'manifest.csv'} kept as it was: this merge would list fewer images")
        log.warning("incomplete: %s", missing[-1])
    run = _run_json(infos, len(manifest), len(failed), interrupted, counts, missing)
    for name in ("manifest.csv", "failures.csv", "run.json"):  # what a killed merge may have left
        for tmp in target.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    try:
        if not keep_manifest:
            with atomic_write(target / "manifest.csv", "w", encoding="utf-8", newline="") as handle:
                manifest.to_csv(handle, index=False)
            with atomic_write(target / "failures.csv", "w", encoding="utf-8", newline="") as handle:
                failed.reindex(columns=list(FAILURE_COLUMNS)).to_csv(handle, index=False)
            write_exports(target, infos[0][1], finished=interrupted is None and not missing)
    except OSError as err:
        raise OutputError(f"cannot write to {target}: {err}") from err
    write_text(target / "run.json", json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    log.info("merged %d parts into %s: %d images, %d failed rows", len(infos), target, len(manifest), len(failed))
    return run


Info = tuple[Path, dict[str, Any]]


def _read_parts(
    outs: list[Path], interrupted: Stopped | None
) -> tuple[list[Info], list[tuple[Path, pd.DataFrame]], list[pd.DataFrame], list[str]]:
    """Every part's .json, rows and failures, and what is missing from them; an unfinished
    part is refused unless the run was stopped (then it merges what its parts recorded)."""
    infos, manifests, failures, missing = [], [], [], []
    for out in outs:
        names = part_names(out)
        if not names:
            raise MergeError(f"{out}: no parts to merge (expected {out / PARTS}/*.json)")
        for name in names:
            try:
                info = json.loads((out / PARTS / f"{name}.json").read_text(encoding="utf-8"))
                if not _is_part_info(info):
                    raise ValueError("not a part's status file")
                rows = part_frame(out, name)
                part_failures = _read_part_csv(out / PARTS / f"{name}.failures.csv")
                if not {"row", "path"} <= set(part_failures.columns):
                    raise ValueError(f"{name}.failures.csv has no row and path columns")
                journaled = journal_failures(out, name)
                if not journaled.empty:
                    part_failures = pd.concat([part_failures, journaled], ignore_index=True)
            except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:  # bad JSON, no CSV
                missing.append(f"{out / PARTS / name}: unreadable ({err}); run that part again")
                continue
            if info.get("status") != "finished" and interrupted is None:
                raise MergeError(
                    f"{out / PARTS / name}.json: part {name} has not finished (status {info.get('status')})"
                )
            infos.append((out, info))
            written = info.get("counts", {}).get("written", 0)
            if info.get("status") == "finished" and len(rows) < written:
                missing.append(f"{out / PARTS / name}: {len(rows)} of its {written} rows are left; run that part again")
            manifests.append((out, rows))
            failures.append(part_failures)
    if not infos:
        raise MergeError("no readable parts to merge: " + "; ".join(missing))
    return infos, manifests, failures, missing


def _is_part_info(info: Any) -> bool:
    """The keys merge reads from a part's .json, with the types it reads them as."""
    return (
        isinstance(info, dict)
        and all(isinstance(info.get(k), str) for k in ("part", "status", "config_hash", "started"))
        and isinstance(info.get("counts"), dict)
        and isinstance(info["counts"].get("tasks"), int)
        and isinstance(info.get("timings"), dict)
        and all(k in info for k in ("config", "engine", "weights", "versions", "device"))
    )


def _missing_parts(outs: list[Path]) -> list[str]:
    """Shards (and workers) come as K-of-N: every K from 0 to N-1 must be there, all with one N."""
    found: dict[str, dict[int, set[int]]] = {}
    for out in outs:
        for name in part_names(out):
            match = re.fullmatch(r"(shard|worker)-(\d+)-of-(\d+)", name)
            if match:
                kind, index, count = match.group(1), int(match.group(2)), int(match.group(3))
                found.setdefault(kind, {}).setdefault(count, set()).add(index)
    missing = []
    for kind, by_count in found.items():
        if len(by_count) > 1:
            counts = ", ".join(f"{len(ks)} of {n}" for n, ks in sorted(by_count.items()))
            missing.append(f"{kind}s of different splits ({counts}): run one split (--shard K/N, one N) to the end")
        for count, indices in sorted(by_count.items()):
            absent = [f"{kind}-{k}-of-{count}" for k in range(count) if k not in indices]
            if absent:
                missing.append(f"{', '.join(absent)} not run (or its part files are gone)")
    return missing


def _check_same_settings(infos: list[Info], expected_hash: str | None) -> None:
    """Pixel settings (config hash) and what was planned (originals, splits, balance, ...)."""
    hashes = {_settings(info) for _, info in infos}
    if expected_hash is not None:
        hashes.add(expected_hash)
    if len(hashes) > 1:
        described = ", ".join(f"{out / PARTS / info['part']}: {_settings(info)}" for out, info in infos)
        raise MergeError(f"parts were made with different settings (config hashes {described})")


def _run_json(
    infos: list[Info],
    written: int,
    failed: int,
    interrupted: Stopped | None,
    counts: dict[str, int] | None,
    missing: list[str],
) -> dict[str, Any]:
    """run.json from the parts' .json files; "finished" only when no part is missing."""
    first = infos[0][1]
    working = [info for _, info in infos if info["counts"]["tasks"]]  # not the failures-only part
    exit_code = interrupted.exit_code if interrupted else EXIT_SOME_FAILED if failed or missing else EXIT_OK
    compute = sum(info["timings"].get("compute_s", 0.0) for _, info in infos)
    slot_steps = sum(info["timings"].get("slot_steps", 0) for _, info in infos)
    image_steps = sum(info["timings"].get("image_steps", 0) for _, info in infos)
    reason = "failed rows" if failed else "all done"
    reason = f"incomplete: {'; '.join(missing)}" if missing else reason
    return {
        "status": interrupted.status if interrupted else "incomplete" if missing else "finished",
        "exit_code": exit_code,
        "exit_reason": str(interrupted) if interrupted else reason,
        "started": min(info["started"] for _, info in infos),
        "finished": max((info["finished"] for _, info in infos if info.get("finished")), default=None),
        "config": first["config"],
        "config_hash": first["config_hash"],
        "inputs_root": first.get("inputs_root"),
        "engine": first["engine"],
        "weights": first["weights"],
        "versions": first["versions"],
        "device": "; ".join(dict.fromkeys(info["device"] for _, info in infos if info["counts"]["tasks"]))
        or first["device"],
        "parts": [{k: info[k] for k in ("part", "device", "counts", "timings")} for _, info in infos],
        "counts": {
            "tasks": sum(info["counts"]["tasks"] for _, info in infos),
            "written": written,
            "failed_rows": failed,
            **(counts or {}),
        },
        "timings": {
            # Several parts: their compute adds up; the wall time is the slowest part's.
            **(working[0]["timings"] if len(working) == 1 else {}),
            "compute_s": round(compute, 3),
            "seconds": max((info["timings"].get("seconds", 0.0) for info in working), default=0.0),
            "seconds_per_image": round(compute / written, 3) if written else None,
            # Images per VGG19 pass over what the pass had room for (shape buckets, batching).
            "batch_fill": round(image_steps / slot_steps, 3) if slot_steps else None,
        },
    }


def _settings(info: dict[str, Any]) -> str:
    return f"{info['config_hash']}/{info.get('plan_hash', '')}"


def _read_part_csv(path: Path) -> pd.DataFrame:
    """A part's CSV; a part killed before it started work has none yet (nothing recorded)."""
    if not path.is_file():
        return pd.DataFrame({"path": pd.Series(dtype=str), "row": pd.Series(dtype=str)})
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _inside_images(out: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A part's rows whose path is one augment writes: relative, under images/, no ``..``.
    Merge reads and links only those (a part file is data, and may have been edited)."""
    if frame.empty:
        return frame, []
    ok = frame["path"].map(_is_image_path)
    refused = [f"{out / PARTS}: row path {rel[:200]!r} is not under images/; refused" for rel in frame["path"][~ok]]
    return frame[ok], refused


def _is_image_path(rel: object) -> bool:
    if not isinstance(rel, str) or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")  # not PurePosixPath: it would let "images//x" and "images/./x" pass as clean
    return len(parts) >= 3 and parts[0] == "images" and not any(p in ("..", ".", "") for p in parts)


def _would_lose_rows(target: Path, manifest: pd.DataFrame) -> bool:
    """Whether replacing OUT's manifest.csv with ``manifest`` would drop images it lists."""
    current = target / "manifest.csv"
    if not current.is_file():
        return False
    try:
        listed = set(pd.read_csv(current, dtype=str, keep_default_na=False, usecols=["path"])["path"])
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        return False  # not a manifest augment can read: nothing in it to keep
    return not listed <= set(manifest["path"])


def _copy_images(source: Path, target: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The images of another OUT's rows into ``target``: a hard link where the file system
    allows, else a copy. A row whose image is gone is dropped and reported."""
    lost, kept = [], []
    for rel in frame["path"]:
        src, dst = source / rel, target / rel
        if not os.path.lexists(dst):
            if src.is_symlink() or not src.is_file():  # augment makes no links: one here is planted
                lost.append(f"{source}: {rel} is listed but not there (or not a file); run that part again")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            try:
                os.link(src, tmp)  # same file system: no copy
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        kept.append(rel)
    return frame[frame["path"].isin(set(kept))], lost
