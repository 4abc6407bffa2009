from __future__ import annotations

from pathlib import Path

import pytest

from augment.errors import StyleBankError
from augment.io.styles import load_style_bank, safe_name

from .conftest import noise_image


def _bank(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        noise_image(10, 10, 0, mode="L" if name.endswith(".jpg") else "RGB").save(tmp_path / name)
    return tmp_path


def test_names_are_safe_and_distinct(tmp_path: Path) -> None:
    bank = _bank(tmp_path, ["a.jpg", "a.png", "Starry Night!.png", "x__y.png"])
    assert [s.name for s in load_style_bank(bank)] == ["Starry-Night", "a-jpg", "a-png", "x_y"]


def test_safe_name_never_contains_the_separator() -> None:
    assert "__" not in safe_name("a___b__c") and safe_name("...") == "style"


def test_styles_yaml_sets_names_weights_and_overrides(tmp_path: Path) -> None:
    bank = _bank(tmp_path, ["waves.png", "stone.png"])
    (bank / "styles.yaml").write_text(
        "waves.png:\n  name: The Waves\n  weight: 3\n  style_weight: 100\nstone:\n  weight: 0\n"
    )
    styles = {s.name: s for s in load_style_bank(bank)}
    assert styles["waves"].display_name == "The Waves" and styles["waves"].weight == 3.0
    assert styles["waves"].overrides == {"style_weight": 100.0}
    assert styles["stone"].weight == 0.0


def test_styles_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bank = _bank(tmp_path, ["waves.png"])
    (bank / "styles.yaml").write_text("wave:\n  weight: 1\n")
    with pytest.raises(StyleBankError, match=r"styles.yaml: 'wave' matches no style image; did you mean 'waves'"):
        load_style_bank(bank)
    (bank / "styles.yaml").write_text("waves:\n  colour: red\n")
    with pytest.raises(StyleBankError, match="unknown key"):
        load_style_bank(bank)
    (bank / "styles.yaml").write_text("waves:\n  weight: -1\n")
    with pytest.raises(StyleBankError, match="must be a number"):
        load_style_bank(bank)


def test_missing_empty_or_broken_bank(tmp_path: Path) -> None:
    with pytest.raises(StyleBankError, match="not found"):
        load_style_bank(tmp_path / "nope")
    with pytest.raises(StyleBankError, match="no style images"):
        load_style_bank(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(StyleBankError, match="bad.png"):
        load_style_bank(tmp_path)


def test_styles_yaml_sets_per_layer_weights_and_refuses_a_constant_tv(tmp_path: Path) -> None:
    bank = _bank(tmp_path, ["waves.png"])
    (bank / "styles.yaml").write_text("waves:\n  style_layer_weights: [0.5, 0.5, 0, 0, 0]\n  tv_beta: 2\n")
    (waves,) = load_style_bank(bank)
    assert waves.overrides == {"style_layer_weights": (0.5, 0.5, 0.0, 0.0, 0.0), "tv_beta": 2.0}
    for bad, message in (
        ("tv_beta: 0", r"waves.tv_beta must be > 0"),
        ("style_layer_weights: [1, 0]", r"waves.style_layer_weights: 2 weights for 5 style layers"),
        ("style_weight: .nan", r"waves.style_weight must be a number >= 0"),
    ):
        (bank / "styles.yaml").write_text(f"waves:\n  {bad}\n")
        with pytest.raises(StyleBankError, match=message):
            load_style_bank(bank)
