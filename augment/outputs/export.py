"""What a training job reads besides the image tree, all derived from OUT/manifest.csv:

- ``OUT/classes.json``: label -> index, labels sorted as torchvision's ImageFolder sorts its
  class folders, so indices agree with ``ImageFolder(OUT/images)`` and with the ``ClassLabel``
  that Hugging Face's ``load_dataset("imagefolder", data_dir=OUT/images)`` infers from the
  same folders (no metadata file is written under OUT/images: see ``_remove_metadata``);
- ``OUT/webdataset/<split>-NNNNNN.tar`` (``--webdataset``): per sample ``<key>.<ext>`` (the
  image), ``<key>.cls`` (class index) and ``<key>.json`` (its row, typed), shuffled by the
  run's seed, ``--shard-size`` samples a shard; ``OUT/webdataset/shards.json`` lists them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from ..errors import OutputError
from ..io.atomic import atomic_write, write_text
from ..pipeline.plan import stable_hash

CLASSES = "classes.json"
METADATA = "metadata.csv"
WEBDATASET = "webdataset"
SHARDS = "shards.json"
SAMPLES_PER_SHARD = 1000
STAMP = "manifest.sha256"  # marks OUT/webdataset as augment's, and what it was made from
# Manifest columns a training loader has no use for (all of them stay in manifest.csv).
INTERNAL = ("key", "params", "weights", "seconds", "precision")
# Always text in a sample's .json, whatever they look like (a label "1", a file "007.png").
TEXT_COLUMNS = ("path", "label", "split", "source", "style", "engine")


def read_manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def class_index(labels: list[str]) -> dict[str, int]:
    """Label -> index, in the order torchvision gives class folders (sorted names)."""
    return {label: i for i, label in enumerate(sorted(set(labels)))}


def write_exports(out: Path, part: dict[str, Any] | None = None, *, finished: bool = True) -> None:
    """classes.json, and the shards when the run asked for them. ``part`` is a part's .json
    (its ``config`` and ``inputs_root``); ``finished``: the job ran to the end. The shards are
    built only then, once: the merge that ends each --max-seconds window of a long job leaves
    the last complete set as it is (rewriting every shard per window would cost the whole
    dataset's bytes each time), and with ``--no-images`` the image files may go only then
    (an interrupted run keeps them, to resume)."""
    config = (part or {}).get("config", {})
    manifest = read_manifest(out)
    classes = class_index(list(manifest["label"]))
    write_text(out / CLASSES, json.dumps(classes, indent=2, ensure_ascii=False) + "\n")
    _remove_metadata(out)
    if config.get("webdataset"):
        if not finished:
            return
        _write_webdataset(
            out,
            manifest,
            classes,
            seed=int(config.get("seed", 0)),
            shard_size=int(config.get("shard_size", SAMPLES_PER_SHARD)),
            inputs_root=(part or {}).get("inputs_root"),
        )
        if config.get("images") is False:
            _remove_images(out, manifest)
    elif (out / WEBDATASET / STAMP).is_file():  # shards of an earlier run that asked for them
        shutil.rmtree(out / WEBDATASET)


def exports_current(out: Path, config: dict[str, Any]) -> bool:
    """Whether OUT's exports are what ``write_exports`` would leave for this config: classes.json
    there, no metadata file of an earlier version, webdataset shards exactly when asked for."""
    images = out / "images"
    if not (out / CLASSES).is_file() or (images / METADATA).exists() or any(images.glob(f"*/{METADATA}")):
        return False
    return (out / WEBDATASET / STAMP).is_file() == bool(config.get("webdataset"))


def _remove_metadata(out: Path) -> None:
    """Hugging Face's imagefolder loader (datasets 3 to 5) takes its columns from a metadata
    file (metadata.csv/.jsonl/.parquet) when there is one, and then ignores the class folders:
    ``label`` from a CSV is a string (``Value('large_string')``, no ``.names``), and leaving it out
    leaves no label at all. Only without a metadata file does it infer ``label`` as a
    ``ClassLabel`` from the folder names, sorted: the order of classes.json and torchvision. So
    none is written (the per-image columns are in OUT/manifest.csv), and the one earlier versions
    of augment wrote is removed: only where they wrote it (images/ and images/<split>/)."""
    images = out / "images"
    for stale in [images / METADATA, *images.glob(f"*/{METADATA}")]:
        stale.unlink(missing_ok=True)


def _remove_images(out: Path, manifest: pd.DataFrame) -> None:
    """``--no-images``: the manifest's image files, now in the shards, and the folders they
    leave empty. Nothing else under OUT/images is touched."""
    images = (out / "images").resolve()
    folders = set()
    for rel in manifest["path"]:
        path = (out / rel).resolve()
        if path.is_relative_to(images) and path.is_file():
            path.unlink()
            folders.add(path.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != images and folder.is_relative_to(images) and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _write_webdataset(
    out: Path,
    manifest: pd.DataFrame,
    classes: dict[str, int],
    *,
    seed: int,
    shard_size: int,
    inputs_root: str | None,
) -> None:
    """Tar shards and shards.json, rewritten only when the manifest or the sharding changed."""
    folder = out / WEBDATASET
    stamp = folder / STAMP
    settings = json.dumps({"seed": seed, "shard_size": shard_size, "inputs_root": inputs_root}, sort_keys=True)
    digest = hashlib.sha256((out / "manifest.csv").read_bytes() + settings.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest and (folder / SHARDS).is_file():
        return
    missing = [p for p in manifest["path"] if not (out / p).is_file()]
    if missing:  # e.g. a part re-run after --no-images removed the other parts' images
        raise OutputError(
            f"{len(missing)} image(s) of the manifest are not in {out / 'images'} (first: {missing[0]}), so the "
            "shards cannot be rebuilt: run the whole job again"
        )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    has_split = "split" in manifest and (manifest["split"] != "").any()
    splits = manifest["split"] if has_split else pd.Series("train", index=manifest.index)
    typed = _typed_columns(manifest)
    listing: dict[str, Any] = {}
    for split, rows in manifest.groupby(splits, sort=True):
        records = sorted(rows.to_dict("records"), key=lambda r: r["path"])
        samples = list(zip(_sample_keys(records), records))
        # Shuffled across the shards, so that a shard is a sample of the whole split (in
        # manifest order, a shard of 1000 often holds a single class): a fixed permutation
        # from the run's seed and the split, the same on every machine and every re-run.
        random.Random(stable_hash(seed, "webdataset", split)).shuffle(samples)
        shards = []
        for number, start in enumerate(range(0, len(samples), shard_size)):
            chunk, name = samples[start : start + shard_size], f"{split}-{number:06d}.tar"
            with atomic_write(folder / name) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
                for key, row in chunk:
                    _add_sample(tar, out, row, key, classes, typed, inputs_root)
            shards.append({"url": name, "samples": len(chunk)})
        counts = Counter(row["label"] for _, row in samples)
        listing[split] = {
            "samples": len(samples),
            "shards": shards,
            "classes": {label: counts[label] for label in classes if counts[label]},
        }
    # Beside the shards, like img2dataset's stats: a loader reads the shard names from here
    # instead of guessing a brace pattern. Names are relative to this file's folder.
    index = {"shard_size": shard_size, "seed": seed, "classes": classes, "splits": listing}
    write_text(folder / SHARDS, json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    write_text(stamp, digest + "\n")


def _sample_keys(records: list[dict[str, str]]) -> list[str]:
    """``<label>/<file stem>``, unique. webdataset splits a sample's key from its extensions at
    the first dot of the file name, so dots become ``_``; a key that then clashes (a.b and
    a_b) gets a short hash of its path."""
    keys, seen = [], set()
    for row in records:
        path = PurePosixPath(row["path"])
        key = f"{row['label']}/{path.stem.replace('.', '_')}"
        if key in seen:
            key = f"{key}-{hashlib.sha256(row['path'].encode()).hexdigest()[:8]}"
        seen.add(key)
        keys.append(key)
    return keys


_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_ZERO_PADDED = re.compile(r"[-+]?0[0-9]+")  # "007" is an id, not 7 (or 7.0)


def _typed_columns(manifest: pd.DataFrame) -> dict[str, Callable[[str], Any]]:
    """Per column, how its text becomes a JSON value: int when every value is a whole number,
    float when every value is a finite number, else text (one column, one type, across the
    dataset); an empty value is null."""

    def is_number(value: str) -> bool:
        if _ZERO_PADDED.match(value):
            return False
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False

    typed: dict[str, Callable[[str], Any]] = {}
    for column in manifest.columns:
        values = [v for v in manifest[column] if v != ""]
        if column in TEXT_COLUMNS or not values:
            typed[column] = str
        elif all(_INT.fullmatch(v) for v in values):
            typed[column] = int
        elif all(is_number(v) for v in values):
            typed[column] = float
        else:
            typed[column] = str
    return typed


def _portable_source(source: str, inputs_root: str | None) -> str:
    """The source image as a path relative to the input manifest's folder (as the manifest
    usually gives it); an absolute one outside that folder keeps only its file name, so no
    host path travels with the shards (OUT/manifest.csv keeps the full one)."""
    if not os.path.isabs(source):
        return PurePosixPath(os.path.normpath(source).replace(os.sep, "/")).as_posix()
    if inputs_root:
        root = os.path.normpath(inputs_root)
        if os.path.commonpath([os.path.normpath(source), root]) == root:
            return Path(os.path.relpath(source, root)).as_posix()
    return PurePosixPath(source.replace("\\", "/")).name


def _add_sample(
    tar: tarfile.TarFile,
    out: Path,
    row: dict[str, str],
    key: str,
    classes: dict[str, int],
    typed: dict[str, Callable[[str], Any]],
    inputs_root: str | None,
) -> None:
    path = PurePosixPath(row["path"])
    meta = {k: (typed[k](v) if v != "" else None) for k, v in row.items() if k not in INTERNAL}
    if meta.get("source"):
        meta["source"] = _portable_source(row["source"], inputs_root)
    members = {
        f"{key}{path.suffix}": (out / path).read_bytes(),
        f"{key}.cls": str(classes[row["label"]]).encode(),
        f"{key}.json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }
    for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
