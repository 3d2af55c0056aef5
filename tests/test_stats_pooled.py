"""Pooled paired tests over demonstration sets (cgar_src.analysis.stats.paired_test, permutation_test) and the
spread over sets (cgar_src.analysis.seeds)."""
from dataclasses import dataclass

import pytest
import torch

from cgar_src.analysis import seeds, stats


def test_paired_test_is_mcnemar_on_binary_outcomes():
    a = torch.tensor([1, 1, 1, 0, 1, 1, 0, 1] * 5)
    b = torch.tensor([0, 1, 0, 0, 1, 0, 0, 1] * 5)
    t = stats.paired_test(a, b)
    assert t.test == "McNemar" and t.p_value == stats.compare(a, b).p_value and t.better


def test_permutation_test_tests_the_mean_not_the_median():
    """Shares over three sets against 0/1: many small losses (-1/3) and fewer large wins (+1) with mean about 0.
    The sign test rejects (it counts directions); the permutation test of the mean does not."""
    d = torch.tensor([-1 / 3] * 60 + [1.0] * 20 + [0.0] * 20, dtype=torch.float64)
    assert abs(float(d.mean())) < 1e-9
    assert stats.sign_test(d).real
    t = stats.paired_test(d + 0.0, torch.zeros(100))
    assert t.test == "permutation" and not t.real and t.direction == 0
    # a clear shift is found, with the sign of the mean
    up = stats.permutation_test(torch.full((50,), 0.2) + 0.05 * torch.randn(50, generator=torch.Generator().manual_seed(0)))
    assert up.better and up.p_value == pytest.approx(1 / 20001)
    down = stats.permutation_test(-torch.linspace(0.1, 0.3, 40), n_perm=999)
    assert down.worse and down.p_value == pytest.approx(1 / 1000)


def test_permutation_p_value_matches_the_exact_enumeration_on_a_small_case():
    d = torch.tensor([0.5, 0.2, -0.1, 0.4, 0.3, -0.2, 0.6])
    n = d.numel()
    signs = torch.tensor([[1 if (m >> i) & 1 else -1 for i in range(n)] for m in range(2 ** n)], dtype=torch.float64)
    exact = float(((signs * d.double()).mean(1).abs() >= abs(float(d.double().mean())) - 1e-12).double().mean())
    t = stats.permutation_test(d, n_perm=200000, seed=3)
    assert t.p_value == pytest.approx(exact, abs=0.005)


def test_records_round_trip_every_kind():
    for t in (stats.compare([1, 0, 1, 1], [0, 0, 1, 0]), stats.sign_test([0.1, -0.2, 0.3]),
              stats.permutation_test([0.1, -0.2, 0.3], n_perm=99)):
        rec = stats.ledger_entry("gate", "x", "sst2", "A minus B", t)
        assert stats.paired_from_record(rec) == t
    with pytest.raises(ValueError, match="n_perm"):
        stats.permutation_test([0.1], n_perm=0)


@dataclass
class Outcomes:
    correct: torch.Tensor
    mass: torch.Tensor | None
    name: str


def test_seed_mean_averages_per_query_and_keeps_the_rest():
    a = Outcomes(torch.tensor([1, 0, 1]), None, "x")
    b = Outcomes(torch.tensor([1, 1, 0]), None, "x")
    m = seeds.seed_mean([a, b])
    assert torch.allclose(m.correct, torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64)) and m.mass is None
    assert m.name == "x" and seeds.seed_mean([a]) is a
    with pytest.raises(ValueError, match="shapes"):
        seeds.seed_mean([a, Outcomes(torch.tensor([1, 0]), None, "x")])
    with pytest.raises(ValueError, match="items"):
        seeds.seed_mean([])


def test_spread_formats_the_range_over_sets():
    s = seeds.spread([0.48, 0.55, 0.527])
    assert s.fmt(3) == "0.519 (0.480-0.550 over 3 sets)" and s.n == 3
    assert seeds.spread([0.5]).fmt(2) == "0.50" and seeds.spread([0.5, 0.5]).fmt(1) == "0.5"
    with pytest.raises(ValueError, match="values"):
        seeds.spread([])
