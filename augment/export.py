"""What a training job reads besides the image tree, all derived from OUT/manifest.csv:

- ``OUT/classes.json``: label -> index, labels sorted as torchvision's ImageFolder sorts its
  class folders, so indices agree with ``ImageFolder(OUT/images)``;
- ``OUT/images/metadata.csv``: ``file_name`` (relative to OUT/images) plus the manifest's
  columns, for Hugging Face ``load_dataset("imagefolder", data_dir=OUT/images)``; with
  splits, one per ``OUT/images/<split>/``, which is where that loader looks for them;
- ``OUT/webdataset/<split>-NNNNNN.tar`` (``--format webdataset``): per sample
  ``<key>.<ext>`` (the image), ``<key>.cls`` (class index) and ``<key>.json`` (its row).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath

import pandas as pd

from .atomic import atomic_write, write_text
from .manifest import BASE_COLUMNS

CLASSES = "classes.json"
METADATA = "metadata.csv"
WEBDATASET = "webdataset"
SAMPLES_PER_SHARD = 1000
STAMP = "manifest.sha256"  # marks OUT/webdataset as augment's, and what it was made from
# Manifest columns a training loader has no use for (all of them stay in manifest.csv).
INTERNAL = ("key", "params", "weights", "seconds", "precision")
# What metadata.csv carries besides file_name: what a training script filters or groups by.
METADATA_COLUMNS = ("label", "split", "source", "style", "engine", "k", "style_mix", "style_weight", "alpha")


def read_manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def class_index(labels: list[str]) -> dict[str, int]:
    """Label -> index, in the order torchvision gives class folders (sorted names)."""
    return {label: i for i, label in enumerate(sorted(set(labels)))}


def write_exports(out: Path, *, webdataset: bool = False) -> None:
    manifest = read_manifest(out)
    classes = class_index(list(manifest["label"]))
    write_text(out / CLASSES, json.dumps(classes, indent=2, ensure_ascii=False) + "\n")
    _write_metadata(out, manifest)
    if webdataset:
        _write_webdataset(out, manifest, classes)
    elif (out / WEBDATASET / STAMP).is_file():  # shards of an earlier run that asked for them
        shutil.rmtree(out / WEBDATASET)


def _write_metadata(out: Path, manifest: pd.DataFrame) -> None:
    images = out / "images"
    # Only where it is ever written (images/ and images/<split>/): no walk of the whole tree.
    for stale in [images / METADATA, *images.glob(f"*/{METADATA}")]:
        stale.unlink(missing_ok=True)
    # The input manifest's own columns come along; columns with no value anywhere do not.
    extra = [c for c in manifest.columns if c not in BASE_COLUMNS]
    columns = [c for c in (*METADATA_COLUMNS, *extra) if c in manifest and (manifest[c] != "").any()]
    splits = sorted(set(manifest["split"])) if "split" in manifest else [""]
    for split in splits:
        rows = manifest[manifest["split"] == split] if "split" in manifest else manifest
        folder = images / split if split else images
        # file_name is relative to the metadata file's folder.
        names = [
            PurePosixPath(p).relative_to(PurePosixPath(folder.relative_to(out).as_posix())).as_posix()
            for p in rows["path"]
        ]
        frame = pd.concat([pd.Series(names, name="file_name", index=rows.index), rows[columns]], axis=1)
        with atomic_write(folder / METADATA, "w", encoding="utf-8", newline="") as handle:
            frame.to_csv(handle, index=False)


def _write_webdataset(out: Path, manifest: pd.DataFrame, classes: dict[str, int]) -> None:
    """Tar shards, rewritten only when the manifest changed since they were made."""
    folder = out / WEBDATASET
    stamp = folder / STAMP
    digest = hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    has_split = "split" in manifest and (manifest["split"] != "").any()
    for split, rows in manifest.groupby(manifest["split"] if has_split else pd.Series("train", index=manifest.index)):
        records = rows.to_dict("records")
        keys = _sample_keys(records)
        for shard, start in enumerate(range(0, len(records), SAMPLES_PER_SHARD)):
            with (
                atomic_write(folder / f"{split}-{shard:06d}.tar") as handle,
                tarfile.open(fileobj=handle, mode="w") as tar,
            ):
                for row, key in zip(
                    records[start : start + SAMPLES_PER_SHARD], keys[start : start + SAMPLES_PER_SHARD]
                ):
                    _add_sample(tar, out, row, key, classes)
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


def _add_sample(tar: tarfile.TarFile, out: Path, row: dict[str, str], key: str, classes: dict[str, int]) -> None:
    path = PurePosixPath(row["path"])
    meta = {k: v for k, v in row.items() if k not in INTERNAL}
    members = {
        f"{key}{path.suffix}": (out / path).read_bytes(),
        f"{key}.cls": str(classes[row["label"]]).encode(),
        f"{key}.json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }
    for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
