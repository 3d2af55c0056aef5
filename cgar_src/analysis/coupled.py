r"""Coupled retrieval: steering the zero-shot state with an averaged context vector (book chapter
``08_coupled_retrieval``, the paper's Figures 5, 10 and 11).

The first-order form of the context-gated memory, :math:`p^{(1)} = \mathrm{softmax}(\beta(s_q + \lambda
G_\alpha(s_c)))` (chapter ``05_fixed_point``), has the transformer analogue (chapter 08, equation
``additive-retrieval``)

.. math:: p(\lambda) = \mathrm{softmax}\big(W_U\,\mathrm{Norm}_{final}(h_{zero}^{(l')} + \lambda\,\bar c^{(l)})\big),
   \qquad \bar c^{(l)} = \mathrm{mean}_q\big(h_{ICL}^{(l)} - h_{zero}^{(l)}\big).

* :func:`coupled_grid`: the accuracy and label mass of that retrieval over (query layer, context layer, lambda) for
  :math:`\bar c`, a norm-matched random direction and the norm-matched label-prior vector, with the baselines that
  need no vector and the limit :math:`\lambda \to \infty` (the decode of :math:`\bar c` alone);
* :func:`best_setting`: the in-sample best setting of :math:`\bar c` against the controls and the baselines, paired
  on the same queries;
* :func:`verdict_values`: the chapter's verdicts across datasets and shot counts.

Everything here is in-sample (the vector and the setting are chosen on the queries they are scored on); chapter
``11_referee_checks`` cross-fits the same comparison (:mod:`cgar_src.analysis.steering`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..lm import Unembed
from . import baselines, lens
from .stats import Comparison, accuracy_ci, compare, fmt_ci, fmt_list

__all__ = ["VECTORS", "CoupledGrid", "coupled_grid", "BestSetting", "best_setting", "verdict_values", "verdict_of",
           "reason_of"]

VECTORS = ("c_bar", "random", "label_prior")   # the context vector and its two norm-matched controls


@dataclass
class CoupledGrid:
    """Additive retrieval of one dataset and shot count ``k``. ``acc[name]`` and ``mass[name]`` ``(P, C, K)``: per
    query, context layer and coupling, at the final query layer, for each vector of :data:`VECTORS`; ``acc_all``
    ``(P, Q, C, K)``: :math:`\\bar c` at every query layer; ``base``: per-query correctness ``(P,)`` of the baselines
    that need no vector, by display name; ``alone`` ``(C, P)``: the decode of :math:`\\bar c^{(l)}` alone (the limit
    :math:`\\lambda \\to \\infty`); ``labels`` ``(P,)``."""

    k: int
    acc: dict[str, torch.Tensor]
    mass: dict[str, torch.Tensor]
    acc_all: torch.Tensor
    base: dict[str, torch.Tensor]
    alone: torch.Tensor
    labels: torch.Tensor

    def best_over_lambda(self) -> torch.Tensor:
        """Mean accuracy of :math:`\\bar c` maximised over the coupling: ``(query layers, context layers)``."""
        return self.acc_all.mean(0).amax(-1)

    def concentrates(self) -> bool:
        """Some (context layer, coupling) puts more than half the mean probability mass on the label tokens."""
        return bool(self.mass["c_bar"].mean(0).max() > 0.5)


def coupled_grid(unembed: Unembed, h_zero: torch.Tensor, h_icl: torch.Tensor, labels: torch.Tensor,
                 label_token_ids: list[int], *, k: int, lambdas: Sequence[float], context_layers: Sequence[int],
                 query_layers: Sequence[int], generator: torch.Generator, pool: torch.Tensor,
                 h_cf: torch.Tensor | None = None,
                 h_cf_zero: torch.Tensor | None = None) -> CoupledGrid:
    r"""The additive retrieval of chapter 08 (equation ``additive-retrieval``) for zero-shot and ``k``-shot states
    ``(P, L+1, d)`` of the same queries. :math:`\bar c` is :func:`cgar_src.analysis.lens.context_vector` (variant
    ``difference``); its controls are :func:`cgar_src.analysis.lens.norm_matched_random` (drawn from ``generator``)
    and :func:`cgar_src.analysis.baselines.label_prior_vector` with the norms of :math:`\bar c`, both at the final
    query layer only. ``query_layers`` must hold the final layer L. Baselines: zero-shot, zero-shot restricted to
    the labels, k-shot prompting, the majority answer (the majority class of ``pool``, the demonstration pool's
    labels), and contextual calibration of zero-shot (``h_cf_zero``: the
    content-free zero-shot states) and of k-shot prompting (``h_cf``: the content-free k-shot states), each when
    given."""
    if h_zero.ndim != 3 or h_icl.shape != h_zero.shape or h_zero.shape[0] != labels.shape[0]:
        raise ValueError(f"h_zero {tuple(h_zero.shape)} and h_icl {tuple(h_icl.shape)} must be (P, L+1, d) alike, "
                         f"with P = {labels.shape[0]} labels")
    for name, h in (("h_cf", h_cf), ("h_cf_zero", h_cf_zero)):
        if h is not None and h.shape != h_zero.shape:
            raise ValueError(f"{name} must have the shape of h_zero {tuple(h_zero.shape)}, got {tuple(h.shape)}")
    L = h_zero.shape[1] - 1
    if L not in query_layers:
        raise ValueError(f"query_layers must include the final layer {L}, got {list(query_layers)}")
    qi = list(query_layers).index(L)
    hit = lambda s: s.correct(label_token_ids, labels)
    c_bar = lens.context_vector(h_icl, h_zero)
    vectors = {"c_bar": c_bar, "random": lens.norm_matched_random(c_bar, generator),
               "label_prior": baselines.label_prior_vector(unembed, label_token_ids, c_bar.norm(dim=-1))}
    grid = dict(lambdas=list(lambdas), context_layers=list(context_layers))
    acc, mass = {}, {}
    for name, v in vectors.items():   # the controls only at the final query layer
        st = lens.additive_retrieval(unembed, h_zero, v, label_token_ids, **grid,
                                     query_layers=list(query_layers) if name == "c_bar" else [L])
        j = qi if name == "c_bar" else 0
        correct = hit(st)
        acc[name], mass[name] = correct[:, j], st.label_mass[:, j]
        if name == "c_bar":
            acc_all = correct
    zero = lens.decode_stats(unembed, h_zero[:, L], label_token_ids)
    icl = lens.decode_stats(unembed, h_icl[:, L], label_token_ids)
    alone = lens.decode_stats(unembed, c_bar[list(context_layers)], label_token_ids)   # the limit lambda -> infinity
    base = {"zero-shot": hit(zero),
            "zero-shot, label-restricted": baselines.label_restricted_correct(zero.label_logits, labels),
            f"{k}-shot prompting": hit(icl), "majority answer": baselines.majority_correct(labels, reference=pool)}
    if h_cf_zero is not None:
        base["zero-shot, calibrated"] = baselines.calibrated_correct(
            zero.label_logits, lens.decode_stats(unembed, h_cf_zero[:, L], label_token_ids).label_logits, labels)
    if h_cf is not None:
        base[f"{k}-shot, calibrated"] = baselines.calibrated_correct(
            icl.label_logits, lens.decode_stats(unembed, h_cf[:, L], label_token_ids).label_logits, labels)
    answers = torch.as_tensor(label_token_ids)[labels]
    return CoupledGrid(k=k, acc=acc, mass=mass, acc_all=acc_all, base=base,
                       alone=(alone.argmax[:, None] == answers[None]).double(), labels=labels)


@dataclass
class BestSetting:
    """The in-sample best setting of :math:`\\bar c` on one grid, against the controls and the baselines.

    ``layer``/``lam``: indices of the best (context layer, coupling) of :math:`\\bar c` (first maximum in row-major
    order); ``prior_layer``/``prior_lam``: the label-prior vector's own best; ``rows``: per-query correctness by
    display name (the baselines, then the vectors); ``best_simple``: the baseline of highest accuracy among those
    that need no vector (ties: the first listed); ``paired``: :math:`\\bar c` at its best against k-shot prompting,
    the label-restricted zero-shot answer, the label-prior vector at its best, the majority answer and the
    strongest simple baseline (exact McNemar each)."""

    grid: CoupledGrid
    context_layers: list[int]
    lambdas: list[float]
    layer: int
    lam: int
    prior_layer: int
    prior_lam: int
    rows: dict[str, torch.Tensor] = field(repr=False)
    paired: dict[str, Comparison]
    best_simple: str

    @property
    def best(self) -> torch.Tensor:
        """Per-query correctness of :math:`\\bar c` at its best setting."""
        return self.grid.acc["c_bar"][:, self.layer, self.lam]

    def lines(self, dataset: str) -> list[str]:
        """The printed table: every row's accuracy with its Wilson 95% interval, then the paired comparisons."""
        return ([f"{dataset}, {self.grid.k} demonstration(s) per class"]
                + [f"  {name:>52}: {fmt_ci(accuracy_ci(v))}" for name, v in self.rows.items()]
                + [f"  paired, c_bar best {n.replace('_', ' ')}"
                   + (f" ({self.best_simple})" if n == "vs_best_simple" else "") + f": {c}"
                   for n, c in self.paired.items()])

    def record(self) -> dict:
        """The JSON record of this dataset and shot count (results file of chapter 08)."""
        g = self.grid
        return {"best_context_layer": self.context_layers[self.layer], "best_lambda": self.lambdas[self.lam],
                "label_prior_best": [self.context_layers[self.prior_layer], self.lambdas[self.prior_lam]],
                "accuracy": {n: list(accuracy_ci(v)) for n, v in self.rows.items()},
                "paired": {n: vars(c) | {"test": c.test} for n, c in self.paired.items()},
                "strongest_simple_baseline": self.best_simple,
                "accuracy_at_largest_lambda": g.acc["c_bar"][:, self.layer, -1].mean().item(),
                "mean_accuracy_grid": g.acc["c_bar"].mean(0).round(decimals=4),
                "mean_mass_grid": g.mass["c_bar"].mean(0).round(decimals=4),
                "random_accuracy_grid": g.acc["random"].mean(0).round(decimals=4),
                "label_prior_accuracy_grid": g.acc["label_prior"].mean(0).round(decimals=4),
                "best_accuracy_query_x_context": g.best_over_lambda().round(decimals=4)}

    def glue_values(self, dataset: str, tag: str) -> dict:
        """The numbers the text cites, by glue name ``{dataset}_{tag}_...`` without the ``coupled_`` prefix (``tag``
        ``"k1"`` etc., or ``"kmax"`` for the largest shot count): the paired comparisons as text, mean accuracies to
        3 decimals. The random vector's best accuracy over the grid (``rand_max``) only under ``k{k}``."""
        g, k = self.grid, self.grid.k
        out = {f"{dataset}_{tag}_{n}": str(c) for n, c in self.paired.items()}
        out[f"{dataset}_{tag}_best_simple"] = self.best_simple
        means = {"add": self.best, "icl": g.base[f"{k}-shot prompting"], "restricted": g.base["zero-shot, label-restricted"],
                 "prior": g.acc["label_prior"][:, self.prior_layer, self.prior_lam],
                 "lam10": g.acc["c_bar"][:, self.layer, -1], "alone": g.alone[self.layer],
                 "majority": g.base["majority answer"]}
        if tag != "kmax":
            means["ctrl"] = g.acc["random"][:, self.layer, self.lam]
        out |= {f"{dataset}_{tag}_{n}": round(v.mean().item(), 3) for n, v in means.items()}
        if tag != "kmax":
            out[f"{dataset}_{tag}_rand_max"] = round(g.acc["random"].mean(0).max().item(), 3)
        return out


def best_setting(grid: CoupledGrid, *, context_layers: Sequence[int], lambdas: Sequence[float],
                 seed: int = 0) -> BestSetting:
    """The best in-sample (context layer, coupling) of :math:`\\bar c` and of the label-prior vector on ``grid``
    (:func:`coupled_grid` with these ``context_layers`` and ``lambdas``), and the paired comparisons of
    :class:`BestSetting`, seeded with ``seed``."""
    C, K = len(context_layers), len(lambdas)
    if grid.acc["c_bar"].shape[1:] != (C, K):
        raise ValueError(f"grid has {tuple(grid.acc['c_bar'].shape[1:])} (context layers, lambdas); context_layers "
                         f"and lambdas give {(C, K)}")
    j, i = divmod(int(grid.acc["c_bar"].mean(0).argmax()), K)
    jp, ip = divmod(int(grid.acc["label_prior"].mean(0).argmax()), K)
    cl, lam = list(context_layers), list(lambdas)
    rows = dict(grid.base)
    rows[f"c_bar, best (c:{cl[j]}, lambda {lam[i]:g})"] = grid.acc["c_bar"][:, j, i]
    rows["label-prior vector, same setting"] = grid.acc["label_prior"][:, j, i]
    rows[f"label-prior vector, its best (c:{cl[jp]}, lambda {lam[ip]:g})"] = grid.acc["label_prior"][:, jp, ip]
    rows["random vector, same setting"] = grid.acc["random"][:, j, i]
    rows[f"c_bar alone (lambda -> infinity), c:{cl[j]}"] = grid.alone[j]
    best = grid.acc["c_bar"][:, j, i]
    simple = max(grid.base, key=lambda n: float(grid.base[n].mean()))    # the strongest baseline needing no vector
    paired = {"vs_prompting": compare(best, grid.base[f"{grid.k}-shot prompting"], seed=seed),
              "vs_restricted": compare(best, grid.base["zero-shot, label-restricted"], seed=seed),
              "vs_label_prior": compare(best, grid.acc["label_prior"][:, jp, ip], seed=seed),
              "vs_majority": compare(best, grid.base["majority answer"], seed=seed),
              "vs_best_simple": compare(best, grid.base[simple], seed=seed)}
    return BestSetting(grid=grid, context_layers=cl, lambdas=lam, layer=j, lam=i, prior_layer=jp, prior_lam=ip,
                       rows=rows, paired=paired, best_simple=simple)


def verdict_values(settings: Mapping[tuple[str, int], BestSetting]) -> dict[str, str]:
    """The chapter's verdicts over ``settings[dataset, k]``, by glue name without the ``coupled_`` prefix: where
    :math:`\\bar c` at its best is really better (or worse) than each reference, where it concentrates more than half
    the mass on the labels, and the verdict ladder of :func:`cgar_src.analysis.baselines.additive_verdict` per
    dataset and shot count (``verdict``, grouped by verdict in the order of
    :data:`cgar_src.analysis.baselines.VERDICTS`; ``verdict_detail``, each with its reason, every rung stated
    against the strongest simple baseline)."""
    def where(test: str, sign: int = 1) -> str:
        return fmt_list([f"{ds} ({k}-shot)" for (ds, k), s in settings.items()
                       if (s.paired[test].better if sign > 0 else s.paired[test].worse)])

    verdict = {f"{ds} k={k}": verdict_of(s) for (ds, k), s in settings.items()}
    text = "; ".join(f"{v} on {', '.join(n for n in verdict if verdict[n] == v)}"
                     for v in baselines.VERDICTS if v in verdict.values())
    return {"beats_prompting": where("vs_prompting"), "loses_prompting": where("vs_prompting", -1),
            "beats_restricted": where("vs_restricted"), "beats_prior": where("vs_label_prior"),
            "beats_majority": where("vs_majority"), "beats_best_simple": where("vs_best_simple"),
            "loses_best_simple": where("vs_best_simple", -1),
            "concentrates": fmt_list([f"{ds} ({k}-shot)" for (ds, k), s in settings.items() if s.grid.concentrates()]),
            "verdict": text,
            "verdict_detail": "; ".join(f"{ds} ({k}-shot): {verdict_of(s)}, {reason_of(s)}"
                                        for (ds, k), s in settings.items())}


def verdict_of(setting: BestSetting) -> str:
    """The verdict ladder (:func:`cgar_src.analysis.baselines.additive_verdict`) of one best setting, against the
    majority answer, the label-prior vector at its own best and the strongest simple baseline."""
    c = setting.paired
    return baselines.additive_verdict(c["vs_majority"], c["vs_label_prior"], c["vs_best_simple"])


def reason_of(setting: BestSetting) -> str:
    """Why :func:`verdict_of` gave its verdict (:func:`cgar_src.analysis.baselines.verdict_reason`)."""
    c = setting.paired
    return baselines.verdict_reason(c["vs_majority"], c["vs_label_prior"], c["vs_best_simple"], setting.best_simple)
