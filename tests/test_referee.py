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
    assert list(names)[:referee.N_SIMPLE] == ["majority", "restricted", "calibrated0", "logit_prior", "prompting",
                                              "calibratedk"]
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
    assert lines[0] == "a" and len(lines) == 4 * (1 + len(referee.against(1))) + 1
    assert lines[-1] == f"verdict: {v.verdict_text}"
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
    bare = referee.localisation(un, h_zero, h_icl, labels, ids, lambdas=[0.5, 1.0], layer=L, k_shot=1, retrieved=False)
    assert "retrieved_fraction" not in bare.record and "x_xi_icl" not in referee.localisation_glue({"x": bare}, [L], L, 1)
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
    rows, choices, layer_rows = referee.baseline_rows(tiny, un, ts, rl, h_cf[0, L], pool=pool, **kw)
    assert list(rows)[:2] == ["majority answer", "zero-shot"] and referee.ADDITIVE in rows and len(rows) == 15
    assert set(rows) == set(referee.row_keys(1))
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
    assert set(choices) == {"additive", "random_label", "label_prior", "icl_mean", "task_vector"}
    assert torch.equal(rows[referee.ADDITIVE_RESTRICTED], add.restricted_correct)
    assert torch.equal(layer_rows["additive"][1], add.by_layer[1]) and set(layer_rows["label_prior"]) == {1, L}
    folds = steering.folds_of(8, 2, 0)
    assert torch.equal(rows[referee.LOGIT_PRIOR], baselines.logit_prior_correct(zero.label_logits, labels, folds=folds))
    mean_icl = steering.heldout_additive(un, h_zero, h_icl, labels, ids, **grid, variant="icl_mean")
    assert torch.equal(rows[referee.ICL_MEAN], mean_icl.correct)
    no_tv, ch, _ = referee.baseline_rows(tiny, un, ts, rl, h_cf[0, L], pool=pool, **kw, task_vector=False)
    assert referee.TASK_VECTOR not in no_tv and "task_vector" not in ch
    assert torch.equal(no_tv[referee.ADDITIVE], rows[referee.ADDITIVE])
    no_rl, ch, _ = referee.baseline_rows(tiny, un, ts, None, h_cf[0, L], pool=pool, **kw, task_vector=False)
    random_rows = {"random-label 1-shot prompting", "additive random-label c_bar (held-out)"}
    assert set(no_rl) == set(no_tv) - random_rows and "random_label" not in ch     # a set without the control
    pooled = referee.pool_rows([no_tv, no_rl])
    for n in random_rows:                     # the control is paired with the additive vector of the same set
        assert torch.equal(pooled[referee.matched_name(n)], no_tv[referee.ADDITIVE].double())
    with pytest.raises(ValueError, match="h_cf"):
        referee.baseline_rows(tiny, un, rl, rl, h_cf[0, L], pool=pool, **kw)
    with pytest.raises(ValueError, match="same queries"):
        short = SimpleNamespace(**{**vars(rl), "h_zero": h_zero[:4], "h_icl": h_icl[:4]})
        referee.baseline_rows(tiny, un, ts, short, h_cf[0, L], pool=pool, **kw)


def test_pool_rows_averages_per_query_and_matches_partial_rows():
    a = [{referee.ADDITIVE: torch.tensor([1.0, 0.0, 1.0, 0.0]), "x": torch.tensor([0.0, 0.0, 1.0, 1.0]),
          referee.TASK_VECTOR: torch.tensor([1.0, 1.0, 0.0, 0.0])},
         {referee.ADDITIVE: torch.tensor([1.0, 1.0, 0.0, 0.0]), "x": torch.tensor([0.0, 0.0, 1.0, 1.0])}]
    pooled = referee.pool_rows(a)
    assert pooled[referee.ADDITIVE].tolist() == [1.0, 0.5, 0.5, 0.0]
    assert pooled["x"].tolist() == [0.0, 0.0, 1.0, 1.0]                        # the same in every set: unchanged
    assert pooled[referee.TASK_VECTOR].tolist() == [1.0, 1.0, 0.0, 0.0]         # on the first set only
    assert pooled[referee.matched_name(referee.TASK_VECTOR)].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert referee.matched_name("x") not in pooled
    with pytest.raises(ValueError, match="same queries"):
        referee.pool_rows([a[0], {referee.ADDITIVE: torch.zeros(3), "x": torch.zeros(3)}])
    with pytest.raises(ValueError, match="non-empty"):
        referee.pool_rows([])


def test_pooled_verdicts_use_the_permutation_test_the_matched_row_and_fixed_layers():
    g = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(3):
        r = rows_for(0.8, 0.3)
        r[referee.ADDITIVE] = (torch.rand(P, generator=g) < 0.8).double()
        sets.append(r)
    del sets[1][referee.TASK_VECTOR], sets[2][referee.TASK_VECTOR]
    pooled = referee.pool_rows(sets)
    layer = {"additive": {5: pooled[referee.ADDITIVE], 9: frac(0.35)}, "label_prior": {5: frac(0.3), 9: frac(0.3)}}
    v = referee.paired_verdicts({"a": pooled}, k_shot=1, seed=0, by_layer={"a": layer})
    assert v.paired["a", "majority"].test == "permutation"                      # set means: not 0/1
    tv = v.paired["a", "task_vector"]                                           # first set against first set
    assert tv.test == "McNemar" and tv.diff == pytest.approx(float(sets[0][referee.ADDITIVE].mean()) - 0.3)
    assert v.verdict["a"] == "supported" and v.by_layer["a", 5]["verdict"] == "supported"
    assert v.by_layer["a", 9]["verdict"] == "not reproduced"                   # 0.35 vs the majority's 0.4
    g2 = v.glue_values()
    assert g2["a_verdict"] == "supported" and g2["a_verdict_layer_changes"] == "changes with the layer"
    assert g2["a_verdict_by_layer"] == "c:5 supported, c:9 not reproduced"
    assert {t["test"] for t in v.ledger_tests()} <= {"permutation", "McNemar"}
    assert any(t["test"] == "permutation" for t in v.ledger_tests())
    assert {(t["row"], t["role"]) for t in v.ledger_tests()} == {("steering", "vs_majority"),
                                                                  ("steering", "vs_label_prior"),
                                                                  ("steering", "vs_best_simple"),
                                                                  ("label_mapping", "vs_random_label")}


def test_span_ratio_intervals_cover_a_known_ratio(tiny):
    un = Unembed(tiny.model)
    ids, L, d = [5, 17, 40], tiny.n_layers, 64
    Q = lens.readout_basis(un, ids)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=g)
    v = v - Q @ (Q.T @ v)
    c = 3 * Q[:, 0] + 4 * v / v.norm()                                       # fraction 0.36 in the span
    diffs = c + 0.3 * torch.randn(200, L + 1, d, generator=g)
    iv = referee.span_ratio_intervals(un, diffs, ids, n_boot=300, seed=0)
    want = 0.36 * d / 3
    assert iv["ratio"].shape == (L + 1,) and bool((iv["lo"] <= iv["ratio"]).all() and (iv["ratio"] <= iv["hi"]).all())
    assert bool((iv["lo"] < want).all() and (want < iv["hi"]).all())
    assert float((iv["hi"] - iv["lo"]).max()) < 0.2 * want
    glue = referee.span_interval_glue({"x": iv}, [1, L], L)
    assert glue["x_above"] == "c:1, c:" + str(L) and glue["x_below"] == "none"
    assert glue["x_span_changes"] == "is the same at every context layer"
    with pytest.raises(ValueError, match="diffs"):
        referee.span_ratio_intervals(un, diffs[0], ids)
    with pytest.raises(ValueError, match="n_boot"):
        referee.span_ratio_intervals(un, diffs, ids, n_boot=0)
