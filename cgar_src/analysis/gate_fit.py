r"""Fitting the theory's two-stage model to a language model's own states (book: ``chapters/12_gate_in_transformer``).

Per query two score vectors over the whole vocabulary, both logit-lens scores :math:`W_U\,\mathrm{Norm}(h)`:
:math:`s_q` (query evidence: the zero-shot prompt) and :math:`s_c` (context evidence: the content-free prompt made of
that query's own demonstrations, which does not contain the query). The target is the model's actual in-context
distribution :math:`p_{ICL}` (its k-shot output). The competing models, all pure functions returning
log-probabilities over the vocabulary (batched over queries, the vocabulary on the last axis):

* ``zero_shot``: :math:`\mathrm{softmax}(s_q)` (no parameter);
* ``dense``: :math:`\mathrm{softmax}(\beta(s_q + \lambda s_c))`, the first-order additive score, a dense signed bias;
* ``gated``: :math:`\mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))` with the sparsemax gate
  :math:`G_\alpha(u) = \mathrm{sparsemax}(u/\alpha)` (the first-order two-stage model, chapter ``02_two_stage``);
* ``fixed_point``: :math:`p^* = \Phi(p^*)`, :math:`\Phi(p) = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c + \lambda p)))`
  (chapter ``05_fixed_point``), solved by :func:`cgar_src.theory.dynamics.fixed_point`;
* ``prior``: one distribution for every query, the mean of :math:`p_{ICL}` over the fitting queries (the label
  prior as the in-context model expresses it).

Parameters are chosen on a grid by the mean :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})` over the fitting queries and
scored on held-out queries (:func:`cross_fit`). For the gated model the grid is evaluated without forming a
vocabulary-sized softmax per grid point: the gate is sparse (support S), so

.. math:: \log Z = \log\sum_i e^{\beta s_{q,i}} + \log\Big(1 + \sum_{i\in S} q^0_i\,(e^{\beta\lambda g_i} - 1)\Big),
   \qquad q^0 = \mathrm{softmax}(\beta s_q),

and :math:`\mathrm{KL} = \sum_i p_i\log p_i - \beta\,p\cdot s_q - \beta\lambda\,p_S\cdot g_S + \log Z`; the gate is
computed once per alpha and reused for every (beta, lambda).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._validate import as_tensor, indices, nonnegative, positive
from ..theory import dynamics
from ..theory.gate import alpha_crit, gate

__all__ = ["MODELS", "GRID_MODELS", "log_probs", "log_probs_zero_shot", "log_probs_dense", "log_probs_gated",
           "log_probs_fixed_point", "kl", "kl_grid", "GridFit", "fit_grid", "CrossFit", "cross_fit", "cross_fit_fixed_point", "dense_limit_alpha",
           "support_sizes",
           "GateStats", "gate_stats", "MultiStart", "multistart_fixed_points"]

#: the models of the ICL distribution that :func:`cross_fit` evaluates
MODELS = ("zero_shot", "dense", "gated", "fixed_point", "prior")
#: the parameters of each model fitted on a grid, in grid-axis order
GRID_MODELS = {"dense": ("beta", "lam"), "gated": ("alpha", "beta", "lam")}   # the fixed point: cross_fit_fixed_point


# --- the models: log-probabilities over the vocabulary -----------------------------------------------------------

def _pair(s_q, s_c) -> tuple[torch.Tensor, torch.Tensor]:
    s_q = as_tensor(s_q, "s_q", ndim=2)
    s_c = as_tensor(s_c, "s_c", ndim=2, dtype=s_q.dtype)
    if s_c.shape != s_q.shape:
        raise ValueError(f"s_c must have the shape of s_q {tuple(s_q.shape)} (queries, vocabulary), got {tuple(s_c.shape)}")
    if s_q.shape[-1] < 2:
        raise ValueError(f"s_q must have at least 2 vocabulary entries, got shape {tuple(s_q.shape)}")
    return s_q, s_c


def log_probs_zero_shot(s_q, beta: float = 1.0) -> torch.Tensor:
    r"""Model (a): :math:`\log\mathrm{softmax}(\beta s_q)` (the book scores it at beta = 1, no fitted parameter)."""
    s_q = as_tensor(s_q, "s_q", ndim=2)
    return torch.log_softmax(positive(beta, "beta") * s_q, dim=-1)


def log_probs_dense(s_q, s_c, beta: float, lam: float) -> torch.Tensor:
    r"""Model (b): :math:`\log\mathrm{softmax}(\beta(s_q + \lambda s_c))`, the dense additive bias."""
    s_q, s_c = _pair(s_q, s_c)
    return torch.log_softmax(positive(beta, "beta") * (s_q + nonnegative(lam, "lam") * s_c), dim=-1)


def log_probs_gated(s_q, s_c, alpha: float, beta: float, lam: float) -> torch.Tensor:
    r"""Model (c): :math:`\log\mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))`, the first-order gated model
    with the sparsemax gate (chapters ``02_two_stage`` and ``06_attention_first_order``)."""
    s_q, s_c = _pair(s_q, s_c)
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    return torch.log_softmax(beta * (s_q + lam * gate(s_c, alpha)), dim=-1)


def log_probs_fixed_point(s_q, s_c, alpha: float, beta: float, lam: float, *, tol: float = 1e-9,
                          max_iter: int = 500) -> tuple[torch.Tensor, dynamics.FixedPoint]:
    r"""Model (d): the self-consistent retrieval :math:`p^* = \Phi(p^*)` (Theorem 3.4, chapter ``05_fixed_point``)
    from the first-order start (:func:`cgar_src.theory.dynamics.fixed_point`). Returns :math:`\log\mathrm{softmax}(\beta(s_q + \lambda g^*))` with :math:`g^*` the
    gate at the returned iterate (that is :math:`\log\Phi(p^*)`, equal to :math:`\log p^*` within ``tol`` and finite
    where :math:`p^*` underflows) and the solver's result (convergence, contraction bound)."""
    s_q, s_c = _pair(s_q, s_c)
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=tol, max_iter=max_iter)
    return torch.log_softmax(beta * (s_q + lam * fp.g), dim=-1), fp


def log_probs(model: str, s_q, s_c, params: dict) -> torch.Tensor:
    """Log-probabilities of one of the grid models (``dense``, ``gated``) or ``zero_shot`` at ``params`` (keys as
    in :data:`GRID_MODELS`)."""
    if model == "zero_shot":
        return log_probs_zero_shot(s_q)
    if model not in GRID_MODELS:
        raise ValueError(f"model must be 'zero_shot' or one of {sorted(GRID_MODELS)}, got {model!r}")
    if set(params) != set(GRID_MODELS[model]):
        raise ValueError(f"params of {model} must have exactly the keys {GRID_MODELS[model]}, got {sorted(params)}")
    if model == "dense":
        return log_probs_dense(s_q, s_c, params["beta"], params["lam"])
    return log_probs_gated(s_q, s_c, params["alpha"], params["beta"], params["lam"])


def kl(target_logp, model_logp) -> torch.Tensor:
    r"""Per row :math:`\mathrm{KL}(p\,\|\,q) = \sum_i p_i(\log p_i - \log q_i)` from log-probabilities (terms with
    :math:`p_i = 0` count 0)."""
    t = as_tensor(target_logp, "target_logp")
    m = as_tensor(model_logp, "model_logp", dtype=t.dtype)
    if t.shape != m.shape:
        raise ValueError(f"target_logp and model_logp must have the same shape, got {tuple(t.shape)} and {tuple(m.shape)}")
    p = t.exp()
    return torch.where(p > 0, p * (t - m), torch.zeros_like(p)).sum(-1)


# --- grid evaluation ---------------------------------------------------------------------------------------------

def _grid_axes(model: str, grid: dict) -> dict[str, list[float]]:
    if model not in GRID_MODELS:
        raise ValueError(f"model must be one of {sorted(GRID_MODELS)}, got {model!r}")
    names = GRID_MODELS[model]
    if not isinstance(grid, dict) or set(grid) != set(names):
        raise ValueError(f"grid of {model} must be a dict with exactly the keys {names}, got {grid!r}")
    axes = {}
    for name in names:
        vals = grid[name]
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of numbers, got {vals!r}")
        check = nonnegative if name == "lam" else positive
        axes[name] = [check(v, f"grid[{name!r}] entry") for v in vals]
    return axes


def _target(target_logp, s_q: torch.Tensor) -> torch.Tensor:
    t = as_tensor(target_logp, "target_logp", ndim=2, dtype=s_q.dtype)
    if t.shape != s_q.shape:
        raise ValueError(f"target_logp must have the shape of s_q {tuple(s_q.shape)}, got {tuple(t.shape)}")
    if not torch.allclose(t.logsumexp(-1), torch.zeros((), dtype=t.dtype), atol=1e-6 if t.dtype == torch.float64 else 1e-4):
        raise ValueError("target_logp must hold log-probabilities (each row's logsumexp is 0)")
    return t


def _neg_entropy(t: torch.Tensor) -> torch.Tensor:
    p = t.exp()
    return torch.where(p > 0, p * t, torch.zeros_like(p)).sum(-1)


def _sparse_gate(s_c: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparsemax gate's support as (indices, values), padded to the largest support with zero values."""
    g = gate(s_c, alpha)
    k = max(int((g > 0).sum(-1).max()), 1)
    vals, idx = g.topk(k, dim=-1)
    return idx, vals


@torch.no_grad()
def kl_grid(model: str, s_q, s_c, target_logp, grid: dict) -> tuple[dict[str, list[float]], torch.Tensor]:
    r"""Per-query :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})` at every point of ``grid``.

    ``grid`` maps each parameter of ``model`` (:data:`GRID_MODELS`) to a list of values; returns the axes and a
    tensor of shape ``(len(axis_1), ..., len(axis_k), P)`` in the order of :data:`GRID_MODELS`. ``dense``: one
    vocabulary logsumexp per (beta, lambda). ``gated``: the sparse-support identity of the module docstring, one
    gate per alpha."""
    s_q, s_c = _pair(s_q, s_c)
    axes = _grid_axes(model, grid)
    t = _target(target_logp, s_q)
    p = t.exp()
    negent = _neg_entropy(t)
    ps_q, ps_c = (p * s_q).sum(-1), (p * s_c).sum(-1)
    shape = [len(v) for v in axes.values()] + [s_q.shape[0]]
    out = torch.empty(shape, dtype=s_q.dtype)
    if model == "dense":
        for i, beta in enumerate(axes["beta"]):
            for j, lam in enumerate(axes["lam"]):
                log_z = torch.logsumexp(beta * (s_q + lam * s_c), -1)
                out[i, j] = negent - beta * (ps_q + lam * ps_c) + log_z
        return axes, out
    lse = {beta: torch.logsumexp(beta * s_q, -1) for beta in axes["beta"]}      # the gated model
    for a, alpha in enumerate(axes["alpha"]):
        idx, g = _sparse_gate(s_c, alpha)
        sq_s, p_s = s_q.gather(-1, idx), p.gather(-1, idx)
        pg = (p_s * g).sum(-1)
        for b, beta in enumerate(axes["beta"]):
            q0 = torch.exp(beta * sq_s - lse[beta][:, None])
            for c, lam in enumerate(axes["lam"]):
                log_z = lse[beta] + torch.log1p((q0 * torch.expm1(beta * lam * g)).sum(-1))
                out[a, b, c] = negent - beta * (ps_q + lam * pg) + log_z
    return axes, out


@dataclass
class GridFit:
    """The grid point with the least mean KL over the fitting rows: its parameters, that mean, and the whole
    mean-KL surface over the grid (shape of the axes)."""

    model: str
    params: dict
    kl: float
    surface: torch.Tensor
    axes: dict


def _rows(rows, n: int) -> torch.Tensor:
    return torch.arange(n) if rows is None else indices(rows, "rows", n, what="query indices")


def _best(axes: dict, per_query: torch.Tensor, rows: torch.Tensor, model: str) -> GridFit:
    surface = per_query[..., rows].mean(-1)
    flat = int(torch.argmin(surface))  # first minimum in grid order: ties go to the smaller values
    pos = torch.unravel_index(torch.tensor(flat), surface.shape)
    params = {name: axes[name][int(i)] for name, i in zip(axes, pos)}
    return GridFit(model=model, params=params, kl=float(surface.reshape(-1)[flat]), surface=surface, axes=axes)


def fit_grid(model: str, s_q, s_c, target_logp, grid: dict, rows=None) -> GridFit:
    r"""Grid fit: the parameters of ``model`` minimising the mean :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})` over
    ``rows`` (default: all queries)."""
    axes, per_query = kl_grid(model, s_q, s_c, target_logp, grid)
    return _best(axes, per_query, _rows(rows, per_query.shape[-1]), model)


# --- cross-fitting -------------------------------------------------------------------------------------------------

@dataclass
class CrossFit:
    """Held-out results of one model: per query the KL to the target, the model's argmax token and the index of
    its fold; per fold the fitted parameters (``extra``: for grid models the axes and the in-sample KL surface)."""

    model: str
    kl: torch.Tensor
    argmax: torch.Tensor
    fold: torch.Tensor
    params: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _folds(folds, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(folds, (list, tuple)) or len(folds) < 2:
        raise ValueError("folds must be a list of at least 2 (fit, evaluate) index pairs (cgar_src.analysis.steering.folds_of)")
    seen = torch.zeros(n, dtype=torch.long)
    out = []
    for fit, ev in folds:
        fit, ev = _rows(fit, n), _rows(ev, n)
        if bool(torch.isin(ev, fit).any()):
            raise ValueError("folds must not evaluate a query they were fitted on")
        seen[ev] += 1
        out.append((fit, ev))
    if not bool((seen == 1).all()):
        raise ValueError("folds must evaluate every query exactly once")
    return out


@torch.no_grad()
def cross_fit(model: str, s_q, s_c, target_logp, folds, grid: dict | None = None) -> CrossFit:
    r"""Cross-fitted evaluation of ``model`` (one of :data:`MODELS`): parameters chosen on each fold's fitting rows
    (least mean KL on the grid; ``prior``: the mean of :math:`p_{ICL}` over them; ``zero_shot``: none) and scored on
    its evaluation rows. The fixed point has its own, cheaper protocol: :func:`cross_fit_fixed_point`."""
    s_q, s_c = _pair(s_q, s_c)
    t = _target(target_logp, s_q)
    n = s_q.shape[0]
    folds = _folds(folds, n)
    if model not in ("zero_shot", "dense", "gated", "prior"):
        raise ValueError(f"model must be one of zero_shot, dense, gated, prior (fixed_point: cross_fit_fixed_point), "
                         f"got {model!r}")
    kl_out = torch.empty(n, dtype=s_q.dtype)
    arg = torch.empty(n, dtype=torch.long)
    fold_of = torch.empty(n, dtype=torch.long)
    res = CrossFit(model=model, kl=kl_out, argmax=arg, fold=fold_of)
    if model in GRID_MODELS:
        axes, per_query = kl_grid(model, s_q, s_c, t, grid)
        res.extra.update(axes=axes, surface=per_query.mean(-1))   # in-sample mean KL over all queries (descriptive)
    elif grid is not None:
        raise ValueError(f"model {model!r} takes no grid")
    for f, (fit, ev) in enumerate(folds):
        fold_of[ev] = f
        if model == "zero_shot":
            lp = log_probs_zero_shot(s_q[ev])
            res.params.append({})
        elif model == "prior":
            prior = torch.logsumexp(t[fit], 0) - math.log(fit.numel())
            lp = prior.expand(ev.numel(), -1)
            res.params.append({"argmax": int(prior.argmax())})
        else:
            best = _best(axes, per_query, fit, model)
            res.params.append(best.params)
            lp = log_probs(model, s_q[ev], s_c[ev], best.params)
        kl_out[ev] = kl(t[ev], lp)
        arg[ev] = lp.argmax(-1)
    return res


@torch.no_grad()
def cross_fit_fixed_point(s_q, s_c, target_logp, folds, gated: CrossFit, lambda_fractions: list[float], *,
                          tol: float = 1e-9, max_iter: int = 500) -> CrossFit:
    r"""Cross-fitted fixed point (model d): on each fold, alpha and beta of the gated model's fit on that fold
    (``gated``, from :func:`cross_fit`) and lambda chosen among ``lambda_fractions`` times the gated model's lambda by
    the mean KL over the fitting rows (the fraction 1 is the first-order fit itself); then
    :math:`p^* = \Phi(p^*)` on the evaluation rows. ``extra`` holds per query whether the solver converged and its
    iterations, and per fold the contraction bound :math:`\beta\lambda^2/(2\alpha)`."""
    s_q, s_c = _pair(s_q, s_c)
    t = _target(target_logp, s_q)
    n = s_q.shape[0]
    folds = _folds(folds, n)
    if not isinstance(gated, CrossFit) or gated.model != "gated" or len(gated.params) != len(folds):
        raise ValueError("gated must be the gated model's CrossFit on the same folds")
    if (not isinstance(lambda_fractions, (list, tuple)) or not lambda_fractions
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in lambda_fractions)):
        raise ValueError(f"lambda_fractions must be a non-empty list of numbers in (0, 1], got {lambda_fractions!r}")
    res = CrossFit(model="fixed_point", kl=torch.empty(n, dtype=s_q.dtype), argmax=torch.empty(n, dtype=torch.long),
                   fold=torch.empty(n, dtype=torch.long))
    res.extra.update(converged=torch.zeros(n, dtype=torch.bool), iterations=torch.zeros(n, dtype=torch.long),
                     bound=[], fit_kl=[])
    solved: dict[tuple, tuple] = {}   # every query's fixed point is its own: solve all queries once per setting

    def solve(alpha: float, beta: float, lam: float) -> tuple:
        if (alpha, beta, lam) not in solved:
            lp, fp = log_probs_fixed_point(s_q, s_c, alpha, beta, lam, tol=tol, max_iter=max_iter)
            solved[alpha, beta, lam] = kl(t, lp), lp.argmax(-1), fp
        return solved[alpha, beta, lam]

    for f, (fit, ev) in enumerate(folds):
        base = gated.params[f]
        lams = sorted({base["lam"] * fr for fr in lambda_fractions})
        fit_kl = [float(solve(base["alpha"], base["beta"], lam)[0][fit].mean()) for lam in lams]
        lam = lams[min(range(len(lams)), key=fit_kl.__getitem__)]
        params = {"alpha": base["alpha"], "beta": base["beta"], "lam": lam}
        kl_all, arg_all, fp = solve(**params)
        res.fold[ev] = f
        res.kl[ev] = kl_all[ev]
        res.argmax[ev] = arg_all[ev]
        res.extra["converged"][ev] = fp.converged[ev]
        res.extra["iterations"][ev] = fp.iterations[ev]
        res.extra["bound"].append(fp.bound)
        res.extra["fit_kl"].append(dict(zip(lams, fit_kl)))
        res.params.append(params)
    return res


def support_sizes(s_c, alphas) -> torch.Tensor:
    r"""Support size of :math:`G_\alpha(s_c)` for every alpha, in closed form from one sort per row (chapter
    ``04_phase_transition``): :math:`k(\alpha) = \#\{j : \alpha + j\,s_{c,(j)} > \sum_{i\le j} s_{c,(i)}\}`.
    ``s_c``: ``(P, N)``; returns ``(len(alphas), P)``."""
    s_c = as_tensor(s_c, "s_c", ndim=2)
    if not isinstance(alphas, (list, tuple)) or not alphas:
        raise ValueError(f"alphas must be a non-empty list of numbers > 0, got {alphas!r}")
    alphas = [positive(a, "alphas entry") for a in alphas]
    zs = s_c.sort(-1, descending=True).values
    excess = zs.cumsum(-1) - torch.arange(1, s_c.shape[1] + 1, dtype=s_c.dtype) * zs   # >= 0, non-decreasing in j
    return torch.stack([(excess < a).sum(-1) for a in alphas])


def dense_limit_alpha(s_c) -> torch.Tensor:
    r"""Per row, :math:`\alpha_{dense} = \sum_i (s_{c,i} - \min_j s_{c,j})`: for :math:`\alpha \ge \alpha_{dense}` the
    sparsemax gate has full support and :math:`G_\alpha(s_c) = 1/N + (s_c - \bar s_c)/\alpha`, so the gated model
    equals the dense model with coupling :math:`\lambda/\alpha` (chapter ``12_gate_in_transformer``)."""
    s_c = as_tensor(s_c, "s_c")
    return (s_c - s_c.amin(-1, keepdim=True)).sum(-1)


# --- the theory's quantities on a fitted gate ---------------------------------------------------------------------

@dataclass
class GateStats:
    """Per query: the gate's support size, whether it is one-hot, its alpha_crit = s_c(1) - s_c(2), and
    Delta_gate = g_mu - max_{j != mu} g_j on the target token mu."""

    support: torch.Tensor
    one_hot: torch.Tensor
    alpha_crit: torch.Tensor
    delta_gate: torch.Tensor


def gate_stats(s_c, alpha: float, target) -> GateStats:
    r"""The theory's quantities of the gate :math:`G_\alpha(s_c)` for a batch ``(P, N)``: sparsity
    :math:`|\mathrm{supp}\,G_\alpha(s_c)|`, one-hotness (iff :math:`\alpha \le \alpha_{crit}`, Theorem ``thm-phase``,
    chapter ``04_phase_transition``), :math:`\alpha_{crit}` and :math:`\Delta_{gate}` on the target token
    (Theorem ``thm-separation``, chapter ``03_separation``). ``target``: ``(P,)`` token indices."""
    s_c = as_tensor(s_c, "s_c", ndim=2)
    alpha = positive(alpha, "alpha")
    target = indices(target, "target", s_c.shape[1], shape=s_c.shape[:1], what="token indices")
    g = gate(s_c, alpha)
    support = (g > 0).sum(-1)
    sep = dynamics.effective_separation(s_c, g, target, 0.0)
    return GateStats(support=support, one_hot=support == 1, alpha_crit=alpha_crit(s_c), delta_gate=sep.gate)


@dataclass
class MultiStart:
    """Fixed points of :math:`\\Phi` from several starts: per query the number of distinct fixed points among the
    converged runs and how many starts converged; per start the fixed points' argmax tokens; the contraction bound
    and the number of screened columns the solver iterated on."""

    n_distinct: torch.Tensor
    n_converged: torch.Tensor
    argmax: dict
    bound: float
    columns: int


@torch.no_grad()
def multistart_fixed_points(s_q, s_c, alpha: float, beta: float, lam: float, starts: dict, *, tol: float = 1e-9,
                            max_iter: int = 500, distinct_tol: float = 1e-5) -> MultiStart:
    r"""Solve :math:`p = \Phi(p)` from every start in ``starts`` (name -> ``(P, N)`` or ``(N,)`` points of the
    simplex; ``None`` = the first-order start) and count the distinct fixed points per query (two converged
    solutions are the same when their :math:`\ell_1` distance is below ``distinct_tol``).

    Each start is solved by :func:`cgar_src.theory.dynamics.fixed_point` with ``screen=True``: the iteration runs on
    the columns that can carry gate mass plus one for the rest of the vocabulary (:math:`\Phi(p)` depends on p only
    through the screened columns, chapter ``03_separation``), so a start costs a few columns per step, not the
    vocabulary; the solver returns the full fixed point."""
    s_q, s_c = _pair(s_q, s_c)
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    if not isinstance(starts, dict) or not starts:
        raise ValueError("starts must be a non-empty dict of name -> start distribution (or None)")
    P, N = s_q.shape
    for name, p0 in starts.items():
        if p0 is None:
            continue
        p0 = as_tensor(p0, f"starts[{name!r}]", dtype=s_q.dtype)
        if p0.shape not in ((N,), (P, N)) or bool((p0 < 0).any()) or not torch.allclose(
                p0.sum(-1), torch.ones((), dtype=p0.dtype), atol=1e-6):
            raise ValueError(f"starts[{name!r}] must be a distribution over the {N} columns, shape ({N},) or ({P}, {N})")
    sols, conv, argmax = [], [], {}
    for name, p0 in starts.items():
        fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=tol, max_iter=max_iter, p0=p0, screen=True)
        sols.append(fp.p)
        conv.append(fp.converged)
        argmax[name] = fp.p.argmax(-1)
    conv = torch.stack(conv)                                  # (S, P)
    n_distinct = torch.zeros(P, dtype=torch.long)
    for i in range(P):
        reps: list[torch.Tensor] = []
        for s in range(len(sols)):
            if conv[s, i] and all(float((sols[s][i] - r).abs().sum()) > distinct_tol for r in reps):
                reps.append(sols[s][i])
        n_distinct[i] = len(reps)
    return MultiStart(n_distinct=n_distinct, n_converged=conv.sum(0), argmax=argmax,
                      bound=dynamics.contraction_bound(alpha, beta, lam), columns=fp.columns)
