"""``augment report OUT``: one HTML page to look at before training on a dataset.

Counts per class and style, a contact sheet (each sampled source beside its variants),
the failures and the timings. Thumbnails go to OUT/report/, never under OUT/images/, so
ImageFolder still sees only the dataset. The page uses relative links: it opens from disk.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from .atomic import write_text
from .errors import AugmentError, OutputError
from .export import read_manifest
from .images import ImageProblem, load_rgb

REPORT = "report.html"
THUMBS = "report"
THUMB_SIDE = 160


class ReportError(AugmentError):
    """OUT is not an augment output."""


def write_report(out: str | Path, *, sample: int = 12, seed: int = 0) -> Path:
    """Write OUT/report.html (and its thumbnails); returns its path."""
    out = Path(out)
    if not (out / "manifest.csv").is_file():
        raise ReportError(f"{out}: no manifest.csv here; is it an augment output folder?")
    manifest = read_manifest(out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else {}
    failures = (
        pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
        if (out / "failures.csv").is_file()
        else pd.DataFrame()
    )
    thumbs = out / THUMBS
    try:  # a read-only or full OUT: exit 3 with one line, like a run
        if thumbs.exists():
            shutil.rmtree(thumbs)  # only augment writes here
        thumbs.mkdir()
        sections = [
            _summary(out, run, manifest, failures),
            _counts(manifest),
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


def _table(frame: pd.DataFrame, *, index: bool = True) -> str:
    return frame.to_html(index=index, escape=True, border=0, classes="grid", na_rep="")


def _summary(out: Path, run: dict[str, Any], manifest: pd.DataFrame, failures: pd.DataFrame) -> str:
    counts = run.get("counts", {})
    config = run.get("config", {})
    items = {
        "output": out.resolve(),
        "status": f"{run.get('status', '?')} (exit {run.get('exit_code', '?')}: {run.get('exit_reason', '')})",
        "images": len(manifest),
        "classes": manifest["label"].nunique(),
        "failed rows": len(failures),
        "made / kept / removed this run": (
            f"{counts.get('written', 0) - counts.get('skipped', 0)} / {counts.get('skipped', 0)} / "
            f"{counts.get('removed', 0)}"
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
    return f"<h2>Images per class and style</h2>{_table(table)}"


def _contact_sheet(out: Path, run: dict[str, Any], manifest: pd.DataFrame, thumbs: Path, sample: int, seed: int) -> str:
    sources = sorted(set(manifest["source"]))
    picked = sorted(random.Random(seed).sample(sources, min(sample, len(sources))))
    root = Path(run["inputs_root"]) if run.get("inputs_root") else None
    rows = []
    for source in picked:
        variants = manifest[manifest["source"] == source].sort_values(
            ["style", "k"], key=lambda c: c.map(lambda v: (v != "original", v)) if c.name == "style" else c
        )
        first = variants.iloc[0]
        cells = [_thumb_cell(_source_path(source, root), thumbs, "source", f"{first['label']}: {source}")]
        for row in variants.to_dict("records"):
            caption = row["style"] + (f" · mix {row['style_mix']}" if row.get("style_mix") else "") + (
                f" · α {row['alpha']}" if row.get("alpha") not in ("", "1.0", None) else "")  # fmt: skip
            cells.append(_thumb_cell(out / row["path"], thumbs, caption, row["path"]))
        rows.append(f"<div class='sheet-row'>{''.join(cells)}</div>")
    note = (
        f"{len(picked)} of {len(sources)} sources, drawn with seed {seed}; the first image of each row is the source."
    )
    return f"<h2>Contact sheet</h2><p>{_e(note)}</p>{''.join(rows)}"


def _source_path(source: str, root: Path | None) -> Path | None:
    path = Path(source)
    if path.is_absolute():
        return path
    return root / path if root else None


def _thumb_cell(path: Path | None, thumbs: Path, caption: str, title: str) -> str:
    name = None
    if path is not None and path.is_file():
        name = f"{hashlib.sha1(str(path).encode()).hexdigest()[:16]}.jpg"
        try:
            image = load_rgb(path)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
            image.save(thumbs / name, quality=85)
        except ImageProblem:
            name = None
    missing = "not found" if path is None or not path.is_file() else "not readable"
    picture = f"<img src='{THUMBS}/{name}' alt='{_e(caption)}'>" if name else f"<div class='missing'>{missing}</div>"
    return f"<figure title='{_e(title)}'>{picture}<figcaption>{_e(caption)}</figcaption></figure>"


def _failures(failures: pd.DataFrame) -> str:
    if failures.empty:
        return "<h2>Failures</h2><p>None.</p>"
    shown = failures.head(200)
    more = f"<p>… and {len(failures) - 200} more in failures.csv.</p>" if len(failures) > 200 else ""
    by_reason = failures["reason"].value_counts().rename_axis("reason").reset_index(name="rows")
    return f"<h2>Failures ({len(failures)})</h2>{_table(by_reason, index=False)}{_table(shown, index=False)}{more}"


def _timings(run: dict[str, Any]) -> str:
    timings = run.get("timings", {})
    if not timings:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in timings.items())
    device = run.get("device", "")
    return f"<h2>Timings</h2><p>{_e(device)}</p><table class='kv'>{rows}</table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table.grid, table.kv {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
table.grid td, table.grid th, table.kv td, table.kv th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.sheet-row {{ display: flex; gap: 8px; margin-bottom: 12px; flex-wrap: wrap; }}
figure {{ margin: 0; width: 164px; }}
figure img {{ max-width: 160px; max-height: 160px; display: block; }}
figcaption {{ font-size: 12px; word-break: break-all; }}
.sheet-row figure:first-child {{ border-right: 3px solid #888; padding-right: 8px; }}
.missing {{ width: 160px; height: 100px; background: #eee; display: flex; align-items: center;
            justify-content: center; }}
.warn {{ background: #fee; border: 1px solid #c66; padding: 0.5em; }}
</style></head>
<body>
{body}
</body></html>
"""
