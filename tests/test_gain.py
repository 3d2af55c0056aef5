"""The gain measurement of chapter 03 (cgar_src.theory.gain): exact reduction, gate factor, capacity, predictions."""
import math

import pytest
import torch

from cgar_src.theory import gain
from cgar_src.theory.dynamics import effective_separation, error_log_odds, fixed_point

SMALL = gain.GainConfig(dims=(16,), ns=(2, 30, 400), lambdas=(0.0, 0.5, 1.0), n_trials=60, alpha=5.0,
                        context_noise=0.3)


def test_reduction_is_exact():
    gen = torch.Generator().manual_seed(3)
    for n in SMALL.ns:
        s_q, s_c, t = gain.draw_scores(SMALL, 16, n, gen)
        r = gain.reduce_columns(s_q, s_c, t, SMALL.alpha, SMALL.beta, 1.0)
        if n == 400:
            assert r.s_q.shape[-1] < 50  # it really reduces
        torch.testing.assert_close(r.delta_raw, effective_separation(s_q, s_q, t, 0.0).raw)
        for lam in SMALL.lambdas:
            fp = fixed_point(s_q, s_c, SMALL.alpha, SMALL.beta, lam, tol=1e-12)
            fr = fixed_point(r.s_q, r.s_c, SMALL.alpha, SMALL.beta, lam, tol=1e-12, screen=False)
            torch.testing.assert_close(error_log_odds(r.s_q, fr.g, r.target, SMALL.beta, lam),
                                       error_log_odds(s_q, fp.g, t, SMALL.beta, lam), atol=1e-10, rtol=0)
            torch.testing.assert_close(gain._gap(fr.g, r.target), effective_separation(s_q, fp.g, t, lam).gate,
                                       atol=1e-10, rtol=0)
            torch.testing.assert_close(gain._log_factor(fr.g, r.target, n, SMALL.beta, lam),
                                       gain.gate_log_factor(fp.g, t, SMALL.beta, lam), atol=1e-10, rtol=0)


def test_gate_factor_by_hand_and_bounds():
    g = torch.tensor([[0.7, 0.3, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.6, 0.4, 0.0]], dtype=torch.float64)
    t = torch.tensor([0, 0, 0])
    beta, lam = 2.0, 1.5
    brute = torch.tensor([math.log(sum(math.exp(-beta * lam * (g[i, 0] - g[i, j]).item()) for j in range(1, 4)) / 3)
                          for i in range(3)], dtype=torch.float64)
    got = gain.gate_log_factor(g, t, beta, lam)
    torch.testing.assert_close(got, brute)
    assert got[1].item() == pytest.approx(-beta * lam)            # one-hot on the target
    assert got[2].item() > 0                                      # a wrong gate raises the odds
    book = -beta * lam * effective_separation(torch.zeros_like(g), g, t, 0.0).gate
    assert (got <= book + 1e-12).all()                            # F <= exp(-beta lam Delta_gate)


def test_capacity_interpolation_and_censoring():
    ns = [2, 10, 100, 1000]
    n_star = 57.0   # logit error = log((N-1)/(n_star-1)) + logit(eps): crosses eps exactly at n_star
    eps = 0.05
    logit = torch.tensor([math.log((n - 1) / (n_star - 1)) + math.log(eps / (1 - eps)) for n in ns], dtype=torch.float64)
    err = torch.sigmoid(logit)
    assert gain.capacity(ns, err, eps) == pytest.approx(n_star, rel=1e-9)
    assert math.isinf(gain.capacity(ns, err * 0 + 0.01, eps))
    assert math.isnan(gain.capacity(ns, err * 0 + 0.5, eps))
    with pytest.raises(ValueError, match="epsilon"):
        gain.capacity(ns, err, 1.5)
    with pytest.raises(ValueError, match="ns"):
        gain.capacity([2, 10, 100], err, eps)


def test_book_capacity_closed_form_and_feedback_of_delta_gate():
    ns = [2, 10, 100, 1000, 10000]
    n0, beta, lam = 11.0, 4.0, 0.5
    got = gain.book_capacity(ns, n0, beta, lam, torch.full((5,), 0.8, dtype=torch.float64))
    assert got == pytest.approx(1 + 10 * math.exp(beta * lam * 0.8), rel=1e-9)
    falling = torch.tensor([1.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)   # a gate that spreads with N
    assert gain.book_capacity(ns, n0, beta, lam, falling) < 1 + 10 * math.exp(beta * lam)
    with pytest.raises(ValueError, match="n0"):
        gain.book_capacity(ns, 1.0, beta, lam, falling)


def test_predicted_error_pairs_and_shapes():
    a = torch.tensor([[-3.0, -1.0, 0.5]], dtype=torch.float64)
    f = torch.tensor([[[0.0, 0.0], [-2.0, -2.0]]], dtype=torch.float64)
    got = gain.predicted_error(a, f)
    torch.testing.assert_close(got, torch.stack([torch.sigmoid(a).mean(), torch.sigmoid(a - 2).mean()])[None])
    assert gain.predicted_error_se(a, f).shape == (1, 2)
    with pytest.raises(ValueError, match="log_factor"):
        gain.predicted_error(a, f[0])
    acc = gain.predicted_accuracy_bound(torch.tensor([[-0.5, 0.5]]), torch.tensor([[1.0, 0.0]]), [0.0, 1.0])
    torch.testing.assert_close(acc, torch.tensor([[0.5, 0.75]], dtype=torch.float64))


def test_banks_and_config_validation():
    assert gain.banks_for(2, 300) == 300 and gain.banks_for(10_000, 300) == 1
    k = gain.banks_for(60, 300)
    assert 300 % k == 0 and k >= 20
    assert gain.log_grid(2, 10_000, 13)[0] == 2 and gain.log_grid(2, 10_000, 13)[-1] == 10_000
    with pytest.raises(ValueError, match="lambdas"):
        gain.GainConfig(lambdas=(0.5, 1.0))
    with pytest.raises(ValueError, match="ns"):
        gain.GainConfig(ns=(10, 5))
    with pytest.raises(ValueError, match="epsilon"):
        gain.GainConfig(epsilon=1.0)


def test_mean_field_predicts_held_out_error_and_can_fail():
    cfg = gain.GainConfig(dims=(32,), ns=(4, 40, 400), lambdas=(0.0, 0.5), n_trials=120, context_noise=0.2)
    fit, held = gain.separation_sample(cfg, 0), gain.retrieval_sample(cfg, 1)
    pred = gain.predictions(fit)
    tol = 4 * (held.error_se ** 2 + pred["error_mf_se"] ** 2).sqrt() + 0.002
    assert ((held.error - pred["error_mf"]).abs() <= tol).all()
    assert (held.log_odds <= held.sparse_bound + 1e-9).all()
    assert (held.feedback_shift.abs() <= 2 * 0.5 / cfg.alpha + 1e-12).all()
    # a wrong prediction is caught: the ungated curve does not predict the gated one
    assert not ((held.error[..., 1] - pred["error_mf"][..., 0]).abs() <= tol[..., 1]).all()
    again = gain.separation_sample(cfg, 0)
    assert again.log_odds0.equal(fit.log_odds0) and again.log_factor.equal(fit.log_factor)


@pytest.mark.parametrize("n, margin", [(400, 6.0), (12, 1e3)])   # a real reduction; every column screened
def test_screen_columns_is_exact(n, margin):
    """The K screened columns plus the aggregate give the full problem's fixed point: the same entries on the
    screened columns, the dropped columns' total mass on the aggregate (none when nothing is dropped)."""
    gen = torch.Generator().manual_seed(5)
    s_q, s_c, _ = gain.draw_scores(SMALL, 16, n, gen)
    beta, alpha, lam = SMALL.beta, 2.0, margin - 2.0
    sc = gain.screen_columns(s_q, s_c, beta, margin)
    k = sc.idx.shape[-1]
    assert (k < n // 4) if n == 400 else (k == n)
    assert bool((sc.rest_c[:, None] < s_c.amax(-1, keepdim=True) - 2 * margin).all())   # never in the support
    sq_r = torch.cat([s_q.gather(-1, sc.idx), sc.rest_q[:, None]], -1)
    sc_r = torch.cat([s_c.gather(-1, sc.idx), sc.rest_c[:, None]], -1)
    full = fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-13, screen=False)
    red = fixed_point(sq_r, sc_r, alpha, beta, lam, tol=1e-13, screen=False)
    torch.testing.assert_close(red.p[:, :-1], full.p.gather(-1, sc.idx), atol=1e-12, rtol=0)
    torch.testing.assert_close(red.p[:, -1], 1 - full.p.gather(-1, sc.idx).sum(-1), atol=1e-12, rtol=0)
    assert float(red.g[:, -1].abs().max()) == 0.0
