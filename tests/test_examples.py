"""examples/train_compare.py on a tiny synthetic split dataset (CPU, one epoch)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .conftest import FAST, make_dataset, make_styles
from .test_cli import invoke

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_compare.py"


def test_train_compare_trains_on_real_and_on_real_plus_stylized(tmp_path: Path) -> None:
    rows = [
        ("ants/a1.png", "ants"),
        ("ants/a2.png", "ants"),
        ("ants/a3.png", "ants"),
        ("bees/b1.png", "bees"),
        ("bees/b2.png", "bees"),
    ]
    manifest = make_dataset(tmp_path, rows=rows)
    splits = ["train", "train", "test", "train", "test"]
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",split"] + [f"{line},{s}" for line, s in zip(lines[1:], splits)]) + "\n")
    styles = make_styles(tmp_path)
    assert (
        invoke(
            "run",
            manifest,
            "--styles",
            styles,
            "--out",
            tmp_path / "aug",
            "--include-originals",
            "--per-image",
            "2",
            *FAST,
        )[0]
        == 0
    )
    assert invoke("run", manifest, "--styles", styles, "--out", tmp_path / "shifted", "--splits", "test", *FAST)[0] == 0

    spec = importlib.util.spec_from_file_location("train_compare", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(
        [
            str(tmp_path / "aug"),
            "--shifted",
            str(tmp_path / "shifted"),
            "--epochs",
            "1",
            "--size",
            "16",
            "--json",
            str(tmp_path / "results.json"),
        ]
    )
    assert results["classes"] == ["ants", "bees"]
    assert results["test_images"] == {"test (real)": 2, "test (style-shifted)": 2}
    models = results["models"]
    assert models["real only"]["train_images"] == 3 and models["real + stylized"]["train_images"] == 9
    assert all(0.0 <= m[k] <= 1.0 for m in models.values() for k in results["test_images"])
    assert json.loads((tmp_path / "results.json").read_text()) == results
