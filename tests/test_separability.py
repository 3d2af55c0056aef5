"""Chapter 10's readouts and assessment (cgar_src.analysis.separability): the four readouts on a tiny random model,
and the comparisons, onsets, verdict and report on constructed correctness with known answers."""
import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import separability as sep
from cgar_src.analysis.baselines import calibrated_correct
from cgar_src.analysis.probes import label_logits
from cgar_src.analysis.stats import fmt_list
from cgar_src.lm import Unembed

P, LAYERS, THIRD, LAST = 100, 7, 2, 6
MAJORITY = torch.tensor([1.0] * 50 + [0.0] * 50)
LEXICAL = torch.tensor([1.0] * 60 + [0.0] * 40)
LABELS = torch.arange(P) % 2


def ones_from(layer: int) -> torch.Tensor:
    a = torch.zeros(P, LAYERS)
    a[:50] = 1
    a[:, layer:] = 1
    return a


def readouts(probe, centred, raw, calibrated, answer: int = 1) -> sep.Readouts:
    z = torch.zeros(P, LAYERS, 2)
    z[..., answer] = 1.0                                 # the raw lens answers one label everywhere
    correct = {"probe": probe, "raw lens": raw, "centred lens": centred, "calibrated lens": calibrated}
    return sep.Readouts(correct=correct, label_logits=z, labels=LABELS)


def constructed() -> sep.Separability:
    results = {
        # the claim holds: at layer 2 the probe is perfect, the lenses read the majority class; centred onset 5
        ("sst2", 0): readouts(ones_from(2), ones_from(5), ones_from(LAYERS), torch.ones(P, LAYERS)),
        # the probe never beats the words (it *is* the words); the centred lens beats majority from layer 2
        ("sst2", 1): readouts(LEXICAL[:, None].expand(P, LAYERS).clone(), ones_from(2), ones_from(6), ones_from(LAYERS),
                              answer=0),
    }
    return sep.assess(results, {"sst2": LEXICAL}, {"sst2": MAJORITY}, third=THIRD, last=LAST, seed=0)


def test_names_and_lists():
    assert sep.setting_name("sst2", 0) == "SST-2 zero-shot" and sep.setting_name("trec", 4) == "TREC 4-shot"
    assert sep.setting_name("other", 1) == "other 1-shot"
    assert fmt_list([]) == "none" and fmt_list(["a", "b"]) == "a, b"


def test_constant_answer_is_one_labels_base_rate():
    r = readouts(ones_from(2), ones_from(2), ones_from(2), ones_from(2), answer=1)
    c = r.constant_answer(THIRD)
    assert c == sep.ConstantAnswer(n_labels_used=1, answer=1, answer_share=1.0, base_rate=0.5)
    z = torch.zeros(P, LAYERS, 3)
    z[:70, :, 2] = 1.0                                   # 70 queries answered '2', 30 answered '0' (ties: first)
    c = sep.Readouts(correct={}, label_logits=z, labels=torch.arange(P) % 3).constant_answer(0)
    assert (c.n_labels_used, c.answer, c.answer_share) == (2, 2, pytest.approx(0.7))
    assert c.base_rate == pytest.approx(float((torch.arange(P) % 3 == 2).float().mean()))
    with pytest.raises(ValueError, match="layer"):
        r.constant_answer(LAYERS)


def test_assess_on_constructed_settings():
    rep = constructed()
    a, b = rep.settings["sst2", 0], rep.settings["sst2", 1]
    assert a.claim_holds and not b.claim_holds
    assert a.onsets.probe == 2 and a.onsets.centred == 5 and a.onsets.raw is None and a.onsets.separability_first
    assert b.onsets.probe is None and b.onsets.centred == 2 and b.onsets.raw == 6 and not b.onsets.separability_first
    assert not a.centred_real and b.centred_real          # at layer 2 only the second centred lens is perfect
    assert a.calibrated_vs_majority.better and not b.calibrated_vs_majority.real
    assert a.tests["third"]["probe - bag of words"].diff == pytest.approx(0.4)
    assert a.tests["last"]["probe - centred lens"].diff == 0 and not a.tests["last"]["probe - centred lens"].real
    assert rep.lists["holds"] == ["SST-2 zero-shot"] and rep.lists["ordered"] == ["SST-2 zero-shot"]
    assert rep.lists["vacuous"] == [] and a.onsets.ordered and not b.onsets.ordered
    assert rep.lists["beats_lex_third"] == ["SST-2 zero-shot"] and rep.lists["beats_lex_last"] == ["SST-2 zero-shot"]
    assert rep.n_constant == 2 and rep.n_settings == 2
    assert rep.verdict_early == "supported only on SST-2 zero-shot" and rep.verdict_order == "in 1 of 2 settings"
    assert rep.verdict == ("separability early (at L/3, beyond a bag of words): supported only on SST-2 zero-shot; "
                           "separability before bias-corrected alignment: in 1 of 2 settings")


def test_report_text_glue_and_summary():
    rep = constructed()
    lines = rep.text().split("\n")
    assert lines[0].startswith("paired differences (A minus B)")
    assert len(lines) == 1 + 2 * (10 + 1 + 1 + 1) + 5   # per setting: 2 x 5 comparisons, calibrated, onsets, blank
    assert ("   sst2 k=0 first layer where the probe beats bag of words and majority: layer 2; where the centred lens "
            "beats majority: layer 5 (raw lens: none)") in lines
    assert lines[-1] == f"verdict on the paper's Figure 7 claim: {rep.verdict}"
    g = rep.glue_values()
    assert g["sst2_k0_onset_probe"] == "layer 2" and g["sst2_k1_onset_probe"] == "none"
    assert g["sst2_k0_cen_at_onset"] == 1.0 and g["sst2_k1_cen_at_onset"] == 1.0    # ones_from(5), ones_from(2)
    assert g["sst2_k0_probe_third"] == 1.0 and g["sst2_k0_probe_third_ci"].startswith("1.00 [")
    assert g["sst2_lex"] == pytest.approx(0.6) and g["sst2_maj"] == pytest.approx(0.5)
    assert g["sst2_k0_raw_share"] == 1.0 and g["sst2_k0_raw_base"] == 0.5
    assert (g["L"], g["third"], g["total"], g["const_third"], g["holds_third"]) == (LAST, THIRD, 2, 2, 1)
    assert g["cen_onsets"] == "SST-2 zero-shot layer 5; SST-2 1-shot layer 2"
    assert g["sst2_k0_vs_lex_third"] == str(rep.settings["sst2", 0].tests["third"]["probe - bag of words"])
    s = rep.summary()
    assert s["sst2_k0"]["claim_holds_at_third"] and not s["sst2_k1"]["claim_holds_at_third"]
    assert s["sst2_k0"]["comparisons"]["third"]["probe - majority"]["test"] == "McNemar"
    tests = rep.ledger_tests()
    assert [(t["setting"], t["role"]) for t in tests] == [
        (n, r) for n in ("SST-2 zero-shot", "SST-2 1-shot") for r in ("vs_bag_of_words", "vs_majority", "vs_centred_lens")]
    assert all(t["row"] == "separability" for t in tests)
    assert tests[0]["p_value"] == rep.settings["sst2", 0].tests["third"]["probe - bag of words"].p_value
    assert s["sst2_k0"]["raw_lens_at_third"] == [{"n_labels_used": 1, "answer": 1, "answer_share": 1.0, "base_rate": 0.5}]
    assert s["sst2_k0"]["onset_probe_vs_bag_of_words_and_majority"] == 2
    assert s["claim_holds_at_third"] == ["SST-2 zero-shot"] and s["verdict"] == rep.verdict


def test_accuracy_and_constant_tables():
    rep = constructed()
    text = sep.accuracy_table(rep.results, {"sst2": LEXICAL}, {"sst2": MAJORITY}, {THIRD: "L/3", LAST: "L"})
    lines = text.split("\n")
    assert lines[0] == "" and lines[1] == "at layer 2 (L/3)" and lines[5] == "" and lines[6] == "at layer 6 (L)"
    assert lines[3].split()[:4] == ["sst2", "0", "0.500", "[0.40,"]            # majority class first
    const = sep.constant_answer_table(rep.results, THIRD).split("\n")
    assert const[0] == "" and "answers '1' for 1.00 of the queries; base rate 0.50" in const[2]


def test_assess_rejects_bad_input():
    r = {("sst2", 0): readouts(ones_from(2), ones_from(2), ones_from(2), ones_from(2))}
    with pytest.raises(ValueError, match="missing"):
        sep.assess(r, {}, {}, third=THIRD, last=LAST)
    with pytest.raises(ValueError, match="last"):
        sep.assess(r, {"sst2": LEXICAL}, {"sst2": MAJORITY}, third=THIRD, last=LAYERS)
    with pytest.raises(ValueError, match="results"):
        sep.assess({}, {}, {}, third=THIRD, last=LAST)


def test_layer_readouts_on_a_tiny_model(tiny):
    un = Unembed(tiny.model)
    g = torch.Generator().manual_seed(0)
    n, layers, d, ids = 60, tiny.n_layers + 1, 64, [5, 17, 40]
    labels = torch.arange(n) % 3
    states = torch.randn(n, layers, d, generator=g)
    states[:, 2, :3] += 20 * torch.nn.functional.one_hot(labels, 3)      # layer 2 linearly separable
    cf = torch.randn(layers, d, generator=g)
    r = sep.layer_readouts(un, states, cf, labels, ids, n_folds=5, seed=0)
    assert set(r.correct) == set(sep.READOUTS)
    assert all(c.shape == (n, layers) and set(c.unique().tolist()) <= {0.0, 1.0} for c in r.correct.values())
    z = label_logits(un, states, ids)
    torch.testing.assert_close(r.label_logits, z)
    assert torch.equal(r.correct["raw lens"], (z.argmax(-1) == labels[:, None]).float())
    z_cf = label_logits(un, cf, ids)
    for l in range(layers):
        assert torch.equal(r.correct["calibrated lens"][:, l], calibrated_correct(z[:, l], z_cf[l], labels).float())
    acc = r.correct["probe"].mean(0)
    assert acc[2] > 0.9 and all(acc[l] < 0.6 for l in range(layers) if l != 2)   # the informative layer only
    # one content-free state for all queries reads the same as that state repeated per query
    same = sep.layer_readouts(un, states, cf.expand(n, -1, -1), labels, ids, n_folds=5, seed=0)
    assert torch.equal(same.correct["calibrated lens"], r.correct["calibrated lens"])
    with pytest.raises(ValueError, match="cf_states"):
        sep.layer_readouts(un, states, cf[:2], labels, ids)
    with pytest.raises(ValueError, match="states"):
        sep.layer_readouts(un, states[:10], cf, labels, ids)


def test_a_centred_lens_that_never_qualifies_is_not_counted_as_order():
    """Chapter 10's vacuous case: the probe has an onset, the centred lens never beats the majority class. The order
    "separability before alignment" is then not supported (nothing to precede), and is named apart."""
    never = ones_from(LAYERS)                              # the centred lens never beats the majority class
    results = {("sst2", 0): readouts(ones_from(2), never, never, ones_from(2)),
               ("sst2", 1): readouts(ones_from(2), ones_from(5), ones_from(LAYERS), ones_from(2))}
    rep = sep.assess(results, {"sst2": LEXICAL}, {"sst2": MAJORITY}, third=THIRD, last=LAST, seed=0)
    assert rep.settings["sst2", 0].onsets.separability_first and not rep.settings["sst2", 0].onsets.ordered
    assert rep.lists["ordered"] == ["SST-2 1-shot"] and rep.lists["vacuous"] == ["SST-2 zero-shot"]
    assert rep.verdict_order.startswith("in 1 of 2 settings (in 1 more, SST-2 zero-shot, the centred lens never")
    g = rep.glue_values()
    assert g["ordered"] == 1 and g["vacuous"] == 1 and g["vacuous_list"] == "SST-2 zero-shot"


def test_several_sets_are_pooled_per_query_with_the_permutation_test():
    """Three sets of the same 100 queries: the comparisons are permutation tests of the mean of each query's mean
    over the sets (the
    query stays the unit: n = 100), the accuracies are given per set, the ledger records the pooled tests."""
    sets = []
    for s in range(3):
        probe = ones_from(2)
        probe[50:50 + 10 * s, 0] = 1                       # set s: layer 0 right on 10 s more queries
        probe[50:50 + 10 * s, THIRD] = 0                   # and L/3 wrong on them
        sets.append(readouts(probe, ones_from(5), ones_from(LAYERS), torch.ones(P, LAYERS)))
    rep = sep.assess({("sst2", 0): readouts(ones_from(2), ones_from(5), ones_from(LAYERS), torch.ones(P, LAYERS)),
                      ("sst2", 1): sets}, {"sst2": LEXICAL}, {"sst2": MAJORITY}, third=THIRD, last=LAST,
                     checks=[1, 3, LAST], seed=0)
    one, three = rep.settings["sst2", 0], rep.settings["sst2", 1]
    assert one.tests["third"]["probe - majority"].test == "McNemar" and three.n_sets == 3
    t = three.tests["third"]["probe - majority"]
    assert t.test == "permutation" and t.n == P and (t.n_pos, t.n_neg) == (50, 0)
    pooled = sep.pool_readouts(sets)
    assert torch.equal(rep.results["sst2", 1].correct["probe"], pooled.correct["probe"])
    assert pooled.correct["probe"][50:60, 0].tolist() == pytest.approx([2 / 3] * 10)
    assert sep.pool_readouts(sets[:1]) is sets[0]
    g = rep.glue_values()
    assert g["sst2_k1_probe_l1_ci"] == "0.50" and g["sst2_k0_probe_third_ci"].startswith("1.00 [")
    assert g["sst2_k1_raw_share"] == 1.0
    # at layer 0 the sets differ: the probe's accuracy per set is 0.50, 0.60, 0.70
    assert sep.accuracy_text([x.correct["probe"][:, 0] for x in sets]) == "0.600 (0.500-0.700 over 3 sets)"
    assert list(rep.early_layers) == [1, 2, 3, LAST] and rep.early_layers[LAST] == "last"
    assert rep.holds_at(1) == [] and rep.holds_at(2) == ["SST-2 zero-shot", "SST-2 1-shot"]
    assert rep.early_changes == ["SST-2 zero-shot", "SST-2 1-shot"]
    assert g["early_by_layer"].startswith("layer 1: not reproduced on this model; layer 2: supported;")
    tests = rep.ledger_tests()
    assert [t["test"] for t in tests] == ["McNemar"] * 3 + ["permutation"] * 3
    assert tests[4]["p_value"] == t.p_value
    s = rep.summary()
    assert s["sst2_k1"]["n_sets"] == 3 and len(s["sst2_k1"]["raw_lens_at_third"]) == 3
    assert s["sst2_k1"]["claim_holds_by_layer"] == {1: False, 2: True, 3: True, LAST: False}   # the lens is perfect at L
    table = sep.accuracy_table(rep.per_set, {"sst2": LEXICAL}, {"sst2": MAJORITY}, {0: "first"})
    assert "0.600 (0.500-0.700 over 3 sets)" in table
    const = sep.constant_answer_table(rep.per_set, THIRD).split("\n")
    assert len(const) == 2 + 1 + 3 and "sst2  1 set 2" in const[-1]
    with pytest.raises(ValueError, match="layer"):
        rep.holds_at(4)
    with pytest.raises(ValueError, match="same queries"):
        sep.pool_readouts([sets[0], sep.Readouts(correct=sets[0].correct, label_logits=sets[0].label_logits,
                                                 labels=LABELS.flip(0))])


def test_layer_band_is_a_bootstrap_interval_per_layer():
    a = torch.zeros(200, 3, dtype=torch.float64)
    a[:100, 1] = 1
    a[:, 2] = 1
    mean, lo, hi = sep.layer_band(a, n_boot=500, seed=1)
    assert mean.tolist() == [0.0, 0.5, 1.0]
    assert lo[0] == hi[0] == 0 and lo[2] == hi[2] == 1
    assert 0.40 < lo[1] < 0.5 < hi[1] < 0.60                    # about 0.5 +- 1.96 * 0.035
    with pytest.raises(ValueError, match="correct"):
        sep.layer_band(a[:, 0])
    with pytest.raises(ValueError, match="n_boot"):
        sep.layer_band(a, n_boot=0)
