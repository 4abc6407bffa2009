"""Input manifests (a CSV or an ImageFolder tree) in, as checked rows (the output's columns are
in outputs/schema.py).

Reading checks every row without decoding images: a bad row becomes a ``Failure`` and the
others go on. Only problems with the manifest as a whole raise ``ManifestError``.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ManifestError
from ..outputs.schema import BASE_COLUMNS, Failure
from .images import image_extensions

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label")
# File names Hugging Face's imagefolder loader reads as metadata: a class so named would break it.
RESERVED_LABELS = frozenset({"metadata.csv", "metadata.jsonl", "metadata.parquet"})
# Output columns an input column may not overwrite (and metadata.csv's file_name).
RESERVED_COLUMNS = (frozenset(BASE_COLUMNS) - {"path", "label", "split"}) | {"file_name"}


# The extra columns of a row without any: one dict shared by all (never written to; a million
# empty dicts are 64 MB).
NO_EXTRA: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One usable input image. Slots and a string path: a shard reads every row of a
    million-row manifest (names and class targets depend on them all), and a Path object
    (its parts kept as a list) is most of a row's memory."""

    row: int  # 1-based data row (the first row under the header is 1); listing order for folders
    source: str  # as written in the manifest; for a folder, relative to its root (posix)
    path: str  # resolved location on disk (a Path given is kept as its string)
    label: str
    split: str = ""
    extra: dict[str, str] = field(default_factory=lambda: NO_EXTRA, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            object.__setattr__(self, "path", os.fspath(self.path))


@dataclass
class InputRows:
    rows: list[SourceRow]
    failures: list[Failure]
    root: Path  # the folder relative source paths are resolved against
    extra_columns: list[str]


@functools.lru_cache(maxsize=4096)  # a million rows carry a few hundred labels
def label_problem(label: str) -> str | None:
    """Why a label cannot be a folder name under OUT/images, or None if it can.

    Unicode is fine; anything that could escape the folder or confuse a file system is not.
    """
    if not label.strip():
        return "empty label"
    if label != label.strip():
        return f"label {label!r} has leading or trailing spaces"
    if label in (".", ".."):
        return f"label {label!r} is not a folder name"
    if label.casefold() in RESERVED_LABELS:
        return f"label {label!r} is the name of a file augment writes beside the class folders"
    if "/" in label or "\\" in label:
        return f"label {label!r} contains a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in label):
        return f"label {label!r} contains a control character"
    if len(label.encode("utf-8")) > 200:
        return "label is longer than 200 bytes"
    return None


def load_input(path: str | Path) -> InputRows:
    """Read a CSV manifest or an ImageFolder directory. Raises ManifestError."""
    path = Path(path)
    if path.is_dir():
        return _load_image_folder(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    return _load_csv(path)


def _load_csv(path: Path) -> InputRows:
    try:
        # index_col=False: a trailing comma on every row must not turn the first column into
        # the index (and shift every column left).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # object, not pandas' string dtype: the values are then the str objects the rows
            # keep (a million rows: 170 MB at the peak where arrow strings, copied out, took 300).
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8-sig", index_col=False)
        if caught:  # fields past the header's columns (often a trailing comma) are not read
            log.warning("%s: some rows have more fields than the header; the extra fields are ignored", path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not a readable CSV manifest ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:  # most often an upstream step that failed; never a reason to empty OUT
        raise ManifestError(f"{path}: no rows, only a header (a manifest needs at least one path,label row)")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns) or 'none'}"
            " (a manifest needs path,label and may have split)"
        )
    root = path.parent.resolve()
    # The input's own columns travel to the output manifest; one named like an output column
    # (style, source, key, ...) is kept as input_<name> rather than overwrite augment's.
    frame = frame.rename(columns={c: f"input_{c}" for c in frame.columns if c in RESERVED_COLUMNS})
    extra_columns = [c for c in frame.columns if c not in (*REQUIRED_COLUMNS, "split")]
    rows, failures = [], []
    seen: set[tuple[str, str]] = set()
    # A split column with values: every row needs one (it names a folder under OUT/images).
    has_splits = "split" in frame.columns and (frame["split"].str.strip() != "").any()
    # Column by column, not a dict per row (a million rows); a few hundred labels and splits
    # are kept once each, not once per row. Files are not opened here: the part that owns a
    # row finds a missing file at its header read (a shard reads only its own rows' files).
    sources = frame["path"].str.strip().tolist()
    labels = _shared(frame["label"].tolist())
    splits = _shared(frame["split"].str.strip().str.lower().tolist()) if "split" in frame.columns else None
    extras = frame[extra_columns].to_dict("records") if extra_columns else None
    del frame
    for index, (source, label) in enumerate(zip(sources, labels), start=1):
        checked = _check_row(index, source, label, root)
        split = splits[index - 1] if splits else ""  # Train and train are one split
        if not isinstance(checked, Failure) and has_splits:
            problem = "empty split (other rows have one)" if not split else label_problem(split)
            if problem:
                checked = Failure(
                    index, source, label, "bad_split", f"row {index}: {problem.replace('label', 'split')}"
                )
        if isinstance(checked, Failure):
            failures.append(checked)
            continue
        if (checked, label) in seen:
            log.warning("%s row %d: duplicate of an earlier row (%s, %s); done once", path.name, index, source, label)
            continue
        seen.add((checked, label))
        extra = extras[index - 1] if extras else NO_EXTRA
        rows.append(SourceRow(row=index, source=source, path=checked, label=label, split=split, extra=extra))
    return InputRows(rows=rows, failures=failures, root=root, extra_columns=extra_columns)


def _shared(values: list[str]) -> list[str]:
    """The same list with equal strings made one object (labels and splits repeat)."""
    seen: dict[str, str] = {}
    return [seen.setdefault(v, v) for v in values]


# What Linux allows (PATH_MAX, NAME_MAX); longer is an error of the row, checked before any
# system call (a 50 MB path would otherwise be carried through every message).
MAX_PATH_BYTES, MAX_COMPONENT_BYTES = 4096, 255


def _path_problem(source: str) -> str | None:
    if len(source) <= MAX_COMPONENT_BYTES // 4:  # a character is at most 4 bytes: nothing to count
        return None
    size = len(source.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        return f"path is {size:,} bytes long, over the {MAX_PATH_BYTES} a path may have"
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in source.split("/")), default=0)
    if longest > MAX_COMPONENT_BYTES:
        return f"a folder or file name in the path is {longest} bytes long, over the {MAX_COMPONENT_BYTES} allowed"
    return None


def _check_row(index: int, source: str, label: str, root: Path) -> str | Failure:
    def fail(reason: str, message: str) -> Failure:
        return Failure(index, source, label, reason, f"row {index}: {message}")

    if not source:
        return fail("missing", "empty path")
    problem = _path_problem(source)
    if problem:  # shown cut short: a megabyte path is not copied into failures.csv and the log
        shown = source if len(source) <= 300 else f"{source[:200]}… ({len(source):,} characters)"
        return Failure(index, shown, label, "bad_path", f"row {index}: {problem}")
    problem = label_problem(label)
    if problem:
        return fail("bad_label", problem)
    if os.path.isabs(source):
        return source
    # Lexical check first: a relative path must stay inside the manifest's folder. (Strings,
    # not Path objects: this runs once per row of a million-row manifest.)
    top = str(root)
    resolved = os.path.normpath(os.path.join(top, source))
    if resolved != top and not resolved.startswith(top.rstrip(os.sep) + os.sep):
        return fail("outside_root", f"relative path {source!r} climbs out of {root}")
    return resolved


# Top-level folders read as splits, as Hugging Face's imagefolder loader reads them.
SPLIT_FOLDERS = frozenset({"train", "val", "valid", "validation", "test"})


def _load_image_folder(root: Path) -> InputRows:
    """``root/<label>/**/<image>`` as torchvision's ImageFolder reads it; ``root/<split>/<label>/``
    when every top-level folder is named like a split (train, val, validation, test)."""
    root = root.resolve()
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not top:
        raise ManifestError(f"{root}: no class folders (expected {root}/<label>/<image>)")
    rows: list[SourceRow] = []
    failures: list[Failure] = []
    splits = [p.name for p in top if p.name.lower() in SPLIT_FOLDERS]
    if splits and len(splits) < len(top):  # train/, val/ and a stray misc/: neither layout holds
        others = [p.name for p in top if p.name.lower() not in SPLIT_FOLDERS]
        raise ManifestError(
            f"{root}: folders {', '.join(splits)} are named like splits but {', '.join(others)} not; use "
            f"{root}/<split>/<label>/<image> throughout, or {root}/<label>/<image> with no split names"
        )
    if splits:
        log.info("%s: folders %s read as splits (root/<split>/<label>/<image>)", root, ", ".join(p.name for p in top))
        for split_dir in top:
            class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            _read_classes(root, class_dirs, split_dir.name.lower(), rows, failures)
    else:
        _read_classes(root, top, "", rows, failures)
    if not rows and not failures:
        raise ManifestError(f"{root}: no images found under its class folders")
    return InputRows(rows=rows, failures=failures, root=root, extra_columns=[])


def _read_classes(
    root: Path, class_dirs: list[Path], split: str, rows: list[SourceRow], failures: list[Failure]
) -> None:
    """Every image under each class folder, as rows (numbered on from those already read)."""
    extensions = image_extensions()
    index = len(rows) + len(failures)
    for class_dir in class_dirs:
        label = class_dir.name
        files = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
        )  # fmt: skip
        for file in files:
            index += 1
            source = file.relative_to(root).as_posix()
            if not _is_utf8(source + label):
                # Its name would reach the manifest, the journal and the output names, all UTF-8.
                shown = _shown(source)
                message = f"{shown}: the file name is not valid UTF-8; rename it"
                failures.append(Failure(index, shown, _shown(label), "bad_name", message))
                continue
            problem = label_problem(label)
            if problem:
                failures.append(Failure(index, source, label, "bad_label", f"{source}: {problem}"))
                continue
            rows.append(SourceRow(row=index, source=source, path=file, label=label, split=split))


def _is_utf8(text: str) -> bool:
    """False for a name Python read from bytes that are not UTF-8 (kept as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
