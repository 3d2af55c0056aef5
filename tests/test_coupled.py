"""Coupled retrieval (chapter 08): the additive grid and its controls on tiny random models (lambda = 0 is the
zero-shot decode), and the best-setting table and verdicts on constructed grids with known answers."""
import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import coupled, lens
from cgar_src.analysis.stats import fmt_ci, paired_test, wilson
from cgar_src.lm import Unembed

LABEL_IDS = [5, 17, 99]
LAMBDAS = [0.0, 0.5, 4.0]


def states(P: int = 8, layers: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(P, layers, 64, generator=torch.Generator().manual_seed(seed)) * 2


def test_coupled_grid_at_zero_coupling_is_the_zero_shot_decode(tiny):
    un = Unembed(tiny.model)
    h0, h1, cf = states(seed=0), states(seed=1), states(seed=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    g = coupled.coupled_grid(un, h0, h1, labels, LABEL_IDS, k=1, lambdas=LAMBDAS, context_layers=[1, 3],
                             query_layers=[2, 3], generator=torch.Generator().manual_seed(0), pool=torch.tensor([2, 2, 1]),
                             h_cf=cf, h_cf_zero=cf)
    P = len(labels)
    assert g.acc_all.shape == (P, 2, 2, 3) and g.alone.shape == (2, P)
    assert all(g.acc[n].shape == (P, 2, 3) and g.mass[n].shape == (P, 2, 3) for n in coupled.VECTORS)
    zero = g.base["zero-shot"]
    for name in coupled.VECTORS:                     # lambda = 0 adds nothing, whatever the vector
        assert torch.equal(g.acc[name][:, 0, 0], zero) and torch.equal(g.acc[name][:, 1, 0], zero)
    assert torch.equal(g.acc_all[:, 1], g.acc["c_bar"])   # the final query layer is the second of [2, 3]
    with torch.no_grad():
        z = un(h0[:, -1]).double()
    assert torch.equal(zero, (z.argmax(-1) == torch.tensor(LABEL_IDS)[labels]).double())
    assert torch.equal(g.base["zero-shot, label-restricted"], (z[:, LABEL_IDS].argmax(-1) == labels).double())
    assert set(g.base) == {"zero-shot", "zero-shot, label-restricted", "1-shot prompting", "majority answer",
                           "zero-shot, calibrated", "1-shot, calibrated"}
    assert torch.equal(g.base["majority answer"], (labels == 2).double())   # the pool's majority class 2
    c_bar = (h1 - h0).mean(0)
    alone = lens.decode_stats(un, c_bar[[1, 3]], LABEL_IDS).argmax
    assert torch.equal(g.alone, (alone[:, None] == torch.tensor(LABEL_IDS)[labels][None]).double())
    assert torch.equal(g.best_over_lambda(), g.acc_all.mean(0).amax(-1))
    lean = coupled.coupled_grid(un, h0, h1, labels, LABEL_IDS, k=1, lambdas=LAMBDAS, context_layers=[1, 3],
                                query_layers=[3], generator=torch.Generator().manual_seed(0), pool=torch.tensor([2, 2, 1]),
                                control_mass=False)
    assert set(lean.mass) == {"c_bar"} and all(torch.equal(lean.acc[n], g.acc[n]) for n in coupled.VECTORS)
    hits = coupled.query_layer_hits(un, h0, h1, labels, LABEL_IDS, context_layers=[1, 3], query_layers=[2, 3],
                                    lam=LAMBDAS[1])
    assert hits.shape == (P, 2, 2) and torch.equal(hits, g.acc_all[..., 1])    # the grid's column at that coupling
    with pytest.raises(ValueError, match="h_icl"):
        coupled.query_layer_hits(un, h0, h1[:3], labels, LABEL_IDS, context_layers=[1], query_layers=[3], lam=1.0)


def test_coupled_grid_checks_its_inputs(tiny):
    un = Unembed(tiny.model)
    h, labels, gen = states(), torch.zeros(8, dtype=torch.long), torch.Generator()
    kw = dict(k=1, lambdas=LAMBDAS, context_layers=[1], generator=gen, pool=torch.tensor([0]))
    with pytest.raises(ValueError, match="final layer 3"):
        coupled.coupled_grid(un, h, h, labels, LABEL_IDS, query_layers=[2], **kw)
    with pytest.raises(ValueError, match="h_icl"):
        coupled.coupled_grid(un, h, h[:4], labels, LABEL_IDS, query_layers=[3], **kw)
    with pytest.raises(ValueError, match="h_cf_zero"):
        coupled.coupled_grid(un, h, h, labels, LABEL_IDS, query_layers=[3], h_cf_zero=h[:, :2], **kw)


def constructed_grid(P: int = 20, k: int = 1) -> coupled.CoupledGrid:
    """A grid (2 context layers x 3 couplings) where c_bar is best at (layer 1, lambda 1) and answers every query,
    the label-prior vector is best at (layer 0, lambda 2) with half the queries, the random vector never."""
    acc = {n: torch.zeros(P, 2, 3, dtype=torch.float64) for n in coupled.VECTORS}
    acc["c_bar"][:, 1, 1] = 1
    acc["c_bar"][: P // 4, 0, 0] = 1
    acc["label_prior"][: P // 2, 0, 2] = 1
    mass = {n: torch.full((P, 2, 3), 0.3) for n in coupled.VECTORS}
    mass["c_bar"][:, 1, 2] = 0.8
    half = (torch.arange(P) % 2 == 0).double()
    base = {"zero-shot": torch.zeros(P, dtype=torch.float64), "zero-shot, label-restricted": half,
            f"{k}-shot prompting": half.flip(0), "majority answer": half}
    return coupled.CoupledGrid(k=k, acc=acc, mass=mass, acc_all=acc["c_bar"][:, None], base=base,
                               alone=torch.zeros(2, P, dtype=torch.float64), labels=torch.zeros(P, dtype=torch.long))


def test_best_setting_finds_the_constructed_optimum():
    g = constructed_grid()
    s = coupled.best_setting(g, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0], seed=0)
    assert (s.layer, s.lam, s.prior_layer, s.prior_lam) == (1, 1, 0, 2) and s.selection == "in-sample"
    assert torch.equal(s.best, torch.ones(20, dtype=torch.float64))
    assert list(s.rows)[4:] == ["c_bar, best (c:25, lambda 1)", "label-prior vector, same setting",
                                "label-prior vector, its best (c:20, lambda 10)", "random vector, same setting",
                                "c_bar alone (lambda -> infinity), c:25"]
    assert all(c.better for c in s.paired.values()) and s.paired["vs_label_prior"].diff == 0.5
    assert all(c.test == "McNemar" for c in s.paired.values())          # one set: 0/1 outcomes, McNemar
    assert s.best_simple == "zero-shot, label-restricted"          # ties at 0.5: the first listed of the best
    assert torch.equal(s.rows[s.best_simple][0], g.base["zero-shot, label-restricted"])
    rec = s.record()
    assert rec["context_layer"] == 25 and rec["lambda"] == 1.0 and rec["label_prior_setting"] == [20, 10.0]
    assert rec["accuracy_per_set"]["label-prior vector, its best (c:20, lambda 10)"] == [0.5]
    assert rec["accuracy_at_largest_lambda"] == [0.0] and rec["n_sets"] == 1
    lines = s.lines("sst2")
    assert lines[0] == "sst2, 1 demonstration(s) per class, 1 demonstration set(s), in-sample setting"
    assert len(lines) == 1 + 9 + 5 and lines[5].endswith(fmt_ci(wilson(20, 20)))
    assert lines[-1].startswith("  pooled paired, c_bar vs best simple (zero-shot, label-restricted): +0.500")
    assert rec["paired"]["vs_majority"]["test"] == "McNemar" and rec["strongest_simple_baseline"] == s.best_simple
    g1, gmax = s.glue_values("sst2", "k1"), s.glue_values("sst2", "kmax")
    assert g1["sst2_k1_add"] == "1.000" and g1["sst2_k1_prior"] == "0.500" and g1["sst2_k1_ctrl"] == "0.000"
    assert g1["sst2_k1_rand_max"] == 0.0 and g1["sst2_k1_vs_majority"] == str(s.paired["vs_majority"])
    assert set(gmax) == {k.replace("_k1_", "_kmax_") for k in g1} - {"sst2_kmax_ctrl", "sst2_kmax_rand_max"}
    assert g1["sst2_k1_best_simple"] == "zero-shot, label-restricted"
    assert g.concentrates() and s.concentrates()


def test_best_setting_rejects_a_grid_of_another_shape():
    with pytest.raises(ValueError, match="context_layers"):
        coupled.best_setting(constructed_grid(), context_layers=[20, 25, 30], lambdas=[0.1, 1.0, 10.0])
    with pytest.raises(ValueError, match="grids"):
        coupled.best_setting([], context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0])
    with pytest.raises(ValueError, match="same queries"):
        coupled.best_setting([constructed_grid(), constructed_grid(P=24)], context_layers=[20, 25],
                             lambdas=[0.1, 1.0, 10.0])


def test_fixed_setting_reads_the_given_cell_and_the_prior_there():
    g = constructed_grid()
    s = coupled.fixed_setting(g, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0], context_layer=20, lam=0.1)
    assert (s.layer, s.lam, s.prior_layer, s.prior_lam) == (0, 0, 0, 0) and s.selection == "fixed"
    assert s.best.sum() == 5 and "c_bar, fixed (c:20, lambda 0.1)" in s.rows
    assert not any(n.startswith("label-prior vector, its best") for n in s.rows)
    assert s.paired["vs_label_prior"].better is False        # 5 vs 0 discordant: p = 0.0625, not real
    assert s.paired["vs_label_prior"].n_a_only == 5
    with pytest.raises(ValueError, match="context_layer"):
        coupled.fixed_setting(g, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0], context_layer=30, lam=0.1)
    with pytest.raises(ValueError, match="lam"):
        coupled.fixed_setting(g, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0], context_layer=20, lam=2.0)


def test_several_sets_pool_per_query_means_with_the_permutation_test():
    """Three sets on the same 20 queries: the pooled test is the paired permutation test of each query's mean over
    the sets minus the baseline (never the 60 outcomes concatenated), and the accuracies are given per set."""
    grids = [constructed_grid() for _ in range(3)]
    for s, g in enumerate(grids):
        g.acc["c_bar"][:, 1, 1] = 0
        g.acc["c_bar"][: 10 + 2 * s, 1, 1] = 1            # set s: the first 10 + 2 s queries right
    s = coupled.fixed_setting(grids, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0], context_layer=25, lam=1.0)
    assert s.n_sets == 3 and s.rows["c_bar, fixed (c:25, lambda 1)"].shape == (3, 20)
    sp = s.spread("c_bar, fixed (c:25, lambda 1)")
    assert (sp.mean, sp.lo, sp.hi, sp.n) == (pytest.approx(0.6), 0.5, 0.7, 3)
    mean = torch.stack([g.acc["c_bar"][:, 1, 1] for g in grids]).mean(0)
    want = paired_test(mean, grids[0].base["majority answer"])
    got = s.paired["vs_majority"]
    assert got.test == "permutation" and (got.n_pos, got.n_neg, got.p_value) == (want.n_pos, want.n_neg, want.p_value)
    assert got.n == 20
    assert s.glue_values("sst2", "k1")["sst2_k1_add"] == "0.600 (0.500-0.700 over 3 sets)"
    assert "0.600 (0.500-0.700 over 3 sets)" in "\n".join(s.lines("sst2"))
    with pytest.raises(ValueError, match="name"):
        s.spread("nothing")


def test_layer_verdicts_say_where_the_verdict_changes():
    good = coupled.fixed_setting(constructed_grid(), context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0],
                                 context_layer=25, lam=1.0)
    weak = coupled.fixed_setting(constructed_grid(), context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0],
                                 context_layer=20, lam=1.0)
    assert coupled.verdict_of(good) == "supported" and coupled.verdict_of(weak) == "not reproduced"
    out = coupled.layer_verdicts({("sst2", 1, 20): weak, ("sst2", 1, 25): good, ("trec", 1, 20): weak,
                                  ("trec", 1, 25): weak})
    assert out["fixed_verdicts"] == ("sst2 (1-shot): supported at c:25; not reproduced at c:20; "
                                     "trec (1-shot): not reproduced at c:20, c:25")
    assert out["fixed_changes"] == "sst2 (1-shot)" and out["fixed_stable"] == "trec (1-shot) (not reproduced)"
    with pytest.raises(ValueError, match="settings"):
        coupled.layer_verdicts({})


def test_verdict_values_follow_the_ladder():
    good = coupled.best_setting(constructed_grid(), context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0])
    weak_grid = constructed_grid()
    weak_grid.acc["c_bar"][:, 1, 1] = weak_grid.base["majority answer"]   # no better than the majority answer
    weak_grid.mass["c_bar"][:] = 0.1
    weak = coupled.best_setting(weak_grid, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0])
    out = coupled.verdict_values({("sst2", 1): good, ("trec", 1): weak})
    assert coupled.verdict_of(good) == "supported" and coupled.verdict_of(weak) == "not reproduced"
    assert out["verdict"] == "supported on sst2 k=1; not reproduced on trec k=1"
    assert out["beats_majority"] == "sst2 (1-shot)" and out["concentrates"] == "sst2 (1-shot)"
    assert out["loses_prompting"] == "none" and out["loses_prior"] == "none"
    assert out["verdict_detail"].startswith("sst2 (1-shot): supported, better than the label-prior vector")
    assert "trec (1-shot): not reproduced, no better than the majority answer" in out["verdict_detail"]


def test_verdict_is_decided_against_the_strongest_simple_baseline():
    g = constructed_grid(P=60)           # majority answer: the even queries (30); label-prior vector: the first 30
    g.base["zero-shot, calibrated"] = torch.ones(60, dtype=torch.float64)   # a simple baseline that is always right

    def with_misses(n_miss: int) -> coupled.PooledSetting:
        g.acc["c_bar"][:, 1, 1] = 1
        g.acc["c_bar"][torch.arange(n_miss) * 2, 1, 1] = 0         # c_bar misses n_miss even queries
        return coupled.best_setting(g, context_layers=[20, 25], lambdas=[0.1, 1.0, 10.0])

    s = with_misses(2)      # against the always-right baseline: 0 vs 2 discordant queries, McNemar p = 0.5
    assert s.best_simple == "zero-shot, calibrated" and s.paired["vs_label_prior"].better
    assert coupled.verdict_of(s) == "partly" and "but indistinguishable from the strongest" in coupled.reason_of(s)
    s = with_misses(7)      # 0 vs 7: p = 2 / 128, a real loss, though it still beats the prior and the majority
    assert s.paired["vs_majority"].better and s.paired["vs_label_prior"].better and s.paired["vs_restricted"].better
    assert coupled.verdict_of(s) == "below a simple baseline"
    assert "but worse than the strongest simple baseline, zero-shot, calibrated" in coupled.reason_of(s)


def test_additive_hits_match_the_lens_grid(tiny):
    """The fast grid gives the argmax and label mass of cgar_src.analysis.lens.additive_retrieval."""
    un = Unembed(tiny.model)
    h0, v = states(P=10, seed=3), states(P=1, seed=4)[0]
    kw = dict(lambdas=[0.0, 0.3, 2.0], context_layers=[0, 2, 3], query_layers=[1, 3])
    arg, mass = coupled.additive_hits(un, h0, v, LABEL_IDS, prompt_batch=3, **kw)
    ref = lens.additive_retrieval(un, h0, v, LABEL_IDS, **kw)
    assert arg.shape == mass.shape == (10, 2, 3, 3)
    assert torch.equal(arg, ref.argmax)
    torch.testing.assert_close(mass, ref.label_mass, atol=1e-5, rtol=1e-4)
    arg_only, none = coupled.additive_hits(un, h0, v, LABEL_IDS, mass=False, **kw)
    assert none is None and torch.equal(arg_only, ref.argmax)
    with pytest.raises(ValueError, match="vector"):
        coupled.additive_hits(un, h0, v[:2], LABEL_IDS, **kw)
    with pytest.raises(ValueError, match="prompt_batch"):
        coupled.additive_hits(un, h0, v, LABEL_IDS, prompt_batch=0, **kw)
    with pytest.raises(ValueError, match="lambdas"):
        coupled.additive_hits(un, h0, v, LABEL_IDS, **(kw | {"lambdas": []}))
