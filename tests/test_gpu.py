"""The GPU path: run where CUDA is present (benchmarks/gpu_check.sh runs them on the GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import augment
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
