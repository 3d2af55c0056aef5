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
    assert baselines.majority_correct(y).tolist() == [1, 1, 0, 0, 1]
    # the demonstration pool's prior can differ from the queries' majority
    assert baselines.majority_correct(y, reference=torch.tensor([0, 0, 1])).tolist() == [0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="labels"):
        baselines.majority_correct(torch.tensor([0.5, 1.0]))


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
