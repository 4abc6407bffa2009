"""Where one batched style-transfer iteration spends its time, on whatever device is present.

Times, for a batch of B images of H×W with a full L-BFGS history: the VGG19 pass (forward and
backward, with the losses), the loss terms alone (their forward and backward on fixed
activations), the optimiser step, and a forward pass alone; prints the split and the model
FLOP utilisation as one JSON object. Random weights cost what real ones cost.

    python benchmarks/profile_iteration.py                                  # CPU: B 4, 128×128
    python benchmarks/profile_iteration.py --device cuda --batch 45 --height 512 --width 341
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import time
from collections.abc import Callable

import torch

from augment.engines.losses import gram
from augment.engines.objective import loss_terms, loss_weights
from augment.engines.optim import BatchLBFGS
from augment.engines.options import GatysOptions
from augment.engines.precision import HALF_DTYPES, Precision, resolve_precision, tf32, use_channels_last
from augment.engines.vgg import Flavour, VGG19Features

# Dense bf16 spec peaks (FLOP/s), for model FLOP utilisation; other cards: --peak-tflops.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def flops_per_iteration(height: int, width: int, options: GatysOptions | None = None) -> float:
    """One iteration of one image, counted from layer shapes: every convolution up to the
    deepest loss layer forward (2·Cin·Cout·9·H·W) and backward for the input gradient only (as
    much again); Grams, pooling and the optimiser are left out (a few percent)."""
    h, w, flops = height, width, 0.0
    for module in VGG19Features((options or GatysOptions()).layers).features:
        if isinstance(module, torch.nn.Conv2d):
            flops += 2 * module.in_channels * module.out_channels * 9 * h * w
        elif isinstance(module, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            h, w = h // 2, w // 2
    return 2 * flops


def peak_flops(device: torch.device, given_tflops: float | None) -> float | None:
    if given_tflops:
        return given_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in PEAKS.items() if key in name), None)
    return None


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` (device synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--history", type=int, default=100, help="L-BFGS history (filled before timing)")
    parser.add_argument("--precision", default="auto", choices=[p.value for p in Precision])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for MFU")
    args = parser.parse_args()

    device = torch.device(args.device)
    precision = resolve_precision(Precision(args.precision), device)
    dtype = HALF_DTYPES.get(precision, torch.float32)
    channels_last = use_channels_last(device, precision)
    if precision is Precision.FP32:  # as GatysBatcher runs fp32: TF32 inside, for the whole script here
        tf32(device).__enter__()
    options = GatysOptions().resolved(Flavour.CAFFE)
    net = VGG19Features(options.layers, flavour=Flavour.CAFFE)
    net.init_random(0)
    net = copy.deepcopy(net).to(device=device, dtype=dtype)
    b, h, w = args.batch, args.height, args.width

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(dtype)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return net(images)

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3 * h * w, generator=generator).to(device)
    with torch.no_grad():
        style = forward(torch.rand(1, 3, h, w, generator=generator).to(device))
        grams = {layer: gram(style[layer]) for layer in options.style_layers}
        content = forward(torch.rand(b, 3, h, w, generator=generator).to(device))[options.content_layer].float()
    weights = {k: v.to(device) for k, v in loss_weights(options, b).items()}
    grad = torch.zeros_like(x)

    def iteration() -> None:  # what GatysBatcher does per iteration, less the optimiser
        image = x.view(b, 3, h, w).detach().requires_grad_(True)
        feats = forward(image)
        loss_terms(feats, image, content, grams, options, weights)["total"].sum().backward()
        grad.copy_(image.grad.reshape(b, -1))

    with torch.no_grad():
        fixed = {k: v.detach() for k, v in forward(x.view(b, 3, h, w)).items()}

    def losses_only() -> None:
        feats = {k: v.clone().requires_grad_(True) for k, v in fixed.items()}
        image = x.view(b, 3, h, w).detach().requires_grad_(True)
        loss_terms(feats, image, content, grams, options, weights)["total"].sum().backward()

    def forward_only() -> None:
        with torch.no_grad():
            forward(x.view(b, 3, h, w))

    optimiser = BatchLBFGS(b, 3 * h * w, history_size=args.history, tolerance_grad=0.0, tolerance_change=0.0,
                           device=device)  # fmt: skip
    rows = torch.arange(b, device=device)
    optimiser.reset(rows)
    # A full history of real pairs: a cheap quadratic (gradient 0.1·(x − x*)) stands in for VGG.
    target = torch.rand(b, 3 * h * w, generator=generator).to(device)
    probe = x.clone()
    for _ in range(args.history + 1):
        optimiser.step(rows, probe, 0.1 * (probe - target) + 1e-3 * torch.sin(probe * 50))
    step_input = probe.clone()

    def optimiser_step() -> None:
        probe.copy_(step_input)
        optimiser.step(rows, probe, grad)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {
        "network_and_losses": timed(iteration, device, args.repeats, args.warmup),
        "losses": timed(losses_only, device, args.repeats, args.warmup),
        "forward": timed(forward_only, device, args.repeats, args.warmup),
        "optimiser_step": timed(optimiser_step, device, args.repeats, args.warmup),
    }
    per_iteration = seconds["network_and_losses"] + seconds["optimiser_step"]
    flops = flops_per_iteration(h, w, options) * b
    peak = peak_flops(device, args.peak_tflops)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
        "batch": b, "height": h, "width": w, "history": args.history, "precision": precision.value,
        "ms": {name: round(1e3 * value, 2) for name, value in seconds.items()} | {
            "iteration": round(1e3 * per_iteration, 2),
            "network": round(1e3 * (seconds["network_and_losses"] - seconds["losses"]), 2),
        },
        "share_of_iteration": {
            "network": round((seconds["network_and_losses"] - seconds["losses"]) / per_iteration, 3),
            "losses": round(seconds["losses"] / per_iteration, 3),
            "optimiser_step": round(seconds["optimiser_step"] / per_iteration, 3),
        },
        "tflop_per_s": round(flops / per_iteration / 1e12, 2),
        "mfu": round(flops / per_iteration / peak, 3) if peak else None,
        "seconds_per_image_300_iterations": round(300 * per_iteration / b, 3),
    }  # fmt: skip
    if device.type == "cuda":
        report["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
