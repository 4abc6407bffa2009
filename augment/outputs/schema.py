"""What a finished image's manifest row says: pure functions of the task, its result and the
run's settings (no state, no I/O)."""

from __future__ import annotations

from typing import Any

from ..config import Engine, RunConfig
from ..engines.vgg import Flavour
from ..pipeline.plan import Task


def engine_name(config: RunConfig) -> str:
    engine = config.engine.value
    return f"{engine}-guided" if config.guide and config.engine is not Engine.GATYS else engine


def params(config: RunConfig, flavour: Flavour) -> str:
    """The engine's settings, in the manifest row (the full config is in run.json)."""
    c = config
    resolved = c.gatys_options().resolved(flavour)
    gatys = f"content_weight={resolved.content_weight:.6g} tv_weight={resolved.tv_weight:.6g}"
    if c.style_layer_weights is not None:
        gatys += " style_layer_weights=" + ",".join(f"{w:g}" for w in c.style_layer_weights)
    gatys += " normalize_gradients" * c.normalize_gradients
    extras = [f"style_scale={c.style_scale}"] * (c.style_scale != 1.0) + ["preserve_color"] * c.preserve_color
    gatys = " ".join([gatys, *extras])
    dream = (
        f"layers={','.join(c.dream_layers)} octaves={c.octaves} octave_scale={c.octave_scale} "
        f"iterations={c.dream_options().iterations} step={c.dream_step} jitter={c.jitter} blend={c.dream_blend}"
    )
    return {Engine.GATYS: gatys, Engine.DREAM: dream}.get(c.engine, f"{gatys} {dream}")


def manifest_row(
    task: Task,
    *,
    size: tuple[int, int],
    losses: dict[str, float],
    iterations: int,
    seconds: float,
    precision: str,
    dream_objective: float | None,
    config: RunConfig,
    weights_id: str,
    flavour: Flavour,
    key: str,
) -> dict[str, Any]:
    """One output image's row (``size`` is its height and width)."""
    source, original = task.source, task.original
    stylized = not original and config.engine is not Engine.DREAM
    style_weight = config.gatys_options(**task.loss_overrides).resolved(flavour).style_weight if stylized else None
    return {
        "path": task.output, "label": source.label, "split": source.split,
        "source": source.source, "style": task.style_name, "k": task.k,
        "engine": "original" if original else engine_name(config),
        "seed": "" if original else task.seed, "weights": "" if original else weights_id,
        "style_mix": task.mix if task.style2 else "",
        "style_weight": "" if style_weight is None else f"{style_weight:.6g}",
        "alpha": "" if original else task.alpha, "size": config.size,
        "width": size[1], "height": size[0], "iterations": iterations,
        "precision": precision,
        **{f"{name}_loss": f"{value:.6g}" for name, value in losses.items()},
        "dream_objective": "" if dream_objective is None else f"{dream_objective:.6g}",
        "params": "" if original else params(config, flavour),
        "key": key,
        "seconds": round(seconds, 3), **source.extra,
    }  # fmt: skip
