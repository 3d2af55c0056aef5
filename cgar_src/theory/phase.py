r"""The phase transition in gate selectivity (book: chapter ``04_phase_transition``).

Theorem ``thm-phase``: for :math:`\lambda = 0` the sparsemax gate :math:`g = \mathrm{sparsemax}(u/\alpha)` is one-hot
iff :math:`\alpha \le \alpha_{crit} = u_{(1)} - u_{(2)}`; just above, its peak falls with slope
:math:`-1/(2\alpha_{crit})` (a kink). With feedback the threshold is (equation ``alpha-crit-coupled``),
:math:`\alpha_{crit}(\lambda) = \min_{j\ne m}[(s_{c,m} + \lambda p^\circ_m) - (s_{c,j} + \lambda p^\circ_j)]` with
:math:`p^\circ = \mathrm{softmax}(\beta(s_q + \lambda e_m))`, and its runner-up form is the shift
:math:`\lambda(p^\circ_m - p^\circ_{j^*})`. For N independent standard Gaussian scores the top gap
:math:`D_N = u_{(1)} - u_{(2)}` has mean :math:`N\int\Phi(x)^{N-1}(1 - \Phi(x))\,dx` (equation ``gap-mean``) and
:math:`h(b_N)D_N \to \mathrm{Exp}(1)`, :math:`b_N = \Phi^{-1}(1 - 1/N)`, :math:`h = \varphi/(1 - \Phi)`.

The chapter's instance is Figure 2's model (:func:`cgar_src.theory.simulate.make_bank`) with one trial and context
gain 1: :math:`s_q = X^\top(x_\nu + \sigma_q z)`, :math:`s_c = K^\top(k_\mu + \sigma_c z')`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import integrate, stats

from .._validate import as_tensor, nonnegative, positive, positive_int
from .continuation import onehot_conditions
from .dynamics import (
    alpha_crit_coupled,
    contraction_bound,
    fixed_point,
    gated_retrieval,
    measured_alpha_crit,
    measured_alpha_crit_batch,
)
from .gate import alpha_crit, check_kind, sparsemax_threshold
from .gate import gate as gate_fn
from .simulate import SweepConfig, make_bank

__all__ = ["PhaseModel", "closed_form_errors", "kink_slopes", "fixed_point_peak_curves", "CoupledThreshold",
           "coupled_thresholds", "top_gap_mean_exact", "top_gap_evt_scale", "gaussian_top_gaps", "FeedbackShift",
           "feedback_shifts", "sparsemax_peak_slope", "entropic_peak", "MonotonicityCheck", "peak_monotonicity"]


@dataclass(frozen=True)
class PhaseModel:
    """The chapter's random instance: N unit-norm memories and context keys in R^d, a query and a context that are
    noisy copies (per-coordinate noise ``query_noise``, ``context_noise``) of a memory and of its key."""

    n_memories: int
    dim: int
    query_noise: float
    context_noise: float

    def __post_init__(self):
        positive_int(self.dim, "dim")
        if positive_int(self.n_memories, "n_memories") < 2:
            raise ValueError(f"n_memories must be >= 2, got {self.n_memories}")
        nonnegative(self.query_noise, "query_noise")
        nonnegative(self.context_noise, "context_noise")

    def sweep_config(self) -> SweepConfig:
        """One trial of Figure 2's model with context gain 1 (alpha, beta and the couplings play no part here)."""
        return SweepConfig(n_memories=self.n_memories, dim=self.dim, n_trials=1, sigmas=(self.query_noise,),
                           lambdas=(0.0,), context_gain=1.0, context_noise=self.context_noise)

    def draw(self, gen: torch.Generator, *, query_elsewhere: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One instance from ``gen``: scores ``(s_q, s_c)``, each of shape ``(N,)``. ``query_elsewhere``: the query
        copies a memory other than the context's (uniform over the rest)."""
        if not isinstance(gen, torch.Generator):
            raise ValueError(f"gen must be a torch.Generator, got {type(gen).__name__}")
        cfg = self.sweep_config()
        s_q, s_c = make_bank(cfg, generator=gen, query_elsewhere=query_elsewhere).scores(cfg, self.query_noise)
        return s_q[0], s_c[0]

    def draw_many(self, n: int, gen: torch.Generator, *, alternate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` instances drawn one after another from ``gen``, stacked to shape ``(n, N)``. ``alternate``: every
        second instance (the 2nd, 4th, ...) has its query on another memory than its context."""
        pairs = [self.draw(gen, query_elsewhere=alternate and k % 2 == 1) for k in range(positive_int(n, "n"))]
        return torch.stack([q for q, _ in pairs]), torch.stack([c for _, c in pairs])


def closed_form_errors(model: PhaseModel, n_instances: int, gen: torch.Generator, beta: float) -> torch.Tensor:
    r"""The error :math:`|\text{measured} - \text{closed form}|` of :math:`\alpha_{crit}` at :math:`\lambda = 0` on
    ``n_instances`` fresh instances: the measurement bisects on alpha over the fixed-point solver's gate (bracket
    :math:`[\alpha_{crit}/4, 4\alpha_{crit}]`), the closed form is :math:`u_{(1)} - u_{(2)}`.
    Shape ``(n_instances,)``."""
    errs = []
    for _ in range(positive_int(n_instances, "n_instances")):
        s_q, s_c = model.draw(gen)
        ac = alpha_crit(s_c).item()
        errs.append(abs(measured_alpha_crit(s_q, s_c, beta, 0.0, lo=ac / 4, hi=4 * ac) - ac))
    return torch.tensor(errs, dtype=torch.float64)


def kink_slopes(s_q: torch.Tensor, s_c: torch.Tensor, beta: float, h: float = 1e-6) -> tuple[float, float]:
    r"""One-sided finite-difference slopes at :math:`\alpha_{crit} = u_{(1)} - u_{(2)}` (step ``h``) of the peak gate
    :math:`\max_i g_i` returned by the fixed-point solver (:func:`cgar_src.theory.dynamics.fixed_point`, sparsemax gate,
    :math:`\lambda = 0`, solved to 1e-14). Theorem ``thm-phase`` (chapter ``04_phase_transition``) says left 0 and right
    :math:`-1/(2\alpha_{crit})`; the slopes come from the solver, not from the closed form, so they test it."""
    h = positive(h, "h")
    a = alpha_crit(s_c).item()
    if not h < a:
        raise ValueError(f"h must be < alpha_crit = {a}, got {h}")
    peaks = [fixed_point(s_q, s_c, x, beta, 0.0, tol=1e-14, max_iter=10_000).g.max().item() for x in (a - h, a, a + h)]
    return (peaks[1] - peaks[0]) / h, (peaks[2] - peaks[1]) / h


def fixed_point_peak_curves(s_q: torch.Tensor, s_c: torch.Tensor, alphas: torch.Tensor, beta: float,
                            lambdas: Sequence[float]) -> dict[float, torch.Tensor]:
    r"""Peak gate :math:`\max_i g_i` at the coupled fixed point (solved to 1e-12) for every alpha in ``alphas`` and
    every coupling: ``{lam: tensor of shape (A,)}``."""
    return {lam: torch.stack([fixed_point(s_q, s_c, a.item(), beta, lam, tol=1e-12, max_iter=10_000).g.max()
                              for a in alphas]) for lam in lambdas}


@dataclass(frozen=True)
class CoupledThreshold:
    """The threshold of one instance at coupling ``lam``: derived (equation ``alpha-crit-coupled``), measured by
    bisection, the shift against :math:`\\lambda = 0`, and the contraction bound at the derived threshold."""

    lam: float
    derived: float
    measured: float
    shift: float
    contraction: float


def coupled_thresholds(s_q: torch.Tensor, s_c: torch.Tensor, beta: float,
                       lambdas: Sequence[float]) -> list[CoupledThreshold]:
    r""":math:`\alpha_{crit}(\lambda)` of one instance for every coupling: closed form and bisection on the solver
    (bracket ``[derived/4, 4 derived]``), shift :math:`\alpha_{crit}(\lambda) - (u_{(1)} - u_{(2)})` and
    :math:`L = \beta\lambda^2/(2\alpha_{crit}(\lambda))`."""
    a0 = alpha_crit(s_c).item()
    rows = []
    for lam in lambdas:
        derived = alpha_crit_coupled(s_q, s_c, beta, lam).item()
        measured = measured_alpha_crit(s_q, s_c, beta, lam, lo=derived / 4, hi=4 * derived)
        rows.append(CoupledThreshold(lam=lam, derived=derived, measured=measured, shift=derived - a0,
                                     contraction=contraction_bound(derived, beta, lam)))
    return rows


def top_gap_mean_exact(n: int) -> float:
    r""":math:`\mathbb E\,D_N = N\int\Phi(x)^{N-1}(1-\Phi(x))\,dx` for the gap :math:`D_N = u_{(1)} - u_{(2)}` of N
    independent standard Gaussian scores (equation ``gap-mean``, chapter ``04_phase_transition``), by adaptive
    quadrature (``scipy.integrate.quad``) of the integrand in log space, split at :math:`b_N = \Phi^{-1}(1 - 1/N)`
    where its mass sits. Closed values: :math:`2/\sqrt\pi` for N = 2, :math:`3/(2\sqrt\pi)` for N = 3."""
    n = positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")

    def integrand(x: float) -> float:
        return n * math.exp((n - 1) * stats.norm.logcdf(x) + stats.norm.logsf(x))

    b = float(stats.norm.isf(1 / n))
    pieces = [(-40.0, b - 2.0), (b - 2.0, b + 2.0), (b + 2.0, 40.0)]
    return float(sum(integrate.quad(integrand, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=200)[0] for lo, hi in pieces))


def top_gap_evt_scale(n: int) -> float:
    r"""Extreme-value scale of the top gap, :math:`1/h(b_N) = (1 - \Phi(b_N))/\varphi(b_N)` with
    :math:`b_N = \Phi^{-1}(1 - 1/N)`: the asymptotic mean of :math:`D_N` (its median is :math:`\ln 2` times it)."""
    n = positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    b = stats.norm.isf(1 / n)
    return stats.norm.sf(b) / stats.norm.pdf(b)


def gaussian_top_gaps(ns: Sequence[int], n_samples: int, gen: torch.Generator, *, chunk: int = 500) -> list[dict]:
    r"""Sampled top gap :math:`D_N` (``n_samples`` samples of N standard Gaussian scores, drawn in chunks of ``chunk``
    rows from ``gen``) against its exact mean, the extreme-value mean :math:`1/h(b_N)` and median
    :math:`\ln 2/h(b_N)`, and the crude :math:`1/\sqrt{2\ln N}`. One dict per N (keys ``N, mean, sem, median,
    exact_mean, evt_mean, evt_median, crude``)."""
    n_samples, chunk = positive_int(n_samples, "n_samples"), positive_int(chunk, "chunk")
    sizes = [chunk] * (n_samples // chunk) + ([n_samples % chunk] if n_samples % chunk else [])
    rows = []
    for n in ns:
        n = positive_int(n, "ns")
        if n < 2:
            raise ValueError(f"ns must all be >= 2, got {n}")
        gaps = torch.cat([alpha_crit(torch.randn(s, n, generator=gen, dtype=torch.float64)) for s in sizes])
        scale = top_gap_evt_scale(n)
        rows.append(dict(N=n, mean=gaps.mean().item(), sem=(gaps.std() / math.sqrt(len(gaps))).item(),
                         median=gaps.median().item(), exact_mean=top_gap_mean_exact(n), evt_mean=scale,
                         evt_median=math.log(2) * scale, crude=1 / math.sqrt(2 * math.log(n))))
    return rows


@dataclass
class FeedbackShift:
    r"""The shift of the transition at coupling ``lam`` on the instances that have one (``n_transition`` of them: some
    one-hot gate is self-consistent for an alpha above ``min_alpha``, :math:`\max_j a_j(\lambda) >` ``min_alpha``).
    ``derived``: the upper end :math:`\max_j a_j(\lambda)` of the one-hot phase (Proposition
    ``prop-alpha-crit-conditions``); ``measured``: the bisection on the solver minus :math:`\alpha_{crit}(0)`;
    ``holds``: the one-hot gate at the transition sits on :math:`m = \arg\max s_c`, so that equation
    :eq:`alpha-crit-coupled` applies; ``first_order``: its runner-up form :math:`\lambda(p^\circ_m - p^\circ_{j^*})`;
    ``agree``: the query's top memory is the context's; ``derived_error``: the largest
    :math:`|\text{bisection} - \max_j a_j|`; ``index``: the instances' rows in the batch."""

    lam: float
    measured: torch.Tensor
    derived: torch.Tensor
    first_order: torch.Tensor
    agree: torch.Tensor
    holds: torch.Tensor
    contraction: torch.Tensor
    derived_error: float
    n_transition: int
    index: torch.Tensor


def feedback_shifts(s_q: torch.Tensor, s_c: torch.Tensor, beta: float, lambdas: Sequence[float], *,
                    min_alpha: float = 1e-3, n_bisect: int = 30, max_iter: int = 3000) -> list[FeedbackShift]:
    r"""For a batch of instances (``s_q``, ``s_c`` of shape ``(B, N)``) and every coupling: measure
    :math:`\alpha_{crit}(\lambda)` by batched bisection on the solver (bracket ``[derived/4, 4 derived]``, derived =
    :math:`\max_j a_j(\lambda)`) on the instances whose derived threshold exceeds ``min_alpha``, record whether the
    one-hot gate there is on :math:`\arg\max s_c` (equation ``alpha-crit-coupled`` applies) and compare the shift with
    its runner-up form. ``contraction``: :math:`\beta\lambda^2/(2\max_j a_j)` at the threshold."""
    min_alpha = positive(min_alpha, "min_alpha")
    ac0 = alpha_crit(s_c)
    m_idx = s_c.argmax(-1, keepdim=True)
    runner = s_c.scatter(-1, m_idx, float("-inf")).argmax(-1, keepdim=True)
    agree = s_q.argmax(-1, keepdim=True) == m_idx  # the query favours the context's memory
    onehot = torch.zeros_like(s_c).scatter(-1, m_idx, 1.0)
    out = []
    for lam in lambdas:
        cond = onehot_conditions(s_q, s_c, beta, lam)
        derived = torch.maximum(cond.a_m, cond.a_other)
        ok = derived > min_alpha  # a one-hot fixed point exists for some alpha > 0 (else no transition to measure)
        if not ok.any():
            raise ValueError(f"no instance has a transition above min_alpha={min_alpha} at lam={lam}")
        measured = measured_alpha_crit_batch(s_q[ok], s_c[ok], beta, lam, lo=derived[ok] / 4, hi=4 * derived[ok],
                                             n_bisect=n_bisect, max_iter=max_iter)
        p0 = gated_retrieval(s_q, onehot, beta, lam)
        first = lam * (p0.gather(-1, m_idx) - p0.gather(-1, runner)).squeeze(-1)[ok]
        out.append(FeedbackShift(lam=lam, measured=measured - ac0[ok], derived=derived[ok] - ac0[ok], first_order=first,
                                 agree=agree.squeeze(-1)[ok], holds=cond.holds[ok],
                                 contraction=beta * lam**2 / (2 * derived[ok]),
                                 derived_error=(measured - derived[ok]).abs().max().item(), n_transition=int(ok.sum()),
                                 index=torch.nonzero(ok).flatten()))
    return out


def sparsemax_peak_slope(u, alpha: float) -> torch.Tensor:
    r"""Closed-form slope :math:`d/d\alpha\,\max_i\mathrm{sparsemax}(u/\alpha)_i = -c/\alpha^2` with
    :math:`c = u_{(1)} - \tfrac1k\sum_{i\in S}u_i \ge 0` on the support S of size k (Theorem ``thm-peak-monotone``,
    chapter ``04_phase_transition``); 0 inside the one-hot phase. ``u`` has shape ``(..., N)``, the result the leading
    shape; alpha must not be a breakpoint of the support."""
    u = as_tensor(u, "u")
    alpha = positive(alpha, "alpha")
    tau, k = sparsemax_threshold(u / alpha)
    support = u / alpha > tau.unsqueeze(-1)
    c = u.amax(-1) - (u * support).sum(-1) / k.to(u.dtype)
    return -c / alpha**2


def entropic_peak(u: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    r"""Closed-form peak of the entropic gate, :math:`\max_i\mathrm{softmax}(u/\alpha)_i = 1/\sum_j
    e^{-(u_{(1)} - u_j)/\alpha}` for every alpha (shape ``(A,)``); each term is nondecreasing in alpha, so the peak is
    nonincreasing (Theorem ``thm-peak-monotone``)."""
    u = as_tensor(u, "u", ndim=1)
    alphas = as_tensor(alphas, "alphas", ndim=1, dtype=u.dtype)
    if (alphas <= 0).any():
        raise ValueError("alphas must all be > 0")
    gaps = (u.max() - u).unsqueeze(0)
    return 1 / torch.exp(-gaps / alphas.unsqueeze(1)).sum(-1)


@dataclass(frozen=True)
class MonotonicityCheck:
    """Peak gate of the numerical gate (:func:`cgar_src.theory.gate.gate`) on a grid of alphas for many random score
    vectors: steps where it rose by more than ``atol``, the largest rise, the largest error of the closed-form slope
    against a central finite difference (sparsemax) or of the closed-form peak (entropic)."""

    kind: str
    n_vectors: int
    n_steps: int
    rises: int
    largest_rise: float
    closed_form_error: float


def peak_monotonicity(kind: str, n_vectors: int, n_memories: int, alphas: torch.Tensor, gen: torch.Generator, *,
                      atol: float = 1e-12) -> MonotonicityCheck:
    r"""Theorem ``thm-peak-monotone`` checked on ``n_vectors`` standard Gaussian score vectors of length
    ``n_memories`` drawn from ``gen``: the numerical gate's peak along the increasing grid ``alphas`` (no feedback),
    and the closed forms (:func:`sparsemax_peak_slope` against a central difference with step 1e-6 at every grid
    alpha; :func:`entropic_peak` against the numerical peak)."""
    kind = check_kind(kind)
    n_vectors, n_memories = positive_int(n_vectors, "n_vectors"), positive_int(n_memories, "n_memories")
    alphas = as_tensor(alphas, "alphas", ndim=1)
    if alphas.numel() < 2 or not bool((alphas > 0).all()) or not bool((alphas.diff() > 0).all()):
        raise ValueError("alphas must hold at least 2 values, all > 0 and strictly increasing")
    u = torch.randn(n_vectors, n_memories, generator=gen, dtype=torch.float64)
    peaks = torch.stack([gate_fn(u, a, kind).amax(-1) for a in alphas.tolist()], -1)  # (V, A)
    steps = peaks.diff(dim=-1)
    if kind == "sparsemax":  # relative error of the closed-form slope against a central difference
        h = 1e-6
        err = max(((gate_fn(u, a + h, kind).amax(-1) - gate_fn(u, a - h, kind).amax(-1)) / (2 * h)
                   - sparsemax_peak_slope(u, a)).abs().div(sparsemax_peak_slope(u, a).abs().clamp_min(1)).max().item()
                  for a in alphas.tolist())
    else:
        err = max((entropic_peak(u[v], alphas) - peaks[v]).abs().max().item() for v in range(n_vectors))
    return MonotonicityCheck(kind=kind, n_vectors=n_vectors, n_steps=steps.numel(), rises=int((steps > atol).sum()),
                             largest_rise=steps.max().item(), closed_form_error=err)
