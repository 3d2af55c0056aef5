r"""The referee's checks on held-out steering: every baseline, the paired verdict and the localisation of the
context vector (book chapter ``11_referee_checks``).

* :func:`baseline_rows`: per-query held-out correctness ``(P,)`` of the additive context vector
  :math:`W_U\mathrm{Norm}(h_{zero}^{(L)} + \lambda\bar c^{(l)})` (cross-fitted, :mod:`cgar_src.analysis.steering`) and
  of every baseline and control on the same queries: majority answer (the demonstration pool's majority class),
  zero-shot (full vocabulary, label-restricted,
  calibrated), k-shot prompting (plain, calibrated, random labels), the random-label and label-prior vectors, a
  norm-matched random vector and the task-vector patch.
* :func:`paired_verdicts`: the additive vector against each alternative, paired
  (:func:`cgar_src.analysis.stats.compare`: exact McNemar, real when it rejects at 0.05), the strongest simple
  baseline per dataset and the verdict ladder (:func:`cgar_src.analysis.baselines.additive_verdict`), each rung
  stated against the strongest simple baseline (:func:`cgar_src.analysis.baselines.verdict_reason`).
* :func:`localisation`: the fraction :math:`\|Q^\top \bar c^{(l)}\|^2/\|\bar c^{(l)}\|^2` of the context vector in the
  span of the labels' readout directions (chance :math:`|Y|/d`), the accuracy of its in-span and out-of-span parts
  (also norm-matched) against :math:`\lambda`, and the median fraction of the retrieved pattern
  :math:`\xi^+ = W_U^\top p` in the span of the label rows.

The states come from the tasks layer; this module only needs their fields (:class:`TaskStatesLike`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..lm import LoadedModel, Unembed
from . import baselines, lens, steering
from .stats import Comparison, compare, fmt_list, ledger_entry

__all__ = ["TaskStatesLike", "ADDITIVE", "against", "baseline_rows", "RefereeVerdicts", "paired_verdicts",
           "PARTS", "Localisation", "localisation", "localisation_text", "localisation_glue"]

ADDITIVE = "additive c_bar (held-out)"


class TaskStatesLike(Protocol):
    """The fields of :class:`cgar_src.tasks.icl.TaskStates` used here: states ``(P, L+1, d)``, labels, label tokens."""

    h_zero: torch.Tensor
    h_icl: torch.Tensor | None
    labels: torch.Tensor
    label_ids: list[int]
    zero_prompts: list[str]
    h_cf: torch.Tensor | None


def against(k_shot: int) -> dict[str, str]:
    """The alternatives the additive vector is paired with: short key -> row name of :func:`baseline_rows`. The
    first five need no vector (the simple baselines)."""
    return {"majority": "majority answer", "restricted": "zero-shot, label-restricted",
            "calibrated0": "zero-shot, calibrated", "prompting": f"{k_shot}-shot prompting",
            "calibratedk": f"{k_shot}-shot, calibrated", "random_label": "additive random-label c_bar (held-out)",
            "label_prior": "label-prior vector (held-out)", "task_vector": "task-vector patch (held-out)"}


N_SIMPLE = 5


def baseline_rows(lm: LoadedModel, unembed: Unembed, ts: TaskStatesLike, random_label: TaskStatesLike,
                  cf_zero: torch.Tensor, *, pool: torch.Tensor, k_shot: int, lambdas: list[float], context_layers: list[int],
                  patch_layers: list[int], n_folds: int = 2, seed: int = 0, batch_size: int = 8,
                  cache_root=None) -> tuple[dict[str, torch.Tensor], dict[str, list[dict]]]:
    """Held-out correctness ``(P,)`` of the additive vector and every baseline (module docstring), by row name, and
    the settings chosen on each fitting fold (additive, random-label, label-prior, task vector).

    ``ts``: the k-shot states with content-free states ``h_cf`` (that query's demonstrations, input "N/A");
    ``random_label``: the same queries with random-label demonstrations; ``cf_zero``: the zero-shot content-free
    prompt's final-layer state ``(P, d)`` or ``(d,)``; ``pool``: the class labels of the demonstration pool, whose
    majority class is the majority answer. Everything fitted is fitted on the other fold."""
    L = lm.n_layers
    for name, st in (("ts", ts), ("random_label", random_label)):
        if st.h_icl is None or st.h_zero.shape != st.h_icl.shape or st.h_zero.shape[1] != L + 1:
            raise ValueError(f"{name} must hold zero-shot and k-shot states (P, {L + 1}, d) of one shape")
    if ts.h_cf is None:
        raise ValueError("ts must hold the content-free states h_cf (task_states(..., content_free=True))")
    if random_label.h_zero.shape[0] != ts.h_zero.shape[0]:
        raise ValueError("random_label must hold the same queries as ts")
    dec = lambda h: lens.decode_stats(unembed, h, ts.label_ids)
    hit = lambda st: st.correct(ts.label_ids, ts.labels)
    zero, icl, rand_icl = dec(ts.h_zero[:, L]), dec(ts.h_icl[:, L]), dec(random_label.h_icl[:, L])
    grid = dict(lambdas=lambdas, context_layers=context_layers, query_layer=L, n_folds=n_folds, seed=seed)
    add = steering.heldout_additive(unembed, ts.h_zero, ts.h_icl, ts.labels, ts.label_ids, **grid)
    rand = steering.heldout_additive(unembed, random_label.h_zero, random_label.h_icl, ts.labels, ts.label_ids, **grid)
    prior = steering.heldout_additive(unembed, ts.h_zero, ts.h_icl, ts.labels, ts.label_ids, **grid,
                                      transform=lambda c: baselines.label_prior_vector(unembed, ts.label_ids,
                                                                                       c.norm(dim=-1)))
    tv = steering.heldout_task_vector(lm, unembed, ts.zero_prompts, ts.h_icl, ts.labels, ts.label_ids,
                                      layers=patch_layers, n_folds=n_folds, seed=seed, batch_size=batch_size,
                                      cache_root=cache_root)
    rows = {
        "majority answer": baselines.majority_correct(ts.labels, reference=pool),
        "zero-shot": hit(zero),
        "zero-shot, label-restricted": baselines.label_restricted_correct(zero.label_logits, ts.labels),
        "zero-shot, calibrated": baselines.calibrated_correct(zero.label_logits, dec(cf_zero).label_logits, ts.labels),
        f"{k_shot}-shot prompting": hit(icl),
        f"{k_shot}-shot, calibrated": baselines.calibrated_correct(icl.label_logits, dec(ts.h_cf[:, L]).label_logits,
                                                                   ts.labels),
        f"random-label {k_shot}-shot prompting": hit(rand_icl),
        ADDITIVE: add.correct,
        "additive random-label c_bar (held-out)": rand.correct,
        "label-prior vector (held-out)": prior.correct,
        "norm-matched random vector": add.control_correct,
        "task-vector patch (held-out)": tv.correct,
    }
    choices = {"additive": add.choices, "random_label": rand.choices, "label_prior": prior.choices,
               "task_vector": tv.choices}
    return rows, choices


@dataclass
class RefereeVerdicts:
    """The additive vector against every alternative (``paired[ds, key]``), the strongest simple baseline per
    dataset and the verdict (with its reason) per dataset."""

    names: dict[str, str]
    paired: dict[tuple[str, str], Comparison]
    best_simple: dict[str, str]
    verdict: dict[str, str]
    why: dict[str, str]

    @property
    def datasets(self) -> list[str]:
        return list(self.best_simple)

    def simple(self, ds: str) -> Comparison:
        """The additive vector against the strongest simple baseline of ``ds``."""
        return self.paired[ds, {v: k for k, v in self.names.items()}[self.best_simple[ds]]]

    def wins(self, key: str, sign: int) -> list[str]:
        """Datasets where the difference to ``key`` is real and positive (``sign=1``) or negative (``sign=-1``)."""
        return [ds for ds in self.datasets
                if self.paired[ds, key].real and (self.paired[ds, key].diff > 0) == (sign > 0)]

    @property
    def verdict_text(self) -> str:
        return "; ".join(f"{ds}: {self.verdict[ds]} ({self.why[ds]})" for ds in self.datasets)

    def text(self) -> str:
        lines = []
        for ds in self.datasets:
            lines.append(ds)
            lines += [f"  additive c_bar minus {name:>40}: {self.paired[ds, key]}" for key, name in self.names.items()]
        return "\n".join(lines + [f"verdict: {self.verdict_text}"])

    def glue_values(self) -> dict[str, str]:
        """The values the chapter's text cites (names without the chapter's prefix)."""
        out = {f"{ds}_vs_{key}": str(self.paired[ds, key]) for ds in self.datasets for key in self.names}
        for key in self.names:
            out |= {f"wins_{key}": fmt_list(self.wins(key, 1)), f"losses_{key}": fmt_list(self.wins(key, -1))}
        for ds in self.datasets:
            c = self.simple(ds)
            out |= {f"{ds}_best_simple": self.best_simple[ds], f"{ds}_vs_best_simple": str(c),
                    f"{ds}_best_simple_real": "really better than" if c.better else
                    ("really worse than" if c.real else "indistinguishable from")}
        return out | {"verdict": self.verdict_text}

    def ledger_tests(self) -> list[dict]:
        """The tests the claims ledger rests on (:func:`cgar_src.analysis.stats.ledger_entry`): per dataset, row
        ``steering`` (the verdict ladder: against the majority answer, the label-prior vector and the strongest
        simple baseline, which carries its name as ``baseline``) and row ``label_mapping`` (against the
        random-label vector). Each is the held-out additive vector minus the alternative."""
        out = []
        for ds in self.datasets:
            key_of = {v: k for k, v in self.names.items()}
            for role, key in (("vs_majority", "majority"), ("vs_label_prior", "label_prior"),
                              ("vs_best_simple", key_of[self.best_simple[ds]])):
                out.append(ledger_entry("steering", role, ds, f"{ADDITIVE} - {self.names[key]}", self.paired[ds, key])
                           | {"baseline": self.names[key]})
            out.append(ledger_entry("label_mapping", "vs_random_label", ds,
                                    f"{ADDITIVE} - {self.names['random_label']}", self.paired[ds, "random_label"]))
        return out

    def summary(self) -> dict[str, dict]:
        """Per dataset: every paired comparison, the strongest simple baseline, the verdict."""
        return {ds: {"paired_vs_additive": {key: vars(self.paired[ds, key]) for key in self.names},
                     "strongest_simple_baseline": {"name": self.best_simple[ds], "paired": vars(self.simple(ds))},
                     "verdict": {"verdict": self.verdict[ds], "why": self.why[ds]}} for ds in self.datasets}


def paired_verdicts(rows: Mapping[str, Mapping[str, torch.Tensor]], *, k_shot: int, seed: int = 0) -> RefereeVerdicts:
    """Pair the additive vector with every alternative of :func:`against` on each dataset of ``rows`` (dataset ->
    :func:`baseline_rows`); the strongest simple baseline is the one of highest accuracy (ties: the first listed).
    The verdict (:func:`cgar_src.analysis.baselines.additive_verdict`): the vector must really beat the majority
    answer, the label-prior vector and the strongest simple baseline."""
    names = against(k_shot)
    for ds, r in rows.items():
        missing = [n for n in [ADDITIVE, *names.values()] if n not in r]
        if missing:
            raise ValueError(f"rows[{ds!r}] lacks the rows {missing}")
    paired = {(ds, key): compare(r[ADDITIVE], r[name], seed=seed)
              for ds, r in rows.items() for key, name in names.items()}
    simple_names = list(names.values())[:N_SIMPLE]
    best = {ds: max(simple_names, key=lambda n: float(r[n].mean())) for ds, r in rows.items()}
    verdict, why = {}, {}
    for ds in rows:
        simple = paired[ds, {v: k for k, v in names.items()}[best[ds]]]
        verdict[ds] = baselines.additive_verdict(paired[ds, "majority"], paired[ds, "label_prior"], simple)
        why[ds] = baselines.verdict_reason(paired[ds, "majority"], paired[ds, "label_prior"], simple, best[ds])
    return RefereeVerdicts(names=names, paired=paired, best_simple=best, verdict=verdict, why=why)


PARTS = ("whole c_bar", "in-span part", "out-of-span part", "in-span, norm-matched", "out-of-span, norm-matched")


@dataclass
class Localisation:
    """One dataset's localisation measures (``record``, as saved: rounded per-layer fractions, ratios to chance,
    retrieved-pattern fractions, accuracies and label masses against lambda) and the accuracy sweeps ``(K,)`` per
    part of c_bar (:data:`PARTS`)."""

    record: dict
    sweep: dict[str, torch.Tensor]


@torch.no_grad()
def localisation(unembed: Unembed, h_zero: torch.Tensor, h_icl: torch.Tensor, labels, label_ids: list[int], *,
                 lambdas: list[float], layer: int, k_shot: int) -> Localisation:
    r"""The localisation measures of the module docstring, on :math:`\bar c` averaged over all queries (a
    description of the vector, not a held-out score); the causal split steers at context and query layer ``layer``."""
    if h_zero.ndim != 3 or h_icl.shape != h_zero.shape or not 0 <= layer < h_zero.shape[1]:
        raise ValueError(f"h_zero and h_icl must be states (P, L+1, d) of one shape and layer an index of their "
                         f"layers, got {tuple(h_zero.shape)}, {tuple(h_icl.shape)} and layer {layer!r}")
    n_layers = h_zero.shape[1]
    c_bar = lens.context_vector(h_icl, h_zero)
    basis = lens.readout_basis(unembed, label_ids)
    rows_basis = lens.readout_basis(unembed, label_ids, through_norm=False)
    frac_c = lens.span_fraction(c_bar, basis)
    chance = len(label_ids) / c_bar.shape[-1]
    c = c_bar[layer]
    proj = c @ basis @ basis.T
    rescale = lambda v: v * (c.norm() / v.norm())
    parts = dict(zip(PARTS, (c, proj, c - proj, rescale(proj), rescale(c - proj))))
    st = {n: lens.additive_retrieval(unembed, h_zero, v[None].expand(n_layers, -1), label_ids, lambdas=lambdas,
                                     context_layers=[layer], query_layers=[layer]) for n, v in parts.items()}
    sweep = {n: s.accuracy(label_ids, labels)[0, 0] for n, s in st.items()}        # (K,) per part
    mass = {n: s.label_mass[:, 0, 0].mean(0) for n, s in st.items()}
    xi = {n: lens.retrieved_pattern(unembed, h_zero[:, layer] + v) for n, v in
          [("zero-shot", torch.zeros_like(c)), ("whole c_bar, lambda 1", c)]}
    xi_icl = lens.retrieved_pattern(unembed, h_icl[:, layer])
    median = lambda x: round(float(lens.span_fraction(x, rows_basis).median()), 4)
    record = {"cbar_fraction_by_layer": frac_c.round(decimals=4), "chance_fraction": chance,
              "ratio_to_chance_by_layer": (frac_c / chance).round(decimals=3),
              "norm_fraction_in_span_L": float(proj.norm() / c.norm()),
              "retrieved_fraction": {**{n: median(x) for n, x in xi.items()},
                                     f"{k_shot}-shot prompting": median(xi_icl)},
              "accuracy_by_lambda": {n: a.round(decimals=4).tolist() for n, a in sweep.items()},
              "label_mass_by_lambda": {n: m.round(decimals=4).tolist() for n, m in mass.items()}}
    return Localisation(record=record, sweep=sweep)


def localisation_text(local: Mapping[str, Localisation], context_layers: Sequence[int], lambdas: Sequence[float],
                      layer: int) -> str:
    """The chapter's localisation tables: fraction of c_bar in the label span per context layer (and times chance),
    accuracy of each part against lambda, and the retrieved pattern's fraction in the label-row span."""
    ds_all = list(local)
    lines = [f"{'layer':>18}" + "".join(f"{ds:>24}" for ds in ds_all),
             f"{'':>18}" + "".join(f"{'fraction (x chance)':>24}" for ds in ds_all)]
    for l in context_layers:
        rec = [local[ds].record for ds in ds_all]
        lines.append(f"{l:>18}" + "".join(f"{r['cbar_fraction_by_layer'][l]:>14.4f} "
                                          f"({r['ratio_to_chance_by_layer'][l]:>6.2f}x)" for r in rec))
    lines += [f"{'chance |Y|/d':>18}" + "".join(f"{local[ds].record['chance_fraction']:>24.4f}" for ds in ds_all), "",
              f"accuracy at context layer c:{layer} against lambda {list(lambdas)}"]
    for ds in ds_all:
        lines += [f"{ds:>7} {n:>26}: " + " ".join(f"{x:.2f}" for x in a.tolist()) for n, a in local[ds].sweep.items()]
    lines.append("")
    lines += [f"{ds}: median fraction of W_U^T p in the label-row span: {local[ds].record['retrieved_fraction']}"
              for ds in ds_all]
    return "\n".join(lines)


def localisation_glue(local: Mapping[str, Localisation], context_layers: Sequence[int], layer: int,
                      k_shot: int) -> dict:
    """The values the chapter's text cites, rounded as it shows them (names without the chapter's prefix)."""
    out: dict = {}
    keys = dict(zip(PARTS, ("full", "in", "out", "in_nm", "out_nm")))
    for ds, loc in local.items():
        f = loc.record
        out |= {f"{ds}_frac_L": round(float(f["cbar_fraction_by_layer"][layer]), 4),
                f"{ds}_ratio_L": round(float(f["ratio_to_chance_by_layer"][layer]), 2),
                f"{ds}_ratio_max": round(float(f["ratio_to_chance_by_layer"][list(context_layers)].max()), 2)}
        out |= {f"{ds}_{keys[n]}": round(float(a.max()), 3) for n, a in loc.sweep.items()}
        out |= {f"{ds}_xi_icl": f["retrieved_fraction"][f"{k_shot}-shot prompting"],
                f"{ds}_xi_zero": f["retrieved_fraction"]["zero-shot"]}
    below = [ds for ds, loc in local.items() if loc.record["ratio_to_chance_by_layer"][layer] < 1]
    return out | {"below_chance": ", ".join(below) if below else "none"}
