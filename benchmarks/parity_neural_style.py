"""Image quality against neural-style-pt (PyPI ``neural-style`` 0.5.7) on the peer's own objective.

Both optimise the same content and style image (pre-sized so neither resizes), on the same
seeded random VGG19 in the Caffe flavour, in fp32, from the content image. The peer runs
with its defaults (content 5, style 100 per layer, TV 1e-3, L-BFGS, history 100); augment
runs with those weights converted exactly into its own units (the caffe defaults,
``augment/engines/weighting.py``), except TV, whose form differs (neural-style-pt: L1 on
0..255; augment: the Lua neural-style's smooth ½·Σ(dx² + dy²), converted exactly). Then the peer's objective,
computed by the peer's own loss modules, is evaluated on the content image, the peer's
output PNG and augment's output PNG. Lower is better.

    pip install --no-deps neural-style==0.5.7
    python benchmarks/parity_neural_style.py       # 128 px; 50/100/200/300 iterations; --scales 1, 0.5,1, 0.25,0.5,1

Each budget is run by the peer (single scale, its only mode) and by augment at each --scales
setting (iterations split over the scales as `augment run` splits them). Times: augment's
engine call in-process; the peer's command time less its start-up (fitted over the budgets).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from augment.config import RunConfig
from augment.engines.options import GatysOptions
from augment.engines.transfer import transfer
from augment.engines.vgg import Flavour, VGG19Features, random_state_dict
from augment.engines.weighting import DEFAULT_STYLE_LAYERS, DEFAULTS, NEURAL_STYLE, from_mean_squared
from augment.io.images import load_rgb, resize_long_side, resize_to, to_image, to_tensor
from augment.pipeline.options import stage_iterations

EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "example"
CONTENT = EXAMPLE / "images" / "ants" / "0013035.jpg"
STYLE = EXAMPLE / "styles" / "starry_night.jpg"


def peer_objective(model_file: Path, size: int, content: Path, style: Path, images: list[Path]) -> list[float]:
    """neural-style's objective (its own ContentLoss, StyleLoss and TVLoss modules, default
    weights and layers) of each image, with targets from ``content`` and ``style``."""
    sys.argv = ["neural_style"]  # the peer parses its command line at import
    from neural_style import neural_style as ns

    cnn, layer_list = ns.loadCaffemodel(str(model_file), "max", "c", True)
    content_layers, style_layers = ["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    net, content_losses, style_losses = torch.nn.Sequential(ns.TVLoss(1e-3)), [], []
    conv = relu = 0
    for layer in cnn:  # the peer's main(): a loss module after each chosen ReLU
        if len(content_losses) == len(content_layers) and len(style_losses) == len(style_layers):
            break
        net.append(layer)
        if isinstance(layer, torch.nn.Conv2d):
            conv += 1
        if isinstance(layer, torch.nn.ReLU):
            name = layer_list["R"][relu]
            relu += 1
            if name in content_layers:
                content_losses.append(ns.ContentLoss(5.0))
                net.append(content_losses[-1])
            if name in style_layers:
                style_losses.append(ns.StyleLoss(100.0))
                net.append(style_losses[-1])
    net.requires_grad_(False)
    for module, target in ((content_losses, content), (style_losses, style)):
        for m in module:
            m.mode = "capture"
        net(ns.preprocess(str(target), size))
        for m in module:
            m.mode = "None"
    for m in content_losses + style_losses:
        m.mode = "loss"
    values = []
    for image in images:
        net(ns.preprocess(str(image), size))
        values.append(float(sum(m.loss for m in [*content_losses, *style_losses, net[0]])))
    return values


def run_augment(
    model: dict, content_png: Path, style_png: Path, size: int, iterations: int, scales: tuple[float, ...]
) -> tuple[torch.Tensor, list[float], float]:
    """augment's engine (the path `augment run` takes, engines/transfer.py) with neural-style's
    weights converted exactly: α = 10 and β·λ_l = 200/C_l² (= 4·100·k/C_l², k = 10/(4·5)),
    the Lua neural-style's TV (the caffe defaults). Coarse-to-fine as `--scales` runs it: the
    stages' shapes, iterations and style sizes from RunConfig. (image, loss trace, seconds)."""
    alpha, per_layer = from_mean_squared(NEURAL_STYLE["content"], NEURAL_STYLE["style"], DEFAULT_STYLE_LAYERS)
    config = RunConfig(size=size, iterations=iterations, scales=scales, shape_step=1)  # the peer's exact shape
    options = GatysOptions(
        iterations=stage_iterations(config)[-1], content_weight=alpha, style_weight=1.0,
        style_layer_weights=tuple(per_layer), tv_weight=DEFAULTS[Flavour.CAFFE].tv_weight,
    )  # fmt: skip
    net = VGG19Features(options.layers, flavour=Flavour.CAFFE)
    net.load_features(model)
    net.normalize.scale.fill_(256.0)  # the peer scales pixels by 256, not 255
    content_img, style_img = Image.open(content_png).convert("RGB"), Image.open(style_png).convert("RGB")
    shapes = config.stage_shapes(*content_img.size)
    assert shapes[-1] == content_img.size, (shapes, content_img.size)  # pre-sized: no resize at full scale
    contents = [to_tensor(resize_to(content_img, shape)) for shape in shapes]
    styles = [[to_tensor(resize_long_side(style_img, config.style_size(max(shape))))] for shape in shapes]
    t0 = time.perf_counter()
    result = transfer(net, contents, styles, options, stage_iterations(config))
    return result.image, result.trace, time.perf_counter() - t0


def _fit_start_up(budgets: list[int], seconds: list[float]) -> float:
    """The peer's fixed cost per command (Python, torch, the model file), from a straight
    line through (iterations, seconds): what its command time is beyond its iterations
    (0 with a single budget: nothing to fit)."""
    if len(set(budgets)) < 2:
        return 0.0
    return max(0.0, statistics.linear_regression(budgets, seconds).intercept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", default="50,100,200,300", help="iteration budgets, comma-separated")
    parser.add_argument("--scales", default="1;0.5,1;0.25,0.5,1", help="--scales settings to compare, ';' between")
    args = parser.parse_args()
    peer = shutil.which("neural-style", path=str(Path(sys.executable).parent)) or shutil.which("neural-style")
    if not peer:
        sys.exit("neural-style is not installed: pip install --no-deps neural-style==0.5.7")
    budgets = [int(n) for n in args.iterations.split(",")]
    settings = [tuple(float(x) for x in s.split(",")) for s in args.scales.split(";")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_file = tmp / "vgg19-d01eb7cb.pth"  # the peer picks its network from the file name
        model = random_state_dict(0)
        torch.save(model, model_file)
        content_png, style_png = tmp / "content.png", tmp / "style.png"
        resize_long_side(load_rgb(CONTENT), args.size).save(content_png)
        resize_long_side(load_rgb(STYLE), args.size).save(style_png)
        rows, peer_seconds = [], []
        for iterations in budgets:
            peer_png = tmp / f"peer_{iterations}.png"
            t0 = time.perf_counter()
            subprocess.run([
                peer, "-content_image", str(content_png), "-style_image", str(style_png), "-init", "image",
                "-image_size", str(args.size), "-num_iterations", str(iterations), "-model_file", str(model_file),
                "-disable_check", "-gpu", "c", "-backend", "mkl", "-print_iter", "0", "-save_iter", "0",
                "-seed", "0", "-output_image", str(peer_png),
            ], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            peer_seconds.append(time.perf_counter() - t0)
            start, theirs = peer_objective(model_file, args.size, content_png, style_png, [content_png, peer_png])
            rows.append({"tool": "neural-style-pt", "scales": "1", "iterations": iterations,
                         "command_s": round(peer_seconds[-1], 2), "peer_objective": round(theirs, 2)})  # fmt: skip
            for scales in settings:
                ours_png = tmp / f"augment_{iterations}_{len(scales)}.png"
                image, trace, seconds = run_augment(model, content_png, style_png, args.size, iterations, scales)
                to_image(image).save(ours_png)
                (ours,) = peer_objective(model_file, args.size, content_png, style_png, [ours_png])
                rows.append({
                    "tool": "augment", "scales": ",".join(f"{s:g}" for s in scales), "iterations": iterations,
                    "compute_s": round(seconds, 2), "peer_objective": round(ours, 2),
                    "trace_rises": sum(1 for a, b in zip(trace, trace[1:]) if b > a * (1 + 1e-3))
                    if len(scales) == 1 else None,
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        start_up = _fit_start_up(budgets, peer_seconds)
        for row in rows:
            if row["tool"] == "neural-style-pt":
                row["compute_s"] = round(row["command_s"] - start_up, 2)
    print(json.dumps({"size": args.size, "torch": torch.__version__, "content_image_objective": round(start, 1),
                      "peer_start_up_s": round(start_up, 2), "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
