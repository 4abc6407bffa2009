"""Sources x styles x variants -> a deterministic list of tasks.

Every choice is seeded from (run seed, source path[, style, k]), never from row order or from
which worker runs a task, so the same inputs always plan the same tasks and names. What a
source gets:

- its original, re-encoded at the output size, with ``include_originals``;
- ``per_image`` stylized variants if its split is one to stylize (all rows when the manifest
  has no split column), or with ``balance``/``target_per_class`` as many as its class needs
  to reach the target (``variant_counts``);
- styles by ``assignment``: ``random`` (weighted draw, no repeat while the bank lasts),
  ``cycle`` (round robin over the bank, even coverage of the whole dataset) or ``all``;
- ``k``: how many times before this source used the style (0 for its first use), so a task's
  name and seed depend on its source and style, not on its place among the source's variants.
  With ``random`` each style's rank for a source is its own hash: removing a style from the
  bank changes only the images that used it, adding one only those it now wins;
- a variant that would repeat a style already used for the same source becomes a blend of two
  styles, so extra variants for a minority class are new images, not copies.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Assignment, Spread
from ..io.images import FORMAT_EXT
from ..io.sources import SourceRow
from ..io.styles import Style

NAME_SEPARATOR = "__"
MAX_PLANNED_TASKS = 10_000_000  # about 10 GB of plan in memory


class PlanTooLarge(ValueError):
    """More images asked for than one run plans (--target-per-class 100000000, say)."""


# File names stay under this many bytes: 255 is the limit of common file systems, and a write
# goes through a temporary name (".<name>.<random>.tmp") about 20 bytes longer.
MAX_NAME_BYTES = 220


def fit_name(name: str, ext: str) -> str:
    """``name + ext``, or for an overlong one, its first bytes (whole characters) and a hash of
    the whole name, so names stay distinct and under MAX_NAME_BYTES."""
    if len((name + ext).encode("utf-8")) <= MAX_NAME_BYTES:
        return name + ext
    suffix = f"-{stable_hash(name) % 16**8:08x}{ext}"
    budget = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    prefix = name.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return prefix + suffix


ORIGINAL = Style("original", Path(), "original", weight=0.0)  # the style of a copied source


def blend_name(style: Style, style2: Style | None) -> str:
    return f"{style.name}+{style2.name}" if style2 else style.name


# A number, or a (low, high) range sampled per task.
# Mix of the second style in the blends that stand in for repeated styles.
REPEAT_MIX = (0.25, 0.75)


@dataclass(frozen=True)
class PlanOptions:
    per_image: int = 1
    seed: int = 0
    fmt: str = "png"
    include_originals: bool = False
    splits: tuple[str, ...] = ("train",)  # stylized when the manifest has a split column
    assignment: Assignment = Assignment.RANDOM
    balance: bool = False
    target_per_class: int | None = None
    style_weight: Spread | None = None  # None: the run's (or the style's) β
    alpha: Spread = 1.0
    blend: Spread = 0.0  # weight of a second style in every variant (0: none)
    blend_repeats: bool = True  # False where "styles" are dream layers: a repeat differs by its seed


@dataclass(frozen=True, slots=True)  # slots: a whole job holds millions of tasks
class Task:
    source: SourceRow
    style: Style
    k: int  # variant index for this source, 0..variants-1 (0 for an original)
    output: str  # relative to OUT, posix: images/[<split>/]<label>/<stem>__<style>__<k>.<ext>
    seed: int
    style2: Style | None = None  # blended in with weight `mix`
    mix: float = 0.0
    style_weight: float | None = None  # sampled β for this image; None: the run's
    alpha: float = 1.0  # 1: the stylized image; lower: blended back toward the source

    @property
    def original(self) -> bool:
        return self.style == ORIGINAL  # equality, not identity: tasks travel to worker processes

    @property
    def style_name(self) -> str:
        """What the manifest's style column says: ``a``, ``a+b`` for a blend, ``original``."""
        return blend_name(self.style, self.style2)

    @property
    def loss_overrides(self) -> dict[str, Any]:
        """Loss settings for this image: its sampled β, then the style's styles.yaml settings
        (the more specific wins)."""
        sampled = {} if self.style_weight is None else {"style_weight": self.style_weight}
        return {**sampled, **self.style.overrides}


@dataclass
class Plan:
    tasks: list[Task]
    left_out: int = 0  # rows of splits neither stylized nor copied
    targets: dict[str, int] = field(default_factory=dict)  # label -> images wanted (balance)
    short: dict[str, int] = field(default_factory=dict)  # label -> images it ends with, when not the target
    copies: int = 0  # variants that repeat an earlier one (too few styles to make them differ)
    job_tasks: int = 0  # the whole job's, when ``tasks`` are one shard's
    per_source: dict[SourceRow, int] = field(default_factory=dict)  # the whole job's tasks of each source
    variants: int = 0  # the whole job's stylized tasks (not copies of originals)


def stable_hash(*parts: object) -> int:
    """A 63-bit hash that is the same in every process and on every machine."""
    text = "\0".join(map(str, parts))
    # surrogateescape: a file name that is not UTF-8 (its bytes kept by Python as surrogates)
    # hashes too; every valid name gives the same bytes as plain UTF-8.
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 1


def sample(value: Spread, rng: random.Random | None, *, log: bool = False) -> float:
    """A number as is; a range sampled uniformly (``log``: uniformly in log space, for
    weights that span orders of magnitude)."""
    if not isinstance(value, tuple):
        return float(value)
    low, high = value
    assert rng is not None, "a range is drawn from the task's generator"
    if log and low > 0:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def choose_styles(styles: list[Style], count: int, seed: int, source: str) -> list[Style]:
    """``count`` styles drawn by weight, without repeats until the bank is used up.

    Each round ranks the bank by an exponential race (Efraimidis-Spirakis): style s scores
    -ln(u)/weight with u its own hash of (seed, source, s, round), and the lowest scores win.
    That is a weighted draw without replacement, and a style's score does not depend on the
    others, so removing one from the bank leaves every other source's choice as it was."""
    pool = [s for s in styles if s.weight > 0]
    chosen: list[Style] = []
    for round_ in range(-(-count // len(pool)) if pool else 0):
        # (score, place in the bank): equal scores keep the bank's order.
        scores = sorted((-math.log((stable_hash(seed, source, "draw", s.name, round_) + 0.5) / 2**63) / s.weight, i)
                        for i, s in enumerate(pool))  # fmt: skip
        chosen += [pool[i] for _, i in scores[: count - len(chosen)]]
    return chosen


def is_stylized(row: SourceRow, splits: tuple[str, ...]) -> bool:
    """Rows without a split are stylized; with one, only the chosen splits (train by default)."""
    return not row.split or row.split in splits


def variant_counts(
    rows: list[SourceRow], options: PlanOptions, base: int
) -> tuple[dict[SourceRow, int], dict[str, int]]:
    """Stylized variants per source, and the per-class target when balancing.

    Balance rule: target T = --target-per-class, else the largest class's count with ``base``
    variants per source (plus its originals with --include-originals). A class of n sources
    needs V = T - (n if originals else 0) variants: each source gets V // n, and the first
    V % n sources in seeded order one more. A class whose originals alone exceed T keeps them
    all and gets no variants (real images are never dropped). Each stylized split is balanced
    on its own. Targets are keyed by ``class_key``.
    """
    stylized = [r for r in rows if is_stylized(r, options.splits)]
    if not (options.balance or options.target_per_class):
        return {r: base for r in stylized}, {}
    splits: dict[str, dict[str, list[SourceRow]]] = defaultdict(lambda: defaultdict(list))
    for row in sorted(stylized, key=lambda r: stable_hash(options.seed, "balance", r.source)):
        splits[row.split][row.label].append(row)
    originals = 1 if options.include_originals else 0
    counts: dict[SourceRow, int] = {}
    targets: dict[str, int] = {}
    for classes in splits.values():
        target = options.target_per_class or max(len(members) * (base + originals) for members in classes.values())
        for members in classes.values():
            needed = max(0, target - originals * len(members))
            each, extra = divmod(needed, len(members))
            counts.update((row, each + (i < extra)) for i, row in enumerate(members))
            targets[class_key(members[0])] = target
    return counts, targets


def class_key(row: SourceRow) -> str:
    """A class within its split: ``train/ants``, or ``ants`` without splits."""
    return f"{row.split}/{row.label}" if row.split else row.label


def output_stems(rows: list[SourceRow], wanted: Callable[[SourceRow], bool] | None = None) -> dict[SourceRow, str]:
    """The stem each source's output names start with: its file's stem, unique within its
    split and label by construction. Two sources with one stem (x.jpg and x.webp, a/x.jpg and
    b/x.jpg) would write the same names: each gets a hash of its source path, made longer
    while it equals another source's own stem (a real x-560ab0.jpg) or another hashed one.
    Compared case-folded: A.jpg and a.jpg are one file name on macOS and Windows.

    Every row is counted, but only the ``wanted`` ones (a shard's) are returned."""

    def key(row: SourceRow, stem: str) -> str:
        # One string, not a tuple: neither a label nor a split holds "/" (manifest.label_problem).
        return f"{row.split}/{row.label}/{stem.casefold()}"

    counts = Counter(key(row, _stem(row.source)) for row in rows)
    hashed: set[str] = set()  # names given to clashing stems so far, in row order

    def taken(name: str) -> bool:
        return counts.get(name) == 1 or name in hashed

    stems = {}
    for row in rows:
        stem = _stem(row.source)
        if counts[key(row, stem)] > 1:
            digest, digits = f"{stable_hash(row.source):016x}", 6
            while taken(key(row, f"{stem}-{digest[-digits:]}")):
                digits += 1
                if digits > len(digest):  # the whole hash taken too: count on
                    digest = f"{digest}-{digits}"
            stem = f"{stem}-{digest[-digits:]}"
            hashed.add(key(row, stem))
        if wanted is None or wanted(row):
            stems[row] = stem
    return stems


@dataclass(frozen=True)
class Shard:
    """Part K of N of a job (a --shard, a torchrun rank), owning sources by hash."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N``; ValueError saying what is wrong."""
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes K/N, e.g. 0/4 (got {text!r})") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {text}: K must be in 0..N-1")
        return cls(index, count)

    def owns_source(self, row: SourceRow) -> bool:
        """Stable assignment by source hash: a source's shard never depends on the other rows,
        and every variant of a source is made where it is read and its content features
        computed."""
        return stable_hash(row.source) % self.count == self.index

    def owns(self, task: Task) -> bool:
        return self.owns_source(task.source)


def _stem(source: str) -> str:
    """``PurePosixPath(source).stem`` without building a path object (a million rows)."""
    name = source.rstrip("/").rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def plan(
    rows: list[SourceRow], styles: list[Style], options: PlanOptions, owner: Shard | None = None, *, tasks: bool = True
) -> Plan:
    """The job's tasks, or with ``owner`` only those of the sources it owns. Names, class
    targets and the round robin are worked out from every row either way, so a shard's tasks
    are exactly the whole plan's tasks of its sources. ``tasks=False``: only the counts
    (``per_source``, targets), for `validate`: a million rows x 3 are 3 M task objects."""
    mine = None if owner is None else owner.owns_source
    ext = FORMAT_EXT[options.fmt]
    pool = [s for s in styles if s.weight > 0]
    base = len(pool) if options.assignment is Assignment.ALL else options.per_image
    counts, targets = variant_counts(rows, options, base)
    planned = sum(counts.values())
    if planned > MAX_PLANNED_TASKS:  # the plan is held in memory: refuse before building it
        raise PlanTooLarge(f"this job would plan {planned:,} images, more than {MAX_PLANNED_TASKS:,} in one run; "
                           "lower --target-per-class or --per-image, or split the manifest")  # fmt: skip
    originals = int(options.include_originals)
    per_source = {row: counts.get(row, 0) + originals for row in rows if row in counts or originals}
    job_tasks = sum(per_source.values())
    if not tasks:
        left_out = 0 if originals else sum(row not in counts for row in rows)
        return Plan(tasks=[], left_out=left_out, targets=targets, short=_short(rows, counts, targets, options),
                    job_tasks=job_tasks, per_source=per_source, variants=planned)  # fmt: skip
    cycle_at = _cycle_offsets(counts, options.seed) if options.assignment is Assignment.CYCLE else {}
    stems = output_stems(rows, mine)
    drawn = any(isinstance(v, tuple) for v in (options.blend, options.alpha, options.style_weight))
    drawn = drawn or options.blend != 0  # every variant blends: its partner is drawn
    made: list[Task] = []
    left_out = copies = 0
    for row in rows:
        if row not in counts:
            left_out += not options.include_originals
        if row not in stems:  # another part's
            continue
        stem = stems[row]
        folder = f"images/{row.split}/{row.label}" if row.split else f"images/{row.label}"

        def output(style_name: str, k: int, folder: str = folder, stem: str = stem) -> str:
            return f"{folder}/{fit_name(NAME_SEPARATOR.join((stem, style_name, str(k))), ext)}"

        if options.include_originals:
            made.append(
                Task(row, ORIGINAL, 0, output("original", 0), stable_hash(options.seed, row.source, "original"))
            )
        if row not in counts:
            continue
        if options.assignment is Assignment.RANDOM:
            firsts = choose_styles(pool, counts[row], options.seed, row.source)
        else:
            firsts = [pool[(cycle_at.get(row, 0) + k) % len(pool)] for k in range(counts[row])]
        variants, repeated = _variants(row, firsts, pool, options, drawn, output)
        made += variants
        copies += repeated
    short = _short(rows, counts, targets, options)
    return Plan(tasks=made, left_out=left_out, targets=targets, short=short, copies=copies, job_tasks=job_tasks,
                per_source=per_source, variants=planned)  # fmt: skip


def _variants(
    row: SourceRow, firsts: list[Style], pool: list[Style], options: PlanOptions, drawn: bool,
    output: Callable[[str, int], str],
) -> tuple[list[Task], int]:  # fmt: skip
    """A source's variants, one per style in ``firsts``, with their sampled settings; and how
    many of them repeat an earlier one (too few styles to blend)."""
    made: list[Task] = []
    used: set[str] = set()
    seen: set[tuple[object, ...]] = set()
    uses: Counter[str] = Counter()
    copies = 0
    for style in firsts:
        k, uses[style.name] = uses[style.name], uses[style.name] + 1
        repeat = style.name in used and options.blend_repeats
        # The task's own generator, made only when something is drawn from it (a million
        # sources x 3 with fixed settings draw nothing).
        task_rng = random.Random(stable_hash(options.seed, row.source, "variant", style.name, k)) if (
            drawn or repeat) else None  # fmt: skip
        style2, mix = None, sample(options.blend, task_rng)  # type: ignore[arg-type]
        if mix > 0 or repeat:
            assert task_rng is not None
            if mix <= 0:  # a repeat: blend in another style instead of making a copy
                mix = task_rng.uniform(*REPEAT_MIX)
            style2 = _partner(pool, style, used, task_rng)
        style_weight = None if options.style_weight is None else sample(options.style_weight, task_rng, log=True)  # type: ignore[arg-type]
        name = blend_name(style, style2)
        task = Task(
            source=row, style=style, k=k, seed=stable_hash(options.seed, row.source, style.name, k),
            output=output(name, k),  # the name says which styles
            style2=style2, mix=round(mix, 4) if style2 else 0.0, style_weight=style_weight,
            alpha=round(sample(options.alpha, task_rng), 4),  # type: ignore[arg-type]
        )  # fmt: skip
        used.add(name)
        # With too few styles to blend (a one-style bank), a repeat is the same image again.
        settings = (task.style_name, task.mix, task.style_weight, task.alpha)
        copies += settings in seen and options.blend_repeats
        seen.add(settings)
        made.append(task)
    return made, copies


def _short(
    rows: list[SourceRow], counts: dict[SourceRow, int], targets: dict[str, int], options: PlanOptions
) -> dict[str, int]:
    """Classes that end with other than their balance target, from the counts (a shard's tasks
    are not all of them)."""
    final: Counter[str] = Counter()
    for row in rows:
        if is_stylized(row, options.splits):
            final[class_key(row)] += counts.get(row, 0) + options.include_originals
    return {key: final[key] for key, target in targets.items() if final[key] != target}


def plan_tasks(
    rows: list[SourceRow], styles: list[Style], *, per_image: int, seed: int, fmt: str = "png"
) -> list[Task]:
    """The plain plan: ``per_image`` random styles per source."""
    return plan(rows, styles, PlanOptions(per_image=per_image, seed=seed, fmt=fmt)).tasks


def _partner(pool: list[Style], style: Style, used: set[str], rng: random.Random) -> Style | None:
    """A second style for a blend: one not yet paired with ``style`` for this source."""
    others = [s for s in pool if s is not style]
    if not others:
        return None
    fresh = [s for s in others if f"{style.name}+{s.name}" not in used]
    candidates = fresh or others
    return rng.choices(candidates, weights=[s.weight for s in candidates])[0]


def _cycle_offsets(counts: dict[SourceRow, int], seed: int) -> dict[SourceRow, int]:
    """Round robin over the bank across the whole dataset, sources in seeded order: every
    style is used the same number of times, give or take one."""
    offsets, at = {}, 0
    for row in sorted(counts, key=lambda r: stable_hash(seed, "cycle", r.source)):
        offsets[row] = at
        at += counts[row]
    return offsets
