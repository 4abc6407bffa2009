"""``augment report OUT``: the page is parsed, not grepped: losses per style, the style bank,
labelled contact-sheet rows, the tables and the timings."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from augment.outputs.report import _bar_chart, _duration, _timing

from .conftest import FAST, make_dataset, make_styles
from .test_cli import invoke

VOID = {"meta", "img", "col", "br", "hr", "input", "link"}
LONG_NAME = "a_very_long_file_name_without_any_break_" * 6 + ".png"


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None
    text: str = ""

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and (cls is None or cls in child.classes()):
                found.append(child)
            found.extend(child.find_all(tag, cls))
        return found

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = self.current = Node("document")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node.parent is not None and node.tag != tag:
            node = node.parent
        assert node.tag == tag, f"</{tag}> closes nothing"
        self.current = node.parent  # type: ignore[assignment]

    def handle_data(self, data: str) -> None:
        self.current.children.append(Node("#text", text=data, parent=self.current))


def parse(page: str) -> Node:
    parser = _Parser()
    parser.feed(page)
    parser.close()
    assert parser.current is parser.root, "unclosed elements"
    return parser.root


def section(page: Node, title: str) -> list[Node]:
    """The nodes after the <h2> that starts with ``title``, up to the next <h2>."""
    body = page.find_all("body")[0].children
    start = next(i for i, n in enumerate(body) if n.tag == "h2" and n.all_text().startswith(title))
    end = next((i for i, n in enumerate(body) if i > start and n.tag == "h2"), len(body))
    return body[start + 1 : end]


def find(nodes: list[Node], tag: str, cls: str | None = None) -> list[Node]:
    holder = Node("holder", children=nodes)
    return holder.find_all(tag, cls)


@dataclass
class Report:
    out: Path
    rows: pd.DataFrame
    page: Node
    html: str


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    """One run for the module: 2 classes with a split column, 2 styles, originals kept, and a
    row whose path is too long to fit a table cell (it fails: no such file)."""
    root = tmp_path_factory.mktemp("report")
    manifest = make_dataset(root)
    lines = manifest.read_text().splitlines() + [f"ants/{LONG_NAME},ants"]
    manifest.write_text("\n".join([lines[0] + ",split"] + [f"{line},train" for line in lines[1:]]) + "\n")
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUGMENT_OFFLINE", "1")
        patch.setenv("TORCH_HOME", str(root / "torch_home"))
        args = ["--styles", make_styles(root), "--per-image", "2", "--include-originals", "--out", out, *FAST]
        code, _, err = invoke("run", manifest, *args)
        assert code == 1, err  # the long-named row fails
        code, _, err = invoke("report", out)
        assert code == 0, err
    text = (out / "report.html").read_text()
    yield Report(out, pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False), parse(text), text)


def test_report_plots_the_final_loss_per_style(report: Report) -> None:
    stylized = report.rows[report.rows["style"] != "original"]
    charts = find(section(report.page, "Losses per style"), "svg", "chart")
    assert [c.attrs["data-column"] for c in charts] == ["total_loss"]
    bars = charts[0].find_all("rect", "bar")
    assert sorted(b.attrs["data-style"] for b in bars) == sorted(set(stylized["style"])) == ["grey_stone", "waves"]
    assert all(float(b.attrs["width"]) > 0 for b in bars)
    assert len(charts[0].find_all("circle", "dot")) == len(stylized)  # a dot per image, none for the originals
    table = find(section(report.page, "Losses per style"), "table")[0]
    assert [th.all_text() for th in table.find_all("thead")[0].find_all("th")] == [
        "style", "images", "content", "style", "tv", "total",
    ]  # fmt: skip
    medians = stylized.assign(total=pd.to_numeric(stylized["total_loss"])).groupby("style")["total"].median()
    for tr in table.find_all("tbody")[0].find_all("tr"):
        cells = [c.all_text() for c in tr.children if c.tag in ("th", "td")]
        assert float(cells[-1]) == pytest.approx(medians[cells[0]], rel=1e-2)


def test_the_loss_chart_goes_log_when_the_losses_spread_and_orders_bars_by_median() -> None:
    spread = _bar_chart(pd.Series({"a": [0.01, 0.02], "b": [5.0, 50.0]}), "total_loss")
    close = _bar_chart(pd.Series({"a": [1.0, 2.0], "b": [3.0, 4.0]}), "total_loss")
    assert "data-scale='log'" in spread and "data-scale='linear'" in close
    for chart in (spread, close):
        bars = {b.attrs["data-style"]: float(b.attrs["width"]) for b in parse(chart).find_all("rect", "bar")}
        assert 0 < bars["a"] < bars["b"]


def test_report_shows_the_style_bank(report: Report) -> None:
    figures = find(section(report.page, "Style bank"), "div", "style-card")
    captions = [f.find_all("span")[0].all_text() for f in figures]
    assert len(figures) == 2 and [c.split(" ")[0] for c in captions] == ["grey_stone", "waves"]
    used = report.rows["style"].value_counts()
    assert all(f"{used[c.split(' ')[0]]} images" in c for c in captions)
    for figure in figures:
        (img,) = figure.find_all("img")
        assert img.attrs["src"].startswith("report/styles/") and (report.out / img.attrs["src"]).is_file()


def test_a_relative_style_folder_is_found_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path)
    make_styles(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke("run", "data/manifest.csv", "--styles", "styles", "--out", "out", *FAST)
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "styles" no longer resolves from here
    assert invoke("report", "../out")[0] == 0
    bank = section(parse((tmp_path / "out" / "report.html").read_text()), "Style bank")
    assert len(find(bank, "img")) == 2 and not find(bank, "div", "missing")


def test_the_counts_table_has_one_header_row_and_no_empty_header(report: Report) -> None:
    (table,) = find(section(report.page, "Images per class and style"), "table")
    (head,) = table.find_all("thead")
    (header,) = head.find_all("tr")
    assert [th.all_text() for th in header.find_all("th")] == [
        "split", "label", "original", "grey_stone", "waves", "total",
    ]  # fmt: skip
    for tr in table.find_all("tr"):
        assert any(cell.all_text().strip() for cell in tr.children if cell.tag in ("th", "td"))
    body = [[c.all_text() for c in tr.children if c.tag in ("th", "td")] for tr in table.find_all("tr")[1:]]
    assert body[0][:2] == ["train", "ants"] and body[0][-1] == str((report.rows["label"] == "ants").sum())
    assert body[-1][0] == "total" and body[-1][-1] == str(len(report.rows))


def test_contact_sheet_rows_are_labelled_with_class_and_split(report: Report) -> None:
    rows = find(section(report.page, "Contact sheet"), "div", "sheet-row")
    assert len(rows) == report.rows["source"].nunique() == 3
    labels = report.rows.groupby("source")["label"].first()
    seen = []
    for row in rows:
        (label,) = row.find_all("div", "row-label")
        source = label.find_all("span", "path")[0].attrs["title"]
        assert label.find_all("span", "path")[0].all_text() == Path(source).name
        assert label.find_all("span", "class")[0].all_text() == labels[source]
        assert label.find_all("span", "split")[0].all_text() == "train"
        seen.append(labels[source])
    assert seen == sorted(seen)  # grouped by class


def test_with_originals_a_contact_sheet_row_shows_the_source_once(report: Report) -> None:
    for row in find(section(report.page, "Contact sheet"), "div", "sheet-row"):
        source = row.find_all("span", "path")[0].attrs["title"]
        variants = report.rows[report.rows["source"] == source]
        figures = row.find_all("figure")
        titles = [f.attrs["title"] for f in figures]
        assert len(figures) == len(variants) == 3  # the original copy stands for the source: not both
        assert titles[0] == variants.loc[variants["style"] == "original", "path"].item()
        assert source not in titles and len(set(titles)) == len(titles)
        assert len({f.find_all("img")[0].attrs["src"] for f in figures}) == len(figures)


def test_the_failures_table_wraps_long_paths_and_messages(report: Report) -> None:
    tables = find(section(report.page, "Failures (1)"), "table")
    listing = next(t for t in tables if "failures" in t.classes())
    assert LONG_NAME in listing.all_text() and listing.find_all("colgroup")
    style = report.page.find_all("style")[0].all_text()
    rule = style[style.index("table.failures {") :].split("}")[0]
    assert "table-layout: fixed" in rule and "width: 100%" in rule
    cells = style[style.index("table.failures td {") :].split("}")[0]
    assert "overflow-wrap: anywhere" in cells


@pytest.mark.skipif(
    not shutil.which("chromium"),
    reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_the_page_fits_1280_px_in_a_browser(report: Report, tmp_path: Path) -> None:
    probe = report.out / "probe.html"
    script = "<script>document.body.setAttribute('data-width', document.documentElement.scrollWidth)</script>"
    probe.write_text(report.html.replace("</body>", f"{script}</body>"))
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    flags += " --disable-component-update --disable-sync --window-size=1280,1000 --dump-dom"
    result = subprocess.run(
        ["chromium", *flags.split(), f"--user-data-dir={tmp_path / 'profile'}", probe.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    probe.unlink()
    width = parse(result.stdout).find_all("body")[0].attrs.get("data-width")
    assert width is not None, result.stderr[-2000:]
    assert int(width) <= 1280


def test_timings_are_named_in_words_with_units(report: Report) -> None:
    table = find(section(report.page, "Timings"), "table")[0]
    names = [th.all_text() for th in table.find_all("th")]
    assert "Building the model" in names and "Loading the weights" in names and "Computing the images" in names
    assert not [n for n in names if "_" in n]
    values = dict(zip(names, (td.all_text() for td in table.find_all("td"))))
    assert values["Building the model"].endswith(" s") and values["Batch size"] == "4"
    assert _timing("model_build_s", 0.266) == ("Building the model", "0.27 s")
    assert _timing("queue_wait_s", 75) == ("Queue wait", "1 min 15 s")
    assert _timing("peak_memory_mb", 2500.0) == ("Peak GPU memory", "2.5 GB")
    assert (_duration(12.34), _duration(3725)) == ("12.3 s", "1 h 02 min")
