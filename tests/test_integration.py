"""Real photos and paintings from ../shared/data (skipped, with the reason, when absent)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image


from .conftest import SHARED
from .test_cli import invoke

DATA = SHARED / "data"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (DATA / "hymenoptera-mini" / "manifest.csv").is_file(),
                       reason=f"real test data not found at {DATA} (the shared/ folder beside the repo)"),
]  # fmt: skip


def test_real_photos_and_paintings(tmp_path: Path) -> None:
    # Absolute paths from a manifest in another folder; the GIF is among them.
    source = DATA / "hymenoptera-mini"
    picked = ["ants/imageNotFound.gif", "ants/0013035.jpg", "bees/1092977343_cb42b38d62.jpg"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{source / p},{p.split('/')[0]}\n" for p in picked))
    out = tmp_path / "out"
    code, _, err = invoke("run", manifest, "--styles", DATA / "styles", "--per-image", "2",
                          "--weights", "random", "--size", "40", "--iterations", "2", "--out", out)  # fmt: skip
    assert code == 0, err
    rows = pd.read_csv(out / "manifest.csv")
    assert len(rows) == 6 and set(rows["style"]) <= {"shipwreck", "starry_night", "the_scream", "woman-with-hat-matisse"}
    for row in rows.itertuples():
        img = Image.open(out / row.path)
        assert img.mode == "RGB" and max(img.size) == 40


def test_image_folder_of_real_photos_validates() -> None:
    code, stdout, _ = invoke("validate", DATA / "hymenoptera-mini", "--styles", DATA / "styles", "--per-image", "3")
    assert code == 0 and "66 tasks" in stdout
