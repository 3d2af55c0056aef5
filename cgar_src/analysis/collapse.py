r"""Memory collapse: how in-context demonstrations concentrate the logit lens's retrieval onto the label set
(book chapter ``07_memory_collapse``, the paper's Figures 4, 8 and 9).

With the memories the rows of the unembedding :math:`W_U`, the retrieval distribution of a last-token state at layer
l is :math:`p^{(l)} = \mathrm{softmax}(W_U\,\mathrm{Norm}_{final}(h^{(l)}))` and the number of effectively active
memories is :math:`N_{eff} = \exp(H(p^{(l)}))` (chapter 07, equation ``logit-lens``). The chapter compares these
curves, and the probability mass on the label tokens :math:`\sum_{y} p^{(l)}_y`, between zero-shot and k-shot
prompts of the same queries:

* :func:`lens_curves`: :math:`N_{eff}` and the label mass at every layer, and the last layer's answers scored three
  ways (full-vocabulary argmax, label-restricted argmax, contextual calibration);
* :func:`last_layer_summary`, :func:`majority_summary` and :func:`last_layer_table`: the table of the last layer
  against the baselines;
* :func:`shot_effect`: the paired per-query effect of the demonstrations (the change of the label mass and of
  :math:`\log N_{eff}`, each with the exact sign test and a bootstrap interval for display; paired accuracy
  comparisons with the exact McNemar test) and the chapter's verdicts;
* :func:`headline_values` and :func:`verdict_values`: the numbers and verdicts the chapter's text cites.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..lm import Unembed
from . import baselines, lens
from .seeds import seed_mean, spread
from .stats import (
    Comparison,
    PermutationTest,
    SignTest,
    accuracy_ci,
    fmt_ci,
    fmt_list,
    ledger_entry,
    paired_test,
    sign_test,
)

__all__ = ["LensCurves", "lens_curves", "prompt_name", "last_layer_summary", "majority_summary", "last_layer_table",
           "ShotEffect", "shot_effect", "headline_values", "headline_spread", "spread_table", "LayerEffect",
           "layer_effects", "collapse_verdict", "accuracy_verdict", "verdict_values",
           "VERDICT_NAMES", "ACCURACY_KINDS"]

ACCURACY_KINDS = ("correct", "restricted", "calibrated")   # full vocabulary, label-restricted, calibrated


@dataclass
class LensCurves:
    """The logit lens of one prompt set: per query and layer ``(P, L+1)`` the effective number of memories and the
    label mass; per query ``(P,)`` the last layer's correctness scored over the full vocabulary (``correct``), over
    the label tokens only (``restricted``) and contextually calibrated (``calibrated``, None without content-free
    states)."""

    n_eff: torch.Tensor
    label_mass: torch.Tensor
    correct: torch.Tensor
    restricted: torch.Tensor
    calibrated: torch.Tensor | None = None


def lens_curves(unembed: Unembed, states: torch.Tensor, label_token_ids: list[int], labels: torch.Tensor,
                cf_states: torch.Tensor | None = None) -> LensCurves:
    r"""Decode states ``(P, L+1, d)`` at every layer through :math:`W_U\,\mathrm{Norm}_{final}` (chapter 07,
    equation ``logit-lens``) and score the last layer's answers against ``labels`` ``(P,)``. ``cf_states``
    ``(P, L+1, d)``: the same prompts with the content-free input; their last layer calibrates the label logits
    (:func:`cgar_src.analysis.baselines.calibrated_correct`)."""
    if states.ndim != 3 or states.shape[0] != labels.shape[0]:
        raise ValueError(f"states must be (P, L+1, d) with P = {labels.shape[0]} labels, got {tuple(states.shape)}")
    if cf_states is not None and cf_states.shape != states.shape:
        raise ValueError(f"cf_states must have the shape of states {tuple(states.shape)}, got {tuple(cf_states.shape)}")
    last = states.shape[1] - 1
    st = lens.decode_stats(unembed, states, label_token_ids)
    calibrated = None
    if cf_states is not None:
        cf = lens.decode_stats(unembed, cf_states[:, last], label_token_ids)
        calibrated = baselines.calibrated_correct(st.label_logits[:, last], cf.label_logits, labels)
    return LensCurves(n_eff=st.n_eff, label_mass=st.label_mass, correct=st.correct(label_token_ids, labels)[:, last],
                      restricted=baselines.label_restricted_correct(st.label_logits[:, last], labels),
                      calibrated=calibrated)


def prompt_name(key: int | str, random_label_shots: int) -> str:
    """How the chapter names a prompt set: ``0`` -> "zero-shot", ``k`` -> "k-shot", ``"random"`` -> "k-shot random"."""
    if key == "random":
        return f"{random_label_shots}-shot random"
    return "zero-shot" if key == 0 else f"{key}-shot"


def last_layer_summary(curves: LensCurves) -> dict:
    """The last layer of one prompt set: median :math:`N_{eff}` (2 decimals), mean label mass (4 decimals) and each
    available accuracy with its Wilson 95% interval (``accuracy_correct`` etc., ``[mean, low, high]``)."""
    row = dict(median_n_eff=round(curves.n_eff[:, -1].median().item(), 2),
               label_mass=round(curves.label_mass[:, -1].mean().item(), 4))
    for kind in ACCURACY_KINDS:
        if getattr(curves, kind) is not None:
            row[f"accuracy_{kind}"] = list(accuracy_ci(getattr(curves, kind)))
    return row


def majority_summary(labels: torch.Tensor, pool: torch.Tensor, label_words: Sequence[str]) -> dict:
    """The majority baseline of one dataset: always answering the majority class of the demonstration pool
    (``pool``, ``[accuracy, low, high]``, Wilson 95%, and its label word ``majority_label``); beside it, for
    reference only, the queries' own majority (``queries``: the best constant answer in hindsight, chosen on the
    queries it is scored on, never used as a baseline) and the queries' class shares."""
    words = list(label_words)
    if int(labels.max()) >= len(words) or int(pool.max()) >= len(words):
        raise ValueError(f"labels and pool must be class indices below len(label_words) = {len(words)}")
    shares = (torch.bincount(labels, minlength=len(words)) / len(labels)).tolist()
    return dict(pool=list(accuracy_ci(baselines.majority_correct(labels, reference=pool))),
                majority_label=words[baselines.majority_class(pool)],
                queries=list(accuracy_ci(baselines.majority_correct(labels, reference=labels))),
                queries_majority_label=words[baselines.majority_class(labels)], query_class_shares=shares)


TABLE_HEADER = (f"{'dataset':>7} {'prompt':>16} {'med N_eff':>9} {'mass':>6} {'accuracy (vocab)':>18} "
                f"{'label-restricted':>18} {'calibrated':>18}")


def last_layer_table(curves: Mapping[str, Mapping[int | str, LensCurves]], labels: Mapping[str, torch.Tensor],
                     pools: Mapping[str, torch.Tensor], label_words: Mapping[str, Sequence[str]], *,
                     shots: Sequence[int], random_label_shots: int) -> tuple[dict, list[str]]:
    """The chapter's last-layer table: ``curves[dataset][key]`` for every key of ``shots`` and ``"random"`` (where
    this demonstration set has the random-label control).
    Returns the summary (``"{dataset}_{key}"`` -> :func:`last_layer_summary`, ``"{dataset}_majority"`` ->
    :func:`majority_summary`) and the printed lines."""
    summary, lines = {}, [TABLE_HEADER]
    for ds, by_key in curves.items():
        for key in [k for k in (*shots, "random") if k in by_key]:   # "random": only in the sets that ran it
            row = summary[f"{ds}_{key}"] = last_layer_summary(by_key[key])
            cis = [fmt_ci(row[f"accuracy_{kind}"]) if f"accuracy_{kind}" in row else "-" for kind in ACCURACY_KINDS]
            lines.append(f"{ds:>7} {prompt_name(key, random_label_shots):>16} {row['median_n_eff']:9.1f} "
                         f"{row['label_mass']:6.3f} {cis[0]:>18} {cis[1]:>18} {cis[2]:>18}")
        maj = summary[f"{ds}_majority"] = majority_summary(labels[ds], pools[ds], label_words[ds])
        lines.append(f"{'':>7} majority answer: always '{maj['majority_label']}' (majority of the demonstration pool) "
                     f"{fmt_ci(maj['pool'])}; class shares of the queries "
                     f"{[round(s, 2) for s in maj['query_class_shares']]} (in hindsight, always "
                     f"'{maj['queries_majority_label']}' would score {fmt_ci(maj['queries'])})")
    return summary, lines


def headline_values(summary: Mapping[str, dict], datasets: Sequence[str], *, shots: Sequence[int],
                    random_label_shots: int) -> dict:
    """The numbers chapter 07's text cites, by glue name without the ``collapse_`` prefix: per dataset the median
    :math:`N_{eff}` zero-shot and at the largest shot count (1 decimal), label masses and accuracies (3 decimals),
    and the majority baseline."""
    k_max, k_min = max(shots), min(k for k in shots if k)
    out = {}
    for ds in datasets:
        s0, s1, sk = summary[f"{ds}_0"], summary[f"{ds}_{k_min}"], summary[f"{ds}_{k_max}"]
        maj = summary[f"{ds}_majority"]
        out |= {f"{ds}_majority": round(maj["pool"][0], 3), f"{ds}_majority_label": maj["majority_label"],
                f"{ds}_zero": round(s0["median_n_eff"], 1), f"{ds}_icl": round(sk["median_n_eff"], 1),
                f"{ds}_mass0": round(s0["label_mass"], 3), f"{ds}_mass": round(sk["label_mass"], 3)}
        if f"{ds}_random" in summary:            # the random-label control and the true labels of the same set
            rnd = summary[f"{ds}_random"]
            out |= {f"{ds}_random_mass": round(rnd["label_mass"], 3), f"{ds}_random_neff": round(rnd["median_n_eff"], 1),
                    f"{ds}_true1_mass": round(summary[f"{ds}_{random_label_shots}"]["label_mass"], 3)}
        for key, s in (("0", s0), ("1", s1), ("kmax", sk)):
            out[f"{ds}_acc{key}"] = round(s["accuracy_correct"][0], 3)
        out[f"{ds}_restricted0"] = round(s0["accuracy_restricted"][0], 3)
        if "accuracy_calibrated" in s0:
            out[f"{ds}_calibrated0"] = round(s0["accuracy_calibrated"][0], 3)
    return out | {"kmax": k_max}


def headline_spread(summaries: Sequence[Mapping[str, dict]], datasets: Sequence[str], *, shots: Sequence[int],
                    random_label_shots: int) -> dict:
    """:func:`headline_values` over demonstration sets (one last-layer summary per set, the same queries): each
    number as its mean and range over the sets (:func:`cgar_src.analysis.seeds.spread`, ``"0.520 (0.480-0.550 over
    3 sets)"``; a number every set shares, such as a zero-shot one, alone), with its own digits; words unchanged.
    The random-label control's numbers and the true-label mass beside them are taken over the sets that ran the
    control (the first set summarised must be one of them)."""
    per = [headline_values(s, datasets, shots=shots, random_label_shots=random_label_shots) for s in summaries]
    if not per:
        raise ValueError("summaries must hold one summary per demonstration set")
    digits = lambda name: 1 if name.endswith(("_zero", "_icl", "_neff")) else 3
    out = {}
    for name, v in per[0].items():
        if isinstance(v, str) or name == "kmax":
            out[name] = v
        else:   # over the sets that have it (the random-label control and its true labels: the sets that ran it)
            out[name] = spread([p[name] for p in per if name in p]).fmt(digits(name))
    return out


def spread_table(summaries: Sequence[Mapping[str, dict]], datasets: Sequence[str], *, shots: Sequence[int],
                 random_label_shots: int) -> list[str]:
    """The last-layer table over demonstration sets: per dataset and prompt set the median :math:`N_{eff}`, the
    label mass and the three accuracies, each as its mean and range over the sets (one summary per set, from
    :func:`last_layer_table`)."""
    head = (f"{'dataset':>7} {'prompt':>16} {'med N_eff':>22} {'mass':>24} {'accuracy (vocab)':>24} "
            f"{'label-restricted':>24} {'calibrated':>24}")
    lines = [head]
    for ds in datasets:
        for key in [*shots, "random"]:
            rows = [s[f"{ds}_{key}"] for s in summaries if f"{ds}_{key}" in s]   # "random": the sets that ran it
            if not rows:
                continue
            cells = [spread([r["median_n_eff"] for r in rows]).fmt(1), spread([r["label_mass"] for r in rows]).fmt(3)]
            cells += [spread([r[f"accuracy_{k}"][0] for r in rows]).fmt(3) if f"accuracy_{k}" in rows[0] else "-"
                      for k in ACCURACY_KINDS]
            lines.append(f"{ds:>7} {prompt_name(key, random_label_shots):>16} " + " ".join(f"{c:>24}" for c in cells))
    return lines


@dataclass
class ShotEffect:
    """The paired effect of the demonstrations on one dataset's queries (chapter 07, "What the demonstrations change").

    ``mass_change`` and ``log_n_eff_change``: the last layer's per-query change from zero-shot to ``k_max`` shots
    (:class:`cgar_src.analysis.stats.SignTest`: mean, bootstrap 95% interval, exact sign test);
    ``true_minus_random_mass``: true minus random labels at ``random_shots`` shots (likewise); ``accuracy``: paired
    comparisons (exact McNemar) of the ``k_max``-shot full-vocabulary accuracy with the label-restricted zero-shot
    answer, the majority answer (the demonstration pool's majority class) and (when scored) calibrated zero-shot;
    ``steps``: the label-restricted accuracy from each shot count to the next; ``kmax_mass``: the ``k_max``-shot
    mean label mass."""

    k_max: int
    random_shots: int
    mass_change: SignTest
    log_n_eff_change: SignTest
    true_minus_random_mass: SignTest
    accuracy: dict[str, Comparison | PermutationTest]
    steps: dict[str, Comparison | PermutationTest]
    kmax_mass: float

    @property
    def collapse(self) -> bool:
        """The collapse is real: the label mass really rises and :math:`\\log N_{eff}` really falls (both exact sign
        tests reject, :func:`collapse_verdict`)."""
        return collapse_verdict(self.mass_change, self.log_n_eff_change, self.kmax_mass)["collapse"]

    def verdict(self) -> dict[str, bool]:
        """The chapter's per-dataset verdicts (:func:`collapse_verdict` and :func:`accuracy_verdict`): a real
        collapse; onto the label set (real, and the label tokens hold at least half the mass); random labels
        concentrate recall really more than true ones / true labels really more than random ones; the demonstrations
        really beat the label-restricted zero-shot answer / the majority answer; a step to more shots makes the
        label-restricted accuracy really worse."""
        return (collapse_verdict(self.mass_change, self.log_n_eff_change, self.kmax_mass, self.true_minus_random_mass)
                | accuracy_verdict(self.accuracy["kmax_vs_restricted0"], list(self.steps.values()))
                | {"beats_majority": self.accuracy["kmax_vs_majority"].better})

    def record(self) -> dict:
        """The JSON record of the paired tests (results file of chapter 07)."""
        rec = lambda c: vars(c) | {"test": c.test}
        return {"label_mass_change": rec(self.mass_change), "log_n_eff_change": rec(self.log_n_eff_change),
                "true_minus_random_label_mass": rec(self.true_minus_random_mass),
                **{n: rec(c) for n, c in self.accuracy.items()},
                "label_restricted_shot_steps": {n: rec(c) for n, c in self.steps.items()}}

    def ledger_tests(self, dataset: str) -> list[dict]:
        """The tests the claims ledger's rows ``collapse`` and ``collapse_accuracy`` rest on for this dataset
        (:func:`cgar_src.analysis.stats.ledger_entry`): the label-mass and :math:`\\log N_{eff}` changes and true
        minus random labels (sign tests; the label-mass entry also carries ``kmax_label_mass``), the ``k_max``-shot
        answer against the label-restricted zero-shot answer and each shot step (McNemar)."""
        k = self.k_max
        out = [ledger_entry("collapse", "mass_change", dataset, f"label mass, {k}-shot minus zero-shot",
                            self.mass_change) | {"kmax_label_mass": self.kmax_mass},
               ledger_entry("collapse", "log_n_eff_change", dataset, f"log N_eff, {k}-shot minus zero-shot",
                            self.log_n_eff_change),
               ledger_entry("collapse", "true_minus_random", dataset,
                            f"label mass, true minus random labels ({self.random_shots}-shot)",
                            self.true_minus_random_mass),
               ledger_entry("collapse_accuracy", "vs_restricted", dataset,
                            f"{k}-shot accuracy minus label-restricted zero-shot", self.accuracy["kmax_vs_restricted0"])]
        return out + [ledger_entry("collapse_accuracy", "shot_step", dataset,
                                   f"label-restricted accuracy, {n.replace('_to_', ' -> ')} shots", c)
                      for n, c in self.steps.items()]

    def lines(self, dataset: str) -> list[str]:
        """The printed report of one dataset."""
        return ([f"{dataset}: {self.k_max}-shot minus zero-shot: label mass {self.mass_change.fmt(3)}; "
                 f"log N_eff {self.log_n_eff_change.fmt(2)} -> collapse "
                 f"{'real' if self.collapse else 'not shown'}",
                 f"{'':>7}true minus random labels ({self.random_shots}-shot): label mass "
                 f"{self.true_minus_random_mass.fmt(3)}"]
                + [f"{'':>7}accuracy {n}: {c}" for n, c in self.accuracy.items()]
                + [f"{'':>7}label-restricted accuracy, {n.replace('_to_', ' -> ')} shots: {c}"
                   for n, c in self.steps.items()])

    def glue_values(self, dataset: str) -> dict[str, str]:
        """The dataset's comparisons as the text cites them, by glue name without the ``collapse_`` prefix."""
        return ({f"{dataset}_{n}": str(c) for n, c in self.accuracy.items()}
                | {f"{dataset}_shot_steps": "; ".join(f"{n.replace('_to_', ' to ')} shots {c}"
                                                      for n, c in self.steps.items()),
                   f"{dataset}_dmass": self.mass_change.fmt(3),
                   f"{dataset}_dneff": self.log_n_eff_change.fmt(2),
                   f"{dataset}_drand": self.true_minus_random_mass.fmt(3)})


def shot_effect(curves: Mapping[int | str, LensCurves] | Sequence[Mapping[int | str, LensCurves]],
                labels: torch.Tensor, pool: torch.Tensor, *, shots: Sequence[int], random_label_shots: int,
                seed: int = 0) -> ShotEffect:
    """Paired per-query comparisons of one dataset's prompt sets ``curves[key]`` (keys: every shot count of
    ``shots``, which holds 0, and ``"random"``): see :class:`ShotEffect`. ``labels`` ``(P,)`` scores the majority
    answer (scored against ``labels``; pass ``pool`` for the demonstration pool's labels, whose majority class it
    answers). All intervals are seeded with ``seed``.

    ``curves`` may also be a list, one mapping per demonstration set shown to the same queries: each prompt set is
    then averaged per query over the sets (:func:`cgar_src.analysis.seeds.seed_mean`) and every comparison is the
    pooled exact test with the query as its unit (:func:`cgar_src.analysis.stats.paired_test`: the sign test of the
    per-query mean difference; McNemar when there is one set). The random-label control (key ``"random"``) may be in
    some sets only (chapter 07 runs it on the first): true minus random labels is then pooled over those sets alone,
    each paired with its own true labels."""
    random_true = None   # the true labels of the sets that ran the random-label control
    if not isinstance(curves, Mapping):
        sets = list(curves)
        if not sets or not all(isinstance(c, Mapping) for c in sets):
            raise ValueError("curves must be a mapping of prompt sets or a non-empty list of them (one per seed)")
        with_random = [c for c in sets if "random" in c]
        curves = {key: seed_mean([c[key] for c in sets]) for key in sets[0] if key != "random"}
        if with_random:   # the control pairs with the true labels of the same sets
            curves["random"] = seed_mean([c["random"] for c in with_random])
            random_true = seed_mean([c[random_label_shots] for c in with_random])
    else:
        random_true = curves.get(random_label_shots)
    missing = [k for k in (0, random_label_shots, *shots, "random") if k not in curves]
    if missing:
        raise ValueError(f"curves lacks the prompt sets {missing} (keys: shots, which must hold 0, and 'random')")
    k_max = max(shots)
    z, kk, r1, rr = curves[0], curves[k_max], random_true, curves["random"]
    f64 = lambda x: x[:, -1].double()                     # the last layer, differences in float64
    d_mass = sign_test(f64(kk.label_mass) - f64(z.label_mass), seed=seed)
    d_neff = sign_test(torch.log(f64(kk.n_eff)) - torch.log(f64(z.n_eff)), seed=seed)
    d_rand = sign_test(f64(r1.label_mass) - f64(rr.label_mass), seed=seed)
    cmp = {"kmax_vs_restricted0": paired_test(kk.correct, z.restricted, seed=seed),
           "kmax_vs_majority": paired_test(kk.correct, baselines.majority_correct(labels, reference=pool), seed=seed)}
    if z.calibrated is not None:
        cmp["kmax_vs_calibrated0"] = paired_test(kk.correct, z.calibrated, seed=seed)
    # the label-restricted accuracy (fair to zero-shot, whose full-vocabulary argmax is rarely a label) from each
    # shot count to the next, paired on the same queries
    steps = {f"{a}_to_{b}": paired_test(curves[b].restricted, curves[a].restricted, seed=seed)
             for a, b in zip(shots, shots[1:])}
    return ShotEffect(k_max=k_max, random_shots=random_label_shots, mass_change=d_mass, log_n_eff_change=d_neff,
                      true_minus_random_mass=d_rand, accuracy=cmp, steps=steps,
                      kmax_mass=float(kk.label_mass[:, -1].mean()))


@dataclass
class LayerEffect:
    r"""The collapse test at one fixed layer ``layer`` (chapter 07, "At fixed layers"): per query the change of the
    label mass and of :math:`\log N_{eff}` from zero-shot to ``k`` shots (pooled over the demonstration sets with the
    query as its unit), each with the exact sign test, and the verdict ``collapse`` (both real, in the collapse's
    direction) or ``spreads`` (:math:`N_{eff}` really rises: the demonstrations spread recall over more memories
    there, whatever the label mass does)."""

    layer: int
    mass_change: SignTest
    log_n_eff_change: SignTest

    @property
    def collapse(self) -> bool:
        return bool(self.mass_change.better and self.log_n_eff_change.worse)

    @property
    def spreads(self) -> bool:
        return bool(self.log_n_eff_change.better)

    @property
    def word(self) -> str:
        return "collapse" if self.collapse else "N_eff rises" if self.spreads else "no real collapse"


def layer_effects(curves: Mapping[int | str, LensCurves] | Sequence[Mapping[int | str, LensCurves]], *, k: int,
                  layers: Sequence[int], seed: int = 0) -> list[LayerEffect]:
    r"""The collapse test of :func:`shot_effect` at each of ``layers`` (fixed in the chapter's parameters before
    looking, as fractions of the depth) instead of the last layer only: per query
    :math:`\Delta m^{(l)} = m^{(l)}_k - m^{(l)}_0` and :math:`\Delta \log N_{eff}^{(l)}`, averaged over the sets
    when ``curves`` is a list (one mapping per set, keys 0 and ``k``), each with the exact sign test."""
    if not isinstance(curves, Mapping):
        sets = list(curves)
        if not sets:
            raise ValueError("curves must be a mapping of prompt sets or a non-empty list of them (one per seed)")
        curves = {key: seed_mean([c[key] for c in sets]) for key in (0, k)}
    if 0 not in curves or k not in curves:
        raise ValueError(f"curves must hold the zero-shot (0) and {k}-shot prompt sets")
    n_layers = curves[0].n_eff.shape[1]
    bad = [layer for layer in layers if not (isinstance(layer, int) and 0 <= layer < n_layers)]
    if bad or not layers:
        raise ValueError(f"layers must be a non-empty list of layer indices in [0, {n_layers - 1}], got {list(layers)}")
    z, kk = curves[0], curves[k]
    out = []
    for layer in layers:
        dm = kk.label_mass[:, layer].double() - z.label_mass[:, layer].double()
        dn = torch.log(kk.n_eff[:, layer].double()) - torch.log(z.n_eff[:, layer].double())
        out.append(LayerEffect(layer=layer, mass_change=sign_test(dm, seed=seed),
                               log_n_eff_change=sign_test(dn, seed=seed)))
    return out


def collapse_verdict(mass_change, log_n_eff_change, kmax_mass: float, true_minus_random=None) -> dict[str, bool]:
    """Chapter 07's collapse verdicts of one dataset from its paired tests (anything with ``better``/``worse``:
    :class:`cgar_src.analysis.stats.SignTest`, or the same rebuilt with a Holm-adjusted p-value by the claims
    ledger): ``collapse``, the label mass really rises and :math:`\\log N_{eff}` really falls; ``onto_label_set``,
    that and the label tokens hold at least half the mass ``kmax_mass``; with ``true_minus_random`` also
    ``random_more`` (random labels concentrate recall really more than true ones) and ``true_more`` (really less)."""
    collapse = bool(mass_change.better and log_n_eff_change.worse)
    out = {"collapse": collapse, "onto_label_set": collapse and kmax_mass >= 0.5}
    if true_minus_random is not None:
        out |= {"random_more": bool(true_minus_random.worse), "true_more": bool(true_minus_random.better)}
    return out


def accuracy_verdict(vs_restricted, steps: Sequence) -> dict[str, bool]:
    """Chapter 07's accuracy verdicts of one dataset: ``beats_restricted``, the ``k_max``-shot answer really beats
    the label-restricted zero-shot answer; ``more_shots_worse``, some step to more shots makes the label-restricted
    accuracy really worse (each test's ``better``/``worse``)."""
    return {"beats_restricted": bool(vs_restricted.better), "more_shots_worse": any(c.worse for c in steps)}


def verdict_values(verdicts: Mapping[str, Mapping[str, bool]]) -> dict[str, str]:
    """The chapter's verdicts across datasets (``verdicts[dataset]`` from :meth:`ShotEffect.verdict`), as the text
    cites them, by glue name without the ``collapse_`` prefix: where the collapse onto the label set is supported or
    only partly (real, but the label set keeps less than half the mass), and which datasets each other verdict
    (of :data:`VERDICT_NAMES` present in every dataset's verdicts) holds on ("none" when on none)."""
    onto = [ds for ds, v in verdicts.items() if v["onto_label_set"]]
    toward = [ds for ds, v in verdicts.items() if v["collapse"] and not v["onto_label_set"]]
    parts = ([f"supported on {fmt_list(onto)}"] if onto else []) + (
        [f"only partly on {fmt_list(toward)} (real, but the label set keeps less than half the mass)"] if toward else [])
    names = [n for n in VERDICT_NAMES if all(n in v for v in verdicts.values())]
    return {"verdict": "; ".join(parts) or "not reproduced on this model",
            **{name: fmt_list([ds for ds, v in verdicts.items() if v[name]]) for name in names}}


VERDICT_NAMES = ("random_more", "true_more", "beats_restricted", "beats_majority", "more_shots_worse")
