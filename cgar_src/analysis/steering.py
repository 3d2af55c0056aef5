r"""Held-out steering and its baselines (book chapter ``11_referee_checks``).

Every quantity fitted to data (the averaged context vector :math:`\bar c^{(l)}`, the task vector, the chosen context
layer and coupling) is fitted on one fold of the queries and scored on the other (cross-fitting), so every query
gets a held-out prediction and the accuracy over all queries is a held-out accuracy.

* :func:`heldout_additive`: additive (first-order) retrieval :math:`W_U\mathrm{Norm}(h_{zero}^{(l')} +
  \lambda\bar c^{(l)})`, with a norm-matched random direction scored at the same setting as a control, the steered
  state's label-restricted accuracy, and the accuracy at each context layer fixed in advance;
* :func:`heldout_task_vector`: the task-vector patch (Hendel et al. 2023): the zero-shot forward pass with the last
  token's residual state at layer l replaced by the mean ICL state of the fitting fold.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import indices, int_in_range
from ..lm import LoadedModel, Patch, Unembed
from ..lm.cache import cached_states
from . import lens

__all__ = ["HeldOut", "FOLD_SCHEMES", "folds_of", "heldout_additive", "heldout_task_vector"]


@dataclass
class HeldOut:
    """Per-query held-out results (shape ``(P,)``) and the setting chosen on each fitting fold.

    ``restricted_correct``: the same steered states scored label-restricted (argmax over the label tokens' logits
    instead of the whole vocabulary); ``by_layer``: context layer -> held-out correctness with that context layer
    fixed (only lambda chosen on the fitting fold), for the verdict at each layer fixed in advance."""

    correct: torch.Tensor
    label_mass: torch.Tensor
    choices: list[dict]
    control_correct: torch.Tensor | None = None
    restricted_correct: torch.Tensor | None = None
    by_layer: dict[int, torch.Tensor] | None = None


FOLD_SCHEMES = ("strided", "kfold")


def folds_of(n: int, n_folds: int = 2, seed: int = 0, *,
             scheme: str = "strided") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random partition of ``range(n)`` into ``n_folds`` folds: ``(fit, evaluate)`` pairs of sorted index
    tensors, where each fold is evaluated once with everything fitted on the other folds (cross-fitting; the one
    fold generator of the transformer chapters).

    ``scheme`` says how the seeded permutation is cut: ``"strided"`` (chapters 11 and 12), fold i is every
    ``n_folds``-th entry of ``torch.randperm(n)`` from position i; ``"kfold"`` (chapter 10's probes), consecutive
    blocks (the first ``n % n_folds`` one longer) of ``numpy.random.RandomState(seed).permutation(n)``, the partition
    of scikit-learn's ``KFold(n_folds, shuffle=True, random_state=seed)``. Neither is stratified."""
    n = int_in_range(n, "n", 2, note=" (the number of queries)")
    int_in_range(n_folds, "n_folds", 2, n, " (the number of queries)")
    int_in_range(seed, "seed", 0, 2**32 - 1)
    if scheme == "strided":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        parts = [perm[i::n_folds] for i in range(n_folds)]
    elif scheme == "kfold":
        perm = torch.from_numpy(np.random.RandomState(seed).permutation(n))
        parts = list(perm.split([n // n_folds + (i < n % n_folds) for i in range(n_folds)]))
    else:
        raise ValueError(f"scheme must be one of {FOLD_SCHEMES}, got {scheme!r}")
    parts = [q.sort().values for q in parts]
    return [(torch.cat([q for j, q in enumerate(parts) if j != i]).sort().values, parts[i]) for i in range(n_folds)]


def heldout_additive(unembed: Unembed, h_zero: torch.Tensor, h_icl: torch.Tensor, labels: torch.Tensor,
                     label_ids: list[int], *, lambdas: list[float], context_layers: list[int], query_layer: int,
                     n_folds: int = 2, seed: int = 0,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     variant: str = "difference") -> HeldOut:
    r"""Cross-fitted additive retrieval :math:`W_U\mathrm{Norm}(h_{zero}^{(L)} + \lambda\bar c^{(l)})` (book chapter
    ``11_referee_checks``). On each fitting fold: :math:`\bar c = \mathrm{mean}(h_{ICL} - h_{zero})` (``variant``
    ``"difference"``; ``"icl_mean"``: :math:`\mathrm{mean}\,h_{ICL}`, :func:`cgar_src.analysis.lens.context_vector`)
    and the (context layer, lambda) of highest full-vocabulary accuracy (ties: the earliest layer, then the smallest
    lambda), an in-sample choice on the fitting fold; on the held-out fold: the accuracy at that setting (full
    vocabulary and label-restricted), of a random direction with the norm of :math:`\bar c^{(l)}` (seeded) at the
    same setting, and, per context layer fixed in advance, the accuracy at that layer with lambda chosen on the
    fitting fold (``by_layer``). ``h_icl`` may hold random-label ICL states (the random-label baseline).
    ``transform`` maps the fold's :math:`\bar c` ``(L+1, d)`` to the vector actually added (e.g. the label-prior
    vector with the norms of :math:`\bar c`, :func:`cgar_src.analysis.baselines.label_prior_vector`); it is fitted and
    scored the same way."""
    if h_zero.shape != h_icl.shape or h_zero.shape[0] != labels.shape[0]:
        raise ValueError(f"h_zero {tuple(h_zero.shape)}, h_icl {tuple(h_icl.shape)} and labels {tuple(labels.shape)} "
                         "must agree in their number of queries (and the states in shape)")
    if variant not in ("difference", "icl_mean"):
        raise ValueError(f"variant must be 'difference' or 'icl_mean', got {variant!r}")
    indices(context_layers, "context_layers", h_zero.shape[1], what="layer indices")
    P = h_zero.shape[0]
    zeros = lambda: torch.zeros(P, dtype=torch.float64)
    correct, ctrl, restricted, mass = zeros(), zeros(), zeros(), torch.zeros(P)
    by_layer = {l: zeros() for l in context_layers}
    gen = torch.Generator().manual_seed(seed)
    choices = []
    for fit, ev in folds_of(P, n_folds, seed):
        c_bar = lens.context_vector(h_icl[fit], h_zero[fit], variant=variant)
        if transform is not None:
            c_bar = transform(c_bar)
            if c_bar.shape != h_zero.shape[1:]:
                raise ValueError(f"transform must return a vector per layer {tuple(h_zero.shape[1:])}, got {tuple(c_bar.shape)}")
        grid = dict(lambdas=lambdas, context_layers=context_layers, query_layers=[query_layer])
        acc = lens.additive_retrieval(unembed, h_zero[fit], c_bar, label_ids, **grid).accuracy(label_ids, labels[fit])[0]
        held = lens.additive_retrieval(unembed, h_zero[ev], c_bar, label_ids, **grid)        # (E, 1, C, K)
        hit = held.correct(label_ids, labels[ev])[:, 0]                                      # (E, C, K)
        j, i = divmod(int(acc.argmax()), len(lambdas))
        l, lam = context_layers[j], lambdas[i]
        correct[ev] = hit[:, j, i]
        mass[ev] = held.label_mass[:, 0, j, i]
        restricted[ev] = (held.label_logits[:, 0, j, i].argmax(-1) == labels[ev]).double()
        for jj, ll in enumerate(context_layers):
            by_layer[ll][ev] = hit[:, jj, int(acc[jj].argmax())]
        one = dict(lambdas=[lam], context_layers=[l], query_layers=[query_layer])
        rand = lens.additive_retrieval(unembed, h_zero[ev], lens.norm_matched_random(c_bar, gen), label_ids, **one)
        ctrl[ev] = rand.correct(label_ids, labels[ev]).flatten()
        choices.append({"context_layer": l, "lambda": lam, "fit_accuracy": round(float(acc[j, i]), 4),
                        "lambda_by_layer": {ll: lambdas[int(acc[jj].argmax())] for jj, ll in enumerate(context_layers)}})
    return HeldOut(correct=correct, label_mass=mass, choices=choices, control_correct=ctrl,
                   restricted_correct=restricted, by_layer=by_layer)


def heldout_task_vector(lm: LoadedModel, unembed: Unembed, zero_prompts: list[str], h_icl: torch.Tensor,
                        labels: torch.Tensor, label_ids: list[int], *, layers: list[int], n_folds: int = 2,
                        seed: int = 0, batch_size: int = 8, cache_root=None) -> HeldOut:
    """Cross-fitted task-vector patch: on each fitting fold, the task vector at layer l is the mean ICL state
    :math:`\\mathrm{mean}\\,h_{ICL}^{(l)}`; the layer whose patch gives the fitting fold's zero-shot prompts the highest
    final-layer accuracy is chosen, then the held-out prompts are run with that patch; with ONE layer (fixed in
    advance) nothing is chosen and the fitting fold is not run (``fit_accuracy`` None). Patched states are cached
    (:func:`cgar_src.lm.cache.cached_states`, keyed by the patch)."""
    if len(zero_prompts) != h_icl.shape[0] or labels.shape[0] != h_icl.shape[0]:
        raise ValueError(f"zero_prompts ({len(zero_prompts)}), h_icl {tuple(h_icl.shape)} and labels "
                         f"{tuple(labels.shape)} must have one entry per query")
    # block inputs: entry L (the final norm's input) is not a block
    indices(layers, "layers", lm.n_layers, what="layer indices")
    P, L = h_icl.shape[0], lm.n_layers
    correct, mass = torch.zeros(P, dtype=torch.float64), torch.zeros(P)
    choices = []

    def run(idx: torch.Tensor, layer: int, vector: torch.Tensor) -> lens.DecodeStats:
        h = cached_states(lm, [zero_prompts[i] for i in idx], {"kind": "task-vector patch"}, cache_root=cache_root,
                          batch_size=batch_size, progress=False, patch=Patch(layer, vector, "replace")).states
        return lens.decode_stats(unembed, h[:, L], label_ids)

    for fit, ev in folds_of(P, n_folds, seed):
        task_vectors = h_icl[fit].mean(0)                                       # (L+1, d)
        if len(layers) > 1:
            accs = [float(run(fit, l, task_vectors[l]).accuracy(label_ids, labels[fit])) for l in layers]
            best = max(range(len(layers)), key=lambda i: (accs[i], -i))
        else:
            accs, best = [float("nan")], 0
        held = run(ev, layers[best], task_vectors[layers[best]])
        correct[ev] = held.correct(label_ids, labels[ev])
        mass[ev] = held.label_mass
        choices.append({"layer": layers[best], "fit_accuracy": round(accs[best], 4) if len(layers) > 1 else None})
    return HeldOut(correct=correct, label_mass=mass, choices=choices)
