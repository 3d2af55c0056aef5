r"""The coupled energy descends, and its stationary points are the fixed points (book: chapter
``05b_coupled_energy``).

:math:`F(p, g) = -\langle p, s_q\rangle - \lambda\langle p, g\rangle - \langle g, s_c\rangle + \beta^{-1}\sum_i
p_i\log p_i + \Omega_\alpha(g)` (equation ``coupled-energy``). Theorem ``thm-alternating``: the iteration
:math:`p_{t+1} = \Phi(p_t)` is alternating minimisation of F, so
:math:`F(p_t, g_{t-1}) \ge F(p_t, g_t) \ge F(p_{t+1}, g_t)` for every :math:`\lambda \ge 0`, and its fixed points are
the KKT points of F; below the convexity threshold :math:`\beta\lambda^2/(2\alpha) < 1` (Theorem
``thm-joint-convexity``) the fixed point is F's global minimiser. The HAMUX layer dynamics
:math:`\dot x_p = s_q + \lambda g - x_p`, :math:`\dot x_g = s_c + \lambda p - x_g` descend F as well.
Points of the simplex come from :func:`cgar_src.theory.sampling.random_simplex` (torch's global generator).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .._validate import positive_int
from .dynamics import fixed_point
from .energy import alternating_trace, convexity_threshold, coupled_energy, hamux_flow, kkt_residual
from .gate import GateKind, check_kind
from .sampling import log_uniform, random_instance, random_simplex

__all__ = ["ENERGY_RANGES", "DescentCheck", "alternating_descent_check", "FixedPointOptimality",
           "fixed_point_optimality", "HamuxCheck", "hamux_check"]

#: chapter 05b's ranges for random instances: alpha and beta log-uniform, lambda uniform
ENERGY_RANGES = dict(alpha_range=(0.1, 5.0), beta_range=(0.5, 10.0), lam_range=(0.0, 4.0))


@dataclass
class DescentCheck:
    """F along alternating minimisation for one gate: half-steps checked, increases beyond a relative round-off
    allowance of 1e-12, instances above the convexity threshold, and the largest change of F in one half-step."""

    half_steps: int
    increases: int
    instances_above_threshold: int
    largest_rise: float

    def to_dict(self) -> dict:
        return asdict(self)


def alternating_descent_check(kind: GateKind, n_instances: int, n_memories: int, n_starts: int, n_steps: int,
                              gen: torch.Generator) -> DescentCheck:
    r"""Draw ``n_instances`` instances (:data:`ENERGY_RANGES`) and run ``n_steps`` alternating steps from
    ``n_starts`` Dirichlet(1) starts each (:func:`~cgar_src.theory.energy.alternating_trace`); count the half-steps
    where F rose by more than :math:`10^{-12}\max(|F|, 1)`."""
    kind = check_kind(kind)
    n_instances, n_starts = positive_int(n_instances, "n_instances"), positive_int(n_starts, "n_starts")
    n_half, n_viol, n_above, worst = 0, 0, 0, -math.inf
    for _ in range(n_instances):
        inst = random_instance(n_memories, gen, **ENERGY_RANGES)
        F, _ = alternating_trace(random_simplex(n_starts, n_memories), inst.s_q, inst.s_c, inst.alpha, inst.beta,
                                 inst.lam, kind=kind, n_steps=n_steps)
        rise = F.diff(dim=-1)
        n_viol += int((rise > 1e-12 * F[..., 1:].abs().clamp_min(1)).sum())  # relative round-off allowance
        n_half += rise.numel()
        n_above += convexity_threshold(inst.alpha, inst.beta, inst.lam, kind) >= 1
        worst = max(worst, rise.max().item())
    return DescentCheck(half_steps=n_half, increases=n_viol, instances_above_threshold=int(n_above), largest_rise=worst)


@dataclass
class FixedPointOptimality:
    """Undamped iteration (alternating minimisation) on random instances: how many converged to 1e-12 (and how many
    of those lie above the convexity threshold), the largest KKT residual at the computed fixed points, and the
    random points with lower F than the fixed point on instances below the threshold (the theorem says none)."""

    n_instances: int
    converged: int
    converged_above: int
    max_kkt_residual: float
    beaten: int


def fixed_point_optimality(n_instances: int, n_memories: int, gen: torch.Generator,
                           n_random: int = 200) -> FixedPointOptimality:
    r"""Draw ``n_instances`` instances (:data:`ENERGY_RANGES`), solve :math:`p = \Phi(p)` undamped to 1e-12 (at most
    2000 steps), and on each instance below the threshold compare :math:`F(p^*, g^*)` with F at ``n_random``
    Dirichlet(1/2) pairs (p, g)."""
    n_instances, n_random = positive_int(n_instances, "n_instances"), positive_int(n_random, "n_random")
    resid, n_fp, n_above, beaten = 0.0, 0, 0, 0
    for _ in range(n_instances):
        inst = random_instance(n_memories, gen, **ENERGY_RANGES)
        args = (inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam)
        thr = convexity_threshold(inst.alpha, inst.beta, inst.lam)
        fp = fixed_point(*args, tol=1e-12, max_iter=2000)  # undamped: alternating minimisation
        if not bool(fp.converged):
            continue
        n_fp += 1
        n_above += thr >= 1
        resid = max(resid, kkt_residual(fp.p, fp.g, *args).item())
        if thr < 1:
            F_star = coupled_energy(fp.p, fp.g, *args)
            p_others = random_simplex(n_random, n_memories, 0.5)
            others = coupled_energy(p_others, random_simplex(n_random, n_memories, 0.5), *args)
            beaten += int((others < F_star).sum())
    return FixedPointOptimality(n_instances=n_instances, converged=n_fp, converged_above=int(n_above),
                                max_kkt_residual=resid, beaten=beaten)


@dataclass
class HamuxCheck:
    """The HAMUX flow on instances below the threshold: Euler steps on which F rose (beyond 1e-12), and instances
    whose final p equals the fixed point of :math:`\\Phi` to 1e-8."""

    n_instances: int
    rises: int
    matches: int


def hamux_check(n_instances: int, n_memories: int, gen: torch.Generator, *, dt: float = 0.25,
                n_steps: int = 250) -> HamuxCheck:
    r"""Draw ``n_instances`` instances below the threshold (alpha log-uniform on [0.3, 3], beta on [0.5, 5],
    :math:`\lambda = \sqrt{2\alpha/\beta}\,f` with f log-uniform on [0.2, 0.9], then
    :math:`s_q, s_c \sim \mathcal N(0, I)`) and integrate the HAMUX flow (:func:`~cgar_src.theory.energy.hamux_flow`) from rest."""
    n_instances = positive_int(n_instances, "n_instances")
    n_rise, n_match = 0, 0
    for _ in range(n_instances):
        alpha, beta = log_uniform(0.3, 3.0, gen), log_uniform(0.5, 5.0, gen)
        lam = math.sqrt(2 * alpha / beta) * log_uniform(0.2, 0.9, gen)  # below the threshold: one fixed point
        s_q = torch.randn(n_memories, generator=gen, dtype=torch.float64)
        s_c = torch.randn(n_memories, generator=gen, dtype=torch.float64)
        F, p, _ = hamux_flow(s_q, s_c, alpha, beta, lam, dt=dt, n_steps=n_steps)
        n_rise += int((F.diff() > 1e-12).sum())
        fp = fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-13)
        n_match += bool((p - fp.p).abs().max() < 1e-8)
    return HamuxCheck(n_instances=n_instances, rises=n_rise, matches=int(n_match))
