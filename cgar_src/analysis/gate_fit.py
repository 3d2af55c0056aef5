r"""Fitting the theory's two-stage model to a language model's own states (book: ``chapters/12_gate_in_transformer``).

Per query two score vectors over the whole vocabulary, both logit-lens scores :math:`W_U\,\mathrm{Norm}(h)`:
:math:`s_q` (query evidence: the zero-shot prompt) and :math:`s_c` (context evidence: the content-free prompt of the
query's demonstration set, the set's demonstrations followed by the input "N/A", which does not contain the query;
one prompt per set, so :math:`s_c` is the same for every query of a set). The target is the model's actual in-context
distribution :math:`p_{ICL}` (its k-shot output). The competing models, all pure functions returning
log-probabilities over the vocabulary (batched over queries, the vocabulary on the last axis):

* ``zero_shot``: :math:`\mathrm{softmax}(s_q)` (no parameter);
* ``dense``: :math:`\mathrm{softmax}(\beta(s_q + \lambda s_c))`, the first-order additive score, a dense signed bias;
* ``gated``: :math:`\mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))` with the sparsemax gate
  :math:`G_\alpha(u) = \mathrm{sparsemax}(u/\alpha)` (the first-order two-stage model, chapter ``02_two_stage``);
* ``fixed_point``: :math:`p^* = \Phi(p^*)`, :math:`\Phi(p) = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c + \lambda p)))`
  (chapter ``05_fixed_point``), solved by :func:`cgar_src.theory.dynamics.fixed_point` from the first-order start
  on its own grid (:func:`fixed_point_grid`), fitted once inside the contraction region and once outside it
  (:func:`cross_fit_fixed_point_grid`);
* ``prior``: one distribution for every query, the mean of :math:`p_{ICL}` over the fitting queries (the label
  prior as the in-context model expresses it).

Parameters are chosen on a grid by the mean :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})` over the fitting queries and
scored on held-out queries (:func:`cross_fit`). For the gated model the grid is evaluated without a vocabulary-sized
softmax per grid point where the gate is sparse (support S):

.. math:: \log Z = \log\Big(\sum_{i\notin S} e^{\beta s_{q,i}} + \sum_{i\in S} e^{\beta(s_{q,i} + \lambda g_i)}\Big),

the first sum once per (alpha, beta), the whole a log-sum-exp (no overflow however large
:math:`\beta\lambda g_i`), and :math:`\mathrm{KL} = \sum_i p_i\log p_i - \beta\,p\cdot s_q - \beta\lambda\,p_S\cdot g_S +
\log Z`; the gate is computed once per alpha, in float64, and reused for every (beta, lambda). The gated grid may
give the coupling per unit penalisation :math:`\kappa = \lambda/\alpha` instead of :math:`\lambda` (key ``kappa``):
in the dense limit (:func:`dense_limit_alpha`) the gated model at :math:`(\alpha, \beta, \kappa\alpha)` is the
dense model at :math:`(\beta, \kappa)`, so a grid over kappa reaches that limit at every large alpha.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .._validate import as_tensor, indices, nonnegative, positive
from ..theory import dynamics
from ..theory.gain import screen_columns
from ..theory.gate import alpha_crit, gate
from ..threads import torch_threads

__all__ = ["MODELS", "GRID_MODELS", "log_probs", "log_probs_zero_shot", "log_probs_dense", "log_probs_gated",
           "log_probs_fixed_point", "kl", "kl_grid", "kl_grid_axes", "KAPPA_AXES", "GridFit", "fit_grid", "CrossFit", "cross_fit", "dense_limit_alpha",
           "support_sizes", "SELECT_RTOL", "SELECT_ATOL", "argmin_tied",
           "FixedPointGrid", "fixed_point_grid", "cross_fit_fixed_point_grid", "REGIONS",
           "GateStats", "gate_stats", "MultiStart", "multistart_fixed_points", "single_thread"]

#: the models of the ICL distribution that :func:`cross_fit` evaluates
MODELS = ("zero_shot", "dense", "gated", "prior")
#: relative tolerance of every grid fit's choice: grid points whose mean KL over the fitting queries is within
#: ``SELECT_RTOL`` of the least are tied, and the first of them in grid order is taken (the smallest alpha, then beta,
#: then lambda or kappa). Points that the theory makes equal (the gate past its dense limit and the dense bias, or
#: every alpha past the full support) differ only by round-off, and the mean KL of one point moves by about 1e-6
#: relative between machines (float32 states from other kernels, ``tests/test_gate_fit.py``): without the tolerance
#: such a tie would be broken by the last digits of the states, and the fitted alpha would change with the machine.
SELECT_RTOL = 1e-4
SELECT_ATOL = 1e-9    #: and within this many nats (a target the model reproduces exactly has a least KL of ~1e-16)

#: the parameters of each model fitted on a grid, in grid-axis order
GRID_MODELS = {"dense": ("beta", "lam"), "gated": ("alpha", "beta", "lam")}   # the fixed point: fixed_point_grid


@contextmanager
def single_thread() -> Iterator[None]:
    """Run a block with one intra-op thread, then restore the setting: ``cgar_src.threads.torch_threads(1)``,
    kept under this name for its callers. The fixed-point solves iterate on reduced problems of a few hundred
    columns, where torch's thread pool costs more than it saves: on 2 shared cores the row reductions inside
    ``sparsemax`` ran 5-20 times slower with 2 threads than with 1, and chapter 12's whole evaluation of one setting
    2-4 times slower (measured)."""
    with torch_threads(1):
        yield


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

#: the gated model's grid may give kappa = lambda / alpha in place of lambda (module docstring)
KAPPA_AXES = ("alpha", "beta", "kappa")


def _check_grid(grid, names: tuple[str, ...], what: str, *, alt: str = "",
                nonnegative_axes: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """The axes of ``grid``, which must be a dict with exactly the keys ``names`` (``what`` and ``alt`` name the model
    and any other accepted key set in the message), each a non-empty list of positive numbers (non-negative on
    ``nonnegative_axes``); a ``ValueError`` naming the bad key or entry otherwise. Shared by the grid models
    (:func:`kl_grid_axes`) and the fixed point (:func:`fixed_point_grid`)."""
    if not isinstance(grid, dict) or set(grid) != set(names):
        raise ValueError(f"grid of {what} must be a dict with exactly the keys {names}{alt}, got {grid!r}")
    axes = {}
    for name in names:
        vals = grid[name]
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of numbers, got {vals!r}")
        check = nonnegative if name in nonnegative_axes else positive
        axes[name] = [check(v, f"grid[{name!r}] entry") for v in vals]
    return axes


def _grid_axes(model: str, grid: dict) -> dict[str, list[float]]:
    if model not in GRID_MODELS:
        raise ValueError(f"model must be one of {sorted(GRID_MODELS)}, got {model!r}")
    names = GRID_MODELS[model]
    if model == "gated" and isinstance(grid, dict) and set(grid) == set(KAPPA_AXES):
        names = KAPPA_AXES
    alt = f" (or {KAPPA_AXES})" if model == "gated" else ""
    return _check_grid(grid, names, model, alt=alt, nonnegative_axes=("lam", "kappa"))


def kl_grid_axes(model: str, grid: dict) -> dict[str, list[float]]:
    """The axes of ``grid`` for ``model`` as :func:`kl_grid` reads them; a ``ValueError`` naming the bad key or
    entry, before any work."""
    return _grid_axes(model, grid)


def _lams(axes: dict, alpha: float) -> list[float]:
    """The gated grid's couplings lambda at ``alpha``: the ``lam`` axis, or ``kappa * alpha``."""
    return axes["lam"] if "lam" in axes else [k * alpha for k in axes["kappa"]]


def _params(model: str, axes: dict, pos) -> dict:
    """A grid point's parameters as the models take them (a kappa axis becomes ``lam = kappa * alpha``)."""
    params = {name: axes[name][int(i)] for name, i in zip(axes, pos)}
    if "kappa" in params:
        params["lam"] = params.pop("kappa") * params["alpha"]
    return params


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
    if "kappa" in axes:
        out.copy_(_kl_grid_kappa(s_q.double(), s_c.double(), p.double(), negent.double(), ps_q.double(), axes,
                                 work=s_q.dtype))
        return axes, out
    s_c64 = s_c.double()                                                       # the gated model, lambda axis
    for a, alpha in enumerate(axes["alpha"]):
        idx, g = _sparse_gate(s_c64, alpha)
        g = g.to(s_q.dtype)
        sq_s, p_s = s_q.gather(-1, idx), p.gather(-1, idx)
        pg = (p_s * g).sum(-1)
        for b, beta in enumerate(axes["beta"]):
            rest = torch.logsumexp((beta * s_q).scatter(-1, idx, float("-inf")), -1, keepdim=True)   # i not in S
            base = beta * sq_s
            for c, lam in enumerate(_lams(axes, alpha)):
                log_z = torch.logsumexp(torch.cat([rest, base + (beta * lam) * g], -1), -1)
                out[a, b, c] = negent - beta * (ps_q + lam * pg) + log_z
    return axes, out


def _kl_grid_kappa(s_q: torch.Tensor, s_c: torch.Tensor, p: torch.Tensor, negent: torch.Tensor, ps_q: torch.Tensor,
                   axes: dict, work: torch.dtype = torch.float64) -> torch.Tensor:
    r"""The gated model's KL on an (alpha, beta, kappa) grid, float64, in one pass over the vocabulary per
    (beta, kappa). With the columns sorted by :math:`s_c` (descending, centred so that the largest is 0), the gate's
    support at alpha is the first :math:`k_\alpha` of them and :math:`g_i = (s_{c,i} - t_\alpha)/\alpha` there, with
    :math:`k_\alpha = \#\{j : \sum_{i\le j}(s_{c,(i)} - s_{c,(j)}) < \alpha\}` and
    :math:`t_\alpha = (\sum_{i\le k_\alpha} s_{c,(i)} - \alpha)/k_\alpha` (chapter ``04_phase_transition``). With
    :math:`\lambda = \kappa\alpha`, :math:`\beta\lambda g_i = \beta\kappa(s_{c,i} - t_\alpha)`, so

    .. math:: Z = \sum_{i > k_\alpha} e^{\beta s_{q,(i)}} + e^{-\beta\kappa t_\alpha}
       \sum_{i \le k_\alpha} e^{\beta s_{q,(i)} + \beta\kappa s_{c,(i)}},
       \qquad \lambda\,p_S\cdot g_S = \kappa\Big(\sum_{i\le k_\alpha} p_{(i)} s_{c,(i)} - t_\alpha \sum_{i\le k_\alpha} p_{(i)}\Big):

    prefix sums of one vector per (beta, kappa) give every alpha (ties at the support's edge have :math:`g = 0` and
    count the same in either sum). The vocabulary-wide exponentials run in ``work`` (float32 for float32 scores, their
    sums accumulated in float64 by torch's cumsum), everything per (query, alpha) in float64."""
    P, N = s_q.shape
    order = s_c.argsort(-1, descending=True)
    zs = s_c.gather(-1, order)
    zs = zs - zs[:, :1]
    sq, ps = s_q.gather(-1, order), p.gather(-1, order)
    csum = zs.cumsum(-1)
    excess = csum - torch.arange(1, N + 1, dtype=zs.dtype) * zs                # >= 0, non-decreasing
    alphas = torch.tensor(axes["alpha"], dtype=zs.dtype)
    k = (excess[None] < alphas[:, None, None]).sum(-1)                          # (A, P), >= 1
    last = (k - 1).T                                                            # (P, A) index of the last in S
    t = ((csum.gather(-1, last) - alphas) / k.T)                                # (P, A) threshold, s_c units
    p_in, psc_in = ps.cumsum(-1).gather(-1, last), (ps * zs).cumsum(-1).gather(-1, last)
    out = torch.empty(len(axes["alpha"]), len(axes["beta"]), len(axes["kappa"]), P, dtype=zs.dtype)
    zs32, sq32 = zs.to(work), sq.to(work)
    for b, beta in enumerate(axes["beta"]):
        bsq = beta * sq32
        m_rest = bsq.amax(-1, keepdim=True)
        tail = (bsq - m_rest).exp_().flip(-1).cumsum(-1).flip(-1)               # sum_{i >= j}, j = 0..N-1
        tail = torch.cat([tail, torch.zeros(P, 1, dtype=tail.dtype)], -1)
        log_rest = tail.gather(-1, k.T).double().log() + m_rest.double()        # (P, A); -inf when S is everything
        for c, kappa in enumerate(axes["kappa"]):
            w = torch.add(bsq, zs32, alpha=beta * kappa)
            m = w.amax(-1, keepdim=True)
            log_in = (w.sub_(m).exp_().cumsum(-1).gather(-1, last).double().log() + m.double()
                      - (beta * kappa) * t)
            log_z = torch.logaddexp(log_rest, log_in)
            out[:, b, c] = (negent[:, None] - beta * ps_q[:, None] - beta * kappa * (psc_in - t * p_in) + log_z).T
    return out


@dataclass
class GridFit:
    """The grid point with the least mean KL over the fitting rows: its parameters, that mean, and the whole
    mean-KL surface over the grid (shape of the axes)."""

    model: str
    params: dict
    kl: float
    surface: torch.Tensor
    axes: dict
    index: tuple = ()     # the point's position on each axis


def _rows(rows, n: int) -> torch.Tensor:
    return torch.arange(n) if rows is None else indices(rows, "rows", n, what="query indices")


def argmin_tied(surface: torch.Tensor) -> int:
    """Flat index of the first grid point (in grid order) whose value is within :data:`SELECT_RTOL` (relative) or
    :data:`SELECT_ATOL` (absolute) of the least; ``inf`` marks points that may not be chosen."""
    s = surface.reshape(-1).double()
    best = float(s.min())
    if not math.isfinite(best):
        raise ValueError("surface has no finite point to choose")
    return int(torch.nonzero(s <= best + SELECT_RTOL * abs(best) + SELECT_ATOL).min())


def _best(axes: dict, per_query: torch.Tensor, rows: torch.Tensor, model: str) -> GridFit:
    surface = per_query[..., rows].mean(-1)
    flat = argmin_tied(surface)  # ties (within SELECT_RTOL) go to the first point in grid order: the smaller values
    pos = torch.unravel_index(torch.tensor(flat), surface.shape)
    params = _params(model, axes, pos)
    return GridFit(model=model, params=params, kl=float(surface.reshape(-1)[flat]), surface=surface, axes=axes,
                   index=tuple(int(i) for i in pos))


def fit_grid(model: str, s_q, s_c, target_logp, grid: dict, rows=None) -> GridFit:
    r"""Grid fit: the parameters of ``model`` minimising the mean :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})` over
    ``rows`` (default: all queries)."""
    axes, per_query = kl_grid(model, s_q, s_c, target_logp, grid)
    return _best(axes, per_query, _rows(rows, per_query.shape[-1]), model)


# --- cross-fitting -------------------------------------------------------------------------------------------------

@dataclass
class CrossFit:
    """Held-out results of one model: per query the KL to the target, the model's argmax token and the index of
    its fold; per fold the fitted parameters (``extra``: for grid models the axes, the in-sample KL surface and per
    fold the fitted point's position on each axis, ``index``)."""

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
def cross_fit(model: str, s_q, s_c, target_logp, folds, grid: dict | None = None, *,
              grid_dtype: torch.dtype | None = None) -> CrossFit:
    r"""Cross-fitted evaluation of ``model`` (one of :data:`MODELS`): parameters chosen on each fold's fitting rows
    (least mean KL on the grid; ``prior``: the mean of :math:`p_{ICL}` over them; ``zero_shot``: none) and scored on
    its evaluation rows. The fixed point has its own grid: :func:`cross_fit_fixed_point_grid`. ``grid_dtype``: the
    grid runs on the scores cast to it (float32: fast, its KL differences far above float32's round-off), the
    held-out scores in the scores' own dtype (float64 scores: two models that agree to round-off, such as the gate
    past its dense limit and the dense bias, differ by ~1e-12 nats, not float32's ~1e-6)."""
    s_q, s_c = _pair(s_q, s_c)
    t = _target(target_logp, s_q)
    n = s_q.shape[0]
    folds = _folds(folds, n)
    if model not in ("zero_shot", "dense", "gated", "prior"):
        raise ValueError(f"model must be one of zero_shot, dense, gated, prior (fixed_point: "
                         f"cross_fit_fixed_point_grid), got {model!r}")
    kl_out = torch.empty(n, dtype=s_q.dtype)
    arg = torch.empty(n, dtype=torch.long)
    fold_of = torch.empty(n, dtype=torch.long)
    res = CrossFit(model=model, kl=kl_out, argmax=arg, fold=fold_of)
    if model in GRID_MODELS:
        cast = (lambda x: x) if grid_dtype is None else (lambda x: x.to(grid_dtype))
        axes, per_query = kl_grid(model, cast(s_q), cast(s_c), cast(t), grid)
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
            res.extra.setdefault("index", []).append(best.index)
            lp = log_probs(model, s_q[ev], s_c[ev], best.params)
        kl_out[ev] = kl(t[ev], lp)
        arg[ev] = lp.argmax(-1)
    return res


#: the two halves of the fixed point's grid: contraction bound below 1 (unique fixed point) and at least 1
REGIONS = ("inside", "outside")


@dataclass
class FixedPointGrid:
    """The fixed point (model d) at every point of its own grid: per point and query the KL to the target, the
    argmax token and whether the solver converged; per point the contraction bound; the reduced width."""

    axes: dict
    kl: torch.Tensor          # (A, B, C, P)
    argmax: torch.Tensor      # (A, B, C, P)
    converged: torch.Tensor   # (A, B, C, P)
    bound: torch.Tensor       # (A, B, C)
    columns: int


def _reduce(s_q: torch.Tensor, s_c: torch.Tensor, beta: float, margin: float):
    r"""The exact reduced problem for one beta (:func:`cgar_src.theory.gain.screen_columns`): the K columns whose s_c
    exceeds max s_c - ``margin`` (all that can ever carry gate mass for alpha + lambda <= margin,
    :func:`cgar_src.theory.dynamics.support_screen`) and one column standing for the rest: its s_q is
    :math:`\log\sum_{rest} e^{\beta s_{q,j}}/\beta` and its s_c lies so far below that it never enters the gate's
    support. Returns the screened columns, the reduced ``(P, K+1)`` scores, and the largest :math:`\beta s_q` among
    the other columns with its column (the argmax off the screened columns)."""
    sc = screen_columns(s_q, s_c, beta, margin)
    sq_r = torch.cat([s_q.gather(-1, sc.idx), sc.rest_q[:, None]], -1)
    sc_r = torch.cat([s_c.gather(-1, sc.idx), sc.rest_c[:, None]], -1)
    return sc.idx, sq_r, sc_r, sc.rest.amax(-1), sc.rest.argmax(-1)


@torch.no_grad()
def fixed_point_grid(s_q, s_c, target_logp, grid: dict, *, tol: float = 1e-9, max_iter: int = 300,
                     damping: float = 1.0) -> FixedPointGrid:
    r"""Model (d) at every point of its own ``grid`` (keys ``alpha``, ``beta``, ``lam``), each query's fixed point
    the one reached from the first-order start :math:`\Phi(0)` by the iteration
    :math:`p \leftarrow (1-\omega)p + \omega\Phi(p)` (``damping`` = :math:`\omega`, default 1: the plain iteration
    :math:`p \leftarrow \Phi(p)`; :func:`cgar_src.theory.dynamics.fixed_point`), stopped at ``tol`` or ``max_iter``
    (``converged`` says which; a query that has not converged is scored at its last iterate). Below the contraction
    bound :math:`\beta\lambda^2/(2\alpha) < 1` it is the unique fixed point (Theorem ``thm-fixed-point``, chapter
    ``05_fixed_point``); above it, where several may exist, it is the one the iteration reaches from the first-order
    start. Each beta's problem is first reduced exactly (``_reduce``: the columns that can carry gate mass for
    the grid's largest alpha + lambda, plus one for the rest), each point's iteration screens again to its own
    alpha + lambda, and the KL is the sparse identity of the module docstring at the returned gate:
    :math:`\mathrm{KL} = \sum_i p_i\log p_i - \beta\,p\cdot s_q - \beta\lambda\,p_C\cdot g_C + \log Z`."""
    s_q, s_c = _pair(s_q, s_c)
    t = _target(target_logp, s_q)
    axes = _check_grid(grid, ("alpha", "beta", "lam"), "the fixed point")
    positive(damping, "damping")
    p = t.exp()
    negent, ps_q = _neg_entropy(t), (p * s_q).sum(-1)
    shape = (len(axes["alpha"]), len(axes["beta"]), len(axes["lam"]), s_q.shape[0])
    kl_out, arg = torch.empty(shape, dtype=s_q.dtype), torch.empty(shape, dtype=torch.long)
    conv, bound = torch.empty(shape, dtype=torch.bool), torch.empty(shape[:3], dtype=torch.float64)
    margin = max(axes["alpha"]) + max(axes["lam"])
    with single_thread():
        columns = _solve_grid(s_q, s_c, p, negent, ps_q, axes, margin, kl_out, arg, conv, bound, tol=tol,
                              max_iter=max_iter, damping=damping)
    return FixedPointGrid(axes=axes, kl=kl_out, argmax=arg, converged=conv, bound=bound, columns=columns)


def _solve_grid(s_q, s_c, p, negent, ps_q, axes, margin, kl_out, arg, conv, bound, *, tol, max_iter, damping) -> int:
    """:func:`fixed_point_grid`'s loop: fills ``kl_out``, ``arg``, ``conv``, ``bound``; returns the reduced width."""
    columns = 0
    for b, beta in enumerate(axes["beta"]):
        idx, sq_r, sc_r, rest_max, rest_arg = _reduce(s_q, s_c, beta, margin)
        columns = max(columns, idx.shape[-1])
        p_c = p.gather(-1, idx)
        for a, alpha in enumerate(axes["alpha"]):
            for c, lam in enumerate(axes["lam"]):
                fp = dynamics.fixed_point(sq_r, sc_r, alpha, beta, lam, tol=tol, max_iter=max_iter, damping=damping,
                                          screen=True)
                logits = beta * (sq_r + lam * fp.g)
                log_z = torch.logsumexp(logits, -1)
                kl_out[a, b, c] = negent - beta * ps_q - beta * lam * (p_c * fp.g[:, :-1]).sum(-1) + log_z
                best = logits[:, :-1].max(-1)
                arg[a, b, c] = torch.where(best.values >= rest_max, idx.gather(-1, best.indices[:, None])[:, 0],
                                           rest_arg)
                conv[a, b, c] = fp.converged
                bound[a, b, c] = fp.bound
    return columns


@torch.no_grad()
def cross_fit_fixed_point_grid(s_q, s_c, target_logp, folds, grid: dict, *, tol: float = 1e-9, max_iter: int = 300,
                               damping: float = 1.0) -> dict[str, CrossFit]:
    r"""Cross-fitted fixed point on its own grid (:func:`fixed_point_grid`), once per region of :data:`REGIONS`:
    on each fold the grid point of least mean KL over the fitting rows among those with contraction bound
    :math:`\beta\lambda^2/(2\alpha) < 1` (``"inside"``: the fixed point is unique) or :math:`\ge 1` (``"outside"``:
    the one reached from the first-order start), scored on the evaluation rows. ``extra``: per query whether the
    solver converged; per fold the bound; the axes, and the in-sample mean-KL surface (``inf`` off the region)."""
    s_q, s_c = _pair(s_q, s_c)
    n = s_q.shape[0]
    folds = _folds(folds, n)
    fg = fixed_point_grid(s_q, s_c, target_logp, grid, tol=tol, max_iter=max_iter, damping=damping)
    out = {}
    for region in REGIONS:
        allowed = fg.bound < 1 if region == "inside" else fg.bound >= 1
        if not bool(allowed.any()):
            raise ValueError(f"grid of the fixed point has no point {region} the contraction region (bound "
                             f"{'< 1' if region == 'inside' else '>= 1'}); widen grid['lam'] or grid['alpha']")
        res = CrossFit(model="fixed_point", kl=torch.empty(n, dtype=s_q.dtype), argmax=torch.empty(n, dtype=torch.long),
                       fold=torch.empty(n, dtype=torch.long))
        res.extra.update(converged=torch.zeros(n, dtype=torch.bool), bound=[], region=region, axes=fg.axes,
                         surface=torch.where(allowed, fg.kl.mean(-1), torch.full_like(fg.bound, float("inf"))),
                         columns=fg.columns)
        for f, (fit, ev) in enumerate(folds):
            surface = torch.where(allowed, fg.kl[..., fit].mean(-1), torch.full_like(fg.bound, float("inf")))
            flat = argmin_tied(surface)
            a, b, c = (int(i) for i in torch.unravel_index(torch.tensor(flat), surface.shape))
            res.params.append({"alpha": fg.axes["alpha"][a], "beta": fg.axes["beta"][b], "lam": fg.axes["lam"][c]})
            res.extra.setdefault("index", []).append((a, b, c))
            res.fold[ev] = f
            res.kl[ev] = fg.kl[a, b, c, ev]
            res.argmax[ev] = fg.argmax[a, b, c, ev]
            res.extra["converged"][ev] = fg.converged[a, b, c, ev]
            res.extra["bound"].append(float(fg.bound[a, b, c]))
        out[region] = res
    return out


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

    The problem is first reduced exactly (``_reduce`` with margin alpha + lambda): :math:`\Phi(p)` depends on p
    only through the K columns that can carry gate mass (chapter ``03_separation``), and off them every fixed point
    has the form :math:`p_j \propto e^{\beta s_{q,j}}`, so a fixed point is its K entries plus the mass of the rest,
    one column. A start enters through its K entries and its remaining mass; the :math:`\ell_1` distance of two
    fixed points is the same on the reduced and on the full vocabulary; each start then costs K + 1 columns per
    step (:func:`cgar_src.theory.dynamics.fixed_point` on the reduced problem)."""
    s_q, s_c = _pair(s_q, s_c)
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    if not isinstance(starts, dict) or not starts:
        raise ValueError("starts must be a non-empty dict of name -> start distribution (or None)")
    P, N = s_q.shape
    checked = {}
    for name, p0 in starts.items():
        if p0 is None:
            checked[name] = None
            continue
        p0 = as_tensor(p0, f"starts[{name!r}]", dtype=s_q.dtype)
        if p0.shape not in ((N,), (P, N)) or bool((p0 < 0).any()) or not torch.allclose(
                p0.sum(-1), torch.ones((), dtype=p0.dtype), atol=1e-6):
            raise ValueError(f"starts[{name!r}] must be a distribution over the {N} columns, shape ({N},) or ({P}, {N})")
        checked[name] = p0.expand(P, N)
    idx, sq_r, sc_r, rest_max, rest_arg = _reduce(s_q, s_c, beta, alpha + lam)
    with single_thread():
        sols, conv, argmax = _multistart(checked, idx, sq_r, sc_r, rest_max, rest_arg, alpha, beta, lam, tol=tol,
                                         max_iter=max_iter)
    conv = torch.stack(conv)                                  # (S, P)
    n_distinct = torch.zeros(P, dtype=torch.long)
    for i in range(P):
        reps: list[torch.Tensor] = []
        for s in range(len(sols)):
            if conv[s, i] and all(float((sols[s][i] - r).abs().sum()) > distinct_tol for r in reps):
                reps.append(sols[s][i])
        n_distinct[i] = len(reps)
    return MultiStart(n_distinct=n_distinct, n_converged=conv.sum(0), argmax=argmax,
                      bound=dynamics.contraction_bound(alpha, beta, lam), columns=idx.shape[-1])


def _multistart(starts: dict, idx, sq_r, sc_r, rest_max, rest_arg, alpha: float, beta: float, lam: float, *,
                tol: float, max_iter: int) -> tuple[list, list, dict]:
    """:func:`multistart_fixed_points`' solves on the reduced problem: per start the fixed point (K + 1 columns),
    whether it converged and its argmax token over the full vocabulary."""
    sols, conv, argmax = [], [], {}
    for name, p0 in starts.items():
        x0 = None
        if p0 is not None:
            on = p0.gather(-1, idx)
            x0 = torch.cat([on, (1 - on.sum(-1, keepdim=True)).clamp_min(0)], -1)
            x0 = x0 / x0.sum(-1, keepdim=True)
        fp = dynamics.fixed_point(sq_r, sc_r, alpha, beta, lam, tol=tol, max_iter=max_iter, p0=x0, screen=False)
        sols.append(fp.p)
        conv.append(fp.converged)
        best = (beta * (sq_r[:, :-1] + lam * fp.g[:, :-1])).max(-1)
        argmax[name] = torch.where(best.values >= rest_max, idx.gather(-1, best.indices[:, None])[:, 0], rest_arg)
    return sols, conv, argmax
