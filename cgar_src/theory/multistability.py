r"""Above the contraction bound: several fixed points, minima and saddles of the coupled energy (book: chapters
``05_fixed_point`` and ``05b_coupled_energy``).

The example: N = 10 memories, a query that favours memory 1 and a context that favours memory 2
(:math:`s_q, s_c \sim 0.1\,\mathcal N(0, I)` plus 0.5 on that memory), :math:`\alpha = 0.5`, :math:`\beta = 8`,
:math:`\lambda = 3`, far above :math:`\beta\lambda^2/(2\alpha) = 72`. The damped iteration
:math:`p \leftarrow (1-\omega)p + \omega\Phi(p)` finds only attracting fixed points; Newton's method on
:math:`p - \Phi(p)` (:func:`cgar_src.theory.energy.newton_fixed_points`) finds saddles too, and each stationary point
of :math:`F(p, g) = -\langle p, s_q\rangle - \lambda\langle p, g\rangle - \langle g, s_c\rangle + \beta^{-1}\sum_i
p_i\log p_i + \Omega_\alpha(g)` is classified by its Hessian on the critical cone
(:func:`~cgar_src.theory.energy.classify`).
Random starts come from :func:`cgar_src.theory.sampling.random_simplex` (torch's global generator).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import int_in_range, positive, positive_int
from .dynamics import FixedPoint, fixed_point
from .energy import StationaryPoint, best_p, classify, coupled_energy, distinct, newton_fixed_points, reduced_energy
from .sampling import random_simplex

__all__ = ["MultistableExample", "multistable_example", "damped_fixed_points", "EdgeEnergy", "edge_energy",
           "StationaryPoints", "stationary_points", "segment_energy"]


@dataclass(frozen=True)
class MultistableExample:
    """Scores (shape ``(N,)``) and parameters of the multistability example."""

    s_q: torch.Tensor
    s_c: torch.Tensor
    alpha: float
    beta: float
    lam: float

    @property
    def args(self) -> tuple:
        """``(s_q, s_c, alpha, beta, lam)``, the arguments of the solvers and energies."""
        return self.s_q, self.s_c, self.alpha, self.beta, self.lam


def multistable_example(seed: int, n_memories: int = 10, *, alpha: float = 0.5, beta: float = 8.0, lam: float = 3.0,
                        bump: float = 0.5) -> MultistableExample:
    r""":math:`s_q = 0.1 z + \text{bump}\, e_1`, :math:`s_c = 0.1 z' + \text{bump}\, e_2` with z, z' drawn in that order
    from a generator seeded with ``seed``: the query favours memory 1, the context memory 2."""
    n_memories = int_in_range(n_memories, "n_memories", 2)
    gen = torch.Generator().manual_seed(int_in_range(seed, "seed", 0))
    s_q = 0.1 * torch.randn(n_memories, generator=gen, dtype=torch.float64)
    s_c = 0.1 * torch.randn(n_memories, generator=gen, dtype=torch.float64)
    s_q[0] += bump
    s_c[1] += bump
    return MultistableExample(s_q, s_c, positive(alpha, "alpha"), positive(beta, "beta"), positive(lam, "lam"))


def damped_fixed_points(ex: MultistableExample, n_starts: int = 200,
                        conc: float = 0.3) -> tuple[FixedPoint, torch.Tensor]:
    r"""The damped iteration (:math:`\omega = 1/2`, to 1e-12) from ``n_starts`` Dirichlet(``conc``) starts. Returns the
    solver's result and the distinct converged fixed points (max-norm 1e-6 apart), in order of first appearance."""
    n_starts = positive_int(n_starts, "n_starts")
    n = ex.s_q.shape[-1]
    starts = random_simplex(n_starts, n, conc)
    fps = fixed_point(ex.s_q.expand(n_starts, -1), ex.s_c.expand(n_starts, -1), ex.alpha, ex.beta, ex.lam, p0=starts,
                      tol=1e-12, max_iter=20_000, damping=0.5)
    converged = fps.p[fps.converged]
    return fps, (distinct(converged) if len(converged) else converged)


@dataclass
class EdgeEnergy:
    r"""The reduced energy :math:`\min_p F(p, g)` on the gate-simplex edge :math:`g = (1-t)e_i + t e_j`."""

    t: torch.Tensor
    gates: torch.Tensor
    energy: torch.Tensor

    @property
    def top(self) -> torch.Tensor:
        """The gate at the edge's highest reduced energy."""
        return self.gates[self.energy.argmax()]


def edge_energy(ex: MultistableExample, i: int = 0, j: int = 1, n_grid: int = 401) -> EdgeEnergy:
    r"""Reduced energy :math:`-\beta^{-1}\log\sum_k e^{\beta(s_{q,k} + \lambda g_k)} - \langle g, s_c\rangle +
    \Omega_\alpha(g)` on ``n_grid`` points of the edge from memory ``i`` to memory ``j``."""
    n = ex.s_q.shape[-1]
    i, j, n_grid = int_in_range(i, "i", 0, n - 1), int_in_range(j, "j", 0, n - 1), int_in_range(n_grid, "n_grid", 2)
    if i == j:
        raise ValueError(f"i and j must differ, got {i}")
    t = torch.linspace(0, 1, n_grid, dtype=torch.float64)
    gates = torch.zeros(n_grid, n, dtype=torch.float64)
    gates[:, i], gates[:, j] = 1 - t, t
    return EdgeEnergy(t=t, gates=gates, energy=reduced_energy(gates, *ex.args))


@dataclass
class StationaryPoints:
    """Newton's method from ``n_starts`` starts: how many converged (residual below 1e-11) and the distinct
    stationary points found, classified and sorted by energy."""

    n_starts: int
    n_converged: int
    points: list[StationaryPoint]

    @property
    def minima(self) -> list[StationaryPoint]:
        return [s for s in self.points if s.label == "local minimum"]

    @property
    def saddles(self) -> list[StationaryPoint]:
        return [s for s in self.points if s.label == "saddle"]


def stationary_points(ex: MultistableExample, edge: EdgeEnergy, n_random: int = 40,
                      conc: float = 0.3) -> StationaryPoints:
    r"""Newton's method on :math:`p - \Phi(p)` from ``n_random`` Dirichlet(``conc``) starts, a start near every
    vertex (:math:`0.9 e_i + 0.01`), the midpoint of every pair of those, and the retrieval equilibrated at the top of
    ``edge`` (:math:`\mathrm{softmax}(\beta(s_q + \lambda g))`); at most 60 Newton steps."""
    n = ex.s_q.shape[-1]
    vertices = 0.9 * torch.eye(n, dtype=torch.float64) + 0.01  # near each memory
    pairs = torch.stack([(vertices[i] + vertices[j]) / 2 for i in range(n) for j in range(i + 1, n)])
    top_of_edge = best_p(edge.top, ex.s_q, ex.beta, ex.lam)
    starts = torch.cat([random_simplex(n_random, n, conc), vertices, pairs, top_of_edge[None]])
    p, r = newton_fixed_points(ex.s_q, ex.s_c, starts, ex.alpha, ex.beta, ex.lam, max_iter=60)
    ok = r < 1e-11
    found = [classify(q, *ex.args) for q in distinct(p[ok])] if ok.any() else []
    return StationaryPoints(n_starts=len(starts), n_converged=int(ok.sum()),
                            points=sorted(found, key=lambda s: s.energy))


def segment_energy(a: StationaryPoint, b: StationaryPoint, s: torch.Tensor, ex: MultistableExample) -> torch.Tensor:
    r""":math:`F` along the straight segment :math:`((1-s)p_a + s p_b, (1-s)g_a + s g_b)` in (p, g), at the points
    ``s`` in [0, 1]."""
    p = (1 - s)[:, None] * a.p + s[:, None] * b.p
    g = (1 - s)[:, None] * a.g + s[:, None] * b.g
    return coupled_energy(p, g, *ex.args)
