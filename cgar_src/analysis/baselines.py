r"""Baselines that a claim about in-context learning has to beat (book: chapters 07-12).

All take per-query quantities already computed from cached states (no forward passes) and return per-query
correctness ``(P,)`` as float64 0/1, so that :func:`cgar_src.analysis.stats.compare` can pair them with any method.

* :func:`majority_correct`: always answer one class, the most frequent one of a reference set of labels. The
  chapters take the reference from the *demonstration pool* (the split the demonstrations are drawn from,
  ``cgar_src.tasks.data.TASKS[ds].demo_split``), never from the evaluated queries: the queries'
  own majority is the best constant answer in hindsight, a baseline chosen on the data it is scored on;
* :func:`label_restricted_correct`: zero-shot (or k-shot) restricted to the label tokens, the argmax of the label
  logits :math:`\arg\max_y z_y` instead of the argmax over the whole vocabulary;
* :func:`calibrated_correct`: contextual calibration (Zhao et al. 2021). With :math:`p` the label distribution of the
  query's prompt and :math:`p_{cf}` that of the same prompt with a content-free input ("N/A"), the calibrated
  prediction is :math:`\arg\max_y p_y / p_{cf,y} = \arg\max_y (z_y - z_{cf,y})` (the normalisers cancel);
* :func:`fit_logit_prior`, :func:`logit_prior_correct`: a label prior in *logit* space, a constant vector :math:`b`
  added to the zero-shot label logits, :math:`\hat y = \arg\max_y (z_y + b_y)`, fitted on the fitting fold only:
  :math:`b_y = \log\hat\pi_y - \overline{z}_y`, the fitting fold's log class frequency (add-one smoothed) minus
  that label's mean logit over the fitting queries (the model's own preference for the label, whatever the input).
  It needs no demonstrations and no context vector: the strongest thing a "prior over the label set" can do;
* :func:`label_prior_vector`: a residual-stream direction that raises every label's logit by the same amount to
  first order, norm-matched to a context vector: the control that tells "c_bar raises the label set" from "c_bar
  carries the input-label mapping".
"""
from __future__ import annotations

import torch

from .._validate import indices
from ..lm import Unembed
from .lens import readout_rows

__all__ = ["majority_class", "majority_correct", "label_restricted_correct", "calibrated_predictions",
           "calibrated_correct", "fit_logit_prior", "logit_prior_correct", "label_prior_vector", "VERDICTS", "additive_verdict", "verdict_reason"]


def majority_class(reference) -> int:
    """The most frequent class of ``reference`` (ties: the smallest class index)."""
    return int(torch.bincount(indices(reference, "reference", what="class indices")).argmax())


def majority_correct(labels, reference) -> torch.Tensor:
    """Correctness on ``labels`` ``(P,)`` of always answering the majority class of ``reference`` (in every
    chapter the demonstration pool's labels; required, so that no caller falls back on the evaluated queries' own
    majority by omission)."""
    y = indices(labels, "labels", what="class indices")
    c = majority_class(reference)
    return (y == c).double()



def _logits(z, labels: torch.Tensor, name: str) -> torch.Tensor:
    z = torch.as_tensor(z, dtype=torch.float64)
    if z.ndim != 2 or z.shape[0] != labels.shape[0]:
        raise ValueError(f"{name} must be (P, n_labels) with P = {labels.shape[0]} queries, got {tuple(z.shape)}")
    if int(labels.max()) >= z.shape[1]:
        raise ValueError(f"labels reach class {int(labels.max())} but {name} has only {z.shape[1]} label columns")
    return z


def label_restricted_correct(label_logits, labels) -> torch.Tensor:
    """Correctness of the argmax over the label tokens' logits ``(P, n_labels)``."""
    y = indices(labels, "labels", what="class indices")
    return (_logits(label_logits, y, "label_logits").argmax(-1) == y).double()


def calibrated_predictions(label_logits, cf_label_logits) -> torch.Tensor:
    """Contextually calibrated label predictions: :math:`\\arg\\max_y (z_y - z_{cf,y})`. ``cf_label_logits`` is
    ``(P, n_labels)`` (one content-free prompt per query, e.g. with that query's demonstrations) or ``(n_labels,)``
    (one content-free prompt for all)."""
    z = torch.as_tensor(label_logits, dtype=torch.float64)
    zc = torch.as_tensor(cf_label_logits, dtype=torch.float64)
    if z.ndim != 2 or zc.shape not in (z.shape, z.shape[1:]):
        raise ValueError(f"cf_label_logits must have shape {tuple(z.shape)} or {tuple(z.shape[1:])}, got {tuple(zc.shape)}")
    return (z - zc).argmax(-1)


def calibrated_correct(label_logits, cf_label_logits, labels) -> torch.Tensor:
    """Correctness of :func:`calibrated_predictions`."""
    y = indices(labels, "labels", what="class indices")
    _logits(label_logits, y, "label_logits")
    return (calibrated_predictions(label_logits, cf_label_logits) == y).double()


def fit_logit_prior(label_logits, labels) -> torch.Tensor:
    r"""The logit-space label prior of the module docstring, fitted on queries with label logits ``(P, n_labels)``
    and ``labels`` ``(P,)``: :math:`b_y = \log\hat\pi_y - \frac1P\sum_i z_{i,y}` with
    :math:`\hat\pi_y = (n_y + 1)/(P + |Y|)` (book chapter ``11_referee_checks``, label ``ch-referee``). Adding
    :math:`b` removes each label's average logit and puts in the fold's log class frequency; returns ``(n_labels,)``
    float64."""
    y = indices(labels, "labels", what="class indices")
    z = _logits(label_logits, y, "label_logits")
    if not torch.isfinite(z).all():
        raise ValueError("label_logits must be finite")
    counts = torch.bincount(y, minlength=z.shape[1]).double()
    log_prior = torch.log((counts + 1) / (counts.sum() + z.shape[1]))
    return log_prior - z.mean(0)


def logit_prior_correct(label_logits, labels, *, folds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    r"""Held-out correctness ``(P,)`` of the logit-space prior: on each ``(fit, evaluate)`` pair of ``folds`` (e.g.
    :func:`cgar_src.analysis.steering.folds_of`), :math:`b` is fitted on ``fit`` (:func:`fit_logit_prior`) and the
    evaluated queries are answered :math:`\arg\max_y (z_y + b_y)`. Every query must be evaluated exactly once."""
    y = indices(labels, "labels", what="class indices")
    z = _logits(label_logits, y, "label_logits")
    ev_all = torch.cat([torch.as_tensor(ev) for _, ev in folds]) if folds else torch.zeros(0, dtype=torch.long)
    if ev_all.numel() != y.numel() or not torch.equal(ev_all.sort().values, torch.arange(y.numel())):
        raise ValueError(f"folds must evaluate each of the {y.numel()} queries exactly once")
    out = torch.zeros(y.numel(), dtype=torch.float64)
    for fit, ev in folds:
        b = fit_logit_prior(z[fit], y[fit])
        out[ev] = ((z[ev] + b).argmax(-1) == y[ev]).double()
    return out


def label_prior_vector(unembed: Unembed, label_token_ids: list[int], norms: torch.Tensor) -> torch.Tensor:
    r"""The minimum-norm residual direction :math:`v` with :math:`R v \propto \mathbf 1`, where the rows of R are
    the labels' readout directions :math:`\gamma \odot w_y` (final-norm gain times unembedding row, as in
    :func:`cgar_src.analysis.lens.readout_basis`): to first order it raises every label's logit by the same amount and
    carries no preference among the labels. Scaled to each of ``norms`` (e.g. ``c_bar.norm(dim=-1)``, shape
    ``(L+1,)``); returns ``norms.shape + (d,)``."""
    indices(label_token_ids, "label_token_ids", unembed.weight.shape[0], what="token ids")
    R = readout_rows(unembed, label_token_ids, dtype=torch.float64)
    v = torch.linalg.pinv(R) @ torch.ones(R.shape[0], dtype=torch.float64, device=R.device)   # R^T (R R^T)^-1 1
    v = (v / v.norm()).float().cpu()
    norms = torch.as_tensor(norms, dtype=torch.float32)
    return norms[..., None] * v


VERDICTS = ("supported", "partly", "below a simple baseline", "label-set prior only", "not reproduced")


def additive_verdict(vs_majority, vs_label_prior, vs_simple) -> str:
    """The verdict ladder of the context-vector chapters (08 in-sample, 11 held out), from paired comparisons
    (:class:`cgar_src.analysis.stats.Comparison`, exact McNemar) of the context vector against the majority answer
    (the demonstration pool's majority class), the label-prior vector and the strongest simple baseline (the
    method of highest accuracy among those that need no context vector): not really better than the majority
    answer -> "not reproduced"; than the label-prior vector -> "label-set prior only"; really worse than the
    strongest simple baseline -> "below a simple baseline"; indistinguishable from it -> "partly"; really better
    -> "supported"."""
    if not vs_majority.better:
        return "not reproduced"
    if not vs_label_prior.better:
        return "label-set prior only"
    return "below a simple baseline" if vs_simple.worse else "supported" if vs_simple.better else "partly"


def verdict_reason(vs_majority, vs_label_prior, vs_simple, simple_name: str) -> str:
    """Why :func:`additive_verdict` gave its verdict, each rung stated with its paired comparison (context vector
    minus the alternative), up to the rung that decided, and always against the strongest simple baseline
    ``simple_name``: a verdict that rests on beating a weak control says so beside the strong baseline it lost to."""
    v = additive_verdict(vs_majority, vs_label_prior, vs_simple)
    simple = f"the strongest simple baseline, {simple_name} ({vs_simple})"
    if v == "not reproduced":
        return f"no better than the majority answer ({vs_majority}); against {simple}"
    if v == "label-set prior only":
        return (f"better than the majority answer, but no better than the label-prior vector ({vs_label_prior}); "
                f"against {simple}")
    head = f"better than the label-prior vector ({vs_label_prior}), "
    return head + {"below a simple baseline": f"but worse than {simple}",
                   "partly": f"but indistinguishable from {simple}",
                   "supported": f"and better than {simple}"}[v]
