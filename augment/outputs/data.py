"""``ManifestDataset``: a torch Dataset over an augment output, for training as is.

    from augment.data import ManifestDataset
    train = ManifestDataset("aug", split="train", transform=T.Compose([T.Resize(224), T.ToTensor()]))
    stylized_only = ManifestDataset("aug", exclude_styles=["original"])

Labels are indices from ``OUT/classes.json`` (torchvision's ImageFolder order), the same in
every split and every filtered view.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from .export import CLASSES, class_index, read_manifest


class ManifestDataset(Dataset[tuple[Any, int]]):
    """(image, label index) for each row of ``OUT/manifest.csv`` that passes the filters.

    ``styles`` / ``engines`` / ``split``: keep only rows with these values (``style`` is
    ``original`` for copied sources, ``a+b`` for blends; ``engine`` is gatys, dream,
    gatys+dream or original). ``exclude_styles``: drop these. ``transform`` gets the PIL image.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        styles: Iterable[str] | None = None,
        exclude_styles: Iterable[str] = (),
        engines: Iterable[str] | None = None,
        split: str | None = None,
    ) -> None:
        self.root = Path(out)
        if not (self.root / "manifest.csv").is_file():
            raise FileNotFoundError(f"{self.root / 'manifest.csv'} not found: is {self.root} an augment output folder?")
        rows = read_manifest(self.root)
        classes_file = self.root / CLASSES
        self.class_to_idx: dict[str, int] = (
            json.loads(classes_file.read_text(encoding="utf-8"))
            if classes_file.is_file()
            else class_index(list(rows["label"]))
        )
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)
        keep = pd.Series(True, index=rows.index)
        if styles is not None:
            keep &= rows["style"].isin(_known(styles, rows["style"], "style", self.root))
        # "original" may be excluded from a dataset that has none: the same code serves both.
        keep &= ~rows["style"].isin(_known(exclude_styles, rows["style"], "style", self.root, also={"original"}))
        if engines is not None:
            keep &= rows["engine"].isin(_known(engines, rows["engine"], "engine", self.root))
        if split is not None:
            if not (rows["split"] != "").any():
                raise ValueError(
                    f"{self.root}: the dataset has no splits (its manifest had no split column); leave split=None"
                )
            keep &= rows["split"] == _known([split.lower()], rows["split"], "split", self.root)[0]
        self.rows = rows[keep].reset_index(drop=True)
        self.samples = [
            (str(self.root / p), self.class_to_idx[label]) for p, label in zip(self.rows["path"], self.rows["label"])
        ]
        self.targets = [target for _, target in self.samples]
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (
            self.transform(image) if self.transform else image,
            self.target_transform(target) if self.target_transform else target,
        )


def _known(
    names: Iterable[str], column: pd.Series, what: str, root: Path, also: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """``names`` as given, each one a value the manifest has: a typo would silently filter
    every row out (or none), so it is an error with a did-you-mean."""
    names = [names] if isinstance(names, str) else list(names)
    present = sorted(set(column) - {""})
    for name in names:
        if name not in present and name not in also:
            close = difflib.get_close_matches(name, present, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{root}: no {what} {name!r} in its manifest (it has {', '.join(present)}){hint}")
    return names
