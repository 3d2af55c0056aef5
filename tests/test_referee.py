"""Chapter 11's baselines, paired verdicts and localisation (cgar_src.analysis.referee): known answers on constructed
correctness and vectors, and every baseline row on a tiny random model."""
from types import SimpleNamespace

import pytest
import torch
from test_lm import PROMPTS, tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import baselines, lens, referee, steering
from cgar_src.lm import Unembed, hidden_states

P = 100


def frac(x: float) -> torch.Tensor:
    return (torch.arange(P) < x * P).double()


def rows_for(additive: float, prior: float, simple: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    names = referee.against(1)
    simple = simple or {}
    rows = {n: frac(simple.get(k, 0.3)) for k, n in names.items()}
    rows[names["majority"]] = frac(0.4)
    rows[names["label_prior"]] = frac(prior)
    rows[referee.ADDITIVE] = frac(additive)
    return rows


def test_against_lists_the_simple_baselines_first():
    names = referee.against(4)
    assert list(names)[:referee.N_SIMPLE] == ["majority", "restricted", "calibrated0", "prompting", "calibratedk"]
    assert names["prompting"] == "4-shot prompting" and names["calibratedk"] == "4-shot, calibrated"


def test_paired_verdicts_known_answers():
    rows = {"a": rows_for(0.9, 0.5, {"prompting": 0.6}),                 # beats everything: supported
            "b": rows_for(0.6, 0.6),                                        # no better than the label prior
            "c": rows_for(0.7, 0.5, {"restricted": 0.8, "calibrated0": 0.8}),   # worse than a simple baseline
            "d": rows_for(0.4, 0.2)}                                        # no better than the majority answer
    v = referee.paired_verdicts(rows, k_shot=1, seed=0)
    assert v.verdict == {"a": "supported", "b": "label-set prior only", "c": "below a simple baseline",
                         "d": "not reproduced"}
    assert v.best_simple["a"] == "1-shot prompting"
    assert v.best_simple["c"] == "zero-shot, label-restricted"             # ties: the first listed
    assert v.why["c"] == (f"better than the label-prior vector ({v.paired['c', 'label_prior']}), but worse than the "
                          f"strongest simple baseline, zero-shot, label-restricted ({v.simple('c')})")
    assert v.simple("a").diff == pytest.approx(0.3) and v.paired["b", "label_prior"].diff == 0
    assert v.wins("majority", 1) == ["a", "b", "c"] and v.wins("restricted", -1) == ["c"]
    g = v.glue_values()
    assert g["wins_majority"] == "a, b, c" and g["losses_majority"] == "none" and g["losses_restricted"] == "c"
    assert g["a_best_simple_real"] == "really better than" and g["c_best_simple_real"] == "really worse than"
    assert g["verdict"] == v.verdict_text and v.verdict_text.startswith("a: supported (better than the label-prior")
    lines = v.text().split("\n")
    assert lines[0] == "a" and len(lines) == 4 * (1 + 8) + 1 and lines[-1] == f"verdict: {v.verdict_text}"
    s = v.summary()
    assert s["b"]["verdict"]["verdict"] == "label-set prior only"
    assert s["b"]["verdict"]["why"].startswith("better than the majority answer, but no better than the label-prior")
    assert s["a"]["strongest_simple_baseline"]["name"] == "1-shot prompting"
    assert set(s["a"]["paired_vs_additive"]) == set(referee.against(1))
    with pytest.raises(ValueError, match="lacks"):
        referee.paired_verdicts({"a": {referee.ADDITIVE: frac(0.5)}}, k_shot=1)
    tests = v.ledger_tests()
    assert len(tests) == 4 * 4 and {t["row"] for t in tests} == {"steering", "label_mapping"}
    simple_c = next(t for t in tests if t["setting"] == "c" and t["role"] == "vs_best_simple")
    assert simple_c["baseline"] == "zero-shot, label-restricted" and simple_c["p_value"] == v.simple("c").p_value
    assert all(t["test"] == "McNemar" for t in tests)


def test_a_p_value_just_above_the_level_is_not_a_loss():
    # 2 queries only the vector gets right, 9 only the baseline: McNemar p = 134 / 2048 = 0.065 > 0.05: neither a
    # win nor a loss (however the bootstrap interval falls); 2 against 11: p = 184 / 8192 = 0.022, a real loss
    rows = rows_for(0.5, 0.2)
    add = frac(0.5)
    add[[97, 98]] = 1.0
    rows[referee.ADDITIVE] = add
    for n_base, (a_only, b_only), loss in ((59, (2, 9), False), (61, (2, 11), True)):
        rows["zero-shot, label-restricted"] = frac(n_base / P)
        c = referee.paired_verdicts({"x": rows}, k_shot=1).paired["x", "restricted"]
        assert (c.n_a_only, c.n_b_only) == (a_only, b_only)
        assert c.worse is loss and c.real is loss and (c.p_value < 0.05) is loss


def test_localisation_of_a_known_context_vector(tiny):
    un = Unembed(tiny.model)
    ids, L = [5, 17, 40], tiny.n_layers
    Q = lens.readout_basis(un, ids)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, generator=g)
    v = v - Q @ (Q.T @ v)
    u, v = Q[:, 0], v / v.norm()                                   # unit vectors in and orthogonal to the span
    h_zero = torch.randn(12, L + 1, 64, generator=g)
    h_icl = h_zero + (3 * u + 4 * v)                              # c_bar = 3u + 4v at every layer
    labels = torch.arange(12) % 3
    loc = referee.localisation(un, h_zero, h_icl, labels, ids, lambdas=[0.5, 1.0], layer=L, k_shot=1)
    r = loc.record
    assert torch.allclose(r["cbar_fraction_by_layer"], torch.full((L + 1,), 0.36), atol=2e-4)
    assert r["chance_fraction"] == 3 / 64
    assert r["norm_fraction_in_span_L"] == pytest.approx(0.6, abs=1e-4)
    assert list(loc.sweep) == list(referee.PARTS) and all(a.shape == (2,) for a in loc.sweep.values())
    whole = lens.additive_retrieval(un, h_zero, (3 * u + 4 * v)[None].expand(L + 1, -1), ids, lambdas=[0.5, 1.0],
                                    context_layers=[L], query_layers=[L]).accuracy(ids, labels)[0, 0]
    torch.testing.assert_close(loc.sweep["whole c_bar"], whole)
    assert set(r["retrieved_fraction"]) == {"zero-shot", "whole c_bar, lambda 1", "1-shot prompting"}
    assert all(0 <= x <= 1 for x in r["retrieved_fraction"].values())
    text = referee.localisation_text({"x": loc}, [1, L], [0.5, 1.0], L).split("\n")
    assert len(text) == 2 + 2 + 1 + 1 + 1 + len(referee.PARTS) + 1 + 1
    assert text[2].split()[:2] == ["1", "0.3600"]
    gl = referee.localisation_glue({"x": loc}, [1, L], L, 1)
    assert gl["x_frac_L"] == pytest.approx(0.36, abs=2e-4) and gl["x_ratio_L"] == pytest.approx(0.36 * 64 / 3, abs=0.01)
    assert gl["below_chance"] == "none" and gl["x_xi_icl"] == r["retrieved_fraction"]["1-shot prompting"]
    with pytest.raises(ValueError, match="layer"):
        referee.localisation(un, h_zero, h_icl, labels, ids, lambdas=[1.0], layer=L + 1, k_shot=1)


def test_baseline_rows_on_a_tiny_model(tiny, tmp_path):
    un = Unembed(tiny.model)
    L, ids = tiny.n_layers, [10, 20]
    prompts = [f"{p} {i}" for i in range(2) for p in PROMPTS]                      # 8 queries
    labels = torch.tensor([0, 1] * 4)
    h_zero = hidden_states(tiny, prompts, progress=False)
    h_icl = hidden_states(tiny, [p + " ctx" for p in prompts], progress=False)
    h_cf = hidden_states(tiny, ["N/A ctx"] * len(prompts), progress=False)
    ts = SimpleNamespace(h_zero=h_zero, h_icl=h_icl, labels=labels, label_ids=ids, zero_prompts=prompts, h_cf=h_cf)
    rl = SimpleNamespace(h_zero=h_zero, h_icl=h_icl.flip(0), labels=labels, label_ids=ids, zero_prompts=prompts,
                         h_cf=None)
    kw = dict(k_shot=1, lambdas=[0.5, 2.0], context_layers=[1, L], patch_layers=[1, 2], n_folds=2, seed=0,
              cache_root=tmp_path)
    pool = torch.tensor([1, 1, 1, 0])
    rows, choices = referee.baseline_rows(tiny, un, ts, rl, h_cf[0, L], pool=pool, **kw)
    assert list(rows)[:2] == ["majority answer", "zero-shot"] and referee.ADDITIVE in rows and len(rows) == 12
    assert set(referee.against(1).values()) <= set(rows)
    assert all(r.shape == (8,) and set(r.unique().tolist()) <= {0.0, 1.0} for r in rows.values())
    grid = dict(lambdas=[0.5, 2.0], context_layers=[1, L], query_layer=L, n_folds=2, seed=0)
    add = steering.heldout_additive(un, h_zero, h_icl, labels, ids, **grid)
    assert torch.equal(rows[referee.ADDITIVE], add.correct) and choices["additive"] == add.choices
    assert torch.equal(rows["norm-matched random vector"], add.control_correct)
    rand = steering.heldout_additive(un, h_zero, h_icl.flip(0), labels, ids, **grid)
    assert torch.equal(rows["additive random-label c_bar (held-out)"], rand.correct)
    assert torch.equal(rows["majority answer"], (labels == 1).double())      # the pool's majority class
    assert torch.equal(rows["majority answer"], baselines.majority_correct(labels, reference=pool))
    zero = lens.decode_stats(un, h_zero[:, L], ids)
    assert torch.equal(rows["zero-shot"], zero.correct(ids, labels))
    restricted = baselines.label_restricted_correct(zero.label_logits, labels)
    assert torch.equal(rows["zero-shot, label-restricted"], restricted)
    assert set(choices) == {"additive", "random_label", "label_prior", "task_vector"}
    with pytest.raises(ValueError, match="h_cf"):
        referee.baseline_rows(tiny, un, rl, rl, h_cf[0, L], pool=pool, **kw)
    with pytest.raises(ValueError, match="same queries"):
        short = SimpleNamespace(**{**vars(rl), "h_zero": h_zero[:4], "h_icl": h_icl[:4]})
        referee.baseline_rows(tiny, un, ts, short, h_cf[0, L], pool=pool, **kw)
