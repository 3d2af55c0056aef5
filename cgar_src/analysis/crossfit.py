r"""Cross-fitted evaluation of the gate chapter's five models on a language model's own states (book chapter
``12_gate_in_transformer``).

:func:`lens_scores` turns one dataset's states into the evidence of :mod:`cgar_src.analysis.gate_fit`, all
full-vocabulary logit-lens scores :math:`W_U\,\mathrm{Norm}(h)` in float64:

* query evidence :math:`s_q = W_U\,\mathrm{Norm}(h^{(L)}_{zero})`;
* target :math:`\log p_{ICL} = \log\mathrm{softmax}(W_U\,\mathrm{Norm}(h^{(L)}_{icl}))`, the model's own in-context
  output;
* context evidence :math:`s_c^{(l)} = W_U\,\mathrm{Norm}(h^{(l)}_{cf})` of the content-free prompt at each context
  layer.

:func:`evaluate` scores (a) zero-shot, (b) dense bias, (c) sparse gate, (d) fixed point and (e) prior, each
cross-fitted on the same folds (:func:`cgar_src.analysis.gate_fit.cross_fit`: parameters from the fitting rows only,
scores on the evaluation rows), per query: :math:`\mathrm{KL}(p_{ICL}\,\|\,p_{model})`, top-1 agreement with
:math:`\arg\max p_{ICL}` and label accuracy (the prior's accuracy: the fitting rows' majority label). Then the
theory's quantities at each fold's fitted gate: support, one-hotness, :math:`\alpha_{crit}` and
:math:`\Delta_{gate}` (:func:`cgar_src.analysis.gate_fit.gate_stats`), and the number of distinct fixed points of
:math:`\Phi` from several starts (:func:`cgar_src.analysis.gate_fit.multistart_fixed_points`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._validate import as_tensor, indices
from ..lm import Unembed
from . import gate_fit as gf
from .baselines import majority_correct

__all__ = ["LensScores", "lens_scores", "layer_tags", "Evaluation", "evaluate", "fixed_point_starts"]

PER_QUERY = ("kl", "agree", "correct")
THEORY = ("support", "one_hot", "alpha_crit", "delta_gate", "n_distinct", "n_converged")


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
    """One dataset and context layer: the cross-fits per model (:data:`cgar_src.analysis.gate_fit.MODELS`), per model
    the per-query ``kl``, ``agree`` and ``correct`` (the prior also ``correct_majority``), the theory's per-query
    quantities at the fitted gate (and ``n_starts``), the in-context prediction's own correctness and the gate's
    support size at every alpha of the grid ``(len(alphas), P)``."""

    fits: dict[str, gf.CrossFit]
    per_query: dict[str, dict[str, torch.Tensor]]
    theory: dict
    icl_correct: torch.Tensor
    support_by_alpha: torch.Tensor


def _grids(grids: dict) -> dict:
    if not isinstance(grids, dict) or set(grids) != set(gf.GRID_MODELS):
        raise ValueError(f"grids must map exactly {sorted(gf.GRID_MODELS)} to their grids, got {grids!r}")
    return grids


@torch.no_grad()
def evaluate(s_q, target_logp, s_c, labels, label_ids: Sequence[int], folds, grids: dict,
             lambda_fractions: Sequence[float], *, tol: float = 1e-9, max_iter: int = 500) -> Evaluation:
    r"""All five models cross-fitted on ``folds`` (``(fit, evaluate)`` index pairs,
    :func:`cgar_src.analysis.steering.folds_of`) and the theory's quantities of the fitted gate (module docstring).

    ``s_q``, ``target_logp``, ``s_c``: ``(P, V)`` (float64; the grids run in float32, where the KL differences lie far
    above its round-off, the fixed points in float64); ``labels`` ``(P,)`` class indices into ``label_ids`` (the
    labels' token ids); ``grids`` maps ``"dense"`` and ``"gated"`` to their grids
    (:func:`cgar_src.analysis.gate_fit.kl_grid`); ``lambda_fractions`` are the fixed point's couplings as fractions of
    the gate's (:func:`cgar_src.analysis.gate_fit.cross_fit_fixed_point`). Every fold's parameters come from its
    fitting rows only."""
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
    grids = _grids(grids)
    gold, icl_top = ids[labels], target.argmax(-1)
    s_q32, s_c32, target32 = s_q.float(), s_c.float(), target.float()
    fits = {m: gf.cross_fit(m, s_q32, s_c32, target32, folds, grids.get(m))
            for m in ("zero_shot", "dense", "gated", "prior")}
    fits["fixed_point"] = gf.cross_fit_fixed_point(s_q, s_c, target, folds, fits["gated"], list(lambda_fractions),
                                                   tol=tol, max_iter=max_iter)
    per_query = {m: {"kl": f.kl, "agree": (f.argmax == icl_top).double(), "correct": (f.argmax == gold).double()}
                 for m, f in fits.items()}
    majority = torch.empty(n, dtype=torch.float64)
    for fit, ev in folds:
        majority[ev] = majority_correct(labels[ev], reference=labels[fit])
    per_query["prior"]["correct_majority"] = majority
    theory: dict = {k: torch.empty(n, dtype=torch.float64) for k in THEORY}
    starts: dict = {}
    for f, (_, ev) in enumerate(folds):         # each query at its own fold's fitted parameters
        g, d = fits["gated"].params[f], fits["fixed_point"].params[f]
        st = gf.gate_stats(s_c[ev], g["alpha"], gold[ev])
        for k in ("support", "one_hot", "alpha_crit", "delta_gate"):
            theory[k][ev] = getattr(st, k).double()
        starts = fixed_point_starts(target[ev], ids.tolist())
        ms = gf.multistart_fixed_points(s_q[ev], s_c[ev], d["alpha"], d["beta"], d["lam"], starts, tol=tol,
                                        max_iter=max_iter)
        theory["n_distinct"][ev], theory["n_converged"][ev] = ms.n_distinct.double(), ms.n_converged.double()
    theory["n_starts"] = len(starts)
    return Evaluation(fits=fits, per_query=per_query, theory=theory, icl_correct=(icl_top == gold).double(),
                      support_by_alpha=gf.support_sizes(s_c, list(grids["gated"]["alpha"])))
