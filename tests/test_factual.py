"""Factual steering (chapter 09): the answer-free steering grid on tiny random models (lambda = 0 is the neutral
decode; a fact masked out of a context vector cannot move it), and the tables, paired comparisons and the
bidirectional verdict on constructed correctness with known answers."""
import math
from dataclasses import dataclass

import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import factual
from cgar_src.analysis.stats import wilson
from cgar_src.lm import Unembed


@dataclass
class Facts:
    """A stand-in for cgar_src.tasks.icl.FactStates with the fields factual.steer_facts reads."""

    h_zero: torch.Tensor
    h_pos: torch.Tensor
    h_neg: torch.Tensor
    relations: list
    object_ids: torch.Tensor
    majority_ids: torch.Tensor
    context_mask: torch.Tensor


def random_facts(seed: int = 0) -> Facts:
    g = torch.Generator().manual_seed(seed)
    rels = ["P1"] * 4 + ["P2"] * 3
    P = len(rels)
    h = lambda: torch.randn(P, 4, 64, generator=g) * 2
    same = torch.tensor([[a == b and i != j for j, b in enumerate(rels)] for i, a in enumerate(rels)])
    mask = same.clone()
    mask[0, 1] = False                       # fact 1's demonstrations mention fact 0's object
    return Facts(h_zero=h(), h_pos=h(), h_neg=h(), relations=rels,
                 object_ids=torch.tensor([10, 11, 12, 10, 40, 41, 40]),
                 majority_ids=torch.tensor([10, 10, 10, 11, 40, 40, 41]), context_mask=mask)


def test_zero_coupling_is_the_neutral_decode(tiny):
    un = Unembed(tiny.model)
    fs = random_facts()
    s = factual.steer_facts(un, fs, lambdas=[0.0, 1.5])
    P = len(fs.relations)
    assert s.acc["positive"].shape == (P, 4, 2) and s.n_eff["negative"].shape == (P, 4, 2)
    zero = s.correct["zero-shot (neutral)"]
    for sign in factual.SIGNS:
        assert torch.equal(s.acc[sign][:, :, 0], zero[:, None].expand(P, 4))
        assert torch.equal(s.correct[f"{sign} steering, lambda 1.5"], s.acc[sign][:, -1, 1])
    # the neutral decode is the argmax over the relation's own answer tokens' scores in the full vocabulary
    with torch.no_grad():
        arg = un(fs.h_zero[:, -1]).argmax(-1)
    assert torch.equal(zero, (arg == fs.object_ids).double())
    assert torch.equal(s.correct["majority (pool)"], torch.tensor([1.0, 0, 0, 0, 1, 0, 0], dtype=torch.float64))
    # majority of the evaluated facts: P1's objects 10, 11, 12, 10 -> 10; P2's 40, 41, 40 -> 40
    assert torch.equal(s.correct["majority (evaluated)"], torch.tensor([1.0, 0, 0, 1, 1, 0, 1], dtype=torch.float64))
    assert torch.equal(s.minority, fs.object_ids != fs.majority_ids)
    assert s.relation_order == ["P1", "P2"]


def test_a_masked_out_fact_cannot_move_the_context_vector(tiny):
    un = Unembed(tiny.model)
    fs = random_facts()
    a = factual.steer_facts(un, fs, lambdas=[1.0, 3.0])
    fs.h_pos[1] += 50.0                     # fact 1 is masked out of fact 0's vector only
    fs.h_neg[4] += 50.0                     # fact 4 (P2) never enters a P1 vector
    b = factual.steer_facts(un, fs, lambdas=[1.0, 3.0])
    assert torch.equal(a.n_eff["positive"][0], b.n_eff["positive"][0])
    assert torch.equal(a.n_eff["negative"][:4], b.n_eff["negative"][:4])
    assert not torch.equal(a.n_eff["positive"][2], b.n_eff["positive"][2])   # fact 1 does enter fact 2's


def test_steer_facts_checks_its_inputs(tiny):
    un = Unembed(tiny.model)
    fs = random_facts()
    fs.context_mask = fs.context_mask[:3]
    with pytest.raises(ValueError, match="context_mask"):
        factual.steer_facts(un, fs, lambdas=[1.0])
    with pytest.raises(ValueError, match="lambdas"):
        factual.steer_facts(un, random_facts(), lambdas=[])


@pytest.mark.parametrize("method, key", [("majority (pool)", "majority_pool"), ("zero-shot (neutral)", "zero"),
                                         ("positive prompting", "positive_prompt"),
                                         ("negative steering, lambda 1.5", "negative_steer_1p5"),
                                         ("positive steering, lambda 2", "positive_steer_2")])
def test_glue_key(method, key):
    assert factual.glue_key(method) == key


def constructed(pos_gain: int, neg_gain: int, n: int = 40, lambdas=(1.0, 2.0)) -> factual.FactualSteering:
    """Correctness where the neutral state gets the first 10 facts right, positive steering ``pos_gain`` more and
    negative steering ``neg_gain`` more (negative: fewer) at every coupling."""
    L, lambdas = 2, list(lambdas)
    first = lambda m: (torch.arange(n) < m).double()
    correct = {"zero-shot (neutral)": first(10), "positive prompting": first(20), "negative prompting": first(15),
               "majority (pool)": first(2), "majority (evaluated)": first(4)}
    acc = {s: torch.zeros(n, L + 1, len(lambdas), dtype=torch.float64) for s in factual.SIGNS}
    for i, lam in enumerate(lambdas):
        acc["positive"][:, L, i], acc["negative"][:, L, i] = first(10 + pos_gain), first(10 + neg_gain)
        for s in factual.SIGNS:
            acc[s][:, 0, i] = first(3)
            correct[f"{s} steering, lambda {lam:g}"] = acc[s][:, L, i]
    rels = ["P1", "P2"] * (n // 2)
    return factual.FactualSteering(relations=rels, lambdas=lambdas, acc=acc,
                                   n_eff={s: torch.full((n, L + 1, len(lambdas)), 7.0) for s in factual.SIGNS},
                                   correct=correct, n_eff_zero=torch.full((n,), 300.0),
                                   minority=torch.arange(n) >= 2)


def test_accuracy_table_and_best_layers():
    s = constructed(20, -8)
    t = factual.accuracy_table(s)
    assert t.lines[0].split()[0] == "method" and len(t.lines) == 1 + 5 + 4
    rec = t.record["positive steering, lambda 1"]
    assert rec["all"] == list(wilson(30, 40)) and rec["non_majority"] == list(wilson(28, 38))
    assert rec["per_relation"] == {"P1": 0.75, "P2": 0.75}
    assert t.glue["positive_steer_1"] == "0.750" and t.glue["majority_pool_minority"] == "0.000"
    assert t.glue["zero_ci"] == "0.250 [0.14, 0.40]"
    b = factual.best_context_layers(s)
    assert b.record["positive_lambda1"]["best_layer"] == 2 and b.record["negative_lambda2"]["best_layer"] == 0
    assert b.glue == {"neff_zero": "300.0", "neff_pos_last": "7.0", "neff_neg_last": "7.0"}


def test_accuracy_table_without_non_majority_facts():
    s = constructed(20, -8)
    s.minority = torch.zeros_like(s.minority)
    t = factual.accuracy_table(s)
    assert t.record["zero-shot (neutral)"]["non_majority"] is None and t.glue["zero_minority"] == "nan"
    c = factual.compare_methods(s)
    assert all(m is None for m in c.minority.values())
    assert c.glue_values()["v_pos_zero_min_first"] == "no fact lies outside the majority object"


@pytest.mark.parametrize("pos, neg, verdict", [
    (20, -8, "reproduced at every coupling tested (λ = 1, 2)"),
    (20, 15, "not reproduced on this model: at the couplings tested (λ = 1, 2) negative steering is never below "
             "neutral and positive steering above it at λ = 1, 2, never both at one coupling"),
    (0, -8, "not reproduced on this model: at the couplings tested (λ = 1, 2) negative steering is below neutral "
            "only at λ = 1, 2 and positive steering never above it, never both at one coupling")])
def test_bidirectional_verdict(pos, neg, verdict):
    c = factual.compare_methods(constructed(pos, neg), seed=0)
    out = c.bidirectional()
    assert out["verdict"] == verdict
    assert out["both"] == ([1.0, 2.0] if pos > 0 > neg else [])


def test_bidirectional_at_some_couplings_only():
    s = constructed(20, -8)
    s.correct["negative steering, lambda 2"] = s.correct["zero-shot (neutral)"].clone()
    out = factual.compare_methods(s).bidirectional()
    assert out["verdict"] == "reproduced only at λ = 1 of the couplings tested (1, 2)"
    assert out["toward"] == [1.0, 2.0] and out["away"] == [1.0]
    tests = factual.compare_methods(s).ledger_tests()
    assert [(t["setting"], t["role"]) for t in tests] == [("lambda 1", "toward"), ("lambda 1", "away"),
                                                          ("lambda 2", "toward"), ("lambda 2", "away")]
    assert all(t["row"] == "factual" and t["test"] == "McNemar" for t in tests)
    assert tests[3]["name"] == "negative steering, lambda 2 - zero-shot (neutral)" and tests[3]["p_value"] == 1.0


def test_bidirectional_verdict_needs_matching_couplings():
    with pytest.raises(ValueError, match="same couplings"):
        factual.bidirectional_verdict({1.0: None}, {2.0: None})


def test_comparison_table_and_sentences():
    c = factual.compare_methods(constructed(20, -8), seed=0)
    assert len(c.all) == 2 * 5 + 3 and len(c.lines()) == 1 + 13
    assert c.lines()[1].rstrip().endswith("real")
    key = ("negative steering, lambda 1", "positive steering, lambda 1")
    assert c.all[key].n_a_only == 0 and c.all[key].n_b_only == 28
    g = c.glue_values()
    assert g["lam_first"] == "1" and g["lam_last"] == "2" and g["neg_pos_discordant_first"] == "28 facts against 0"
    assert g["v_pos_zero_first"].startswith("positive steering beats the neutral state (+0.500")
    assert g["v_prompt_neg_pos"].startswith("negative prompting")
    rec = c.record()
    assert rec["positive prompting vs zero-shot (neutral)"]["all"]["real"] is True
    assert math.isclose(rec["positive prompting vs zero-shot (neutral)"]["all"]["diff"], 0.25)
