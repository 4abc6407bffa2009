"""VGG19 feature extractor with the input normalisation of its weights built in.

The layout matches torchvision's ``vgg19().features`` index for index, so a torchvision state
dict (or a Caffe-converted one with the same key names) loads directly. Layers are named as in
the papers: ``conv4_2`` is the ReLU output of the second convolution of block 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

import torch
from torch import nn

# torchvision's configuration "E" (VGG19): channel counts, "M" for a 2x2 pooling layer.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


class Flavour(str, Enum):
    """Which preprocessing the weights were trained with."""

    TORCHVISION = "torchvision"  # RGB in [0,1], ImageNet mean/std
    CAFFE = "caffe"  # BGR in 0..255 minus the per-channel mean, as the paper describes


class Pooling(str, Enum):
    MAX = "max"
    AVG = "avg"


# Means in BGR order, as the paper lists them (103.939 is blue's mean, 123.68 red's).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> list[str]:
    """Names for every module of VGG19 ``features``: conv1_1, relu1_1, ..., pool5."""
    names, block, conv = [], 1, 0
    for item in _VGG19_CFG:
        if item == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}_raw", f"conv{block}_{conv}"]
    return names


# The module index of each name; "convB_N" is the ReLU after the convolution (what losses use),
# "convB_N_raw" the convolution itself (its index is the state-dict key).
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(_layer_names())}
CONV_LAYERS: tuple[str, ...] = tuple(n for n in LAYER_INDEX if n.startswith("conv") and "_raw" not in n)
# Output channels of each conv layer, read off the configuration (conv1_x: 64 ... conv5_x: 512).
LAYER_CHANNELS: dict[str, int] = dict(zip(CONV_LAYERS, (c for c in _VGG19_CFG if c != "M")))  # type: ignore[misc]


def check_layers(layers: Iterable[str]) -> None:
    """Raise ValueError naming the first unknown layer, with the valid names."""
    for layer in layers:
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown VGG19 layer {layer!r}; use one of {', '.join(CONV_LAYERS)}")


class Normalize(nn.Module):
    """Maps an RGB image in [0,1] to what the weights expect; the extractor's first layer,
    so weights and preprocessing cannot drift apart."""

    def __init__(self, flavour: Flavour) -> None:
        super().__init__()
        self.flavour = Flavour(flavour)
        if self.flavour is Flavour.CAFFE:
            mean, scale = torch.tensor(CAFFE_MEAN_BGR), torch.full((3,), 255.0)
        else:
            mean, scale = torch.tensor(IMAGENET_MEAN), 1.0 / torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flavour is Flavour.CAFFE:
            return x.flip(1) * self.scale - self.mean  # RGB -> BGR, 0..255, minus mean
        return (x - self.mean) * self.scale


def check_tensors(model: str, given: Mapping[str, Any], wanted: Mapping[str, torch.Tensor]) -> None:
    """Each wanted tensor is given as a tensor of its shape, all finite (a damaged file's NaN
    would make every image of the run fail, one by one)."""
    for key, value in wanted.items():
        tensor = given[key]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != value.shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"not a {model} state dict: {key} has shape {shape}, expected {tuple(value.shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{key} holds NaN or infinite values: the file is damaged")


class VGG19Features(nn.Module):
    """VGG19 ``features`` truncated after the deepest requested layer.

    ``forward(x)`` returns ``{layer: activation}`` for the requested layers only.
    """

    def __init__(
        self,
        layers: Iterable[str],
        *,
        flavour: Flavour = Flavour.TORCHVISION,
        pooling: Pooling = Pooling.MAX,
    ) -> None:
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        check_layers(self.layers)
        if not self.layers:
            raise ValueError("at least one layer is needed")
        last = max(LAYER_INDEX[name] for name in self.layers)
        self.normalize = Normalize(flavour)
        modules: list[nn.Module] = []
        in_ch = 3
        for item in _VGG19_CFG:
            if item == "M":
                pool = nn.MaxPool2d if Pooling(pooling) is Pooling.MAX else nn.AvgPool2d
                modules.append(pool(kernel_size=2, stride=2))
            else:
                modules += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU()]
                in_ch = int(item)
        self.features = nn.Sequential(*modules[: last + 1])
        self._wanted = {LAYER_INDEX[name]: name for name in self.layers}
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.normalize(x)
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self._wanted:
                out[self._wanted[index]] = x
        return out

    def load_features(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a VGG19 state dict (full model or ``features`` only, either flavour).

        Only the layers this truncated network keeps are loaded; all of them must be present.
        """
        wanted = self.features.state_dict()
        prefixed = {k.removeprefix("features."): v for k, v in state_dict.items()}
        missing = [k for k in wanted if k not in prefixed]
        if missing:
            raise ValueError(f"not a VGG19 state dict: missing {', '.join(missing[:3])}")
        check_tensors("VGG19", {k: prefixed[k] for k in wanted}, wanted)
        self.features.load_state_dict({k: prefixed[k] for k in wanted})

    def init_random(self, seed: int) -> None:
        """Seeded random weights (He init, as torchvision uses) for tests and smoke runs."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                std = (2.0 / fan_out) ** 0.5
                with torch.no_grad():
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                    module.bias.zero_()


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full seeded random VGG19 ``features`` state dict (keys ``features.N.weight``)."""
    net = VGG19Features(["conv5_4"])
    net.init_random(seed)
    return {f"features.{k}": v for k, v in net.features.state_dict().items()}
