from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from augment.config import HELP, RunConfig, build_config, load_yaml
from augment.engines import weighting
from augment.engines.vgg import Flavour
from augment.errors import ConfigError
from augment.pipeline.keys import config_hash, copy_hash, plan_hash
from augment.pipeline.options import gatys_options


def test_yaml_then_flags(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("size: 64\niterations: 7\nper-image: 2\nstyles: styles\n")
    config = build_config(tmp_path / "run.yaml", iterations=9, manifest="m.csv")
    assert (config.size, config.iterations, config.per_image) == (64, 9, 2)
    assert config.styles == str(tmp_path / "styles")  # relative to the YAML file


def test_unknown_yaml_key_names_the_file_and_suggests(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("iteratons: 3\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown option\(s\) iteratons \(did you mean iterations\?\)"):
        load_yaml(tmp_path / "run.yaml")


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"size": 8}, "size"), ({"per_image": 0}, "per_image"), ({"format": "gif"}, "format"),
     ({"content_layer": "conv4_9"}, "did you mean"), ({"pooling": "min"}, "min"),
     ({"size": "big"}, "size: expected a whole number")],
)  # fmt: skip
def test_bad_values_are_config_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(None, **changes)


def test_style_layers_from_a_comma_list() -> None:
    assert RunConfig(style_layers="conv1_1, conv2_1").style_layers == ("conv1_1", "conv2_1")


def test_to_dict_is_a_copy_and_hash_tracks_pixel_options() -> None:
    config = RunConfig()
    data = config.to_dict()
    data["size"] = 1
    assert config.size == 512 and data["pooling"] == "max"
    assert config_hash(RunConfig(quiet=True)) == config_hash(config)
    assert config_hash(RunConfig(style_weight=1.0)) != config_hash(config)


def test_help_shows_defaults() -> None:
    assert "[default: 512]" in HELP["size"] and "[default: conv1_1,conv2_1" in HELP["style_layers"]


def test_gatys_options_apply_style_overrides() -> None:
    options = gatys_options(RunConfig(style_weight=5.0), style_weight=100.0)
    assert options.style_weight == 100.0 and options.content_weight is None  # the flavour decides
    assert options.resolved("torchvision").content_weight == 10.0


def test_docs_config_md_is_up_to_date() -> None:
    import runpy

    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    config_reference = runpy.run_path(str(docs.with_name("generate_config_md.py")))["config_reference"]
    assert docs.read_text(encoding="utf-8") == config_reference(), "run: python docs/generate_config_md.py"


def test_learning_rate_zero_or_negative_is_refused_not_replaced() -> None:
    from augment.engines.options import GatysOptions

    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="learning_rate must be > 0"):
            RunConfig(learning_rate=bad)
        with pytest.raises(ValueError, match="learning_rate must be > 0"):
            GatysOptions(learning_rate=bad)
    assert gatys_options(RunConfig(learning_rate=0.5)).step_size == 0.5
    assert GatysOptions(optimizer="adam").step_size == 0.02 and GatysOptions().step_size == 1.0


def test_style_layer_weights_and_normalize_gradients_reach_the_engine() -> None:
    config = RunConfig(style_layers="conv1_1,conv2_1", style_layer_weights="0.75, 0.25", normalize_gradients=True)
    options = gatys_options(config)
    assert options.layer_weights == {"conv1_1": 0.75, "conv2_1": 0.25} and options.normalize_gradients
    # A style's own λ_l (styles.yaml) wins over the run's.
    assert gatys_options(config, style_layer_weights=(0.0, 1.0)).layer_weights == {"conv1_1": 0.0, "conv2_1": 1.0}
    with pytest.raises(ConfigError, match="style_layer_weights: 3 weights for 2 style layers"):
        RunConfig(style_layers="conv1_1,conv2_1", style_layer_weights="1,1,1")
    # Unset, λ_l follows 1/C² (equal when gradients are normalised).
    assert gatys_options(RunConfig(style_layers="conv1_1,conv2_1")).layer_weights == pytest.approx(
        {"conv1_1": 0.8, "conv2_1": 0.2}
    )
    assert gatys_options(RunConfig(style_layers="conv1_1,conv2_1", normalize_gradients=True)).layer_weights == {
        "conv1_1": 0.5,
        "conv2_1": 0.5,
    }


def test_config_hashes_stay_the_same_across_refactors() -> None:
    # These hashes decide whether a finished image is redone: values written down when the
    # CLI and runner were restructured (issue 13), so a reorganised RunConfig that changes them
    # (and would redo every user's dataset) fails here. Changed on purpose since: output
    # shapes on the --shape-step grid; the TV default (the Lua neural-style's, exactly) and
    # the engine's default loss weights hashed; --scales 0.5,1 by default (docs/changelog.md).
    plain = RunConfig()
    assert (config_hash(plain), plan_hash(plain), copy_hash(plain)) == (
        "47a6f4dd7c940ce4", "fa62afe450721771", "d80673080a79891c",
    )  # fmt: skip
    busy = RunConfig(size=64, style_weight="1e3:1e4", per_image=3, style_layer_weights="1,1,1,1,1",
                     normalize_gradients=True, engine="gatys+dream", format="jpg,webdataset")  # fmt: skip
    assert (config_hash(busy), plan_hash(busy), copy_hash(busy)) == (
        "2b7dc91875845c0e", "25615a10ecf1de6c", "34e10419ae05ada8",
    )  # fmt: skip


def test_a_changed_default_loss_weight_changes_the_config_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    # An unset --tv-weight takes the engine's default: images made with the old default are
    # not current once it changes.
    before = config_hash(RunConfig())
    caffe = weighting.DEFAULTS[Flavour.CAFFE]
    monkeypatch.setitem(weighting.DEFAULTS, Flavour.CAFFE, dataclasses.replace(caffe, tv_weight=caffe.tv_weight * 2))
    assert config_hash(RunConfig()) != before
    assert plan_hash(RunConfig(tv_weight=1.0)) == plan_hash(RunConfig())
