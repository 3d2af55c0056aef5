"""Known answers for the statistics (Wilson, McNemar, paired bootstrap) and the baselines (majority, label-restricted,
contextual calibration, label-prior vector)."""
import math

import pytest
import torch

from cgar_src.analysis import baselines, stats
from cgar_src.lm import Unembed


def test_wilson_zero_of_forty_is_not_degenerate():
    p, lo, hi = stats.wilson(0, 40)
    z2 = 1.959963984540054 ** 2
    assert p == 0 and lo == pytest.approx(0, abs=1e-12)
    assert hi == pytest.approx(z2 / (40 + z2), rel=1e-6)          # closed form of the upper end at k = 0
    p, lo, hi = stats.wilson(40, 40)
    assert hi == pytest.approx(1) and lo == pytest.approx(40 / (40 + z2), rel=1e-6)


def test_wilson_matches_formula_and_accuracy_ci():
    k, n, z = 13, 40, 1.959963984540054
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert stats.wilson(k, n)[1:] == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert stats.accuracy_ci(torch.tensor([1.0] * k + [0.0] * (n - k))) == pytest.approx(stats.wilson(k, n))


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (1, 0), (1.5, 10), (True, 10)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError, match="k must|n must"):
        stats.wilson(k, n)


def test_mcnemar_on_a_constructed_table():
    # 8 queries only A gets right, 2 only B, 30 both, 10 neither
    a = torch.tensor([1.0] * 8 + [0.0] * 2 + [1.0] * 30 + [0.0] * 10)
    b = torch.tensor([0.0] * 8 + [1.0] * 2 + [1.0] * 30 + [0.0] * 10)
    c = stats.compare(a, b, seed=0)
    assert (c.n_a_only, c.n_b_only, c.n) == (8, 2, 50)
    assert c.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)     # exact two-sided binomial on 10 discordant pairs
    assert c.diff == pytest.approx(0.12)
    assert c.lo < c.diff < c.hi
    assert "McNemar p = 0.109" in str(c)


def test_compare_identical_methods_is_not_real_and_swaps_sign():
    a = torch.tensor([1.0, 0.0, 1.0, 1.0])
    same = stats.compare(a, a)
    assert (same.diff, same.lo, same.hi, same.p_value, same.real) == (0.0, 0.0, 0.0, 1.0, False)
    assert "indistinguishable at n = 4" in same.verdict("A", "B")
    strong_a = torch.ones(200)
    strong_b = torch.cat([torch.ones(100), torch.zeros(100)])
    c = stats.compare(strong_a, strong_b)
    assert c.real and c.lo > 0.4 and c.p_value < 1e-20
    assert "A beats B" in c.verdict("A", "B")
    r = stats.compare(strong_b, strong_a)
    assert r.diff == -c.diff and r.hi < 0 and "loses to" in r.verdict("B", "A")


def test_compare_rejects_unpaired_or_non_binary():
    with pytest.raises(ValueError, match="same queries"):
        stats.compare(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="correctness values 0 or 1"):
        stats.compare(torch.tensor([0.5, 1.0]), torch.ones(2))


def test_majority_baselines():
    y = torch.tensor([2, 2, 1, 0, 2])
    assert baselines.majority_class(y) == 2
    assert baselines.majority_correct(y, reference=y).tolist() == [1, 1, 0, 0, 1]
    # the demonstration pool's prior can differ from the queries' majority
    assert baselines.majority_correct(y, reference=torch.tensor([0, 0, 1])).tolist() == [0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="labels"):
        baselines.majority_correct(torch.tensor([0.5, 1.0]), reference=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reference"):
        baselines.majority_correct(y, reference=torch.tensor([0.5]))
    with pytest.raises(TypeError):
        baselines.majority_correct(y)      # the reference (the pool) is required: no silent hindsight majority


def _pair(n_a_only: int, n_b_only: int, n_both: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor([1.0] * n_a_only + [0.0] * n_b_only + [1.0] * n_both)
    b = torch.tensor([0.0] * n_a_only + [1.0] * n_b_only + [1.0] * n_both)
    return a, b


def test_real_means_the_exact_test_rejects_not_the_bootstrap_interval():
    # 4 queries only A gets right, none only B: the bootstrap interval of the difference excludes 0, but the exact
    # McNemar p = 2 / 2^4 = 0.125 does not reject; the book calls it not real (chapter 09's case)
    c = stats.compare(*_pair(4, 0, 96), seed=0)
    assert c.lo > 0 and c.p_value == pytest.approx(0.125)
    assert not c.real and not c.better and "indistinguishable" in c.verdict("A", "B")
    # 6 against 0: p = 2 / 64 = 0.03125 < 0.05 -> real
    c6 = stats.compare(*_pair(6, 0, 94), seed=0)
    assert c6.p_value == pytest.approx(2 / 64) and c6.real and c6.better and not c6.worse


def test_decision_at_the_boundary_of_alpha():
    from dataclasses import replace
    c = stats.compare(*_pair(0, 9), seed=0)
    assert c.worse and c.direction == -1
    assert replace(c, p_value=stats.ALPHA).real is False           # rejects only strictly below 0.05
    assert replace(c, p_value=0.0501).worse is False
    assert replace(c, p_value=0.0499).worse is True


def test_sign_test_on_known_counts():
    d = torch.tensor([0.3] * 9 + [-0.1] * 1 + [0.0] * 5)          # 9 up, 1 down, 5 ties (dropped)
    t = stats.sign_test(d)
    assert (t.n_pos, t.n_neg, t.n) == (9, 1, 15)
    assert t.p_value == pytest.approx(2 * (1 + 10) / 1024)           # two-sided binomial tail of 9 of 10
    assert t.real and t.better and t.diff == pytest.approx(d.mean().item())
    assert t.lo <= t.diff <= t.hi and "sign test p = 0.0215" in str(t)
    assert stats.sign_test(-d).worse and stats.sign_test(torch.zeros(7)).p_value == 1.0
    # the direction is the sign count, not the mean: one large negative outlier against many small gains
    skew = torch.tensor([0.01] * 12 + [-5.0])
    s = stats.sign_test(skew)
    assert s.diff < 0 and s.direction == 1 and s.better and not s.worse
    with pytest.raises(ValueError, match="diffs"):
        stats.sign_test(torch.tensor([]))
    with pytest.raises(ValueError, match="finite"):
        stats.sign_test(torch.tensor([1.0, float("nan")]))


def test_holm_hand_worked_example():
    # sorted p: 0.005, 0.01, 0.03, 0.04 (m = 4): 4 * 0.005 = 0.02, 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, 1 * 0.04 -> 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])       # capped at 1
    assert stats.holm([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_holm_is_monotone_never_below_raw_and_bonferroni_for_one(seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(12, generator=gen).pow(3).tolist()
    adj = stats.holm(p)
    order = sorted(range(12), key=p.__getitem__)
    assert all(adj[order[i]] <= adj[order[i + 1]] + 1e-15 for i in range(11))    # monotone in the sorted order
    assert all(a >= q - 1e-15 and a <= 1 for a, q in zip(adj, p))
    assert adj[order[0]] == pytest.approx(min(1.0, 12 * p[order[0]]))            # the smallest: Bonferroni
    assert all(a <= min(1.0, 12 * q) + 1e-15 for a, q in zip(adj, p))           # never above Bonferroni
    assert stats.holm([p[0]]) == pytest.approx([p[0]])                           # m = 1: the raw p


def test_holm_rejects_bad_p_values():
    for bad in ([0.5, 1.5], [-0.1], [float("nan")]):
        with pytest.raises(ValueError, match="p_values"):
            stats.holm(bad)


def test_ledger_entry_round_trips_both_tests():
    c = stats.compare(*_pair(8, 2), seed=0)
    t = stats.sign_test(torch.tensor([0.2, -0.1, 0.3, 0.4]))
    for test in (c, t):
        rec = stats.ledger_entry("row", "role", "sst2", "A - B", test)
        assert rec["test"] == test.test and rec["p_value"] == test.p_value
        assert stats.paired_from_record(rec) == test
    with pytest.raises(ValueError, match="test"):
        stats.paired_from_record({"test": "t-test"})
    with pytest.raises(ValueError, match="lacks"):
        stats.paired_from_record({"test": "sign", "p_value": 0.1})
    with pytest.raises(ValueError, match="setting"):
        stats.ledger_entry("row", "role", "", "A - B", c)


class _C:
    """A stand-in comparison with a direction and a decision."""

    def __init__(self, better=False, worse=False):
        self.better, self.worse, self.real = better, worse, better or worse

    def __str__(self):
        return "+x" if self.better else "-x" if self.worse else "0"


@pytest.mark.parametrize("maj, prior, simple, want", [
    (_C(), _C(True), _C(True), "not reproduced"),
    (_C(True), _C(), _C(True), "label-set prior only"),
    (_C(True), _C(True), _C(worse=True), "below a simple baseline"),
    (_C(True), _C(True), _C(), "partly"),
    (_C(True), _C(True), _C(True), "supported")])
def test_additive_verdict_ladder_and_reason_name_the_strongest_baseline(maj, prior, simple, want):
    assert baselines.additive_verdict(maj, prior, simple) == want
    why = baselines.verdict_reason(maj, prior, simple, "zero-shot, calibrated")
    assert "the strongest simple baseline, zero-shot, calibrated" in why
    if want == "below a simple baseline":
        assert why.startswith("better than the label-prior vector") and "but worse than" in why


def test_contextual_calibration_on_a_two_token_toy():
    # query prompt prefers label 0 by one logit; the content-free prompt prefers it by 1.5: calibrated, label 1 wins
    z = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    cf = torch.tensor([1.5, 0.0])
    assert baselines.calibrated_predictions(z, cf).tolist() == [1, 1]
    assert baselines.label_restricted_correct(z, torch.tensor([1, 1])).tolist() == [0, 1]
    assert baselines.calibrated_correct(z, cf, torch.tensor([1, 1])).tolist() == [1, 1]
    # per-query content-free logits, and a content-free prompt equal to the query: a no-op only up to ties
    assert baselines.calibrated_predictions(z, torch.tensor([[0.0, 0.0], [0.0, 5.0]])).tolist() == [0, 0]
    with pytest.raises(ValueError, match="cf_label_logits"):
        baselines.calibrated_predictions(z, torch.zeros(3))


def test_label_prior_vector_raises_every_label_equally():
    torch.manual_seed(0)
    d, V = 16, 50

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.rand(d) + 0.5)

        def forward(self, h):
            return h * self.weight

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": d})()
            self.base_model = torch.nn.Module()
            self.base_model.norm = Norm()
            self.head = torch.nn.Linear(d, V, bias=False)

        def get_output_embeddings(self):
            return self.head

    toy = Toy()
    u = Unembed(toy)
    ids = [3, 7, 11]
    v = baselines.label_prior_vector(u, ids, torch.tensor([2.0, 5.0]))
    assert v.shape == (2, d)
    assert v.norm(dim=-1).tolist() == pytest.approx([2.0, 5.0], rel=1e-5)
    gain_rows = toy.head.weight[ids] * toy.base_model.norm.weight
    lift = (gain_rows @ v[1]).detach()
    assert lift.std() < 1e-5 * lift.abs().mean()        # the same increase on every label
    assert lift.mean() > 0


def test_logit_prior_fit_known_answer_and_validation():
    # three queries, two labels: mean logits (2, 1/3), class counts (1, 2) -> log prior log(2/5), log(3/5)
    z = torch.tensor([[3.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    b = baselines.fit_logit_prior(z, y)
    assert b.tolist() == pytest.approx([math.log(2 / 5) - 2.0, math.log(3 / 5) - 1 / 3])
    # the shift undoes a constant bias on label 0: queries the raw argmax gets wrong become right
    assert ((z + b).argmax(-1)).tolist() == [0, 1, 1] and (z.argmax(-1)).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="label_logits"):
        baselines.fit_logit_prior(z[:2], y)
    with pytest.raises(ValueError, match="finite"):
        baselines.fit_logit_prior(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))


def test_logit_prior_is_fitted_on_the_other_fold_only():
    g = torch.Generator().manual_seed(0)
    P = 40
    y = torch.randint(0, 3, (P,), generator=g)
    z = torch.randn(P, 3, generator=g) + torch.nn.functional.one_hot(y, 3) * 1.0 + torch.tensor([4.0, 0.0, 0.0])
    folds = [(torch.arange(0, P, 2), torch.arange(1, P, 2)), (torch.arange(1, P, 2), torch.arange(0, P, 2))]
    a = baselines.logit_prior_correct(z, y, folds=folds)
    for fit, ev in folds:
        b = baselines.fit_logit_prior(z[fit], y[fit])
        assert torch.equal(a[ev], ((z[ev] + b).argmax(-1) == y[ev]).double())
    # the bias of +4 on label 0 ruins the raw restricted answer; the fitted prior removes it
    assert a.mean() > baselines.label_restricted_correct(z, y).mean() + 0.2
    z2 = z.clone()
    z2[folds[0][1]] += torch.tensor([0.0, 50.0, 0.0])     # changing the evaluated fold's logits leaves b of fold 0 alone
    b0 = baselines.fit_logit_prior(z2[folds[0][0]], y[folds[0][0]])
    assert torch.equal(b0, baselines.fit_logit_prior(z[folds[0][0]], y[folds[0][0]]))
    with pytest.raises(ValueError, match="exactly once"):
        baselines.logit_prior_correct(z, y, folds=folds[:1])
