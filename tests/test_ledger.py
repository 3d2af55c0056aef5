"""The claims ledger's family (cgar_src.analysis.ledger): reading the chapters' recorded tests, Holm over the whole
family, and every row's verdict decided again on the adjusted p-values, on constructed results with known answers."""
import json

import pytest
import torch

from cgar_src.analysis import ledger, stats


def mcnemar(a_only: int, b_only: int, both: int = 50) -> stats.Comparison:
    a = torch.tensor([1.0] * a_only + [0.0] * b_only + [1.0] * both)
    b = torch.tensor([0.0] * a_only + [1.0] * b_only + [1.0] * both)
    return stats.compare(a, b, seed=0)


def sign(n_pos: int, n_neg: int) -> stats.SignTest:
    return stats.sign_test(torch.tensor([0.5] * n_pos + [-0.5] * n_neg))


STRONG_UP, STRONG_DOWN = mcnemar(20, 0), mcnemar(0, 20)      # p = 2^-19: real after any correction here
WEAK_UP = mcnemar(6, 0)                                       # p = 2 / 64 = 0.031: real alone, not after Holm
NULL = mcnemar(3, 3)


def entries() -> dict[str, list[dict]]:
    e = stats.ledger_entry
    return {
        "07": [e("collapse", "mass_change", "sst2", "mass", sign(30, 0)) | {"kmax_label_mass": 0.9},
               e("collapse", "log_n_eff_change", "sst2", "neff", sign(0, 30)),
               e("collapse", "true_minus_random", "sst2", "true - random", sign(0, 30)),
               e("collapse_accuracy", "vs_restricted", "sst2", "kmax - restricted", WEAK_UP),
               e("collapse_accuracy", "shot_step", "sst2", "0 -> 1", NULL)],
        "08": [],
        "11": [e("steering", "vs_majority", "sst2", "add - majority", STRONG_UP) | {"baseline": "majority answer"},
               e("steering", "vs_label_prior", "sst2", "add - prior", WEAK_UP) | {"baseline": "label-prior vector"},
               e("steering", "vs_best_simple", "sst2", "add - majority", STRONG_UP) | {"baseline": "majority answer"},
               e("label_mapping", "vs_random_label", "sst2", "add - random label", STRONG_DOWN)],
        "09": [e("factual", "toward", "lambda 1", "pos - zero", STRONG_UP),
               e("factual", "away", "lambda 1", "neg - zero", STRONG_UP)],
        "12": [e("gate", "kl", "sst2 at layer 25", "KL(dense) - KL(gate)", sign(25, 1))],
    }


def write(root, recorded: dict[str, list[dict]]) -> dict[str, str]:
    chapters = {}
    for ch, tests in recorded.items():
        (root / ch).mkdir()
        (root / ch / "results.json").write_text(json.dumps({"other": 1, "ledger_tests": tests}))
        chapters[ch] = ch
    return chapters


def test_load_and_holm_over_the_whole_family(tmp_path):
    chapters = write(tmp_path, entries())
    recorded = ledger.load_tests(tmp_path, chapters)
    assert len(recorded) == 12 and [ch for ch, _ in recorded][:5] == ["07"] * 5
    fam = ledger.holm_family(recorded)
    assert fam.m == 11                                        # "add - majority" recorded twice, counted once
    raw = [t.raw.p_value for t in fam.distinct()]
    assert [t.p_holm for t in fam.distinct()] == pytest.approx(stats.holm(raw))
    twice = [t for t in fam.tests if t.record["name"] == "add - majority"]
    assert len(twice) == 2 and twice[0].p_holm == twice[1].p_holm
    weak = next(t for t in fam.tests if t.record["name"] == "kmax - restricted")
    assert weak.raw.real and not weak.adjusted.real and weak.adjusted.p_value == weak.p_holm
    assert fam.n_real_raw == 10 and fam.n_real_holm == 8       # the two WEAK_UP tests lose their verdict
    glue = fam.glue_values()
    assert (glue["n_tests"], glue["n_real_raw"], glue["n_real_holm"], glue["n_lost"]) == (11, 10, 8, 2)
    table = fam.table().split("\n")
    assert table[0].startswith("11 distinct tests, Holm-corrected as one family") and len(table) == 2 + 11
    assert sum(" lost " in line for line in table) == 2


def test_row_verdicts_after_holm(tmp_path):
    fam = ledger.holm_family(ledger.load_tests(tmp_path, write(tmp_path, entries())))
    v = fam.verdicts()
    assert list(v) == ["collapse", "collapse_accuracy", "steering", "label_mapping", "factual", "separability", "gate"]
    assert v["separability"] == "no test recorded"
    assert v["collapse"] == ("collapse supported on sst2; random labels concentrate recall more than true labels on: "
                             "sst2; true labels more than random ones on: none")
    # real alone (p = 0.031), not after Holm: prompting no longer "really beats" the label-restricted answer
    assert v["collapse_accuracy"].startswith("prompting really beats the label-restricted zero-shot answer on: none")
    # the label-prior rung was p = 0.031 alone: after Holm the vector is a label-set prior only
    assert v["steering"] == "sst2: label-set prior only"
    assert v["label_mapping"] == "true labels really better on: none; really worse on: sst2; indistinguishable on: none"
    assert v["factual"].startswith("not reproduced on this model") and "never below neutral" in v["factual"]
    assert v["gate"].startswith("KL(dense) - KL(gate): really above 0 in 1 of 1 settings (sst2 at layer 25)")


def test_missing_or_stale_results_name_the_chapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="run chapter 10_separability first"):
        ledger.load_tests(tmp_path, {"10_separability": "separability"})
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"verdict": "x"}))
    with pytest.raises(ValueError, match="rerun chapter 11_referee_checks"):
        ledger.load_tests(tmp_path, {"11_referee_checks": "old"})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text(json.dumps({"ledger_tests": [{"row": "x"}]}))
    with pytest.raises(ValueError, match="chapter 09 lacks the fields"):
        ledger.load_tests(tmp_path, {"09": "bad"})
    # a chapter allowed to record nothing yet contributes no test, and is named
    assert ledger.load_tests(tmp_path, {"11_referee_checks": "old"}, optional=["11_referee_checks"]) == []
    assert ledger.not_recorded(tmp_path, {"11_referee_checks": "old", "x": "missing"}) == ["11_referee_checks"]
    with pytest.raises(ValueError, match="optional"):
        ledger.load_tests(tmp_path, {"11_referee_checks": "old"}, optional=["12"])


def test_one_test_recorded_with_two_p_values_is_refused():
    rec = stats.ledger_entry("steering", "vs_majority", "sst2", "a - b", STRONG_UP)
    other = stats.ledger_entry("steering", "vs_best_simple", "sst2", "a - b", WEAK_UP)
    with pytest.raises(ValueError, match="different p-values"):
        ledger.holm_family([("11", rec), ("11", other)])
    with pytest.raises(ValueError, match="at least one"):
        ledger.holm_family([])


def test_the_default_chapters_are_the_transformer_chapters():
    assert list(ledger.CHAPTERS) == ["07_memory_collapse", "08_coupled_retrieval", "09_factual_steering",
                                     "10_separability", "11_referee_checks", "12_gate_in_transformer"]
