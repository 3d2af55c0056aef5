r"""Held-out verdicts on the gate chapter's models and the theory's quantities on the fitted gate (book chapter
``12_gate_in_transformer``), from the evaluations of :func:`cgar_src.analysis.crossfit.evaluate`.

Several demonstration sets (one content-free prompt each) are shown to the SAME queries, so every setting may hold
one evaluation per set; :func:`pool_sets` averages each query's outcome over the S sets,
:math:`\bar a_i = \frac1S\sum_s a_{s,i}`, and every test below takes the query as its unit (never the sets
concatenated); each headline number is also given per set, as its mean and range over the sets
(:func:`cgar_src.analysis.seeds.spread`).

* :func:`gate_vs_dense`: the chapter's question, sparse gate (c) against dense bias (b) on the same held-out queries,
  every difference decided by an exact paired test (:mod:`cgar_src.analysis.stats`): on the distribution itself the
  per-query difference :math:`\mathrm{KL}_i^{dense} - \mathrm{KL}_i^{gate}` by the sign test (positive: the gate is
  closer to :math:`p_{ICL}`), on top-1 agreement and label accuracy by :func:`cgar_src.analysis.stats.paired_test`
  (the exact McNemar test for one set, the sign test of the per-query shares over several); the same sign test for
  the gate against each fitted fixed point. A side wins only when its test rejects at level 0.05; the bootstrap
  interval beside it only shows the size.
* :func:`model_table`: every model's held-out KL, agreement and accuracy with intervals, the paired verdicts, their
  tally over the settings and the tests the claims ledger reads (:meth:`ModelTable.ledger_tests`).
* :func:`grid_edges`: which fitted parameters sit at an end of their grid (a fit there may lie beyond it).
* :func:`uniqueness_tests`: the fixed point's count is a test of Theorem ``thm-fixed-point`` (chapter
  ``05_fixed_point``) only where the contraction bound :math:`\beta\lambda^2/(2\alpha)` is below 1, where the theorem
  promises one fixed point; a fold passes when every one of its queries has exactly one.
* :func:`theory_table`: the theory's quantities per setting (support, one-hotness, :math:`\alpha_{crit}`,
  :math:`\Delta_{gate}`, bounds, fixed points inside and outside the contraction region).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..theory import dynamics
from .crossfit import Evaluation
from .gate_fit import CrossFit
from .seeds import Spread, spread
from .stats import Comparison, SignTest, accuracy_ci, bootstrap_ci, ledger_entry, paired_test, sign_test

__all__ = ["MODEL_NAMES", "WHO", "KL_RESOLUTION", "sets_of", "pool_sets", "GateVsDense", "gate_vs_dense", "tally", "overall_verdict", "ModelTable",
           "model_table", "grid_edges", "GRID_FITS", "edge_report", "uniqueness_tests", "TheoryTable", "theory_table"]

MODEL_NAMES = {"zero_shot": "(a) zero-shot", "dense": "(b) dense bias", "gated": "(c) sparse gate",
               "fixed_point": "(d) fixed pt, bound<1", "fixed_point_out": "(d') fixed pt, bound>=1",
               "prior": "(e) prior / majority"}
WHO = ("gate", "dense", "tie")


def sets_of(value: Evaluation | Sequence[Evaluation], where: str = "results") -> list[Evaluation]:
    """The evaluations of one setting, one per demonstration set: a single :class:`cgar_src.analysis.crossfit.Evaluation` is one set."""
    evals = [value] if isinstance(value, Evaluation) else list(value) if isinstance(value, (list, tuple)) else None
    if not evals or not all(isinstance(e, Evaluation) for e in evals):
        raise ValueError(f"{where} must map each setting to an Evaluation or a non-empty list of Evaluations (one per "
                         f"demonstration set), got {type(value).__name__}")
    n = {int(e.icl_correct.numel()) for e in evals}
    if len(n) != 1:
        raise ValueError(f"{where}: the sets of one setting must score the same queries, got sizes {sorted(n)}")
    return evals


def pool_sets(evals: Sequence[Evaluation]) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    r"""Per query, every model's outcomes (``per_query[model][key]``) and the in-context prediction's correctness
    averaged over the demonstration sets, :math:`\bar a_i = \frac1S\sum_s a_{s,i}` (float64; 0/1 outcomes become the
    share of sets); one set is returned unchanged. The sets must score the same queries in the same order
    (``cgar_src.tasks.icl.task_states`` with one ``query_seed``)."""
    evals = sets_of(list(evals), "evals")
    if len(evals) == 1:
        return evals[0].per_query, evals[0].icl_correct
    mean = lambda ts: torch.stack([t.double() for t in ts]).mean(0)
    pooled = {m: {k: mean([e.per_query[m][k] for e in evals]) for k in evals[0].per_query[m]}
              for m in evals[0].per_query}
    return pooled, mean([e.icl_correct for e in evals])


def _rate_ci(x: torch.Tensor, seed: int) -> tuple[float, float, float]:
    """A 0/1 rate with its Wilson interval; a rate averaged over sets (shares) with a bootstrap interval."""
    return accuracy_ci(x) if bool(((x == 0) | (x == 1)).all()) else bootstrap_ci(x, seed=seed)


def _r4(ci) -> list[float]:
    return [round(float(x), 4) for x in ci]


def _test(t: Comparison | SignTest) -> dict:
    """A paired test as the chapter saves it (:func:`cgar_src.analysis.stats.paired_from_record` rebuilds it)."""
    return {"test": t.test} | {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(t).items()}


def _winner(c: Comparison | SignTest) -> str:
    return "gate" if c.better else "dense" if c.worse else "tie"


#: per-query KL differences (nats) at or below this size are ties in the sign tests: the held-out KL of one query
#: moves by up to ~1e-5 nats between machines (float32 states from other kernels; ``tests/test_gate_report.py``),
#: and the gate past its dense limit equals the dense bias up to round-off, which a sign test would otherwise count
KL_RESOLUTION = 1e-4


@dataclass(frozen=True)
class GateVsDense:
    """Gate minus dense on the same held-out queries (exact paired tests), and the gate against each fixed point."""

    kl_reduction: SignTest               # KL(dense) - KL(gate) per query, sign test; > 0: the gate closer
    agree: Comparison | SignTest         # agreement with the in-context argmax, gate - dense (McNemar for one set)
    accuracy: Comparison | SignTest      # label accuracy, gate - dense
    fixed_point_kl_reduction: SignTest   # KL(gate) - KL(fixed point inside the contraction region); > 0: fp closer
    fixed_point_out_kl_reduction: SignTest   # KL(gate) - KL(fixed point outside it)

    @property
    def kl_winner(self) -> str:
        """``"gate"`` or ``"dense"`` when the sign test rejects (the side more queries favour), else ``"tie"``."""
        return _winner(self.kl_reduction)

    @property
    def agree_winner(self) -> str:
        return _winner(self.agree)

    @property
    def accuracy_winner(self) -> str:
        return _winner(self.accuracy)


def gate_vs_dense(per_query: Mapping[str, Mapping[str, torch.Tensor]], *, seed: int = 0) -> GateVsDense:
    """The paired comparisons of the module docstring from per-query results (``per_query[model]["kl"]``,
    ``["agree"]``, ``["correct"]``; one set's 0/1 outcomes or their per-query shares over sets, :func:`pool_sets`)."""
    for m in ("dense", "gated", "fixed_point", "fixed_point_out"):
        if m not in per_query:
            raise ValueError(f"per_query must hold the models dense, gated, fixed_point and fixed_point_out; "
                             f"missing {m!r}")
    q, r = per_query, KL_RESOLUTION
    return GateVsDense(kl_reduction=sign_test(q["dense"]["kl"] - q["gated"]["kl"], resolution=r, seed=seed),
                       agree=paired_test(q["gated"]["agree"], q["dense"]["agree"], seed=seed),
                       accuracy=paired_test(q["gated"]["correct"], q["dense"]["correct"], seed=seed),
                       fixed_point_kl_reduction=sign_test(q["gated"]["kl"] - q["fixed_point"]["kl"], resolution=r,
                                                          seed=seed),
                       fixed_point_out_kl_reduction=sign_test(q["gated"]["kl"] - q["fixed_point_out"]["kl"],
                                                              resolution=r, seed=seed))


def tally(verdicts: Sequence[tuple[str, str]], who: str) -> str:
    """``"2 of 6 (sst2 at layer 25, trec at layer 30)"``: how many settings ``(where, winner)`` went to ``who``."""
    if who not in WHO:
        raise ValueError(f"who must be one of {WHO}, got {who!r}")
    hits = [w for w, v in verdicts if v == who]
    return f"{len(hits)} of {len(verdicts)}" + (f" ({', '.join(hits)})" if hits else "")


def overall_verdict(kl_verdicts: Sequence[tuple[str, str]]) -> str:
    """The chapter's verdict: supported when the gate is closer to the in-context distribution than the dense bias
    in more than half of the settings."""
    n, n_gate = len(kl_verdicts), sum(v == "gate" for _, v in kl_verdicts)
    n_dense = sum(v == "dense" for _, v in kl_verdicts)
    return ("supported: the sparse gate is closer to the in-context distribution than the dense bias in most "
            f"settings ({n_gate} of {n})" if n_gate > n / 2 else
            "not reproduced on this model: the sparse gate is closer to the in-context distribution than the dense "
            f"bias in {n_gate} of {n} settings, the dense bias in {n_dense}")


@dataclass
class ModelTable:
    """Per setting ``(dataset, layer)``: every model's intervals on the per-query outcomes pooled over the
    demonstration sets (``cis[setting][model]``: ``kl``, ``agree``, ``accuracy``), the same numbers per set as mean
    and range over the sets (``spreads``), the in-context prediction's accuracy, gate against dense (pooled paired
    tests, the query as unit), and the verdicts per target."""

    cis: dict[tuple[str, int], dict[str, dict[str, tuple]]]
    icl: dict[tuple[str, int], tuple]
    paired: dict[tuple[str, int], GateVsDense]
    params: dict[tuple[str, int], dict[str, list]]
    tags: dict[tuple[str, int], str]
    spreads: dict[tuple[str, int], dict[str, dict[str, Spread]]] = field(default_factory=dict)
    n_sets: int = 1
    verdicts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = {s: f"{s[0]} at layer {s[1]}" for s in self.paired}
        self.verdicts = {"kl": [(where[s], p.kl_winner) for s, p in self.paired.items()],
                         "agree": [(where[s], p.agree_winner) for s, p in self.paired.items()],
                         "acc": [(where[s], p.accuracy_winner) for s, p in self.paired.items()]}

    @property
    def verdict(self) -> str:
        return overall_verdict(self.verdicts["kl"])

    def text(self) -> str:
        """The table as the chapter prints it: one row per model, the target's row, gate minus dense; the tally."""
        many = self.n_sets > 1
        lines = [f"{'dataset':>7} {'layer':>5} {'model':>20} {'KL(p_ICL || p) [95% CI]':>26} {'agree w/ ICL':>20} "
                 f"{'label accuracy':>20}" + (f"  KL per set: mean (min-max over {self.n_sets})" if many else "")]
        ci2 = lambda ci: f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"
        for (ds, l), rows in self.cis.items():
            for m, name in MODEL_NAMES.items():
                kl = rows[m]["kl"]
                sp = self.spreads[ds, l][m]["kl"] if many else None
                lines.append(f"{ds:>7} {l:>5} {name:>20} {f'{kl[0]:.3f} [{kl[1]:.3f}, {kl[2]:.3f}]':>26} "
                             f"{ci2(rows[m]['agree']):>20} {ci2(rows[m]['accuracy']):>20}"
                             + (f"  {sp.mean:.3f} ({sp.lo:.3f}-{sp.hi:.3f})" if sp else ""))
            lines.append(f"{ds:>7} {l:>5} {'in-context (target)':>20} {'0 by definition':>26} {'1.00':>20} "
                         f"{ci2(self.icl[ds, l]):>20}")
            p = self.paired[ds, l]
            lines += [f"{'':>7} {'':>5} KL(dense) - KL(gate) = {p.kl_reduction}; agreement gate - dense "
                      f"{p.agree}; accuracy gate - dense {p.accuracy}", ""]
        lines.append(f"KL to the in-context distribution: gate closer in {tally(self.verdicts['kl'], 'gate')} | dense "
                     f"closer in {tally(self.verdicts['kl'], 'dense')} | indistinguishable in "
                     f"{tally(self.verdicts['kl'], 'tie')}")
        return "\n".join(lines)

    def glue_values(self) -> dict[str, str]:
        """The values the chapter's text cites, formatted as it shows them (names without the chapter's prefix)."""
        out = {}
        for s in self.cis:
            tag, p = self.tags[s], self.paired[s]
            sp = self.spreads[s]
            for m in MODEL_NAMES:     # per set: mean (range over sets); one set: its value
                out |= {f"{tag}_kl_{m}": sp[m]["kl"].fmt(3), f"{tag}_agree_{m}": sp[m]["agree"].fmt(2),
                        f"{tag}_acc_{m}": sp[m]["accuracy"].fmt(2)}
            out |= {f"{tag}_acc_icl": sp["icl"]["accuracy"].fmt(2), f"{tag}_dkl": str(p.kl_reduction),
                    f"{tag}_dagree": str(p.agree), f"{tag}_dacc": str(p.accuracy),
                    f"{tag}_dkl_fp": str(p.fixed_point_kl_reduction),
                    f"{tag}_dkl_fp_out": str(p.fixed_point_out_kl_reduction)}
        for key, v in self.verdicts.items():
            for who in WHO:
                out[f"{key}_{who}"] = tally(v, who)
        where = {s: f"{s[0]} at layer {s[1]}" for s in self.paired}
        for name, attr in (("fp", "fixed_point_kl_reduction"), ("fp_out", "fixed_point_out_kl_reduction")):
            closer = [(where[s], "gate" if getattr(p, attr).worse else "dense" if getattr(p, attr).better else "tie")
                      for s, p in self.paired.items()]
            out[f"{name}_gate_closer"] = tally(closer, "gate")      # the gate closer than the fixed point
            out[f"{name}_closer"] = tally(closer, "dense")          # the fixed point closer than the gate
        return out | {"verdict": self.verdict, "n_sets": self.n_sets}

    def summary(self) -> dict:
        """What the chapter saves: per ``"dataset/layer"`` every model's rounded intervals and parameters, the
        target's accuracy and gate minus dense; the verdicts."""
        out: dict = {}
        for (ds, l), rows in self.cis.items():
            sp = self.spreads[ds, l]
            per_set = lambda x: [round(x.mean, 4), round(x.lo, 4), round(x.hi, 4)]
            row = {m: {"kl": _r4(c["kl"]), "agree": _r4(c["agree"]), "accuracy": _r4(c["accuracy"]),
                       "per_set_mean_min_max": {k: per_set(v) for k, v in sp[m].items()},
                       "params": self.params[ds, l][m]} for m, c in rows.items()}
            p = self.paired[ds, l]
            row["in-context (target)"] = {"accuracy": _r4(self.icl[ds, l]),
                                          "per_set_mean_min_max": per_set(sp["icl"]["accuracy"])}
            row["gate_minus_dense"] = {"kl_reduction": _test(p.kl_reduction), "agree": _test(p.agree),
                                       "accuracy": _test(p.accuracy),
                                       "fixed_point_kl_reduction_over_gate": _test(p.fixed_point_kl_reduction),
                                       "fixed_point_out_kl_reduction_over_gate":
                                           _test(p.fixed_point_out_kl_reduction)}
            out[f"{ds}/{l}"] = row
        return out | {"verdicts": self.verdicts, "n_sets": self.n_sets}

    def ledger_tests(self) -> list[dict]:
        """The tests the claims ledger's row ``gate`` rests on (:func:`cgar_src.analysis.stats.ledger_entry`), per
        setting: the KL difference (role ``kl``, "KL(dense) - KL(gate)", sign test) and the agreement with the
        in-context prediction (role ``agree``, gate minus dense: McNemar for one set, the sign test of the per-query
        shares over several); pooled over the demonstration sets with the query as unit."""
        out = []
        for (ds, l), p in self.paired.items():
            where = f"{ds} at layer {l}"
            out += [ledger_entry("gate", "kl", where, "KL(dense) - KL(gate)", p.kl_reduction),
                    ledger_entry("gate", "agree", where, "agreement with the in-context argmax, gate - dense",
                                 p.agree)]
        return out


_KEYS = {"kl": "kl", "agree": "agree", "accuracy": "correct"}


def model_table(results: Mapping[tuple[str, int], Evaluation | Sequence[Evaluation]], layer_tag: Mapping[int, str], *,
                seed: int = 0) -> ModelTable:
    """Intervals and paired verdicts of every setting ``(dataset, context layer)`` of ``results`` (one
    :class:`cgar_src.analysis.crossfit.Evaluation` or a list, one per demonstration set, all on the same queries): on the per-query outcomes
    pooled over the sets (:func:`pool_sets`) KL with a percentile-bootstrap interval, agreement and accuracy with
    Wilson intervals (one set; shares over several sets: bootstrap), the prior's accuracy its fitting rows' majority
    label; per set the same means, as mean and range over the sets; gate against dense by exact paired tests with
    the query as unit (:func:`gate_vs_dense`)."""
    if not results:
        raise ValueError("results must hold at least one setting (dataset, layer) -> Evaluation")
    cis, icl, paired, params, tags, spreads, n_sets = {}, {}, {}, {}, {}, {}, set()
    for (ds, l), value in results.items():
        if l not in layer_tag:
            raise ValueError(f"layer_tag has no name for context layer {l}")
        evals = sets_of(value)
        n_sets.add(len(evals))
        q, icl_correct = pool_sets(evals)
        key = lambda m, k: "correct_majority" if m == "prior" and k == "accuracy" else _KEYS[k]
        cis[ds, l] = {m: {"kl": bootstrap_ci(q[m]["kl"], seed=seed), "agree": _rate_ci(q[m]["agree"], seed),
                          "accuracy": _rate_ci(q[m][key(m, "accuracy")], seed)} for m in MODEL_NAMES}
        spreads[ds, l] = {m: {k: spread([float(e.per_query[m][key(m, k)].double().mean()) for e in evals])
                              for k in _KEYS} for m in MODEL_NAMES}
        spreads[ds, l]["icl"] = {"accuracy": spread([float(e.icl_correct.double().mean()) for e in evals])}
        icl[ds, l] = _rate_ci(icl_correct, seed)
        paired[ds, l] = gate_vs_dense(q, seed=seed)
        params[ds, l] = {m: evals[0].fits[m].params if len(evals) == 1 else [e.fits[m].params for e in evals]
                         for m in MODEL_NAMES}
        tags[ds, l] = f"{ds}_{layer_tag[l]}"
    if len(n_sets) != 1:
        raise ValueError(f"results must hold the same number of demonstration sets in every setting, got {n_sets}")
    return ModelTable(cis=cis, icl=icl, paired=paired, params=params, tags=tags, spreads=spreads,
                      n_sets=n_sets.pop())


_AXIS_NAMES = {"alpha": "alpha", "beta": "beta", "lam": "lambda", "kappa": "lambda/alpha"}


def grid_edges(fit: CrossFit) -> list[str]:
    """The fitted parameters of a grid model's cross-fit (``fit.extra``: ``axes`` and per fold ``index``) that sit at
    an end of their axis, e.g. ``"alpha = 3e+06 (largest)"``; a coupling of 0 is not an edge (no smaller value
    exists). Empty for a fit strictly inside its grid."""
    if "axes" not in fit.extra or "index" not in fit.extra:
        raise ValueError(f"fit must be a grid model's CrossFit (extra holds 'axes' and 'index'), got model {fit.model!r}")
    out: list[str] = []
    for pos in fit.extra["index"]:
        for (name, vals), i in zip(fit.extra["axes"].items(), pos):
            if len(vals) < 2:
                continue
            end = "largest" if i == len(vals) - 1 else "smallest" if i == 0 and vals[0] > 0 else None
            hit = f"{_AXIS_NAMES.get(name, name)} = {vals[i]:g} ({end})" if end else None
            if hit and hit not in out:
                out.append(hit)
    return out


GRID_FITS = ("dense", "gated", "fixed_point", "fixed_point_out")   #: the models fitted on a grid


def edge_report(results: Mapping[tuple[str, int], Evaluation | Sequence[Evaluation]]) -> dict[str, str]:
    """Per grid model (:data:`GRID_FITS`), the settings whose fit sits at a grid edge (:func:`grid_edges`; over all
    the setting's demonstration sets, each edge named once), as the chapter prints them:
    ``"sst2 at layer 30 (alpha = 3e+06 (largest))"`` joined by ``"; "``, or ``"none"``."""
    out = {}
    for m in GRID_FITS:
        hits = []
        for (ds, l), value in results.items():
            edges = list(dict.fromkeys(e for r in sets_of(value) for e in grid_edges(r.fits[m])))
            if edges:
                hits.append(f"{ds} at layer {l} ({', '.join(edges)})")
        out[m] = "; ".join(hits) if hits else "none"
    return out


def uniqueness_tests(n_distinct: torch.Tensor, fold: torch.Tensor, bounds: Sequence[float]) -> tuple[int, int]:
    """``(tested, passed)``: the folds whose contraction bound (``bounds[f]``) is below 1 are tested, and a tested
    fold passes when every query of it (``fold == f``) has exactly one distinct fixed point (``n_distinct``)."""
    n_distinct, fold = torch.as_tensor(n_distinct), torch.as_tensor(fold)
    if n_distinct.shape != fold.shape or n_distinct.ndim != 1:
        raise ValueError(f"n_distinct and fold must be (P,) per-query vectors, got {tuple(n_distinct.shape)} and "
                         f"{tuple(fold.shape)}")
    if fold.numel() and (int(fold.min()) < 0 or int(fold.max()) >= len(bounds)):
        raise ValueError(f"fold indices must lie in [0, {len(bounds)}) (one bound per fold)")
    tested = passed = 0
    for f, bound in enumerate(bounds):
        if bound < 1:
            tested += 1
            passed += int(bool((n_distinct[fold == f] == 1).all()))
    return tested, passed


def _fp_row(r: Evaluation, model: str, suffix: str) -> dict:
    fit, th = r.fits[model], r.theory
    return {f"fixed_point{suffix}_params": [[p["alpha"], p["beta"], p["lam"]] for p in fit.params],
            f"bound_fixed_point{suffix}": fit.extra["bound"],
            f"fixed_point{suffix}_converged": float(fit.extra["converged"].double().mean()),
            f"multi_fixed_point{suffix}_fraction": float((th["n_distinct" + suffix] > 1).double().mean()),
            f"max_fixed_points{suffix}": int(th["n_distinct" + suffix].max()),
            f"starts_converged{suffix}_fraction": float(th["n_converged" + suffix].mean() / th["n_starts"])}


def _theory_row(r: Evaluation) -> dict:
    th, fits = r.theory, r.fits
    gated = fits["gated"].params
    return {"alpha": [p["alpha"] for p in gated], "beta": [p["beta"] for p in gated],
            "lam": [p["lam"] for p in gated], "kappa": [p["lam"] / p["alpha"] for p in gated],
            "alpha_crit_median": float(th["alpha_crit"].median()),
            "alpha_dense_median": float(r.alpha_dense.median()), "alpha_dense_max": float(r.alpha_dense.max()),
            "one_hot_fraction": float(th["one_hot"].mean()), "support_median": float(th["support"].median()),
            "support_max": int(th["support"].max()),
            "delta_gate_positive": float((th["delta_gate"] > 0).double().mean()),
            "delta_gate_mean": float(th["delta_gate"].mean()),
            "bound_gated": [dynamics.contraction_bound(p["alpha"], p["beta"], p["lam"]) for p in gated],
            **_fp_row(r, "fixed_point", ""), **_fp_row(r, "fixed_point_out", "_out"), "starts": th["n_starts"]}


#: how :func:`theory_table` merges one setting's per-set rows: extremes by their extreme, lists (per fold) joined in
#: set order, every other number (medians, fractions, means) averaged over the sets
_ROW_MAX = ("alpha_dense_max", "support_max", "max_fixed_points", "max_fixed_points_out")


def _merge_rows(rows: Sequence[dict]) -> dict:
    if len(rows) == 1:
        return rows[0]
    out = {}
    for k, v in rows[0].items():
        vals = [r[k] for r in rows]
        if isinstance(v, list):
            out[k] = [x for r in vals for x in r]
        elif k in _ROW_MAX:
            out[k] = max(vals)
        elif k == "starts":
            out[k] = v
        else:
            out[k] = float(sum(vals) / len(vals))
    return out


@dataclass
class TheoryTable:
    """Per setting the theory's quantities at the fitted gate (:func:`theory_table`) and the uniqueness tests."""

    rows: dict[tuple[str, int], dict]
    tags: dict[tuple[str, int], str]
    tested: int
    passed: int

    def text(self) -> str:
        fmt = lambda xs, spec: ", ".join(f"{x:{spec}}" for x in xs)
        lines = [f"{'dataset':>7} {'layer':>5} {'alpha (folds)':>16} {'lam/alpha':>12} {'med a_crit':>10} "
                 f"{'one-hot':>7} {'support med/max':>15} {'D_gate>0':>8} {'bound (c)':>16} {'max a_dense':>11}"]
        for (ds, l), row in self.rows.items():
            lines.append(f"{ds:>7} {l:>5} {fmt(row['alpha'], 'g'):>16} {fmt(row['kappa'], '.3g'):>12} "
                         f"{row['alpha_crit_median']:>10.3f} {row['one_hot_fraction']:>7.2f} "
                         f"{row['support_median']:>7.0f} / {row['support_max']:<5} {row['delta_gate_positive']:>8.2f} "
                         f"{fmt(row['bound_gated'], '.3g'):>16} {row['alpha_dense_max']:>11.3g}")
        lines += ["", f"{'dataset':>7} {'layer':>5} {'region':>7} {'(alpha, beta, lambda) per fold':>34} "
                      f"{'bound':>12} {'converged':>9} {'>1 fixed pt':>11} {'max #':>5}"]
        for (ds, l), row in self.rows.items():
            for region, sfx in (("< 1", ""), (">= 1", "_out")):
                pars = "; ".join(f"({a:g}, {b:g}, {lam:g})" for a, b, lam in row[f"fixed_point{sfx}_params"])
                lines.append(f"{ds:>7} {l:>5} {region:>7} {pars:>34} {fmt(row[f'bound_fixed_point{sfx}'], '.3g'):>12} "
                             f"{row[f'fixed_point{sfx}_converged']:>9.2f} "
                             f"{row[f'multi_fixed_point{sfx}_fraction']:>11.2f} {row[f'max_fixed_points{sfx}']:>5}")
        lines.append(f"fixed-point uniqueness tested where the bound is below 1: {self.tested} fold-settings, "
                     f"unique in {self.passed}")
        return "\n".join(lines)

    def glue_values(self) -> dict:
        """The values the chapter's text cites, formatted as it shows them (names without the chapter's prefix)."""
        out: dict = {}
        fmt = lambda xs, spec: ", ".join(f"{x:{spec}}" for x in xs)
        for s, row in self.rows.items():
            tag = self.tags[s]
            out |= {f"{tag}_alpha": fmt(row["alpha"], "g"), f"{tag}_lam": fmt(row["lam"], "g"),
                    f"{tag}_kappa": fmt(row["kappa"], ".3g"),
                    f"{tag}_beta": fmt(row["beta"], "g"), f"{tag}_alpha_crit": f"{row['alpha_crit_median']:.2f}",
                    f"{tag}_alpha_dense": f"{row['alpha_dense_median']:.3g}",
                    f"{tag}_alpha_dense_max": f"{row['alpha_dense_max']:.3g}",
                    f"{tag}_one_hot": f"{row['one_hot_fraction']:.2f}",
                    f"{tag}_support": f"{row['support_median']:.0f}",
                    f"{tag}_support_max": row["support_max"], f"{tag}_dgate_pos": f"{row['delta_gate_positive']:.2f}",
                    f"{tag}_bound": fmt(row["bound_gated"], ".3g")}
            for sfx in ("", "_out"):
                out |= {f"{tag}_fp{sfx}_params": "; ".join(f"({a:g}, {b:g}, {lam:g})"
                                                          for a, b, lam in row[f"fixed_point{sfx}_params"]),
                        f"{tag}_bound_fp{sfx}": fmt(row[f"bound_fixed_point{sfx}"], ".3g"),
                        f"{tag}_fp{sfx}_conv": f"{row[f'fixed_point{sfx}_converged']:.2f}",
                        f"{tag}_multi{sfx}": f"{row[f'multi_fixed_point{sfx}_fraction']:.2f}",
                        f"{tag}_max_fp{sfx}": row[f"max_fixed_points{sfx}"]}
        return out | {"fp_tested": self.tested, "fp_passed": self.passed}

    def summary(self) -> dict:
        """What the chapter saves: per ``"dataset/layer"`` the row (floats rounded to 4 digits), the tests."""
        r4 = lambda v: round(v, 4) if isinstance(v, float) else [r4(x) for x in v] if isinstance(v, list) else v
        out: dict = {f"{ds}/{l}": {k: r4(v) for k, v in row.items()} for (ds, l), row in self.rows.items()}
        return out | {"uniqueness_tests": {"fold_settings_below_bound": self.tested, "unique_everywhere": self.passed}}


def theory_table(results: Mapping[tuple[str, int], Evaluation | Sequence[Evaluation]],
                 layer_tag: Mapping[int, str]) -> TheoryTable:
    """The theory's quantities per setting (module docstring) and the fixed-point uniqueness tests over all of them.
    A setting with several demonstration sets gets one merged row: per-fold lists joined in set order (fold f of set
    s is entry ``s * n_folds + f``), maxima by their maximum, medians and fractions averaged over the sets; every
    (set, fold) below the contraction bound is one uniqueness test."""
    if not results:
        raise ValueError("results must hold at least one setting (dataset, layer) -> Evaluation")
    rows, tags, tested, passed = {}, {}, 0, 0
    for (ds, l), value in results.items():
        if l not in layer_tag:
            raise ValueError(f"layer_tag has no name for context layer {l}")
        evals = sets_of(value)
        rows[ds, l], tags[ds, l] = _merge_rows([_theory_row(r) for r in evals]), f"{ds}_{layer_tag[l]}"
        for r in evals:
            fp = r.fits["fixed_point"]
            t, p = uniqueness_tests(r.theory["n_distinct"], fp.fold, fp.extra["bound"])
            tested, passed = tested + t, passed + p
    return TheoryTable(rows=rows, tags=tags, tested=tested, passed=passed)
