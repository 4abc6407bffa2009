"""GoogLeNet (Inception v1) activations for Deep Dream, named as torchvision names its blocks.

The input is RGB in [0, 1]; torchvision's ImageNet GoogLeNet was trained on x·2 − 1 (what its
``transform_input`` produces from ImageNet-normalised input), so that scaling is the first step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .vgg import check_tensors

INCEPTION_LAYERS = (
    "inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
    "inception4d", "inception4e", "inception5a", "inception5b",
)  # fmt: skip
# Everything before inception5b divides the size by 32: a smaller side would vanish.
MIN_SIDE = 32


class GoogLeNetFeatures(nn.Module):
    """torchvision's GoogLeNet up to the deepest requested inception block."""

    def __init__(self, layers: Iterable[str]) -> None:
        super().__init__()
        from torchvision.models import googlenet

        self.layers = tuple(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in INCEPTION_LAYERS]
        if unknown or not self.layers:
            raise ValueError(
                f"unknown GoogLeNet layer {unknown[0] if unknown else None!r}; use one of {', '.join(INCEPTION_LAYERS)}"
            )
        full = googlenet(weights=None, aux_logits=False, init_weights=False)
        deepest = max(INCEPTION_LAYERS.index(name) for name in self.layers)
        keep: list[tuple[str, nn.Module]] = []
        for name, module in full.named_children():
            keep.append((name, module))
            if name == INCEPTION_LAYERS[deepest]:
                break
        self.blocks = nn.ModuleDict(keep)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x * 2.0 - 1.0
        out = {}
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.layers:
                out[name] = x
        return out

    def load_features(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a torchvision GoogLeNet state dict (extra keys such as ``fc`` and ``aux`` ignored)."""
        wanted = self.blocks.state_dict()
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise ValueError(f"not a GoogLeNet state dict: missing {', '.join(missing[:3])}")
        check_tensors("GoogLeNet", state_dict, wanted)
        self.blocks.load_state_dict({k: state_dict[k] for k in wanted})

    def init_random(self, seed: int) -> None:
        """Seeded random weights for tests and smoke runs: truncated normal with He scaling, so
        activations keep their size through the depth."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                    noise = torch.randn(module.weight.shape, generator=generator).clamp_(-2, 2)
                    module.weight.copy_(noise * (2.0 / fan_in) ** 0.5)
                elif isinstance(module, nn.BatchNorm2d):
                    module.weight.fill_(1.0)
                    module.bias.zero_()


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    net = GoogLeNetFeatures(["inception5b"])
    net.init_random(seed)
    return dict(net.blocks.state_dict())
