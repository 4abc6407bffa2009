"""The keys that decide what a re-run redoes: hashes of the options that change pixels (and
of the engine's defaults), of the plan and of a copy's encoding; each task's key from them,
its sources' content digests and the weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config import FIELD_NAMES, RunConfig
from ..engines.vgg import Flavour
from ..engines.weighting import DEFAULTS, NORMALIZED_DEFAULTS
from ..errors import OutputError
from ..io.digests import SUFFIX as DIGESTS
from ..io.digests import DigestCache
from ..outputs.parts import PART_NAME, PARTS
from .plan import Task, stable_hash
from .prepare import Prepared

log = logging.getLogger(__name__)

# Options added after outputs existed: hashed only when set away from this value, so that
# those outputs stay current.
HASHED_WHEN_CHANGED = {"upscale": True}


def config_hash(config: RunConfig) -> str:
    """Hash of every option that can change output pixels (canonical JSON)."""
    # What may differ between the parts of one job: where and how it runs, not what it makes.
    ignored = {
        "quiet",
        "log_level",
        "limit",
        "out",
        "manifest",
        "styles",
        "download",
        "device",
        "batch_size",
        "workers",
        "devices",
        "shard",
        "ray",
        "shards",
        "shard_retries",
        "shard_timeout",
        "keep_stale",
        "check_content",
        "max_failures",
        "max_seconds",
    }
    # What a variant's pixels do not depend on: which rows and how many variants (each
    # task's key has its own sampled settings), and the copies of the originals.
    ignored |= {
        "include_originals",
        "splits",
        "balance",
        "target_per_class",
        "style_assignment",
        "per_image",
        "webdataset",
        "shard_size",
        "images",
    }
    # A weight left unset takes the engine's per-flavour default: a changed default must
    # redo the images made with the old one, as a changed option does.
    defaults = {flavour.value: dataclasses.astuple(DEFAULTS[flavour]) for flavour in Flavour}
    defaults["normalized"] = dataclasses.astuple(NORMALIZED_DEFAULTS)
    return _hash(config, (k for k in FIELD_NAMES if k not in ignored), loss_defaults=defaults)


def plan_hash(config: RunConfig) -> str:
    """Hash of what decides which images a job makes (the parts of one job must agree)."""
    return _hash(
        config, ("include_originals", "splits", "balance", "target_per_class", "style_assignment", "per_image", "limit")
    )


def copy_hash(config: RunConfig) -> str:
    """Hash of what changes a copied original: its size and encoding."""
    return _hash(config, ("size", "upscale", "shape_step", "format", "quality", "max_pixels"))


def _hash(config: RunConfig, names: Iterable[str], **extra: object) -> str:
    """Short hash of these options' values (canonical JSON) and ``extra``. Options added
    after outputs existed count only when set away from their default, so those outputs
    stay current."""
    values = config.to_dict()
    data = {name: values[name] for name in names if HASHED_WHEN_CHANGED.get(name, ...) != values[name]}
    data.update(extra)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def task_keys(
    tasks: list[Task], *, config_hash: str, copy_hash: str, weights: str, digest: Callable[[Path], str]
) -> dict[str, str]:
    """Output path -> a key that changes whenever the image would: the source's and the
    style's content, every pixel-changing option (config hash, seed included), the weights,
    the task's own sampled settings. An original's key depends only on the source and the
    options that change a copy (size, format, quality)."""
    keys = {}
    # Per style pair, once: the styles' contents and their styles.yaml loss settings (which
    # change pixels too), as the strings the hash reads.
    pairs: dict[tuple[str, str | None], tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def of_pair(task: Task) -> tuple[tuple[str, ...], tuple[str, ...]]:
        pair = (task.style.name, task.style2.name if task.style2 else None)
        if pair not in pairs:
            styles = [s for s in (task.style, task.style2) if s is not None]
            contents = tuple(
                str(digest(s.path)) if s.path.is_file() else s.name for s in styles
            )  # a dream layer: no file
            pairs[pair] = (contents, tuple(str(sorted(s.overrides.items())) for s in styles))
        return pairs[pair]

    path, content = None, ""
    for task in tasks:
        if task.source.path != path:  # a source's tasks come together
            path, content = task.source.path, digest(task.source.path)
        if task.original:
            keys[task.output] = f"{stable_hash(content, 'original', copy_hash):016x}"
            continue
        styles, overrides = of_pair(task)
        key = stable_hash(content, *styles, task.mix, task.style_weight, task.alpha, *overrides, config_hash, weights,
                          task.seed)  # fmt: skip
        keys[task.output] = f"{key:016x}"
    return keys


def digest_keys(
    config: RunConfig, prepared: Prepared, weights: Any, out: Path, name: str, tasks: list[Task] | None = None
) -> dict[str, str]:
    """Every task's key, from content digests cached in OUT by file identity (digests.py): a
    file is read only when it is new or touched. Part ``name`` reads its own cache; the whole
    job (``tasks`` None) every part's, and keeps one."""
    parts = out / PARTS
    whole = tasks is None
    names = [p.name[: -len(DIGESTS)] for p in parts.glob(f"*{DIGESTS}")] if whole else [name]
    caches = [parts / f"{n}{DIGESTS}" for n in names if PART_NAME.fullmatch(n)]
    cache = DigestCache(caches, check_content=config.check_content)
    tasks = prepared.tasks if tasks is None else tasks
    cache.digest_all(sorted({t.source.path for t in tasks}))
    keys = task_keys(tasks, config_hash=config_hash(config), copy_hash=copy_hash(config),
                     weights=weights.identity, digest=cache.digest)  # fmt: skip
    try:
        own = parts / f"{name}{DIGESTS}"
        if cache.changed or caches != [own]:  # a no-op re-run leaves it as it was
            cache.save(own)
        for old in caches if whole else []:
            if old.name != f"{name}{DIGESTS}":
                old.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write to {parts}: {err}") from err
    if cache.read:
        log.info("%d files read for their content digest, %d known unchanged", cache.read, cache.reused)
    return keys
