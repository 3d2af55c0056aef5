r"""The claims ledger's family of tests: read from the chapters' results, Holm-corrected as one family, and the
verdict of every transformer row decided again on the adjusted p-values (book chapter ``13_claims_ledger``).

Each transformer chapter saves, in its ``results.json`` under ``ledger_tests``, the exact paired tests that the
ledger's verdicts rest on (:func:`cgar_src.analysis.stats.ledger_entry`: the row, the test's role in that row's
verdict rule, the setting, what is compared, the kind of test, ``McNemar`` or ``sign``, and its fields). With m
distinct tests (a test named in two rows counts once), Holm's step-down adjustment
(:func:`cgar_src.analysis.stats.holm`),

.. math:: \tilde p_{(i)} = \min\Big(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\Big),

keeps the probability of calling *any* of the m differences real when none is at or below 0.05, whatever their
dependence. A row's verdict is then its chapter's rule (:data:`RULES`) applied to the tests rebuilt with their
adjusted p-values (:func:`cgar_src.analysis.stats.paired_from_record`): a difference counts only when its Holm-adjusted
p-value is below 0.05.

* :func:`load_tests`: every chapter's recorded tests (a clear error naming the chapter whose results are missing);
* :func:`holm_family`: the family, deduplicated and adjusted (:class:`Family`), with the verdicts, the printed table
  and the values the ledger glues.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import baselines, collapse, factual
from .stats import ALPHA, Comparison, SignTest, fmt_list, holm, paired_from_record

__all__ = ["CHAPTERS", "REQUIRED", "LedgerTest", "load_tests", "not_recorded", "Family", "holm_family", "RULES",
           "ROW_TITLES"]

#: the chapters whose results hold ledger tests, and their results folders (the chapters' default ``out_dir``)
CHAPTERS = {"07_memory_collapse": "memory_collapse", "08_coupled_retrieval": "coupled_retrieval",
            "09_factual_steering": "factual_steering", "10_separability": "separability",
            "11_referee_checks": "referee_checks", "12_gate_in_transformer": "gate_in_transformer"}
REQUIRED = ("row", "role", "setting", "name", "test", "p_value")   #: the fields every recorded test must have

ROW_TITLES = {"collapse": "Figures 4, 8, 9 (collapse)", "collapse_accuracy": "Figures 4, 8, 9 (accuracy)",
              "steering": "Figures 5, 10, 11 (held out)", "label_mapping": "Abstract 4 (label mapping)",
              "factual": "Figure 6", "separability": "Figure 7", "gate": "Title claim (the gate)"}


def load_tests(results_root: str | Path, chapters: Mapping[str, str] | None = None, *,
               optional: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """Every recorded test ``(chapter, record)`` of ``chapters`` (name -> results folder under ``results_root``;
    default :data:`CHAPTERS`), in chapter order. A missing ``results.json`` raises FileNotFoundError ("run chapter X
    first"); results without ``ledger_tests`` raise ValueError naming the chapter, except for the chapters named in
    ``optional`` (they then contribute no test: :func:`not_recorded` names them); a test lacking a field of
    :data:`REQUIRED` raises ValueError."""
    root = Path(results_root)
    out = []
    chapters = CHAPTERS if chapters is None else chapters
    unknown = sorted(set(optional) - set(chapters))
    if unknown:
        raise ValueError(f"optional names chapters that are not read: {unknown}")
    for chapter, folder in chapters.items():
        path = root / folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run chapter {chapter} first (the claims ledger reads the "
                                    f"tests it saves)")
        results = json.loads(path.read_text())
        if "ledger_tests" not in results and chapter in optional:
            continue
        if "ledger_tests" not in results:
            raise ValueError(f"{path} holds no 'ledger_tests': rerun chapter {chapter} (its results predate the "
                             f"claims ledger's record)")
        for rec in results["ledger_tests"]:
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise ValueError(f"a test recorded by chapter {chapter} lacks the fields {missing}: {rec}")
            out.append((chapter, rec))
    return out


def not_recorded(results_root: str | Path, chapters: Mapping[str, str] | None = None) -> list[str]:
    """The chapters of ``chapters`` (default :data:`CHAPTERS`) whose results exist but record no ``ledger_tests``."""
    root = Path(results_root)
    return [ch for ch, folder in (CHAPTERS if chapters is None else chapters).items()
            if (root / folder / "results.json").is_file()
            and "ledger_tests" not in json.loads((root / folder / "results.json").read_text())]


@dataclass(frozen=True)
class LedgerTest:
    """One recorded test: its chapter, record, the test itself (raw p-value) and with the Holm-adjusted p-value."""

    chapter: str
    record: dict
    raw: Comparison | SignTest
    p_holm: float

    @property
    def adjusted(self) -> Comparison | SignTest:
        """The test with its Holm-adjusted p-value: ``real``, ``better`` and ``worse`` read the family's decision."""
        return replace(self.raw, p_value=self.p_holm)

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two records the same test: chapter, setting and what is compared."""
        return self.chapter, self.record["setting"], self.record["name"]


def _by_setting(tests: Sequence[LedgerTest]) -> dict[str, dict[str, list[LedgerTest]]]:
    out: dict[str, dict[str, list[LedgerTest]]] = {}
    for t in tests:
        out.setdefault(t.record["setting"], {}).setdefault(t.record["role"], []).append(t)
    return out


def _one(roles: Mapping[str, list[LedgerTest]], role: str, setting: str, row: str) -> LedgerTest:
    if len(roles.get(role, [])) != 1:
        raise ValueError(f"row {row!r}, setting {setting!r} must hold exactly one test of role {role!r}, "
                         f"got {len(roles.get(role, []))}")
    return roles[role][0]


def _rule_collapse(tests: Sequence[LedgerTest]) -> str:
    verdicts = {}
    for ds, roles in _by_setting(tests).items():
        mass = _one(roles, "mass_change", ds, "collapse")
        verdicts[ds] = collapse.collapse_verdict(mass.adjusted, _one(roles, "log_n_eff_change", ds, "collapse").adjusted,
                                                 mass.record["kmax_label_mass"],
                                                 _one(roles, "true_minus_random", ds, "collapse").adjusted)
    v = collapse.verdict_values(verdicts)
    return (f"collapse {v['verdict']}; random labels concentrate recall more than true labels on: "
            f"{v['random_more']}; true labels more than random ones on: {v['true_more']}")


def _rule_collapse_accuracy(tests: Sequence[LedgerTest]) -> str:
    verdicts = {ds: collapse.accuracy_verdict(_one(roles, "vs_restricted", ds, "collapse_accuracy").adjusted,
                                              [t.adjusted for t in roles.get("shot_step", [])])
                for ds, roles in _by_setting(tests).items()}
    where = lambda name: fmt_list([ds for ds, v in verdicts.items() if v[name]])
    return (f"prompting really beats the label-restricted zero-shot answer on: {where('beats_restricted')}; more "
            f"shots really worse (label-restricted accuracy, from one shot count to the next) on: "
            f"{where('more_shots_worse')}")


def _rule_steering(tests: Sequence[LedgerTest]) -> str:
    parts = []
    for ds, roles in _by_setting(tests).items():
        t = {r: _one(roles, r, ds, "steering") for r in ("vs_majority", "vs_label_prior", "vs_best_simple")}
        v = baselines.additive_verdict(*(t[r].adjusted for r in ("vs_majority", "vs_label_prior", "vs_best_simple")))
        simple = t["vs_best_simple"].record.get("baseline", "the strongest simple baseline")
        parts.append(f"{ds}: {v}" + (f" (strongest simple baseline: {simple})"
                                     if v in ("below a simple baseline", "partly", "supported") else ""))
    return "; ".join(parts)


def _rule_label_mapping(tests: Sequence[LedgerTest]) -> str:
    by = {ds: _one(roles, "vs_random_label", ds, "label_mapping").adjusted for ds, roles in _by_setting(tests).items()}
    return (f"true labels really better on: {fmt_list([d for d, c in by.items() if c.better])}; really worse on: "
            f"{fmt_list([d for d, c in by.items() if c.worse])}; indistinguishable on: "
            f"{fmt_list([d for d, c in by.items() if not c.real])}")


def _rule_factual(tests: Sequence[LedgerTest]) -> str:
    toward, away = {}, {}
    for setting, roles in _by_setting(tests).items():
        lam = float(setting.removeprefix("lambda "))
        toward[lam] = _one(roles, "toward", setting, "factual").adjusted
        away[lam] = _one(roles, "away", setting, "factual").adjusted
    return factual.bidirectional_verdict(toward, away)["verdict"]


def _rule_separability(tests: Sequence[LedgerTest]) -> str:
    settings = _by_setting(tests)
    holds = [s for s, roles in settings.items()
             if all(_one(roles, r, s, "separability").adjusted.better
                    for r in ("vs_bag_of_words", "vs_majority", "vs_centred_lens"))]
    return (f"separability early (at L/3 the probe beats the bag of words, the majority class and the centred lens) "
            f"in {len(holds)} of {len(settings)} settings: {fmt_list(holds)}")


def _rule_tally(tests: Sequence[LedgerTest]) -> str:
    """Any other row (the gate's, chapter 12): per compared quantity, in how many settings it is really above 0 and
    really below 0 after Holm."""
    by_name: dict[str, list[LedgerTest]] = {}
    for t in tests:
        by_name.setdefault(t.record["role"], []).append(t)
    parts = []
    for ts in by_name.values():
        up = [t.record["setting"] for t in ts if t.adjusted.better]
        down = [t.record["setting"] for t in ts if t.adjusted.worse]
        parts.append(f"{ts[0].record['name']}: really above 0 in {len(up)} of {len(ts)} settings ({fmt_list(up)}), "
                     f"really below 0 in {len(down)} ({fmt_list(down)})")
    return "; ".join(parts)


#: each row's verdict rule on the Holm-adjusted tests; rows not listed use the tally (``_rule_tally``)
RULES = {"collapse": _rule_collapse, "collapse_accuracy": _rule_collapse_accuracy, "steering": _rule_steering,
         "label_mapping": _rule_label_mapping, "factual": _rule_factual, "separability": _rule_separability}


@dataclass
class Family:
    """The ledger's tests, one entry per recorded test (``tests``; a test recorded in two rows appears twice, with
    the same adjusted p-value), ``m`` the number of distinct tests Holm corrected for."""

    tests: list[LedgerTest]
    m: int
    rows: list[str] = field(default_factory=list)

    def row_tests(self, row: str) -> list[LedgerTest]:
        return [t for t in self.tests if t.record["row"] == row]

    def verdicts(self) -> dict[str, str]:
        """Every row's verdict after Holm, by row id: the rows of :data:`ROW_TITLES` first (a row with no recorded
        test reads "no test recorded"), then any other recorded row."""
        rows = list(ROW_TITLES) + [r for r in self.rows if r not in ROW_TITLES]
        return {row: RULES.get(row, _rule_tally)(self.row_tests(row)) if row in self.rows else "no test recorded"
                for row in rows}

    def distinct(self) -> list[LedgerTest]:
        seen, out = set(), []
        for t in self.tests:
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
        return out

    @property
    def n_real_raw(self) -> int:
        """Distinct tests that reject at 0.05 on their own."""
        return sum(t.raw.real for t in self.distinct())

    @property
    def n_real_holm(self) -> int:
        """Distinct tests that reject at 0.05 after Holm."""
        return sum(t.adjusted.real for t in self.distinct())

    def table(self) -> str:
        """Every distinct test: chapter, row, setting, what is compared, the test, the raw and the Holm-adjusted
        p-value and the decision after Holm."""
        lines = [f"{self.m} distinct tests, Holm-corrected as one family (level {ALPHA:g}); real alone: "
                 f"{self.n_real_raw}, real after Holm: {self.n_real_holm}",
                 f"{'chapter':<22} {'row':<17} {'setting':<18} {'test':<7} {'p':>9} {'p (Holm)':>9}  decision  compared"]
        for t in self.distinct():
            r = t.record
            decision = ("real" if t.adjusted.real else "lost" if t.raw.real else "n.s.")
            lines.append(f"{t.chapter:<22} {r['row']:<17} {r['setting']:<18} {r['test']:<7} {t.raw.p_value:>9.3g} "
                         f"{t.p_holm:>9.3g}  {decision:<8}  {r['name']} ({t.raw.diff:+.3f})")
        return "\n".join(lines)

    def glue_values(self) -> dict:
        """The values the ledger's text cites (without the ``ledger_`` prefix): the family size, how many tests are
        real alone and after Holm, and every row's verdict (``verdict_{row}``)."""
        return {"n_tests": self.m, "n_real_raw": self.n_real_raw, "n_real_holm": self.n_real_holm,
                "n_lost": self.n_real_raw - self.n_real_holm,
                **{f"verdict_{row}": v for row, v in self.verdicts().items()}}


def holm_family(recorded: Sequence[tuple[str, dict]]) -> Family:
    """Holm-adjust the recorded tests ``(chapter, record)`` (:func:`load_tests`) as one family. Records of the same
    test (same chapter, setting and compared pair) count once and must agree on the p-value."""
    if not recorded:
        raise ValueError("recorded must hold at least one test (chapter, record)")
    raw = [(ch, rec, paired_from_record(rec)) for ch, rec in recorded]
    p_of: dict[tuple[str, str, str], float] = {}
    for ch, rec, t in raw:
        key = (ch, rec["setting"], rec["name"])
        if key in p_of and p_of[key] != t.p_value:
            raise ValueError(f"chapter {ch} records the test {key[1]!r} {key[2]!r} twice with different p-values "
                             f"({p_of[key]} and {t.p_value})")
        p_of[key] = t.p_value
    keys = list(p_of)
    adjusted = dict(zip(keys, holm([p_of[k] for k in keys])))
    tests = [LedgerTest(chapter=ch, record=rec, raw=t, p_holm=adjusted[ch, rec["setting"], rec["name"]])
             for ch, rec, t in raw]
    return Family(tests=tests, m=len(keys), rows=list(dict.fromkeys(rec["row"] for _, rec in recorded)))
