r"""Stage 1 of the context-gated memory: the gate :math:`g = G_\alpha(u)` (book: ``chapters/02_two_stage``).

The gate is a penalised choice over the N memories,

.. math:: G_\alpha(u) = \arg\max_{g \in \Delta^{N-1}} \langle g, u\rangle - \Omega_\alpha(g),

with :math:`\Omega_\alpha` :math:`\eta(\alpha)`-strongly convex in the l2 norm on the simplex, so :math:`G_\alpha` is
:math:`1/\eta(\alpha)`-Lipschitz in l2 (Lemma ``lem-gate-lipschitz``). The book's one convention (chapter
``02_two_stage``): :math:`\eta(\alpha)` is the constant that makes this Lipschitz bound tight.

* ``"sparsemax"`` (default): :math:`\Omega_\alpha = \tfrac{\alpha}{2}\|g\|^2`, :math:`G_\alpha(u) = \mathrm{sparsemax}(u/\alpha)`
  (exact zeros), :math:`\eta = \alpha` (the bound :math:`1/\alpha` is attained). Computed with the ``entmax`` package.
* ``"softmax"`` (entropic): :math:`\Omega_\alpha = \alpha\sum_i g_i\log g_i`, :math:`G_\alpha(u) = \mathrm{softmax}(u/\alpha)`,
  :math:`\eta = 2\alpha`: on the simplex's zero-sum directions the Hessian :math:`\alpha\,\mathrm{diag}(1/g)` is at
  least :math:`2\alpha` (Lemma ``lem-zero-sum``), and the gate's Jacobian has l2 norm at most :math:`1/(2\alpha)`
  (Lemma ``lem-entropic-gate``). Its familiar modulus :math:`\alpha` (Pinsker) is with respect to the l1 norm.

All functions act on the last axis and broadcast over leading (batch) axes.
"""
from __future__ import annotations

from typing import Literal

import torch
from entmax import sparsemax

from .._validate import as_tensor, positive

GateKind = Literal["sparsemax", "softmax"]
GATE_KINDS = ("sparsemax", "softmax")

__all__ = ["gate", "eta", "gate_jacobian", "gate_jacobian_at", "alpha_crit", "sparsemax_threshold", "peak_gate_curve", "GATE_KINDS"]


def check_kind(kind: str) -> str:
    if kind not in GATE_KINDS:
        raise ValueError(f"kind must be one of {GATE_KINDS}, got {kind!r}")
    return kind


def gate(u, alpha: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""The gate :math:`G_\alpha(u)` on the last axis of ``u`` (a point of the simplex per row)."""
    return gate_unchecked(as_tensor(u, "u"), positive(alpha, "alpha"), check_kind(kind))


def gate_unchecked(u: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """:func:`gate` without input validation, for inner loops whose inputs were validated once."""
    if kind == "sparsemax":
        # entmax partial-sorts the top k entries and redoes rows whose support is larger with a doubled k: k = 16
        # suits the theory chapters' small supports; vocabulary-sized gates fitted to a language model have supports
        # of hundreds of tokens (chapter 12), where starting at 256 saves the repeated partial sorts (same result)
        n = u.shape[-1]
        return sparsemax(u / alpha, dim=-1, k=None if n <= 256 else 16 if n <= 4096 else 256)
    return torch.softmax(u / alpha, dim=-1)


def eta(alpha: float, kind: GateKind = "sparsemax") -> float:
    r"""The l2 strong-convexity modulus :math:`\eta(\alpha)` of :math:`\Omega_\alpha` on the simplex: :math:`\alpha`
    (sparsemax) or :math:`2\alpha` (entropic). :math:`G_\alpha` is :math:`1/\eta`-Lipschitz in l2 and no smaller
    constant holds (chapter ``02_two_stage``), so Theorem 3.4's :math:`\beta\lambda^2/(2\eta)` is sharp for both gates
    (chapter ``05_fixed_point``)."""
    alpha = positive(alpha, "alpha")
    return alpha if check_kind(kind) == "sparsemax" else 2 * alpha


def gate_jacobian(u, alpha: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Jacobian :math:`\partial G_\alpha(u)/\partial u`, shape ``(..., N, N)``.

    sparsemax: :math:`(\mathrm{diag}(s) - s s^\top/|S|)/\alpha` with s the support indicator;
    softmax: :math:`(\mathrm{diag}(g) - g g^\top)/\alpha`. Both are symmetric PSD with spectral norm at most
    :math:`1/\eta(\alpha)` (:math:`1/\alpha` and :math:`1/(2\alpha)`).
    """
    g = gate(u, alpha, kind)
    return gate_jacobian_at(g, alpha, kind)


def gate_jacobian_at(g: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """:func:`gate_jacobian` from the gate's value ``g = G_alpha(u)`` (no input validation; for inner loops)."""
    if kind == "sparsemax":
        s = (g > 0).to(g.dtype)
        J = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2) / s.sum(-1, keepdim=True).unsqueeze(-1)
    else:
        J = torch.diag_embed(g) - g.unsqueeze(-1) * g.unsqueeze(-2)
    return J / alpha


def alpha_crit(u) -> torch.Tensor:
    r"""Critical penalisation :math:`\alpha_{crit} = u_{(1)} - u_{(2)}`: the sparsemax gate is one-hot iff
    :math:`\alpha \le \alpha_{crit}` (Theorem ``thm-phase``, book chapter ``04_phase_transition``)."""
    u = as_tensor(u, "u")
    if u.shape[-1] < 2:
        raise ValueError(f"u must have at least 2 entries on its last axis, got shape {tuple(u.shape)}")
    top2 = u.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def sparsemax_threshold(z) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Threshold :math:`\tau(z)` and support size k of sparsemax, in closed form from the sorted entries:

    :math:`k = \max\{j : 1 + j z_{(j)} > \sum_{i\le j} z_{(i)}\}`, :math:`\tau = (\sum_{i\le k} z_{(i)} - 1)/k`,
    and :math:`\mathrm{sparsemax}(z)_i = \max(z_i - \tau, 0)`.
    """
    z = as_tensor(z, "z")
    zs = z.sort(dim=-1, descending=True).values
    cs = zs.cumsum(-1)
    j = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    k = (1 + j * zs > cs).sum(-1, keepdim=True)
    tau = (cs.gather(-1, k - 1) - 1) / k.to(z.dtype)
    return tau.squeeze(-1), k.squeeze(-1)


def peak_gate_curve(u, alphas) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Closed-form peak gate :math:`\max_i G_\alpha(u)_i = u_{(1)}/\alpha - \tau(u/\alpha)` and support size for
    every alpha in ``alphas`` (shape ``(A,)``); ``u`` has shape ``(N,)``. Returns two tensors of shape ``(A,)``."""
    u = as_tensor(u, "u", ndim=1)
    alphas = as_tensor(alphas, "alphas", ndim=1, dtype=u.dtype)
    if (alphas <= 0).any():
        raise ValueError("alphas must all be > 0")
    z = u.unsqueeze(0) / alphas.unsqueeze(1)
    tau, k = sparsemax_threshold(z)
    return z.amax(-1) - tau, k
