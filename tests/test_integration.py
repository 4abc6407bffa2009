"""Real photos and paintings: tests/data holds hymenoptera-mini (22 photos, the GIF among them,
with its manifest) and 4 public-domain paintings, shrunk to 64 / 96 px so they ship with the
repository and every checkout runs these tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from .conftest import load_imagefolder_offline
from .test_cli import invoke

DATA = Path(__file__).resolve().parent / "data"
pytestmark = pytest.mark.integration


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
    assert len(rows) == 6 and set(rows["style"]) <= {
        "shipwreck",
        "starry_night",
        "the_scream",
        "woman-with-hat-matisse",
    }
    for row in rows.itertuples():
        img = Image.open(out / row.path)
        assert img.mode == "RGB" and max(img.size) == 40


def test_image_folder_of_real_photos_validates() -> None:
    code, stdout, _ = invoke("validate", DATA / "hymenoptera-mini", "--styles", DATA / "styles", "--per-image", "3",
                             "--weights", "random")  # fmt: skip
    assert code == 0 and "66 tasks" in stdout


@pytest.fixture(scope="module")
def balanced_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 ants + 4 bees, a manifest in another folder with absolute paths, balanced with originals."""
    root = tmp_path_factory.mktemp("balanced")
    source = DATA / "hymenoptera-mini"
    ants = sorted((source / "ants").iterdir())[:12]
    bees = sorted((source / "bees").iterdir())[:4]
    manifest = root / "elsewhere" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in ants + bees))
    out = root / "out"
    code, _, err = invoke(
        "run",
        manifest,
        "--styles",
        DATA / "styles",
        "--per-image",
        "1",
        "--balance",
        "--include-originals",
        "--weights",
        "random",
        "--size",
        "32",
        "--iterations",
        "2",
        "--out",
        out,
    )
    assert code == 0, err
    return out


def test_balanced_real_dataset_loads_in_imagefolder_with_a_report(balanced_out: Path) -> None:
    import torchvision

    rows = pd.read_csv(balanced_out / "manifest.csv", dtype=str, keep_default_na=False)
    counts = rows.groupby(["label", rows["style"] == "original"]).size().to_dict()
    assert counts == {("ants", True): 12, ("ants", False): 12, ("bees", True): 4, ("bees", False): 20}
    folder = torchvision.datasets.ImageFolder(balanced_out / "images")
    assert sorted(Path(p).relative_to(balanced_out).as_posix() for p, _ in folder.samples) == sorted(rows["path"])
    assert folder.class_to_idx == {"ants": 0, "bees": 1}
    code, _, err = invoke("report", balanced_out)
    assert code == 0, err
    page = (balanced_out / "report.html").read_text()
    assert page.count("<figure") >= 12 and "class='missing'" not in page


def test_balanced_real_dataset_loads_in_hugging_face(
    balanced_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_imagefolder_offline(balanced_out / "images", tmp_path, monkeypatch)
    names = loaded.features["label"].names  # a ClassLabel, as HF's image-classification scripts need
    assert len(loaded) == 48 and names == ["ants", "bees"]
    assert list(loaded["label"]).count(names.index("bees")) == 24
