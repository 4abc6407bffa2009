"""The style bank: a folder of style images plus an optional ``styles.yaml`` beside them.

``styles.yaml`` maps a style (file name, file stem or safe name) to its settings::

    starry_night:
      name: The Starry Night   # display name
      weight: 2                # sampling weight (0 = never drawn)
      style_weight: 2000       # overrides --style-weight for this style
      style_layer_weights: [0.5, 0.3, 0.2, 0, 0]   # λ_l, one per style layer
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..engines.weighting import parse_layer_weights
from ..errors import StyleBankError
from .images import ImageProblem, image_extensions, load_rgb
from .yamlfile import read_mapping

STYLES_YAML = "styles.yaml"
# Per-style keys: display name, sampling weight, and the loss settings a style may override.
OVERRIDE_KEYS = ("style_weight", "content_weight", "tv_weight", "tv_beta", "style_layer_weights")
NUMBER_KEYS = ("weight", "style_weight", "content_weight", "tv_weight", "tv_beta")
STYLE_KEYS = ("name", "weight", *OVERRIDE_KEYS)


@dataclass(frozen=True)
class Style:
    name: str  # unique and safe in file names; what the manifest's style column says
    path: Path
    display_name: str
    weight: float = 1.0
    overrides: dict[str, float | tuple[float, ...]] = field(default_factory=dict, compare=False, hash=False)


def safe_name(stem: str) -> str:
    """A file-name-safe style name. ``__`` is the separator in output names, so runs of
    underscores collapse to one."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem)
    name = re.sub(r"_{2,}", "_", name).strip("._-")
    return name or "style"


def load_style_bank(folder: str | Path, *, max_pixels: int | None = None, style_layers: int = 5) -> list[Style]:
    """Find the style images in ``folder`` (not recursive) and apply ``styles.yaml``
    (``style_layers``: how many λ_l a ``style_layer_weights`` entry must give).

    Raises StyleBankError for a missing or empty folder, an unreadable style image or a bad
    styles.yaml, naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StyleBankError(f"style folder not found: {folder}")
    extensions = image_extensions()
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )  # fmt: skip
    if not files:
        raise StyleBankError(f"{folder}: no style images found")
    for file in files:
        try:  # decoded whole, once: a truncated painting is refused here, not on every row
            load_rgb(file, **({"max_pixels": max_pixels} if max_pixels else {}))
        except ImageProblem as err:
            raise StyleBankError(f"style image {file}: {err}") from err

    names = _unique_names(files)
    settings = _load_settings(folder / STYLES_YAML, files, names, style_layers)
    styles = []
    for file, name in zip(files, names):
        entry = settings.get(name, {})
        styles.append(Style(
            name=name, path=file.resolve(),
            display_name=str(entry.get("name", file.stem)),
            weight=float(entry.get("weight", 1.0)),
            overrides={k: entry[k] for k in OVERRIDE_KEYS if k in entry},  # type: ignore[misc]
        ))  # fmt: skip
    if not any(s.weight > 0 for s in styles):
        raise StyleBankError(f"{folder / STYLES_YAML}: every style has weight 0")
    return styles


def _unique_names(files: list[Path]) -> list[str]:
    """Safe names, made distinct: a.jpg and a.png become a-jpg and a-png."""
    # "original" names the copied sources in the manifest's style column.
    base = [safe_name(f.stem) if safe_name(f.stem) != "original" else "original-style" for f in files]
    names = [safe_name(f"{b}-{f.suffix.lstrip('.')}") if base.count(b) > 1 else b for b, f in zip(base, files)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _load_settings(path: Path, files: list[Path], names: list[str], style_layers: int) -> dict[str, dict[str, object]]:
    if not path.is_file():
        return {}
    data = read_mapping(path, StyleBankError, "style name to settings")
    # A style may be keyed by its file name, its stem or its safe name.
    aliases = {}
    for file, name in zip(files, names):
        aliases.update({file.name: name, file.stem: name, name: name})
    settings: dict[str, dict[str, object]] = {}
    named_by: dict[str, str] = {}
    for key, entry in data.items():
        key = str(key)
        if key not in aliases:
            hint = difflib.get_close_matches(key, list(aliases), n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise StyleBankError(f"{path}: {key!r} matches no style image{did_you_mean}")
        if aliases[key] in named_by:  # the later would silently replace the earlier
            raise StyleBankError(
                f"{path}: {named_by[aliases[key]]!r} and {key!r} both name style {aliases[key]!r}; keep one"
            )
        named_by[aliases[key]] = key
        if not isinstance(entry, dict):
            raise StyleBankError(f"{path}: settings for {key!r} must be a mapping")
        unknown = sorted(set(map(str, entry)) - set(STYLE_KEYS))
        if unknown:
            raise StyleBankError(
                f"{path}: unknown key(s) {', '.join(unknown)} for {key!r}; allowed: {', '.join(STYLE_KEYS)}"
            )
        entry = dict(entry)
        for number_key in NUMBER_KEYS:
            if number_key in entry:
                value = entry[number_key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                    raise StyleBankError(f"{path}: {key}.{number_key} must be a number >= 0")
                entry[number_key] = float(value)
        if entry.get("tv_beta") == 0:
            raise StyleBankError(f"{path}: {key}.tv_beta must be > 0 (at 0 the TV term is a constant)")
        if "style_layer_weights" in entry:
            try:
                entry["style_layer_weights"] = parse_layer_weights(entry["style_layer_weights"], style_layers)
            except ValueError as err:
                raise StyleBankError(f"{path}: {key}.style_layer_weights: {err}") from None
        settings[aliases[key]] = entry
    return settings
