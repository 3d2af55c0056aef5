"""The theory chapters' experiments as package functions (chapters 01b, 03, 04, 05, 05b): random instances and banks
(sampling, simulate.make_bank), the context-noise sweep (sweeps), the phase transition (phase), Theorem 3.4's checks
(contraction), multistability, convexity, descent, and the related memories' capacities (capacity).

Each test asserts what the theory says must hold (a bound, an invariant, a known limit) or that bad input raises a
ValueError naming the parameter."""
import math

import pytest
import torch
from scipy import integrate, stats

from cgar_src.theory import (
    capacity,
    contraction,
    convexity,
    descent,
    dynamics,
    energy,
    gate,
    multistability,
    phase,
    sampling,
    sweeps,
)
from cgar_src.theory.simulate import SweepConfig, make_bank, separation_sweep, sweep_scores

D = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- sampling ---------------------------------------------------------------------------------------------------

def test_log_uniform_and_instances_respect_ranges_and_are_reproducible():
    xs = [sampling.log_uniform(0.1, 5.0, g) for g in [gen(1)] for _ in range(200)]
    assert all(0.1 <= x <= 5.0 for x in xs) and max(xs) / min(xs) > 10       # spans decades
    a, b = (sampling.random_instance(7, gen(3), lam_range=(0.0, 4.0)) for _ in range(2))
    assert (a.alpha, a.beta, a.lam) == (b.alpha, b.beta, b.lam) and torch.equal(a.s_q, b.s_q)
    assert 0.2 <= a.alpha <= 5.0 and 0.5 <= a.beta <= 8.0 and 0 <= a.lam <= 4.0 and a.s_q.shape == (7,)
    # lambda ~ U(0, 4) is 4 * U(0, 1) bit for bit: chapter 05b's former draw `4 * torch.rand(1)`
    for seed in range(20):
        g = gen(seed)
        sampling.log_uniform(0.2, 5.0, g), sampling.log_uniform(0.5, 8.0, g)
        drawn = sampling.random_instance(3, gen(seed), lam_range=(0.0, 4.0)).lam
        assert drawn == 4 * torch.rand(1, generator=g, dtype=D).item()


def test_random_simplex_points_lie_on_the_simplex():
    torch.manual_seed(0)
    p = sampling.random_simplex(50, 6, conc=0.3)
    assert p.shape == (50, 6) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50, dtype=D))


@pytest.mark.parametrize("call, name", [
    (lambda: sampling.log_uniform(0.0, 1.0, gen()), "(lo, hi)"),
    (lambda: sampling.log_uniform(2.0, 1.0, gen()), "(lo, hi)"),
    (lambda: sampling.random_instance(5, "seed"), "gen"),
    (lambda: sampling.random_instance(5, gen(), lam_range=(1.0,)), "lam_range"),
    (lambda: sampling.random_simplex(0, 4), "n"),
])
def test_sampling_rejects_bad_input(call, name):
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        call()


# --- simulate.make_bank (extended) -----------------------------------------------------------------------------

def test_make_bank_generator_option_continues_a_stream_and_defaults_to_cfg_seed():
    cfg = SweepConfig(n_memories=20, dim=16, n_trials=3, sigmas=(0.2,), lambdas=(0.0,), seed=11)
    default, seeded = make_bank(cfg), make_bank(cfg, generator=gen(11))
    assert all(torch.equal(a, b) for a, b in zip(default, seeded))
    torch.testing.assert_close(default.X.norm(dim=0), torch.ones(20, dtype=D))
    assert torch.equal(default.query_target, default.target)
    g = gen(11)
    first, second = make_bank(cfg, generator=g), make_bank(cfg, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(first, default)) and not torch.equal(second.X, first.X)


def test_make_bank_query_elsewhere_draws_other_memories_after_the_targets():
    cfg = SweepConfig(n_memories=5, dim=64, n_trials=2000, sigmas=(0.0,), lambdas=(0.0,), context_noise=0.0)
    same, other = make_bank(cfg), make_bank(cfg, query_elsewhere=True)
    assert torch.equal(same.X, other.X) and torch.equal(same.K, other.K) and torch.equal(same.target, other.target)
    assert (other.query_target != other.target).all()
    offsets = (other.query_target - other.target) % 5
    assert torch.bincount(offsets, minlength=5)[1:].min() > 400   # uniform over the other memories
    assert not torch.equal(same.z_q, other.z_q)        # the extra draw comes before the noise
    s_q, s_c = other.scores(cfg, 0.0)                  # noiseless: each score vector peaks at its own memory
    assert torch.equal(s_q.argmax(-1), other.query_target) and torch.equal(s_c.argmax(-1), other.target)
    torch.testing.assert_close(s_q, other.X.T[other.query_target] @ other.X, rtol=0, atol=0)
    assert torch.equal(sweep_scores(cfg, *other[:5], 0.0)[0].argmax(-1), other.target)   # default: the target's query


@pytest.mark.parametrize("kwargs, name", [({"generator": 3}, "generator"),
                                          ({"query_elsewhere": "yes"}, "query_elsewhere")])
def test_make_bank_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_bank(SweepConfig(n_memories=4, dim=4, n_trials=2), **kwargs)


# --- sweeps (chapter 03) -----------------------------------------------------------------------------------------

SMALL = SweepConfig(n_memories=60, dim=24, n_trials=40, sigmas=(0.0, 0.5), lambdas=(0.0, 1.0, 4.0), alpha=20.0,
                    context_gain=50.0, context_noise=0.3, seed=2)


def test_odds_ratio_never_exceeds_the_theorem_factor_and_is_one_without_coupling():
    res = separation_sweep(SMALL)
    log_ratio, log_factor = sweeps.odds_ratio_vs_uncoupled(res.log_odds, res.delta_gate, SMALL.lambdas, SMALL.beta,
                                                           lambda_dim=1)
    assert log_ratio.shape == res.log_odds.shape
    assert (log_ratio <= log_factor + 1e-9).all()
    assert (log_ratio[:, 0] == 0).all() and (log_factor[:, 0] == 0).all()
    assert (log_ratio[:, -1] < 0).any()                 # the coupling does shrink some odds


@pytest.mark.parametrize("lambdas, dim, name", [([0.5, 1.0, 4.0], 1, "lambdas"), ([0.0, 1.0, 4.0], 0, "lambda_dim")])
def test_odds_ratio_validation(lambdas, dim, name):
    t = torch.zeros(2, 3, 4, dtype=D)
    with pytest.raises(ValueError, match=name):
        sweeps.odds_ratio_vs_uncoupled(t, t, lambdas, 4.0, lambda_dim=dim)


def test_context_noise_sweep_invariants_and_limits():
    points = sweeps.context_noise_sweep(SMALL, [0.0, 0.6], [0.0, 1.0, 8.0], 0.4, 30)
    clean, noisy = points
    assert clean.context_accuracy == 1.0                  # a noiseless context points at its own key
    assert noisy.context_accuracy < 1.0
    for pt in points:
        assert pt.violations() == 0 and pt.max_residual <= SMALL.tol
        assert pt.accuracy.shape == (3,) and pt.not_one_hot.shape == (3, 30)
        # without coupling the fixed point is the first-order model: same retrieval, no odds change
        assert pt.accuracy[0] == pt.accuracy_first_order[0] and pt.disagreement[0] == 0
        assert (pt.log_ratio[0] == 0).all() and (pt.first_order_gap[0] < 1e-12).all()
    # the bound holds trial by trial, so also between the medians over the trials whose gate is spread
    meas, pred, n = noisy.median_log10_on_spread_gates(2)
    assert n == int(noisy.not_one_hot[2].sum()) > 0 and meas <= pred + 1e-9


def test_context_noise_sweep_reports_nan_when_every_gate_is_one_hot():
    cfg = SweepConfig(n_memories=30, dim=32, n_trials=10, alpha=1.0, context_gain=50.0, seed=1)
    (pt,) = sweeps.context_noise_sweep(cfg, [0.0], [0.0, 1.0], 0.2, 10)
    assert not pt.not_one_hot.any()
    meas, pred, n = pt.median_log10_on_spread_gates(1)
    assert n == 0 and math.isnan(meas) and math.isnan(pred)


def test_context_noise_sweep_validation():
    with pytest.raises(ValueError, match="context_noises"):
        sweeps.context_noise_sweep(SMALL, [], [0.0, 1.0], 0.4, 10)
    with pytest.raises(ValueError, match="n_trials"):
        sweeps.context_noise_sweep(SMALL, [0.2], [0.0, 1.0], 0.4, 0)


# --- phase (chapter 04) ------------------------------------------------------------------------------------------

MODEL = phase.PhaseModel(n_memories=20, dim=16, query_noise=0.2, context_noise=0.2)


def test_phase_instance_is_figure_2s_model_with_one_trial():
    # drawn by hand in the documented order: X, K, target, query noise, context noise (one generator)
    g = gen(0)
    X = torch.randn(16, 20, generator=g, dtype=D)
    K = torch.randn(16, 20, generator=g, dtype=D)
    X, K = X / X.norm(dim=0), K / K.norm(dim=0)
    mu = int(torch.randint(20, (1,), generator=g))
    xi = X[:, mu] + 0.2 * torch.randn(16, generator=g, dtype=D)
    c = K[:, mu] + 0.2 * torch.randn(16, generator=g, dtype=D)
    s_q, s_c = MODEL.draw(gen(0))
    assert torch.equal(s_q, xi @ X) and torch.equal(s_c, c @ K)


def test_phase_draw_many_alternates_the_query_memory():
    clean = phase.PhaseModel(n_memories=20, dim=64, query_noise=0.0, context_noise=0.0)
    s_q, s_c = clean.draw_many(6, gen(1), alternate=True)
    agree = s_q.argmax(-1) == s_c.argmax(-1)
    assert agree.tolist() == [True, False] * 3


def test_closed_form_alpha_crit_and_kink():
    errs = phase.closed_form_errors(MODEL, 5, gen(2), beta=4.0)
    assert errs.shape == (5,) and (errs < 1e-6).all()
    s_q, s_c = MODEL.draw(gen(3))
    left, right = phase.kink_slopes(s_q, s_c, 4.0)    # finite differences of the fixed-point solver's peak gate
    assert abs(left) < 1e-4 and abs(right + 1 / (2 * gate.alpha_crit(s_c).item())) < 1e-4
    # the check can fail: a step that straddles the kink (h large) bends the right slope away from -1/(2 alpha_crit)
    a = gate.alpha_crit(s_c).item()
    _, right_coarse = phase.kink_slopes(s_q, s_c, 4.0, h=0.5 * a)
    assert abs(right_coarse + 1 / (2 * a)) > 1e-2
    with pytest.raises(ValueError, match="h"):
        phase.kink_slopes(s_q, s_c, 4.0, h=2 * a)


def test_coupled_thresholds_match_bisection_and_vanish_without_feedback():
    s_q, s_c = MODEL.draw(gen(0))
    rows = phase.coupled_thresholds(s_q, s_c, 4.0, [0.0, 0.25])
    assert rows[0].shift == 0 and rows[0].contraction == 0
    assert abs(rows[0].derived - gate.alpha_crit(s_c).item()) < 1e-12
    assert all(abs(r.measured - r.derived) < 1e-6 for r in rows)
    alphas = torch.tensor([0.5 * rows[1].derived, 2 * rows[1].derived], dtype=D)
    curves = phase.fixed_point_peak_curves(s_q, s_c, alphas, 4.0, [0.25])
    assert curves[0.25][0] == 1 and curves[0.25][1] < 1   # one-hot below the threshold, not above


def test_top_gap_exact_mean_known_limit_and_sampling():
    # N = 2: D = |Z1 - Z2| with Z1 - Z2 ~ N(0, 2), so E D = 2 / sqrt(pi)
    assert abs(phase.top_gap_mean_exact(2) - 2 / math.sqrt(math.pi)) < 1e-12
    # N = 3: E u(1) = 3/(2 sqrt(pi)) and E u(2) = 0 by symmetry
    assert abs(phase.top_gap_mean_exact(3) - 1.5 / math.sqrt(math.pi)) < 1e-12
    # N = 4: E u(1) = (6/sqrt(pi))(1/2 + arcsin(1/3)/pi); the recurrence E u(2:4) + 3 E u(1:4) = 4 E u(1:3) gives
    # the gap 4 E u(1:4) - 6/sqrt(pi)
    top4 = 6 / math.sqrt(math.pi) * (0.5 + math.asin(1 / 3) / math.pi) / 2
    assert abs(phase.top_gap_mean_exact(4) - (4 * top4 - 6 / math.sqrt(math.pi))) < 1e-12
    scales = [phase.top_gap_evt_scale(n) for n in (10, 1000, 10**6)]
    assert scales[0] > scales[1] > scales[2] and 1.0 < scales[2] * math.sqrt(2 * math.log(10**6)) < 1.15
    rows = phase.gaussian_top_gaps([10, 100], 2000, gen(7))
    assert all(abs(r["mean"] - r["exact_mean"]) < 4 * r["sem"] for r in rows)
    odd = phase.gaussian_top_gaps([10], 130, gen(7), chunk=50)    # not a multiple of the chunk: every sample kept
    g = gen(7)
    manual = torch.cat([gate.alpha_crit(torch.randn(s, 10, generator=g, dtype=D)) for s in (50, 50, 30)])
    assert odd[0]["mean"] == manual.mean().item()
    with pytest.raises(ValueError, match="ns"):
        phase.gaussian_top_gaps([1], 10, gen())


def _order_stat_mean(r: int, n: int) -> float:
    """E of the r-th largest of n standard Gaussians from its density n!/((r-1)!(n-r)!) F^(n-r) (1-F)^(r-1) f."""
    c = math.lgamma(n + 1) - math.lgamma(r) - math.lgamma(n - r + 1)

    def f(x: float) -> float:
        return x * math.exp(c + (n - r) * stats.norm.logcdf(x) + (r - 1) * stats.norm.logsf(x) + stats.norm.logpdf(x))

    return sum(integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
               for lo, hi in [(-40, -5), (-5, 0), (0, 5), (5, 40)])


@pytest.mark.parametrize("n", [5, 10, 100, 1000, 10_000])
def test_top_gap_exact_mean_equals_difference_of_order_statistic_means(n):
    assert abs(phase.top_gap_mean_exact(n) - (_order_stat_mean(1, n) - _order_stat_mean(2, n))) < 1e-9


def test_top_gap_exact_mean_against_a_large_monte_carlo_sample():
    g = gen(11)
    for n, n_samples in [(10, 400_000), (1000, 40_000)]:
        gaps = torch.cat([gate.alpha_crit(torch.randn(20_000, n, generator=g, dtype=D))
                          for _ in range(n_samples // 20_000)])
        sem = gaps.std().item() / math.sqrt(len(gaps))
        assert abs(gaps.mean().item() - phase.top_gap_mean_exact(n)) < 3 * sem and sem < 2e-3


def test_feedback_shifts_match_the_derived_threshold_and_are_positive_when_query_agrees():
    s_q, s_c = MODEL.draw_many(6, gen(5), alternate=True)
    shifts = phase.feedback_shifts(s_q, s_c, 4.0, [0.5])
    for s in shifts:
        assert s.derived_error < 1e-8 and 1 <= s.n_transition <= 6
        assert (s.measured[s.agree] > 0).all()
        assert s.measured.shape == s.first_order.shape == s.agree.shape == (s.n_transition,)
    with pytest.raises(ValueError, match="min_alpha"):
        phase.feedback_shifts(s_q, s_c, 4.0, [0.25], min_alpha=1e6)


def test_phase_model_validation():
    with pytest.raises(ValueError, match="n_memories"):
        phase.PhaseModel(n_memories=1, dim=4, query_noise=0.1, context_noise=0.1)
    with pytest.raises(ValueError, match="query_noise"):
        phase.PhaseModel(n_memories=4, dim=4, query_noise=-0.1, context_noise=0.1)


# --- contraction (chapter 05) ------------------------------------------------------------------------------------

def test_lipschitz_survey_obeys_theorem_3_4():
    torch.manual_seed(0)
    checks = contraction.lipschitz_survey(8, 8, 30, gen(0))
    assert len(checks) == 8
    for c in checks:
        assert c.bound == dynamics.contraction_bound(c.instance.alpha, c.instance.beta, c.instance.lam)
        assert c.lipschitz <= c.bound * (1 + 1e-9) and c.jacobian_norm <= c.bound * (1 + 1e-9)
        assert c.rho <= c.jacobian_norm + 1e-12
    below = [c for c in checks if c.bound < 1]
    assert below, "the seed must give instances below the bound"
    spread, converged = contraction.uniqueness_spread(below, 10)
    assert converged and spread < 1e-10
    slowest = max(below, key=lambda c: c.bound)
    errs = contraction.convergence_trace(slowest, 40)
    # the theorem's rate, up to the accuracy of p* (solved to 1e-12)
    assert errs.shape == (40,) and (errs <= slowest.bound ** torch.arange(40, dtype=D).numpy() * errs[0] + 1e-10).all()
    assert errs[-1] < 1e-10 < errs[0]


def test_observed_rate_recovers_a_geometric_rate():
    errs = 0.5 ** torch.arange(40, dtype=D).numpy()
    assert abs(contraction.observed_rate(errs) - 0.5) < 1e-12
    assert math.isnan(contraction.observed_rate(errs[:2]))


def test_first_order_error_is_second_order_and_bounded():
    s_q, s_c = torch.randn(50, 12, generator=gen(1), dtype=D), torch.randn(50, 12, generator=gen(2), dtype=D)
    fo = contraction.first_order_error(s_q, s_c, [0.05, 0.1, 0.2, 0.4], alpha=1.0, beta=2.0)
    assert fo.error.shape == (4, 50) and fo.r_violations == 0 and fo.bound_violations == 0
    assert 1.7 < fo.loglog_slope() < 2.3
    with pytest.raises(ValueError, match="lams"):
        contraction.first_order_error(s_q, s_c, [0.0, 0.1], alpha=1.0, beta=2.0)


# --- multistability (chapters 05, 05b) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example():
    return multistability.multistable_example(1)


def test_multistable_example_and_its_attractors(example):
    assert int(example.s_q.argmax()) == 0 and int(example.s_c.argmax()) == 1
    assert dynamics.contraction_bound(example.alpha, example.beta, example.lam) == 72
    torch.manual_seed(0)
    fps, points = multistability.damped_fixed_points(example, n_starts=30)
    assert len(points) >= 2 and fps.converged.all()
    for q in points:
        assert (dynamics.phi(q, *example.args) - q).abs().max() < 1e-10


def test_stationary_points_minima_and_saddles(example):
    torch.manual_seed(0)
    edge = multistability.edge_energy(example, 0, 1)
    torch.testing.assert_close(edge.energy[0], energy.reduced_energy(torch.eye(10, dtype=D)[0], *example.args))
    sp = multistability.stationary_points(example, edge, n_random=20)
    assert sp.n_starts == 20 + 10 + 45 + 1 and sp.n_converged <= sp.n_starts
    assert sp.minima and sp.saddles and [s.energy for s in sp.points] == sorted(s.energy for s in sp.points)
    assert all((s.g > 0).sum() == 1 for s in sp.minima) and all((s.g > 0).sum() >= 2 for s in sp.saddles)
    m1 = next(s for s in sp.minima if int(s.p.argmax()) == 0)
    saddle = next(s for s in sp.saddles if torch.equal(torch.nonzero(s.g > 0).flatten(), torch.tensor([0, 1])))
    assert abs(edge.energy.max().item() - saddle.energy) < 1e-3      # the pass is the edge's top
    F = multistability.segment_energy(m1, saddle, torch.tensor([0.0, 1.0], dtype=D), example)
    torch.testing.assert_close(F, torch.tensor([m1.energy, saddle.energy], dtype=D))
    with pytest.raises(ValueError, match="must differ"):
        multistability.edge_energy(example, 2, 2)


# --- convexity and descent (chapter 05b) -------------------------------------------------------------------------

def test_hessian_matches_autograd_and_lemma_limit_tends_to_two():
    torch.manual_seed(0)
    assert convexity.hessian_autograd_error(5, gen(0), n_per_kind=1) < 1e-10
    near = convexity.lemma_limit_points(torch.tensor([1e-2, 1e-4, 1e-6], dtype=D), 6)
    torch.testing.assert_close(near.sum(-1), torch.ones(3, dtype=D))
    c = energy.convexity_constant(near)
    assert (c.diff() < 0).all() and (c > 2).all() and c[-1] < 2 + 1e-4
    with pytest.raises(ValueError, match="eps"):
        convexity.lemma_limit_points(torch.tensor([0.3], dtype=D), 6)
    with pytest.raises(ValueError, match="n_memories"):
        convexity.lemma_limit_points(torch.tensor([0.1], dtype=D), 2)


def test_convexity_sign_check_agrees_with_the_criterion():
    torch.manual_seed(0)
    extreme = convexity.lemma_limit_points(torch.tensor([1e-6], dtype=D), 8)[0]
    signs = convexity.convexity_sign_check(60, extreme, gen(0))
    assert signs.n_checked == 120 and signs.matches_library
    assert signs.mismatches == 0 and signs.below_not_pd == 0 and signs.above_pd == 0
    assert ((signs.threshold >= 0.25 - 1e-12) & (signs.threshold <= 4 + 1e-12)).all()
    assert (signs.min_eig > 0).any() and (signs.min_eig <= 0).any()    # both sides of the threshold are probed


@pytest.mark.parametrize("kind", gate.GATE_KINDS)
def test_alternating_minimisation_never_raises_the_energy(kind):
    torch.manual_seed(0)
    d = descent.alternating_descent_check(kind, 6, 8, 4, 10, gen(0))
    assert d.half_steps == 6 * 4 * 20 and d.increases == 0 and d.largest_rise < 1e-12
    assert set(d.to_dict()) == {"half_steps", "increases", "instances_above_threshold", "largest_rise"}


def test_fixed_points_are_kkt_points_and_global_minima_below_the_threshold_and_hamux_agrees():
    torch.manual_seed(0)
    opt = descent.fixed_point_optimality(10, 8, gen(1), n_random=50)
    assert 0 < opt.converged <= 10 and opt.max_kkt_residual < 1e-10 and opt.beaten == 0
    ham = descent.hamux_check(4, 8, gen(2))
    assert ham.rises == 0 and ham.matches == 4
    with pytest.raises(ValueError, match="kind"):
        descent.alternating_descent_check("relu", 1, 4, 1, 1, gen())


# --- capacity (chapter 01b) ------------------------------------------------------------------------------------

def test_capacity_stops_at_the_first_failure():
    curve = {2: (1.0, 1.0), 4: (0.995, 1.0), 8: (0.9, 1.0), 16: (1.0, 1.0)}
    assert capacity.capacity(curve, 0) == 4 and capacity.capacity(curve, 1) == 16
    assert capacity.capacity({2: (0.5, 0.5)}, 0) == 0
    with pytest.raises(ValueError, match="which"):
        capacity.capacity(curve, 2)


def test_linear_memory_threshold_is_the_smallest_solution():
    for d in range(2, 70):
        n = capacity.linear_memory_threshold(d)
        assert n >= 2 and n * math.log(n) >= d * d / 2
        assert n == 2 or (n - 1) * math.log(n - 1) < d * d / 2
    scales = capacity.known_capacity_scales(96, 3)
    assert scales["0.138 d"] == 0.138 * 96 and scales["N ln N = d^2 / 2  (solve for N)"] == 703
    assert abs(scales["d^2 / (2 (2n-3)!! ln d)"] - 96**2 / (6 * math.log(96))) < 1e-9


def test_every_model_recalls_two_clean_patterns_and_the_scan_follows_its_seed_scheme():
    wl = capacity.Workload(n_trials=20)
    acc = capacity.workload_accuracy(wl, 64, 2, 0.0, seed=3)
    assert list(acc) == wl.models and all(v == (1.0, 1.0) for v in acc.values())
    scan = capacity.capacity_scan(wl, [16], 8, 0.1, seed=5)
    for m, curve in scan[16].items():
        assert list(curve) == sorted(curve) and set(curve) <= {2, 4, 8}
        n = max(curve)
        assert curve[n] == capacity.workload_accuracy(wl, 16, n, 0.1, 5 + 1000 * 16 + n, models=[m])[m]
    with pytest.raises(ValueError, match="models"):
        capacity.workload_accuracy(wl, 8, 2, 0.1, 0, models=["perceptron"])
    with pytest.raises(ValueError, match="context_flip"):
        capacity.Workload(context_flip=0.7)
