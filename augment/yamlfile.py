"""Reading a YAML file that must hold a mapping, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import AugmentError


def read_mapping(path: Path, error: type[AugmentError], expected: str) -> dict[Any, Any]:
    """The mapping in ``path`` (empty file: {}); ``error`` for bad YAML or another shape."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise error(f"{path}: invalid YAML ({err})") from err
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of {expected}")
    return data
