r"""The exponential gain of context gating, measured: retrieval error and capacity against N and d, predicted from
a fit sample before the retrieval runs and compared on a held-out sample (book: :ref:`ch-separation`, section
"The exponential gain, measured"; equations :eq:`gain-odds`, :eq:`gain-capacity` and :eq:`gain-meanfield`).

**Instance.** Figure 2's model (:mod:`cgar_src.theory.simulate`) on a *nested* bank: per dimension d one draw of
``max(ns)`` unit memories X and unit keys K, and per trial a uniform number :math:`u_t`, a query noise
:math:`z_t` and a context noise :math:`z'_t`. At memory count N the bank is the first N columns and trial t's
target is :math:`\mu_t = \lfloor u_t N\rfloor`, so every N sees the same trials (common random numbers):
:math:`s_q = X^\top(x_\mu + \sigma_q z)`, :math:`s_c = \gamma K^\top(k_\mu + \sigma_c z')`.

**Error and capacity.** The retrieval error of a trial is :math:`1 - p_\mu = \sigma(\log o)` with the error odds
:math:`o = \sum_{j\ne\mu} e^{\beta(\ell_j - \ell_\mu)}`, :math:`\ell = s_q + \lambda g` (the quantity the separation
theorem bounds). The error curve is its mean over trials, :math:`\varepsilon(N)`; the capacity
:math:`N_{max}(\lambda)` is the first N at which :math:`\varepsilon(N) = \epsilon`, found on the grid and interpolated
linearly in :math:`(\log(N-1), \mathrm{logit}\,\varepsilon)` (:func:`capacity`).

**Predictions** (from the fit sample; neither uses a gated retrieval). Book: :math:`(N_{max}(\lambda)-1) =
(N_{max}(0)-1)\,e^{\beta\lambda\Delta_{gate}}` (:func:`book_capacity`). Mean field (the sparse bound's competitors,
with the worst competitor replaced by the average one): the gated odds of a trial are its ungated odds times the
gate factor :math:`F(g) = \frac{1}{N-1}\sum_{j\ne\mu} e^{-\beta\lambda(g_\mu - g_j)}` (:func:`gate_log_factor`), so
:math:`\varepsilon_\lambda(N) \approx \mathbb E_{i,k}\,\sigma(\log o_{0,i} + \log F(g_k))` over independent pairs of
query-side and context-side samples (:func:`predicted_error`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from .._validate import as_tensor, indices, int_in_range, nonnegative, positive, positive_int
from .dynamics import effective_separation, error_log_odds, fixed_point
from .gate import gate

__all__ = ["log_grid", "GainConfig", "banks_for", "draw_scores", "gate_log_factor", "Screened", "screen_columns",
           "Reduced", "reduce_columns",
           "sparse_bound_log_odds", "SeparationSample", "separation_sample", "RetrievalSample", "retrieval_sample",
           "predicted_error", "predicted_error_se", "predicted_accuracy_bound", "capacity", "book_capacity",
           "predictions", "measured_capacity"]


def log_grid(lo: int, hi: int, n: int) -> tuple[int, ...]:
    """``n`` integers from ``lo`` to ``hi`` (both included), evenly spaced in log N and rounded; repeats dropped."""
    lo, hi, n = int_in_range(lo, "lo", 2), positive_int(hi, "hi"), int_in_range(n, "n", 2)
    if hi <= lo:
        raise ValueError(f"hi must be > lo, got lo={lo}, hi={hi}")
    vals = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64).round().long().tolist()
    return tuple(sorted(set(vals)))


@dataclass(frozen=True)
class GainConfig:
    """Parameters of the gain measurement; stored next to every result. ``lambdas`` must start with 0 (the ungated
    memory); ``ns`` increasing, at least 2; ``epsilon`` the error level that defines the capacity."""

    dims: tuple[int, ...] = (16, 64, 256)
    ns: tuple[int, ...] = log_grid(2, 10_000, 13)
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_trials: int = 300
    beta: float = 6.0
    alpha: float = 40.0
    context_gain: float = 150.0
    query_noise: float = 0.1
    context_noise: float = 0.1
    epsilon: float = 0.05
    tol: float = 1e-10
    seed: int = 0

    def __post_init__(self):
        if len(self.dims) == 0 or len(self.ns) < 2 or len(self.lambdas) < 2:
            raise ValueError("dims must not be empty; ns and lambdas need at least 2 entries each")
        for d in self.dims:
            positive_int(d, "dims")
        for n in self.ns:
            int_in_range(n, "ns", 2)
        if list(self.ns) != sorted(set(self.ns)):
            raise ValueError(f"ns must be strictly increasing, got {self.ns}")
        for lam in self.lambdas:
            nonnegative(lam, "lambdas")
        if self.lambdas[0] != 0:
            raise ValueError(f"lambdas must start with 0 (the ungated memory), got {self.lambdas}")
        positive_int(self.n_trials, "n_trials")
        int_in_range(self.seed, "seed", 0)
        for name in ("beta", "alpha", "context_gain", "tol"):
            positive(getattr(self, name), name)
        nonnegative(self.query_noise, "query_noise")
        nonnegative(self.context_noise, "context_noise")
        if not 0 < positive(self.epsilon, "epsilon") < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")

    def to_dict(self) -> dict:
        return asdict(self)


def banks_for(n: int, n_trials: int, spread: int = 4) -> int:
    """How many independent banks the ``n_trials`` trials at memory count ``n`` are split over: the smallest divisor
    of ``n_trials`` that is at least ``min(n_trials, ceil(spread * n_trials / n))``, so a bank serves at most about
    ``n / spread`` trials and the trials see many different (memories, target) geometries even when n is small."""
    n, n_trials, spread = int_in_range(n, "n", 2), positive_int(n_trials, "n_trials"), positive_int(spread, "spread")
    need = min(n_trials, math.ceil(spread * n_trials / n))
    return next(k for k in range(need, n_trials + 1) if n_trials % k == 0)


def draw_scores(cfg: GainConfig, d: int, n: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One sample of ``cfg.n_trials`` trials at dimension d and memory count n, from ``gen``: ``(s_q, s_c, target)``
    of shapes ``(T, n)``, ``(T, n)``, ``(T,)`` (float64). The trials are split over :func:`banks_for` independent
    banks of n unit memories X and n unit keys K; each trial draws its target uniformly in its bank,
    :math:`s_q = X^\top(x_\mu + \sigma_q z)` and :math:`s_c = \gamma K^\top(k_\mu + \sigma_c z')`. Draw order: X, K,
    targets, z, z'."""
    d, n = positive_int(d, "d"), int_in_range(n, "n", 2)
    T = cfg.n_trials
    nb = banks_for(n, T)
    tpb = T // nb
    f64 = dict(dtype=torch.float64, generator=gen)
    X = torch.randn(nb, d, n, **f64)
    K = torch.randn(nb, d, n, **f64)
    X, K = X / X.norm(dim=1, keepdim=True), K / K.norm(dim=1, keepdim=True)
    target = torch.randint(n, (nb, tpb), generator=gen)
    z_q, z_c = torch.randn(nb, tpb, d, **f64), torch.randn(nb, tpb, d, **f64)
    idx = target[:, None, :].expand(nb, d, tpb)
    xi = X.gather(2, idx).transpose(1, 2) + cfg.query_noise * z_q
    c = K.gather(2, idx).transpose(1, 2) + cfg.context_noise * z_c
    return (xi @ X).reshape(T, n), (cfg.context_gain * (c @ K)).reshape(T, n), target.reshape(T)


def gate_log_factor(g: torch.Tensor, target: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    r"""Log of the mean-field gate factor (equation :eq:`gain-meanfield`)

    .. math:: F(g) = \frac{1}{N-1}\sum_{j\ne\mu} e^{-\beta\lambda(g_\mu - g_j)}
              = e^{-\beta\lambda g_\mu}\Big(1 + \frac{1}{N-1}\sum_{j\ne\mu}\big(e^{\beta\lambda g_j} - 1\big)\Big),

    shape ``g.shape[:-1]``; only the gate's support enters the sum (``expm1``: no cancellation for small
    :math:`\beta\lambda g_j`). :math:`\log F \le -\beta\lambda\Delta_{gate}` (the book's factor), and
    :math:`\log F = -\beta\lambda` for a one-hot gate on the target."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    g = as_tensor(g, "g")
    n = g.shape[-1]
    if n < 2:
        raise ValueError(f"g needs at least 2 memories on its last axis, got shape {tuple(g.shape)}")
    t = indices(target, "target", n, shape=g.shape[:-1], what="memory indices").unsqueeze(-1)
    own = g.gather(-1, t).squeeze(-1)
    others = torch.expm1(beta * lam * g).scatter(-1, t, 0.0).sum(-1)
    return -beta * lam * own + torch.log1p(others / (n - 1))


def sparse_bound_log_odds(s_q: torch.Tensor, g: torch.Tensor, target: torch.Tensor, beta: float,
                          lam: float) -> torch.Tensor:
    r"""Log of the sparse bound on the error odds of :prf:ref:`thm-separation`:
    :math:`e^{-\beta\Delta_{raw}}\,[\sum_{j\in S\setminus\mu} e^{-\beta\lambda(g_\mu - g_j)} + (N - |S|)\,e^{-\beta\lambda
    g_\mu}] = (N-1)\,e^{-\beta\Delta_{raw}}\,F(g)` (for :math:`\mu\in S`; the sum form covers :math:`\mu\notin S`)."""
    raw = effective_separation(s_q, g, target, 0.0).raw
    return -beta * raw + math.log(g.shape[-1] - 1) + gate_log_factor(g, target, beta, lam)


@dataclass
class SeparationSample:
    r"""What :func:`separation_sample` measures without any gated retrieval; axes (dims, ns, [lambdas,] trials).

    ``log_odds0``: the ungated error odds :math:`\log\sum_{j\ne\mu}e^{-\beta(s_{q,\mu}-s_{q,j})}` (a function of the
    query evidence only); ``delta_raw``; and of the first-order gate :math:`g^{(0)} = G_\alpha(s_c)`: ``delta_gate``,
    ``g_target`` (:math:`g_\mu`), ``support`` (:math:`|S|`), ``gate_correct`` (its argmax is the target) and
    ``log_factor`` (:func:`gate_log_factor` per coupling)."""

    config: GainConfig
    log_odds0: torch.Tensor
    delta_raw: torch.Tensor
    delta_gate: torch.Tensor
    g_target: torch.Tensor
    support: torch.Tensor
    gate_correct: torch.Tensor
    log_factor: torch.Tensor

    def median_delta_gate(self) -> torch.Tensor:
        r"""Median first-order :math:`\Delta_{gate}` per (dim, N)."""
        return self.delta_gate.median(-1).values

    @property
    def book_log_factor(self) -> torch.Tensor:
        r"""The book's factor :math:`-\beta\lambda\Delta_{gate}` per (dim, N, lambda, trial)."""
        lam = torch.tensor(self.config.lambdas, dtype=torch.float64)
        return -self.config.beta * lam[:, None] * self.delta_gate[:, :, None, :]


def _generator(seed: int, d: int) -> torch.Generator:
    return torch.Generator().manual_seed(int_in_range(seed, "seed", 0) * 100_003 + d)


class Screened(NamedTuple):
    r"""The exact column reduction shared by :func:`reduce_columns` and the language-model fits
    (``cgar_src.analysis.gate_fit``), from :func:`screen_columns`: ``idx`` ``(T, K)``, the screened columns (largest
    :math:`s_c` first); ``rest`` ``(T, N)``, :math:`\beta s_q` with the screened (and excluded) columns at
    :math:`-\infty`; the aggregate column standing for the rest, with query score ``rest_q`` ``(T,)``
    :math:`=\beta^{-1}\log\sum_{rest} e^{\beta s_{q,j}}` and context score ``rest_c`` ``(T,)``
    :math:`=\max s_c - 2\,\mathrm{margin} - 1`, too low to ever enter the gate's support."""

    idx: torch.Tensor
    rest: torch.Tensor
    rest_q: torch.Tensor
    rest_c: torch.Tensor


def screen_columns(s_q: torch.Tensor, s_c: torch.Tensor, beta: float, margin: float,
                   exclude: torch.Tensor | None = None) -> Screened:
    r"""Screened columns plus one column for the rest (chapter ``03_separation``'s screening lemma): per row the K
    largest :math:`s_c`, K the most columns of any row with :math:`s_c > \max s_c -` ``margin`` (with a small allowance
    for round-off), which holds every column that can ever carry gate mass for :math:`\alpha + \lambda \le` ``margin``
    (:func:`cgar_src.theory.dynamics.support_screen`), and the aggregate of every other column: softmax weights, the
    gate and the fixed point on these K + 1 columns equal those of the full problem (the aggregate's weight is the
    dropped columns' total). ``exclude`` ``(T,)``: one more column per row left out of the aggregate (a retrieval
    target kept apart by :func:`reduce_columns`). When nothing is left (K = N), the aggregate is a column of no
    weight (query score :math:`1000/\beta` below the smallest), so the shape stays K + 1. Inputs are trusted (the
    callers validate them)."""
    top = s_c.amax(-1, keepdim=True)
    k = int((s_c > top - margin * (1 + 1e-6) - 1e-9 * top.abs()).sum(-1).max())
    idx = s_c.topk(k, dim=-1).indices
    rest = (beta * s_q).scatter(-1, idx, float("-inf"))
    if exclude is not None:
        rest = rest.scatter(-1, exclude[:, None], float("-inf"))
    lse_rest = torch.logsumexp(rest, -1)
    if k == s_c.shape[-1]:      # nothing left: a column of no weight (e^-1000 relative to every other) keeps the shape
        lse_rest = (beta * s_q).amin(-1) - 1000.0
    return Screened(idx, rest, lse_rest / beta, top[:, 0] - 2 * margin - 1.0)


class Reduced(NamedTuple):
    r"""A batch of trials reduced to the columns that matter (:func:`reduce_columns`): ``s_q``, ``s_c`` of shape
    ``(T, K)``, the target's column ``target``, the full memory count ``n``, and per trial the ungated log error
    odds ``log_odds0``, :math:`\Delta_{raw}` and the largest query score among the dropped memories ``rest_max``."""

    s_q: torch.Tensor
    s_c: torch.Tensor
    target: torch.Tensor
    n: int
    log_odds0: torch.Tensor
    delta_raw: torch.Tensor
    rest_max: torch.Tensor


def reduce_columns(s_q: torch.Tensor, s_c: torch.Tensor, target: torch.Tensor, alpha: float, beta: float,
                   lam_max: float) -> Reduced:
    r"""Exact reduction of a ``(T, N)`` batch for every coupling :math:`\lambda \le` ``lam_max`` (chapter
    ``03_separation``'s screening lemma): the memories with :math:`s_{c,i} > \max s_c - \alpha - \lambda_{max}`
    (the only ones that can carry gate mass, :func:`cgar_src.theory.dynamics.support_screen`), the target, and one
    aggregate column for all other memories with query score :math:`\beta^{-1}\log\sum_{rest} e^{\beta s_{q,j}}` and a
    context score too low to enter the gate (:func:`screen_columns` with margin :math:`\alpha + \lambda_{max}`, the
    target kept out of the aggregate). Softmax weights, the gate, the fixed point and the error odds on these
    columns equal those of the full problem (the aggregate's weight is the dropped memories' total). A trial whose
    target is among the screened columns gets a dummy column instead (query score :math:`-10^4/\beta` below the
    target: weight zero in float64)."""
    T, n = s_q.shape
    t = target[:, None]
    own = s_q.gather(-1, t)
    others = (beta * (s_q - own)).scatter(-1, t, float("-inf"))
    log_odds0 = torch.logsumexp(others, -1)
    delta_raw = -others.amax(-1) / beta
    sc = screen_columns(s_q, s_c, beta, alpha + lam_max, exclude=target)
    idx, k = sc.idx, sc.idx.shape[-1]
    if k + 2 >= n:  # nothing to gain: keep every column
        return Reduced(s_q, s_c, target, n, log_odds0, delta_raw, torch.full((T,), float("-inf"), dtype=s_q.dtype))
    in_c = (idx == t).any(-1)
    rest_max = sc.rest.amax(-1) / beta
    tq = torch.where(in_c, own[:, 0] - 1e4 / beta, own[:, 0])
    tc = torch.where(in_c, sc.rest_c, s_c.gather(-1, t)[:, 0])
    rq = torch.cat([s_q.gather(-1, idx), tq[:, None], sc.rest_q[:, None]], -1)
    rc = torch.cat([s_c.gather(-1, idx), tc[:, None], sc.rest_c[:, None]], -1)
    pos = torch.where(in_c, (idx == t).long().argmax(-1), torch.full_like(target, k))
    return Reduced(rq, rc, pos, n, log_odds0, delta_raw, rest_max)


def _log_factor(g: torch.Tensor, t: torch.Tensor, n: int, beta: float, lam: float) -> torch.Tensor:
    """:func:`gate_log_factor` on reduced columns of a gate over ``n`` memories (all others carry no mass)."""
    own = g.gather(-1, t[:, None])[:, 0]
    others = torch.expm1(beta * lam * g).scatter(-1, t[:, None], 0.0).sum(-1)
    return -beta * lam * own + torch.log1p(others / (n - 1))


def _gap(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return v.gather(-1, t[:, None])[:, 0] - v.scatter(-1, t[:, None], float("-inf")).amax(-1)


def separation_sample(cfg: GainConfig, seed: int) -> SeparationSample:
    """The fit sample: query-side and context-side separations at every (d, N) of ``cfg`` (:func:`draw_scores`,
    one generator per d from ``seed``), without any gated retrieval. Batched over trials; loops over the grid only."""
    D, M, L, T = len(cfg.dims), len(cfg.ns), len(cfg.lambdas), cfg.n_trials
    f64 = dict(dtype=torch.float64)
    out = {k: torch.empty(D, M, T, **f64) for k in ("log_odds0", "delta_raw", "delta_gate", "g_target")}
    support, gate_ok = torch.empty(D, M, T, dtype=torch.long), torch.empty(D, M, T, dtype=torch.bool)
    log_factor = torch.empty(D, M, L, T, **f64)
    for a, d in enumerate(cfg.dims):
        gen = _generator(seed, d)
        for b, n in enumerate(cfg.ns):
            r = reduce_columns(*draw_scores(cfg, d, n, gen), cfg.alpha, cfg.beta, 0.0)
            g0 = gate(r.s_c, cfg.alpha)
            out["log_odds0"][a, b], out["delta_raw"][a, b] = r.log_odds0, r.delta_raw
            out["delta_gate"][a, b] = _gap(g0, r.target)
            out["g_target"][a, b] = g0.gather(-1, r.target[:, None])[:, 0]
            support[a, b], gate_ok[a, b] = (g0 > 0).sum(-1), g0.argmax(-1) == r.target
            for c, lam in enumerate(cfg.lambdas):
                log_factor[a, b, c] = _log_factor(g0, r.target, n, cfg.beta, lam)
    return SeparationSample(config=cfg, support=support, gate_correct=gate_ok, log_factor=log_factor, **out)


@dataclass
class RetrievalSample:
    r"""Gated retrieval at the coupled fixed point (:func:`retrieval_sample`), axes (dims, ns, lambdas, trials):
    ``log_odds`` (error odds of :math:`p^*`), ``correct`` (argmax is the target), ``delta_gate`` (the fixed point's
    gate; at :math:`\lambda = 0` it is the first-order gate :math:`G_\alpha(s_c)`), ``sparse_bound`` (log of the
    sparse bound, :func:`sparse_bound_log_odds`, with the fixed point's gate); ``max_residual`` over everything."""

    config: GainConfig
    log_odds: torch.Tensor
    correct: torch.Tensor
    delta_gate: torch.Tensor
    sparse_bound: torch.Tensor
    max_residual: float

    @property
    def error(self) -> torch.Tensor:
        r"""Mean retrieval error :math:`\varepsilon = \mathrm{mean}(1 - p_\mu)`, shape (dims, ns, lambdas)."""
        return torch.sigmoid(self.log_odds).mean(-1)

    @property
    def error_se(self) -> torch.Tensor:
        """Standard error of :attr:`error` over trials."""
        e = torch.sigmoid(self.log_odds)
        return e.std(-1) / math.sqrt(e.shape[-1])

    @property
    def accuracy(self) -> torch.Tensor:
        """Fraction of trials whose argmax is the target, shape (dims, ns, lambdas)."""
        return self.correct.double().mean(-1)

    @property
    def feedback_shift(self) -> torch.Tensor:
        r"""How the feedback moves the gate gap: :math:`\Delta_{gate}(\lambda) - \Delta_{gate}(0)` per trial, where
        :math:`\Delta_{gate}(0)` is the first-order gate's; :math:`|\cdot| \le 2\lambda/\alpha` (each gate entry moves by
        at most :math:`\lambda\|p\|_2/\alpha \le \lambda/\alpha`)."""
        return self.delta_gate - self.delta_gate[:, :, :1]


def retrieval_sample(cfg: GainConfig, seed: int) -> RetrievalSample:
    r"""The held-out sample: the coupled fixed point :math:`p^* = \Phi(p^*)` at every (d, N, lambda), scores from
    :func:`draw_scores` (one generator per d from ``seed``), solved by
    :func:`cgar_src.theory.dynamics.fixed_point` on the exact reduction of :func:`reduce_columns`. Batched over
    trials; loops over the grid only."""
    D, M, L, T = len(cfg.dims), len(cfg.ns), len(cfg.lambdas), cfg.n_trials
    shape = (D, M, L, T)
    log_odds, dg, bound = (torch.empty(shape, dtype=torch.float64) for _ in range(3))
    correct = torch.empty(shape, dtype=torch.bool)
    residual = 0.0
    for a, d in enumerate(cfg.dims):
        gen = _generator(seed, d)
        for b, n in enumerate(cfg.ns):
            r = reduce_columns(*draw_scores(cfg, d, n, gen), cfg.alpha, cfg.beta, max(cfg.lambdas))
            for c, lam in enumerate(cfg.lambdas):
                fp = fixed_point(r.s_q, r.s_c, cfg.alpha, cfg.beta, lam, tol=cfg.tol, screen=False)
                ell = r.s_q + lam * fp.g
                log_odds[a, b, c] = error_log_odds(r.s_q, fp.g, r.target, cfg.beta, lam)
                # the aggregate column is no memory: compare the target with the best dropped memory instead
                best = torch.maximum(ell.scatter(-1, r.target[:, None], float("-inf"))[:, :-1].amax(-1), r.rest_max)
                correct[a, b, c] = ell.gather(-1, r.target[:, None])[:, 0] > best if r.s_q.shape[-1] < n else \
                    fp.p.argmax(-1) == r.target
                dg[a, b, c] = _gap(fp.g, r.target)
                bound[a, b, c] = -cfg.beta * r.delta_raw + math.log(n - 1) + _log_factor(fp.g, r.target, n, cfg.beta, lam)
                residual = max(residual, fp.residual.max().item())
    return RetrievalSample(config=cfg, log_odds=log_odds, correct=correct, delta_gate=dg, sparse_bound=bound,
                           max_residual=residual)


def predicted_error(log_odds0: torch.Tensor, log_factor: torch.Tensor) -> torch.Tensor:
    r"""Mean-field prediction of the gated error curve (equation :eq:`gain-meanfield`):
    :math:`\frac{1}{T_1T_2}\sum_{i,k}\sigma(\log o_{0,i} + \log F_k)`, every query-side sample i paired with every
    context-side sample k (query and context evidence are independent in the model).

    ``log_odds0``: shape ``(..., T1)``; ``log_factor``: ``(..., L, T2)`` with the same leading axes. Returns
    ``(..., L)``."""
    a = as_tensor(log_odds0, "log_odds0", dtype=torch.float64)
    f = as_tensor(log_factor, "log_factor", dtype=torch.float64)
    if f.ndim != a.ndim + 1 or f.shape[:-2] != a.shape[:-1]:
        raise ValueError(f"log_factor must have shape (..., L, T2) with the leading axes of log_odds0 "
                         f"{tuple(a.shape[:-1])}, got {tuple(f.shape)}")
    # (..., 1, T1, 1) + (..., L, 1, T2) -> mean over both sample axes
    return torch.sigmoid(a[..., None, :, None] + f[..., :, None, :]).mean((-1, -2))


def predicted_error_se(log_odds0: torch.Tensor, log_factor: torch.Tensor) -> torch.Tensor:
    r"""Standard error of :func:`predicted_error` from both samples it averages over:
    :math:`\sqrt{\mathrm{Var}_i(\bar\sigma_{i\cdot})/T_1 + \mathrm{Var}_k(\bar\sigma_{\cdot k})/T_2}` with
    :math:`\bar\sigma_{i\cdot}`, :math:`\bar\sigma_{\cdot k}` the means of :math:`\sigma(\log o_{0,i} + \log F_k)` over k and
    over i (a rare wrong gate among the context-side samples shows up in the second term); shape ``(..., L)``."""
    a = as_tensor(log_odds0, "log_odds0", dtype=torch.float64)
    f = as_tensor(log_factor, "log_factor", dtype=torch.float64)
    if f.ndim != a.ndim + 1 or f.shape[:-2] != a.shape[:-1]:
        raise ValueError(f"log_factor must have shape (..., L, T2) with the leading axes of log_odds0 "
                         f"{tuple(a.shape[:-1])}, got {tuple(f.shape)}")
    sig = torch.sigmoid(a[..., None, :, None] + f[..., :, None, :])
    return (sig.mean(-1).var(-1) / a.shape[-1] + sig.mean(-2).var(-1) / f.shape[-1]).sqrt()


def predicted_accuracy_bound(delta_raw: torch.Tensor, delta_gate: torch.Tensor,
                             lambdas: Sequence[float]) -> torch.Tensor:
    r"""The theorem's accuracy bound :math:`P(\Delta_{raw} + \lambda\Delta_{gate} > 0)` (a trial with a positive
    lower bound on :math:`\Delta_{eff}` is retrieved), over independent pairs of query-side and context-side samples.

    ``delta_raw``, ``delta_gate``: shape ``(..., T1)`` and ``(..., T2)``; returns ``(..., len(lambdas))``."""
    r = as_tensor(delta_raw, "delta_raw", dtype=torch.float64)
    g = as_tensor(delta_gate, "delta_gate", dtype=torch.float64)
    if r.shape[:-1] != g.shape[:-1]:
        raise ValueError(f"delta_raw {tuple(r.shape)} and delta_gate {tuple(g.shape)} must share leading axes")
    lam = torch.tensor([nonnegative(x, "lambdas") for x in lambdas], dtype=torch.float64)
    s = r[..., None, :, None] + lam[:, None, None] * g[..., None, None, :]
    return (s > 0).double().mean((-1, -2))


def capacity(ns: Sequence[int], error, epsilon: float) -> float:
    r"""Capacity :math:`N_{max}` (equation :eq:`gain-capacity`): the first crossing of the error curve ``error``
    (mean error at memory counts ``ns``) with ``epsilon``, interpolated linearly in :math:`\log(N-1)` against
    :math:`\mathrm{logit}\,\varepsilon` between the last grid point at or below epsilon and the next one.

    Returns ``nan`` when the error already exceeds epsilon at ``ns[0]`` (capacity below the grid) and ``inf`` when
    it never does (capacity above ``ns[-1]``)."""
    eps = positive(epsilon, "epsilon")
    if not eps < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    e = as_tensor(error, "error", ndim=1, dtype=torch.float64)
    ns = [int_in_range(n, "ns", 2) for n in ns]
    if len(ns) != e.numel() or ns != sorted(set(ns)):
        raise ValueError(f"ns must be strictly increasing with one entry per error value, got {len(ns)} for {e.numel()}")
    above = (e > eps).nonzero()
    if above.numel() == 0:
        return math.inf
    k = int(above[0])
    if k == 0:
        return math.nan
    lo = e[k - 1].clamp(min=1e-300).item()
    x0, x1 = math.log(ns[k - 1] - 1), math.log(ns[k] - 1)
    y0, y1, y = (math.log(v / (1 - v)) for v in (lo, e[k].item(), eps))
    return 1 + math.exp(x0 + (y - y0) / (y1 - y0) * (x1 - x0))


def book_capacity(ns: Sequence[int], n0: float, beta: float, lam: float, delta_gate) -> float:
    r"""The book's capacity prediction (equation :eq:`gain-capacity`): the N that solves
    :math:`N - 1 = (N_{max}(0) - 1)\,e^{\beta\lambda\Delta_{gate}(N)}`, with :math:`\Delta_{gate}(N)` the fit sample's
    median gate gap ``delta_gate`` on the grid ``ns`` (linear in log N between grid points, constant beyond).

    Solved on 4000 points of log N from ``ns[0]`` to 100 ``ns[-1]``; the first N at which the right side falls to
    or below N - 1 (``inf`` if none)."""
    n0, beta, lam = positive(n0, "n0"), positive(beta, "beta"), nonnegative(lam, "lam")
    if n0 <= 1:
        raise ValueError(f"n0 must be > 1, got {n0}")
    dg = as_tensor(delta_gate, "delta_gate", ndim=1, dtype=torch.float64)
    if len(ns) != dg.numel():
        raise ValueError(f"delta_gate needs one value per grid point, got {dg.numel()} for {len(ns)}")
    grid = torch.log(torch.tensor([float(n) for n in ns], dtype=torch.float64))
    x = torch.linspace(grid[0].item(), grid[-1].item() + math.log(100), 4000, dtype=torch.float64)
    idx = torch.searchsorted(grid, x.clamp(max=grid[-1].item()), right=True).clamp(1, len(ns) - 1)
    w = ((x - grid[idx - 1]) / (grid[idx] - grid[idx - 1])).clamp(0, 1)
    dg_x = dg[idx - 1] + w * (dg[idx] - dg[idx - 1])
    rhs = math.log(n0 - 1) + beta * lam * dg_x
    ok = (torch.log(torch.expm1(x)) >= rhs).nonzero()
    return math.inf if ok.numel() == 0 else 1 + math.exp(rhs[int(ok[0])].item())


def _capacities(ns: Sequence[int], error: torch.Tensor, epsilon: float) -> torch.Tensor:
    """:func:`capacity` of every curve ``error[d, :, lam]``, shape (dims, lambdas)."""
    D, _, L = error.shape
    return torch.tensor([[capacity(ns, error[a, :, c], epsilon) for c in range(L)] for a in range(D)],
                        dtype=torch.float64)


def predictions(fit: SeparationSample) -> dict[str, torch.Tensor]:
    r"""Everything the chapter predicts from the fit sample before any gated retrieval runs: the mean-field error
    curves ``error_mf`` (and ``error_mf_se``), the book-factor curves ``error_book`` (the ungated odds times
    :math:`e^{-\beta\lambda\Delta_{gate}}`), the theorem's accuracy bound ``accuracy_bound`` (all (dims, ns,
    lambdas)); the capacities ``capacity_mf`` (of the mean-field curves; at :math:`\lambda = 0` it is the fit sample's
    ungated capacity) and ``capacity_book`` (:func:`book_capacity` from that ungated capacity), and the book's
    factor ``factor_book`` :math:`= e^{\beta\lambda\Delta_{gate}(\hat N)}` (all (dims, lambdas))."""
    cfg = fit.config
    err_mf = predicted_error(fit.log_odds0, fit.log_factor)
    cap_mf = _capacities(cfg.ns, err_mf, cfg.epsilon)
    med = fit.median_delta_gate()
    cap_book = torch.tensor([[book_capacity(cfg.ns, cap_mf[a, 0].item(), cfg.beta, lam, med[a])
                              for lam in cfg.lambdas] for a in range(len(cfg.dims))], dtype=torch.float64)
    return dict(error_mf=err_mf, error_mf_se=predicted_error_se(fit.log_odds0, fit.log_factor),
                error_book=predicted_error(fit.log_odds0, fit.book_log_factor),
                accuracy_bound=predicted_accuracy_bound(fit.delta_raw, fit.delta_gate, cfg.lambdas),
                capacity_mf=cap_mf, capacity_book=cap_book, factor_book=(cap_book - 1) / (cap_mf[:, :1] - 1))


def measured_capacity(sample: RetrievalSample) -> torch.Tensor:
    """:func:`capacity` of the held-out error curves, shape (dims, lambdas)."""
    return _capacities(sample.config.ns, sample.error, sample.config.epsilon)
