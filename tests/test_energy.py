"""The coupled energy F (chapter 05b): block minimisers, monotone alternating minimisation, Hessian, convexity
threshold, stationary points and their classification."""
import math

import pytest
import torch

from cgar_src.theory import dynamics, energy, gate

D = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def simplex(n_rows, n, seed=0, conc=1.0):
    torch.manual_seed(seed)
    return torch.distributions.Dirichlet(torch.full((n,), conc, dtype=D)).sample((n_rows,))


@pytest.mark.parametrize("kind", gate.GATE_KINDS)
def test_block_minimisers_beat_random_points(kind):
    s_q, s_c = rand(12, seed=1), rand(12, seed=2)
    alpha, beta, lam = 0.7, 3.0, 1.5
    g, p = simplex(1, 12, seed=3)[0], simplex(1, 12, seed=4)[0]
    others = simplex(500, 12, seed=5)
    p_star = energy.best_p(g, s_q, beta, lam)
    g_star = energy.best_g(p, s_c, alpha, lam, kind)
    F = lambda pp, gg: energy.coupled_energy(pp, gg, s_q, s_c, alpha, beta, lam, kind)
    assert (F(p_star, g) <= F(others, g) + 1e-12).all()
    assert (F(p, g_star) <= F(p, others) + 1e-12).all()
    torch.testing.assert_close(energy.reduced_energy(g, s_q, s_c, alpha, beta, lam, kind), F(p_star, g), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", gate.GATE_KINDS)
@pytest.mark.parametrize("lam", [0.3, 2.0, 6.0])  # below and far above the convexity threshold
def test_alternating_minimisation_never_increases_F(kind, lam):
    s_q, s_c = 2 * rand(50, 15, seed=6), 2 * rand(50, 15, seed=7)
    F, p = energy.alternating_trace(simplex(50, 15, seed=8), s_q, s_c, 0.5, 4.0, lam, kind=kind, n_steps=40)
    assert (F.diff(dim=-1) <= 1e-12 * F.abs()[..., 1:].clamp_min(1)).all()
    # the last iterate is Phi applied n times
    q = simplex(50, 15, seed=8)
    for _ in range(40):
        q = dynamics.phi(q, s_q, s_c, 0.5, 4.0, lam, kind)
    torch.testing.assert_close(p, q, atol=1e-12, rtol=0)


def test_hessian_matches_autograd():
    p, g = simplex(1, 8, seed=9)[0], simplex(1, 8, seed=10)[0]
    s_q, s_c = rand(8, seed=11), rand(8, seed=12)
    for kind in gate.GATE_KINDS:
        f = lambda x, kind=kind: energy._energy(x[:8], x[8:], s_q, s_c, 0.8, 2.5, 1.3, kind)
        H = torch.autograd.functional.hessian(f, torch.cat([p, g]))
        torch.testing.assert_close(energy.hessian(p, g, 0.8, 2.5, 1.3, kind), H, atol=1e-9, rtol=1e-9)


def test_convexity_constant_at_least_two_and_tight():
    c = energy.convexity_constant(simplex(2000, 10, seed=13, conc=0.3))
    assert (c >= 2 - 1e-10).all()
    assert energy.convexity_constant(torch.tensor([0.5, 0.5], dtype=D)).item() == pytest.approx(2.0, abs=1e-12)
    eps = 1e-7
    near = torch.tensor([0.5 - 4 * eps] + [0.5] + [eps] * 4, dtype=D)
    near = near / near.sum()
    assert energy.convexity_constant(near).item() < 2 + 1e-5


@pytest.mark.parametrize("kind", gate.GATE_KINDS)
def test_joint_convexity_exactly_below_threshold(kind):
    """Tangent Hessian PD at random points whenever the threshold is < 1; indefinite near p = g = (1/2, 1/2, 0..)
    once it exceeds 1."""
    n = 6
    alpha, beta = 0.5, 2.0
    lam_star = math.sqrt((2 if kind == "sparsemax" else 4) * alpha / beta)  # threshold == 1
    pts_p, pts_g = simplex(100, n, seed=14, conc=0.5), simplex(100, n, seed=15, conc=0.5)
    for lam in (0.5 * lam_star, 0.99 * lam_star):
        assert energy.convexity_threshold(alpha, beta, lam, kind) < 1
        for p, g in zip(pts_p, pts_g):
            assert torch.linalg.eigvalsh(energy.tangent_hessian(p, g, alpha, beta, lam, kind))[0] > 0
    half = torch.tensor([0.5 - 2e-6, 0.5 - 2e-6] + [1e-6] * (n - 2), dtype=D)
    lam = 1.02 * lam_star
    assert energy.convexity_threshold(alpha, beta, lam, kind) > 1
    assert torch.linalg.eigvalsh(energy.tangent_hessian(half, half, alpha, beta, lam, kind))[0] < 0


def test_fixed_points_are_stationary_and_classified():
    # chapter 05's multistability example: query favours memory 1, context memory 2, strong coupling
    gen = torch.Generator().manual_seed(1)
    s_q, s_c = 0.1 * torch.randn(10, generator=gen, dtype=D), 0.1 * torch.randn(10, generator=gen, dtype=D)
    s_q[0] += 0.5
    s_c[1] += 0.5
    alpha, beta, lam = 0.5, 8.0, 3.0
    p, res = energy.newton_fixed_points(s_q, s_c, simplex(40, 10, seed=16, conc=0.3), alpha, beta, lam)
    pts = energy.distinct(p[res < 1e-11])
    kinds = [energy.classify(q, s_q, s_c, alpha, beta, lam) for q in pts]
    assert all(k.residual < 1e-10 for k in kinds)
    assert any(k.label == "local minimum" for k in kinds) and any(k.label == "saddle" for k in kinds)
    # the damped iteration finds attractors only: every one is a local minimum with a one-hot gate
    fp = dynamics.fixed_point(s_q.expand(40, -1), s_c.expand(40, -1), alpha, beta, lam, p0=simplex(40, 10, seed=17),
                              tol=1e-12, max_iter=20_000, damping=0.5)
    for q in fp.p[fp.converged]:
        sp = energy.classify(q, s_q, s_c, alpha, beta, lam)
        assert sp.label == "local minimum" and (sp.g > 0).sum() == 1


def test_below_threshold_fixed_point_is_global_minimum():
    s_q, s_c = rand(10, seed=18), rand(10, seed=19)
    alpha, beta, lam = 1.0, 2.0, 0.9
    assert energy.convexity_threshold(alpha, beta, lam) < 1
    fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-13)
    F_star = energy.coupled_energy(fp.p, fp.g, s_q, s_c, alpha, beta, lam)
    F_rand = energy.coupled_energy(simplex(3000, 10, seed=20), simplex(3000, 10, seed=21), s_q, s_c, alpha, beta, lam)
    assert (F_star <= F_rand).all()
    assert energy.kkt_residual(fp.p, fp.g, s_q, s_c, alpha, beta, lam) < 1e-12


def test_hamux_flow_descends_and_reaches_the_fixed_point():
    s_q, s_c = rand(12, seed=22), rand(12, seed=23)
    alpha, beta, lam = 1.0, 2.0, 0.8
    F, p, g = energy.hamux_flow(s_q, s_c, alpha, beta, lam, dt=0.1, n_steps=600)
    assert (F.diff() <= 1e-12).all()
    fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-13)
    torch.testing.assert_close(p, fp.p, atol=1e-9, rtol=0)


def test_validation():
    s = rand(5)
    with pytest.raises(ValueError, match="alpha"):
        energy.coupled_energy(torch.full((5,), 0.2, dtype=D), torch.full((5,), 0.2, dtype=D), s, s, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="simplex"):
        energy.coupled_energy(torch.ones(5, dtype=D), torch.full((5,), 0.2, dtype=D), s, s, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="open simplex"):
        energy.convexity_constant(torch.tensor([1.0, 0.0], dtype=D))
    with pytest.raises(ValueError, match="kind"):
        energy.convexity_threshold(1.0, 1.0, 1.0, "relu")
    with pytest.raises(ValueError, match="starts"):
        energy.newton_fixed_points(s, s, torch.full((3, 4), 0.25, dtype=D), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="dt"):
        energy.hamux_flow(s, s, 1.0, 1.0, 1.0, dt=2.0)


def test_measured_alpha_crit_batch_matches_scalar_and_closed_form():
    """dynamics.measured_alpha_crit_batch (added with chapter 04's many-instance checks; tested here, beside the
    other additions of issue 12): per-row alpha and lambda, same answer as the scalar bisection and the closed form."""
    s_q, s_c = rand(6, 15, seed=30), rand(6, 15, seed=31)
    lam = torch.tensor([0.0, 0.1, 0.3, 0.0, 0.2, 0.4], dtype=D)
    derived = torch.stack([dynamics.alpha_crit_coupled(s_q[i], s_c[i], 2.0, lam[i].item()) for i in range(6)])
    measured = dynamics.measured_alpha_crit_batch(s_q, s_c, 2.0, lam, lo=derived / 4, hi=4 * derived)
    assert (measured - derived).abs().max() < 1e-9
    one = dynamics.measured_alpha_crit(s_q[2], s_c[2], 2.0, 0.3, lo=derived[2].item() / 4, hi=4 * derived[2].item())
    assert abs(one - measured[2].item()) < 1e-8
    with pytest.raises(ValueError, match="bracket"):
        dynamics.measured_alpha_crit_batch(s_q, s_c, 2.0, lam, lo=2 * derived, hi=4 * derived)
    with pytest.raises(ValueError, match="lo"):
        dynamics.measured_alpha_crit_batch(s_q, s_c, 2.0, lam, lo=-1.0, hi=4 * derived)
