"""Gate (simplex, KKT, Lipschitz, alpha_crit) and coupled dynamics (Lipschitz bound, fixed point, validation)."""
import math

import pytest
import torch

from cgar_src.theory import dynamics, gate
from cgar_src.theory.simulate import SweepConfig, separation_sweep, separation_trial_loop

D = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("kind", gate.GATE_KINDS)
@pytest.mark.parametrize("alpha", [0.05, 0.5, 5.0])
def test_gate_on_simplex_and_lipschitz(kind, alpha):
    u, v = rand(500, 40), rand(500, 40, seed=1)
    g = gate.gate(u, alpha, kind)
    assert (g >= 0).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(500, dtype=D))
    lip = (gate.gate(v, alpha, kind) - g).norm(dim=-1) / (v - u).norm(dim=-1)
    assert (lip <= 1 / gate.eta(alpha, kind) + 1e-12).all()


def test_sparsemax_kkt_and_optimality():
    u, alpha = 3 * rand(300, 25), 0.7
    g = gate.gate(u, alpha)
    tau, k = gate.sparsemax_threshold(u / alpha)
    torch.testing.assert_close(g, (u / alpha - tau[:, None]).clamp_min(0), atol=1e-12, rtol=0)
    assert ((g > 0).sum(-1) == k).all()
    # KKT: on the support u_i/alpha - g_i = tau; off the support u_i/alpha <= tau
    on = g > 0
    assert ((u / alpha - g - tau[:, None]).abs()[on] < 1e-12).all()
    assert ((u / alpha)[~on] <= tau[:, None].expand_as(u)[~on] + 1e-12).all()
    obj = lambda x: (x * u).sum(-1) - alpha / 2 * (x * x).sum(-1)
    others = torch.distributions.Dirichlet(torch.ones(25, dtype=D)).sample((300,))
    assert (obj(g) >= obj(others) - 1e-12).all()


def test_gate_jacobian_matches_autograd():
    u = rand(12)
    for kind in gate.GATE_KINDS:
        J = torch.autograd.functional.jacobian(lambda x, kind=kind: gate.gate(x, 0.4, kind), u)
        torch.testing.assert_close(gate.gate_jacobian(u, 0.4, kind), J, atol=1e-10, rtol=0)


def test_alpha_crit_closed_form_and_peak_curve():
    u = rand(30, seed=3)
    ac = gate.alpha_crit(u).item()
    srt = u.sort(descending=True).values
    assert ac == pytest.approx((srt[0] - srt[1]).item())
    assert gate.gate(u, ac * (1 - 1e-9)).max().item() == pytest.approx(1.0, abs=1e-12)
    assert gate.gate(u, ac * (1 + 1e-6)).max().item() < 1 - 1e-9
    alphas = torch.logspace(-2, 2, 50, dtype=D)
    peak, k = gate.peak_gate_curve(u, alphas)
    numeric = torch.stack([gate.gate(u, a.item()).max() for a in alphas])
    torch.testing.assert_close(peak, numeric, atol=1e-12, rtol=0)
    assert (peak[alphas <= ac] == 1).all() and (k[alphas <= ac] == 1).all()


def test_alpha_crit_with_feedback_matches_solver():
    s_q, s_c = rand(15, seed=4), rand(15, seed=5)
    for lam in (0.0, 0.3):
        derived = dynamics.alpha_crit_coupled(s_q, s_c, 2.0, lam).item()
        measured = dynamics.measured_alpha_crit(s_q, s_c, 2.0, lam, lo=derived / 4, hi=4 * derived)
        assert abs(measured - derived) < 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_lipschitz_bound_of_phi(seed):
    g = torch.Generator().manual_seed(seed)
    alpha, beta, lam = 0.2 + 3 * torch.rand(1, generator=g).item(), 0.5 + 6 * torch.rand(1, generator=g).item(), 2 * torch.rand(1, generator=g).item()
    s_q, s_c = rand(20, seed=seed + 10), rand(20, seed=seed + 20)
    dist = torch.distributions.Dirichlet(torch.ones(20, dtype=D))
    p, q = dist.sample((400,)), dist.sample((400,))
    num = (dynamics.phi(p, s_q, s_c, alpha, beta, lam) - dynamics.phi(q, s_q, s_c, alpha, beta, lam)).norm(dim=-1)
    assert (num <= dynamics.contraction_bound(alpha, beta, lam) * (p - q).norm(dim=-1) + 1e-12).all()


def test_fixed_point_below_bound_is_unique_and_accurate():
    s_q, s_c = rand(64, 30, seed=6), rand(64, 30, seed=7)
    alpha, beta, lam = 1.0, 3.0, 0.7
    assert dynamics.contraction_bound(alpha, beta, lam) < 1
    fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12)
    assert fp.converged.all()
    residual = (dynamics.phi(fp.p, s_q, s_c, alpha, beta, lam) - fp.p).abs().max()
    assert residual < 1e-10
    starts = torch.distributions.Dirichlet(torch.ones(30, dtype=D)).sample((64,))
    other = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12, p0=starts)
    torch.testing.assert_close(other.p, fp.p, atol=1e-10, rtol=0)
    J = dynamics.phi_jacobian(fp.p[0], s_q[0], s_c[0], alpha, beta, lam)
    Ja = torch.autograd.functional.jacobian(lambda x: dynamics.phi(x, s_q[0], s_c[0], alpha, beta, lam), fp.p[0])
    torch.testing.assert_close(J, Ja, atol=1e-10, rtol=0)
    assert dynamics.spectral_radius(J) <= dynamics.contraction_bound(alpha, beta, lam)


@pytest.mark.parametrize("alpha, lam, damping", [(1.0, 0.5, 1.0), (2.0, 3.0, 0.5), (0.3, 1.0, 1.0)])
def test_screened_solve_equals_full_solve(alpha, lam, damping):
    """The sparsemax solver iterates on the screened columns only; from the same start on all N columns
    (p0 given) it must reach the same p, gate, residuals and iteration counts."""
    s_q, s_c = rand(50, 30, seed=11), 3 * rand(50, 30, seed=12)
    idx = dynamics.support_screen(s_c, alpha, lam)
    assert idx is not None and idx.shape[-1] < 30  # the test exercises the screened path
    kw = dict(tol=1e-12, damping=damping, max_iter=5000)
    screened = dynamics.fixed_point(s_q, s_c, alpha, 2.0, lam, **kw)
    full = dynamics.fixed_point(s_q, s_c, alpha, 2.0, lam, p0=dynamics.first_order(s_q, s_c, alpha, 2.0, lam), **kw)
    torch.testing.assert_close(screened.p, full.p, atol=1e-13, rtol=0)
    torch.testing.assert_close(screened.g, full.g, atol=1e-13, rtol=0)
    assert screened.iterations.equal(full.iterations)
    assert screened.columns == idx.shape[-1] and full.columns == 30
    torch.testing.assert_close(screened.residual, full.residual, atol=1e-13, rtol=0)
    # the screened columns hold the gate's support at every point of the simplex, not just at the fixed point
    p = torch.distributions.Dirichlet(torch.ones(30, dtype=D)).sample((50,))
    outside = torch.ones_like(s_c, dtype=torch.bool).scatter(-1, idx, False)
    assert (gate.gate(s_c + lam * p, alpha)[outside] == 0).all()


def test_screening_bound_is_tight():
    """A column just inside max s_c - alpha - lam can carry gate mass (p all on it), so it must be kept; one just
    outside can never carry mass, and is dropped."""
    alpha, lam = 1.0, 0.5
    s_c = torch.tensor([[0.0, -(alpha + lam) + 1e-3, -(alpha + lam) - 1e-3, -5.0]], dtype=D)
    assert sorted(dynamics.support_screen(s_c, alpha, lam)[0].tolist()) == [0, 1]
    assert gate.gate(s_c + lam * torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=D), alpha)[0, 1] > 0
    assert gate.gate(s_c + lam * torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=D), alpha)[0, 2] == 0


def test_first_order_error_bound_and_separation_inequality():
    s_q, s_c = rand(200, 25, seed=8), rand(200, 25, seed=9)
    for lam in (0.1, 0.5):
        fp = dynamics.fixed_point(s_q, s_c, 1.0, 2.0, lam, tol=1e-13)
        err = (fp.p - dynamics.first_order(s_q, s_c, 1.0, 2.0, lam)).norm(dim=-1)
        assert (err <= 2.0 * lam**2 / 2 + 1e-12).all()
        target = s_q.argmax(-1)
        sep = dynamics.effective_separation(s_q, fp.g, target, lam)
        assert (sep.effective >= sep.raw + lam * sep.gate - 1e-12).all()
        p_mu = fp.p.gather(-1, target[:, None])[:, 0]
        assert (p_mu >= dynamics.retrieval_probability_bound(sep.effective, 25, 2.0) - 1e-12).all()


def test_batched_sweep_equals_trial_loop():
    cfg = SweepConfig(n_memories=50, dim=16, n_trials=6, sigmas=(0.0, 0.5), lambdas=(0.0, 1.0), beta=4.0,
                      alpha=10.0, context_gain=40.0)
    res = separation_sweep(cfg)
    torch.testing.assert_close(res.p_target, separation_trial_loop(cfg), atol=1e-9, rtol=0)
    assert res.max_residual <= cfg.tol
    assert separation_sweep(cfg).p_target.equal(res.p_target)  # deterministic


@pytest.mark.parametrize("kwargs, name", [
    (dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(beta=0.0), "beta"),
    (dict(lam=-0.1), "lam"), (dict(lam=float("nan")), "lam"), (dict(alpha=float("inf")), "alpha"),
])
def test_validation_names_the_parameter(kwargs, name):
    args = dict(alpha=1.0, beta=1.0, lam=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        dynamics.fixed_point(rand(5), rand(5), **args)


def test_validation_shapes_and_values():
    with pytest.raises(ValueError, match="s_c"):
        dynamics.fixed_point(rand(5), rand(6), 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="s_q"):
        dynamics.first_order(torch.tensor([0.0, math.inf]), rand(2), 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="kind"):
        gate.gate(rand(5), 1.0, kind="entmax15")
    with pytest.raises(ValueError, match="target"):
        dynamics.effective_separation(rand(3, 5), rand(3, 5), torch.tensor([0, 1, 7]), 1.0)
    with pytest.raises(ValueError, match="damping"):
        dynamics.fixed_point(rand(5), rand(5), 1.0, 1.0, 0.5, damping=1.5)
    with pytest.raises(ValueError, match="sigmas"):
        SweepConfig(sigmas=(-1.0,))
    with pytest.raises(ValueError, match="n_memories"):
        SweepConfig(n_memories=0)
