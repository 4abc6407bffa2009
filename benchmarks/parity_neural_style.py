"""Image quality against neural-style-pt (PyPI ``neural-style`` 0.5.7) on the peer's own objective.

Both optimise the same content and style image (pre-sized so neither resizes), on the same
seeded random VGG19 in the Caffe flavour, in fp32, from the content image. The peer runs
with its defaults (content 5, style 100 per layer, TV 1e-3, L-BFGS, history 100); augment
runs with those weights converted exactly into its own units (the caffe defaults,
``augment/engines/weighting.py``), except TV, whose form differs (neural-style: L1 on 0..255;
augment: Σ(dx² + dy²)^1.25 on [0, 1], weight matched at 512 px). Then the peer's objective,
computed by the peer's own loss modules, is evaluated on the content image, the peer's
output PNG and augment's output PNG. Lower is better.

    pip install --no-deps neural-style==0.5.7
    python benchmarks/parity_neural_style.py                 # 128 px, 50 / 100 / 200 iterations
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from augment.engines.gatys import GatysBatcher, GatysOptions, Job
from augment.engines.losses import rescale_grams
from augment.engines.vgg import Flavour, VGG19Features, random_state_dict
from augment.engines.weighting import DEFAULT_STYLE_LAYERS, DEFAULTS, NEURAL_STYLE, from_mean_squared
from augment.images import load_rgb, resize_long_side, to_image, to_tensor

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
    model: dict, content: torch.Tensor, style: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, list[float]]:
    """augment's engine with neural-style's weights converted exactly: α = 10 and
    β·λ_l = 200/C_l² (= 4·100·k/C_l² with k = 10/(4·5)); TV as in the caffe defaults."""
    alpha, per_layer = from_mean_squared(NEURAL_STYLE["content"], NEURAL_STYLE["style"], DEFAULT_STYLE_LAYERS)
    options = GatysOptions(
        iterations=iterations, content_weight=alpha, style_weight=1.0, style_layer_weights=tuple(per_layer),
        tv_weight=DEFAULTS[Flavour.CAFFE].tv_weight, tv_beta=1.25,
    )  # fmt: skip
    net = VGG19Features(options.layers, flavour=Flavour.CAFFE)
    net.load_features(model)
    net.normalize.scale.fill_(256.0)  # the peer scales pixels by 256, not 255
    batcher = GatysBatcher(net, options, batch_size=1)
    grams = rescale_grams(batcher.style_targets(style), tuple(style.shape[-2:]), tuple(content.shape[-2:]))
    (result,) = batcher.run([Job(key=0, content=content, grams=grams, options=options)])
    return result.image, result.trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", default="50,100,200")
    args = parser.parse_args()
    peer = shutil.which("neural-style", path=str(Path(sys.executable).parent)) or shutil.which("neural-style")
    if not peer:
        sys.exit("neural-style is not installed: pip install --no-deps neural-style==0.5.7")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_file = tmp / "vgg19-d01eb7cb.pth"  # the peer picks its network from the file name
        model = random_state_dict(0)
        torch.save(model, model_file)
        content_png, style_png = tmp / "content.png", tmp / "style.png"
        resize_long_side(load_rgb(CONTENT), args.size).save(content_png)
        resize_long_side(load_rgb(STYLE), args.size).save(style_png)
        content_t, style_t = (
            to_tensor(Image.open(content_png).convert("RGB")),
            to_tensor(Image.open(style_png).convert("RGB")),
        )
        rows = []
        for iterations in [int(n) for n in args.iterations.split(",")]:
            peer_png, ours_png = tmp / f"peer_{iterations}.png", tmp / f"augment_{iterations}.png"
            subprocess.run([
                peer, "-content_image", str(content_png), "-style_image", str(style_png), "-init", "image",
                "-image_size", str(args.size), "-num_iterations", str(iterations), "-model_file", str(model_file),
                "-disable_check", "-gpu", "c", "-backend", "mkl", "-print_iter", "0", "-save_iter", "0",
                "-seed", "0", "-output_image", str(peer_png),
            ], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            image, trace = run_augment(model, content_t, style_t, iterations)
            to_image(image).save(ours_png)
            start, theirs, ours = peer_objective(
                model_file, args.size, content_png, style_png, [content_png, peer_png, ours_png]
            )
            rises = sum(1 for a, b in zip(trace, trace[1:]) if b > a * (1 + 1e-3))
            rows.append({
                "iterations": iterations, "content_image": round(start, 1), "peer": round(theirs, 2),
                "augment": round(ours, 2), "augment_over_peer": round(ours / theirs, 3),
                "augment_trace_rises": rises,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"size": args.size, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
