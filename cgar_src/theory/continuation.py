r"""The transition with feedback: which one-hot gates are self-consistent, whether the fixed point is unique, and
numerical continuation in the penalisation alpha (book: chapter ``04_phase_transition``).

**One-hot fixed points.** For the sparsemax gate, the one-hot gate :math:`e_j` is self-consistent at
:math:`(\alpha, \lambda)` iff :math:`\mathrm{sparsemax}((s_c + \lambda p^{(j)})/\alpha) = e_j` with
:math:`p^{(j)} = \mathrm{softmax}(\beta(s_q + \lambda e_j))`, that is (Theorem ``thm-phase``) iff
:math:`\alpha \le a_j(\lambda) = \min_{k\ne j}[(s_{c,j} + \lambda p^{(j)}_j) - (s_{c,k} + \lambda p^{(j)}_k)]`.
Equation ``alpha-crit-coupled`` is :math:`a_m` for :math:`m = \arg\max s_c`; the one-hot phase of *some* fixed point
is :math:`0 < \alpha \le \max_j a_j(\lambda)` (Proposition ``prop-alpha-crit-conditions``).

**Continuation.** The fixed point is followed along an increasing grid of alpha (each solve warm-started from the
previous alpha's fixed point) and back down; different peak gates up and down (hysteresis) or a jump that does not
shrink with the grid spacing would make the transition first-order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._validate import as_tensor, nonnegative, positive, positive_int
from .dynamics import check_scores, fixed_point

__all__ = ["onehot_thresholds", "OneHotConditions", "onehot_conditions", "count_fixed_points", "Branches",
           "continuation", "grid_refinement_jumps"]


def onehot_thresholds(s_q, s_c, beta: float, lam: float) -> torch.Tensor:
    r""":math:`a_j(\lambda)` for every memory j (shape of ``s_q``): the one-hot gate :math:`e_j` is a fixed point of the
    coupled sparsemax system iff :math:`0 < \alpha \le a_j(\lambda)` (module docstring; chapter
    ``04_phase_transition``). At :math:`\lambda = 0`, :math:`a_j = s_{c,j} - \max_{k\ne j}s_{c,k}`, positive only for
    the top context score."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    s_q, s_c = check_scores(s_q, s_c)
    n = s_q.shape[-1]
    eye = torch.eye(n, dtype=s_q.dtype)
    p = torch.softmax(beta * (s_q.unsqueeze(-2) + lam * eye), -1)          # (..., j, k): p^(j)_k
    u = s_c.unsqueeze(-2) + lam * p                                          # u^(j) = s_c + lam p^(j)
    own = u.diagonal(dim1=-2, dim2=-1)
    others = u.masked_fill(eye.bool(), float("-inf")).amax(-1)
    return own - others


@dataclass
class OneHotConditions:
    r"""Per instance (shape ``(B,)``): :math:`a_m` (equation ``alpha-crit-coupled``, m = argmax :math:`s_c`), the
    largest :math:`a_j` over :math:`j \ne m` and its memory, the contraction bound :math:`\beta\lambda^2/(2 a_m)` at
    :math:`a_m` (inf where :math:`a_m \le 0`), and ``holds``: :math:`a_m > 0` and :math:`a_m > \max_{j\ne m} a_j`, the
    condition under which :math:`a_m` is the upper end of the one-hot phase."""

    lam: float
    a_m: torch.Tensor
    a_other: torch.Tensor
    j_other: torch.Tensor
    contraction: torch.Tensor
    holds: torch.Tensor

    @property
    def alpha_crit(self) -> torch.Tensor:
        r"""The upper end of the one-hot phase of some fixed point, :math:`\max_j a_j(\lambda)` (NaN if negative)."""
        a = torch.maximum(self.a_m, self.a_other)
        return torch.where(a > 0, a, torch.full_like(a, float("nan")))


def onehot_conditions(s_q, s_c, beta: float, lam: float) -> OneHotConditions:
    r"""The conditions of Proposition ``prop-alpha-crit-conditions`` for a batch ``(B, N)`` of instances."""
    s_q, s_c = check_scores(as_tensor(s_q, "s_q", ndim=2), s_c)
    a = onehot_thresholds(s_q, s_c, beta, lam)
    m = s_c.argmax(-1, keepdim=True)
    a_m = a.gather(-1, m).squeeze(-1)
    rest = a.scatter(-1, m, float("-inf"))
    a_other, j_other = rest.max(-1)
    contraction = torch.where(a_m > 0, beta * lam**2 / (2 * a_m.clamp_min(1e-300)), torch.full_like(a_m, float("inf")))
    return OneHotConditions(lam=lam, a_m=a_m, a_other=a_other, j_other=j_other, contraction=contraction,
                            holds=(a_m > 0) & (a_m > a_other))


def _dirichlet1(n: int, size: int, gen: torch.Generator, dtype) -> torch.Tensor:
    e = -torch.log(torch.rand(n, size, generator=gen, dtype=dtype))
    return e / e.sum(-1, keepdim=True)


def count_fixed_points(s_q, s_c, alpha: float, beta: float, lam: float, *, n_starts: int, gen: torch.Generator,
                       tol: float = 1e-12, max_iter: int = 5000, distinct_tol: float = 1e-6) -> tuple[int, int, float]:
    r"""Distinct fixed points of one instance (``s_q``, ``s_c`` of shape ``(N,)``) found by the damped iteration
    (:math:`\omega = 1/2`) from ``n_starts`` Dirichlet(1) starts drawn from ``gen`` plus the N vertices of the simplex.
    Returns ``(distinct, unconverged, largest peak gate)``; two fixed points are distinct when their p differ by more
    than ``distinct_tol`` in max-norm. A lower bound on the number of fixed points, not a proof of uniqueness."""
    s_q, s_c = check_scores(as_tensor(s_q, "s_q", ndim=1), s_c)
    n_starts = positive_int(n_starts, "n_starts")
    if not isinstance(gen, torch.Generator):
        raise ValueError(f"gen must be a torch.Generator, got {type(gen).__name__}")
    n = s_q.shape[-1]
    starts = torch.cat([_dirichlet1(n_starts, n, gen, s_q.dtype), torch.eye(n, dtype=s_q.dtype)])
    k = starts.shape[0]
    fp = fixed_point(s_q.expand(k, n), s_c.expand(k, n), alpha, beta, lam, p0=starts, tol=tol, max_iter=max_iter,
                     damping=0.5)
    reps: list[torch.Tensor] = []
    for p in fp.p[fp.converged]:
        if all(bool((p - r).abs().max() > distinct_tol) for r in reps):
            reps.append(p)
    peak = fp.g[fp.converged].amax(-1).max().item() if bool(fp.converged.any()) else float("nan")
    return len(reps), int((~fp.converged).sum()), peak


@dataclass
class Branches:
    """Continuation of the fixed point of a batch of B instances along ``alphas`` (shape ``(A,)``, increasing): the
    peak gate on the way up and on the way down (shape ``(B, A)``), the gate's top memory on each branch, and whether
    every solve converged."""

    alphas: torch.Tensor
    peak_up: torch.Tensor
    peak_down: torch.Tensor
    top_up: torch.Tensor
    top_down: torch.Tensor
    converged: bool

    def hysteresis(self) -> torch.Tensor:
        """Largest difference between the branches' peak gates over alpha, per instance (shape ``(B,)``)."""
        return (self.peak_up - self.peak_down).abs().amax(-1)

    def max_jump(self) -> torch.Tensor:
        """Largest change of the peak gate between neighbouring alphas on either branch, per instance."""
        return torch.maximum(self.peak_up.diff(dim=-1).abs().amax(-1), self.peak_down.diff(dim=-1).abs().amax(-1))

    def rises(self, atol: float = 1e-9) -> torch.Tensor:
        """Steps where the peak gate *rises* with alpha by more than ``atol`` on either branch, per instance."""
        return (self.peak_up.diff(dim=-1) > atol).sum(-1) + (self.peak_down.diff(dim=-1) > atol).sum(-1)


def _sweep(s_q, s_c, alphas: torch.Tensor, beta: float, lam: float, tol: float, max_iter: int):
    peaks, tops, ok, p = [], [], True, None
    for a in alphas.tolist():
        fp = fixed_point(s_q, s_c, a, beta, lam, p0=p, tol=tol, max_iter=max_iter, screen=False)
        if not bool(fp.converged.all()):  # undamped iteration cycling: damp from the same start
            fp = fixed_point(s_q, s_c, a, beta, lam, p0=p, tol=tol, max_iter=4 * max_iter, damping=0.5, screen=False)
        ok = ok and bool(fp.converged.all())
        p = fp.p
        peak, top = fp.g.max(-1)
        peaks.append(peak)
        tops.append(top)
    return torch.stack(peaks, -1), torch.stack(tops, -1), ok


def continuation(s_q, s_c, alphas, beta: float, lam: float, *, tol: float = 1e-12, max_iter: int = 5000) -> Branches:
    r"""Follow the sparsemax-gated fixed point :math:`p = \Phi_{\alpha,\lambda}(p)` of every instance (``s_q``, ``s_c``:
    shape ``(B, N)``) along the increasing grid ``alphas``: up from the first-order start :math:`\Phi(0)` at the
    smallest alpha, each later alpha warm-started from the previous fixed point; then down from the first-order start
    at the largest alpha. A solve that does not converge undamped is redone with damping 1/2."""
    s_q, s_c = check_scores(as_tensor(s_q, "s_q", ndim=2), s_c)
    beta, lam, tol = positive(beta, "beta"), nonnegative(lam, "lam"), positive(tol, "tol")
    alphas = as_tensor(alphas, "alphas", ndim=1, dtype=s_q.dtype)
    if alphas.numel() < 2 or not bool((alphas > 0).all()) or not bool((alphas.diff() > 0).all()):
        raise ValueError("alphas must hold at least 2 values, all > 0 and strictly increasing")
    up, top_up, ok_up = _sweep(s_q, s_c, alphas, beta, lam, tol, max_iter)
    down, top_down, ok_down = _sweep(s_q, s_c, alphas.flip(0), beta, lam, tol, max_iter)
    return Branches(alphas=alphas, peak_up=up, peak_down=down.flip(-1), top_up=top_up, top_down=top_down.flip(-1),
                    converged=ok_up and ok_down)


def grid_refinement_jumps(s_q, s_c, lo: float, hi: float, beta: float, lam: float,
                          n_points: Sequence[int]) -> torch.Tensor:
    r"""The largest jump of the peak gate between neighbouring alphas (either branch, log-spaced grid on
    [``lo``, ``hi``]) for every grid size in ``n_points``: shape ``(len(n_points), B)``. A continuous transition's
    jump shrinks in proportion to the spacing; a first-order jump does not."""
    lo, hi = positive(lo, "lo"), positive(hi, "hi")
    if not lo < hi:
        raise ValueError(f"lo must be < hi, got lo={lo}, hi={hi}")
    rows = []
    for n in n_points:
        grid = torch.logspace(torch.log10(torch.tensor(lo)).item(), torch.log10(torch.tensor(hi)).item(),
                              positive_int(n, "n_points"), dtype=torch.float64)
        rows.append(continuation(s_q, s_c, grid, beta, lam).max_jump())
    return torch.stack(rows)
