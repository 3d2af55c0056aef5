r"""How tight the gate's Lipschitz bound is: pairs of inputs that attain (sparsemax) or approach (softmax) it.

Lemma ``lem-gate-lipschitz`` (book: ``chapters/02_two_stage``) bounds the gate by
:math:`\|G_\alpha(u) - G_\alpha(v)\|_2 \le \|u - v\|_2/\eta(\alpha)`. Both gates are gradients of a convex conjugate,
so their Jacobians are symmetric PSD and the tight l2 Lipschitz constant is the largest Jacobian eigenvalue:

* sparsemax, :math:`G_\alpha(u) = \mathrm{sparsemax}(u/\alpha)`: on the support S the Jacobian is
  :math:`(I_S - \mathbf 1_S\mathbf 1_S^\top/|S|)/\alpha`, whose spectral norm is exactly :math:`1/\alpha` once
  :math:`|S| \ge 2`. Moving along :math:`e_i - e_j` (i, j in S) keeps the threshold and the support, so
  :math:`G_\alpha(u + t(e_i - e_j)) = G_\alpha(u) + (t/\alpha)(e_i - e_j)` and the ratio is exactly :math:`1/\alpha`:
  the bound :math:`1/\eta = 1/\alpha` is attained.
* softmax, :math:`G_\alpha(u) = \mathrm{softmax}(u/\alpha)`: the Jacobian :math:`(\mathrm{diag}(p) - pp^\top)/\alpha`
  has spectral norm at most :math:`1/(2\alpha)`, approached (never attained) by two memories with equal logits
  and all others at :math:`-\infty`; there :math:`\|G(u') - G(u)\|/\|u' - u\| = \tanh(t/\alpha)/(2t) < 1/(2\alpha)`.
  So the book's :math:`\eta` is :math:`2\alpha` for the entropic gate (``gate.eta``; chapter ``02_two_stage``, "One
  convention for eta"): the bound :math:`1/\eta = 1/(2\alpha)` is the supremum of the ratio, reached as t -> 0.

Functions act on one input vector of shape ``(N,)`` (the pair constructors) or broadcast over leading axes
(:func:`lipschitz_ratio`).
"""
from __future__ import annotations

import torch

from .._validate import as_tensor, int_in_range, positive
from .gate import GateKind, check_kind, gate

__all__ = ["tight_lipschitz_constant", "lipschitz_ratio", "sparsemax_extremal_pair", "softmax_extremal_pair",
           "extremal_pair"]


def tight_lipschitz_constant(alpha: float, kind: GateKind = "sparsemax") -> float:
    r"""The smallest l2 Lipschitz constant of :math:`G_\alpha` on :math:`\mathbb R^N`, :math:`N \ge 2`
    (book chapter ``02_two_stage``): :math:`1/\alpha` for sparsemax (attained), :math:`1/(2\alpha)` for softmax
    (the supremum of :math:`\|(\mathrm{diag}(p) - pp^\top)\|_2/\alpha`, approached but not attained)."""
    alpha, kind = positive(alpha, "alpha"), check_kind(kind)
    return 1 / alpha if kind == "sparsemax" else 1 / (2 * alpha)


def lipschitz_ratio(u, v, alpha: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Difference quotient :math:`\|G_\alpha(u) - G_\alpha(v)\|_2 / \|u - v\|_2` on the last axis (one per row)."""
    u, v = as_tensor(u, "u"), as_tensor(v, "v")
    if u.shape != v.shape:
        raise ValueError(f"u and v must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    dist = (u - v).norm(dim=-1)
    if (dist == 0).any():
        raise ValueError("v must differ from u in every row (the ratio is undefined for u == v)")
    return (gate(u, alpha, kind) - gate(v, alpha, kind)).norm(dim=-1) / dist


def sparsemax_extremal_pair(alpha: float, u=None, n: int = 4, i: int | None = None, j: int | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A pair :math:`(u, u + t(e_i - e_j))` with :math:`\|G(u') - G(u)\|_2/\|u' - u\|_2 = 1/\alpha` for the sparsemax gate.

    ``u`` (shape ``(N,)``; default: ``n`` zeros, all memories in the support) must have a support
    :math:`S = \{k : G_\alpha(u)_k > 0\}` of at least 2 memories; i, j default to the two largest gate values. With
    :math:`t = \alpha\min(g_i, g_j)/2` the perturbed point keeps the support and the threshold :math:`\tau`, so
    :math:`G_\alpha(u') - G_\alpha(u) = (t/\alpha)(e_i - e_j)` (book chapter ``02_two_stage``, Lemma
    ``lem-gate-lipschitz`` attained). Returns float64 tensors ``(u, u')``.
    """
    alpha = positive(alpha, "alpha")
    if u is None:
        u = torch.zeros(int_in_range(n, "n", 2), dtype=torch.float64)
    u = as_tensor(u, "u", ndim=1, dtype=torch.float64)
    g = gate(u, alpha, "sparsemax")
    support = (g > 0).nonzero().flatten()
    if support.numel() < 2:
        raise ValueError(f"u must give a sparsemax support of at least 2 memories at alpha={alpha}, "
                         f"got {support.numel()} (the gate is one-hot there; its Jacobian is 0)")
    if i is None or j is None:
        top = g.topk(2).indices
        i, j = int(top[0]), int(top[1])
    for name, k in (("i", i), ("j", j)):
        int_in_range(k, name, 0, u.numel() - 1)
        if g[k] <= 0:
            raise ValueError(f"{name}={k} must be in the support of G_alpha(u), where the gate is {g[k].item()}")
    if i == j:
        raise ValueError(f"i and j must differ, got i = j = {i}")
    t = alpha * min(g[i].item(), g[j].item()) / 2
    step = torch.zeros_like(u)
    step[i], step[j] = t, -t
    return u, u + step


def softmax_extremal_pair(alpha: float, n: int = 4, t: float | None = None, gap: float = 60.0,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A pair whose softmax-gate ratio approaches :math:`1/(2\alpha)` from below (book chapter ``02_two_stage``).

    :math:`u = (0, 0, -\mathrm{gap}\cdot\alpha, \dots)` (two equal logits, the other n - 2 very negative) and
    :math:`u' = u + t(e_1 - e_2)`, default :math:`t = 10^{-3}\alpha`. With the others at :math:`-\infty` the ratio is
    :math:`\tanh(t/\alpha)/(2t) = (1 - (t/\alpha)^2/3 + \dots)/(2\alpha)`; the finite gap lowers it further by a
    relative :math:`O((n-2)e^{-\mathrm{gap}})`. Returns float64 tensors ``(u, u')``.
    """
    alpha = positive(alpha, "alpha")
    n = int_in_range(n, "n", 2)
    t = alpha * 1e-3 if t is None else positive(t, "t")
    gap = positive(gap, "gap")
    u = torch.full((n,), -gap * alpha, dtype=torch.float64)
    u[:2] = 0.0
    step = torch.zeros_like(u)
    step[0], step[1] = t, -t
    return u, u + step


def extremal_pair(alpha: float, kind: GateKind = "sparsemax", n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The extremal pair of :math:`G_\alpha` in dimension n: ratio :math:`1/\alpha` exactly (sparsemax, all n memories
    in the support) or just below :math:`1/(2\alpha)` (softmax). See :func:`tight_lipschitz_constant`."""
    if check_kind(kind) == "sparsemax":
        return sparsemax_extremal_pair(alpha, n=n)
    return softmax_extremal_pair(alpha, n=n)
