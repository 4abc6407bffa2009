"""Optimisers for a batch of independent problems: one state, step and stop per image.

Each row of ``x`` (``[B, N]``) is its own optimisation problem. Rows share tensors so one
VGG19 pass serves all of them, but no quantity crosses rows: an image's result does not depend
on what else is in its batch. The update rule is torch.optim.LBFGS's without line search
(same two-loop recursion, same first-step scaling, same curvature check), so one row behaves
like ``torch.optim.LBFGS(max_iter=1)`` called once per iteration.

History is a ring of ``history_size`` slots shared by all rows and advanced once per step;
a row marks the slots it wrote as valid. A row whose curvature check fails leaves its slot
invalid, so it keeps the accepted pairs of the last ``history_size`` steps (torch keeps the
last ``history_size`` accepted pairs: the two differ only when pairs are rejected).

The curvature pair is built from the step actually taken, ``s = x_k − x_{k−1}``, not from the
step proposed (``d·t``, as torch does): the caller may move ``x`` between steps (the engine
clamps pixels to [0, 1]), and a pair describing a move that did not happen corrupts the
inverse-Hessian estimate (measured: loss spikes of 10x on a clamped image; see docs/method.md).
Without such moves the two are equal up to rounding.
"""

from __future__ import annotations

import torch


class BatchLBFGS:
    def __init__(
        self,
        capacity: int,
        numel: int,
        *,
        lr: float = 1.0,
        history_size: int = 100,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.lr, self.m = lr, history_size
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change
        kw = {"device": device, "dtype": dtype}
        self.old_s = torch.zeros(history_size, capacity, numel, **kw)
        self.old_y = torch.zeros(history_size, capacity, numel, **kw)
        self.rho = torch.zeros(history_size, capacity, **kw)
        self.valid = torch.zeros(history_size, capacity, dtype=torch.bool, device=device)
        self.head = 0  # next ring slot to write
        self.filled = 0  # ring slots written at least once
        self.n_iter = torch.zeros(capacity, dtype=torch.long, device=device)
        self.prev_x = torch.zeros(capacity, numel, **kw)  # where the last step started
        self.prev_grad = torch.zeros(capacity, numel, **kw)
        self.h_diag = torch.ones(capacity, **kw)

    def reset(self, rows: torch.Tensor) -> None:
        """Start fresh problems in ``rows`` (an index tensor), e.g. when a new image joins."""
        self.n_iter[rows] = 0
        self.valid[:, rows] = False
        self.h_diag[rows] = 1.0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One L-BFGS iteration for ``rows``; ``x`` and ``grad`` are ``[len(rows), N]`` and ``x``
        is updated in place. Returns a bool mask of the rows that took a step (a row whose
        gradient vanished, or whose direction is not a descent direction, stays put)."""
        if torch.equal(rows.cpu(), torch.arange(len(rows))):
            rows = slice(0, len(rows))  # type: ignore[assignment]  # rows 0..n-1: views, not gathered copies
        g = grad.to(self.prev_grad.dtype)
        x_now = x.to(g.dtype)
        first = self.n_iter[rows] == 0
        converged = g.abs().amax(dim=1) <= self.tolerance_grad

        # Curvature pair from the step actually taken: s = x − x_prev, y = g − g_prev.
        s = x_now - self.prev_x[rows]
        y = g - self.prev_grad[rows]
        ys = (y * s).sum(dim=1)
        accept = ~first & ~converged & (ys > 1e-10)
        slot = self.head
        self.valid[slot] = False  # the ring slot is reused: drop whatever any row had there
        self.old_s[slot, rows] = s
        self.old_y[slot, rows] = y
        self.rho[slot, rows] = torch.where(accept, 1.0 / ys.clamp_min(1e-30), torch.zeros_like(ys))
        self.valid[slot, rows] = accept
        new_h = ys / (y * y).sum(dim=1).clamp_min(1e-30)
        self.h_diag[rows] = torch.where(accept, new_h, self.h_diag[rows])
        self.head = (self.head + 1) % self.m
        self.filled = min(self.filled + 1, self.m)

        # Two-loop recursion over the ring, newest pair first; invalid slots contribute zero.
        q = -g
        order = [(slot - j) % self.m for j in range(self.filled)]
        alphas = {}
        for index in order:
            valid = self.valid[index, rows]
            alpha = torch.where(valid, self.rho[index, rows] * (self.old_s[index, rows] * q).sum(dim=1), 0.0)
            alphas[index] = alpha
            q = q - alpha[:, None] * self.old_y[index, rows]
        r = q * self.h_diag[rows, None]
        for index in reversed(order):
            valid = self.valid[index, rows]
            beta = torch.where(valid, self.rho[index, rows] * (self.old_y[index, rows] * r).sum(dim=1), 0.0)
            r = r + self.old_s[index, rows] * (alphas[index] - beta)[:, None]
        d = torch.where(first[:, None], -g, r)

        # torch's step length: scaled by 1/|g|₁ on the first iteration, lr after.
        t = torch.where(first, (1.0 / g.abs().sum(dim=1)).clamp(max=1.0) * self.lr, torch.full_like(ys, self.lr))
        gtd = (g * d).sum(dim=1)
        moves = ~converged & (gtd <= -self.tolerance_change)

        self.prev_x[rows] = torch.where(converged[:, None], self.prev_x[rows], x_now)
        self.prev_grad[rows] = torch.where(converged[:, None], self.prev_grad[rows], g)
        self.n_iter[rows] += (~converged).long()
        x.add_(torch.where(moves[:, None], d * t[:, None], torch.zeros_like(d)).to(x.dtype))
        return moves


class BatchAdam:
    """Adam (torch's defaults: betas 0.9/0.999, eps 1e-8) with a step count per row."""

    def __init__(self, capacity: int, numel: int, *, lr: float = 0.02, device: torch.device | str = "cpu") -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, 0.9, 0.999, 1e-8
        self.exp_avg = torch.zeros(capacity, numel, device=device)
        self.exp_avg_sq = torch.zeros(capacity, numel, device=device)
        self.n_iter = torch.zeros(capacity, dtype=torch.long, device=device)

    def reset(self, rows: torch.Tensor) -> None:
        self.n_iter[rows] = 0
        self.exp_avg[rows] = 0.0
        self.exp_avg_sq[rows] = 0.0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        g = grad.float()
        self.n_iter[rows] += 1
        step = self.n_iter[rows].to(g.dtype)[:, None]
        m = self.exp_avg[rows].mul_(self.beta1).add_(g, alpha=1 - self.beta1)
        v = self.exp_avg_sq[rows].mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
        denom = (v / (1 - self.beta2**step)).sqrt_().add_(self.eps)
        x.add_((-self.lr / (1 - self.beta1**step)) * m / denom)
        return torch.ones(len(rows), dtype=torch.bool, device=x.device)
