"""Optimisers for a batch of independent problems: one state, step and stop per image.

Each row of ``x`` (``[B, N]``) is its own optimisation problem. Rows share tensors so one
VGG19 pass serves all of them, but no quantity crosses rows: an image's result does not depend
on what else is in its batch. The update rule is torch.optim.LBFGS's without line search
(same inverse-Hessian estimate, same first-step scaling, same curvature check), so one row
behaves like ``torch.optim.LBFGS(max_iter=1)`` called once per iteration.

History is a ring of ``history_size`` slots shared by all rows and advanced once per step;
a row marks the slots it wrote as valid. A row whose curvature check fails leaves its slot
invalid, so it keeps the accepted pairs of the last ``history_size`` steps (torch keeps the
last ``history_size`` accepted pairs: the two differ only when pairs are rejected).

The curvature pair is built from the step actually taken, ``s = x_k − x_{k−1}``, not from the
step proposed (``d·t``, as torch does): the caller may move ``x`` between steps (the engine
clamps pixels to [0, 1]), and a pair describing a move that did not happen corrupts the
inverse-Hessian estimate (measured: loss spikes of 10x on a clamped image; see docs/method.md).
Without such moves the two are equal up to rounding.

The direction is computed in the compact form of Byrd, Nocedal and Schnabel (1994), which is
the two-loop recursion's product ``H·(−g)`` written as matrices: one batched matrix product
reads the history to get every ``sᵢ·v`` and ``yᵢ·v`` at once (for ``v`` = −g and the newest
pair), a triangular solve of size ``history`` per row (float64: tiny) gives the coefficients,
and a second batched product adds up the history. The two-loop recursion reads the history
as often but launches ~10 kernels per slot, one slot after another, and writes a temporary the
size of the batch for each (measured on an H100: 43 % of an iteration at history 100).
The products ``sᵢ·yⱼ`` and ``yᵢ·yⱼ`` are kept from step to step: a new pair adds one row and
column to them.
"""

from __future__ import annotations

import contextlib

import torch

from .precision import tf32


def _exact_matmul(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Full fp32 products: the engine turns TF32 on for the network, and TF32's 10-bit
    mantissa would spoil the dot products L-BFGS is built from."""
    return tf32(device, enabled=False)


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
        # pairs[row, slot] = (s, y): a row's whole history is one block, read by one product.
        self.pairs = torch.zeros(capacity, history_size, 2, numel, **kw)
        small = {"device": device, "dtype": torch.float64}
        self.sy = torch.zeros(capacity, history_size, history_size, **small)  # sy[r, i, j] = sᵢ·yⱼ
        self.yy = torch.zeros(capacity, history_size, history_size, **small)  # yy[r, i, j] = yᵢ·yⱼ
        self.valid = torch.zeros(capacity, history_size, dtype=torch.bool, device=device)
        self.head = 0  # next ring slot to write
        self.filled = 0  # ring slots written at least once
        self.n_iter = torch.zeros(capacity, dtype=torch.long, device=device)
        self.prev_x = torch.zeros(capacity, numel, **kw)  # where the last step started
        self.prev_grad = torch.zeros(capacity, numel, **kw)
        self.h_diag = torch.ones(capacity, **kw)

    def reset(self, rows: torch.Tensor) -> None:
        """Start fresh problems in ``rows`` (an index tensor), e.g. when a new image joins."""
        self.n_iter[rows] = 0
        self.valid[rows] = False
        self.h_diag[rows] = 1.0
        self.pairs[rows] = 0.0  # an old image's non-finite pair times a zero coefficient is NaN
        self.prev_x[rows] = 0.0
        self.prev_grad[rows] = 0.0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One L-BFGS iteration for ``rows`` (distinct, in any order); ``x`` and ``grad`` are ``[len(rows), N]``
        and ``x`` is updated in place. Returns a bool mask of the rows that took a step (a row
        whose gradient vanished stays put; one whose L-BFGS direction does not descend steps
        along −g).

        The work runs on rows 0..max(rows) as views of the state, the rows not stepping masked
        out: gathering the stepping rows' history would copy all of it (28 GB at 45 images of
        512 px, history 100) at every step after an early stop. Nothing is changed until every
        allocation is made: an out-of-memory error leaves the state as it was."""
        hi = int(rows.max()) + 1
        prefix = slice(0, hi)
        dtype = self.prev_grad.dtype
        if len(rows) == hi and torch.equal(rows.cpu(), torch.arange(hi)):  # rows 0..n-1, in order
            g, x_now, idle = grad.to(dtype), x.to(dtype), None
        else:  # any order, gaps allowed: scattered into the prefix (x-sized, not history-sized)
            g = torch.zeros(hi, grad.shape[1], dtype=dtype, device=grad.device).index_copy_(0, rows, grad.to(dtype))
            x_now = torch.zeros_like(g).index_copy_(0, rows, x.to(dtype))
            idle = torch.ones(hi, dtype=torch.bool, device=g.device).index_fill_(0, rows, False)
        first = self.n_iter[prefix] == 0
        converged = g.abs().amax(dim=1) <= self.tolerance_grad
        if idle is not None:
            converged |= idle  # a row not stepping is left as it is, like a converged one

        # Curvature pair from the step actually taken: s = x − x_prev, y = g − g_prev. A pair
        # that fails the check is stored as zeros: a zero weight times a non-finite pair (a
        # diverged image's, or a new image's first step) would still be NaN.
        slot = self.head
        s = x_now - self.prev_x[prefix]
        y = g - self.prev_grad[prefix]
        ys = (y * s).sum(dim=1)
        accept = ~first & ~converged & (ys > 1e-10)
        s, y = s.where(accept[:, None], 0.0), y.where(accept[:, None], 0.0)
        used = min(self.filled + 1, self.m)  # slots 0..used-1 hold pairs (all once the ring has wrapped)
        replaced = self.pairs[prefix, slot].clone()  # put back if anything below runs out of memory
        self.pairs[prefix, slot, 0] = s
        self.pairs[prefix, slot, 1] = y
        try:
            d, t, moves, gamma, products = self._direction(prefix, slot, used, g, s, y, first, converged, accept)
            step = torch.where(moves[:, None], d * t[:, None], torch.zeros_like(d))
            prev_x = torch.where(converged[:, None], self.prev_x[prefix], x_now)
            prev_grad = torch.where(converged[:, None], self.prev_grad[prefix], g)
        except BaseException:
            self.pairs[prefix, slot] = replaced
            raise
        # Commit: writes into tensors that exist, no allocation of any size.
        self.valid[:, slot] = False  # the ring slot is reused: drop what a row not stepping had there
        self.valid[prefix, slot] = accept
        self.head = (self.head + 1) % self.m
        self.filled = used
        self.sy[prefix, :used, :used], self.yy[prefix, :used, :used] = products
        self.h_diag[prefix] = gamma.to(self.h_diag.dtype)
        self.prev_x[prefix] = prev_x
        self.prev_grad[prefix] = prev_grad
        self.n_iter[prefix] += (~converged).long()
        x.add_((step if idle is None else step[rows]).to(x.dtype))
        return moves if idle is None else moves[rows]

    def _direction(
        self, prefix: slice, slot: int, used: int, g: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
        first: torch.Tensor, converged: torch.Tensor, accept: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """The step d·t (d = H·(−g)), which rows move, the new γ and the new pair's products."""
        # One pass over the history: every sᵢ and yᵢ against v = −g and the new pair.
        batch = self.pairs[prefix, :used].reshape(len(g), 2 * used, -1)  # rows s₀, y₀, s₁, y₁, … (a view)
        with _exact_matmul(g.device):
            # [B, 3, N] read transposed: measured 2.6x faster than a [B, N, 3] operand with MKL.
            vectors = torch.stack([-g, s, y], dim=1)
            dots = torch.bmm(batch, vectors.transpose(1, 2)).double().view(len(g), used, 2, 3)
        ys_new, yy_new = dots[:, slot, 0, 2], dots[:, slot, 1, 2]
        gamma = torch.where(accept, ys_new / yy_new.clamp_min(1e-30), self.h_diag[prefix].double())
        valid = self.valid[prefix].clone()
        valid[:, slot] = accept
        products = self._products(prefix, slot, used, dots)
        coefficients = self._coefficients(slot, used, dots, gamma, valid, products)
        with _exact_matmul(g.device):
            history_part = torch.bmm(coefficients.to(g.dtype).view(len(g), 1, 2 * used), batch).squeeze(1)
        r = history_part - gamma.to(g.dtype)[:, None] * g  # H·(−g)
        # −g where H·(−g) does not descend (rounding in a badly conditioned history can make
        # it so): a step like the first, not a lost iteration standing still.
        steep = first | ((g * r).sum(dim=1) > -self.tolerance_change)
        d = torch.where(steep[:, None], -g, r)
        # torch's step length: scaled by 1/|g|₁ on the first iteration (and for −g), lr after.
        t = torch.where(steep, (1.0 / g.abs().sum(dim=1)).clamp(max=1.0) * self.lr, torch.full_like(g[:, 0], self.lr))
        gtd = (g * d).sum(dim=1)
        moves = ~converged & (gtd <= -self.tolerance_change)
        return d, t, moves, gamma, products

    def _products(self, prefix: slice, slot: int, used: int, dots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sᵢ·yⱼ and yᵢ·yⱼ over the used slots with the new pair's row and column (small:
        rows × history² in float64), committed by the caller once the step has all it needs."""
        sy, yy = self.sy[prefix, :used, :used].clone(), self.yy[prefix, :used, :used].clone()
        sy[:, :, slot] = dots[:, :, 0, 2]  # sᵢ·y_new
        sy[:, slot, :] = dots[:, :, 1, 1]  # s_new·yⱼ
        yy[:, :, slot] = dots[:, :, 1, 2]
        yy[:, slot, :] = dots[:, :, 1, 2]
        return sy, yy

    def _coefficients(
        self, newest: int, used: int, dots: torch.Tensor, gamma: torch.Tensor, valid: torch.Tensor,
        products: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:  # fmt: skip
        """Weights of each sᵢ and yᵢ in H·v (v = −g) in the compact form, H₀ = γI:
        H·v = γv + S·w − γY·p with p = R⁻¹Sᵀv, w = R⁻ᵀ((D + γYᵀY)p − γYᵀv),
        R the upper triangle of SᵀY (pairs oldest first), D its diagonal. A row's invalid pairs
        get a unit diagonal and zeros elsewhere, which gives them zero weight."""
        order = torch.tensor([(newest - used + 1 + k) % self.m for k in range(used)], device=dots.device)
        valid = valid[:, :used][:, order]
        both = valid[:, :, None] & valid[:, None, :]
        sy = products[0][:, order][:, :, order].where(both, 0.0)
        yy = products[1][:, order][:, :, order].where(both, 0.0)
        diagonal = sy.diagonal(dim1=1, dim2=2)
        r = sy.triu(1) + torch.diag_embed(diagonal.where(valid, 1.0))
        s_dot_v = dots[:, order, 0, 0].where(valid, 0.0)[..., None]
        y_dot_v = dots[:, order, 1, 0].where(valid, 0.0)[..., None]
        g3 = gamma[:, None, None]
        p = torch.linalg.solve_triangular(r, s_dot_v, upper=True)
        rhs = diagonal[..., None] * p + g3 * (yy @ p) - g3 * y_dot_v
        w = torch.linalg.solve_triangular(r.transpose(1, 2), rhs, upper=False)
        coefficients = torch.zeros(len(gamma), used, 2, dtype=torch.float64, device=dots.device)
        coefficients[:, order, 0] = w[..., 0]
        coefficients[:, order, 1] = -(g3 * p)[..., 0]
        return coefficients


class BatchAdam:
    """Adam (torch's defaults: betas 0.9/0.999, eps 1e-8) with a step count per row."""

    def __init__(
        self,
        capacity: int,
        numel: int,
        *,
        lr: float = 0.02,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, 0.9, 0.999, 1e-8
        self.exp_avg = torch.zeros(capacity, numel, device=device, dtype=dtype)
        self.exp_avg_sq = torch.zeros(capacity, numel, device=device, dtype=dtype)
        self.n_iter = torch.zeros(capacity, dtype=torch.long, device=device)

    def reset(self, rows: torch.Tensor) -> None:
        self.n_iter[rows] = 0
        self.exp_avg[rows] = 0.0
        self.exp_avg_sq[rows] = 0.0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        g = grad.to(self.exp_avg.dtype)
        self.n_iter[rows] += 1
        step = self.n_iter[rows].to(g.dtype)[:, None]
        m = self.exp_avg[rows].mul_(self.beta1).add_(g, alpha=1 - self.beta1)
        v = self.exp_avg_sq[rows].mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
        denom = (v / (1 - self.beta2**step)).sqrt_().add_(self.eps)
        x.add_((-self.lr / (1 - self.beta1**step)) * m / denom)
        return torch.ones(len(rows), dtype=torch.bool, device=x.device)
