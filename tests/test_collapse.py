"""Memory collapse (chapter 07): the logit-lens curves against a direct decode on tiny random models, and the
table, paired effects and verdicts on constructed per-query values with known answers."""
import math

import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import collapse, stats
from cgar_src.analysis.stats import wilson
from cgar_src.lm import Unembed

LABEL_IDS = [5, 17, 99]


def random_states(P: int = 6, layers: int = 4, d: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(P, layers, d, generator=torch.Generator().manual_seed(seed)) * 2


def test_lens_curves_match_a_direct_decode(tiny):
    un = Unembed(tiny.model)
    h = random_states()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    c = collapse.lens_curves(un, h, LABEL_IDS, labels)
    with torch.no_grad():
        logp = torch.log_softmax(un(h).double(), -1)                           # (P, L+1, V)
    p = logp.exp()
    torch.testing.assert_close(c.n_eff.double(), torch.exp(-(p * logp).sum(-1)), rtol=1e-4, atol=0)
    torch.testing.assert_close(c.label_mass.double(), p[..., LABEL_IDS].sum(-1), rtol=1e-4, atol=1e-7)
    last = logp[:, -1]
    want = (last.argmax(-1) == torch.tensor(LABEL_IDS)[labels]).double()
    assert torch.equal(c.correct, want)
    assert torch.equal(c.restricted, (last[:, LABEL_IDS].argmax(-1) == labels).double())
    assert c.calibrated is None


def test_calibration_subtracts_the_content_free_label_logits(tiny):
    un = Unembed(tiny.model)
    h, cf = random_states(seed=1), random_states(seed=2)
    labels = torch.tensor([0, 1, 2, 0, 0, 2])
    c = collapse.lens_curves(un, h, LABEL_IDS, labels, cf_states=cf)
    with torch.no_grad():
        z, z_cf = un(h[:, -1])[:, LABEL_IDS].double(), un(cf[:, -1])[:, LABEL_IDS].double()
    assert torch.equal(c.calibrated, ((z - z_cf).argmax(-1) == labels).double())
    assert not torch.equal(c.calibrated, c.restricted)      # the content-free prompt changes some answers


def test_lens_curves_reject_mismatched_shapes(tiny):
    un = Unembed(tiny.model)
    with pytest.raises(ValueError, match="states must be"):
        collapse.lens_curves(un, random_states(P=5), LABEL_IDS, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="cf_states"):
        collapse.lens_curves(un, random_states(), LABEL_IDS, torch.zeros(6, dtype=torch.long),
                             cf_states=random_states()[:, :2])


def curves(n_eff_last, mass_last, correct, restricted, calibrated=None, layers: int = 3) -> collapse.LensCurves:
    """Curves whose last layer holds the given per-query values (earlier layers: constants that must not matter)."""
    P = len(correct)
    n_eff = torch.full((P, layers), 1000.0)
    mass = torch.zeros(P, layers)
    n_eff[:, -1], mass[:, -1] = torch.tensor(n_eff_last, dtype=torch.float32), torch.tensor(mass_last)
    as01 = lambda x: None if x is None else torch.tensor(x, dtype=torch.float64)
    return collapse.LensCurves(n_eff=n_eff, label_mass=mass, correct=as01(correct), restricted=as01(restricted),
                               calibrated=as01(calibrated))


def test_last_layer_summary_reads_the_last_layer_only():
    c = curves([1.0, 3.0, 10.0, 40.0], [0.5, 0.25, 0.125, 0.125], [1, 0, 1, 1], [1, 1, 1, 1])
    row = collapse.last_layer_summary(c)
    assert row["median_n_eff"] == 3.0                      # torch's median: the lower middle value
    assert row["label_mass"] == 0.25
    assert row["accuracy_correct"] == list(wilson(3, 4)) and row["accuracy_restricted"] == list(wilson(4, 4))
    assert "accuracy_calibrated" not in row


def test_majority_summary_on_known_counts():
    labels = torch.tensor([0, 1, 1, 1, 2])
    pool = torch.tensor([2, 2, 2, 0])
    m = collapse.majority_summary(labels, pool, ["a", "b", "c"])
    # the baseline answers the pool's majority "c" (1 of 5 queries); the queries' own "b" is hindsight, shown only
    assert m["majority_label"] == "c" and m["pool"] == list(wilson(1, 5))
    assert m["queries_majority_label"] == "b" and m["queries"] == list(wilson(3, 5))
    assert m["query_class_shares"] == pytest.approx([0.2, 0.6, 0.2])
    with pytest.raises(ValueError, match="label_words"):
        collapse.majority_summary(labels, pool, ["a", "b"])


def test_last_layer_table_lines_and_summary():
    c = {0: curves([500.0, 700.0], [0.1, 0.2], [0, 0], [1, 0], [1, 1]), 1: curves([3.0, 5.0], [0.9, 0.8], [1, 0], [1, 0]),
         "random": curves([2.0, 2.0], [0.95, 0.9], [0, 0], [0, 1])}
    summary, lines = collapse.last_layer_table({"sst2": c}, {"sst2": torch.tensor([0, 1])},
                                               {"sst2": torch.tensor([1, 1, 0])}, {"sst2": ("negative", "positive")},
                                               shots=[0, 1], random_label_shots=1)
    assert lines[0] == collapse.TABLE_HEADER and len(lines) == 5
    assert lines[1].split()[:4] == ["sst2", "zero-shot", "500.0", "0.150"]
    assert lines[2].rstrip().endswith("-")                 # 1-shot is not calibrated
    assert "1-shot random" in lines[3]
    assert "majority answer: always 'positive' (majority of the demonstration pool)" in lines[4]
    assert "in hindsight, always 'negative'" in lines[4]
    assert set(summary) == {"sst2_0", "sst2_1", "sst2_random", "sst2_majority"}


def effect_curves(P: int = 40, mass_gain: float = 0.6, random_gain: float = 0.6) -> dict:
    """Zero-shot, 1-shot and a random-label 1-shot prompt set with controlled last-layer differences."""
    g = torch.Generator().manual_seed(0)
    base_mass = torch.rand(P, generator=g) * 0.1
    n0 = 200 + 100 * torch.rand(P, generator=g)
    y = (torch.arange(P) % 2 == 0).double()
    zero = curves(n0.tolist(), base_mass.tolist(), [0.0] * P, y.tolist(), y.tolist())
    one = curves((n0 / 50).tolist(), (base_mass + mass_gain).tolist(), [1.0] * P, (1 - y).tolist())
    rnd = curves((n0 / 60).tolist(), (base_mass + random_gain).tolist(), [0.0] * P, [0.0] * P)
    return {0: zero, 1: one, "random": rnd}


def test_shot_effect_detects_a_collapse_and_the_format_only_case():
    labels = torch.tensor([0, 1] * 20)
    pool = torch.tensor([1, 1, 0])                           # the pool's majority answers the odd queries only
    e = collapse.shot_effect(effect_curves(), labels, pool, shots=[0, 1], random_label_shots=1, seed=0)
    assert e.mass_change.diff == pytest.approx(0.6, abs=1e-6) and e.mass_change.n_pos == 40
    assert e.mass_change.p_value == pytest.approx(2 * 0.5 ** 40) and e.mass_change.better
    assert e.log_n_eff_change.diff == pytest.approx(-math.log(50), abs=1e-5) and e.log_n_eff_change.worse
    assert e.true_minus_random_mass.diff == pytest.approx(0, abs=1e-6)
    assert e.true_minus_random_mass.p_value == 1.0          # every query a tie: no direction at all
    v = e.verdict()
    assert v["collapse"] and v["onto_label_set"] and not v["random_more"] and not v["true_more"]
    assert v["beats_restricted"] and v["beats_majority"]    # 1-shot answers every query, the baselines half
    assert e.accuracy["kmax_vs_majority"].n_a_only == 20     # the pool majority (class 1) is right on the odd half
    # the label-restricted accuracy flips from the even to the odd queries: a step that is not real either way
    assert not v["more_shots_worse"] and e.steps["0_to_1"].diff == 0
    assert set(e.accuracy) == {"kmax_vs_restricted0", "kmax_vs_majority", "kmax_vs_calibrated0"}
    lines = e.lines("sst2")
    assert lines[0].startswith("sst2: 1-shot minus zero-shot: label mass +0.600") and lines[0].endswith("collapse real")
    assert "sign test p = " in lines[0] and "sign test p = 1" in lines[1]
    assert len(lines) == 2 + 3 + 1
    glued = e.glue_values("sst2")
    assert glued["sst2_dmass"].startswith("+0.600 [") and glued["sst2_shot_steps"].startswith("0 to 1 shots +0.000")
    assert set(e.record()) >= {"label_mass_change", "log_n_eff_change", "label_restricted_shot_steps"}
    assert e.record()["label_mass_change"]["test"] == "sign" and e.record()["kmax_vs_majority"]["test"] == "McNemar"
    tests = e.ledger_tests("sst2")
    assert [(t["row"], t["role"]) for t in tests] == [
        ("collapse", "mass_change"), ("collapse", "log_n_eff_change"), ("collapse", "true_minus_random"),
        ("collapse_accuracy", "vs_restricted"), ("collapse_accuracy", "shot_step")]
    assert tests[0]["kmax_label_mass"] == pytest.approx(e.kmax_mass) and all(t["setting"] == "sst2" for t in tests)
    assert tests[0]["p_value"] == e.mass_change.p_value and tests[3]["test"] == "McNemar"


def test_shot_effect_partial_collapse_and_true_labels_that_matter():
    e = collapse.shot_effect(effect_curves(mass_gain=0.3, random_gain=0.1), torch.tensor([0, 1] * 20),
                             torch.tensor([0, 1]), shots=[0, 1], random_label_shots=1)
    v = e.verdict()
    assert v["collapse"] and not v["onto_label_set"] and v["true_more"] and not v["random_more"]
    # random labels that concentrate more: the reverse, a real effect of the other sign
    r = collapse.shot_effect(effect_curves(mass_gain=0.3, random_gain=0.5), torch.tensor([0, 1] * 20),
                             torch.tensor([0, 1]), shots=[0, 1], random_label_shots=1).verdict()
    assert r["random_more"] and not r["true_more"]


def test_collapse_verdict_needs_both_tests():
    up, down, flat = stats.sign_test(torch.ones(10)), stats.sign_test(-torch.ones(10)), stats.sign_test(torch.zeros(10))
    assert collapse.collapse_verdict(up, down, 0.6) == {"collapse": True, "onto_label_set": True}
    assert collapse.collapse_verdict(up, down, 0.4)["onto_label_set"] is False
    assert collapse.collapse_verdict(up, flat, 0.9)["collapse"] is False
    assert collapse.collapse_verdict(flat, down, 0.9, down) == {"collapse": False, "onto_label_set": False,
                                                                 "random_more": True, "true_more": False}
    assert collapse.accuracy_verdict(up, [flat, down]) == {"beats_restricted": True, "more_shots_worse": True}


def test_shot_effect_names_missing_prompt_sets():
    c = effect_curves()
    del c["random"]
    with pytest.raises(ValueError, match="random"):
        collapse.shot_effect(c, torch.tensor([0, 1] * 20), torch.tensor([0, 1]), shots=[0, 1], random_label_shots=1)


def test_verdict_values_name_the_datasets():
    v = {"sst2": dict(collapse=True, onto_label_set=True, random_more=True, true_more=False, beats_restricted=False,
                      beats_majority=True, more_shots_worse=False),
         "trec": dict(collapse=True, onto_label_set=False, random_more=True, true_more=False, beats_restricted=False,
                      beats_majority=False, more_shots_worse=True)}
    out = collapse.verdict_values(v)
    assert out["verdict"] == ("supported on sst2; only partly on trec (real, but the label set keeps less than half "
                              "the mass)")
    assert out["random_more"] == "sst2, trec" and out["true_more"] == "none" and out["beats_restricted"] == "none"
    assert out["beats_majority"] == "sst2" and out["more_shots_worse"] == "trec"
    none = {ds: dict(d, collapse=False, onto_label_set=False) for ds, d in v.items()}
    assert collapse.verdict_values(none)["verdict"] == "not reproduced on this model"


def test_headline_values_round_as_the_text_shows():
    row = lambda n, m, a: dict(median_n_eff=n, label_mass=m, accuracy_correct=[a, 0, 1], accuracy_restricted=[a, 0, 1])
    summary = {"x_0": row(730.04, 0.1071, 0.46), "x_1": row(3.86, 0.9034, 0.7), "x_2": row(2.04, 0.95, 0.8),
               "x_random": row(3.21, 0.9241, 0.66),
               "x_majority": dict(pool=[0.5104, 0, 1], majority_label="neg", queries=[0.9, 0, 1])}
    out = collapse.headline_values(summary, ["x"], shots=[0, 1, 2], random_label_shots=1)
    assert out["x_zero"] == 730.0 and out["x_icl"] == 2.0 and out["x_mass"] == 0.95 and out["x_true1_mass"] == 0.903
    assert out["x_acc1"] == 0.7 and out["x_acckmax"] == 0.8 and out["x_majority"] == 0.51 and out["kmax"] == 2
    assert "x_calibrated0" not in out and out["x_random_neff"] == 3.2


def test_pooled_shot_effect_counts_each_query_once():
    """Several demonstration sets of the same queries: outcomes are averaged per query, so two identical sets give
    the one-set test exactly (McNemar equals the sign test on the discordant queries), and a set that disagrees
    dilutes the effect instead of doubling n."""
    labels, pool = torch.tensor([0, 1] * 20), torch.tensor([1, 1, 0])
    one = collapse.shot_effect(effect_curves(), labels, pool, shots=[0, 1], random_label_shots=1)
    two = collapse.shot_effect([effect_curves(), effect_curves()], labels, pool, shots=[0, 1], random_label_shots=1)
    assert two.mass_change.n == one.mass_change.n == 40
    assert two.mass_change.p_value == pytest.approx(one.mass_change.p_value)
    a, b = one.accuracy["kmax_vs_restricted0"], two.accuracy["kmax_vs_restricted0"]
    assert a.test == "McNemar" and b.test == "McNemar"           # identical sets: still 0/1 outcomes
    assert b.p_value == pytest.approx(a.p_value) and b.diff == pytest.approx(a.diff)
    weak = effect_curves(mass_gain=0.0)
    mixed = collapse.shot_effect([effect_curves(), weak], labels, pool, shots=[0, 1], random_label_shots=1)
    assert mixed.mass_change.diff == pytest.approx(0.3, abs=1e-6) and mixed.mass_change.n == 40
    flip = effect_curves()
    flip[1].correct = 1 - flip[1].correct                        # the second set gets every query wrong
    c = collapse.shot_effect([effect_curves(), flip], labels, pool, shots=[0, 1], random_label_shots=1)
    assert c.accuracy["kmax_vs_restricted0"].test == "permutation"   # averaged outcomes are shares, not 0/1
    assert c.accuracy["kmax_vs_restricted0"].diff == pytest.approx(0.0)
    with pytest.raises(ValueError, match="curves"):
        collapse.shot_effect([], labels, pool, shots=[0, 1], random_label_shots=1)


def test_layer_effects_find_a_reversal():
    g = torch.Generator().manual_seed(1)
    P, L1 = 30, 4
    n0, m0 = 100 + torch.rand(P, L1, generator=g), 0.1 + 0.01 * torch.rand(P, L1, generator=g)
    n1, m1 = n0.clone(), m0.clone()
    n1[:, 1], m1[:, 1] = n0[:, 1] / 10, m0[:, 1] + 0.5          # layer 1: collapse
    n1[:, 2], m1[:, 2] = n0[:, 2] * 3, m0[:, 2] - 0.05          # layer 2: N_eff rises
    mk = lambda n, m: collapse.LensCurves(n_eff=n, label_mass=m, correct=torch.zeros(P), restricted=torch.zeros(P))
    eff = collapse.layer_effects({0: mk(n0, m0), 1: mk(n1, m1)}, k=1, layers=[0, 1, 2])
    assert [e.word for e in eff] == ["no real collapse", "collapse", "N_eff rises"]
    assert [e.spreads for e in eff] == [False, False, True]
    with pytest.raises(ValueError, match="layers"):
        collapse.layer_effects({0: mk(n0, m0), 1: mk(n1, m1)}, k=1, layers=[7])


def test_random_label_control_on_the_first_set_only_pairs_with_that_sets_true_labels():
    """Chapter 07 runs the random-label control on the first set only (random_label_sets): true minus random labels
    is then that set's own comparison, whatever the other sets' true labels give, while the collapse test pools
    every set; the tables and headline numbers summarise the control over the sets that ran it."""
    labels, pool = torch.tensor([0, 1] * 20), torch.tensor([1, 1, 0])
    first = effect_curves(random_gain=0.2)
    other = effect_curves(mass_gain=0.1)
    del other["random"]
    pooled = collapse.shot_effect([first, other], labels, pool, shots=[0, 1], random_label_shots=1)
    alone = collapse.shot_effect(first, labels, pool, shots=[0, 1], random_label_shots=1)
    assert pooled.true_minus_random_mass == alone.true_minus_random_mass
    assert pooled.true_minus_random_mass.diff == pytest.approx(0.4, abs=1e-6)   # 0.6 - 0.2 on the first set
    assert pooled.mass_change.diff == pytest.approx(0.35, abs=1e-6)             # (0.6 + 0.1) / 2 over both sets
    with pytest.raises(ValueError, match="random"):
        collapse.shot_effect([other, other], labels, pool, shots=[0, 1], random_label_shots=1)
    lab, pools, words = {"sst2": labels}, {"sst2": pool}, {"sst2": ("negative", "positive")}
    summaries = [collapse.last_layer_table({"sst2": c}, lab, pools, words, shots=[0, 1], random_label_shots=1)[0]
                 for c in (first, other)]
    assert "sst2_random" in summaries[0] and "sst2_random" not in summaries[1]
    head = collapse.headline_spread(summaries, ["sst2"], shots=[0, 1], random_label_shots=1)
    one = collapse.headline_values(summaries[0], ["sst2"], shots=[0, 1], random_label_shots=1)
    assert head["sst2_random_mass"] == f"{one['sst2_random_mass']:.3f}"        # one set: its value alone
    assert head["sst2_true1_mass"] == f"{one['sst2_true1_mass']:.3f}"          # the true labels of that same set
    assert "over 2 sets" in head["sst2_mass"]
    table = collapse.spread_table(summaries, ["sst2"], shots=[0, 1], random_label_shots=1)
    assert sum("1-shot random" in line for line in table) == 1
