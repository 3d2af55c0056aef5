r"""Separability against alignment, per layer, with their baselines (book chapter ``10_separability``, the paper's
Figure 7).

Per setting (dataset, shots) four held-out readouts of the label, per layer :math:`l` (:func:`layer_readouts`):

* ``probe``: a cross-validated logistic regression on :math:`h^{(l)}` (:func:`cgar_src.analysis.probes.probe_correct`);
* ``raw lens``: :math:`\arg\max_y z^{(l)}_y`, :math:`z^{(l)}_y = w_y^\top\mathrm{Norm}(h^{(l)})`;
* ``centred lens``: :math:`\arg\max_y (z^{(l)}_{iy} - \bar z^{(l)}_y)`, the mean over the other folds
  (:func:`cgar_src.analysis.probes.centred_lens_correct`);
* ``calibrated lens``: :math:`\arg\max_y (z^{(l)}_y - z^{(l)}_{cf,y})` with the content-free prompt's logits
  (:func:`cgar_src.analysis.baselines.calibrated_correct`).

:func:`assess` pairs them with a bag-of-words probe and the majority class (the demonstration pool's majority
label, scored on the queries) at a third of the depth, at the last layer and at any further layers fixed before
looking, scans the onsets (:mod:`cgar_src.analysis.onset`) and returns the chapter's report: its printed text, the
values its text cites and the summary it saves. A setting with demonstrations may hold one :class:`Readouts` per
demonstration set (the same queries under S sets): its readouts are then averaged per query over the sets
(:func:`pool_readouts`) and every comparison is ONE exact paired test with the query as the unit
(:func:`cgar_src.analysis.stats.paired_test`: McNemar for one set, the paired permutation test of the mean of the
per-query differences otherwise; real when it rejects at 0.05), while accuracies are given per set (mean and range,
:func:`cgar_src.analysis.seeds.spread`). The claim "separability early" holds in a setting when at :math:`L/3` the
probe really beats the bag of words, the majority class *and* the centred lens.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .._validate import indices
from ..lm import Unembed
from .baselines import calibrated_correct
from .onset import Onsets, onset_text, readout_onsets
from .probes import centred_lens_correct, label_logits, probe_correct
from .seeds import spread
from .stats import Comparison, PermutationTest, accuracy_ci, fmt_ci, fmt_list, ledger_entry, paired_test

__all__ = ["READOUTS", "SHORT", "COMPARISONS", "CLAIM", "CLAIM_ROLES", "NAMES", "Readouts", "ConstantAnswer",
           "layer_readouts", "pool_readouts", "layer_band", "accuracy_text", "setting_name", "paired_tests",
           "accuracy_table", "constant_answer_table", "Setting", "Separability", "assess"]

READOUTS = ("probe", "raw lens", "centred lens", "calibrated lens")
SHORT = {"probe": "probe", "raw lens": "raw", "centred lens": "cen", "calibrated lens": "cal"}   # names in the text
COMPARISONS = ("probe - bag of words", "probe - majority", "probe - centred lens", "centred lens - majority",
               "centred lens - raw lens")
CITED = {"probe - bag of words": "vs_lex", "probe - majority": "vs_maj", "probe - centred lens": "vs_cen",
         "centred lens - majority": "cen_vs_maj"}   # the comparisons the text cites, by their short names
CLAIM = ("probe - bag of words", "probe - majority", "probe - centred lens")   # "separability early" at L/3
CLAIM_ROLES = {"probe - bag of words": "vs_bag_of_words", "probe - majority": "vs_majority",
               "probe - centred lens": "vs_centred_lens"}   # their roles in the claims ledger
NAMES = {"sst2": "SST-2", "agnews": "AG-News", "trec": "TREC"}


@dataclass(frozen=True)
class ConstantAnswer:
    """What the raw lens answers at one layer: how many labels it uses, its most frequent answer, that answer's
    share of the queries and that label's base rate among them."""

    n_labels_used: int
    answer: int
    answer_share: float
    base_rate: float


@dataclass
class Readouts:
    """One setting's readouts: held-out correctness ``(P, L+1)`` per readout (:data:`READOUTS`), the raw lens's
    label logits ``(P, L+1, n_labels)`` and the labels ``(P,)``."""

    correct: dict[str, torch.Tensor]
    label_logits: torch.Tensor
    labels: torch.Tensor

    def constant_answer(self, layer: int) -> ConstantAnswer:
        """The raw lens's answers at ``layer`` (a lens whose accuracy is one label's base rate reads a bias, not
        information)."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.label_logits.shape[1]:
            raise ValueError(f"layer must be an index in [0, {self.label_logits.shape[1] - 1}], got {layer!r}")
        pred = self.label_logits[:, layer].argmax(-1)
        top = int(pred.mode().values)
        return ConstantAnswer(n_labels_used=len(pred.unique()), answer=top,
                              answer_share=float((pred == top).float().mean()),
                              base_rate=float((self.labels == top).float().mean()))


def layer_readouts(unembed: Unembed, states: torch.Tensor, cf_states: torch.Tensor, labels, label_ids: list[int], *,
                   n_folds: int = 5, C: float = 1.0, seed: int = 0) -> Readouts:
    """The four readouts of the module docstring on ``states`` ``(P, L+1, d)`` (the queries' last-token states),
    with ``cf_states`` ``(P, L+1, d)`` or ``(L+1, d)`` the content-free prompt's states for the calibrated lens; all
    cross-validated on the same folds (:func:`cgar_src.analysis.steering.folds_of`, ``scheme="kfold"``)."""
    y = indices(labels, "labels", what="class indices")
    if states.ndim != 3 or states.shape[0] != y.shape[0]:
        raise ValueError(f"states must be (P, L+1, d) with P = {y.shape[0]} labels, got {tuple(states.shape)}")
    if cf_states.shape not in (states.shape, states.shape[1:]):
        raise ValueError(f"cf_states must have shape {tuple(states.shape)} or {tuple(states.shape[1:])}, "
                         f"got {tuple(cf_states.shape)}")
    z, z_cf = label_logits(unembed, states, label_ids), label_logits(unembed, cf_states, label_ids)
    correct = {
        "probe": probe_correct(states, y, n_folds=n_folds, C=C, seed=seed, progress=False),
        "raw lens": (z.argmax(-1) == y[:, None]).float(),
        "centred lens": centred_lens_correct(z, y, n_folds=n_folds, seed=seed),
        "calibrated lens": torch.stack([calibrated_correct(z[:, l], z_cf[..., l, :], y) for l in range(z.shape[1])],
                                       1).float(),
    }
    return Readouts(correct=correct, label_logits=z, labels=y)


def _sets(r: Readouts | Sequence[Readouts]) -> list[Readouts]:
    sets = [r] if isinstance(r, Readouts) else list(r)
    if not sets or not all(isinstance(x, Readouts) for x in sets):
        raise ValueError("a setting must hold a Readouts or a non-empty list of them (one per demonstration set)")
    if any(not torch.equal(x.labels, sets[0].labels) or set(x.correct) != set(sets[0].correct) for x in sets[1:]):
        raise ValueError("the readouts of one setting must score the same queries with the same readouts")
    return sets


def pool_readouts(sets: Readouts | Sequence[Readouts]) -> Readouts:
    r"""One setting's readouts over S demonstration sets shown to the same queries: each readout's per-query
    correctness averaged over the sets, :math:`\bar a_i^{(l)} = \frac1S\sum_s a_{s,i}^{(l)}` (float64; one set is
    returned unchanged), the raw lens's label logits averaged too. The unit of every test on it stays the query."""
    sets = _sets(sets)
    if len(sets) == 1:
        return sets[0]
    return Readouts(correct={m: torch.stack([x.correct[m].double() for x in sets]).mean(0) for m in sets[0].correct},
                    label_logits=torch.stack([x.label_logits for x in sets]).mean(0), labels=sets[0].labels)


def layer_band(correct: torch.Tensor, *, n_boot: int = 1000, level: float = 0.95,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per layer, the mean of per-query outcomes ``correct`` ``(P, L+1)`` (0/1, or means over sets) and its
    percentile-bootstrap interval over queries at ``level`` (the same ``n_boot`` resamples of the queries for every
    layer): ``(mean, low, high)``, each ``(L+1,)``."""
    a = torch.as_tensor(correct, dtype=torch.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"correct must be (P, L+1) per-query, per-layer outcomes, got {tuple(a.shape)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    idx = torch.randint(a.shape[0], (n_boot, a.shape[0]), generator=torch.Generator().manual_seed(seed))
    means = a[idx].mean(1)                                               # (n_boot, L+1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q, dim=0)
    return a.mean(0), lo, hi


def accuracy_text(per_set: Sequence[torch.Tensor], digits: int = 3) -> str:
    """An accuracy as the chapter prints it: one set (0/1 outcomes) with its 95% Wilson interval
    (``0.650 [0.55, 0.74]``), several sets as the mean and range of the per-set accuracies
    (:meth:`cgar_src.analysis.seeds.Spread.fmt`)."""
    per_set = list(per_set)
    if not per_set:
        raise ValueError("per_set must hold one correctness vector per demonstration set")
    if len(per_set) == 1:
        return fmt_ci(accuracy_ci(per_set[0]), digits)
    return spread([float(torch.as_tensor(x, dtype=torch.float64).mean()) for x in per_set]).fmt(digits)


def setting_name(dataset: str, shots: int) -> str:
    """``"SST-2 zero-shot"``, ``"TREC 1-shot"``: a setting as the text names it."""
    return f"{NAMES.get(dataset, dataset)} {'zero-shot' if shots == 0 else f'{shots}-shot'}"


def paired_tests(correct: Mapping[str, torch.Tensor], lexical: torch.Tensor, majority: torch.Tensor, layer: int, *,
                 seed: int = 0) -> dict[str, Comparison | PermutationTest]:
    """The paired comparisons :data:`COMPARISONS` at ``layer`` (each A minus B, per query;
    :func:`cgar_src.analysis.stats.paired_test`: McNemar on 0/1 outcomes, the permutation test on means over sets)."""
    p, cen, raw = correct["probe"][:, layer], correct["centred lens"][:, layer], correct["raw lens"][:, layer]
    t = lambda a, b: paired_test(a, b, seed=seed)
    return {"probe - bag of words": t(p, lexical), "probe - majority": t(p, majority), "probe - centred lens": t(p, cen),
            "centred lens - majority": t(cen, majority), "centred lens - raw lens": t(cen, raw)}


def accuracy_table(results: Mapping[tuple[str, int], Readouts | Sequence[Readouts]],
                   lexical: Mapping[str, torch.Tensor], majority: Mapping[str, torch.Tensor],
                   layers: Mapping[int, str]) -> str:
    """Per layer of ``layers`` (index -> name), a table of accuracies (:func:`accuracy_text`: with a 95% Wilson
    interval for one set, as mean and range over several): majority class, bag of words and every readout, one row
    per setting. Each table starts with a blank line."""
    lines = []
    for layer, name in layers.items():
        lines += ["", f"at layer {layer} ({name})",
                  f"{'dataset':>7} {'k':>2} " + " ".join(f"{c:>30}" for c in ["majority", "bag of words", *READOUTS])]
        for (ds, k), r in results.items():
            sets = _sets(r)
            cells = [accuracy_text([majority[ds]]), accuracy_text([lexical[ds]])]
            cells += [accuracy_text([x.correct[m][:, layer] for x in sets]) for m in READOUTS]
            lines.append(f"{ds:>7} {k:2d} " + " ".join(f"{c:>30}" for c in cells))
    return "\n".join(lines)


def constant_answer_table(results: Mapping[tuple[str, int], Readouts | Sequence[Readouts]], layer: int,
                          name: str = "L/3") -> str:
    """What the raw lens answers at ``layer`` in every setting and demonstration set
    (:meth:`cgar_src.analysis.separability.Readouts.constant_answer`)."""
    lines = ["", f"raw lens at {name}: labels it answers, its most frequent answer's share, that label's base rate"]
    for (ds, k), r in results.items():
        sets = _sets(r)
        for i, x in enumerate(sets):
            c = x.constant_answer(layer)
            set_name = f" set {i}" if len(sets) > 1 else ""
            lines.append(f"{ds:>7} {k:2d}{set_name}  {c.n_labels_used} label(s)  answers '{c.answer}' for "
                         f"{c.answer_share:.2f} of the queries; base rate {c.base_rate:.2f}; raw lens accuracy "
                         f"{x.correct['raw lens'][:, layer].mean():.2f}")
    return "\n".join(lines)


@dataclass
class Setting:
    """One setting's comparisons at its layers (``tests[tag][name]``, tags ``"third"``, ``"last"`` and ``"l{layer}"``
    for each further layer fixed before looking), the calibrated lens against the majority class at L/3, the onsets
    and the raw lens's answers there (one :class:`ConstantAnswer` per demonstration set). With several sets every test
    is on the per-query means over the sets (:func:`pool_readouts`)."""

    dataset: str
    shots: int
    layers: dict[str, int]
    tests: dict[str, dict[str, Comparison | PermutationTest]]
    calibrated_vs_majority: Comparison | PermutationTest
    onsets: Onsets
    constants: list[ConstantAnswer]

    @property
    def name(self) -> str:
        return setting_name(self.dataset, self.shots)

    @property
    def n_sets(self) -> int:
        return len(self.constants)

    def claim_holds_at(self, tag: str) -> bool:
        """At the layer of ``tag`` the probe really beats the bag of words, the majority class and the centred lens."""
        if tag not in self.tests:
            raise ValueError(f"tag must be one of {list(self.tests)}, got {tag!r}")
        return all(self.tests[tag][n].better for n in CLAIM)

    @property
    def claim_holds(self) -> bool:
        """At L/3 the probe really beats the bag of words, the majority class and the centred lens."""
        return self.claim_holds_at("third")

    @property
    def centred_real(self) -> bool:
        """At L/3 the centred lens really beats the majority class."""
        return self.tests["third"]["centred lens - majority"].better

    @property
    def single_label(self) -> bool:
        """The raw lens answers one label for every query at L/3, in every set."""
        return all(c.n_labels_used == 1 for c in self.constants)

    def lines(self) -> list[str]:
        """The printed comparisons and onsets of this setting (ends with a blank line)."""
        ds, k = self.dataset, self.shots
        out = [f"{ds:>7} k={k} layer {self.layers[tag]:2d}  {n:<24} {c}" for tag, t in self.tests.items()
               for n, c in t.items()]
        out.append(f"{ds:>7} k={k} layer {self.layers['third']:2d}  {'calibrated lens - majority':<24} "
                   f"{self.calibrated_vs_majority}")
        on = self.onsets
        out += [f"{ds:>7} k={k} first layer where the probe beats bag of words and majority: {onset_text(on.probe)}; "
                f"where the centred lens beats majority: {onset_text(on.centred)} (raw lens: {onset_text(on.raw)})", ""]
        return out


@dataclass
class Separability:
    """Chapter 10's assessment of every setting (:func:`assess`): ``results`` the pooled readouts per setting,
    ``per_set`` the readouts of each demonstration set, ``checks`` the further layers fixed before looking."""

    settings: dict[tuple[str, int], Setting]
    results: Mapping[tuple[str, int], Readouts]
    per_set: Mapping[tuple[str, int], list[Readouts]]
    lexical: Mapping[str, torch.Tensor]
    majority: Mapping[str, torch.Tensor]
    third: int
    last: int
    checks: list[int] = field(default_factory=list)
    lists: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = list(self.settings.values())
        self.lists = {"holds": [x.name for x in s if x.claim_holds],
                      "ordered": [x.name for x in s if x.onsets.ordered],
                      "vacuous": [x.name for x in s if x.onsets.vacuous],
                      "beats_lex_third": [x.name for x in s if x.tests["third"]["probe - bag of words"].better],
                      "beats_lex_last": [x.name for x in s if x.tests["last"]["probe - bag of words"].better],
                      "cen_real": [x.name for x in s if x.centred_real],
                      "cal_real": [x.name for x in s if x.calibrated_vs_majority.better],
                      "cen_onsets": [f"{x.name} {onset_text(x.onsets.centred)}" for x in s]}

    @property
    def n_settings(self) -> int:
        return len(self.settings)

    @property
    def n_constant(self) -> int:
        """Settings in which the raw lens answers a single label for every query at L/3 (in every set)."""
        return sum(x.single_label for x in self.settings.values())

    @property
    def early_layers(self) -> dict[int, str]:
        """The layers the "separability early" claim is checked at, in order: L/3 (tag ``"third"``, the claims
        ledger's) and the further fixed layers."""
        tags = {self.third: "third"} | {layer: "last" if layer == self.last else f"l{layer}"
                                         for layer in self.checks if layer != self.third}
        return dict(sorted(tags.items()))

    def holds_at(self, layer: int) -> list[str]:
        """The settings in which the claim holds at ``layer`` (one of :attr:`early_layers`)."""
        if layer not in self.early_layers:
            raise ValueError(f"layer must be one of {list(self.early_layers)}, got {layer!r}")
        return [x.name for x in self.settings.values() if x.claim_holds_at(self.early_layers[layer])]

    def _early(self, holds: list[str]) -> str:
        n = self.n_settings
        return ("supported" if len(holds) == n else "not reproduced on this model" if not holds
                else "supported only on " + fmt_list(holds))

    @property
    def verdict_early(self) -> str:
        return self._early(self.lists["holds"])

    @property
    def early_by_layer(self) -> str:
        """The "separability early" verdict at every layer of :attr:`early_layers`."""
        return "; ".join(f"layer {layer}: {self._early(self.holds_at(layer))}" for layer in self.early_layers)

    @property
    def early_changes(self) -> list[str]:
        """The settings whose "separability early" decision differs across :attr:`early_layers`."""
        return [x.name for x in self.settings.values()
                if len({x.claim_holds_at(tag) for tag in self.early_layers.values()}) > 1]

    @property
    def verdict_order(self) -> str:
        """In how many settings both onsets exist and the probe's comes first; the settings where the centred lens
        never beats the majority class (nothing to precede) are named apart, never counted as support."""
        text = f"in {len(self.lists['ordered'])} of {self.n_settings} settings"
        vac = self.lists["vacuous"]
        return text + (f" (in {len(vac)} more, {fmt_list(vac)}, the centred lens never beats the majority class, so "
                       f"there is no alignment for separability to precede)" if vac else "")

    @property
    def verdict(self) -> str:
        return (f"separability early (at L/3, beyond a bag of words): {self.verdict_early}; separability before "
                f"bias-corrected alignment: {self.verdict_order}")

    def text(self) -> str:
        """Every comparison and onset, then the counts and the verdict, as the chapter prints them."""
        lines = ["paired differences (A minus B) [95% bootstrap interval over queries], paired test (exact McNemar "
                 "for one set; permutation test of the mean of the per-query means over several sets)"]
        for s in self.settings.values():
            lines += s.lines()
        holds, ordered, n = self.lists["holds"], self.lists["ordered"], self.n_settings
        lines += [f"raw lens answers a single label at L/3 in {self.n_constant} of {n} settings",
                  f"at L/3 the probe beats bag of words, majority and the centred lens in {len(holds)} of {n} "
                  f"settings: {fmt_list(holds)}",
                  f"the same at every fixed early layer: {self.early_by_layer}; the decision changes across these "
                  f"layers in: {fmt_list(self.early_changes)}",
                  f"probe beats both baselines before the centred lens beats majority in {len(ordered)} of {n} "
                  f"settings: {fmt_list(ordered)}; the probe has an onset but the centred lens never beats majority "
                  f"in: {fmt_list(self.lists['vacuous'])}",
                  f"verdict on the paper's Figure 7 claim: {self.verdict}"]
        return "\n".join(lines)

    def glue_values(self) -> dict:
        """The values the chapter's text cites, by name (without the chapter's prefix); floats unrounded;
        accuracies as text (``_ci``) with their Wilson interval for one set, their range over several."""
        out: dict = {}
        for (ds, k), s in self.settings.items():
            key, r, sets = f"{ds}_k{k}", self.results[ds, k].correct, self.per_set[ds, k]
            for m in READOUTS:
                for tag, layer in s.layers.items():
                    out[f"{key}_{SHORT[m]}_{tag}"] = float(r[m][:, layer].mean())
                    out[f"{key}_{SHORT[m]}_{tag}_ci"] = accuracy_text([x.correct[m][:, layer] for x in sets], 2)
            for tag, t in s.tests.items():
                for name, short in CITED.items():
                    out[f"{key}_{short}_{tag}"] = str(t[name])
            out[f"{key}_onset_probe"] = onset_text(s.onsets.probe)
            out[f"{key}_onset_cen"] = onset_text(s.onsets.centred)
            on = s.onsets.centred       # the centred lens's pooled accuracy at its onset
            out[f"{key}_cen_at_onset"] = "none" if on is None else float(r["centred lens"][:, on].mean())
            out[f"{key}_raw_share"] = sum(c.answer_share for c in s.constants) / s.n_sets
            out[f"{key}_raw_base"] = sum(c.base_rate for c in s.constants) / s.n_sets
        for ds in self.lexical:
            out[f"{ds}_lex"] = accuracy_ci(self.lexical[ds])[0]
            out[f"{ds}_lex_ci"] = fmt_ci(accuracy_ci(self.lexical[ds]), 2)
            out[f"{ds}_maj"] = accuracy_ci(self.majority[ds])[0]
        li = self.lists
        return out | {"L": self.last, "third": self.third, "total": self.n_settings, "const_third": self.n_constant,
                      "holds_third": len(li["holds"]), "holds_list": fmt_list(li["holds"]),
                      "ordered": len(li["ordered"]), "ordered_list": fmt_list(li["ordered"]),
                      "vacuous": len(li["vacuous"]), "vacuous_list": fmt_list(li["vacuous"]),
                      "beats_lex_third": fmt_list(li["beats_lex_third"]),
                      "beats_lex_last": fmt_list(li["beats_lex_last"]),
                      "cen_real_third": fmt_list(li["cen_real"]), "verdict": self.verdict,
                      "verdict_early": self.verdict_early, "verdict_order": self.verdict_order,
                      "early_by_layer": self.early_by_layer, "early_changes": fmt_list(self.early_changes),
                      "early_layers": ", ".join(str(layer) for layer in self.early_layers),
                      "cal_real_third": fmt_list(li["cal_real"]), "cen_onsets": "; ".join(li["cen_onsets"])}

    def ledger_tests(self) -> list[dict]:
        """The tests the claims ledger's row ``separability`` rests on (:func:`cgar_src.analysis.stats.ledger_entry`):
        per setting, the three comparisons of :data:`CLAIM` at L/3 (roles :data:`CLAIM_ROLES`; pooled over the sets,
        the query as the unit). The onset order is a scan over layers, not one test, and the further fixed layers
        are a robustness check: neither is in the ledger's family."""
        return [ledger_entry("separability", CLAIM_ROLES[n], s.name, f"{n} at layer {self.third}", s.tests["third"][n])
                for s in self.settings.values() for n in CLAIM]

    def summary(self) -> dict:
        """Everything the chapter saves with its run (per setting, per dataset's baselines, the verdicts)."""
        out: dict = {}
        for (ds, k), s in self.settings.items():
            r, sets = self.results[ds, k].correct, self.per_set[ds, k]
            out[f"{ds}_k{k}"] = {
                "n_sets": s.n_sets,
                **{f"{m}_by_layer": r[m].mean(0).round(decimals=4) for m in READOUTS},
                **{f"{m}_{tag}": accuracy_text([x.correct[m][:, layer] for x in sets])
                   for m in READOUTS for tag, layer in s.layers.items()},
                **{f"{m}_{tag}_per_set": [float(x.correct[m][:, layer].mean()) for x in sets]
                   for m in READOUTS for tag, layer in s.layers.items()},
                "comparisons": {tag: {n: vars(c) | {"test": c.test, "real": c.real} for n, c in t.items()}
                                for tag, t in s.tests.items()},
                "onset_probe_vs_bag_of_words_and_majority": s.onsets.probe,
                "onset_centred_lens_vs_majority": s.onsets.centred, "onset_raw_lens_vs_majority": s.onsets.raw,
                "raw_lens_at_third": [vars(c).copy() for c in s.constants], "claim_holds_at_third": s.claim_holds,
                "claim_holds_by_layer": {layer: s.claim_holds_at(tag) for layer, tag in self.early_layers.items()}}
        for ds in self.lexical:
            out[f"{ds}_baselines"] = {"bag_of_words_ci": list(accuracy_ci(self.lexical[ds])),
                                      "majority_ci": list(accuracy_ci(self.majority[ds]))}
        return out | {"claim_holds_at_third": self.lists["holds"], "probe_before_centred_lens": self.lists["ordered"],
                      "centred_lens_never_beats_majority": self.lists["vacuous"],
                      "claim_by_early_layer": self.early_by_layer, "claim_changes_across_layers": self.early_changes,
                      "verdict": self.verdict, "verdict_early": self.verdict_early, "verdict_order": self.verdict_order}


def assess(results: Mapping[tuple[str, int], Readouts | Sequence[Readouts]], lexical: Mapping[str, torch.Tensor],
           majority: Mapping[str, torch.Tensor], *, third: int, last: int, checks: Sequence[int] = (),
           seed: int = 0) -> Separability:
    """Chapter 10's comparisons, onsets and verdict over every setting ``(dataset, shots)`` of ``results`` (one
    :class:`Readouts`, or one per demonstration set: then pooled per query, :func:`pool_readouts`), with the
    bag-of-words (``lexical``) and majority-class correctness ``(P,)`` per dataset, at L/3 (``third``), the last
    layer and the further layers ``checks`` fixed before looking."""
    if not results:
        raise ValueError("results must hold at least one setting (dataset, shots) -> Readouts")
    missing = sorted({ds for ds, _ in results} - (set(lexical) & set(majority)))
    if missing:
        raise ValueError(f"lexical and majority must hold every dataset of results; missing {missing}")
    per_set = {key: _sets(r) for key, r in results.items()}
    pooled = {key: pool_readouts(sets) for key, sets in per_set.items()}
    settings = {}
    for (ds, k), r in pooled.items():
        n_layers = r.label_logits.shape[1]
        for layer, name in [(third, "third"), (last, "last")] + [(c, "checks") for c in checks]:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
                raise ValueError(f"{name} must be a layer index in [0, {n_layers - 1}], got {layer!r}")
        layers = {"third": third, "last": last} | {f"l{c}": c for c in checks if c not in (third, last)}
        tests = {tag: paired_tests(r.correct, lexical[ds], majority[ds], layer, seed=seed)
                 for tag, layer in layers.items()}
        settings[ds, k] = Setting(
            dataset=ds, shots=k, layers=layers, tests=tests,
            calibrated_vs_majority=paired_test(r.correct["calibrated lens"][:, third], majority[ds], seed=seed),
            onsets=readout_onsets(r.correct, lexical[ds], majority[ds], seed=seed),
            constants=[x.constant_answer(third) for x in per_set[ds, k]])
    return Separability(settings=settings, results=pooled, per_set=per_set, lexical=lexical, majority=majority,
                        third=third, last=last, checks=[c for c in checks if c != third])
