"""The modern Hopfield network (MHN) of Ramsauer et al. (2020): energy, update, separation, error bound.

Conventions (book chapter ``chapters/01_modern_hopfield``): the N stored patterns are the *columns* of
``X`` (shape ``(d, N)``); queries are rows ``xi`` of shape ``(d,)`` or ``(B, d)`` so that a batch of B queries is
handled in one matrix product. Every function keeps the dtype of ``X`` (float32 or float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from entmax import sparsemax

from .._validate import as_tensor, indices, positive, positive_int

__all__ = [
    "lse",
    "energy",
    "ACTIVATIONS",
    "update",
    "retrieve",
    "RetrievalResult",
    "association_matrix",
    "separation",
    "ramsauer_error_bound",
    "ramsauer_theorem5_bounds",
    "pattern_fixed_point",
    "update_jacobian",
    "mean_jacobian",
    "ramsauer_jacobian_bound",
    "hamux_energy",
]


def _check(X, xi=None):
    X = as_tensor(X, "X", ndim=2)
    if xi is None:
        return X, None
    xi = as_tensor(xi, "xi", ndim=(1, 2), dtype=X.dtype)
    if xi.shape[-1] != X.shape[0]:
        raise ValueError(f"xi must have last dimension d = X.shape[0] = {X.shape[0]}, got shape {tuple(xi.shape)}")
    return X, xi


def lse(z: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Log-sum-exp at inverse temperature beta over the last axis: :math:`\beta^{-1}\log\sum_i e^{\beta z_i}`.

    Its gradient is ``softmax(beta * z)``: the Lagrangian of the memory layer in the HAMUX view.
    """
    beta = positive(beta, "beta")
    return torch.logsumexp(beta * z, dim=-1) / beta


def energy(xi, X, beta: float) -> torch.Tensor:
    r"""Ramsauer et al. energy, one value per query (book: eq. ``mhn-energy``).

    .. math:: E(\xi) = -\mathrm{lse}(\beta, X^\top\xi) + \tfrac12 \xi^\top\xi + \beta^{-1}\log N + \tfrac12 M^2,

    with :math:`M = \max_i \|x_i\|`. It is bounded below by 0.
    """
    beta = positive(beta, "beta")
    X, xi = _check(X, xi)
    N = X.shape[1]
    M = X.norm(dim=0).max()
    return -lse(xi @ X, beta) + 0.5 * (xi * xi).sum(-1) + math.log(N) / beta + 0.5 * M**2


ACTIVATIONS = ("softmax", "sparsemax")


def update(xi, X, beta: float, *, activation: str = "softmax") -> torch.Tensor:
    r"""One MHN update :math:`\xi^{+} = X\,\mathrm{softmax}(\beta X^\top \xi)` for every query at once.

    It equals :math:`\xi - \nabla E(\xi)` (the concave-convex procedure step) and one softmax-attention step with
    query xi, keys and values X (book: section "Attention is one update"). ``activation="sparsemax"`` gives the
    sparse modern Hopfield update :math:`\xi^{+} = X\,\mathrm{sparsemax}(\beta X^\top \xi)` (Hu et al. 2023; book
    chapter ``01b_related_memories``).
    """
    beta = positive(beta, "beta")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    X, xi = _check(X, xi)
    z = beta * (xi @ X)
    return (torch.softmax(z, dim=-1) if activation == "softmax" else sparsemax(z, dim=-1)) @ X.T


@dataclass
class RetrievalResult:
    """Outcome of :func:`retrieve`: final states, updates taken and the last update size of each query."""

    state: torch.Tensor
    steps: int
    residual: torch.Tensor
    tol: float

    @property
    def converged(self) -> torch.Tensor:
        return self.residual <= self.tol


def retrieve(xi, X, beta: float, *, tol: float = 1e-8, max_steps: int = 100,
             activation: str = "softmax") -> RetrievalResult:
    """Iterate :func:`update` (with ``activation``) until every query moves by at most ``tol`` (max-norm) or
    ``max_steps`` is reached."""
    beta = positive(beta, "beta")
    tol = positive(tol, "tol")
    max_steps = positive_int(max_steps, "max_steps")
    X, xi = _check(X, xi)
    state = xi
    residual = torch.full(xi.shape[:-1], float("inf"), dtype=X.dtype)
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (the count of steps taken is returned after the loop)
        new = update(state, X, beta, activation=activation)
        residual = (new - state).abs().amax(-1)
        state = new
        if bool((residual <= tol).all()):
            break
    return RetrievalResult(state=state, steps=steps, residual=residual, tol=tol)


def association_matrix(X) -> torch.Tensor:
    r"""Pattern overlaps :math:`A_{ij} = x_i^\top x_j` (the ``N x N`` Gram matrix ``X^T X``).

    Row i holds the scores that stored pattern i, used as a query, gives every memory.
    """
    X, _ = _check(X)
    return X.T @ X


def separation(X) -> torch.Tensor:
    r"""Separation of every stored pattern, :math:`\Delta_i = x_i^\top x_i - \max_{j\neq i} x_i^\top x_j` (shape ``(N,)``)."""
    X, _ = _check(X)
    if X.shape[1] < 2:
        raise ValueError(f"X must hold at least 2 patterns (columns) to define a separation, got {X.shape[1]}")
    A = association_matrix(X)
    off = A.clone()
    off.fill_diagonal_(float("-inf"))
    return A.diagonal() - off.amax(dim=1)


def ramsauer_error_bound(X, xi, target, beta: float) -> torch.Tensor:
    r"""One-update retrieval error bound for pattern ``target``, the book's variant of Ramsauer et al. (2020,
    Theorem 5) with the book's own proof (chapter ``01_modern_hopfield``, Theorem ``thm-mhn-error``):

    .. math:: \|f(\xi) - x_i\| \le 2 M (N-1)\,\exp\!\big(-\beta(\Delta_i - 2M\|\xi - x_i\|)\big).

    It needs no fixed point and is at least as tight as their first bound, whose exponent has
    :math:`\max\{\|\xi - x_i\|, \|x_i^* - x_i\|\}` in place of :math:`\|\xi - x_i\|`
    (:func:`ramsauer_theorem5_bounds`). ``target`` is an int or a LongTensor with one index per query.
    """
    beta = positive(beta, "beta")
    X, xi = _check(X, xi)
    N = X.shape[1]
    target = indices(target, "target", N, shape=xi.shape[:-1], what="pattern indices")
    M = X.norm(dim=0).max()
    x_t = X.T[target]  # (..., d)
    dist = (xi - x_t).norm(dim=-1)
    delta = separation(X)[target]
    return 2 * M * (N - 1) * torch.exp(-beta * (delta - 2 * M * dist))


def _target_stats(X, xi, target, beta):
    beta = positive(beta, "beta")
    X, xi = _check(X, xi)
    N = X.shape[1]
    target = indices(target, "target", N, shape=xi.shape[:-1], what="pattern indices")
    return X, xi, N, target, X.norm(dim=0).max(), X.T[target], separation(X)[target]


def ramsauer_theorem5_bounds(X, xi, target, x_star, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Ramsauer et al. (2020) Theorem 5 as stated, for pattern :math:`x_i` (``target``) with fixed point
    :math:`x_i^*` (``x_star``, one row per query): the retrieval-error bound
    :math:`2(N-1)\exp(-\beta(\Delta_i - 2\max\{\|\xi - x_i\|, \|x_i^* - x_i\|\}M))\,M` on :math:`\|f(\xi) - x_i\|`,
    and the fixed-point bound :math:`2e(N-1)M e^{-\beta\Delta_i}` on :math:`\|x_i - x_i^*\|`, valid when
    :math:`\|x_i - x_i^*\|` and :math:`\|x_i - \xi\|` are at most :math:`1/(2\beta M)` (chapter
    ``01_modern_hopfield``). Returns both, each with one value per query."""
    X, xi, N, target, M, x_t, delta = _target_stats(X, xi, target, beta)
    x_star = as_tensor(x_star, "x_star", dtype=X.dtype).expand_as(xi)
    r = torch.maximum((xi - x_t).norm(dim=-1), (x_star - x_t).norm(dim=-1))
    return (2 * (N - 1) * torch.exp(-beta * (delta - 2 * r * M)) * M,
            2 * math.e * (N - 1) * M * torch.exp(-beta * delta))


def pattern_fixed_point(X, target, beta: float, *, tol: float = 1e-13, max_steps: int = 1000) -> torch.Tensor:
    r"""The fixed point :math:`x_i^*` near pattern :math:`x_i`: :func:`retrieve` started at :math:`x_i` (``target``:
    an int or a LongTensor of pattern indices), shape ``(d,)`` or ``(B, d)``. Raises ValueError if it did not converge
    to ``tol``."""
    X, _ = _check(X)
    one = isinstance(target, int) and not isinstance(target, bool)
    target = indices(target, "target", X.shape[1], shape=() if one else None, what="pattern indices")
    res = retrieve(X.T[target], X, beta, tol=tol, max_steps=max_steps)
    if not bool(res.converged.all()):
        raise ValueError(f"the iteration from pattern(s) {target.tolist()} did not converge to tol={tol} in "
                         f"{max_steps} steps; raise max_steps")
    return res.state


def update_jacobian(xi, X, beta: float) -> torch.Tensor:
    r"""Jacobian of the update, :math:`J = \partial f/\partial\xi = \beta X(\mathrm{diag}\,p - pp^\top)X^\top` with
    :math:`p = \mathrm{softmax}(\beta X^\top\xi)`; shape ``(..., d, d)``."""
    beta = positive(beta, "beta")
    X, xi = _check(X, xi)
    p = torch.softmax(beta * (xi @ X), -1)
    S = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return beta * X @ S @ X.T


def mean_jacobian(xi, x_star, X, beta: float, n_nodes: int = 40) -> torch.Tensor:
    r""":math:`J^m = \int_0^1 J(x^* + t(\xi - x^*))\,dt` by ``n_nodes``-point Gauss-Legendre quadrature, so that
    :math:`f(\xi) - f(x^*) = J^m(\xi - x^*)` (the mean value form in Ramsauer et al.'s Theorem 4; chapter
    ``01_modern_hopfield``). ``xi`` and ``x_star`` of shape ``(d,)`` or ``(B, d)``; returns ``(..., d, d)``."""
    X, xi = _check(X, xi)
    x_star = as_tensor(x_star, "x_star", dtype=X.dtype).expand_as(xi)
    nodes, weights = np.polynomial.legendre.leggauss(positive_int(n_nodes, "n_nodes"))
    t = (torch.as_tensor(nodes, dtype=X.dtype) + 1) / 2
    w = torch.as_tensor(weights, dtype=X.dtype) / 2
    return sum(wk * update_jacobian(x_star + tk * (xi - x_star), X, beta) for tk, wk in zip(t, w))


def ramsauer_jacobian_bound(X, xi, target, x_star, beta: float) -> torch.Tensor:
    r"""Ramsauer et al. (2020) Theorem 4 as stated: :math:`\|J^m\|_2 \le 2\beta N M^2 (N-1)\exp(-\beta(\Delta_i -
    2\max\{\|\xi - x_i\|, \|x_i^* - x_i\|\}M))`, one value per query, so that
    :math:`\|f(\xi) - x_i^*\| \le \|J^m\|_2\|\xi - x_i^*\|` is exponentially small in the separation."""
    X, xi, N, target, M, x_t, delta = _target_stats(X, xi, target, beta)
    x_star = as_tensor(x_star, "x_star", dtype=X.dtype).expand_as(xi)
    r = torch.maximum((xi - x_t).norm(dim=-1), (x_star - x_t).norm(dim=-1))
    return 2 * beta * N * M**2 * (N - 1) * torch.exp(-beta * (delta - 2 * r * M))


def hamux_energy(v, h, X, beta: float) -> torch.Tensor:
    r"""Two-layer HAMUX energy (Krotov 2021): feature layer v, memory layer h, hypersynapse X.

    Each layer has a convex Lagrangian whose gradient is its activation: :math:`L_v = \tfrac12\|v\|^2` (activation
    v) and :math:`L_h = \mathrm{lse}(\beta, h)` (activation softmax(beta h)). The energy is the sum of the layer
    energies :math:`g\cdot x - L(x)` and the synapse energy :math:`-g_h^\top X^\top g_v`. At the memory layer's
    equilibrium :math:`h = X^\top v` it equals the MHN energy up to its constants.
    """
    beta = positive(beta, "beta")
    X, v = _check(X, v)
    h = as_tensor(h, "h", ndim=(1, 2), dtype=X.dtype)
    g_v, g_h = v, torch.softmax(beta * h, dim=-1)
    layer_v = (v * g_v).sum(-1) - 0.5 * (v * v).sum(-1)
    layer_h = (h * g_h).sum(-1) - lse(h, beta)
    synapse = -((g_v @ X) * g_h).sum(-1)
    return layer_v + layer_h + synapse
