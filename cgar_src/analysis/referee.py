r"""The referee's checks on held-out steering: every baseline, the paired verdict and the localisation of the
context vector (book chapter ``11_referee_checks``, label ``ch-referee``).

* :func:`baseline_rows`: per-query held-out correctness ``(P,)``, for ONE demonstration set, of the additive context
  vector :math:`W_U\mathrm{Norm}(h_{zero}^{(L)} + \lambda\bar c^{(l)})` (cross-fitted,
  :mod:`cgar_src.analysis.steering`; also scored label-restricted, and in its ``icl_mean`` variant
  :math:`\bar c = \mathrm{mean}\,h_{ICL}`) and of every baseline and control on the same queries: majority answer
  (the demonstration pool's majority class), zero-shot (full vocabulary, label-restricted, calibrated, with a fitted
  logit-space label prior, :func:`cgar_src.analysis.baselines.logit_prior_correct`), k-shot prompting (plain,
  calibrated, random labels), the random-label and label-prior vectors, a norm-matched random vector and the
  task-vector patch; with the additive and label-prior vectors at each context layer fixed in advance.
* :func:`pool_rows`: the per-query mean over demonstration sets of each row (the query stays the unit); a row
  computed on fewer sets (the task-vector patch) gets a matched additive row averaged over the same sets.
* :func:`paired_verdicts`: the additive vector against each alternative, paired
  (:func:`cgar_src.analysis.stats.paired_test`: exact McNemar for one set, the exact sign test of the per-query
  differences of set means otherwise; real when it rejects at 0.05), the strongest simple baseline per dataset and
  the verdict ladder (:func:`cgar_src.analysis.baselines.additive_verdict`), each rung stated against the strongest
  simple baseline (:func:`cgar_src.analysis.baselines.verdict_reason`), also at each fixed context layer.
* :func:`localisation`: the fraction :math:`\|Q^\top \bar c^{(l)}\|^2/\|\bar c^{(l)}\|^2` of the context vector in the
  span of the labels' readout directions (chance :math:`|Y|/d`), the accuracy of its in-span and out-of-span parts
  (also norm-matched) against :math:`\lambda`, and the median fraction of the retrieved pattern
  :math:`\xi^+ = W_U^\top p` in the span of the label rows; :func:`span_ratio_intervals`: the ratio to chance per
  layer with a bootstrap interval over queries.

The states come from the tasks layer; this module only needs their fields (:class:`TaskStatesLike`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..lm import LoadedModel, Unembed
from . import baselines, lens, steering
from .stats import Comparison, SignTest, fmt_list, ledger_entry, paired_test

__all__ = ["TaskStatesLike", "ADDITIVE", "ADDITIVE_RESTRICTED", "LOGIT_PRIOR", "ICL_MEAN", "LABEL_PRIOR",
           "against", "RESTRICTED_AGAINST", "baseline_rows", "row_keys", "matched_name", "pool_rows", "RefereeVerdicts",
           "paired_verdicts", "PARTS", "Localisation", "localisation", "localisation_text", "localisation_glue",
           "span_ratio_intervals", "span_interval_glue"]

ADDITIVE = "additive c_bar (held-out)"
ADDITIVE_RESTRICTED = "additive c_bar (held-out), label-restricted"
LOGIT_PRIOR = "zero-shot + fitted logit prior (held-out)"
ICL_MEAN = "additive icl_mean c_bar (held-out)"
LABEL_PRIOR = "label-prior vector (held-out)"
TASK_VECTOR = "task-vector patch (held-out)"

Test = Comparison | SignTest


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
    first :data:`N_SIMPLE` need no context vector (the simple baselines)."""
    return {"majority": "majority answer", "restricted": "zero-shot, label-restricted",
            "calibrated0": "zero-shot, calibrated", "logit_prior": LOGIT_PRIOR,
            "prompting": f"{k_shot}-shot prompting", "calibratedk": f"{k_shot}-shot, calibrated",
            "random_label": "additive random-label c_bar (held-out)", "label_prior": LABEL_PRIOR,
            "icl_mean": ICL_MEAN, "task_vector": TASK_VECTOR}


N_SIMPLE = 6

#: the label-restricted steered state is also paired with these label-restricted alternatives (keys of :func:`against`)
RESTRICTED_AGAINST = ("restricted", "logit_prior")


def baseline_rows(lm: LoadedModel, unembed: Unembed, ts: TaskStatesLike, random_label: TaskStatesLike | None,
                  cf_zero: torch.Tensor, *, pool: torch.Tensor, k_shot: int, lambdas: list[float], context_layers: list[int],
                  patch_layers: list[int], n_folds: int = 2, seed: int = 0, batch_size: int = 8,
                  cache_root=None, task_vector: bool = True
                  ) -> tuple[dict[str, torch.Tensor], dict[str, list[dict]], dict[str, dict[int, torch.Tensor]]]:
    """For one demonstration set: held-out correctness ``(P,)`` of the additive vector and every baseline (module
    docstring), by row name; the settings chosen on each fitting fold (additive, random-label, label-prior,
    icl_mean, task vector); and the additive and label-prior vectors' held-out correctness at each context layer
    of ``context_layers`` fixed in advance (``{"additive": {l: (P,)}, "label_prior": {l: (P,)}}``).

    ``ts``: the k-shot states with the set's content-free states ``h_cf`` (its demonstrations, input "N/A");
    ``random_label``: the same queries with the set's labels permuted (``None``: the random-label rows are absent,
    as :func:`pool_rows` expects of a set that did not run the control); ``cf_zero``: the zero-shot content-free
    prompt's final-layer state ``(P, d)`` or ``(d,)``; ``pool``: the class labels of the demonstration pool, whose
    majority class is the majority answer. Everything fitted is fitted on the other fold. ``task_vector=False``
    skips the task-vector patch (the only row that runs the model), whose row is then absent."""
    L = lm.n_layers
    for name, st in (("ts", ts), ("random_label", random_label)):
        if st is None:
            continue
        if st.h_icl is None or st.h_zero.shape != st.h_icl.shape or st.h_zero.shape[1] != L + 1:
            raise ValueError(f"{name} must hold zero-shot and k-shot states (P, {L + 1}, d) of one shape")
    if ts.h_cf is None:
        raise ValueError("ts must hold the content-free states h_cf (task_states(..., content_free=True))")
    if random_label is not None and random_label.h_zero.shape[0] != ts.h_zero.shape[0]:
        raise ValueError("random_label must hold the same queries as ts")
    dec = lambda h: lens.decode_stats(unembed, h, ts.label_ids)
    hit = lambda st: st.correct(ts.label_ids, ts.labels)
    zero, icl = dec(ts.h_zero[:, L]), dec(ts.h_icl[:, L])
    grid = dict(lambdas=lambdas, context_layers=context_layers, query_layer=L, n_folds=n_folds, seed=seed)
    add = steering.heldout_additive(unembed, ts.h_zero, ts.h_icl, ts.labels, ts.label_ids, **grid)
    prior = steering.heldout_additive(unembed, ts.h_zero, ts.h_icl, ts.labels, ts.label_ids, **grid,
                                      transform=lambda c: baselines.label_prior_vector(unembed, ts.label_ids,
                                                                                       c.norm(dim=-1)))
    mean_icl = steering.heldout_additive(unembed, ts.h_zero, ts.h_icl, ts.labels, ts.label_ids, **grid,
                                         variant="icl_mean")
    folds = steering.folds_of(ts.h_zero.shape[0], n_folds, seed)
    rows = {
        "majority answer": baselines.majority_correct(ts.labels, reference=pool),
        "zero-shot": hit(zero),
        "zero-shot, label-restricted": baselines.label_restricted_correct(zero.label_logits, ts.labels),
        "zero-shot, calibrated": baselines.calibrated_correct(zero.label_logits, dec(cf_zero).label_logits, ts.labels),
        LOGIT_PRIOR: baselines.logit_prior_correct(zero.label_logits, ts.labels, folds=folds),
        f"{k_shot}-shot prompting": hit(icl),
        f"{k_shot}-shot, calibrated": baselines.calibrated_correct(icl.label_logits, dec(ts.h_cf[:, L]).label_logits,
                                                                   ts.labels),
        ADDITIVE: add.correct,
        ADDITIVE_RESTRICTED: add.restricted_correct,
        LABEL_PRIOR: prior.correct,
        ICL_MEAN: mean_icl.correct,
        "norm-matched random vector": add.control_correct,
    }
    choices = {"additive": add.choices, "label_prior": prior.choices, "icl_mean": mean_icl.choices}
    if random_label is not None:
        rand = steering.heldout_additive(unembed, random_label.h_zero, random_label.h_icl, ts.labels, ts.label_ids,
                                         **grid)
        rows[f"random-label {k_shot}-shot prompting"] = hit(dec(random_label.h_icl[:, L]))
        rows["additive random-label c_bar (held-out)"] = rand.correct
        choices["random_label"] = rand.choices
    if task_vector:
        tv = steering.heldout_task_vector(lm, unembed, ts.zero_prompts, ts.h_icl, ts.labels, ts.label_ids,
                                          layers=patch_layers, n_folds=n_folds, seed=seed, batch_size=batch_size,
                                          cache_root=cache_root)
        rows[TASK_VECTOR] = tv.correct
        choices["task_vector"] = tv.choices
    return rows, choices, {"additive": add.by_layer, "label_prior": prior.by_layer}


def row_keys(k_shot: int) -> dict[str, str]:
    """Row name of :func:`baseline_rows` -> the short key the chapter glues its accuracy under."""
    return {"majority answer": "majority", "zero-shot": "zero", "zero-shot, label-restricted": "restricted",
            "zero-shot, calibrated": "calibrated0", LOGIT_PRIOR: "logit_prior", f"{k_shot}-shot prompting": "prompting",
            f"{k_shot}-shot, calibrated": "calibratedk", f"random-label {k_shot}-shot prompting": "random_prompting",
            ADDITIVE: "additive", ADDITIVE_RESTRICTED: "additive_restricted",
            "additive random-label c_bar (held-out)": "random_label", LABEL_PRIOR: "label_prior", ICL_MEAN: "icl_mean",
            "norm-matched random vector": "random_vector", TASK_VECTOR: "task_vector"}


def matched_name(name: str) -> str:
    """The row of the additive vector averaged over the same sets as row ``name`` (:func:`pool_rows`)."""
    return f"{ADDITIVE}, on the sets of: {name}"


def pool_rows(per_set: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    r"""The per-query mean over demonstration sets, :math:`\bar a_i = \frac1S\sum_s a_{s,i}`, of every row of
    ``per_set`` (one :func:`baseline_rows` dict per set, all on the same queries), in the first set's order. A row
    present in only some sets is averaged over those, and the additive vector averaged over the same sets is added
    as :func:`matched_name` (so that the pair is compared on the same sets). Rows that do not depend on the set
    (zero-shot ones) come out unchanged."""
    per_set = list(per_set)
    if not per_set or ADDITIVE not in per_set[0]:
        raise ValueError(f"per_set must be a non-empty list of row dicts that all hold {ADDITIVE!r}")
    names = list(dict.fromkeys(n for r in per_set for n in r))
    out = {}
    for n in names:
        have = [r for r in per_set if n in r]
        if len({tuple(r[n].shape) for r in have}) != 1 or have[0][n].shape != per_set[0][ADDITIVE].shape:
            raise ValueError(f"row {n!r} must score the same queries in every set")
        out[n] = torch.stack([r[n].double() for r in have]).mean(0)
        if len(have) < len(per_set):
            if any(ADDITIVE not in r for r in have):
                raise ValueError(f"every set that holds {n!r} must hold {ADDITIVE!r}")
            out[matched_name(n)] = torch.stack([r[ADDITIVE].double() for r in have]).mean(0)
    return out


@dataclass
class RefereeVerdicts:
    """The additive vector against every alternative (``paired[ds, key]``), its label-restricted accuracy against
    the label-restricted alternatives (``restricted[ds, key]``), the strongest simple baseline per dataset, the
    verdict (with its reason) per dataset, and the verdict at each fixed context layer (``by_layer[ds, l]``)."""

    names: dict[str, str]
    paired: dict[tuple[str, str], Test]
    best_simple: dict[str, str]
    verdict: dict[str, str]
    why: dict[str, str]
    restricted: dict[tuple[str, str], Test] = field(default_factory=dict)
    by_layer: dict[tuple[str, int], dict] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return list(self.best_simple)

    def simple(self, ds: str) -> Test:
        """The additive vector against the strongest simple baseline of ``ds``."""
        return self.paired[ds, {v: k for k, v in self.names.items()}[self.best_simple[ds]]]

    def wins(self, key: str, sign: int) -> list[str]:
        """Datasets where the difference to ``key`` is real and in favour of the additive vector (``sign=1``) or of
        the alternative (``sign=-1``)."""
        return [ds for ds in self.datasets if (self.paired[ds, key].better if sign > 0 else self.paired[ds, key].worse)]

    @property
    def verdict_text(self) -> str:
        return "; ".join(f"{ds}: {self.verdict[ds]} ({self.why[ds]})" for ds in self.datasets)

    def text(self) -> str:
        lines = []
        for ds in self.datasets:
            lines.append(ds)
            lines += [f"  additive c_bar minus {name:>42}: {self.paired[ds, key]}" for key, name in self.names.items()]
            lines += [f"  restricted c_bar minus {self.names[key]:>40}: {self.restricted[ds, key]}"
                      for key in RESTRICTED_AGAINST if (ds, key) in self.restricted]
        lines += [f"verdict: {self.verdict_text}"]
        if self.by_layer:
            lines.append("verdict at each context layer fixed in advance (lambda chosen on the fitting fold):")
            lines += [f"  {ds} c:{l}: {v['verdict']}" for (ds, l), v in self.by_layer.items()]
        return "\n".join(lines)

    def glue_values(self) -> dict[str, str]:
        """The values the chapter's text cites (names without the chapter's prefix)."""
        out = {f"{ds}_vs_{key}": str(self.paired[ds, key]) for ds in self.datasets for key in self.names}
        out |= {f"{ds}_restricted_vs_{key}": str(c) for (ds, key), c in self.restricted.items()}
        for key in self.names:
            out |= {f"wins_{key}": fmt_list(self.wins(key, 1)), f"losses_{key}": fmt_list(self.wins(key, -1))}
        for key in RESTRICTED_AGAINST:
            tests = {ds: self.restricted[ds, key] for ds in self.datasets if (ds, key) in self.restricted}
            out |= {f"restricted_wins_{key}": fmt_list([ds for ds, c in tests.items() if c.better]),
                    f"restricted_losses_{key}": fmt_list([ds for ds, c in tests.items() if c.worse])}
        for ds in self.datasets:
            c = self.simple(ds)
            out |= {f"{ds}_best_simple": self.best_simple[ds], f"{ds}_vs_best_simple": str(c),
                    f"{ds}_best_simple_real": "really better than" if c.better else
                    ("really worse than" if c.worse else "indistinguishable from"), f"{ds}_verdict": self.verdict[ds]}
            layers = [(l, v["verdict"]) for (d, l), v in self.by_layer.items() if d == ds]
            if layers:
                out[f"{ds}_verdict_by_layer"] = ", ".join(f"c:{l} {v}" for l, v in layers)
                out[f"{ds}_verdict_layer_changes"] = ("changes with the layer" if len({v for _, v in layers}) > 1
                                                      else "is the same at every layer")
        return out | {"verdict": self.verdict_text}

    def ledger_tests(self) -> list[dict]:
        """The tests the claims ledger rests on (:func:`cgar_src.analysis.stats.ledger_entry`): per dataset, row
        ``steering`` (the verdict ladder: against the majority answer, the label-prior vector and the strongest
        simple baseline, which carries its name as ``baseline``) and row ``label_mapping`` (against the
        random-label vector). Each is the held-out additive vector minus the alternative, pooled over the sets."""
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
        """Per dataset: every paired comparison (with its kind of test), the strongest simple baseline, the verdict
        and the verdict at each fixed context layer."""
        rec = lambda c: vars(c) | {"test": c.test}
        return {ds: {"paired_vs_additive": {key: rec(self.paired[ds, key]) for key in self.names},
                     "restricted_additive_vs": {k: rec(c) for (d, k), c in self.restricted.items() if d == ds},
                     "strongest_simple_baseline": {"name": self.best_simple[ds], "paired": rec(self.simple(ds))},
                     "verdict": {"verdict": self.verdict[ds], "why": self.why[ds]},
                     "verdict_by_context_layer": {l: v for (d, l), v in self.by_layer.items() if d == ds}}
                for ds in self.datasets}


def _ladder(vs_majority: Test, vs_prior: Test, vs_simple: Test, simple_name: str) -> tuple[str, str]:
    return (baselines.additive_verdict(vs_majority, vs_prior, vs_simple),
            baselines.verdict_reason(vs_majority, vs_prior, vs_simple, simple_name))


def paired_verdicts(rows: Mapping[str, Mapping[str, torch.Tensor]], *, k_shot: int, seed: int = 0,
                    by_layer: Mapping[str, Mapping[str, Mapping[int, torch.Tensor]]] | None = None) -> RefereeVerdicts:
    """Pair the additive vector with every alternative of :func:`against` on each dataset of ``rows`` (dataset ->
    rows of one set, :func:`baseline_rows`, or pooled over sets, :func:`pool_rows`) with
    :func:`cgar_src.analysis.stats.paired_test` (the query is the unit); where ``rows`` holds
    :func:`matched_name` of an alternative, that matched additive row is its A. The strongest simple baseline is
    the one of highest accuracy (ties: the first listed). The verdict
    (:func:`cgar_src.analysis.baselines.additive_verdict`): the vector must really beat the majority answer, the
    label-prior vector and the strongest simple baseline. ``by_layer`` (dataset -> the third value of
    :func:`baseline_rows`, pooled) adds the same ladder at each context layer fixed in advance."""
    names = against(k_shot)
    for ds, r in rows.items():
        missing = [n for n in [ADDITIVE, *names.values()] if n not in r]
        if missing:
            raise ValueError(f"rows[{ds!r}] lacks the rows {missing}")
    a_of = lambda r, name: r.get(matched_name(name), r[ADDITIVE])
    paired = {(ds, key): paired_test(a_of(r, name), r[name], seed=seed)
              for ds, r in rows.items() for key, name in names.items()}
    restricted = {(ds, key): paired_test(r[ADDITIVE_RESTRICTED], r[names[key]], seed=seed)
                  for ds, r in rows.items() if ADDITIVE_RESTRICTED in r for key in RESTRICTED_AGAINST}
    simple_names = list(names.values())[:N_SIMPLE]
    best = {ds: max(simple_names, key=lambda n: float(r[n].mean())) for ds, r in rows.items()}
    verdict, why, layers = {}, {}, {}
    key_of = {v: k for k, v in names.items()}
    for ds, r in rows.items():
        simple = paired[ds, key_of[best[ds]]]
        verdict[ds], why[ds] = _ladder(paired[ds, "majority"], paired[ds, "label_prior"], simple, best[ds])
        for l, add in (by_layer or {}).get(ds, {}).get("additive", {}).items():
            tests = {"vs_majority": paired_test(add, r["majority answer"], seed=seed),
                     "vs_label_prior": paired_test(add, by_layer[ds]["label_prior"][l], seed=seed),
                     "vs_best_simple": paired_test(add, r[best[ds]], seed=seed)}
            v, w = _ladder(*tests.values(), best[ds])
            layers[ds, l] = {"verdict": v, "why": w, "accuracy": float(add.mean()),
                             "label_prior_accuracy": float(by_layer[ds]["label_prior"][l].mean()),
                             "tests": {k: vars(c) | {"test": c.test} for k, c in tests.items()}}
    return RefereeVerdicts(names=names, paired=paired, best_simple=best, verdict=verdict, why=why,
                           restricted=restricted, by_layer=layers)


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
                 lambdas: list[float], layer: int, k_shot: int, retrieved: bool = True) -> Localisation:
    r"""The localisation measures of the module docstring, on :math:`\bar c` averaged over all queries (a
    description of the vector, not a held-out score); the causal split steers at context and query layer ``layer``.
    ``retrieved=False`` skips the retrieved pattern's fractions (the costly part: a streamed decode of every query),
    which the record then lacks."""
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
    median = lambda x: round(float(lens.span_fraction(x, rows_basis).median()), 4)
    record = {"cbar_fraction_by_layer": frac_c.round(decimals=4), "chance_fraction": chance,
              "ratio_to_chance_by_layer": (frac_c / chance).round(decimals=3),
              "norm_fraction_in_span_L": float(proj.norm() / c.norm()),
              "accuracy_by_lambda": {n: a.round(decimals=4).tolist() for n, a in sweep.items()},
              "label_mass_by_lambda": {n: m.round(decimals=4).tolist() for n, m in mass.items()}}
    if retrieved:
        xi = {n: lens.retrieved_pattern(unembed, h) for n, h in
              [("zero-shot", h_zero[:, layer]), ("whole c_bar, lambda 1", h_zero[:, layer] + c),
               (f"{k_shot}-shot prompting", h_icl[:, layer])]}
        record["retrieved_fraction"] = {n: median(x) for n, x in xi.items()}
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
              for ds in ds_all if "retrieved_fraction" in local[ds].record]
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
        if "retrieved_fraction" in f:
            out |= {f"{ds}_xi_icl": f["retrieved_fraction"][f"{k_shot}-shot prompting"],
                    f"{ds}_xi_zero": f["retrieved_fraction"]["zero-shot"]}
    below = [ds for ds, loc in local.items() if loc.record["ratio_to_chance_by_layer"][layer] < 1]
    return out | {"below_chance": ", ".join(below) if below else "none"}


@torch.no_grad()
def span_ratio_intervals(unembed: Unembed, diffs: torch.Tensor, label_ids: list[int], *, n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> dict[str, torch.Tensor]:
    r"""The span fraction of :math:`\bar c^{(l)} = \mathrm{mean}_i\, d_i^{(l)}` over chance,
    :math:`\frac{d}{|Y|}\|Q^\top \bar c^{(l)}\|^2/\|\bar c^{(l)}\|^2` (module docstring), per layer, with a
    percentile-bootstrap interval over the queries: ``diffs`` ``(P, L+1, d)`` are the per-query differences
    :math:`h_{ICL} - h_{zero}` (averaged over the demonstration sets, so that the query is the unit), resampled
    ``n_boot`` times with replacement. Returns ``ratio``, ``lo`` and ``hi``, each ``(L+1,)``."""
    if diffs.ndim != 3 or diffs.shape[0] < 2:
        raise ValueError(f"diffs must be per-query differences (P >= 2, L+1, d), got {tuple(diffs.shape)}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    P, n_layers, d = diffs.shape
    basis = lens.readout_basis(unembed, label_ids)
    chance = len(label_ids) / d
    ratio = lambda c: lens.span_fraction(c, basis) / chance
    gen = torch.Generator().manual_seed(seed)
    flat = diffs.float().reshape(P, -1)
    boots = []
    for start in range(0, n_boot, 250):
        idx = torch.randint(0, P, (min(250, n_boot - start), P), generator=gen)
        weights = torch.zeros(idx.shape[0], P).scatter_add_(1, idx, torch.ones(idx.shape)) / P
        boots.append(ratio((weights @ flat).reshape(-1, n_layers, d)))
    q = torch.quantile(torch.cat(boots), torch.tensor([(1 - level) / 2, (1 + level) / 2]), dim=0)
    return {"ratio": ratio(diffs.float().mean(0)), "lo": q[0], "hi": q[1]}


def span_interval_glue(intervals: Mapping[str, Mapping[str, torch.Tensor]], context_layers: Sequence[int],
                       layer: int) -> dict[str, str]:
    """What the chapter's text says about the span ratio's bootstrap intervals (:func:`span_ratio_intervals`, per
    dataset): the ratio and interval at ``layer`` and at the context layer of the largest ratio, the context layers
    whose interval lies above chance (lo > 1) and below it (hi < 1), and whether that call changes across the
    context layers fixed in advance (names without the chapter's prefix)."""
    out = {}
    fmt = lambda iv, l: f"{float(iv['ratio'][l]):.2f}x [{float(iv['lo'][l]):.2f}, {float(iv['hi'][l]):.2f}]"
    for ds, iv in intervals.items():
        above = [l for l in context_layers if float(iv["lo"][l]) > 1]
        below = [l for l in context_layers if float(iv["hi"][l]) < 1]
        top = max(context_layers, key=lambda l: float(iv["ratio"][l]))
        calls = {("above" if l in above else "below" if l in below else "chance") for l in context_layers}
        out |= {f"{ds}_ratio_ci_L": fmt(iv, layer), f"{ds}_ratio_ci_top": fmt(iv, top), f"{ds}_top_layer": f"c:{top}",
                f"{ds}_above": fmt_list([f"c:{l}" for l in above]), f"{ds}_below": fmt_list([f"c:{l}" for l in below]),
                f"{ds}_span_changes": "changes across the context layers" if len(calls) > 1
                else "is the same at every context layer"}
    return out
