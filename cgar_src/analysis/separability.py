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
label, scored on the queries) at a third of the depth and at the last layer (:func:`cgar_src.analysis.stats.compare`,
exact McNemar: real when it rejects at 0.05), scans the onsets (:mod:`cgar_src.analysis.onset`) and returns the
chapter's report: its printed text, the values its text cites and the summary it saves. The claim "separability
early" holds in a setting when at :math:`L/3` the probe really beats the bag of words, the majority class *and* the
centred lens.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .._validate import indices
from ..lm import Unembed
from .baselines import calibrated_correct
from .onset import Onsets, onset_text, readout_onsets
from .probes import centred_lens_correct, label_logits, probe_correct
from .stats import Comparison, accuracy_ci, compare, fmt_ci, fmt_list, ledger_entry

__all__ = ["READOUTS", "SHORT", "COMPARISONS", "CLAIM", "CLAIM_ROLES", "NAMES", "Readouts", "ConstantAnswer", "layer_readouts",
           "setting_name", "paired_tests", "accuracy_table", "constant_answer_table", "Setting",
           "Separability", "assess"]

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


def setting_name(dataset: str, shots: int) -> str:
    """``"SST-2 zero-shot"``, ``"TREC 1-shot"``: a setting as the text names it."""
    return f"{NAMES.get(dataset, dataset)} {'zero-shot' if shots == 0 else f'{shots}-shot'}"


def paired_tests(correct: Mapping[str, torch.Tensor], lexical: torch.Tensor, majority: torch.Tensor, layer: int, *,
                 seed: int = 0) -> dict[str, Comparison]:
    """The paired comparisons :data:`COMPARISONS` at ``layer`` (each a difference of accuracies, A minus B)."""
    p, cen, raw = correct["probe"][:, layer], correct["centred lens"][:, layer], correct["raw lens"][:, layer]
    return {"probe - bag of words": compare(p, lexical, seed=seed), "probe - majority": compare(p, majority, seed=seed),
            "probe - centred lens": compare(p, cen, seed=seed),
            "centred lens - majority": compare(cen, majority, seed=seed),
            "centred lens - raw lens": compare(cen, raw, seed=seed)}


def accuracy_table(results: Mapping[tuple[str, int], Readouts], lexical: Mapping[str, torch.Tensor],
                   majority: Mapping[str, torch.Tensor], layers: Mapping[int, str]) -> str:
    """Per layer of ``layers`` (index -> name), a table of accuracies with 95% Wilson intervals: majority class,
    bag of words and every readout, one row per setting. Each table starts with a blank line."""
    lines = []
    for layer, name in layers.items():
        lines += ["", f"at layer {layer} ({name})",
                  f"{'dataset':>7} {'k':>2} " + " ".join(f"{c:>18}" for c in ["majority", "bag of words", *READOUTS])]
        for (ds, k), r in results.items():
            cells = [majority[ds], lexical[ds]] + [r.correct[m][:, layer] for m in READOUTS]
            lines.append(f"{ds:>7} {k:2d} " + " ".join(f"{fmt_ci(accuracy_ci(c)):>18}" for c in cells))
    return "\n".join(lines)


def constant_answer_table(results: Mapping[tuple[str, int], Readouts], layer: int, name: str = "L/3") -> str:
    """What the raw lens answers at ``layer`` in every setting
    (:meth:`cgar_src.analysis.separability.Readouts.constant_answer`)."""
    lines = ["", f"raw lens at {name}: labels it answers, its most frequent answer's share, that label's base rate"]
    for (ds, k), r in results.items():
        c = r.constant_answer(layer)
        lines.append(f"{ds:>7} {k:2d}  {c.n_labels_used} label(s)  answers '{c.answer}' for {c.answer_share:.2f} "
                     f"of the queries; base rate {c.base_rate:.2f}; raw lens accuracy "
                     f"{r.correct['raw lens'][:, layer].mean():.2f}")
    return "\n".join(lines)


@dataclass
class Setting:
    """One setting's comparisons at the two layers (``tests[tag][name]``, tags ``"third"`` and ``"last"``), the
    calibrated lens against the majority class at the first of them, the onsets and the raw lens's answers there."""

    dataset: str
    shots: int
    layers: dict[str, int]
    tests: dict[str, dict[str, Comparison]]
    calibrated_vs_majority: Comparison
    onsets: Onsets
    constant: ConstantAnswer

    @property
    def name(self) -> str:
        return setting_name(self.dataset, self.shots)

    @property
    def claim_holds(self) -> bool:
        """At L/3 the probe really beats the bag of words, the majority class and the centred lens."""
        return all(self.tests["third"][n].better for n in CLAIM)

    @property
    def centred_real(self) -> bool:
        """At L/3 the centred lens really beats the majority class."""
        return self.tests["third"]["centred lens - majority"].better

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
    """Chapter 10's assessment of every setting (:func:`assess`)."""

    settings: dict[tuple[str, int], Setting]
    results: Mapping[tuple[str, int], Readouts]
    lexical: Mapping[str, torch.Tensor]
    majority: Mapping[str, torch.Tensor]
    third: int
    last: int
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
        """Settings in which the raw lens answers a single label for every query at L/3."""
        return sum(x.constant.n_labels_used == 1 for x in self.settings.values())

    @property
    def verdict_early(self) -> str:
        holds, n = self.lists["holds"], self.n_settings
        return ("supported" if len(holds) == n else "not reproduced on this model" if not holds
                else "supported only on " + fmt_list(holds))

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
        lines = ["paired differences of accuracy [95% paired-bootstrap interval], exact McNemar p"]
        for s in self.settings.values():
            lines += s.lines()
        holds, ordered, n = self.lists["holds"], self.lists["ordered"], self.n_settings
        lines += [f"raw lens answers a single label at L/3 in {self.n_constant} of {n} settings",
                  f"at L/3 the probe beats bag of words, majority and the centred lens in {len(holds)} of {n} "
                  f"settings: {fmt_list(holds)}",
                  f"probe beats both baselines before the centred lens beats majority in {len(ordered)} of {n} "
                  f"settings: {fmt_list(ordered)}; the probe has an onset but the centred lens never beats majority "
                  f"in: {fmt_list(self.lists['vacuous'])}",
                  f"verdict on the paper's Figure 7 claim: {self.verdict}"]
        return "\n".join(lines)

    def glue_values(self) -> dict:
        """The values the chapter's text cites, by name (without the chapter's prefix); floats unrounded."""
        out: dict = {}
        for (ds, k), s in self.settings.items():
            key, r = f"{ds}_k{k}", self.results[ds, k].correct
            for m in READOUTS:
                for tag, layer in s.layers.items():
                    ci = accuracy_ci(r[m][:, layer])
                    out[f"{key}_{SHORT[m]}_{tag}"] = ci[0]
                    out[f"{key}_{SHORT[m]}_{tag}_ci"] = fmt_ci(ci, 2)
            for tag, t in s.tests.items():
                for name, short in CITED.items():
                    out[f"{key}_{short}_{tag}"] = str(t[name])
            out[f"{key}_onset_probe"] = onset_text(s.onsets.probe)
            out[f"{key}_onset_cen"] = onset_text(s.onsets.centred)
            out[f"{key}_raw_share"] = s.constant.answer_share
            out[f"{key}_raw_base"] = s.constant.base_rate
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
                      "cal_real_third": fmt_list(li["cal_real"]), "cen_onsets": "; ".join(li["cen_onsets"])}

    def ledger_tests(self) -> list[dict]:
        """The tests the claims ledger's row ``separability`` rests on (:func:`cgar_src.analysis.stats.ledger_entry`):
        per setting, the three comparisons of :data:`CLAIM` at L/3 (roles :data:`CLAIM_ROLES`). The onset order is
        a scan over layers, not one test, and is not in the ledger's family."""
        return [ledger_entry("separability", CLAIM_ROLES[n], s.name, f"{n} at layer {self.third}", s.tests["third"][n])
                for s in self.settings.values() for n in CLAIM]

    def summary(self) -> dict:
        """Everything the chapter saves with its run (per setting, per dataset's baselines, the verdicts)."""
        out: dict = {}
        for (ds, k), s in self.settings.items():
            r = self.results[ds, k].correct
            out[f"{ds}_k{k}"] = {
                **{f"{m}_by_layer": r[m].mean(0).round(decimals=4) for m in READOUTS},
                **{f"{m}_{tag}_ci": list(accuracy_ci(r[m][:, layer]))
                   for m in READOUTS for tag, layer in s.layers.items()},
                "comparisons": {tag: {n: vars(c) | {"test": c.test, "real": c.real} for n, c in t.items()}
                                for tag, t in s.tests.items()},
                "onset_probe_vs_bag_of_words_and_majority": s.onsets.probe,
                "onset_centred_lens_vs_majority": s.onsets.centred, "onset_raw_lens_vs_majority": s.onsets.raw,
                "raw_lens_at_third": vars(s.constant).copy(), "claim_holds_at_third": s.claim_holds}
        for ds in self.lexical:
            out[f"{ds}_baselines"] = {"bag_of_words_ci": list(accuracy_ci(self.lexical[ds])),
                                      "majority_ci": list(accuracy_ci(self.majority[ds]))}
        return out | {"claim_holds_at_third": self.lists["holds"], "probe_before_centred_lens": self.lists["ordered"],
                      "centred_lens_never_beats_majority": self.lists["vacuous"],
                      "verdict": self.verdict, "verdict_early": self.verdict_early, "verdict_order": self.verdict_order}


def assess(results: Mapping[tuple[str, int], Readouts], lexical: Mapping[str, torch.Tensor],
           majority: Mapping[str, torch.Tensor], *, third: int, last: int, seed: int = 0) -> Separability:
    """Chapter 10's comparisons, onsets and verdict over every setting ``(dataset, shots)`` of ``results``, with
    the bag-of-words (``lexical``) and majority-class correctness ``(P,)`` per dataset."""
    if not results:
        raise ValueError("results must hold at least one setting (dataset, shots) -> Readouts")
    missing = sorted({ds for ds, _ in results} - (set(lexical) & set(majority)))
    if missing:
        raise ValueError(f"lexical and majority must hold every dataset of results; missing {missing}")
    settings = {}
    for (ds, k), r in results.items():
        for layer, name in ((third, "third"), (last, "last")):
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < r.label_logits.shape[1]:
                raise ValueError(f"{name} must be a layer index in [0, {r.label_logits.shape[1] - 1}], got {layer!r}")
        layers = {"third": third, "last": last}
        tests = {tag: paired_tests(r.correct, lexical[ds], majority[ds], layer, seed=seed)
                 for tag, layer in layers.items()}
        settings[ds, k] = Setting(
            dataset=ds, shots=k, layers=layers, tests=tests,
            calibrated_vs_majority=compare(r.correct["calibrated lens"][:, third], majority[ds], seed=seed),
            onsets=readout_onsets(r.correct, lexical[ds], majority[ds], seed=seed), constant=r.constant_answer(third))
    return Separability(settings=settings, results=results, lexical=lexical, majority=majority, third=third, last=last)
