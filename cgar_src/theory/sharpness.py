r"""Sharpness of Theorem 3.4, and how many fixed points typical instances have (book: chapter ``05_fixed_point``;
the book's own results, not the paper's).

Theorem 3.4 bounds the Lipschitz constant of
:math:`\Phi(p) = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c + \lambda p)))` by
:math:`L = \beta\lambda^2/(2\eta(\alpha))`, with :math:`\eta = \alpha` (sparsemax gate) or :math:`2\alpha` (entropic
gate), :func:`cgar_src.theory.gate.eta`.

* Two tied memories (Theorem ``thm-sharpness``): N = 2, :math:`s_q = (a, a)`, :math:`s_c = (b, b)`. In the coordinate
  :math:`d = p_1 - p_2` the map is the odd scalar map :math:`f(d) = \tanh(\beta\lambda h(d)/2)` with
  :math:`h(d) = \mathrm{clip}(\lambda d/\alpha, -1, 1)` (sparsemax) or :math:`\tanh(\lambda d/(2\alpha))` (entropic), and
  :math:`f'(0) = L`: the Jacobian of :math:`\Phi` at :math:`p^\circ = (\tfrac12, \tfrac12)` has norm exactly L. Its
  fixed points are :math:`d = 0` alone for :math:`L \le 1` and :math:`d \in \{0, \pm d^*\}` for :math:`L > 1` (a
  pitchfork). :func:`tied_fixed_points` counts them on the package's own :math:`\Phi` by a sign-change scan of
  :math:`f(d) - d` and bisection.
* The census (:func:`fixed_point_census`): all fixed points Newton's method finds on each instance of an ensemble,
  with the spectral radius of :math:`J = \partial\Phi/\partial p` at each (stable if below 1) and its index
  :math:`\mathrm{sign}\det(I - J)`; :func:`share_by_bound` bins the instances by L.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import int_in_range, nonnegative, positive, positive_int
from .dynamics import first_order, phi, phi_jacobian, spectral_radius
from .energy import distinct, newton_fixed_points_batch
from .gate import GateKind, check_kind, eta, gate
from .sampling import CouplingInstance, random_simplex

__all__ = ["coupling_for_bound", "tied_scores", "tied_point", "tied_map", "tied_map_closed_form", "TiedFixedPoints",
           "tied_fixed_points", "Census", "fixed_point_census", "BoundShare", "share_by_bound"]


def coupling_for_bound(alpha: float, beta: float, bound: float, kind: GateKind = "sparsemax") -> float:
    r"""The coupling with :math:`\beta\lambda^2/(2\eta(\alpha)) = ` ``bound``: :math:`\lambda = \sqrt{2\eta(\alpha)\,
    \mathrm{bound}/\beta}`."""
    beta, bound = positive(beta, "beta"), nonnegative(bound, "bound")
    return math.sqrt(2 * eta(alpha, kind) * bound / beta)


def tied_scores(a: float = 0.0, b: float = 0.0, n_memories: int = 2,
                gap: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scores of the tied instance: :math:`s_q = (a, a)`, :math:`s_c = (b, b)` (float64). With ``n_memories`` > 2 the
    other memories get :math:`a - \mathrm{gap}` and :math:`b - \mathrm{gap}` (far below the tied pair)."""
    n = int_in_range(n_memories, "n_memories", 2)
    gap = positive(gap, "gap")
    s_q = torch.full((n,), float(a), dtype=torch.float64)
    s_c = torch.full((n,), float(b), dtype=torch.float64)
    s_q[2:] -= gap
    s_c[2:] -= gap
    return s_q, s_c


def tied_point(d) -> torch.Tensor:
    r""":math:`p(d) = ((1 + d)/2, (1 - d)/2)` for every entry of ``d`` (shape ``(..., 2)``, float64)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    return torch.stack([(1 + d) / 2, (1 - d) / 2], -1)


def tied_map(d, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax", a: float = 0.0,
             b: float = 0.0) -> torch.Tensor:
    r""":math:`\Phi(p(d))_1 - \Phi(p(d))_2` on two tied memories, computed with the package's
    :func:`cgar_src.theory.dynamics.phi` (not with the closed form)."""
    s_q, s_c = tied_scores(a, b)
    q = phi(tied_point(d), s_q, s_c, alpha, beta, lam, kind)
    return q[..., 0] - q[..., 1]


def tied_map_closed_form(d, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Theorem ``thm-sharpness`` (i): :math:`f(d) = \tanh(\beta\lambda h(d)/2)` with
    :math:`h(d) = \mathrm{clip}(\lambda d/\alpha, -1, 1)` (sparsemax) or :math:`\tanh(\lambda d/(2\alpha))` (entropic)."""
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    d = torch.as_tensor(d, dtype=torch.float64)
    h = (lam * d / alpha).clamp(-1, 1) if check_kind(kind) == "sparsemax" else torch.tanh(lam * d / (2 * alpha))
    return torch.tanh(beta * lam * h / 2)


@dataclass
class TiedFixedPoints:
    r"""The fixed points :math:`p(d)` of the tied instance, in increasing d, with the spectral radius of
    :math:`J = \partial\Phi/\partial p` at each, and the instance's contraction bound L."""

    d: torch.Tensor
    rho: torch.Tensor
    bound: float

    @property
    def count(self) -> int:
        return int(self.d.numel())

    @property
    def n_stable(self) -> int:
        return int((self.rho < 1).sum())


def tied_fixed_points(alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax", *, n_grid: int = 2000,
                      a: float = 0.0, b: float = 0.0) -> TiedFixedPoints:
    r"""All fixed points of :math:`\Phi` on two tied memories, as roots of :math:`r(d) = f(d) - d` on [-1, 1] with
    f from :func:`tied_map` (the package's map): r is evaluated at both ends and at the ``n_grid`` cell midpoints
    (d = 0 is a cell edge, never a grid point); every sign change is refined by 60 bisection steps and every exact
    zero is a root. :math:`r(-1) > 0 > r(1)` always (:math:`|f| < 1`); an exact zero there means
    :math:`\tanh` rounded to 1 in float64 and raises ValueError. A pair of roots closer than a grid cell can be
    missed, so keep L away from the fold of other branches (for the pitchfork there is none)."""
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    kind = check_kind(kind)
    n_grid = 2 * (int_in_range(n_grid, "n_grid", 2) // 2)  # even: 0 lies on a cell edge
    edges = torch.linspace(-1, 1, n_grid + 1, dtype=torch.float64)
    grid = torch.cat([edges[:1], (edges[:-1] + edges[1:]) / 2, edges[-1:]])

    def resid(d: torch.Tensor) -> torch.Tensor:
        return tied_map(d, alpha, beta, lam, kind, a, b) - d

    r = resid(grid)
    if r[0] <= 0 or r[-1] >= 0:
        raise ValueError(f"the tied map saturates in float64 at beta*lam = {beta * lam:g} (f(+-1) rounds to +-1); "
                         "lower beta or lam")
    s = torch.sign(r)
    roots = [grid[s == 0]]
    k = torch.nonzero(s[:-1] * s[1:] < 0).flatten()
    lo, hi = grid[k], grid[k + 1]
    s_lo = s[k]
    for _ in range(60):
        mid = (lo + hi) / 2
        same = torch.sign(resid(mid)) == s_lo
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    roots.append((lo + hi) / 2)
    d = torch.cat(roots).sort().values
    s_q, s_c = tied_scores(a, b)
    J = phi_jacobian(tied_point(d), s_q, s_c, alpha, beta, lam, kind)
    L = beta * lam**2 / (2 * eta(alpha, kind))
    return TiedFixedPoints(d=d, rho=spectral_radius(J) if d.numel() else d.clone(), bound=L)


@dataclass
class Census:
    r"""The distinct fixed points Newton's method found on one instance (rows of ``p``), with, at each, the spectral
    radius of :math:`J = \partial\Phi/\partial p`, the index :math:`\mathrm{sign}\det(I - J)`, and the most negative
    real part and the largest imaginary part of J's eigenvalues (Lemma ``lem-real-spectrum``: 0 and 0 up to
    round-off). ``bound`` is the instance's :math:`\beta\lambda^2/(2\eta(\alpha))`."""

    bound: float
    p: torch.Tensor
    rho: torch.Tensor
    index: torch.Tensor
    min_real: float
    max_imag: float

    @property
    def n_fixed(self) -> int:
        return int(self.p.shape[0])

    @property
    def n_stable(self) -> int:
        """Fixed points with :math:`\\rho(J) < 1`: attracting for the (damped) iteration."""
        return int((self.rho < 1).sum())

    @property
    def n_unstable(self) -> int:
        """Fixed points with :math:`\\rho(J) > 1`: repelling for every damping, so the iteration does not find them."""
        return int((self.rho > 1).sum())

    @property
    def index_sum(self) -> int:
        """Sum of the indices; 1 when every fixed point was found and all are non-degenerate (Leray-Schauder degree
        of :math:`I - \\Phi` on the simplex), so a sum other than 1 proves that the search missed some."""
        return int(self.index.sum())


def fixed_point_census(instances: Sequence[CouplingInstance], kind: GateKind = "sparsemax", *, n_random: int = 8,
                       conc: float = 0.3, n_pairs: int = 12, n_segment: int = 5, rounds: int = 1,
                       max_iter: int = 60, accept: float = 1e-11,
                       atol: float = 1e-6, chunk: int = 64) -> list[Census]:
    r"""Newton's method on :math:`p - \Phi(p)` (:func:`cgar_src.theory.energy.newton_fixed_points_batch`) for every
    instance. Pass 1 starts from N points near the vertices (:math:`0.9 e_i + 0.1/N`), the first-order point
    :math:`\Phi(0)` and ``n_random`` Dirichlet(``conc``) points (drawn from torch's global generator, instance by
    instance). Then, ``rounds`` times, on every instance with several fixed points so far: the saddle between two
    basins sits on the gate segment between their gates, so for every pair among the first ``n_pairs`` fixed points,
    with gates :math:`g_a, g_b`, Newton starts from the retrieval equilibrated at ``n_segment`` interior points of the
    segment, :math:`\mathrm{softmax}(\beta(s_q + \lambda((1-t)g_a + t g_b)))`. Every run takes at most ``max_iter``
    steps. A converged row (residual below ``accept``) is a fixed point; fixed points closer than ``atol`` in
    max-norm are one. The count is a lower bound: two distinct verified fixed points prove multiplicity, but a
    search can miss some (:attr:`Census.index_sum` says when it did). ``chunk`` instances are solved in one batch."""
    kind = check_kind(kind)
    n_random, max_iter, chunk = positive_int(n_random, "n_random"), positive_int(max_iter, "max_iter"), positive_int(chunk, "chunk")
    n_pairs, n_segment = int_in_range(n_pairs, "n_pairs", 2), positive_int(n_segment, "n_segment")
    rounds = int_in_range(rounds, "rounds", 0)
    accept, atol, conc = positive(accept, "accept"), positive(atol, "atol"), positive(conc, "conc")
    if not instances:
        raise ValueError("instances must be a non-empty sequence of CouplingInstance")
    found: list[torch.Tensor] = []
    for first in range(0, len(instances), chunk):
        group = instances[first:first + chunk]
        starts = []
        for inst in group:
            n = inst.s_q.shape[-1]
            p1 = first_order(inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam, kind)
            starts.append(torch.cat([0.9 * torch.eye(n, dtype=torch.float64) + 0.1 / n, p1[None],
                                     random_simplex(n_random, n, conc)]))
        found += _newton_group(group, starts, kind, max_iter, accept, atol)
    ts = torch.arange(1, n_segment + 1, dtype=torch.float64) / (n_segment + 1)
    for _ in range(rounds):
        again = [i for i, pts in enumerate(found) if pts.shape[0] > 1]
        for first in range(0, len(again), chunk):
            ids = again[first:first + chunk]
            seg = []
            for i in ids:
                inst = instances[i]
                g = gate(inst.s_c + inst.lam * found[i][:n_pairs], inst.alpha, kind)
                a, b = torch.triu_indices(len(g), len(g), 1)
                gates = (1 - ts[:, None, None]) * g[a] + ts[:, None, None] * g[b]  # (t, pair, N)
                seg.append(torch.softmax(inst.beta * (inst.s_q + inst.lam * gates.reshape(-1, g.shape[-1])), -1))
            for i, pts in zip(ids, _newton_group([instances[i] for i in ids], seg, kind, max_iter, accept, atol)):
                if pts.shape[0]:
                    found[i] = distinct(torch.cat([found[i], pts]), atol)
    return [_classify(inst, kind, pts) for inst, pts in zip(instances, found)]


def _newton_group(group: Sequence[CouplingInstance], starts: list[torch.Tensor], kind: str, max_iter: int,
                  accept: float, atol: float) -> list[torch.Tensor]:
    """Newton from ``starts[k]`` on instance ``group[k]``, all in one batch: the distinct converged points of each."""
    rows = [len(st) for st in starts]
    reps = torch.tensor(rows)

    def per_row(name: str) -> torch.Tensor:
        return torch.tensor([getattr(i, name) for i in group], dtype=torch.float64).repeat_interleave(reps)

    p, res = newton_fixed_points_batch(
        torch.cat([i.s_q.expand(r, -1) for i, r in zip(group, rows)]),
        torch.cat([i.s_c.expand(r, -1) for i, r in zip(group, rows)]), torch.cat(starts),
        per_row("alpha"), per_row("beta"), per_row("lam"), kind=kind, max_iter=max_iter)
    out = []
    for pi, ri in zip(p.split(rows), res.split(rows)):
        ok = pi[ri < accept]
        out.append(distinct(ok, atol) if ok.shape[0] else ok)
    return out


def _classify(inst: CouplingInstance, kind: str, p: torch.Tensor) -> Census:
    """Spectral radius, index and eigenvalue extremes of :math:`J` at each of the distinct fixed points ``p``."""
    args = (inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam, kind)
    bound = inst.beta * inst.lam**2 / (2 * eta(inst.alpha, kind))
    if p.shape[0] == 0:
        empty = p.new_zeros(0)
        return Census(bound=bound, p=p, rho=empty, index=empty, min_real=math.nan, max_imag=math.nan)
    J = phi_jacobian(p, *args)
    ev = torch.linalg.eigvals(J)
    index = torch.sign(torch.linalg.det(torch.eye(p.shape[-1], dtype=p.dtype) - J))
    return Census(bound=bound, p=p, rho=ev.abs().amax(-1), index=index, min_real=ev.real.min().item(),
                  max_imag=ev.imag.abs().max().item())


@dataclass
class BoundShare:
    r"""Instances binned by :math:`L = \beta\lambda^2/(2\eta)` (bin i is ``edges[i] <= L < edges[i+1]``): per bin the
    number of instances, those with several fixed points, those with several stable ones (multistable), and the
    unstable fixed points found."""

    edges: np.ndarray
    n: np.ndarray
    several: np.ndarray
    multistable: np.ndarray
    unstable_points: np.ndarray

    @property
    def share_several(self) -> np.ndarray:
        """Share of instances with more than one fixed point (NaN in empty bins)."""
        return np.where(self.n > 0, self.several / np.maximum(self.n, 1), np.nan)

    @property
    def share_multistable(self) -> np.ndarray:
        """Share of instances with more than one stable fixed point (NaN in empty bins)."""
        return np.where(self.n > 0, self.multistable / np.maximum(self.n, 1), np.nan)


def share_by_bound(census: Sequence[Census], edges: Sequence[float]) -> BoundShare:
    """Bin a census by its instances' bound L (``edges`` increasing; the last may be ``inf``)."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not (np.diff(e) > 0).all() or e[0] < 0:
        raise ValueError(f"edges must be at least two increasing values >= 0, got {list(edges)}")
    if not census:
        raise ValueError("census must be a non-empty sequence of Census")
    L = np.array([c.bound for c in census])
    k = np.searchsorted(e, L, side="right") - 1
    inside = (k >= 0) & (k < e.size - 1)
    counts = {name: np.zeros(e.size - 1, dtype=np.int64) for name in ("n", "several", "multistable", "unstable")}
    for c, b, ok in zip(census, k, inside):
        if ok:
            counts["n"][b] += 1
            counts["several"][b] += c.n_fixed > 1
            counts["multistable"][b] += c.n_stable > 1
            counts["unstable"][b] += c.n_unstable
    return BoundShare(edges=e, n=counts["n"], several=counts["several"], multistable=counts["multistable"],
                      unstable_points=counts["unstable"])
