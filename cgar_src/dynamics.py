r"""Stage 2 and the coupled system: gated retrieval, the self-consistent map and its fixed point.

Book chapters ``02_two_stage`` (energy), ``03_separation`` (gap), ``05_fixed_point`` (Theorem 3.4). Our
reconstruction (PAPER.md section 4): scores :math:`s_q = X^\top\xi`, :math:`s_c = K^\top c`, gate
:math:`g = G_\alpha(s_c + \lambda p)`, retrieval :math:`p = \mathrm{softmax}(\beta(s_q + \lambda g))`, so the retrieval
distribution solves :math:`p^* = \Phi_{\alpha,\lambda}(p^*)` with

.. math:: \Phi_{\alpha,\lambda}(p) = \mathrm{softmax}\big(\beta(s_q + \lambda G_\alpha(s_c + \lambda p))\big).

Scores carry any leading batch axes; the memory axis is last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validate import as_tensor, nonnegative, positive, positive_int
from .gate import GateKind, eta, gate, gate_jacobian

__all__ = [
    "gated_energy",
    "gated_retrieval",
    "phi",
    "FixedPoint",
    "fixed_point",
    "contraction_bound",
    "phi_jacobian",
    "spectral_radius",
    "first_order",
    "feedback_term",
    "Separation",
    "effective_separation",
    "retrieval_probability_bound",
]


def _scores(s_q, s_c=None):
    s_q = as_tensor(s_q, "s_q")
    if s_c is None:
        return s_q, None
    s_c = as_tensor(s_c, "s_c", dtype=s_q.dtype)
    if s_c.shape != s_q.shape:
        raise ValueError(f"s_c must have the shape of s_q {tuple(s_q.shape)}, got {tuple(s_c.shape)}")
    return s_q, s_c


def gated_energy(xi, X, g, beta: float, lam: float) -> torch.Tensor:
    r"""Gated retrieval energy :math:`E(\xi; g) = -\beta^{-1}\log\sum_i e^{\beta(x_i^\top\xi + \lambda g_i)} + \tfrac12\|\xi\|^2`.

    Its gradient step :math:`\xi - \nabla_\xi E = X\,\mathrm{softmax}(\beta(X^\top\xi + \lambda g))` is the gated update."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    X = as_tensor(X, "X", ndim=2)
    xi = as_tensor(xi, "xi", dtype=X.dtype)
    g = as_tensor(g, "g", dtype=X.dtype)
    if xi.shape[-1] != X.shape[0] or g.shape[-1] != X.shape[1]:
        raise ValueError(f"xi must end in d = {X.shape[0]} and g in N = {X.shape[1]}; got {tuple(xi.shape)}, {tuple(g.shape)}")
    return -torch.logsumexp(beta * (xi @ X + lam * g), -1) / beta + 0.5 * (xi * xi).sum(-1)


def gated_retrieval(s_q, g, beta: float, lam: float) -> torch.Tensor:
    r"""Retrieval distribution :math:`p = \mathrm{softmax}(\beta(s_q + \lambda g))`: the gate adds :math:`\lambda g_i` to logit i."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    s_q, g = _scores(s_q, g)
    return torch.softmax(beta * (s_q + lam * g), dim=-1)


def phi(p, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""The self-consistency map :math:`\Phi_{\alpha,\lambda}(p)`."""
    g = gate(s_c + lam * p, alpha, kind)
    return gated_retrieval(s_q, g, beta, lam)


def contraction_bound(alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> float:
    r"""Global Lipschitz bound :math:`L = \beta\lambda^2 / (2\eta(\alpha))` of :math:`\Phi` (Theorem 3.4)."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    return beta * lam**2 / (2 * eta(alpha, kind))


@dataclass
class FixedPoint:
    """Result of :func:`fixed_point`: the fixed point p, its gate g, and per-instance residual and iterations."""

    p: torch.Tensor
    g: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    bound: float


def fixed_point(
    s_q,
    s_c,
    alpha: float,
    beta: float,
    lam: float,
    *,
    kind: GateKind = "sparsemax",
    tol: float = 1e-10,
    max_iter: int = 1000,
    p0=None,
    damping: float = 1.0,
) -> FixedPoint:
    r"""Solve :math:`p = \Phi_{\alpha,\lambda}(p)` for a whole batch by (damped) fixed-point iteration.

    ``p_{t+1} = (1-\omega) p_t + \omega\Phi(p_t)``. The default start is the first-order solution
    :math:`\Phi(0)`-style guess ``softmax(beta (s_q + lam G(s_c)))``. Each instance stops counting iterations when
    its residual :math:`\|\Phi(p)-p\|_\infty` drops to ``tol``; the loop ends when all have converged or at
    ``max_iter``. Below the contraction bound (L < 1) convergence is geometric with rate L.
    """
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    tol = positive(tol, "tol")
    max_iter = positive_int(max_iter, "max_iter")
    damping = positive(damping, "damping")
    if damping > 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    s_q, s_c = _scores(s_q, s_c)
    if p0 is None:
        p = first_order(s_q, s_c, alpha, beta, lam, kind)
    else:
        p = as_tensor(p0, "p0", dtype=s_q.dtype).expand_as(s_q).clone()
    batch = s_q.shape[:-1]
    iterations = torch.zeros(batch, dtype=torch.long)
    residual = torch.full(batch, float("inf"), dtype=s_q.dtype)
    for _ in range(max_iter):
        new = phi(p, s_q, s_c, alpha, beta, lam, kind)
        residual = (new - p).abs().amax(-1)
        active = residual > tol
        if not bool(active.any()):
            break
        iterations += active.long()
        p = torch.where(active.unsqueeze(-1), (1 - damping) * p + damping * new, p)
    g = gate(s_c + lam * p, alpha, kind)
    return FixedPoint(p=p, g=g, residual=residual, iterations=iterations, converged=residual <= tol,
                      bound=contraction_bound(alpha, beta, lam, kind))


def phi_jacobian(p, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Jacobian of :math:`\Phi` at p: :math:`\beta\lambda^2\,(\mathrm{diag}\,q - qq^\top)\,J_G(s_c + \lambda p)` with
    :math:`q = \Phi(p)`; shape ``(..., N, N)``. Its norm is at most the contraction bound."""
    q = phi(p, s_q, s_c, alpha, beta, lam, kind)
    S = torch.diag_embed(q) - q.unsqueeze(-1) * q.unsqueeze(-2)
    return beta * lam**2 * S @ gate_jacobian(s_c + lam * p, alpha, kind)


def spectral_radius(J: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue modulus of each square matrix in ``J`` (the local contraction rate at a fixed point)."""
    return torch.linalg.eigvals(J).abs().amax(-1)


def first_order(s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""First-order approximation: drop the feedback, :math:`p^{(1)} = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))`."""
    s_q, s_c = _scores(s_q, s_c)
    return gated_retrieval(s_q, gate(s_c, alpha, kind), beta, lam)


def feedback_term(p, s_c, alpha: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Second-order feedback :math:`R = G_\alpha(s_c + \lambda p) - G_\alpha(s_c)`; :math:`\|R\|_2 \le \lambda\|p\|_2/\eta(\alpha)`."""
    return gate(s_c + lam * p, alpha, kind) - gate(s_c, alpha, kind)


@dataclass
class Separation:
    """Gaps of the target memory against its strongest competitor (all of shape ``batch``)."""

    raw: torch.Tensor
    gate: torch.Tensor
    effective: torch.Tensor


def _gap(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    own = v.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    others = v.scatter(-1, target.unsqueeze(-1), float("-inf"))
    return own - others.amax(-1)


def effective_separation(s_q, g, target, lam: float) -> Separation:
    r""":math:`\Delta_{raw} = s_{q,\mu} - \max_{j\ne\mu}s_{q,j}`, :math:`\Delta_{gate} = g_\mu - \max_{j\ne\mu} g_j` and
    :math:`\Delta_{eff} = \min_{j\ne\mu}[(s_{q,\mu}+\lambda g_\mu) - (s_{q,j}+\lambda g_j)] \ge \Delta_{raw} + \lambda\Delta_{gate}`
    (Theorem ``thm-separation``)."""
    lam = nonnegative(lam, "lam")
    s_q, g = _scores(s_q, g)
    target = torch.as_tensor(target)
    if target.shape != s_q.shape[:-1] or target.dtype != torch.long:
        raise ValueError(f"target must be a LongTensor of shape {tuple(s_q.shape[:-1])}")
    if ((target < 0) | (target >= s_q.shape[-1])).any():
        raise ValueError(f"target indices must lie in [0, {s_q.shape[-1]})")
    return Separation(raw=_gap(s_q, target), gate=_gap(g, target), effective=_gap(s_q + lam * g, target))


def retrieval_probability_bound(delta, n_memories: int, beta: float) -> torch.Tensor:
    r"""Lower bound :math:`p_\mu \ge 1/(1 + (N-1)e^{-\beta\Delta})` on the target's retrieval probability."""
    beta = positive(beta, "beta")
    n_memories = positive_int(n_memories, "n_memories")
    delta = torch.as_tensor(delta)
    return torch.sigmoid(beta * delta - math.log(max(n_memories - 1, 1e-300))) if n_memories > 1 else torch.ones_like(delta)
