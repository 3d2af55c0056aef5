"""Tests of the transition with feedback (cgar_src.theory.continuation) and of the peak gate's monotonicity
(cgar_src.theory.phase, Theorem thm-peak-monotone of chapter 04)."""
import pytest
import torch

from cgar_src.theory import continuation, gate, phase
from cgar_src.theory.dynamics import alpha_crit_coupled, fixed_point


def _pair(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64))


def test_onehot_thresholds_match_the_solver_and_the_closed_form():
    s_q, s_c = _pair(1)
    beta, lam = 3.0, 0.4
    a = continuation.onehot_thresholds(s_q, s_c, beta, lam)
    m = int(s_c.argmax())
    torch.testing.assert_close(a[m], alpha_crit_coupled(s_q, s_c, beta, lam))
    for j in range(len(s_q)):  # e_j is a fixed point of Phi exactly below a_j
        e = torch.zeros_like(s_q)
        e[j] = 1
        p = torch.softmax(beta * (s_q + lam * e), -1)
        for alpha, one_hot in ((a[j] * 0.99, True), (a[j] * 1.01, False)):
            if alpha <= 0:
                continue
            g = gate.gate(s_c + lam * p, alpha.item())
            assert bool(torch.equal(g, e)) == one_hot
    # at lam = 0 only the context's top memory has a positive threshold, the top gap
    a0 = continuation.onehot_thresholds(s_q, s_c, beta, 0.0)
    assert int((a0 > 0).sum()) == 1 and torch.isclose(a0.max(), gate.alpha_crit(s_c))


def test_condition_fails_when_the_query_favours_another_memory_strongly():
    s_c = torch.tensor([1.0, 0.9, 0.0, 0.0], dtype=torch.float64)   # top gap 0.1
    s_q = torch.tensor([0.0, 2.0, 0.0, 0.0], dtype=torch.float64)   # the query wants memory 1
    cond = continuation.onehot_conditions(s_q[None], s_c[None], 4.0, 0.5)
    assert not bool(cond.holds[0]) and int(cond.j_other[0]) == 1 and cond.a_m[0] < 0 < cond.a_other[0]
    # the solver agrees: one-hot on memory 1 below a_1, not above
    a1 = cond.a_other[0].item()
    assert fixed_point(s_q, s_c, 0.9 * a1, 4.0, 0.5, tol=1e-13, max_iter=20000, damping=0.5).g.argmax() == 1
    assert fixed_point(s_q, s_c, 0.9 * a1, 4.0, 0.5, tol=1e-13, max_iter=20000, damping=0.5).g.max() == 1
    assert fixed_point(s_q, s_c, 1.1 * a1, 4.0, 0.5, tol=1e-13, max_iter=20000, damping=0.5).g.max() < 1
    torch.testing.assert_close(cond.alpha_crit[0], cond.a_other[0])


def test_feedback_shifts_measure_the_general_threshold():
    s_c = torch.tensor([[1.0, 0.9, 0.0, 0.0], [1.0, 0.5, 0.2, 0.0]], dtype=torch.float64)
    s_q = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.6, 0.0, 0.1, 0.0]], dtype=torch.float64)
    (s,) = phase.feedback_shifts(s_q, s_c, 4.0, [0.5])
    assert s.n_transition == 2 and s.derived_error < 1e-8
    assert s.holds.tolist() == [False, True]


def test_continuation_branches_agree_under_contraction_and_split_beyond():
    s_q, s_c = _pair(2, 6)
    grid = torch.logspace(-1, 0.5, 25, dtype=torch.float64)
    weak = continuation.continuation(s_q[None], s_c[None], grid, 4.0, 0.1)   # beta lam^2 / (2 alpha) < 1 on the grid
    assert weak.converged and weak.hysteresis().max() < 1e-8 and int(weak.rises().sum()) == 0
    # the multistable example of chapter 05: two attracting fixed points at alpha = 0.5, beta = 8, lam = 3
    g = torch.Generator().manual_seed(0)
    s_q2 = 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    s_c2 = 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    s_q2[0] += 0.5
    s_c2[1] += 0.5
    strong = continuation.continuation(s_q2[None], s_c2[None], torch.logspace(-1, 1, 30, dtype=torch.float64), 8.0, 3.0)
    assert strong.converged and strong.hysteresis().max() > 0.1


def test_count_fixed_points_finds_two_in_the_multistable_example():
    g = torch.Generator().manual_seed(0)
    s_q = 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    s_c = 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    s_q[0] += 0.5
    s_c[1] += 0.5
    n, unconverged, _ = continuation.count_fixed_points(s_q, s_c, 0.5, 8.0, 3.0, n_starts=16,
                                                        gen=torch.Generator().manual_seed(1))
    assert n >= 2 and unconverged == 0
    n_weak, _, _ = continuation.count_fixed_points(s_q, s_c, 0.5, 8.0, 0.1, n_starts=16,
                                                   gen=torch.Generator().manual_seed(1))
    assert n_weak == 1


@pytest.mark.parametrize("kind", ["sparsemax", "softmax"])
def test_peak_gate_falls_with_alpha(kind):
    r = phase.peak_monotonicity(kind, 30, 12, torch.logspace(-2, 1.5, 40, dtype=torch.float64),
                                torch.Generator().manual_seed(4))
    assert r.rises == 0 and r.closed_form_error < 1e-6


def test_sparsemax_slope_by_hand():
    u = torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64)
    assert phase.sparsemax_peak_slope(u, 0.5).item() == 0.0            # one-hot below the gap 1
    # support {0, 1} for 1 < alpha < 3: peak = 1/2 + 1/(2 alpha), slope -1/(2 alpha^2)
    assert phase.sparsemax_peak_slope(u, 2.0).item() == pytest.approx(-1 / 8)
    torch.testing.assert_close(phase.entropic_peak(u, torch.tensor([1.0], dtype=torch.float64)),
                               torch.softmax(u, -1).max()[None])


def test_bad_input():
    with pytest.raises(ValueError, match="alphas"):
        continuation.continuation(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([1.0, 0.5]), 1.0, 0.1)
    with pytest.raises(ValueError, match="gen"):
        continuation.count_fixed_points(torch.zeros(3), torch.zeros(3), 1.0, 1.0, 0.1, n_starts=2, gen=0)
    with pytest.raises(ValueError, match="lam"):
        continuation.onehot_thresholds(torch.zeros(3), torch.zeros(3), 1.0, -1.0)
    with pytest.raises(ValueError, match="kind"):
        phase.peak_monotonicity("relu", 2, 3, torch.tensor([0.5, 1.0]), torch.Generator())
