"""The gate's Lipschitz bound is tight (chapter 02_two_stage): sparsemax attains 1/alpha, softmax approaches 1/(2 alpha)."""
import math

import pytest
import torch

from cgar_src.theory import gate, lipschitz

ALPHAS = [0.05, 0.5, 1.0, 3.7]
DIMS = [2, 3, 10, 64]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("n", DIMS)
def test_sparsemax_pair_attains_one_over_alpha(alpha, n):
    u, v = lipschitz.extremal_pair(alpha, "sparsemax", n)
    ratio = lipschitz.lipschitz_ratio(u, v, alpha).item()
    assert ratio == pytest.approx(1 / alpha, rel=1e-12)
    assert ratio == pytest.approx(1 / gate.eta(alpha), rel=1e-12)  # the lemma's bound is attained
    assert lipschitz.tight_lipschitz_constant(alpha) == 1 / alpha


@pytest.mark.parametrize("alpha", ALPHAS)
def test_sparsemax_pair_from_a_sparse_point(alpha):
    # a generic point with a partial support: the pair moves along e_i - e_j inside the support
    torch.manual_seed(1)
    u = alpha * torch.randn(30, dtype=torch.float64)
    g = gate.gate(u, alpha)
    assert 2 <= int((g > 0).sum()) < 30  # a partial support of several memories
    u0, u1 = lipschitz.sparsemax_extremal_pair(alpha, u)
    assert torch.equal(gate.gate(u0, alpha) > 0, gate.gate(u1, alpha) > 0)  # same support
    assert lipschitz.lipschitz_ratio(u0, u1, alpha).item() == pytest.approx(1 / alpha, rel=1e-12)


def test_one_hot_point_has_no_extremal_pair():
    with pytest.raises(ValueError, match="support of at least 2"):
        lipschitz.sparsemax_extremal_pair(0.1, torch.tensor([5.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="i and j must differ"):
        lipschitz.sparsemax_extremal_pair(1.0, n=3, i=1, j=1)
    with pytest.raises(ValueError, match="alpha"):
        lipschitz.extremal_pair(0.0)
    with pytest.raises(ValueError, match="kind"):
        lipschitz.extremal_pair(1.0, "entmax")


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("n", DIMS)
def test_softmax_pair_approaches_one_over_two_alpha(alpha, n):
    u, v = lipschitz.extremal_pair(alpha, "softmax", n)
    ratio = lipschitz.lipschitz_ratio(u, v, alpha, "softmax").item()
    bound = lipschitz.tight_lipschitz_constant(alpha, "softmax")
    assert bound == 1 / (2 * alpha)
    assert abs(ratio - bound) < 1e-3 * bound
    assert ratio < bound  # approached, not attained
    # closed form with the other logits at -infinity: tanh(t/alpha)/(2t), t = 1e-3 alpha
    t = 1e-3 * alpha
    assert ratio == pytest.approx(math.tanh(t / alpha) / (2 * t), rel=1e-9)
    # the book's eta = 2 alpha for the entropic gate: 1/eta is the tight constant, approached from below
    assert bound == 1 / gate.eta(alpha, "softmax") and ratio < 1 / gate.eta(alpha, "softmax")


@pytest.mark.parametrize("alpha", ALPHAS)
def test_softmax_ratio_tends_to_bound_as_t_shrinks(alpha):
    ratios = [lipschitz.lipschitz_ratio(*lipschitz.softmax_extremal_pair(alpha, t=alpha * s), alpha, "softmax").item()
              for s in (1.0, 0.1, 0.01)]
    assert ratios[0] < ratios[1] < ratios[2] < 1 / (2 * alpha)
    assert 1 / (2 * alpha) - ratios[2] < 1e-4 / alpha


@pytest.mark.parametrize("kind", ["sparsemax", "softmax"])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("n", [2, 5, 30])
def test_random_pairs_never_exceed_tight_constant(kind, alpha, n):
    gen = torch.Generator().manual_seed(n)
    u = 3 * alpha * torch.randn(4000, n, dtype=torch.float64, generator=gen)  # z = u/alpha of spread 3
    scale = alpha * torch.logspace(-4, 1, 4000, dtype=torch.float64).unsqueeze(-1)
    v = u + scale * torch.randn(4000, n, dtype=torch.float64, generator=gen)
    ratio = lipschitz.lipschitz_ratio(u, v, alpha, kind)
    bound = lipschitz.tight_lipschitz_constant(alpha, kind)
    assert ratio.max().item() <= bound * (1 + 1e-12)
    assert ratio.max().item() > 0.3 * bound  # the check is not vacuous


def test_ratio_rejects_equal_points_and_shape_mismatch():
    u = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="v must differ"):
        lipschitz.lipschitz_ratio(u, u, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        lipschitz.lipschitz_ratio(u, torch.zeros(4), 1.0)
