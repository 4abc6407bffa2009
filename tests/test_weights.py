"""Weights resolution; nothing here may download (conftest sets AUGMENT_OFFLINE)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from augment.config import WeightsFlavour
from augment.engines.vgg import Flavour, random_state_dict
from augment.errors import WeightsUnavailable
from augment.io import weights as weights_mod
from augment.io.weights import cached_vgg19, resolve_vgg19
from augment.pipeline.networks import build_vgg19


def test_random_is_explicit_and_identified() -> None:
    resolved = resolve_vgg19("random")
    assert resolved.identity.startswith("random@") and len(resolved.identity) == len("random@") + 12
    assert resolve_vgg19("random").identity == resolved.identity


def test_explicit_path_torchvision_and_caffe(tmp_path: Path) -> None:
    state = random_state_dict(seed=4)
    torch.save(state, tmp_path / "my-vgg.pth")
    torch.save(state, tmp_path / "vgg19-d01eb7cb.pth")  # neural-style-pt's Caffe conversion
    plain = resolve_vgg19(str(tmp_path / "my-vgg.pth"))
    assert plain.flavour is Flavour.TORCHVISION and plain.identity.startswith("my-vgg.pth@")
    assert resolve_vgg19(str(tmp_path / "vgg19-d01eb7cb.pth")).flavour is Flavour.CAFFE
    forced = resolve_vgg19(str(tmp_path / "my-vgg.pth"), flavour=WeightsFlavour.CAFFE)
    assert forced.flavour is Flavour.CAFFE
    net = build_vgg19(plain, ("conv1_1",))
    assert torch.equal(net.features[0].weight, state["features.0.weight"])


def test_caffe_weights_are_known_by_their_content_under_any_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A renamed copy of the Caffe conversion ran with torchvision's preprocessing. The known
    # file's sha256 starts d01eb7cb; this test's file stands in for it by its own prefix.
    from augment.io.digests import file_sha256

    target = tmp_path / "renamed.pth"
    torch.save(random_state_dict(seed=5), target)
    assert resolve_vgg19(str(target)).flavour is Flavour.TORCHVISION
    monkeypatch.setattr(weights_mod, "CAFFE_SHA256_PREFIXES", (file_sha256(target)[:8],))
    assert resolve_vgg19(str(target)).flavour is Flavour.CAFFE


def test_hub_cache_is_used_when_present() -> None:
    target = cached_vgg19()
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(seed=2), target)
    resolved = resolve_vgg19(None)
    assert resolved.location == str(target) and resolved.flavour is Flavour.TORCHVISION


def test_offline_without_cache_says_how_to_provide_weights() -> None:
    with pytest.raises(WeightsUnavailable) as err:
        resolve_vgg19(None)
    message = str(err.value)
    assert str(cached_vgg19()) in message and "--weights PATH" in message and "augment weights download" in message
    assert err.value.exit_code == 2


def test_failed_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUGMENT_OFFLINE")

    def no_network(*args: object, **kwargs: object) -> None:
        raise URLError("no route to host")

    monkeypatch.setattr(weights_mod.torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailable, match="download failed.*no route to host") as caught:
        resolve_vgg19(None)
    # The message says it all: no chained urllib traceback for a notebook user to scroll past.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_no_download_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUGMENT_OFFLINE")
    with pytest.raises(WeightsUnavailable, match="--no-download"):
        resolve_vgg19(None, download=False)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="not found"):
        resolve_vgg19(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        resolve_vgg19(str(tmp_path / "junk.pth"))
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsUnavailable, match="not a VGG19 state dict"):
        build_vgg19(resolve_vgg19(str(tmp_path / "other.pth")), ("conv1_1",))


def test_googlenet_offline_error_names_its_own_file_and_flag() -> None:
    from augment.io.weights import cached_weights, resolve_weights

    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("googlenet", None)
    message = str(err.value)
    assert "GoogLeNet" in message and str(cached_weights("googlenet")) in message and "--dream-weights PATH" in message


def test_googlenet_from_the_hub_cache_loads_into_the_dream_network() -> None:
    from torchvision.models import googlenet

    from augment.io.weights import cached_weights, resolve_weights
    from augment.pipeline.networks import build_dream_net

    target = cached_weights("googlenet")
    target.parent.mkdir(parents=True, exist_ok=True)
    state = googlenet(weights=None, aux_logits=False, init_weights=False).state_dict()
    torch.save(state, target)
    net = build_dream_net(resolve_weights("googlenet", None), ("inception4c",))
    assert torch.equal(net.blocks["conv1"].conv.weight, state["conv1.conv.weight"])


def test_validate_checks_a_download_by_asking_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Through urllib, as the download itself goes (an https_proxy applies): any HTTP answer means
    # the weights can be fetched; no answer is run's error, before any work.
    from urllib.error import HTTPError

    from augment.config import RunConfig
    from augment.pipeline.networks import check_weights

    monkeypatch.delenv("AUGMENT_OFFLINE")
    asked: list[str] = []

    def answers(request: object, timeout: float) -> None:
        asked.append(request.full_url)  # type: ignore[attr-defined]
        raise HTTPError(request.full_url, 403, "Forbidden", {}, None)  # type: ignore[attr-defined, arg-type]

    monkeypatch.setattr(weights_mod, "urlopen", answers)
    assert check_weights(RunConfig()) == [f"VGG19: to be downloaded from {asked[0]}"]
    assert asked[0].endswith("vgg19-dcbb9e9d.pth")

    def silent(request: object, timeout: float) -> None:
        raise URLError("no route to host")

    monkeypatch.setattr(weights_mod, "urlopen", silent)
    with pytest.raises(WeightsUnavailable, match="cannot be reached.*no route to host"):
        check_weights(RunConfig())
    assert check_weights(RunConfig(weights="random")) == ["VGG19: random (smoke tests only: no real features)"]


@pytest.mark.parametrize("legacy", [False, True])
def test_only_the_feature_layers_are_kept_from_a_full_checkpoint(tmp_path: Path, legacy: bool) -> None:
    # Issue 22: the whole VGG19 state dict stayed in memory, classifier included (120 M of its
    # 144 M parameters). The file is memory-mapped (a legacy, non-zip file is read whole) and
    # the heads no engine runs are dropped.
    state = {**random_state_dict(3), "classifier.0.weight": torch.zeros(64, 32), "classifier.0.bias": torch.zeros(64)}
    path = tmp_path / "vgg19-full.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    resolved = resolve_vgg19(str(path))
    assert not [k for k in resolved.state_dict if k.startswith("classifier.")]
    assert set(resolved.state_dict) == {k for k in state if k.startswith("features.")}
    net = build_vgg19(resolved, ["conv1_1", "conv5_1"])
    assert torch.equal(net.features[0].weight, state["features.0.weight"])


def test_an_unknown_vgg19_file_is_read_as_torchvision_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from augment.config import RunConfig
    from augment.pipeline.networks import NetWeights, check_networks

    path = tmp_path / "finetuned.pth"
    torch.save(random_state_dict(seed=6), path)
    config = RunConfig(weights=str(path))
    for flavour, warned in ((WeightsFlavour.AUTO, True), (WeightsFlavour.CAFFE, False)):  # said: no warning
        caplog.clear()
        resolved = resolve_vgg19(str(path), flavour=flavour)
        assert resolved.flavour is (Flavour.TORCHVISION if warned else Flavour.CAFFE)
        with caplog.at_level("WARNING", logger="augment.io.weights"):
            check_networks(config, NetWeights(resolved, None))  # warned once it has loaded, not before
        text = caplog.text
        said = "finetuned.pth is not a VGG19 file augment knows" in text and "--weights-flavour caffe" in text
        assert said is warned, caplog.text


def test_caffe_flavour_without_a_path_names_the_caffe_file_and_its_download() -> None:
    with pytest.raises(WeightsUnavailable) as err:
        resolve_vgg19(None, flavour=WeightsFlavour.CAFFE)
    message = str(err.value)
    assert "no Caffe VGG19 weights" in message and "vgg19-d01eb7cb.pth" in message
    assert weights_mod.CAFFE_VGG19_URL in message and "augment weights download --flavour caffe" in message


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the test's output stays readable
        pass


@pytest.fixture
def loopback_files(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (a real server; nothing leaves the machine)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Files, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_weights_download_caffe_fetches_the_caffe_file_hash_checked(
    loopback_files: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from augment.cli import app
    from augment.io.digests import file_sha256

    served, base = loopback_files
    made = served / "made.pth"
    torch.save(random_state_dict(seed=7), made)
    name = f"vgg19-{file_sha256(made)[:8]}.pth"  # a hub name: its content's sha256 prefix
    made.rename(served / name)
    (served / "vgg19-00000000.pth").write_bytes((served / name).read_bytes())  # the name lies
    monkeypatch.delenv("AUGMENT_OFFLINE")
    monkeypatch.setattr(weights_mod, "CAFFE_VGG19_URL", f"{base}/vgg19-00000000.pth")
    result = CliRunner().invoke(app, ["weights", "download", "--flavour", "caffe"])
    assert result.exit_code == 2 and "download failed" in result.output
    assert not list(weights_mod.hub_checkpoint_dir().glob("*"))  # nothing half-written is left

    monkeypatch.setattr(weights_mod, "CAFFE_VGG19_URL", f"{base}/{name}")
    result = CliRunner().invoke(app, ["weights", "download", "--flavour", "caffe"])
    assert result.exit_code == 0, result.output
    cached = weights_mod.hub_checkpoint_dir() / name
    assert cached.is_file() and not weights_mod.cached_vgg19().exists()  # torchvision's is not fetched
    monkeypatch.setenv("AUGMENT_OFFLINE", "1")
    resolved = resolve_vgg19(None, flavour=WeightsFlavour.CAFFE)  # found in the cache, no --weights
    assert resolved.location == str(cached) and resolved.flavour is Flavour.CAFFE
    with pytest.raises(WeightsUnavailable, match="no VGG19 weights"):  # auto still means torchvision's
        resolve_vgg19(None)
