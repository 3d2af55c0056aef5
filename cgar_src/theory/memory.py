"""The modern Hopfield network (MHN) of Ramsauer et al. (2020): energy, update, separation, error bound.

Conventions (book chapter ``chapters/01_modern_hopfield``): the N stored patterns are the *columns* of
``X`` (shape ``(d, N)``); queries are rows ``xi`` of shape ``(d,)`` or ``(B, d)`` so that a batch of B queries is
handled in one matrix product. Every function keeps the dtype of ``X`` (float32 or float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
    r"""Ramsauer et al. (2020, Thm. 5) one-update retrieval error bound for pattern ``target``:

    .. math:: \|f(\xi) - x_i\| \le 2 M (N-1)\,\exp\!\big(-\beta(\Delta_i - 2M\|\xi - x_i\|)\big).

    ``target`` is an int or a LongTensor with one index per query. The book derives it in
    ``chapters/01_modern_hopfield`` (section "How good is one update?").
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
