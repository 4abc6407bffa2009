from __future__ import annotations

import pytest
import torch
from torch import nn

from augment.engines.vgg import CONV_LAYERS, Flavour, Normalize, Pooling, VGG19Features, random_state_dict


def test_layer_names_cover_the_sixteen_convolutions() -> None:
    assert len(CONV_LAYERS) == 16
    assert CONV_LAYERS[0] == "conv1_1" and CONV_LAYERS[-1] == "conv5_4" and "conv4_2" in CONV_LAYERS


def test_network_is_truncated_after_the_deepest_layer() -> None:
    net = VGG19Features(["conv1_1", "conv2_1"])
    # conv1_1, relu, conv1_2, relu, pool1, conv2_1, relu
    assert len(net.features) == 7
    full = VGG19Features(["conv5_4"])
    assert sum(isinstance(m, nn.Conv2d) for m in full.features) == 16
    assert sum(isinstance(m, nn.MaxPool2d) for m in full.features) == 4  # pool5 is after conv5_4


def test_forward_returns_requested_layers_after_relu() -> None:
    net = VGG19Features(["conv1_1", "conv3_1"])
    net.init_random(0)
    out = net(torch.rand(2, 3, 16, 20))
    assert set(out) == {"conv1_1", "conv3_1"}
    assert out["conv1_1"].shape == (2, 64, 16, 20)
    assert out["conv3_1"].shape == (2, 256, 4, 5)
    assert (out["conv1_1"] >= 0).all()


def test_avg_pooling() -> None:
    net = VGG19Features(["conv2_1"], pooling=Pooling.AVG)
    assert isinstance(net.features[4], nn.AvgPool2d)


def test_torchvision_normalisation() -> None:
    x = torch.tensor([0.485, 0.456 + 0.224, 0.406 - 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(Normalize(Flavour.TORCHVISION)(x).flatten(), torch.tensor([0.0, 1.0, -1.0]), atol=1e-6)


def test_caffe_normalisation_is_bgr_0_255_minus_mean() -> None:
    x = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)  # R, G, B
    out = Normalize(Flavour.CAFFE)(x).flatten()
    expected = torch.tensor([0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.68])  # B, G, R
    assert torch.allclose(out, expected, atol=1e-4)


def test_load_features_accepts_full_and_features_only_state_dicts() -> None:
    state = random_state_dict(seed=3)
    a = VGG19Features(["conv2_1"])
    a.load_features(state)
    b = VGG19Features(["conv2_1"])
    b.load_features({k.removeprefix("features."): v for k, v in state.items()})
    assert torch.equal(a.features[0].weight, state["features.0.weight"])
    assert torch.equal(b.features[5].weight, state["features.5.weight"])


def test_load_features_rejects_a_wrong_state_dict() -> None:
    net = VGG19Features(["conv2_1"])
    with pytest.raises(ValueError, match="missing"):
        net.load_features({"features.0.weight": torch.zeros(64, 3, 3, 3)})
    bad = random_state_dict(seed=0)
    bad["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        net.load_features(bad)


def test_random_weights_are_seeded() -> None:
    assert torch.equal(random_state_dict(1)["features.2.weight"], random_state_dict(1)["features.2.weight"])
    assert not torch.equal(random_state_dict(1)["features.2.weight"], random_state_dict(2)["features.2.weight"])


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="conv6_1"):
        VGG19Features(["conv6_1"])
