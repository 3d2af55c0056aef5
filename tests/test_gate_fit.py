"""Tests of cgar_src.analysis.gate_fit: the models, the grid fit, cross-fitting, the gate's statistics, multi-start."""
import math

import pytest
import torch

from cgar_src.analysis import gate_fit as gf
from cgar_src.analysis.steering import folds_of
from cgar_src.theory import dynamics, gain
from cgar_src.theory.gate import gate

GRID = {"alpha": [0.3, 1.0, 3.0], "beta": [0.5, 1.0, 2.0], "lam": [0.0, 1.0, 4.0, 16.0]}


def scores(P=60, N=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_q = 3 * torch.randn(P, N, generator=g, dtype=torch.float64)
    s_c = 3 * torch.randn(P, N, generator=g, dtype=torch.float64)
    return s_q, s_c


def test_kl_matches_direct_formula():
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    direct = [sum(pi * math.log(pi / qi) for pi, qi in zip(pr.tolist(), qr.tolist()) if pi > 0) for pr, qr in zip(p, q)]
    tp = torch.log(p.clamp_min(1e-300))
    out = gf.kl(tp, q.log())
    assert torch.allclose(out, torch.tensor(direct, dtype=torch.float64), atol=1e-12)
    assert out[0] == pytest.approx(0.5 * math.log(2))
    assert gf.kl(q.log(), q.log()).abs().max() < 1e-15


def test_models_are_log_probabilities_and_nest_zero_shot():
    s_q, s_c = scores(P=5, N=50)
    for lp in (gf.log_probs_zero_shot(s_q), gf.log_probs_dense(s_q, s_c, 0.7, 0.3),
               gf.log_probs_gated(s_q, s_c, 1.0, 0.7, 2.0), gf.log_probs_fixed_point(s_q, s_c, 1.0, 0.7, 0.5)[0]):
        assert lp.shape == s_q.shape
        assert torch.allclose(lp.logsumexp(-1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    z = gf.log_probs_zero_shot(s_q)
    assert torch.allclose(gf.log_probs_dense(s_q, s_c, 1.0, 0.0), z)
    assert torch.allclose(gf.log_probs_gated(s_q, s_c, 1.0, 1.0, 0.0), z)
    # the gated model is the theory's first-order map and the fixed point solves p = Phi(p)
    assert torch.allclose(gf.log_probs_gated(s_q, s_c, 1.0, 0.7, 2.0).exp(), dynamics.first_order(s_q, s_c, 1.0, 0.7, 2.0))
    lp, fp = gf.log_probs_fixed_point(s_q, s_c, 1.0, 0.7, 0.5)
    assert fp.converged.all() and fp.bound < 1
    assert torch.allclose(dynamics.phi(lp.exp(), s_q, s_c, 1.0, 0.7, 0.5), lp.exp(), atol=1e-8)


def test_sparse_grid_equals_direct_kl_everywhere():
    s_q, s_c = scores(P=8, N=120, seed=1)
    target = torch.log_softmax(s_q + 0.5 * s_c, -1)
    axes, per_query = gf.kl_grid("gated", s_q, s_c, target, GRID)
    for a, alpha in enumerate(axes["alpha"]):
        for b, beta in enumerate(axes["beta"]):
            for c, lam in enumerate(axes["lam"]):
                direct = gf.kl(target, gf.log_probs_gated(s_q, s_c, alpha, beta, lam))
                assert torch.allclose(per_query[a, b, c], direct, atol=1e-9, rtol=1e-9)
    axes, per_query = gf.kl_grid("dense", s_q, s_c, target, {"beta": [0.5, 1.0], "lam": [0.0, 0.5]})
    assert per_query[1, 1].abs().max() < 1e-10          # the target is the dense model at (1, 0.5)
    assert torch.allclose(per_query[0, 0], gf.kl(target, gf.log_probs_dense(s_q, s_c, 0.5, 0.0)))


@pytest.mark.parametrize("truth", [{"alpha": 1.0, "beta": 2.0, "lam": 4.0}, {"alpha": 0.3, "beta": 0.5, "lam": 16.0},
                                   {"alpha": 3.0, "beta": 1.0, "lam": 1.0}])
def test_grid_fit_recovers_the_generating_gate(truth):
    s_q, s_c = scores()
    target = gf.log_probs_gated(s_q, s_c, **truth)
    fit = gf.fit_grid("gated", s_q, s_c, target, GRID)
    assert fit.params == truth
    assert fit.kl < 1e-10
    assert fit.surface.shape == (3, 3, 4)
    # every other grid point is measurably worse: the recovery is identified, not a tie
    others = fit.surface.flatten().sort().values[1]
    assert others > 1e-6
    # the same holds on each fold separately, and the held-out KL is zero
    folds = folds_of(s_q.shape[0], 2, seed=0)
    cf = gf.cross_fit("gated", s_q, s_c, target, folds, GRID)
    assert cf.params == [truth, truth]
    assert cf.kl.abs().max() < 1e-9
    assert torch.equal(cf.argmax, target.argmax(-1))


def test_grid_fit_recovers_dense_and_the_gate_beats_dense_on_gated_data():
    s_q, s_c = scores(seed=2)
    dense_truth = {"beta": 1.0, "lam": 0.5}
    target = gf.log_probs_dense(s_q, s_c, **dense_truth)
    assert gf.fit_grid("dense", s_q, s_c, target, {"beta": [0.5, 1.0, 2.0], "lam": [0.0, 0.25, 0.5, 1.0]}).params == dense_truth
    folds = folds_of(s_q.shape[0], 2, seed=3)
    gated_target = gf.log_probs_gated(s_q, s_c, 1.0, 1.0, 4.0)
    g = gf.cross_fit("gated", s_q, s_c, gated_target, folds, GRID)
    d = gf.cross_fit("dense", s_q, s_c, gated_target, folds, {"beta": [0.5, 1.0, 2.0], "lam": [0.0, 0.25, 0.5, 1.0]})
    assert g.kl.mean() < 1e-9 < d.kl.mean()


def test_dense_limit_of_the_gate():
    s_q, s_c = scores(P=4, N=30, seed=4)
    a = float(gf.dense_limit_alpha(s_c).max())
    g = gate(s_c, a)
    assert bool((g > 0).all())                  # full support
    for alpha in (a, 3 * a):
        lam = 2.5 * alpha                        # coupling lam/alpha = 2.5 in the dense model
        assert torch.allclose(gf.log_probs_gated(s_q, s_c, alpha, 0.8, lam), gf.log_probs_dense(s_q, s_c, 0.8, 2.5),
                              atol=1e-10)
    assert not bool((gate(s_c, 0.5 * float(gf.dense_limit_alpha(s_c).min())) > 0).all())


def test_prior_and_zero_shot_cross_fit():
    s_q, s_c = scores(P=20, N=40, seed=5)
    target = torch.log_softmax(torch.zeros(20, 40, dtype=torch.float64).index_fill(1, torch.tensor([3]), 5.0), -1)
    folds = folds_of(20, 2, seed=0)
    prior = gf.cross_fit("prior", s_q, s_c, target, folds)
    assert prior.kl.abs().max() < 1e-12 and bool((prior.argmax == 3).all())
    zs = gf.cross_fit("zero_shot", s_q, s_c, target, folds)
    assert torch.allclose(zs.kl, gf.kl(target, gf.log_probs_zero_shot(s_q)))
    assert sorted(zs.fold.tolist()) == [0] * 10 + [1] * 10


def test_kappa_grid_equals_direct_kl_up_to_the_dense_limit():
    """The (alpha, beta, kappa) grid (prefix sums over the columns sorted by s_c) is the direct KL of the gated model
    at lambda = kappa * alpha at every point, sparse, one-hot and full support alike, with couplings beta * lambda far
    beyond exp's range; past the dense limit it is the dense model at (beta, kappa)."""
    s_q, s_c = scores(P=8, N=150, seed=11)
    target = torch.log_softmax(0.8 * (s_q + 0.5 * s_c), -1)
    a_dense = float(gf.dense_limit_alpha(s_c).max())
    grid = {"alpha": [0.05, 1.0, 30.0, a_dense, 1e3 * a_dense], "beta": [0.5, 0.8], "kappa": [0.0, 0.5, 4.0, 64.0]}
    axes, per_query = gf.kl_grid("gated", s_q, s_c, target, grid)
    assert per_query.shape == (5, 2, 4, 8)
    for a, alpha in enumerate(grid["alpha"]):
        for b, beta in enumerate(grid["beta"]):
            for c, kappa in enumerate(grid["kappa"]):
                direct = gf.kl(target, gf.log_probs_gated(s_q, s_c, alpha, beta, kappa * alpha))
                assert torch.allclose(per_query[a, b, c], direct, atol=1e-8, rtol=1e-9), (alpha, beta, kappa)
    dense = gf.kl_grid("dense", s_q, s_c, target, {"beta": grid["beta"], "lam": grid["kappa"]})[1]
    assert torch.allclose(per_query[-1], dense, atol=1e-7) and torch.allclose(per_query[-2], dense, atol=1e-7)
    assert per_query[-1, 1, 1].abs().max() < 1e-9            # the target is the dense model at (0.8, 0.5)
    fit = gf.fit_grid("gated", s_q, s_c, target, grid)
    assert fit.params["beta"] == 0.8 and fit.params["lam"] == pytest.approx(0.5 * fit.params["alpha"])
    assert fit.params["alpha"] >= a_dense and fit.index[1:] == (1, 1)
    cf = gf.cross_fit("gated", s_q, s_c, target, folds_of(8, 2, seed=0), grid)
    assert cf.extra["axes"]["kappa"] == grid["kappa"] and len(cf.extra["index"]) == 2
    assert cf.kl.abs().max() < 1e-8


def test_gate_stats_phase_transition_and_delta_gate():
    s_c = torch.tensor([[3.0, 1.0, 0.0, -1.0], [2.0, 1.9, 0.0, -5.0]], dtype=torch.float64)
    st = gf.gate_stats(s_c, 0.5, torch.tensor([0, 1]))
    assert st.alpha_crit.tolist() == pytest.approx([2.0, 0.1])
    assert st.one_hot.tolist() == [True, False]            # one-hot iff alpha <= alpha_crit
    assert st.support.tolist() == [1, 2]
    g = gate(s_c, 0.5)
    assert st.delta_gate[0] == pytest.approx(1.0)
    assert st.delta_gate[1] == pytest.approx(float(g[1, 1] - g[1, 0]))   # the target is the runner-up: negative
    assert st.delta_gate[1] < 0


def test_multistart_counts_distinct_fixed_points_above_the_bound_and_one_below():
    s_q = torch.zeros(1, 2, dtype=torch.float64)
    s_c = torch.zeros(1, 2, dtype=torch.float64)
    starts = {"uniform": torch.full((2,), 0.5, dtype=torch.float64), "first": torch.tensor([1.0, 0.0], dtype=torch.float64),
              "second": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    ms = gf.multistart_fixed_points(s_q, s_c, 1.0, 4.0, 2.0, starts)
    assert ms.bound == pytest.approx(8.0)
    assert ms.n_distinct.tolist() == [3] and ms.n_converged.tolist() == [3]   # two one-hot-like and the symmetric one
    assert ms.argmax["first"].tolist() == [0] and ms.argmax["second"].tolist() == [1]
    below = gf.multistart_fixed_points(s_q, s_c, 1.0, 1.0, 1.0, starts)
    assert below.bound < 1 and below.n_distinct.tolist() == [1]


def test_multistart_on_screened_columns_matches_the_full_solver():
    s_q, s_c = scores(P=6, N=500, seed=7)
    alpha, beta, lam = 0.5, 2.0, 3.0
    full = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12, max_iter=2000)
    uniform = torch.full((500,), 1 / 500, dtype=torch.float64)
    ms = gf.multistart_fixed_points(s_q, s_c, alpha, beta, lam, {"first_order": None, "uniform": uniform}, tol=1e-12,
                                    max_iter=2000)
    assert ms.columns < 500                                   # the reduced system is smaller than the vocabulary
    assert torch.equal(ms.argmax["first_order"], full.p.argmax(-1))
    direct = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12, max_iter=2000, p0=uniform.expand(6, 500))
    assert torch.equal(ms.argmax["uniform"], direct.p.argmax(-1))
    same = (full.p - direct.p).abs().sum(-1) < 1e-5
    assert torch.equal(ms.n_distinct[full.converged & direct.converged], torch.where(same, 1, 2)[full.converged & direct.converged])


def test_validation_names_the_parameter():
    s_q, s_c = scores(P=4, N=10)
    t = gf.log_probs_zero_shot(s_q)
    with pytest.raises(ValueError, match="s_c must have the shape"):
        gf.log_probs_dense(s_q, s_c[:, :5], 1.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        gf.log_probs_gated(s_q, s_c, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="lam"):
        gf.log_probs_dense(s_q, s_c, 1.0, -1.0)
    with pytest.raises(ValueError, match="grid of gated"):
        gf.kl_grid("gated", s_q, s_c, t, {"beta": [1.0], "lam": [1.0]})
    with pytest.raises(ValueError, match=r"grid\['kappa'\]"):
        gf.kl_grid("gated", s_q, s_c, t, {"alpha": [1.0], "beta": [1.0], "kappa": [-0.5]})
    with pytest.raises(ValueError, match=r"grid\['alpha'\]"):
        gf.kl_grid("gated", s_q, s_c, t, {"alpha": [-1.0], "beta": [1.0], "lam": [1.0]})
    with pytest.raises(ValueError, match="log-probabilities"):
        gf.kl_grid("dense", s_q, s_c, s_q, {"beta": [1.0], "lam": [1.0]})
    with pytest.raises(ValueError, match="model must be"):
        gf.cross_fit("sparse", s_q, s_c, t, folds_of(4, 2))
    with pytest.raises(ValueError, match="evaluate every query exactly once"):
        gf.cross_fit("zero_shot", s_q, s_c, t, [(torch.tensor([0, 1]), torch.tensor([2])),
                                                 (torch.tensor([2]), torch.tensor([0]))])
    with pytest.raises(ValueError, match="starts"):
        gf.multistart_fixed_points(s_q, s_c, 1.0, 1.0, 1.0, {"bad": torch.ones(10, dtype=torch.float64)})
    with pytest.raises(ValueError, match="target"):
        gf.gate_stats(s_c, 1.0, torch.tensor([0.5, 1.0, 2.0, 3.0]))


def test_support_sizes_in_closed_form_match_the_gate():
    s_q, s_c = scores(P=5, N=300, seed=8)
    alphas = [0.1, 1.0, 10.0, 100.0, 1e4]
    k = gf.support_sizes(s_c, alphas)
    assert k.shape == (5, 5)
    for a, alpha in enumerate(alphas):
        assert torch.equal(k[a], (gate(s_c, alpha) > 0).sum(-1))
    assert bool((k[-1] == 300).all()) and bool((k[0] >= 1).all())
    with pytest.raises(ValueError, match="alphas"):
        gf.support_sizes(s_c, [])



def test_fixed_point_grid_matches_the_full_solver_and_splits_the_regions():
    s_q, s_c = scores(P=20, N=300, seed=9)
    target = torch.log_softmax(s_q + 0.3 * s_c, -1)
    grid = {"alpha": [0.3, 1.0], "beta": [0.5, 1.0], "lam": [0.5, 2.0, 4.0]}
    fg = gf.fixed_point_grid(s_q, s_c, target, grid, tol=1e-12, max_iter=3000)
    assert fg.columns < 300                                   # the reduced problem is smaller than the vocabulary
    for a, alpha in enumerate(grid["alpha"]):
        for b, beta in enumerate(grid["beta"]):
            for c, lam in enumerate(grid["lam"]):
                lp, fp = gf.log_probs_fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12, max_iter=3000)
                both = fp.converged & fg.converged[a, b, c]
                assert int(both.sum()) >= 15
                assert torch.allclose(gf.kl(target, lp)[both], fg.kl[a, b, c][both], atol=1e-9)
                assert torch.equal(lp.argmax(-1)[both], fg.argmax[a, b, c][both])
                assert fg.bound[a, b, c] == pytest.approx(beta * lam**2 / (2 * alpha))
    cf = gf.cross_fit_fixed_point_grid(s_q, s_c, target, folds_of(20, 2, seed=0), grid, tol=1e-12, max_iter=3000)
    assert set(cf) == set(gf.REGIONS)
    assert all(b < 1 for b in cf["inside"].extra["bound"]) and all(b >= 1 for b in cf["outside"].extra["bound"])
    for region, fit in cf.items():
        for f, (rows, held) in enumerate(folds_of(20, 2, seed=0)):
            best = fit.params[f]
            a, b, c = (grid[k].index(best[k]) for k in ("alpha", "beta", "lam"))
            inside = fg.bound < 1 if region == "inside" else fg.bound >= 1
            assert float(fg.kl[a, b, c][rows].mean()) == pytest.approx(float(fg.kl[..., rows].mean(-1)[inside].min()))
            assert torch.equal(fit.kl[held], fg.kl[a, b, c][held])
    with pytest.raises(ValueError, match="outside the contraction region"):
        gf.cross_fit_fixed_point_grid(s_q, s_c, target, folds_of(20, 2, seed=0),
                                      {"alpha": [1.0], "beta": [1.0], "lam": [0.5]})
    with pytest.raises(ValueError, match="grid of the fixed point"):
        gf.fixed_point_grid(s_q, s_c, target, {"alpha": [1.0], "beta": [1.0]})
    with pytest.raises(ValueError, match=r"grid\['lam'\] must be a non-empty list"):
        gf.fixed_point_grid(s_q, s_c, target, {"alpha": [1.0], "beta": [1.0], "lam": []})
    with pytest.raises(ValueError, match=r"grid\['lam'\] entry"):   # the fixed point's lambda is positive
        gf.fixed_point_grid(s_q, s_c, target, {"alpha": [1.0], "beta": [1.0], "lam": [0.0]})


@pytest.mark.parametrize("seed, margin", [(0, 1.0), (1, 2.0), (2, 3.0)])
def test_reduce_is_the_theorys_column_reduction(seed, margin):
    """The fits' reduced problem and chapter 03's (:func:`cgar_src.theory.gain.reduce_columns`) are one reduction:
    the same screened columns and scores; the theory keeps the target apart from the aggregate, so the fits'
    aggregate weight is the theory's aggregate plus its target column (when the target is not screened)."""
    s_q, s_c = scores(P=30, N=400, seed=seed)
    beta, alpha = 1.5, 0.5
    target = torch.randint(0, 400, (30,), generator=torch.Generator().manual_seed(seed))
    idx, sq_r, sc_r, rest_max, rest_arg = gf._reduce(s_q, s_c, beta, margin)
    r = gain.reduce_columns(s_q, s_c, target, alpha, beta, margin - alpha)
    k = idx.shape[-1]
    assert 0 < k < 200 and r.s_q.shape[-1] == k + 2
    assert torch.equal(r.s_q[:, :k], sq_r[:, :k]) and torch.equal(r.s_c[:, :k], sc_r[:, :k])
    assert torch.equal(r.s_c[:, -1], sc_r[:, -1])              # the aggregate's context score
    apart = ~(idx == target[:, None]).any(-1)                 # target outside the screened columns: its own column
    assert int(apart.sum()) >= 10
    together = torch.logaddexp(beta * r.s_q[:, k], beta * r.s_q[:, -1]) / beta
    torch.testing.assert_close(together[apart], sq_r[apart, -1], atol=1e-12, rtol=0)
    torch.testing.assert_close(r.s_q[~apart, -1], sq_r[~apart, -1], atol=0, rtol=0)
    # the largest dropped query score, and where it is
    best = (beta * s_q).scatter(-1, idx, float("-inf")).max(-1)
    assert torch.equal(rest_max, best.values) and torch.equal(rest_arg, best.indices)


def test_ties_within_the_selection_tolerance_go_to_the_first_grid_point():
    surface = torch.tensor([[2.0, 1.0 + 0.5 * gf.SELECT_RTOL], [1.0, 3.0]], dtype=torch.float64)
    assert gf.argmin_tied(surface) == 1              # within the tolerance of the least: the first in grid order
    surface[0, 1] = 1.0 + 2 * gf.SELECT_RTOL + gf.SELECT_ATOL
    assert gf.argmin_tied(surface) == 2              # outside it: the least
    assert gf.argmin_tied(torch.tensor([float("inf"), 5.0])) == 1
    with pytest.raises(ValueError, match="surface"):
        gf.argmin_tied(torch.full((3,), float("inf")))


def test_fits_do_not_follow_round_off_of_the_states():
    """A machine with other kernels computes the states to about 1e-6 relative: the fitted parameters must not change,
    and per-query KLs move far less than the sign tests' resolution (gate_report.KL_RESOLUTION). Past the full
    support every alpha gives the same model (the dense limit), so the choice among them is a tie in exact arithmetic:
    without the tolerance, round-off would pick the alpha."""
    from cgar_src.analysis.gate_report import KL_RESOLUTION

    s_q, s_c = scores(P=40, N=300, seed=5)
    big = float(gf.dense_limit_alpha(s_c).max())
    target = gf.log_probs_dense(s_q, s_c, 1.0, 0.6)   # off the grid: a least KL above 0
    grid = {"alpha": [big * f for f in (1.5, 2, 4, 8)], "beta": [0.5, 1.0], "kappa": [0.25, 0.5, 1.0]}
    folds = folds_of(40, 2, seed=0)
    ref = gf.cross_fit("gated", s_q, s_c, target, folds, grid)
    assert [p["alpha"] for p in ref.params] == [grid["alpha"][0]] * 2
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        noisy = [x * (1 + 1e-6 * torch.randn(x.shape, generator=g, dtype=x.dtype)) for x in (s_q, s_c)]
        fit = gf.cross_fit("gated", *noisy, target, folds, grid)
        assert fit.params == ref.params
        assert float((fit.kl - ref.kl).abs().max()) < 0.1 * KL_RESOLUTION
