"""What the run's options mean to each engine and to the plan: the options objects they take,
built from a ``RunConfig``, and the settings a manifest row records."""

from __future__ import annotations

from typing import Any

from ..config import Engine, RunConfig, low
from ..engines.dream import DreamOptions
from ..engines.googlenet import MIN_SIDE as GOOGLENET_MIN_SIDE
from ..engines.options import GatysOptions, scale_iterations
from ..engines.vgg import Flavour
from ..io.images import MIN_SIDE
from .plan import PlanOptions, Task


def plan_options(config: RunConfig) -> PlanOptions:
    sampled_weight = config.style_weight if isinstance(config.style_weight, tuple) else None
    return PlanOptions(
        per_image=config.per_image, seed=config.seed, fmt=config.format,
        include_originals=config.include_originals, splits=config.splits,
        assignment=config.style_assignment, balance=config.balance, target_per_class=config.target_per_class,
        style_weight=sampled_weight, alpha=config.alpha, blend=config.blend,
        blend_repeats=config.engine is not Engine.DREAM,  # dream variants differ by layer and seed
    )  # fmt: skip


def gatys_options(config: RunConfig, **overrides: Any) -> GatysOptions:
    """The engine's options, with per-image and per-style overrides applied. With
    several scales, ``iterations`` is the full-size stage's share."""
    return GatysOptions(
        iterations=stage_iterations(config)[-1],
        content_weight=overrides.get("content_weight", config.content_weight),
        style_weight=overrides.get("style_weight", low(config.style_weight)),
        tv_weight=overrides.get("tv_weight", config.tv_weight),
        tv_beta=overrides.get("tv_beta", config.tv_beta),
        content_layer=config.content_layer,
        style_layers=config.style_layers,
        style_layer_weights=overrides.get("style_layer_weights", config.style_layer_weights),
        normalize_gradients=config.normalize_gradients,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        init=config.init,
        tol=config.tol,
    )


def stage_iterations(config: RunConfig) -> list[int]:
    """Iterations of each scale, lowest first."""
    return scale_iterations(config.iterations, len(config.scales))


def dream_options(config: RunConfig) -> DreamOptions:
    """The dream engine's options."""
    inception = config.dream_layers[0].startswith("inception")
    return DreamOptions(
        layers=config.dream_layers,
        octaves=config.octaves,
        octave_scale=config.octave_scale,
        iterations=config.dream_iterations,
        step=config.dream_step,
        jitter=config.jitter,
        blend=config.dream_blend,
        min_side=GOOGLENET_MIN_SIDE if inception else MIN_SIDE,
    )


def dream_net(config: RunConfig) -> str:
    return "googlenet" if config.dream_layers[0].startswith("inception") else "vgg19"


def row_params(config: RunConfig, flavour: Flavour) -> str:
    """The engine's settings, in the manifest row (the full config is in run.json)."""
    c = config
    resolved = gatys_options(c).resolved(flavour)
    gatys = f"content_weight={resolved.content_weight:.6g} tv_weight={resolved.tv_weight:.6g}"
    if c.style_layer_weights is not None:
        gatys += " style_layer_weights=" + ",".join(f"{w:g}" for w in c.style_layer_weights)
    gatys += " normalize_gradients" * c.normalize_gradients
    extras = [f"style_scale={c.style_scale}"] * (c.style_scale != 1.0) + ["preserve_color"] * c.preserve_color
    gatys = " ".join([gatys, *extras])
    dream = (
        f"layers={','.join(c.dream_layers)} octaves={c.octaves} octave_scale={c.octave_scale} "
        f"iterations={dream_options(c).iterations} step={c.dream_step} jitter={c.jitter} blend={c.dream_blend}"
    )
    return {Engine.GATYS: gatys, Engine.DREAM: dream}.get(c.engine, f"{gatys} {dream}")


def row_style_weight(config: RunConfig, task: Task, flavour: Flavour) -> float | None:
    """The β a stylized image was made with (its per-style or sampled value, or the flavour's
    default), for its manifest row; None for copies and dreams."""
    if task.original or config.engine is Engine.DREAM:
        return None
    return gatys_options(config, **task.loss_overrides).resolved(flavour).style_weight
