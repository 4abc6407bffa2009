"""``augment report OUT``: one HTML page to look at before training on a dataset.

A summary, counts per class and style, the final losses per style (an inline SVG chart),
the style bank, a contact sheet (each sampled source beside its variants, labelled with its
class and split), the failures and the timings. Thumbnails go to OUT/report/, never under
OUT/images/, so ImageFolder still sees only the dataset. The page uses relative links: it
opens from disk.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ..errors import AugmentError, OutputError, StyleBankError
from ..io.atomic import write_text
from ..io.images import ImageProblem, load_rgb
from ..io.lock import MARKER, is_marked
from ..io.styles import Style, load_style_bank
from .export import read_manifest

REPORT = "report.html"
THUMBS = "report"
STYLE_THUMBS = "styles"  # OUT/report/styles/: the style bank's thumbnails
THUMB_SIDE = 160
MAX_STYLE_THUMBS = 60  # a bank of hundreds of paintings: the first ones, and a count
# Per-image loss columns of the manifest (raw terms; total = α·content + β·style + λ·tv).
LOSS_TERMS = ("content_loss", "style_loss", "tv_loss", "total_loss")
# What each chart plots: the column and its title.
CHARTS = {
    "total_loss": "Final total loss per style",
    "dream_objective": "Final Deep Dream objective per style",
}
# run.json timing keys in words; unknown keys are shown as they are.
TIMINGS = {
    "weights_s": "Loading the weights",
    "model_build_s": "Building the model",
    "compute_s": "Computing the images",
    "seconds": "Whole run (wall clock)",
    "seconds_per_image": "Computing, per image",
    "batch_size": "Batch size",
    "oom_backoffs": "Batch halvings (out of memory)",
    "batch_fill": "Mean batch fill (images per pass / batch size)",
    "image_steps": "Image iterations",
    "slot_steps": "Batch slots offered (passes x batch size)",
    "peak_memory_mb": "Peak GPU memory",
}


class ReportError(AugmentError):
    """OUT is not an augment output."""


def _read_outputs(out: Path) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """manifest.csv, run.json and failures.csv, each checked: a file that is not what augment
    writes is named in one line (exit 2), never a traceback."""
    try:
        manifest = read_manifest(out)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:  # UnicodeDecodeError too
        reason = " ".join(str(err).split())[:200]
        raise ReportError(f"{out / 'manifest.csv'}: not a manifest augment wrote ({reason})") from None
    missing = [c for c in ("path", "label", "style") if c not in manifest.columns]
    if missing:
        raise ReportError(f"{out / 'manifest.csv'}: no {', '.join(missing)} column; not a manifest augment wrote")
    run: Any = {}
    if (out / "run.json").is_file():
        try:
            run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        except ValueError as err:
            raise ReportError(f"{out / 'run.json'}: not readable JSON ({err})") from None
        if not isinstance(run, dict):
            raise ReportError(f"{out / 'run.json'}: not a run record (expected a JSON object)")
    failures = pd.DataFrame()
    if (out / "failures.csv").is_file():
        try:
            failures = pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ReportError(f"{out / 'failures.csv'}: not readable ({' '.join(str(err).split())[:200]})") from None
    return manifest, run, failures


def write_report(out: str | Path, *, sample: int = 12, seed: int = 0) -> Path:
    """Write OUT/report.html (and its thumbnails); returns its path."""
    out = Path(out)
    if not (out / "manifest.csv").is_file():
        raise ReportError(f"{out}: no manifest.csv here; is it an augment output folder?")
    if not is_marked(out):  # report.html and report/ are replaced: only in a folder augment made
        raise ReportError(f"{out} was not made by augment (no {MARKER} in it); report reads augment's output folders")
    manifest, run, failures = _read_outputs(out)
    thumbs = out / THUMBS
    try:  # a read-only or full OUT: exit 3 with one line, like a run
        if thumbs.exists():
            shutil.rmtree(thumbs)  # only augment writes here
        thumbs.mkdir()
        sections = [
            _summary(out, run, manifest, failures),
            _counts(manifest),
            _losses(manifest),
            _style_bank(run, manifest, thumbs),
            _contact_sheet(out, run, manifest, thumbs, sample, seed),
            _failures(failures),
            _timings(run),
        ]
        page = _PAGE.format(title=html.escape(f"augment report: {out.resolve().name}"), body="\n".join(sections))
        write_text(out / REPORT, page)
    except OSError as err:
        raise OutputError(f"cannot write the report in {out}: {err}") from err
    return out / REPORT


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], *, cls: str = "grid", row_headers: int = 1) -> str:
    """A table; the first ``row_headers`` cells of each row are <th>. Cells are escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<{'th' if i < row_headers else 'td'}>{_e(v)}</{'th' if i < row_headers else 'td'}>"
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _number(value: float) -> str:
    return f"{value:.3g}"


def _summary(out: Path, run: dict[str, Any], manifest: pd.DataFrame, failures: pd.DataFrame) -> str:
    counts = run.get("counts", {})
    config = run.get("config", {})
    items = {
        "output": out.resolve(),
        "status": f"{run.get('status', '?')} (exit {run.get('exit_code', '?')}: {run.get('exit_reason', '')})",
        "images": len(manifest),
        "classes": manifest["label"].nunique(),
        "failed rows": len(failures),
        # written counts every image in the manifest: those up to date (skipped) and stale ones
        # kept with --keep-stale (kept_stale) were there before this run.
        "made / up to date / removed this run": (
            f"{counts.get('written', 0) - counts.get('skipped', 0) - counts.get('kept_stale', 0)} / "
            f"{counts.get('skipped', 0)} / {counts.get('removed', 0)}"
        ),
        "engine": run.get("engine", ""),
        "weights": run.get("weights", ""),
        "size, iterations": f"{config.get('size', '')} px, {config.get('iterations', '')}",
        "finished": run.get("finished", ""),
    }
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items.items())
    warning = ""
    if str(run.get("weights", "")).startswith("random"):
        warning = '<p class="warn">Made with random weights: a smoke test, not a dataset to train on.</p>'
    return f"<h1>augment report</h1>{warning}<table class='kv'>{rows}</table>"


def _counts(manifest: pd.DataFrame) -> str:
    if manifest.empty:
        return "<h2>Images per class and style</h2><p>No images.</p>"
    group = ["split", "label"] if (manifest["split"] != "").any() else ["label"]
    table = pd.crosstab([manifest[c] for c in group], manifest["style"], margins=True, margins_name="total")
    styles = sorted(table.columns.drop("total"), key=lambda s: (s != "original", s))
    table = table[[*styles, "total"]]
    rows = []
    for i, (key, counts) in enumerate(table.iterrows()):
        keys = list(key) if isinstance(key, tuple) else [key]
        keys = ["total", *[""] * (len(group) - 1)] if i == len(table) - 1 else keys  # the margins row
        rows.append([*keys, *counts.tolist()])
    return f"<h2>Images per class and style</h2>{_table([*group, *styles, 'total'], rows, row_headers=len(group))}"


def _losses(manifest: pd.DataFrame) -> str:
    """A horizontal bar per style: the median final loss of its images, a line from the lowest
    to the highest, a dot per image; then the median of each loss term. Blends (``a+b``) are
    styles of their own; the copied originals have no loss."""
    made = manifest[manifest["style"] != "original"]
    charts = []
    for column, title in CHARTS.items():
        if column not in made:
            continue
        values = pd.to_numeric(made[column], errors="coerce")
        if values.notna().any():
            chart = _bar_chart(values.groupby(made["style"]).agg(list), column)
            scale = " (log scale)" if "data-scale='log'" in chart else ""
            charts.append(f"<h3>{_e(title + scale)}</h3>{chart}")
    if not charts:
        return ""
    terms = [c for c in LOSS_TERMS if c in made and pd.to_numeric(made[c], errors="coerce").notna().any()]
    table = ""
    if terms:
        numbers = made[terms].apply(pd.to_numeric, errors="coerce")
        medians = numbers.groupby(made["style"]).median()
        sizes = numbers.groupby(made["style"]).size()
        rows = [[s, sizes[s], *(_number(v) if pd.notna(v) else "" for v in medians.loc[s])] for s in medians.index]
        table = (
            "<p>Median of each term per style: the raw terms, before their weights "
            "(total = α·content + β·style + λ·tv).</p>"
            + _table(["style", "images", *(t.removesuffix("_loss") for t in terms)], rows)
        )
    return f"<h2>Losses per style</h2>{''.join(charts)}{table}"


def _bar_chart(groups: pd.Series, column: str) -> str:
    """Inline SVG, drawn by hand: one row per style (``groups``: style -> list of values).
    Values spread over more than a factor of 20 (all positive) get a log axis."""
    groups = groups.map(lambda vs: [float(v) for v in vs if pd.notna(v)])
    groups = groups[groups.map(len) > 0]
    label_w, bar_w, row_h, top = 190, 560, 28, 26
    width, height = label_w + bar_w + 130, top + row_h * len(groups) + 8
    high, low = max(max(vs) for vs in groups), min(min(vs) for vs in groups)
    log = low > 0 and high / low > 20
    if log:
        lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
        step = max(1, math.ceil((hi - lo) / 8))
        ticks = [10.0**e for e in range(lo, hi + 1, step)]
        span = (lo, hi)
    else:
        span = (min(0.0, low), max(0.0, high) if max(0.0, high) > min(0.0, low) else 1.0)
        ticks = [span[0], (span[0] + span[1]) / 2, span[1]]

    def x(value: float) -> float:
        position = math.log10(value) if log else value
        return round(label_w + bar_w * (position - span[0]) / (span[1] - span[0]), 1)

    parts = [
        f"<svg class='chart' data-column='{_e(column)}' data-scale='{'log' if log else 'linear'}' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' xmlns='http://www.w3.org/2000/svg' role='img'>",
        f"<title>{_e(column)} per style</title>",
    ]
    for tick in ticks:
        parts.append(f"<line x1='{x(tick)}' y1='{top - 6}' x2='{x(tick)}' y2='{height - 8}' class='grid'/>")
        parts.append(f"<text x='{x(tick)}' y='{top - 10}' text-anchor='middle' class='tick'>{_number(tick)}</text>")
    origin = label_w if log else x(0.0)  # bars start at the axis (log) or at zero
    for i, (style, values) in enumerate(groups.items()):
        y = top + i * row_h
        mid = y + row_h / 2
        median = float(pd.Series(values).median())
        parts.append(
            f"<text x='{label_w - 8}' y='{mid + 4}' text-anchor='end' class='label'>{_e(style)}</text>"
            f"<rect class='bar' data-style='{_e(style)}' x='{min(origin, x(median))}' y='{y + 5}' "
            f"width='{max(abs(x(median) - origin), 1)}' height='{row_h - 10}'><title>{_e(style)}: median "
            f"{_number(median)}, {len(values)} images</title></rect>"
            f"<line x1='{x(min(values))}' y1='{mid}' x2='{x(max(values))}' y2='{mid}' class='range'/>"
            + "".join(f"<circle cx='{x(v)}' cy='{mid}' r='2.5' class='dot'/>" for v in values)
            + f"<text x='{label_w + bar_w + 10}' y='{mid + 4}' class='value'>median {_number(median)}, "
            f"n={len(values)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _style_bank(run: dict[str, Any], manifest: pd.DataFrame, thumbs: Path) -> str:
    folder = _styles_folder(run)
    if folder is None:
        named = run.get("config", {}).get("styles")
        return f"<h2>Style bank</h2><p>{_e(f'Style folder {named} not found.' if named else 'No style bank.')}</p>"
    try:
        bank: list[Style] = load_style_bank(folder)
    except StyleBankError as err:
        return f"<h2>Style bank</h2><p>{_e(err)}</p>"
    used: dict[str, int] = {}
    for style in manifest["style"]:
        for name in set(str(style).split("+")):
            used[name] = used.get(name, 0) + 1
    cells = []
    for style in bank[:MAX_STYLE_THUMBS]:
        n = used.get(style.name, 0)
        caption = style.name + (f" ({style.display_name})" if style.display_name != style.path.stem else "")
        caption += f" · {n} image{'s' if n != 1 else ''}"
        picture = _thumbnail(style.path, thumbs, caption, folder=STYLE_THUMBS)
        cells.append(f"<div class='style-card' title='{_e(style.path)}'>{picture}<span>{_e(caption)}</span></div>")
    more = f"<p>… and {len(bank) - MAX_STYLE_THUMBS} more.</p>" if len(bank) > MAX_STYLE_THUMBS else ""
    note = f"{len(bank)} style images in {folder}; {sum(1 for s in bank if s.name in used)} used in this dataset."
    return f"<h2>Style bank</h2><p>{_e(note)}</p><div class='bank'>{''.join(cells)}</div>{more}"


def _styles_folder(run: dict[str, Any]) -> Path | None:
    """The style folder of the run. A relative one is relative to where the run started,
    which run.json gives away: inputs_root is that folder joined with the manifest's."""
    config = run.get("config", {})
    if not config.get("styles"):
        return None
    styles = Path(config["styles"])
    candidates = [styles] if styles.is_absolute() else []
    manifest, root = config.get("manifest"), run.get("inputs_root")
    if not styles.is_absolute() and manifest and root and not Path(manifest).is_absolute():
        root_parts = Path(root).parts
        for rel in (Path(manifest).parent, Path(manifest)):
            n = len(rel.parts)
            if root_parts[len(root_parts) - n :] == rel.parts:
                candidates.append(Path(*root_parts[: len(root_parts) - n]) / styles)
    candidates.append(styles.resolve())
    return next((c for c in candidates if c.is_dir()), None)


def _contact_sheet(out: Path, run: dict[str, Any], manifest: pd.DataFrame, thumbs: Path, sample: int, seed: int) -> str:
    sources = sorted(set(manifest["source"]))
    picked = sorted(random.Random(seed).sample(sources, min(sample, len(sources))))
    root = Path(run["inputs_root"]) if run.get("inputs_root") else None
    sheet = []
    for source in picked:
        variants = manifest[manifest["source"] == source].sort_values(
            ["style", "k"], key=lambda c: c.map(lambda v: (v != "original", v)) if c.name == "style" else c
        )
        first = variants.iloc[0]
        originals = variants[variants["style"] == "original"]
        if len(originals):  # the copy in the dataset is the source: show it once
            cells = [
                _thumb_cell(out / originals.iloc[0]["path"], thumbs, "source (original)", originals.iloc[0]["path"])
            ]
            variants = variants[variants["style"] != "original"]
        else:
            cells = [_thumb_cell(_source_path(source, root), thumbs, "source", source)]
        for row in variants.to_dict("records"):
            caption = row["style"] + (f" · mix {row['style_mix']}" if row.get("style_mix") else "") + (
                f" · α {row['alpha']}" if row.get("alpha") not in ("", "1.0", None) else "")  # fmt: skip
            cells.append(_thumb_cell(out / row["path"], thumbs, caption, row["path"]))
        split = f"<span class='split'>{_e(first['split'])}</span>" if first.get("split") else ""
        label = (
            f"<div class='row-label'><span class='class'>{_e(first['label'])}</span>{split}"
            f"<span class='path' title='{_e(source)}'>{_e(Path(source).name)}</span></div>"
        )
        sheet.append(
            (first["label"], first.get("split", ""), source, f"<div class='sheet-row'>{label}{''.join(cells)}</div>")
        )
    rows = [row for *_, row in sorted(sheet, key=lambda r: r[:3])]  # grouped by class
    note = (
        f"{len(picked)} of {len(sources)} sources, drawn with seed {seed}; each row is labelled with its class "
        "(and split) and starts with the source."
    )
    return f"<h2>Contact sheet</h2><p>{_e(note)}</p>{''.join(rows)}"


def _source_path(source: str, root: Path | None) -> Path | None:
    path = Path(source)
    if path.is_absolute():
        return path
    return root / path if root else None


def _thumb_cell(path: Path | None, thumbs: Path, caption: str, title: str) -> str:
    """A contact-sheet cell: the thumbnail (written to ``thumbs``) and its caption."""
    picture = _thumbnail(path, thumbs, caption)
    return f"<figure title='{_e(title)}'>{picture}<figcaption>{_e(caption)}</figcaption></figure>"


def _thumbnail(path: Path | None, thumbs: Path, alt: str, *, folder: str = "") -> str:
    """<img> of a thumbnail of ``path`` written to ``thumbs``/``folder``, or a grey box saying why not."""
    name = None
    if path is not None and path.is_file():
        name = f"{hashlib.sha1(str(path).encode()).hexdigest()[:16]}.jpg"
        try:
            image = load_rgb(path)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
            (thumbs / folder).mkdir(exist_ok=True)
            image.save(thumbs / folder / name, quality=85)
        except ImageProblem:
            name = None
    if name is None:
        return f"<div class='missing'>{'not found' if path is None or not path.is_file() else 'not readable'}</div>"
    src = "/".join(p for p in (THUMBS, folder, name) if p)
    return f"<img src='{src}' alt='{_e(alt)}'>"


def _failures(failures: pd.DataFrame) -> str:
    if failures.empty:
        return "<h2>Failures</h2><p>None.</p>"
    shown = failures.head(200)
    more = f"<p>… and {len(failures) - 200} more in failures.csv.</p>" if len(failures) > 200 else ""
    by_reason = failures["reason"].value_counts()
    widths = {"row": "5em", "label": "10%", "reason": "12%", "path": "30%"}  # the message takes the rest
    cols = "".join(f"<col style='width: {widths[c]}'>" if c in widths else "<col>" for c in shown.columns)
    listing = _table(list(shown.columns), shown.values.tolist(), cls="grid failures", row_headers=0)
    listing = listing.replace("<thead>", f"<colgroup>{cols}</colgroup><thead>", 1)
    return (
        f"<h2>Failures ({len(failures)})</h2>"
        f"{_table(['reason', 'rows'], [[r, n] for r, n in by_reason.items()], row_headers=0)}{listing}{more}"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _timing(key: str, value: Any) -> tuple[str, str]:
    """(what, how much) in words: "model_build_s", 0.266 -> ("Building the model", "0.27 s")."""
    name = TIMINGS.get(key) or key.removesuffix("_s").replace("_", " ").capitalize()
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return name, "" if value is None else str(value)
    if key.endswith("_s") or key in ("seconds", "seconds_per_image"):
        return name, _duration(value)
    if key.endswith("_mb"):
        return name, f"{value / 1000:.1f} GB" if value >= 1000 else f"{value:.0f} MB"
    return name, f"{value:g}"


def _timings(run: dict[str, Any]) -> str:
    timings = run.get("timings", {})
    if not timings:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in (_timing(*i) for i in timings.items()))
    parts = ""
    if len(run.get("parts", [])) > 1:  # workers, shards or ranks: each one's share
        table = [
            [p.get("part", ""), p.get("device", ""), p.get("counts", {}).get("written", ""),
             _timing("compute_s", p.get("timings", {}).get("compute_s"))[1],
             _timing("seconds", p.get("timings", {}).get("seconds"))[1]]
            for p in run["parts"]
        ]  # fmt: skip
        parts = _table(["part", "device", "images", "computing", "wall clock"], table)
    device = run.get("device", "")
    return f"<h2>Timings</h2><p>{_e(device)}</p><table class='kv timings'>{rows}</table>{parts}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table.grid, table.kv {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
table.grid td, table.grid th, table.kv td, table.kv th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
table.grid td {{ text-align: right; }}
table.failures {{ table-layout: fixed; width: 100%; }}
table.failures td {{ text-align: left; overflow-wrap: anywhere; word-break: break-word; vertical-align: top; }}
h3 {{ font-size: 1em; margin: 1em 0 0.3em; }}
svg.chart {{ font-size: 12px; display: block; }}
svg.chart .bar {{ fill: #7ba3d0; }}
svg.chart .range {{ stroke: #333; stroke-width: 1.5; }}
svg.chart .dot {{ fill: #c0392b; fill-opacity: 0.7; }}
svg.chart .grid {{ stroke: #ddd; }}
svg.chart .tick {{ fill: #777; }}
.bank {{ display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 1.5em; }}
.style-card {{ width: 164px; font-size: 12px; word-break: break-all; }}
.style-card img {{ width: 160px; height: 120px; object-fit: contain; background: #f3f3f3; display: block; }}
.sheet-row {{ display: flex; gap: 8px; margin-bottom: 12px; flex-wrap: wrap; align-items: flex-start; }}
.row-label {{ width: 130px; font-size: 13px; display: flex; flex-direction: column; gap: 2px; }}
.row-label .class {{ font-weight: bold; font-size: 15px; }}
.row-label .split {{ color: #555; }}
.row-label .path {{ color: #777; font-size: 11px; word-break: break-all; }}
figure {{ margin: 0; width: 164px; }}
figure img {{ width: 160px; height: 120px; object-fit: contain; background: #f3f3f3; display: block; }}
figcaption {{ font-size: 12px; word-break: break-all; }}
.row-label + figure {{ border-right: 3px solid #888; padding-right: 8px; }}
.missing {{ width: 160px; height: 120px; background: #eee; display: flex; align-items: center;
            justify-content: center; }}
.warn {{ background: #fee; border: 1px solid #c66; padding: 0.5em; }}
</style></head>
<body>
{body}
</body></html>
"""
