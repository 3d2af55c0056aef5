"""Sharpness of Theorem 3.4 (chapter 05_fixed_point): the tied pair attains L and has a pitchfork at L = 1, for both
gates with the book's eta; the fixed-point census (Newton from many starts) and its binning by L."""
import math

import numpy as np
import pytest
import torch

from cgar_src.theory import dynamics, energy, gate, lipschitz, sharpness
from cgar_src.theory.sampling import CouplingInstance, random_instance

D = torch.float64
KINDS = ("sparsemax", "softmax")
PARAMS = [(0.5, 4.0), (1.3, 0.7), (0.2, 8.0)]  # (alpha, beta)


def test_one_eta_for_each_gate():
    for alpha in (0.1, 0.7, 3.0):
        assert gate.eta(alpha) == alpha and gate.eta(alpha, "softmax") == 2 * alpha
        for kind in KINDS:
            # 1/eta is the gate's tight l2 Lipschitz constant, and the contraction bound is F's convexity threshold
            assert 1 / gate.eta(alpha, kind) == pytest.approx(lipschitz.tight_lipschitz_constant(alpha, kind), rel=1e-15)
            assert dynamics.contraction_bound(alpha, 2.0, 1.3, kind) == pytest.approx(
                energy.convexity_threshold(alpha, 2.0, 1.3, kind), rel=1e-15)
    assert dynamics.contraction_bound(0.5, 4.0, 1.0, "softmax") == pytest.approx(4.0 / (4 * 0.5))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha, beta", PARAMS)
@pytest.mark.parametrize("bound", [0.5, 1.1, 3.0])
def test_tied_pair_attains_the_bound(kind, alpha, beta, bound):
    lam = sharpness.coupling_for_bound(alpha, beta, bound, kind)
    assert dynamics.contraction_bound(alpha, beta, lam, kind) == pytest.approx(bound, rel=1e-12)
    s_q, s_c = sharpness.tied_scores(0.3, -1.2)
    J = dynamics.phi_jacobian(sharpness.tied_point(0.0), s_q, s_c, alpha, beta, lam, kind)
    assert torch.linalg.matrix_norm(J, ord=2).item() == pytest.approx(bound, rel=1e-12)
    assert dynamics.spectral_radius(J).item() == pytest.approx(bound, rel=1e-12)
    # difference quotients of Phi across the symmetric point tend to L from below
    t = 1e-4
    a, b = sharpness.tied_point(t), sharpness.tied_point(-t)
    ratio = ((dynamics.phi(a, s_q, s_c, alpha, beta, lam, kind) - dynamics.phi(b, s_q, s_c, alpha, beta, lam, kind))
             .norm() / (a - b).norm()).item()
    assert ratio <= bound * (1 + 1e-12) and ratio > bound * (1 - 1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha, beta", PARAMS)
def test_tied_map_matches_closed_form(kind, alpha, beta):
    d = torch.linspace(-1, 1, 501, dtype=D)
    lam = sharpness.coupling_for_bound(alpha, beta, 1.7, kind)
    for a, b in [(0.0, 0.0), (2.0, -0.5)]:  # any common query and context score
        torch.testing.assert_close(sharpness.tied_map(d, alpha, beta, lam, kind, a, b),
                                   sharpness.tied_map_closed_form(d, alpha, beta, lam, kind), atol=1e-13, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha, beta", PARAMS)
def test_pitchfork_one_below_three_above(kind, alpha, beta):
    for bound, count in [(0.5, 1), (0.9, 1), (1.0, 1), (1.1, 3), (2.0, 3), (4.0, 3)]:
        lam = sharpness.coupling_for_bound(alpha, beta, bound, kind)
        fps = sharpness.tied_fixed_points(alpha, beta, lam, kind, a=0.4, b=-0.3)
        assert fps.count == count, (bound, fps.d)
        assert fps.bound == pytest.approx(bound, rel=1e-12)
        mid = fps.d.abs().argmin()
        tol = 1e-4 if bound == 1 else 1e-12  # at L = 1 the root is triple: r(d) = O(d^3) resolves it to ~eps^(1/3)
        assert abs(fps.d[mid].item()) < tol and fps.rho[mid].item() == pytest.approx(bound, rel=tol)
        if count == 3:  # the symmetric pair is stable, the symmetric point unstable
            assert fps.d[0].item() == pytest.approx(-fps.d[2].item(), abs=1e-12) and 0 < fps.d[2] < 1
            assert fps.n_stable == 2 and (fps.rho[[0, 2]] < 1).all()
            assert abs(sharpness.tied_map(fps.d[2], alpha, beta, lam, kind).item() - fps.d[2].item()) < 1e-13


@pytest.mark.parametrize("alpha, beta", PARAMS)
def test_sparsemax_branch_solves_tanh(alpha, beta):
    # in the gate's linear range f(d) = tanh(L d), so d* solves d = tanh(L d) whatever alpha and beta
    L = 1.1
    lam = sharpness.coupling_for_bound(alpha, beta, L)
    d_star = sharpness.tied_fixed_points(alpha, beta, lam).d[-1].item()
    x = 0.5
    for _ in range(2000):
        x = math.tanh(L * x)
    assert d_star <= alpha / lam and d_star == pytest.approx(x, abs=1e-10)


def test_tied_fixed_points_rejects_saturation_and_bad_input():
    with pytest.raises(ValueError, match="saturates"):
        sharpness.tied_fixed_points(0.5, 400.0, 3.0, "sparsemax")
    with pytest.raises(ValueError, match="alpha"):
        sharpness.tied_fixed_points(0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="kind"):
        sharpness.coupling_for_bound(1.0, 1.0, 1.0, "relu")
    with pytest.raises(ValueError, match="n_memories"):
        sharpness.tied_scores(n_memories=1)


@pytest.mark.parametrize("kind", KINDS)
def test_census_of_the_embedded_pitchfork(kind):
    # two tied memories among four, the others far below: Newton finds 1 fixed point at L = 0.9 and 3 at 1.1
    torch.manual_seed(0)
    s_q, s_c = sharpness.tied_scores(0.2, 0.1, n_memories=4, gap=40.0)
    insts = [CouplingInstance(alpha=0.5, beta=4.0, lam=sharpness.coupling_for_bound(0.5, 4.0, b, kind), s_q=s_q,
                              s_c=s_c) for b in (0.9, 1.1)]
    below, above = sharpness.fixed_point_census(insts, kind)
    assert below.n_fixed == 1 and below.n_stable == 1 and below.index_sum == 1
    assert above.n_fixed == 3 and above.n_stable == 2 and above.n_unstable == 1 and above.index_sum == 1
    assert above.rho.max().item() == pytest.approx(1.1, rel=1e-6)


def test_census_on_random_instances():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    insts = [random_instance(8, gen, lam_range=(0.0, 4.0)) for _ in range(40)]
    for kind in KINDS:
        census = sharpness.fixed_point_census(insts, kind, n_random=4)
        assert len(census) == 40
        for c, inst in zip(census, insts):
            assert c.n_fixed >= 1
            # every fixed point is one: residual, and Lemma lem-real-spectrum (real, non-negative eigenvalues)
            res = (dynamics.phi(c.p, inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam, kind) - c.p).abs().max()
            assert res < 1e-10 and c.min_real > -1e-9 and c.max_imag < 1e-9
            if c.bound < 1:  # Theorem 3.4
                assert c.n_fixed == 1 and c.n_stable == 1 and c.index_sum == 1
        assert any(c.n_fixed > 1 for c in census)  # the ensemble reaches the multistable regime
        # the iteration's fixed point is among the census's and is stable
        for c, inst in zip(census[:10], insts[:10]):
            fp = dynamics.fixed_point(inst.s_q, inst.s_c, inst.alpha, inst.beta, inst.lam, kind=kind, tol=1e-13,
                                      max_iter=20_000, damping=0.5)
            if bool(fp.converged):
                k = (c.p - fp.p).abs().amax(-1).argmin()
                assert (c.p[k] - fp.p).abs().max() < 1e-8 and c.rho[k] <= 1


def test_share_by_bound_bins():
    def census(bound, rhos):
        rho = torch.tensor(rhos, dtype=D)
        return sharpness.Census(bound=bound, p=torch.zeros(len(rhos), 3, dtype=D), rho=rho,
                                index=torch.ones(len(rhos), dtype=D), min_real=0.0, max_imag=0.0)

    cs = [census(0.5, [0.2]), census(1.5, [0.1, 0.0, 3.0]), census(1.0, [0.5]), census(7.0, [2.0, 0.3]),
          census(50.0, [0.1, 0.1])]
    share = sharpness.share_by_bound(cs, [0, 1, 2, 8, math.inf])
    assert share.n.tolist() == [1, 2, 1, 1]
    assert share.several.tolist() == [0, 1, 1, 1] and share.multistable.tolist() == [0, 1, 0, 1]
    assert share.unstable_points.tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(share.share_several, [0, 0.5, 1, 1])
    empty = sharpness.share_by_bound(cs, [100, 200])
    assert empty.n.tolist() == [0] and np.isnan(empty.share_several[0])
    with pytest.raises(ValueError, match="edges"):
        sharpness.share_by_bound(cs, [2, 1])
    with pytest.raises(ValueError, match="census"):
        sharpness.share_by_bound([], [0, 1])


def test_newton_batch_matches_single_instance_and_validates():
    gen = torch.Generator().manual_seed(5)
    s_q, s_c = torch.randn(10, dtype=D, generator=gen), torch.randn(10, dtype=D, generator=gen)
    starts = torch.distributions.Dirichlet(torch.full((10,), 0.5, dtype=D)).sample((6,))
    args = (0.5, 8.0, 3.0)
    p1, r1 = energy.newton_fixed_points(s_q, s_c, starts, *args)
    six = torch.full((6,), 1.0, dtype=D)
    p2, r2 = energy.newton_fixed_points_batch(s_q.expand(6, -1), s_c.expand(6, -1), starts, *(x * six for x in args))
    torch.testing.assert_close(p1, p2, atol=1e-12, rtol=0)
    assert (r1 < 1e-11).sum() >= 3
    with pytest.raises(ValueError, match="lam"):
        energy.newton_fixed_points_batch(s_q.expand(6, -1), s_c.expand(6, -1), starts, six, six, -six)
    with pytest.raises(ValueError, match="alpha"):
        energy.newton_fixed_points_batch(s_q.expand(6, -1), s_c.expand(6, -1), starts, six[:3], six, six)
    with pytest.raises(ValueError, match="shape of starts"):
        energy.newton_fixed_points_batch(s_q.expand(5, -1), s_c.expand(6, -1), starts, six, six, six)
