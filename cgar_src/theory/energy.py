r"""The energy of the coupled gate-retrieval system (book chapter ``05b_coupled_energy``).

For retrieval p and gate g, both on the simplex, scores :math:`s_q, s_c`, inverse temperature beta, coupling lambda
and gate penalisation alpha,

.. math:: F(p, g) = -\langle p, s_q\rangle - \lambda\langle p, g\rangle - \langle g, s_c\rangle
          + \beta^{-1}\sum_i p_i\log p_i + \Omega_\alpha(g),

with :math:`\Omega_\alpha(g) = \tfrac{\alpha}{2}\|g\|^2` (sparsemax gate) or :math:`\alpha\sum_i g_i\log g_i`
(entropic gate). Its block minimisers are :math:`p = \mathrm{softmax}(\beta(s_q + \lambda g))` and
:math:`g = G_\alpha(s_c + \lambda p)`, so the fixed-point iteration :math:`p \leftarrow \Phi(p)` of
:mod:`cgar_src.theory.dynamics` is exact alternating minimisation of F. On the tangent space of the two simplices its
Hessian is :math:`[[\beta^{-1}\mathrm{diag}(1/p), -\lambda I], [-\lambda I, \nabla^2\Omega_\alpha(g)]]`.

All functions act on the last axis and broadcast over leading (batch) axes unless stated otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import as_tensor, nonnegative, positive, positive_int
from .dynamics import check_scores, gated_retrieval, phi_unchecked
from .gate import GateKind, check_kind, gate_unchecked

__all__ = [
    "coupled_energy",
    "reduced_energy",
    "regulariser",
    "best_p",
    "best_g",
    "alternating_trace",
    "zero_sum_basis",
    "convexity_constant",
    "convexity_threshold",
    "hessian",
    "tangent_hessian",
    "kkt_residual",
    "StationaryPoint",
    "classify",
    "newton_fixed_points",
    "newton_fixed_points_batch",
    "distinct",
    "hamux_flow",
]


def _params(alpha, beta, lam, kind):
    return positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam"), check_kind(kind)


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp_min(1e-300)), torch.zeros_like(x))


def _simplex(x, name: str, dtype=None) -> torch.Tensor:
    x = as_tensor(x, name, dtype=dtype)
    if (x < 0).any() or ((x.sum(-1) - 1).abs() > 1e-8).any():
        raise ValueError(f"{name} must lie on the simplex (entries >= 0 summing to 1 on the last axis)")
    return x


def regulariser(g, alpha: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r""":math:`\Omega_\alpha(g)`: :math:`\tfrac{\alpha}{2}\|g\|^2` (sparsemax) or :math:`\alpha\sum_i g_i\log g_i` (entropic)."""
    alpha, kind = positive(alpha, "alpha"), check_kind(kind)
    return _omega(as_tensor(g, "g"), alpha, kind)


def _omega(g: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """:func:`regulariser` without input validation."""
    return 0.5 * alpha * (g * g).sum(-1) if kind == "sparsemax" else alpha * _xlogx(g).sum(-1)


def coupled_energy(p, g, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""The coupled energy :math:`F(p, g)` of chapter ``05b_coupled_energy`` (one value per batch entry)."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    s_q, s_c = check_scores(s_q, s_c)
    p, g = _simplex(p, "p", s_q.dtype), _simplex(g, "g", s_q.dtype)
    if p.shape[-1] != s_q.shape[-1] or g.shape[-1] != s_q.shape[-1]:
        raise ValueError(f"p and g must have N = {s_q.shape[-1]} entries on the last axis, got {tuple(p.shape)}, {tuple(g.shape)}")
    return _energy(p, g, s_q, s_c, alpha, beta, lam, kind)


def _energy(p, g, s_q, s_c, alpha, beta, lam, kind):
    return (-(p * s_q).sum(-1) - lam * (p * g).sum(-1) - (g * s_c).sum(-1) + _xlogx(p).sum(-1) / beta
            + _omega(g, alpha, kind))


def reduced_energy(g, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r""":math:`\min_p F(p, g) = -\beta^{-1}\log\sum_i e^{\beta(s_{q,i} + \lambda g_i)} - \langle g, s_c\rangle + \Omega_\alpha(g)`:
    the gate's energy once retrieval has equilibrated (the minimiser is :math:`p = \mathrm{softmax}(\beta(s_q + \lambda g))`)."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    s_q, s_c = check_scores(s_q, s_c)
    g = _simplex(g, "g", s_q.dtype)
    return -torch.logsumexp(beta * (s_q + lam * g), -1) / beta - (g * s_c).sum(-1) + _omega(g, alpha, kind)


def best_p(g, s_q, beta: float, lam: float) -> torch.Tensor:
    r""":math:`\arg\min_p F(p, g) = \mathrm{softmax}(\beta(s_q + \lambda g))` (Gibbs variational principle): the gated
    retrieval distribution of :func:`cgar_src.theory.dynamics.gated_retrieval` (chapter ``02_two_stage``)."""
    return gated_retrieval(s_q, g, beta, lam)


def best_g(p, s_c, alpha: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r""":math:`\arg\min_g F(p, g) = G_\alpha(s_c + \lambda p)` (definition of the gate as a penalised argmax)."""
    alpha, lam, kind = positive(alpha, "alpha"), nonnegative(lam, "lam"), check_kind(kind)
    s_c, p = check_scores(s_c, p)
    return gate_unchecked(s_c + lam * p, alpha, kind)


def alternating_trace(p0, s_q, s_c, alpha: float, beta: float, lam: float, *, kind: GateKind = "sparsemax",
                      n_steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    r"""F along the alternating minimisation that is the iteration :math:`p_{t+1} = \Phi(p_t)`.

    From :math:`p_0`: :math:`g_t = G_\alpha(s_c + \lambda p_t)`, :math:`p_{t+1} = \mathrm{softmax}(\beta(s_q + \lambda g_t))`.
    Returns ``(F, p)``: F at every half-step, :math:`F(p_0, g_0), F(p_1, g_0), F(p_1, g_1), \dots`, shape
    ``(..., 2 n_steps + 1)``, and the last iterate :math:`p_{n}` (equal to :math:`\Phi^n(p_0)`)."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    n_steps = positive_int(n_steps, "n_steps")
    s_q, s_c = check_scores(s_q, s_c)
    p = _simplex(p0, "p0", s_q.dtype)
    try:
        shape = torch.broadcast_shapes(p.shape, s_q.shape)
    except RuntimeError:
        raise ValueError(f"p0 {tuple(p.shape)} must broadcast against the scores {tuple(s_q.shape)}") from None
    p, s_q, s_c = p.expand(shape).clone(), s_q.expand(shape), s_c.expand(shape)
    g = gate_unchecked(s_c + lam * p, alpha, kind)
    values = [_energy(p, g, s_q, s_c, alpha, beta, lam, kind)]
    for _ in range(n_steps):
        p = torch.softmax(beta * (s_q + lam * g), -1)
        values.append(_energy(p, g, s_q, s_c, alpha, beta, lam, kind))
        g = gate_unchecked(s_c + lam * p, alpha, kind)
        values.append(_energy(p, g, s_q, s_c, alpha, beta, lam, kind))
    return torch.stack(values, -1), p


def zero_sum_basis(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal basis of the zero-sum vectors of R^n (the tangent space of the simplex), shape ``(n, n-1)``."""
    n = positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    # QR of the differences e_i - e_n spans {u : sum u = 0}
    A = torch.eye(n, dtype=dtype)[:, : n - 1] - torch.eye(n, dtype=dtype)[:, n - 1 :]
    return torch.linalg.qr(A).Q


def convexity_constant(p) -> torch.Tensor:
    r""":math:`c(p) = \min_{u\ne 0,\ \sum u = 0} \sum_i u_i^2/p_i \,/\, \|u\|^2` for p in the open simplex: the smallest
    eigenvalue of :math:`\mathrm{diag}(1/p)` on the tangent space. The lemma of chapter ``05b_coupled_energy`` says
    :math:`c(p) \ge 2`, with equality at :math:`p = (\tfrac12, \tfrac12)` (N = 2) and in the limit
    :math:`p \to (\tfrac12, \tfrac12, 0, \dots)`."""
    p = _simplex(p, "p")
    if (p <= 0).any():
        raise ValueError("p must lie in the open simplex (all entries > 0)")
    if p.shape[-1] < 2:
        raise ValueError("p must have at least 2 entries")
    # eigenvalues mu of diag(1/p) on the zero-sum space solve sum_i p_i / (1 - mu p_i) = 0 (secular equation); the
    # smallest lies in [1/p_(1), 1/p_(2)]. Bisection on that bracket is accurate even where 1/p is huge.
    top = p.topk(2, dim=-1).values
    lo, hi = 1 / top[..., 0], 1 / top[..., 1]
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        f = (p / (1 - mid.unsqueeze(-1) * p)).sum(-1)  # increasing in mu on the bracket, -inf at lo, +inf at hi
        lo, hi = torch.where(f < 0, mid, lo), torch.where(f < 0, hi, mid)
    return 0.5 * (lo + hi)


def convexity_threshold(alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> float:
    r"""The quantity whose being < 1 makes F jointly strictly convex (Theorem ``thm-joint-convexity``):
    :math:`\beta\lambda^2/(2\alpha)` for the sparsemax gate, :math:`\beta\lambda^2/(4\alpha)` for the entropic gate,
    derived here from the Hessian. Both equal Theorem 3.4's contraction bound :math:`\beta\lambda^2/(2\eta(\alpha))`
    with the book's :math:`\eta` (:func:`cgar_src.theory.dynamics.contraction_bound`)."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    return beta * lam**2 / ((2 if kind == "sparsemax" else 4) * alpha)


def hessian(p, g, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Full Hessian of F in :math:`(p, g)`, shape ``(..., 2N, 2N)``:
    :math:`[[\beta^{-1}\mathrm{diag}(1/p), -\lambda I], [-\lambda I, \nabla^2\Omega_\alpha(g)]]` with
    :math:`\nabla^2\Omega_\alpha = \alpha I` (sparsemax) or :math:`\alpha\,\mathrm{diag}(1/g)` (entropic; needs g > 0)."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    p, g = _simplex(p, "p"), _simplex(g, "g", dtype=None)
    if (p <= 0).any() or (kind == "softmax" and (g <= 0).any()):
        raise ValueError("p (and g for the entropic gate) must lie in the open simplex (all entries > 0)")
    n = p.shape[-1]
    eye = torch.eye(n, dtype=p.dtype).expand(*p.shape[:-1], n, n)
    Hgg = alpha * eye if kind == "sparsemax" else alpha * torch.diag_embed(1 / g.to(p.dtype))
    top = torch.cat([torch.diag_embed(1 / p) / beta, -lam * eye], -1)
    bottom = torch.cat([-lam * eye, Hgg], -1)
    return torch.cat([top, bottom], -2)


def _face_basis(support: torch.Tensor, dtype) -> torch.Tensor:
    """Orthonormal basis of {v : v = 0 off the support, sum v = 0}, shape (N, |S| - 1) (may have 0 columns)."""
    n, idx = support.shape[-1], torch.nonzero(support).flatten()
    B = torch.zeros(n, max(idx.numel() - 1, 0), dtype=dtype)
    if idx.numel() >= 2:
        B[idx] = zero_sum_basis(idx.numel(), dtype)
    return B


def tangent_hessian(p, g, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax", *,
                    face: bool = False) -> torch.Tensor:
    r"""The Hessian of F restricted to the tangent space of the two simplices, in an orthonormal basis.

    ``face=False``: directions :math:`(u, v)` with :math:`\sum u = \sum v = 0`. ``face=True`` (sparsemax gate at a
    stationary point): the gate moves only inside the face of its support, :math:`v_j = 0` off
    :math:`S = \mathrm{supp}\,g`; with strict complementarity this is the critical cone of the second-order
    conditions, so the point is a strict local minimum iff this matrix is positive definite. ``face=False`` broadcasts
    over leading batch axes; ``face=True`` takes one instance (p, g of shape ``(N,)``)."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    p, g = as_tensor(p, "p"), as_tensor(g, "g")
    if face and (p.ndim != 1 or g.ndim != 1):
        raise ValueError(f"face=True needs one instance (p, g of shape (N,)), got {tuple(p.shape)}, {tuple(g.shape)}")
    H = hessian(p, g, alpha, beta, lam, kind)
    n = p.shape[-1]
    Bp = zero_sum_basis(n, p.dtype)
    Bg = _face_basis(g > 0, p.dtype) if face else Bp
    B = torch.block_diag(Bp, Bg)
    return B.T @ H @ B


def kkt_residual(p, g, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Stationarity residual of (p, g): :math:`\max(\|p - \mathrm{softmax}(\beta(s_q + \lambda g))\|_\infty,
    \|g - G_\alpha(s_c + \lambda p)\|_\infty)`. Zero exactly at the KKT points of F on the product of simplices."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    s_q, s_c = check_scores(s_q, s_c)
    p, g = as_tensor(p, "p", dtype=s_q.dtype), as_tensor(g, "g", dtype=s_q.dtype)
    rp = (p - torch.softmax(beta * (s_q + lam * g), -1)).abs().amax(-1)
    rg = (g - gate_unchecked(s_c + lam * p, alpha, kind)).abs().amax(-1)
    return torch.maximum(rp, rg)


@dataclass
class StationaryPoint:
    """A stationary point of F: p, g, its energy, KKT residual, the smallest eigenvalue of the face Hessian
    (:func:`tangent_hessian` with ``face=True``), the gate's complementarity margin (how far the inactive gate
    entries are from entering the support; > 0 means strict complementarity) and the verdict."""

    p: torch.Tensor
    g: torch.Tensor
    energy: float
    residual: float
    min_eig: float
    margin: float
    kind: str

    @property
    def label(self) -> str:
        return "local minimum" if self.min_eig > 0 else "saddle"


def classify(p, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> StationaryPoint:
    r"""Classify a fixed point p of :math:`\Phi` (one instance) as a local minimum or a saddle of F by the smallest
    eigenvalue of the constrained Hessian at :math:`(p, g = G_\alpha(s_c + \lambda p))`. F is convex in p alone and
    in g alone, so a non-degenerate stationary point is never a local maximum."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    s_q, s_c = as_tensor(s_q, "s_q", ndim=1), as_tensor(s_c, "s_c", ndim=1, dtype=None)
    p = as_tensor(p, "p", ndim=1, dtype=s_q.dtype)
    s_c = s_c.to(s_q.dtype)
    u = s_c + lam * p
    g = gate_unchecked(u, alpha, kind)
    H = tangent_hessian(p, g, alpha, beta, lam, kind, face=(kind == "sparsemax"))
    min_eig = torch.linalg.eigvalsh(H)[0].item() if H.numel() else float("inf")
    if kind == "sparsemax":  # inactive j: u_j / alpha < tau; margin = tau - max_{j off S} u_j / alpha
        on = g > 0
        tau = ((u / alpha)[on] - g[on]).mean()
        margin = (tau - (u / alpha)[~on].max()).item() if (~on).any() else float("inf")
    else:
        margin = float("inf")
    return StationaryPoint(p=p, g=g, energy=_energy(p, g, s_q, s_c, alpha, beta, lam, kind).item(),
                           residual=kkt_residual(p, g, s_q, s_c, alpha, beta, lam, kind).item(),
                           min_eig=min_eig, margin=margin, kind=kind)


def newton_fixed_points(s_q, s_c, starts, alpha: float, beta: float, lam: float, *, kind: GateKind = "sparsemax",
                        tol: float = 1e-12, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Solve :math:`p = \Phi(p)` by Newton's method on the residual :math:`r(p) = p - \Phi(p)` from every row of
    ``starts`` (shape ``(S, N)``; one instance s_q, s_c of shape ``(N,)``), with backtracking on :math:`\|r\|`.

    Unlike the iteration :math:`p \leftarrow \Phi(p)`, which only finds attracting fixed points (local minima of F),
    Newton's method also converges to saddles. Step: :math:`p \leftarrow p - t\,(I - J_\Phi(p))^{-1} r(p)`, which stays
    zero-sum because :math:`J_\Phi` maps into the zero-sum vectors; p is kept in the open simplex.
    Returns ``(p, residual)`` with residual :math:`\|r(p)\|_\infty` per start."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    tol, max_iter = positive(tol, "tol"), positive_int(max_iter, "max_iter")
    s_q, s_c = as_tensor(s_q, "s_q", ndim=1), as_tensor(s_c, "s_c", ndim=1, dtype=None).to(torch.float64)
    s_q = s_q.to(torch.float64)
    p = _simplex(starts, "starts", torch.float64)
    if p.ndim != 2 or p.shape[-1] != s_q.shape[0]:
        raise ValueError(f"starts must have shape (S, {s_q.shape[0]}), got {tuple(p.shape)}")
    rows = p.shape[0]
    params = [torch.full((rows, 1), x, dtype=torch.float64) for x in (alpha, beta, lam)]
    return _newton_rows(p.clone(), s_q.expand(rows, -1), s_c.expand(rows, -1), *params, kind, tol, max_iter)


def newton_fixed_points_batch(s_q, s_c, starts, alpha, beta, lam, *, kind: GateKind = "sparsemax", tol: float = 1e-12,
                              max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`newton_fixed_points` for many instances at once: row r of ``starts`` (shape ``(R, N)``) is solved with
    the scores ``s_q[r]``, ``s_c[r]`` (shape ``(R, N)``) and the parameters ``alpha[r]``, ``beta[r]``, ``lam[r]``
    (shape ``(R,)``). Used by the fixed-point census of chapter ``05_fixed_point``
    (:func:`cgar_src.theory.sharpness.fixed_point_census`). Returns ``(p, residual)``, shapes ``(R, N)`` and ``(R,)``."""
    kind = check_kind(kind)
    tol, max_iter = positive(tol, "tol"), positive_int(max_iter, "max_iter")
    p = _simplex(starts, "starts", torch.float64)
    if p.ndim != 2:
        raise ValueError(f"starts must have shape (R, N), got {tuple(p.shape)}")
    rows, n = p.shape
    s_q = as_tensor(s_q, "s_q", ndim=2, dtype=torch.float64)
    s_c = as_tensor(s_c, "s_c", ndim=2, dtype=torch.float64)
    if s_q.shape != p.shape or s_c.shape != p.shape:
        raise ValueError(f"s_q and s_c must have the shape of starts {tuple(p.shape)}, got {tuple(s_q.shape)}, "
                         f"{tuple(s_c.shape)}")
    params = []
    for name, x, strict in (("alpha", alpha, True), ("beta", beta, True), ("lam", lam, False)):
        t = as_tensor(x, name, ndim=1, dtype=torch.float64)
        if t.shape != (rows,) or (t <= 0 if strict else t < 0).any():
            raise ValueError(f"{name} must have shape ({rows},) with entries {'> 0' if strict else '>= 0'}, "
                             f"got shape {tuple(t.shape)}")
        params.append(t[:, None])
    return _newton_rows(p.clone(), s_q, s_c, *params, kind, tol, max_iter)


def _newton_rows(p: torch.Tensor, s_q: torch.Tensor, s_c: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                 lam: torch.Tensor, kind: str, tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method of :func:`newton_fixed_points` on validated rows: every tensor has one row per start
    (parameters of shape ``(R, 1)``). Rows stop when converged, or when no backtracking step lowers the residual."""
    eye = torch.eye(p.shape[-1], dtype=p.dtype)

    def resid(x, rows):
        return x - phi_unchecked(x, s_q[rows], s_c[rows], alpha[rows], beta[rows], lam[rows], kind)

    r = resid(p, slice(None))
    active = torch.arange(p.shape[0])
    for _ in range(max_iter):
        norm = r[active].abs().amax(-1)
        active = active[norm > tol]  # converged rows stop here
        if active.numel() == 0:
            break
        pa, ra, norm = p[active], r[active], r[active].abs().amax(-1)
        a, b, lm = alpha[active], beta[active], lam[active]
        g = gate_unchecked(s_c[active] + lm * pa, a, kind)
        q = torch.softmax(b * (s_q[active] + lm * g), dim=-1)
        # J = beta lam^2 S J_G with S = diag(q) - q q^T and J_G = (diag(w) - w v^T)/alpha (sparsemax: w = support
        # indicator, v = w/|supp|; entropic: w = v = g), formed in O(N^2) per row: S J_G = S diag(w) - (S w) v^T
        w = (g > 0).to(g.dtype) if kind == "sparsemax" else g
        v = w / w.sum(-1, keepdim=True) if kind == "sparsemax" else g
        Sw = q * w - q * (q * w).sum(-1, keepdim=True)
        S = torch.diag_embed(q) - q.unsqueeze(-1) * q.unsqueeze(-2)
        J = (b * lm**2 / a).unsqueeze(-1) * (S * w.unsqueeze(-2) - Sw.unsqueeze(-1) * v.unsqueeze(-2))
        A = eye - J
        step, info = torch.linalg.solve_ex(A, ra)
        bad = info != 0  # singular I - J (a degenerate point): least squares instead
        if bool(bad.any()):
            step[bad] = torch.linalg.lstsq(A[bad], ra[bad].unsqueeze(-1)).solution.squeeze(-1)
        t = torch.ones(active.numel(), dtype=p.dtype)
        improved = torch.zeros(active.numel(), dtype=torch.bool)
        for _ in range(12):  # backtracking: halve t until the residual drops
            todo = torch.nonzero(~improved).flatten()
            cand = (pa[todo] - t[todo, None] * step[todo]).clamp_min(1e-300)
            cand = cand / cand.sum(-1, keepdim=True)
            rc = resid(cand, active[todo])
            better = rc.abs().amax(-1) < norm[todo]
            rows = todo[better]
            pa[rows], ra[rows] = cand[better], rc[better]
            improved[rows] = True
            if bool(improved.all()):
                break
            t = 0.5 * t
        p[active], r[active] = pa, ra
        active = active[improved]  # rows where no step reduced the residual are stuck: give up on them
    return p, r.abs().amax(-1)


def distinct(points: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """The distinct rows of ``points`` (shape ``(S, N)``): a row is new if its max-norm distance to every kept row
    exceeds ``atol``. Returns the kept rows in order of first appearance."""
    points = as_tensor(points, "points", ndim=2)
    atol = positive(atol, "atol")
    kept: list[torch.Tensor] = []
    for q in points:
        if all((q - k).abs().max() > atol for k in kept):
            kept.append(q)
    return torch.stack(kept)


def hamux_flow(s_q, s_c, alpha: float, beta: float, lam: float, *, kind: GateKind = "sparsemax", dt: float = 0.1,
               n_steps: int = 200, x_p0=None, x_g0=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The coupled system as two HAMUX neuron layers (Krotov 2021), integrated by explicit Euler.

    Layer p has internal state :math:`x_p`, Lagrangian :math:`L_p(x) = \beta^{-1}\log\sum_i e^{\beta x_i}` and activation
    :math:`p = \nabla L_p(x_p) = \mathrm{softmax}(\beta x_p)`; layer g has :math:`L_g = \Omega_\alpha^*` and activation
    :math:`g = \nabla\Omega^*_\alpha(x_g) = G_\alpha(x_g)`. The hypersynapse :math:`-\lambda\langle p, g\rangle` and the
    input currents :math:`s_q, s_c` complete the energy, and the layer dynamics are
    :math:`\dot x_p = s_q + \lambda g - x_p`, :math:`\dot x_g = s_c + \lambda p - x_g`. Along them
    :math:`F(p(t), g(t))` never increases (chapter ``05b_coupled_energy``). Returns ``(F, p, g)``: F at every step,
    shape ``(..., n_steps + 1)``, and the final activations."""
    alpha, beta, lam, kind = _params(alpha, beta, lam, kind)
    dt, n_steps = positive(dt, "dt"), positive_int(n_steps, "n_steps")
    if dt > 1:
        raise ValueError(f"dt must be in (0, 1], got {dt}")
    s_q, s_c = check_scores(s_q, s_c)
    x_p = torch.zeros_like(s_q) if x_p0 is None else as_tensor(x_p0, "x_p0", dtype=s_q.dtype).expand_as(s_q).clone()
    x_g = torch.zeros_like(s_c) if x_g0 is None else as_tensor(x_g0, "x_g0", dtype=s_q.dtype).expand_as(s_c).clone()
    p, g = torch.softmax(beta * x_p, -1), gate_unchecked(x_g, alpha, kind)
    values = [_energy(p, g, s_q, s_c, alpha, beta, lam, kind)]
    for _ in range(n_steps):
        x_p, x_g = x_p + dt * (s_q + lam * g - x_p), x_g + dt * (s_c + lam * p - x_g)
        p, g = torch.softmax(beta * x_p, -1), gate_unchecked(x_g, alpha, kind)
        values.append(_energy(p, g, s_q, s_c, alpha, beta, lam, kind))
    return torch.stack(values, -1), p, g
