r"""Factual steering: positive and negative context vectors on LAMA facts (book chapter ``09_factual_steering``,
the paper's Figure 6).

The query is the zero-shot state of fact f at the final layer L; the context vector of layer l averages, over the
other facts f' of f's relation whose demonstrations never mention f's object (the mask M), what the positive (true
facts) or negative (wrong objects) demonstrations add to the state (chapter 09's equation):

.. math:: p_{\pm}(\lambda, l) = \mathrm{softmax}\big(W_U\,\mathrm{Norm}(h_{zero}^{(L)} + \lambda\,\bar c_{\pm}^{(l)})\big),
   \qquad \bar c_{\pm,f}^{(l)} = \frac{\sum_{f'} M_{ff'}\,(h_{\pm,f'}^{(l)} - h_{zero,f'}^{(l)})}{\sum_{f'} M_{ff'}}.

Retrieval is scored over the whole vocabulary (first-token accuracy), with each relation's answer tokens as its
"label set".

* :func:`steer_facts`: per-fact correctness of steering at every context layer and coupling, and of the baselines
  (zero-shot = the neutral state, positive and negative prompting, the majority object);
* :func:`accuracy_table`, :func:`best_context_layers`: the chapter's tables;
* :func:`compare_methods`: the paired comparisons, their verdict sentences and the bidirectional verdict
  (:meth:`FactComparisons.bidirectional`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from ..lm import Unembed
from . import baselines, lens
from .stats import Comparison, accuracy_ci, compare, fmt_ci, ledger_entry

__all__ = ["FactStatesLike", "FactualSteering", "steer_facts", "method_order", "glue_key", "Report",
           "accuracy_table", "best_context_layers", "FactComparisons", "compare_methods", "bidirectional_verdict",
           "SIGNS", "BASELINES"]

SIGNS = ("positive", "negative")
BASELINES = ("majority (pool)", "majority (evaluated)", "zero-shot (neutral)", "positive prompting",
             "negative prompting")
ZERO, MAJORITY = "zero-shot (neutral)", "majority (pool)"


class FactStatesLike(Protocol):
    """What :func:`steer_facts` reads from :class:`cgar_src.tasks.icl.FactStates`: states ``(P, L+1, d)`` of the
    zero-shot, positive and negative prompts, each fact's relation, its object's first token ``(P,)``, the pool
    majority's first token ``(P,)`` and the answer-free context mask ``(P, P)``."""

    h_zero: torch.Tensor
    h_pos: torch.Tensor
    h_neg: torch.Tensor
    relations: list[str]
    object_ids: torch.Tensor
    majority_ids: torch.Tensor | None
    context_mask: torch.Tensor | None


@dataclass
class FactualSteering:
    """Per-fact results of :func:`steer_facts`. ``acc[sign]`` (0/1, float64) and ``n_eff[sign]`` ``(P, L+1, K)``:
    steering with the context vector of every layer and every coupling; ``correct[method]`` ``(P,)``: the
    baselines of :data:`BASELINES` and ``"{sign} steering, lambda {lam:g}"`` with the final layer's vector;
    ``n_eff_zero`` ``(P,)``: the zero-shot state's :math:`N_{eff}`; ``minority`` ``(P,)`` bool: facts whose object is
    not the pool's majority."""

    relations: list[str]
    lambdas: list[float]
    acc: dict[str, torch.Tensor]
    n_eff: dict[str, torch.Tensor]
    correct: dict[str, torch.Tensor]
    n_eff_zero: torch.Tensor
    minority: torch.Tensor

    @property
    def relation_order(self) -> list[str]:
        """The relations in the order of their first fact."""
        return list(dict.fromkeys(self.relations))


def _check_facts(fs: FactStatesLike) -> None:
    P = fs.h_zero.shape[0]
    if fs.h_zero.ndim != 3 or fs.h_pos.shape != fs.h_zero.shape or fs.h_neg.shape != fs.h_zero.shape:
        raise ValueError(f"fs.h_zero, h_pos and h_neg must be (P, L+1, d) alike, got {tuple(fs.h_zero.shape)}, "
                         f"{tuple(fs.h_pos.shape)} and {tuple(fs.h_neg.shape)}")
    if len(fs.relations) != P or fs.object_ids.shape != (P,):
        raise ValueError(f"fs.relations and fs.object_ids must hold one entry per fact (P = {P})")
    if fs.majority_ids is None or fs.majority_ids.shape != (P,):
        raise ValueError(f"fs.majority_ids must hold the pool majority's token of each of the P = {P} facts")
    if fs.context_mask is None or fs.context_mask.shape != (P, P):
        raise ValueError(f"fs.context_mask must be a (P, P) = ({P}, {P}) boolean mask")


def steer_facts(unembed: Unembed, fs: FactStatesLike, *, lambdas: Sequence[float]) -> FactualSteering:
    r"""Factual steering (module docstring's equation) per relation: the relation's distinct answer tokens are its
    candidates, the context vector of fact f is the mask-weighted mean :math:`\sum_{f'} M_{ff'}(h_{\pm,f'} -
    h_{zero,f'}) / \sum_{f'} M_{ff'}`, added to the final-layer zero-shot state with every coupling of ``lambdas``
    and every context layer; baselines decode the final layer of the zero-shot, positive and negative prompts, and
    answer the pool majority (``fs.majority_ids``) or the evaluated facts' majority (in hindsight)."""
    _check_facts(fs)
    if len(lambdas) == 0:
        raise ValueError("lambdas must be a non-empty list of couplings")
    lambdas = list(lambdas)
    P, L, K = fs.h_zero.shape[0], fs.h_zero.shape[1] - 1, len(lambdas)
    rel = np.array(fs.relations)
    layers = list(range(L + 1))
    acc = {s: torch.zeros(P, L + 1, K, dtype=torch.float64) for s in SIGNS}
    n_eff = {s: torch.zeros(P, L + 1, K) for s in SIGNS}
    correct = {k: torch.zeros(P, dtype=torch.float64) for k in BASELINES}
    n_eff_zero = torch.zeros(P)
    for r in dict.fromkeys(fs.relations):
        idx = torch.from_numpy(np.flatnonzero(rel == r))
        cands = sorted(set(fs.object_ids[idx].tolist()))           # the relation's answers: its "label set"
        target = torch.tensor([cands.index(int(o)) for o in fs.object_ids[idx]])
        h0 = fs.h_zero[idx]
        w = fs.context_mask[idx][:, idx].double()
        w = (w / w.sum(1, keepdim=True)).float()                   # answer-free leave-one-out weights M / sum(M)
        for sign, h_ctx in (("positive", fs.h_pos[idx]), ("negative", fs.h_neg[idx])):
            c_bar = torch.einsum("ij,jld->ild", w, h_ctx - h0)     # (n, L+1, d): never the fact itself or its answer
            st = lens.additive_retrieval(unembed, h0, c_bar, cands, lambdas=lambdas, context_layers=layers,
                                         query_layers=[L])
            acc[sign][idx] = st.correct(cands, target)[:, 0]
            n_eff[sign][idx] = st.n_eff[:, 0]
        for kind, h in ((ZERO, h0), ("positive prompting", fs.h_pos[idx]), ("negative prompting", fs.h_neg[idx])):
            st = lens.decode_stats(unembed, h[:, L], cands)
            correct[kind][idx] = st.correct(cands, target)
            if kind == ZERO:
                n_eff_zero[idx] = st.n_eff
        correct[MAJORITY][idx] = (fs.majority_ids[idx] == fs.object_ids[idx]).double()
        correct["majority (evaluated)"][idx] = baselines.majority_correct(target, reference=target)   # hindsight
    for i, lam in enumerate(lambdas):
        for sign in SIGNS:
            correct[f"{sign} steering, lambda {lam:g}"] = acc[sign][:, L, i]
    return FactualSteering(relations=list(fs.relations), lambdas=lambdas, acc=acc, n_eff=n_eff, correct=correct,
                           n_eff_zero=n_eff_zero, minority=fs.object_ids != fs.majority_ids)


def method_order(lambdas: Sequence[float]) -> list[str]:
    """The table's rows: the baselines, then positive and negative steering at every coupling."""
    return list(BASELINES) + [f"{s} steering, lambda {lam:g}" for s in SIGNS for lam in lambdas]


def glue_key(method: str) -> str:
    """A method's glue name: 'positive steering, lambda 1.5' -> 'positive_steer_1p5', 'zero-shot (neutral)' ->
    'zero', 'positive prompting' -> 'positive_prompt', 'majority (pool)' -> 'majority_pool'."""
    fixed = {MAJORITY: "majority_pool", "majority (evaluated)": "majority_evaluated", ZERO: "zero"}
    if method in fixed:
        return fixed[method]
    return method.replace(" prompting", "_prompt").replace(" steering, lambda ", "_steer_").replace(".", "p")


class Report(NamedTuple):
    """A table of the chapter: its JSON record, its printed lines and the values its text cites (glue names
    without the ``fact_`` prefix)."""

    record: dict
    lines: list[str]
    glue: dict


_NAN_CI = (float("nan"),) * 3


def accuracy_table(steering: FactualSteering) -> Report:
    """Every method's accuracy (Wilson 95%) on all facts and on the non-majority facts, and its mean per relation
    (2 decimals). Glue: ``{key}`` (3 decimals, text), ``{key}_ci`` and ``{key}_minority`` per method
    (:func:`glue_key`)."""
    s = steering
    rel = np.array(s.relations)
    has_minority = bool(s.minority.any())                     # False only if every fact's object is its majority
    record, glue = {}, {}
    lines = [f"{'method':>28} {'all facts':>22} {'non-majority objects':>22}   per relation"]
    for m in method_order(s.lambdas):
        a = accuracy_ci(s.correct[m])
        b = accuracy_ci(s.correct[m][s.minority]) if has_minority else _NAN_CI
        per_rel = {r: round(float(s.correct[m][torch.from_numpy(rel == r)].mean()), 2) for r in s.relation_order}
        lines.append(f"{m:>28} {fmt_ci(a):>22} {fmt_ci(b):>22}   {per_rel}")
        record[m] = {"all": list(a), "non_majority": list(b) if has_minority else None, "per_relation": per_rel}
        key = glue_key(m)
        glue |= {key: f"{a[0]:.3f}", f"{key}_ci": fmt_ci(a), f"{key}_minority": f"{b[0]:.3f}"}
    return Report(record, lines, glue)


def best_context_layers(steering: FactualSteering) -> Report:
    """Per sign and coupling, the context layer of highest accuracy on these facts (in-sample, optimistic: for
    reference only), with the mean accuracy and median :math:`N_{eff}` per layer. Glue: the median
    :math:`N_{eff}` zero-shot and with the final layer's positive and negative vectors at the first coupling."""
    s, L = steering, steering.acc["positive"].shape[1] - 1
    record, lines = {}, ["best context layer (in-sample, optimistic):"]
    for sign in SIGNS:
        for i, lam in enumerate(s.lambdas):
            acc = s.acc[sign][:, :, i]
            best = int(acc.mean(0).argmax())
            lines.append(f"  {sign} steering, lambda {lam:g}: c:{best}, accuracy {fmt_ci(accuracy_ci(acc[:, best]))}")
            record[f"{sign}_lambda{lam:g}"] = {
                "best_layer": best, "accuracy_best_layer": list(accuracy_ci(acc[:, best])),
                "mean_accuracy_by_layer": acc.mean(0).round(decimals=4).tolist(),
                "median_n_eff_by_layer": s.n_eff[sign][:, :, i].median(0).values.round(decimals=2).tolist()}
    glue = {"neff_zero": f"{s.n_eff_zero.median().item():.1f}",
            "neff_pos_last": f"{s.n_eff['positive'][:, L, 0].median().item():.1f}",
            "neff_neg_last": f"{s.n_eff['negative'][:, L, 0].median().item():.1f}"}
    return Report(record, lines, glue)


def _lams(xs: Sequence[float]) -> str:
    return ", ".join(f"{x:g}" for x in xs)


@dataclass
class FactComparisons:
    """Paired comparisons ``(A, B)`` of methods on the same facts: ``all[A, B]`` on all facts, ``minority[A, B]``
    on the non-majority facts (None when there are none)."""

    lambdas: list[float]
    all: dict[tuple[str, str], Comparison]
    minority: dict[tuple[str, str], Comparison | None]

    def lines(self) -> list[str]:
        """The printed table: A vs B, the paired difference on all facts and on the non-majority facts, each
        flagged real or n.s."""
        flag = lambda c: "" if c is None else "real" if c.real else "n.s."
        out = [f"{'A':>28} vs {'B':<28} {'all facts: A - B':>48}   {'non-majority objects: A - B':>48}"]
        for (a, b), c in self.all.items():
            m = self.minority[a, b]
            out.append(f"{a:>28} vs {b:<28} {str(c):>43} {flag(c):>4}   {str(m or '-'):>43} {flag(m):>4}")
        return out

    def record(self) -> dict:
        """The JSON record of every comparison."""
        rec = lambda c: None if c is None else vars(c) | {"test": c.test, "real": c.real}
        return {f"{a} vs {b}": {"all": rec(c), "non_majority": rec(self.minority[a, b])}
                for (a, b), c in self.all.items()}

    def ledger_tests(self) -> list[dict]:
        """The tests the claims ledger's row ``factual`` rests on (:func:`cgar_src.analysis.stats.ledger_entry`):
        at every coupling (setting ``"lambda 1"`` etc.), positive steering minus the neutral state (role
        ``toward``) and negative steering minus the neutral state (role ``away``), on all facts."""
        out = []
        for lam in self.lambdas:
            for role, sign in (("toward", "positive"), ("away", "negative")):
                a = f"{sign} steering, lambda {lam:g}"
                out.append(ledger_entry("factual", role, f"lambda {lam:g}", f"{a} - {ZERO}", self.all[a, ZERO]))
        return out

    def verdict(self, a: str, b: str, name_a: str, name_b: str, *, minority: bool = False) -> str:
        """The sentence for A against B (``Comparison.verdict`` in :mod:`cgar_src.analysis.stats`)."""
        c = (self.minority if minority else self.all)[a, b]
        return "no fact lies outside the majority object" if c is None else c.verdict(name_a, name_b)

    def glue_values(self) -> dict[str, str]:
        """The verdict sentences the text cites, at the first and the last coupling (``_first``/``_last``) and for
        prompting, by glue name without the ``fact_`` prefix."""
        v, out = self.verdict, {}
        for tag, lam in (("first", self.lambdas[0]), ("last", self.lambdas[-1])):
            pos, neg = f"positive steering, lambda {lam:g}", f"negative steering, lambda {lam:g}"
            out |= {f"lam_{tag}": f"{lam:g}",
                    f"v_pos_zero_{tag}": v(pos, ZERO, "positive steering", "the neutral state"),
                    f"v_neg_zero_{tag}": v(neg, ZERO, "negative steering", "the neutral state"),
                    f"v_neg_pos_{tag}": v(neg, pos, "negative steering", "positive steering"),
                    f"v_pos_maj_{tag}": v(pos, MAJORITY, "positive steering", "the majority object"),
                    f"v_pos_prompt_{tag}": v(pos, "positive prompting", "positive steering", "positive prompting"),
                    f"neg_pos_discordant_{tag}": f"{self.all[neg, pos].n_b_only} facts against "
                                                 f"{self.all[neg, pos].n_a_only}",
                    f"v_pos_zero_min_{tag}": v(pos, ZERO, "positive steering", "the neutral state", minority=True),
                    f"v_neg_zero_min_{tag}": v(neg, ZERO, "negative steering", "the neutral state", minority=True)}
        return out | {
            "v_prompt_pos_zero": v("positive prompting", ZERO, "positive prompting", "the neutral prompt"),
            "v_prompt_neg_zero": v("negative prompting", ZERO, "negative prompting", "the neutral prompt"),
            "v_prompt_neg_pos": v("negative prompting", "positive prompting", "negative prompting", "positive prompting")}

    def bidirectional(self) -> dict:
        """The paper's claim, decided per coupling (:func:`bidirectional_verdict`) from positive and negative
        steering against the neutral state on all facts."""
        return bidirectional_verdict({lam: self.all[f"positive steering, lambda {lam:g}", ZERO] for lam in self.lambdas},
                                     {lam: self.all[f"negative steering, lambda {lam:g}", ZERO] for lam in self.lambdas})


def bidirectional_verdict(toward: dict, away: dict) -> dict:
    """Chapter 09's verdict on the paper's Figure 6: steering reproduces it at a coupling where positive steering is
    really above the neutral state (``toward[lam].better``) *and* negative steering really below it
    (``away[lam].worse``), each a paired test on the same facts (or the same rebuilt with a Holm-adjusted p-value by
    the claims ledger). Returns the verdict sentence and the couplings where both, toward only or away only hold."""
    if not toward or set(toward) != set(away):
        raise ValueError("toward and away must hold the same couplings (lambda -> paired comparison)")
    lambdas = list(toward)
    both = [lam for lam in lambdas if toward[lam].better and away[lam].worse]
    up = [lam for lam in lambdas if toward[lam].better]
    down = [lam for lam in lambdas if away[lam].worse]
    if len(both) == len(lambdas):
        text = f"reproduced at every coupling tested (λ = {_lams(lambdas)})"
    elif both:
        text = f"reproduced only at λ = {_lams(both)} of the couplings tested ({_lams(lambdas)})"
    else:
        away_txt = f"below neutral only at λ = {_lams(down)}" if down else "never below neutral"
        toward_txt = f"above it at λ = {_lams(up)}" if up else "never above it"
        text = (f"not reproduced on this model: at the couplings tested (λ = {_lams(lambdas)}) negative "
                f"steering is {away_txt} and positive steering {toward_txt}, never both at one coupling")
    return {"verdict": text, "both": both, "toward": up, "away": down}


def compare_methods(steering: FactualSteering, *, seed: int = 0) -> FactComparisons:
    """The chapter's paired comparisons (:func:`cgar_src.analysis.stats.compare`, seeded): at every coupling,
    positive and negative steering against the neutral state, negative against positive, positive against the
    majority object and against positive prompting; then prompting against the neutral prompt and negative against
    positive prompting. On all facts and on the non-majority facts."""
    s, pairs = steering, []
    for lam in s.lambdas:
        pos, neg = f"positive steering, lambda {lam:g}", f"negative steering, lambda {lam:g}"
        pairs += [(pos, ZERO), (neg, ZERO), (neg, pos), (pos, MAJORITY), (pos, "positive prompting")]
    pairs += [("positive prompting", ZERO), ("negative prompting", ZERO), ("negative prompting", "positive prompting")]
    has_minority = bool(s.minority.any())
    return FactComparisons(
        lambdas=list(s.lambdas), all={(a, b): compare(s.correct[a], s.correct[b], seed=seed) for a, b in pairs},
        minority={(a, b): compare(s.correct[a][s.minority], s.correct[b][s.minority], seed=seed)
                  if has_minority else None for a, b in pairs})
