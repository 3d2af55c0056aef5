r"""Cross-fitted evaluation of the gate chapter's five models on a language model's own states (book chapter
``12_gate_in_transformer``).

:func:`lens_scores` turns one dataset's states into the evidence of :mod:`cgar_src.analysis.gate_fit`, all
full-vocabulary logit-lens scores :math:`W_U\,\mathrm{Norm}(h)` in float64:

* query evidence :math:`s_q = W_U\,\mathrm{Norm}(h^{(L)}_{zero})`;
* target :math:`\log p_{ICL} = \log\mathrm{softmax}(W_U\,\mathrm{Norm}(h^{(L)}_{icl}))`, the model's own in-context
  output;
* context evidence :math:`s_c^{(l)} = W_U\,\mathrm{Norm}(h^{(l)}_{cf})` of the content-free prompt at each context
  layer. There is one content-free prompt per demonstration set (``cgar_src.tasks.icl.task_states``), so within a
  set every row of :math:`s_c` is the same vector :math:`c`: the dense and gated models then add one bias
  (:math:`\lambda c`, :math:`\lambda G_\alpha(c)`) to every query, their parameters are still identified across the
  queries, and the gate's theory quantities are one number per fold (:math:`\Delta_{gate}` varies only with the
  query's label). Several sets are evaluated one by one and pooled per query by
  :func:`cgar_src.analysis.gate_report.pool_sets`.

:func:`evaluate` scores (a) zero-shot, (b) dense bias, (c) sparse gate, (d) fixed point and (e) prior, each
cross-fitted on the same folds (:func:`cgar_src.analysis.gate_fit.cross_fit`: parameters from the fitting rows only,
scores on the evaluation rows), per query: :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})`, top-1 agreement with
:math:`\arg\max p_{ICL}` and label accuracy (the prior's accuracy: the fitting rows' majority label). The fixed
point is fitted on its own grid twice (:func:`cgar_src.analysis.gate_fit.cross_fit_fixed_point_grid`): inside the
contraction region, where it is unique (``fixed_point``), and outside it (``fixed_point_out``). Then the theory's
quantities at each fold's fitted gate: support, one-hotness, :math:`\alpha_{crit}` and :math:`\Delta_{gate}`
(:func:`cgar_src.analysis.gate_fit.gate_stats`), and at each fold's two fitted fixed points the number of distinct
fixed points of :math:`\Phi` from several starts (:func:`cgar_src.analysis.gate_fit.multistart_fixed_points`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._validate import as_tensor, indices
from ..lm import Unembed
from . import gate_fit as gf
from .baselines import majority_correct

__all__ = ["LensScores", "lens_scores", "layer_tags", "Evaluation", "evaluate", "evaluate_many", "check_grids", "fixed_point_starts",
           "FITTED"]

PER_QUERY = ("kl", "agree", "correct")
THEORY = ("support", "one_hot", "alpha_crit", "delta_gate", "n_distinct", "n_converged", "n_distinct_out",
          "n_converged_out")
#: the fitted models of :func:`evaluate`, in the order of the chapter's table
FITTED = ("zero_shot", "dense", "gated", "fixed_point", "fixed_point_out", "prior")


class LensScores(NamedTuple):
    """One dataset's evidence: ``s_q`` and ``target`` ``(P, V)``, ``s_c`` context layer -> ``(P, V)``; float64."""

    s_q: torch.Tensor
    target: torch.Tensor
    s_c: dict[int, torch.Tensor]


@torch.no_grad()
def lens_scores(unembed: Unembed, h_zero: torch.Tensor, h_icl: torch.Tensor, h_cf: torch.Tensor, *, query_layer: int,
                context_layers: Sequence[int]) -> LensScores:
    """Full-vocabulary lens scores (module docstring) of states ``(P, L+1, d)``, float64 on the CPU: query evidence
    and in-context target at ``query_layer``, context evidence at each of ``context_layers``."""
    if h_zero.ndim != 3 or h_icl.shape != h_zero.shape or h_cf.shape != h_zero.shape:
        raise ValueError(f"h_zero, h_icl and h_cf must be states (P, L+1, d) of one shape, got {tuple(h_zero.shape)}, "
                         f"{tuple(h_icl.shape)} and {tuple(h_cf.shape)}")
    indices(query_layer, "query_layer", h_zero.shape[1], shape=(), what="layer indices")
    indices(list(context_layers), "context_layers", h_zero.shape[1], what="layer indices")

    def lens(h: torch.Tensor) -> torch.Tensor:
        return unembed(h).double().cpu()

    return LensScores(lens(h_zero[:, query_layer]), torch.log_softmax(lens(h_icl[:, query_layer]), -1),
                      {l: lens(h_cf[:, l]) for l in context_layers})


def layer_tags(last: int, context_layers: Sequence[int]) -> dict[int, str]:
    """Names of the context layers in the text: ``last`` is ``"last"``, the others ``"early"``, ``"early2"``, ...
    in the order given."""
    return {last: "last"} | {l: "early" + (str(i + 1) if i else "") for i, l in
                             enumerate(x for x in context_layers if x != last)}


def fixed_point_starts(target_logp: torch.Tensor, label_ids: Sequence[int]) -> dict:
    """The starts of the multi-start fixed-point count: the first-order start (``None``), the uniform distribution,
    the in-context distribution ``exp(target_logp)`` ``(P, V)`` and one-hot on each label token."""
    V = target_logp.shape[-1]
    starts = {"first-order": None, "uniform": torch.full((V,), 1 / V, dtype=torch.float64),
              "in-context": target_logp.exp()}
    for y, tok in enumerate(label_ids):
        starts[f"label {y}"] = torch.zeros(V, dtype=torch.float64).index_fill(0, torch.tensor([tok]), 1.0)
    return starts


@dataclass
class Evaluation:
    """One dataset and context layer: the cross-fits per model (:data:`FITTED`), per model the per-query ``kl``,
    ``agree`` and ``correct`` (the prior also ``correct_majority``), the theory's per-query quantities at the fitted
    gate and fixed points (and ``n_starts``), the in-context prediction's own correctness, the gate's support size at
    every alpha of the grid ``(len(alphas), P)`` and the gate's dense-limit penalisation per query
    (:func:`cgar_src.analysis.gate_fit.dense_limit_alpha`)."""

    fits: dict[str, gf.CrossFit]
    per_query: dict[str, dict[str, torch.Tensor]]
    theory: dict
    icl_correct: torch.Tensor
    support_by_alpha: torch.Tensor
    alpha_dense: torch.Tensor


def _fixed_point_grid(grid: dict) -> dict:
    names = ("alpha", "beta", "lam")
    if not isinstance(grid, dict) or set(grid) != set(names):
        raise ValueError(f"fixed_point_grid must be a dict with exactly the keys {names}, got {grid!r}")
    for name in names:
        vals = grid[name]
        if (not isinstance(vals, (list, tuple)) or not vals
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals)):
            raise ValueError(f"fixed_point_grid[{name!r}] must be a non-empty list of numbers > 0, got {vals!r}")
    bounds = [b * lam**2 / (2 * a) for a in grid["alpha"] for b in grid["beta"] for lam in grid["lam"]]
    if min(bounds) >= 1 or max(bounds) < 1:
        raise ValueError("fixed_point_grid must hold points inside the contraction region (beta lam^2 / (2 alpha) < 1) "
                         f"and outside it (>= 1); its bounds lie in [{min(bounds):.3g}, {max(bounds):.3g}]")
    return grid


def check_grids(grids: dict, fixed_point_grid: dict) -> None:
    """Check the grids of :func:`evaluate` (a ``ValueError`` naming the bad grid), cheap enough to run before the
    states are extracted: ``grids`` maps ``"dense"`` and ``"gated"`` to their grids
    (:func:`cgar_src.analysis.gate_fit.kl_grid`), ``fixed_point_grid`` holds points on both sides of the
    contraction bound."""
    grids = _grids(grids)
    for m in ("dense", "gated"):
        gf.kl_grid_axes(m, grids[m])
    _fixed_point_grid(fixed_point_grid)


def _grids(grids: dict) -> dict:
    if not isinstance(grids, dict) or set(grids) != set(gf.GRID_MODELS):
        raise ValueError(f"grids must map exactly {sorted(gf.GRID_MODELS)} to their grids, got {grids!r}")
    return grids


@torch.no_grad()
def evaluate(s_q, target_logp, s_c, labels, label_ids: Sequence[int], folds, grids: dict, fixed_point_grid: dict, *,
             tol: float = 1e-9, max_iter: int = 300) -> Evaluation:
    r"""All models cross-fitted on ``folds`` (``(fit, evaluate)`` index pairs,
    :func:`cgar_src.analysis.steering.folds_of`) and the theory's quantities of the fitted gate and fixed points
    (module docstring).

    ``s_q``, ``target_logp``, ``s_c``: ``(P, V)`` (float64; the grids run in float32, where the KL differences lie far
    above its round-off, the held-out scores and the fixed points in float64); ``labels`` ``(P,)`` class indices into ``label_ids`` (the
    labels' token ids); ``grids`` maps ``"dense"`` and ``"gated"`` to their grids
    (:func:`cgar_src.analysis.gate_fit.kl_grid`; the gated one may give ``kappa`` = lambda/alpha in place of
    ``lam``); ``fixed_point_grid`` is the fixed point's own grid (keys ``alpha``, ``beta``, ``lam``,
    :func:`cgar_src.analysis.gate_fit.fixed_point_grid`), which must hold points on both sides of the contraction
    bound. Every fold's parameters come from its fitting rows only. Runs with one intra-op thread
    (:func:`cgar_src.analysis.gate_fit.single_thread`: faster here than torch's thread pool, measured)."""
    with gf.single_thread():
        return _evaluate(s_q, target_logp, s_c, labels, label_ids, folds, grids, fixed_point_grid, tol=tol,
                         max_iter=max_iter)


def _evaluate_job(job: dict) -> Evaluation:
    return evaluate(**job)


def evaluate_many(jobs: Sequence[dict], *, processes: int | None = None) -> list[Evaluation]:
    """:func:`evaluate` of every job (a dict of its arguments), in order. With ``processes`` > 1 (default: one per CPU
    core, at most one per job) the jobs run in that many worker processes (started with ``spawn``), each with one
    intra-op thread as :func:`evaluate` always runs: every job runs the same code on the same inputs as in a serial
    loop, so the numbers are the same, and the fits of chapter 12, single-threaded by design, use every core."""
    jobs = list(jobs)
    if not all(isinstance(j, dict) for j in jobs):
        raise ValueError("jobs must be a list of dicts of evaluate()'s arguments")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be an integer >= 1 or None, got {processes!r}")
    n = min(len(jobs), processes or os.cpu_count() or 1)
    if n <= 1:
        return [evaluate(**j) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_evaluate_job, jobs))


def _evaluate(s_q, target_logp, s_c, labels, label_ids, folds, grids, fixed_point_grid, *, tol,
              max_iter) -> Evaluation:
    s_q = as_tensor(s_q, "s_q", ndim=2, dtype=torch.float64)
    target = as_tensor(target_logp, "target_logp", ndim=2, dtype=torch.float64)
    s_c = as_tensor(s_c, "s_c", ndim=2, dtype=torch.float64)
    labels = indices(labels, "labels", what="class indices")
    n = s_q.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"labels must have one entry per query ({n}), got {labels.shape[0]}")
    ids = indices(label_ids, "label_ids", s_q.shape[1], what="token ids")
    if int(labels.max()) >= ids.numel():
        raise ValueError(f"labels reach class {int(labels.max())} but there are only {ids.numel()} label_ids")
    check_grids(grids, fixed_point_grid)             # every grid checked before any expensive work
    gold, icl_top = ids[labels], target.argmax(-1)
    fits = {m: gf.cross_fit(m, s_q, s_c, target, folds, grids.get(m), grid_dtype=torch.float32)
            for m in ("zero_shot", "dense", "gated", "prior")}
    regions = gf.cross_fit_fixed_point_grid(s_q, s_c, target, folds, fixed_point_grid, tol=tol, max_iter=max_iter)
    fits["fixed_point"], fits["fixed_point_out"] = regions["inside"], regions["outside"]
    fits = {m: fits[m] for m in FITTED}
    per_query = {m: {"kl": f.kl, "agree": (f.argmax == icl_top).double(), "correct": (f.argmax == gold).double()}
                 for m, f in fits.items()}
    majority = torch.empty(n, dtype=torch.float64)
    for fit, ev in folds:
        majority[ev] = majority_correct(labels[ev], reference=labels[fit])
    per_query["prior"]["correct_majority"] = majority
    theory: dict = {k: torch.empty(n, dtype=torch.float64) for k in THEORY}
    starts: dict = {}
    for f, (_, ev) in enumerate(folds):         # each query at its own fold's fitted parameters
        g = fits["gated"].params[f]
        st = gf.gate_stats(s_c[ev], g["alpha"], gold[ev])
        for k in ("support", "one_hot", "alpha_crit", "delta_gate"):
            theory[k][ev] = getattr(st, k).double()
        starts = fixed_point_starts(target[ev], ids.tolist())
        for m, suffix in (("fixed_point", ""), ("fixed_point_out", "_out")):
            d = fits[m].params[f]
            ms = gf.multistart_fixed_points(s_q[ev], s_c[ev], d["alpha"], d["beta"], d["lam"], starts, tol=tol,
                                            max_iter=max_iter)
            theory["n_distinct" + suffix][ev] = ms.n_distinct.double()
            theory["n_converged" + suffix][ev] = ms.n_converged.double()
    theory["n_starts"] = len(starts)
    return Evaluation(fits=fits, per_query=per_query, theory=theory, icl_correct=(icl_top == gold).double(),
                      support_by_alpha=gf.support_sizes(s_c, list(grids["gated"]["alpha"])),
                      alpha_dense=gf.dense_limit_alpha(s_c))
