"""The batched optimisers: equal to torch's on one problem, independent across a batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from augment.engines.optim import BatchAdam, BatchLBFGS


def _problem(seed: int, n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


def _loss(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # A smooth non-quadratic objective: quadratic plus a quartic term.
    return 0.5 * x @ a @ x - b @ x + 0.05 * (x**4).sum()


def _torch_lbfgs(a: torch.Tensor, b: torch.Tensor, steps: int, history: int) -> torch.Tensor:
    x = torch.zeros(a.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=0.0, tolerance_change=0.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(x, a, b)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach()


def _batch_lbfgs(problems: list[tuple[torch.Tensor, torch.Tensor]], steps: int, history: int) -> torch.Tensor:
    n = problems[0][0].shape[0]
    opt = BatchLBFGS(
        len(problems), n, history_size=history, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64
    )
    rows = torch.arange(len(problems))
    opt.reset(rows)
    x = torch.zeros(len(problems), n, dtype=torch.float64)
    for _ in range(steps):
        xr = x.clone().requires_grad_(True)
        sum(_loss(xr[i], a, b) for i, (a, b) in enumerate(problems)).backward()
        opt.step(rows, x, xr.grad)
    return x


def test_matches_torch_lbfgs_on_one_problem() -> None:
    a, b = _problem(0)
    for history in (100, 5):  # 5: the ring wraps around
        expected = _torch_lbfgs(a, b, steps=25, history=history)
        got = _batch_lbfgs([(a, b)], steps=25, history=history)[0]
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-10), (history, (got - expected).abs().max())


def test_each_row_is_independent_of_the_batch() -> None:
    problems = [_problem(seed) for seed in range(4)]
    together = _batch_lbfgs(problems, steps=20, history=10)
    for i, problem in enumerate(problems):
        alone = _batch_lbfgs([problem], steps=20, history=10)[0]
        assert torch.allclose(together[i], alone, rtol=1e-9, atol=1e-10)


def test_a_row_that_joins_later_starts_fresh() -> None:
    problems = [_problem(0), _problem(1)]
    n = problems[0][0].shape[0]
    opt = BatchLBFGS(2, n, history_size=6, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    x = torch.zeros(2, n, dtype=torch.float64)
    opt.reset(torch.arange(2))
    for step in range(15):
        rows = torch.arange(2) if step >= 5 else torch.arange(1)  # row 1 joins at step 5
        xr = x[rows].clone().requires_grad_(True)
        sum(_loss(xr[j], *problems[int(r)]) for j, r in enumerate(rows)).backward()
        x_rows = x[rows]
        opt.step(rows, x_rows, xr.grad)
        x[rows] = x_rows
    assert torch.allclose(x[1], _torch_lbfgs(*problems[1], steps=10, history=6), rtol=1e-9, atol=1e-10)
    assert torch.allclose(x[0], _torch_lbfgs(*problems[0], steps=15, history=6), rtol=1e-9, atol=1e-10)


def test_batch_adam_matches_torch_adam() -> None:
    a, b = _problem(3)
    x = torch.zeros(a.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.05)
    mine = BatchAdam(1, a.shape[0], lr=0.05)
    y = torch.zeros(1, a.shape[0])
    mine.reset(torch.arange(1))
    for _ in range(10):
        opt.zero_grad()
        _loss(x, a, b).backward()
        opt.step()
        yr = y.double().clone().requires_grad_(True)
        _loss(yr[0], a, b).backward()
        mine.step(torch.arange(1), y, yr.grad.float())
    assert torch.allclose(y[0].double(), x.detach(), atol=1e-5)


def test_rows_in_any_order_keep_their_own_state() -> None:
    # Rows [0, 2, 1, 3] are not the slice 0:4: each row's history must stay with its problem,
    # whatever order the caller lists the rows in from one step to the next.
    problems = [_problem(seed) for seed in range(4)]
    n = problems[0][0].shape[0]
    opt = BatchLBFGS(4, n, history_size=10, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    opt.reset(torch.arange(4))
    state = torch.zeros(4, n, dtype=torch.float64)  # state[r]: problem r's x
    for step in range(12):
        order = torch.tensor([0, 2, 1, 3] if step % 2 else [0, 1, 2, 3])
        x = state[order].clone()
        xr = x.clone().requires_grad_(True)
        sum(_loss(xr[j], *problems[int(r)]) for j, r in enumerate(order)).backward()
        opt.step(order, x, xr.grad)
        state[order] = x
    for r, problem in enumerate(problems):
        expected = _torch_lbfgs(*problem, steps=12, history=10)
        assert torch.allclose(state[r], expected, rtol=1e-9, atol=1e-10), r


def test_the_curvature_pair_is_the_step_actually_taken() -> None:
    # The engine clamps pixels after each step; the history must describe where x went, not
    # where the optimiser proposed to go (else L-BFGS's model is of a move that never happened).
    a, b = _problem(0, n=6)
    opt = BatchLBFGS(1, 6, history_size=5, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    rows = torch.arange(1)
    opt.reset(rows)
    x = torch.full((1, 6), 0.5, dtype=torch.float64)
    positions = [x.clone()]
    for _ in range(4):
        xr = x.clone().requires_grad_(True)
        _loss(xr[0], a, b).backward()
        opt.step(rows, x, xr.grad)
        x.clamp_(0.45, 0.55)  # the caller's projection binds
        positions.append(x.clone())
    # Slots 1..3 hold the pairs of steps 1..3 (slot 0: the first call has no pair yet).
    for k in (1, 2, 3):
        assert torch.allclose(opt.pairs[0, k, 0], positions[k][0] - positions[k - 1][0], atol=1e-15)


def test_direction_is_the_bfgs_product_of_the_accepted_pairs() -> None:
    # A non-convex objective makes some curvature pairs fail the check (sᵀy ≤ 0); the compact
    # form must give them zero weight. The reference is the dense BFGS recursion over the
    # accepted pairs, oldest first, from H₀ = γI.
    n, history = 12, 6
    g0 = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g0, dtype=torch.float64), torch.randn(n, generator=g0, dtype=torch.float64)

    def gradient(x: torch.Tensor) -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        (torch.cos(3 * xr @ a).sum() + 0.05 * (xr**2).sum() - b @ xr).backward()
        return xr.grad

    opt = BatchLBFGS(1, n, history_size=history, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    rows = torch.arange(1)
    opt.reset(rows)
    x = torch.zeros(1, n, dtype=torch.float64)
    rejected = 0
    for _ in range(14):  # past the ring's length: it wraps
        x.clamp_(-1, 1)  # keep the steps short enough to stay in the cosine's bumps
        g = gradient(x[0])
        before = x.clone()
        opt.step(rows, x, g[None])
        rejected += int(not opt.valid[0, (opt.head - 1) % history])
    order = [(opt.head + k) % history for k in range(history)]  # oldest first
    h = opt.h_diag[0] * torch.eye(n, dtype=torch.float64)
    for slot in order:
        if opt.valid[0, slot]:
            s, y = opt.pairs[0, slot, 0], opt.pairs[0, slot, 1]
            rho = 1.0 / (s @ y)
            left = torch.eye(n, dtype=torch.float64) - rho * torch.outer(s, y)
            h = left @ h @ left.T + rho * torch.outer(s, s)
    assert rejected >= 2  # the test would not test the masking otherwise
    assert torch.allclose(x[0] - before[0], -h @ g, rtol=1e-8, atol=1e-12)


def test_a_row_that_sits_out_a_step_drops_its_pair_in_the_reused_slot() -> None:
    # The ring advances for all rows; a row not stepping must not keep its pair from a lap
    # ago in that slot (it would be taken as the newest, out of order).
    problems = [_problem(0, n=8), _problem(1, n=8)]
    opt = BatchLBFGS(2, 8, history_size=3, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    opt.reset(torch.arange(2))
    x = torch.zeros(2, 8, dtype=torch.float64)
    for step in range(8):
        rows = torch.arange(1) if step == 6 else torch.arange(2)  # row 1 sits out step 6
        xr = x[rows].clone().requires_grad_(True)
        sum(_loss(xr[j], *problems[int(r)]) for j, r in enumerate(rows)).backward()
        x_rows = x[rows]
        opt.step(rows, x_rows, xr.grad)
        x[rows] = x_rows
        if step == 6:
            assert not opt.valid[1, (opt.head - 1) % 3]
    assert torch.isfinite(x).all()


def test_a_new_image_in_a_row_whose_last_one_diverged_starts_clean() -> None:
    a, b = _problem(0)
    opt = BatchLBFGS(1, a.shape[0], history_size=5, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    rows = torch.arange(1)
    opt.reset(rows)
    x = torch.zeros(1, a.shape[0], dtype=torch.float64)
    opt.step(rows, x, torch.full_like(x, float("nan")))  # the previous image's last gradient
    opt.reset(rows)  # a new image joins this row
    x = torch.zeros(1, a.shape[0], dtype=torch.float64)
    for _ in range(10):
        xr = x.clone().requires_grad_(True)
        _loss(xr[0], a, b).backward()
        opt.step(rows, x, xr.grad)
    assert torch.allclose(x[0], _torch_lbfgs(a, b, steps=10, history=5), rtol=1e-9, atol=1e-10)


class _LargestOutput(TorchDispatchMode):
    """The largest new tensor (elements of memory it allocated) any operation makes while this
    is active; views of existing tensors are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        flat = [*args, *(kwargs or {}).values()]
        inputs = {a.untyped_storage().data_ptr() for a in flat if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def test_rows_with_gaps_step_on_views_of_the_history_and_keep_their_own_state() -> None:
    # Row 1 stops after 6 steps (an early finish); rows 0 and 2 go on. Their steps must read
    # the history where it is: gathering rows [0, 2] copied all of it (28 GB at 45 x 512 px).
    problems = [_problem(seed) for seed in range(3)]
    n, history = problems[0][0].shape[0], 10
    opt = BatchLBFGS(3, n, history_size=history, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    opt.reset(torch.arange(3))
    state = torch.zeros(3, n, dtype=torch.float64)
    largest = 0
    for step in range(12):
        order = torch.tensor([0, 1, 2] if step < 6 else [0, 2])
        x = state[order].clone()
        xr = x.clone().requires_grad_(True)
        sum(_loss(xr[j], *problems[int(r)]) for j, r in enumerate(order)).backward()
        with _LargestOutput() as watch:
            opt.step(order, x, xr.grad)
        if step >= 6:
            largest = max(largest, watch.largest)
        state[order] = x
    # At most [rows, 3, N] (the vectors) or [rows, history, history] (s·y products, float64),
    # never the history [rows, history, 2, N] or half of it.
    assert largest <= max(3 * 3 * n, 3 * history * history) < 3 * history * 2 * n / 2
    for r, steps in ((0, 12), (1, 6), (2, 12)):
        expected = _torch_lbfgs(*problems[r], steps=steps, history=history)
        assert torch.allclose(state[r], expected, rtol=1e-9, atol=1e-10), r


def test_a_step_that_runs_out_of_memory_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = [_problem(seed) for seed in range(2)]
    n, history, rows = problems[0][0].shape[0], 5, torch.arange(2)
    opt = BatchLBFGS(2, n, history_size=history, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    opt.reset(rows)
    x = torch.zeros(2, n, dtype=torch.float64)
    real_bmm, calls = torch.bmm, []

    def bmm_out_of_memory_once(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 9:  # the 5th step's first product: its pair is already in the ring
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_bmm(*args)

    monkeypatch.setattr(torch, "bmm", bmm_out_of_memory_once)
    for _ in range(8):
        xr = x.clone().requires_grad_(True)
        sum(_loss(xr[i], a, b) for i, (a, b) in enumerate(problems)).backward()
        before = x.clone()
        try:
            opt.step(rows, x, xr.grad)
        except torch.cuda.OutOfMemoryError:
            assert torch.equal(x, before)
            opt.step(rows, x, xr.grad)  # the same step again, as the batcher's retry does
    assert len(calls) == 8 * 2 + 1
    for r, problem in enumerate(problems):
        assert torch.allclose(x[r], _torch_lbfgs(*problem, steps=8, history=history), rtol=1e-9, atol=1e-10), r


def test_a_row_whose_direction_does_not_descend_steps_along_minus_g() -> None:
    # A positive-definite history always gives a descent direction; rounding in a badly
    # conditioned one need not. Made here by hand for row 0: no usable pair, no new one (x did
    # not move since the last step) and a negative scale, so H·(−g) = +g, uphill.
    problems = [_problem(seed) for seed in range(2)]
    n, rows = problems[0][0].shape[0], torch.arange(2)
    opt = BatchLBFGS(2, n, history_size=5, tolerance_grad=0.0, tolerance_change=0.0, dtype=torch.float64)
    opt.reset(rows)
    x = torch.zeros(2, n, dtype=torch.float64)

    def gradient() -> tuple[torch.Tensor, list[float]]:
        xr = x.clone().requires_grad_(True)
        losses = [_loss(xr[i], a, b) for i, (a, b) in enumerate(problems)]
        sum(losses).backward()
        return xr.grad, [v.item() for v in losses]

    for _ in range(3):
        opt.step(rows, x, gradient()[0])
    opt.valid[0], opt.h_diag[0], opt.prev_x[0] = False, -1.0, x[0]
    grad, before = gradient()
    moved = opt.step(rows, x, grad)
    _, after = gradient()
    assert moved.tolist() == [True, True]
    assert after[0] < before[0] and after[1] < before[1]  # row 0 went downhill along −g
