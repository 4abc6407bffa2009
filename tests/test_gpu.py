"""The GPU path: run where CUDA is present (benchmarks/gpu_check.sh runs them on the GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import augment
from augment.engines.losses import gram, style_loss
from augment.engines.optim import BatchLBFGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DATA = Path(__file__).parent / "data"


def test_lbfgs_on_the_gpu_follows_the_cpu_with_tf32_on() -> None:
    # The engine turns TF32 on for the network; the optimiser's products must stay fp32.
    torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 4096, generator=g)
    paths = {}
    for device in ("cpu", "cuda"):
        opt = BatchLBFGS(3, 4096, history_size=10, tolerance_grad=0.0, tolerance_change=0.0, device=device)
        rows = torch.arange(3, device=device)
        opt.reset(rows)
        x = torch.zeros(3, 4096, device=device)
        t = target.to(device)
        for _ in range(15):
            opt.step(rows, x, (x - t) * torch.linspace(0.1, 2.0, 4096, device=device) + 0.01 * torch.sin(20 * x))
        paths[device] = x.cpu()
    assert torch.allclose(paths["cuda"], paths["cpu"], atol=1e-4)
    assert torch.backends.cuda.matmul.allow_tf32  # restored after each step


def test_bf16_gram_and_style_gradient_on_the_gpu_match_exact_maths() -> None:
    # bf16 activations: the Gram on tensor cores with fp32 output, the backward in one batched
    # bf16 product. Same bounds as the CPU's (test_losses: 0.24% measured there).
    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(3, 64, 24, 20, generator=g)).to(torch.bfloat16)
    exact = feats.double().flatten(2)
    exact_gram = exact @ exact.transpose(1, 2)
    assert torch.allclose(gram(feats.cuda()).double().cpu(), exact_gram, rtol=1e-5, atol=1e-3)
    target = exact_gram * (1 + 0.3 * torch.rand(3, 64, 64, generator=g, dtype=torch.float64))
    target = (target + target.transpose(1, 2)) / 2
    x = feats.cuda().requires_grad_(True)
    style_loss({"l": x}, {"l": target.float().cuda()}, {"l": 1.0}).sum().backward()
    reference = (1.0 / (64 * 64 * (24 * 20) ** 2)) * ((exact_gram - target) @ exact)
    error = (x.grad.double().cpu().flatten(2) - reference).norm() / reference.norm()
    assert error < 0.005, error


@pytest.mark.parametrize("engine", ["gatys", "dream", "gatys+dream"])
def test_a_run_on_the_gpu_batches_and_finishes(tmp_path: Path, engine: str) -> None:
    out = tmp_path / "out"
    summary = augment.run(
        manifest=str(DATA / "hymenoptera-mini" / "manifest.csv"), styles=str(DATA / "styles"), out=str(out),
        per_image=1, size=64, iterations=5, dream_iterations=2, weights="random", device="cuda", engine=engine,
        quiet=True,
    )  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert summary.written >= 20 and summary.failed_rows == 0
    assert run["timings"]["batch_size"] > 4  # sized from GPU memory, not the CPU's 4
