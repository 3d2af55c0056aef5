r"""Checks of Theorem 3.4 (self-consistent retrieval) and its corollary on random instances (book: chapter
``05_fixed_point``).

Theorem: :math:`\Phi_{\alpha,\lambda}(p) = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c + \lambda p)))` is
Lipschitz on the simplex with constant :math:`L = \beta\lambda^2/(2\eta(\alpha))`; if :math:`L < 1` its fixed point is
unique and :math:`\|p_t - p^*\| \le L^t\|p_0 - p^*\|`. Corollary: :math:`p^* = \mathrm{softmax}(\beta(s_q + \lambda
G_\alpha(s_c) + \lambda R))` with :math:`\|R\| \le \lambda\|p^*\|/\eta(\alpha)` and
:math:`\|p^* - p^{(1)}\| \le \beta\lambda^2/(2\eta(\alpha))` for the first-order :math:`p^{(1)} = \Phi(0)`.
Points of the simplex come from :func:`cgar_src.theory.sampling.random_simplex` (torch's global generator).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import positive, positive_int
from .dynamics import contraction_bound, feedback_term, first_order, fixed_point, phi, phi_jacobian, spectral_radius
from .gate import eta
from .sampling import CouplingInstance, random_instance, random_simplex

__all__ = ["ContractionCheck", "lipschitz_survey", "uniqueness_spread", "convergence_trace", "observed_rate",
           "FirstOrderError", "first_order_error"]


@dataclass
class ContractionCheck:
    r"""One random instance: the bound L, the empirical Lipschitz constant of :math:`\Phi` (largest ratio
    :math:`\|\Phi(a) - \Phi(b)\|/\|a - b\|` over random and over close pairs), the fixed point p (converged or not),
    the spectral radius and 2-norm of :math:`J = \partial\Phi/\partial p` at p, and the smallest singular value of
    :math:`I - J` (positive: p is an isolated, non-degenerate fixed point)."""

    instance: CouplingInstance
    bound: float
    lipschitz: float
    converged: bool
    rho: float
    jacobian_norm: float
    smin: float
    p: torch.Tensor


def lipschitz_survey(n_instances: int, n_memories: int, n_pairs: int, gen: torch.Generator) -> list[ContractionCheck]:
    r"""Draw ``n_instances`` instances (:func:`~cgar_src.theory.sampling.random_instance`, chapter 05's ranges) and
    check each: ``n_pairs`` random pairs and as many pairs :math:`10^{-4}` apart probe the Lipschitz constant; the
    fixed point is solved to 1e-12 (damping 1/2 where :math:`L \ge 1`)."""
    n_instances, n_pairs = positive_int(n_instances, "n_instances"), positive_int(n_pairs, "n_pairs")
    n_memories = positive_int(n_memories, "n_memories")
    eye = torch.eye(n_memories, dtype=torch.float64)
    checks = []
    for _ in range(n_instances):
        inst = random_instance(n_memories, gen)
        args = (inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam)
        bound = contraction_bound(inst.alpha, inst.beta, inst.lam)
        p1, p2 = random_simplex(n_pairs, n_memories), random_simplex(n_pairs, n_memories)
        near = p1 + 1e-4 * (random_simplex(n_pairs, n_memories) - p1)  # close pairs probe the local slope
        ratios = []
        for a, b in [(p1, p2), (p1, near)]:
            fa, fb = (phi(x, *args) for x in (a, b))
            ratios.append(((fa - fb).norm(dim=-1) / (a - b).norm(dim=-1)).max().item())
        fp = fixed_point(*args, tol=1e-12, max_iter=20_000, damping=1.0 if bound < 1 else 0.5)
        J = phi_jacobian(fp.p, *args)
        checks.append(ContractionCheck(instance=inst, bound=bound, lipschitz=max(ratios), converged=bool(fp.converged),
                                       rho=spectral_radius(J).item(),
                                       jacobian_norm=torch.linalg.matrix_norm(J, ord=2).item(),
                                       smin=torch.linalg.svdvals(eye - J).min().item(), p=fp.p))
    return checks


def uniqueness_spread(checks: Sequence[ContractionCheck], n_starts: int) -> tuple[float, bool]:
    """Solve every instance from ``n_starts`` random starts (to 1e-13): the largest max-norm distance between fixed
    points found from different starts of one instance, and whether every run converged."""
    n_starts = positive_int(n_starts, "n_starts")
    spread, all_converged = 0.0, True
    for c in checks:
        inst = c.instance
        starts = random_simplex(n_starts, inst.s_q.shape[-1])
        fps = fixed_point(inst.s_q.expand(n_starts, -1), inst.s_c.expand(n_starts, -1), inst.alpha, inst.beta,
                          inst.lam, tol=1e-13, max_iter=20_000, p0=starts)
        all_converged &= bool(fps.converged.all())
        spread = max(spread, (fps.p - fps.p[0]).abs().max().item())
    return spread, all_converged


def convergence_trace(check: ContractionCheck, n_steps: int = 60) -> np.ndarray:
    r""":math:`\|p_t - p^*\|_2` for :math:`t = 0, \dots, n_{steps}-1` of the undamped iteration
    :math:`p_{t+1} = \Phi(p_t)` from one random start; :math:`p^*` is the check's fixed point."""
    inst = check.instance
    p = random_simplex(1, inst.s_q.shape[-1])[0]
    errs = []
    for _ in range(positive_int(n_steps, "n_steps")):
        errs.append((p - check.p).norm().item())
        p = phi(p, inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam)
    return np.array(errs)


def observed_rate(errs: np.ndarray, lo: float = 1e-13, hi: float = 1e-3) -> float:
    r"""Geometric mean of :math:`e_{t+1}/e_t` over the errors in ``(lo, hi)`` (the linear-convergence tail, above
    round-off); NaN if fewer than three errors lie there."""
    errs = np.asarray(errs, dtype=np.float64)
    tail = errs[(errs > lo) & (errs < hi)]
    return float(np.exp(np.mean(np.diff(np.log(tail))))) if len(tail) > 2 else float("nan")


@dataclass
class FirstOrderError:
    r"""Per coupling (axis 0) and instance (axis 1): :math:`\|p^* - p^{(1)}\|_2` and :math:`\|R\|_2`; the corollary's
    bound :math:`\beta\lambda^2/(2\eta)` per coupling; instances with :math:`\|R\| > \lambda\|p^*\|/\eta`."""

    lams: np.ndarray
    error: torch.Tensor
    r_norm: torch.Tensor
    bound: np.ndarray
    r_violations: int

    @property
    def bound_violations(self) -> int:
        """(coupling, instance) pairs with :math:`\\|p^* - p^{(1)}\\|` above the bound (beyond 1e-12)."""
        return int((self.error > torch.tensor(self.bound)[:, None] + 1e-12).sum())

    def loglog_slope(self) -> float:
        """Slope of log(worst error over instances) against log(lambda): 2 if the feedback is second order."""
        return float(np.polyfit(np.log(self.lams), np.log(self.error.max(-1).values.numpy()), 1)[0])


def first_order_error(s_q: torch.Tensor, s_c: torch.Tensor, lams: Sequence[float], alpha: float,
                      beta: float) -> FirstOrderError:
    """Fixed point (to 1e-13) against the first-order model on a batch of instances (shape ``(B, N)``) for every
    coupling in ``lams`` (sparsemax gate)."""
    alpha, beta = positive(alpha, "alpha"), positive(beta, "beta")
    lams = np.asarray(lams, dtype=np.float64)
    if lams.ndim != 1 or lams.size == 0 or not (lams > 0).all():
        raise ValueError(f"lams must be a non-empty list of couplings > 0, got {lams.tolist()}")
    e = eta(alpha)
    fo_err, r_norm, r_viol = [], [], 0
    for lam in lams.tolist():
        fp = fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-13)
        p1 = first_order(s_q, s_c, alpha, beta, lam)
        R = feedback_term(fp.p, s_c, alpha, lam)
        r_viol += int((R.norm(dim=-1) > lam * fp.p.norm(dim=-1) / e + 1e-12).sum())
        fo_err.append((fp.p - p1).norm(dim=-1))
        r_norm.append(R.norm(dim=-1))
    return FirstOrderError(lams=lams, error=torch.stack(fo_err), r_norm=torch.stack(r_norm),
                           bound=beta * lams**2 / (2 * e), r_violations=r_viol)
