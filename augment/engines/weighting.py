"""Default loss weights per weights flavour, converted from published, proven settings.

The engine's objective uses the paper's normalisations (losses.py):

    J = α·J_content + β·Σ_l λ_l·J_style^l + λ_TV·TV
    J_content   = Σ(F − P)² / (4·C·N)          (one layer, C channels, N = H·W positions)
    J_style^l   = Σ(G − A)² / (4·C²·N²)         (G = F·Fᵀ, unnormalised)

neural-style (and neural-style-pt) and the PyTorch tutorial write theirs as mean squared errors
on a Gram matrix divided by C·N:

    E = w_c·mean((F − P)²) + Σ_l w_s·mean((G/(C·N) − A/(C·N))²)
      = 4·w_c·J_content + Σ_l (4·w_s / C_l²)·J_style^l

so the conversion is exact, layer by layer (N cancels: it holds at any image size). Every
default below is that conversion scaled by one constant so that α = 10; a constant factor
does not move the minimum. docs/method.md has the derivation and the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .vgg import LAYER_CHANNELS, Flavour

ALPHA = 10.0  # every default set is scaled to this content weight (the paper's α)
DEFAULT_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")

# Published settings. jcjohnson/neural-style (Lua; Caffe VGG19, pixels 0..255 minus the mean):
# content 5 at relu4_2, style 100 at each of relu1_1…relu5_1, TV 1e-3. neural-style-pt, its
# PyTorch port, keeps the weights but changes the TV's form (below).
NEURAL_STYLE = {"content": 5.0, "style": 100.0, "tv": 1e-3}
# PyTorch's neural style tutorial (torchvision VGG19, ImageNet mean/std): content 1, style 1e6.
TUTORIAL = {"content": 1.0, "style": 1e6}
# The Lua neural-style's TV module has no forward loss; its backward adds w·(x_diff + y_diff)
# (and the matching negative terms): the gradient of w·½·Σ(dx² + dy²) on 0..255 pixels, over
# the same (H−1)×(W−1) pixels as ours. That is our TV at exponent 1 on [0, 1] pixels times
# ½·255², exactly. (neural-style-pt's TV is the L1 form w·Σ|dx| + |dy|, which L-BFGS without
# line search spikes on: docs/method.md.)
LUA_TV_TO_OURS = 0.5 * 255.0**2
# Caffe-preprocessed input is about 255·0.226 = 58x larger than torchvision's (x − mean)/std;
# a ReLU network's activations scale with it, the content term with its square. Used only to
# carry neural-style's TV-to-content balance over to torchvision weights (the tutorial has no TV).
CAFFE_TO_TORCHVISION_SCALE = 255.0 * 0.226


def from_mean_squared(content_weight: float, style_weight: float, layers: Sequence[str]) -> tuple[float, list[float]]:
    """(α, [β·λ_l per layer]) of a neural-style/tutorial objective with these weights, in this
    engine's units, scaled so that α = ALPHA."""
    k = ALPHA / (4.0 * content_weight)
    return ALPHA, [4.0 * style_weight * k / LAYER_CHANNELS[layer] ** 2 for layer in layers]


def inverse_square_channel_weights(layers: Sequence[str]) -> tuple[float, ...]:
    """λ_l ∝ 1/C_l², summing to 1: the per-layer balance of both published settings."""
    raw = [1.0 / LAYER_CHANNELS[layer] ** 2 for layer in layers]
    return tuple(r / sum(raw) for r in raw)


@dataclass(frozen=True)
class LossDefaults:
    content_weight: float  # α
    style_weight: float  # β, with λ_l from inverse_square_channel_weights (equal if normalised)
    tv_weight: float  # λ_TV for the TV exponent 1 (the default; the Lua neural-style's smooth TV)


def _defaults(published: dict[str, float], tv_weight: float) -> LossDefaults:
    alpha, per_layer = from_mean_squared(published["content"], published["style"], DEFAULT_STYLE_LAYERS)
    return LossDefaults(alpha, sum(per_layer), tv_weight)


def _neural_style_tv(k: float) -> float:
    """The Lua neural-style's TV weight in our units (exact at exponent 1): k per its unit,
    times ½·255² from its ½·Σ(dx² + dy²) on 0..255 pixels."""
    return k * NEURAL_STYLE["tv"] * LUA_TV_TO_OURS


_TV_CAFFE = _neural_style_tv(ALPHA / (4.0 * NEURAL_STYLE["content"]))

DEFAULTS: dict[Flavour, LossDefaults] = {
    Flavour.CAFFE: _defaults(NEURAL_STYLE, _TV_CAFFE),
    Flavour.TORCHVISION: _defaults(TUTORIAL, _TV_CAFFE / CAFFE_TO_TORCHVISION_SCALE**2),
}
# With --normalize-gradients each term's gradient has unit L1 norm at its layer, so only the
# weights' ratio matters and no Gram normalisation enters: neural-style's 5 : 100 per layer,
# scaled to α = 10 (β·λ_l = 200, λ_l equal), the same for every flavour.
_K_NORMALIZED = ALPHA / NEURAL_STYLE["content"]
NORMALIZED_DEFAULTS = LossDefaults(
    ALPHA, _K_NORMALIZED * NEURAL_STYLE["style"] * len(DEFAULT_STYLE_LAYERS), _neural_style_tv(_K_NORMALIZED)
)


def loss_defaults(flavour: Flavour | str, normalize_gradients: bool = False) -> LossDefaults:
    return NORMALIZED_DEFAULTS if normalize_gradients else DEFAULTS[Flavour(flavour)]


def parse_layer_weights(value: object, layers: int) -> tuple[float, ...]:
    """λ_l from "0.5,0.5,0,0,0" or a list: one finite number >= 0 per style layer (ValueError)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        weights = tuple(float(w) for w in items)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"expected numbers separated by commas, got {value!r}") from None
    if len(weights) != layers:
        raise ValueError(f"{len(weights)} weights for {layers} style layers")
    if not all(0 <= w < float("inf") for w in weights):
        raise ValueError(f"weights must be finite numbers >= 0, got {value!r}")
    return weights


def default_layer_weights(layers: Sequence[str], normalize_gradients: bool = False) -> tuple[float, ...]:
    if normalize_gradients:
        return (1.0 / len(layers),) * len(layers)
    return inverse_square_channel_weights(layers)
