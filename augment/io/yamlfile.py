"""Reading a YAML file that must hold a mapping, with errors that name the file.

Bounded: run.yaml and styles.yaml are a few lines, so a file over MAX_YAML_BYTES, an alias
(``*name``: a few reused anchors expand exponentially, the "billion laughs") and a key given
twice (the later would silently replace the earlier) are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import AugmentError

MAX_YAML_BYTES = 1 << 20


class _BoundedLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not accepted; write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<:", resolved by SafeLoader itself
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_mapping(path: Path, error: type[AugmentError], expected: str) -> dict[Any, Any]:
    """The mapping in ``path`` (empty file: {}); ``error`` for bad YAML or another shape."""
    try:
        with open(path, "rb") as handle:  # read no more than the cap: a FIFO or /dev/zero never ends
            raw = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from err
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{path}: over {MAX_YAML_BYTES // (1 << 20)} MB; a YAML file of options is a few lines")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_BoundedLoader) or {}  # noqa: S506  (a SafeLoader)
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise error(f"{path}: invalid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of {expected}")
    return data
