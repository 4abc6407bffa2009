"""The networks a run needs, from its config: which weights each engine loads (``resolve_for``),
building VGG19 and the dream network from them, and checking every file loads into its
networks before OUT is touched (``check_networks``; ``check_weights`` for validate)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..engines.vgg import Flavour, Pooling, VGG19Features
from ..errors import WeightsUnavailable
from ..io.weights import (
    MODELS,
    RANDOM,
    ResolvedWeights,
    probe_download,
    resolve_vgg19,
    resolve_weights,
    vgg19_model,
    weights_source,
)
from .options import dream_net, dream_options, gatys_options

log = logging.getLogger(__name__)


def _googlenet_spec(config: RunConfig) -> str | None:
    """--dream-weights; with none given, random when --weights is (a smoke test of both)."""
    return config.dream_weights or (RANDOM if config.weights == RANDOM else None)


def weights_needed(config: RunConfig) -> list[tuple[str, str | None]]:
    """(model, spec) for every network ``config``'s engine loads, as ``resolve_for`` does."""
    from ..config import Engine

    needed: list[tuple[str, str | None]] = []
    if config.engine is not Engine.DREAM or dream_net(config) == "vgg19":
        needed.append((vgg19_model(config.weights_flavour, config.weights), config.weights))
    if config.engine is not Engine.GATYS and dream_net(config) == "googlenet":
        needed.append(("googlenet", _googlenet_spec(config)))
    return needed


def check_weights(config: RunConfig, *, probe_timeout_s: float = 5.0) -> list[str]:
    """What ``augment run`` would load, checked as run checks it (for ``augment validate``):
    one line per network, or WeightsUnavailable with run's message where run would stop. A
    file is loaded (weights only) and its networks built; a download that would be needed is
    checked by reaching the file's host."""
    found, downloads = [], False
    for model, spec in weights_needed(config):
        name, source = MODELS[model][0], weights_source(model, spec, download=config.download)
        if source == RANDOM:
            found.append(f"{name}: random (smoke tests only: no real features)")
        elif isinstance(source, Path):
            found.append(f"{name}: {source}")
        else:
            probe_download(model, source, timeout_s=probe_timeout_s)
            found.append(f"{name}: to be downloaded from {source}")
            downloads = True
    if not downloads:  # what is here: load it as run will, and build its networks
        check_networks(config, resolve_for(config))
    return found


def build_vgg19(
    weights: ResolvedWeights,
    layers: tuple[str, ...],
    *,
    pooling: Pooling = Pooling.MAX,
    device: torch.device | str = "cpu",
) -> VGG19Features:
    net = VGG19Features(layers, flavour=weights.flavour, pooling=pooling)
    try:
        net.load_features(weights.state_dict)
    except ValueError as err:
        raise WeightsUnavailable(f"{weights.location}: {err}") from err
    return net.to(device)


def build_dream_net(
    weights: ResolvedWeights | None, layers: tuple[str, ...], *, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """GoogLeNet for inception layers, VGG19 for convN_M layers (then ``weights`` are VGG19's)."""
    from ..engines.googlenet import GoogLeNetFeatures

    if all(layer.startswith("inception") for layer in layers):
        net: torch.nn.Module = GoogLeNetFeatures(layers)
    else:
        net = VGG19Features(layers, flavour=weights.flavour if weights else Flavour.TORCHVISION)
    assert weights is not None
    try:
        net.load_features(weights.state_dict)  # type: ignore[operator]
    except ValueError as err:
        raise WeightsUnavailable(f"{weights.location}: {err}") from err
    return net.to(device)


def check_networks(config: RunConfig, weights: NetWeights) -> None:
    """Build every network the run will build, once on the CPU (0.2 s for VGG19), so that a
    file with missing layers, wrong shapes or NaN values is refused (exit 2) before OUT is
    touched, by run and by validate alike. Each file and set of layers once per process (the
    identity names the file's content)."""
    needed: list[tuple[ResolvedWeights, tuple[str, ...], Callable[..., torch.nn.Module]]] = []
    if weights.gatys is not None:
        needed.append((weights.gatys, gatys_options(config).layers, build_vgg19))
    if weights.dream is not None:
        needed.append((weights.dream, dream_options(config).layers, build_dream_net))
    for resolved, layers, build in needed:
        key = (resolved.identity, tuple(layers))
        if key not in _CHECKED:
            build(resolved, layers)
            _CHECKED.add(key)  # only once it built: a bad file is refused every time
            if resolved.guessed and build is build_vgg19:
                log.warning(
                    "%s is not a VGG19 file augment knows: it is read with torchvision's preprocessing "
                    "(RGB, ImageNet mean and std); pass --weights-flavour caffe if it is a Caffe conversion "
                    "(BGR, 0..255 minus the mean)",
                    resolved.location,
                )


_CHECKED: set[tuple[str, tuple[str, ...]]] = set()


@dataclass(frozen=True)
class NetWeights:
    """What a run needs: VGG19 for style transfer, the dream network's for Deep Dream."""

    gatys: ResolvedWeights | None
    dream: ResolvedWeights | None

    @property
    def identity(self) -> str:
        return "+".join(w.identity for w in (self.gatys, self.dream) if w is not None)


def resolve_for(config: RunConfig) -> NetWeights:
    """Resolve every network ``config``'s engine uses, before any work starts."""
    from ..config import Engine

    def vgg() -> ResolvedWeights:
        return resolve_vgg19(config.weights, flavour=config.weights_flavour, download=config.download)

    gatys = vgg() if config.engine is not Engine.DREAM else None
    dream = None
    if config.engine is not Engine.GATYS:
        if dream_net(config) == "vgg19":
            dream = gatys or vgg()
        else:
            dream = resolve_weights("googlenet", _googlenet_spec(config), download=config.download)
    return NetWeights(gatys, dream)
