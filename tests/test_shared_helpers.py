"""The helpers that replaced duplicated code: one solver loop (dynamics.fixed_point, measured_alpha_crit_batch and
gate_fit.multistart_fixed_points), one gated retrieval (energy.best_p), one modern Hopfield iteration
(classic_memories and memory.retrieve), one fold generator (steering.folds_of) and one index check
(_validate.indices). Each is compared with an independent reference: the plain loops the deduplicated code had."""
import numpy as np
import pytest
import torch
from entmax import sparsemax

from cgar_src._validate import indices
from cgar_src.analysis import baselines
from cgar_src.analysis import gate_fit as gf
from cgar_src.analysis.steering import folds_of
from cgar_src.theory import classic_memories as cm
from cgar_src.theory import dynamics, energy, memory
from cgar_src.theory.gate import gate, gate_unchecked

D = torch.float64


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# --- the solver loop ---------------------------------------------------------------------------------------------

def reference_fixed_point(s_q, s_c, alpha, beta, lam, *, tol, max_iter, damping=1.0, p0=None):
    """Row by row, all N columns: p <- (1 - w) p + w Phi(p) until |Phi(p) - p|_inf <= tol (keeping that p)."""
    ps, its = [], []
    for i in range(s_q.shape[0]):
        p = torch.softmax(beta * (s_q[i] + lam * gate(s_c[i], alpha)), -1) if p0 is None else p0[i].clone()
        it = 0
        for step in range(max_iter + 1):
            new = torch.softmax(beta * (s_q[i] + lam * gate(s_c[i] + lam * p, alpha)), -1)
            if (new - p).abs().max() <= tol or step == max_iter:
                break
            p, it = (1 - damping) * p + damping * new, it + 1
        ps.append(p)
        its.append(it)
    return torch.stack(ps), torch.tensor(its)


@pytest.mark.parametrize("alpha, beta, lam, damping", [(1.0, 2.0, 0.5, 1.0), (0.3, 4.0, 2.0, 1.0),
                                                        (2.0, 3.0, 3.0, 0.5), (0.5, 8.0, 4.0, 1.0)])
def test_fixed_point_equals_the_plain_loop(alpha, beta, lam, damping):
    s_q, s_c = rand(12, 40, seed=1), rand(12, 40, seed=2, scale=3.0)
    p_ref, it_ref = reference_fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12, max_iter=3000, damping=damping)
    for screen in (None, False):
        fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-12, max_iter=3000, damping=damping, screen=screen)
        torch.testing.assert_close(fp.p, p_ref, atol=1e-13, rtol=0)
        assert fp.iterations.equal(it_ref)
    assert dynamics.support_screen(s_c, alpha, lam) is not None        # the default really screened


def test_screening_from_a_given_start_equals_the_full_solve():
    s_q, s_c = rand(20, 300, seed=3), rand(20, 300, seed=4, scale=3.0)
    p0 = torch.distributions.Dirichlet(torch.ones(300, dtype=D)).sample((20,))
    kw = dict(tol=1e-12, max_iter=3000, p0=p0)
    full = dynamics.fixed_point(s_q, s_c, 0.5, 4.0, 2.0, **kw)            # p0 given: all columns by default
    screened = dynamics.fixed_point(s_q, s_c, 0.5, 4.0, 2.0, screen=True, **kw)
    assert full.columns == 300 and screened.columns < 300
    torch.testing.assert_close(screened.p, full.p, atol=1e-12, rtol=0)
    torch.testing.assert_close(screened.g, full.g, atol=1e-12, rtol=0)
    assert screened.iterations.equal(full.iterations)
    with pytest.raises(ValueError, match="screen"):
        dynamics.fixed_point(s_q, s_c, 0.5, 4.0, 2.0, kind="softmax", screen=True)
    with pytest.raises(ValueError, match="screen"):
        dynamics.fixed_point(s_q, s_c, 0.5, 4.0, 2.0, screen="yes")


def reference_alpha_crit_batch(s_q, s_c, beta, lam, lo, hi, n_bisect, tol, max_iter, one_tol=1e-12):
    """The bisection of measured_alpha_crit_batch with its former private solver loop (rows updated to the last
    image, then dropped)."""
    l = torch.as_tensor(lam, dtype=D).expand(s_q.shape[0])[:, None]

    def one_hot(alpha):
        a = alpha[:, None]
        p = torch.softmax(beta * (s_q + l * gate_unchecked(s_c, a, "sparsemax")), -1)
        active = torch.arange(s_q.shape[0])
        for _ in range(max_iter):
            la, aa = l[active], a[active]
            g = gate_unchecked(s_c[active] + la * p[active], aa, "sparsemax")
            new = torch.softmax(beta * (s_q[active] + la * g), -1)
            moving = (new - p[active]).abs().amax(-1) > tol
            p[active] = new
            active = active[moving]
            if active.numel() == 0:
                break
        return gate_unchecked(s_c + l * p, a, "sparsemax").amax(-1) >= 1 - one_tol

    for _ in range(n_bisect):
        mid = 0.5 * (lo + hi)
        ok = one_hot(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return 0.5 * (lo + hi)


def test_measured_alpha_crit_batch_agrees_with_its_former_loop():
    s_q, s_c = rand(8, 10, seed=5), rand(8, 10, seed=6)
    lam = torch.linspace(0.0, 0.5, 8, dtype=D)
    derived = torch.stack([dynamics.alpha_crit_coupled(s_q[i], s_c[i], 2.0, lam[i].item()) for i in range(8)])
    assert bool((derived > 1e-3).all())
    kw = dict(n_bisect=20, max_iter=1000)
    new = dynamics.measured_alpha_crit_batch(s_q, s_c, 2.0, lam, lo=derived / 4, hi=4 * derived, **kw)
    old = reference_alpha_crit_batch(s_q, s_c, 2.0, lam, derived / 4, 4 * derived, tol=1e-13, **kw)
    torch.testing.assert_close(new, old, atol=1e-12, rtol=0)
    assert (new - derived).abs().max() < 1e-5       # 20 halvings of [d/4, 4d]: the bracket is ~4e-6 d wide


def test_multistart_equals_full_solves_from_every_start():
    """Three strong context candidates and many weak ones, coupling far above the contraction bound: several fixed
    points per query. Counting them on the screened solves must agree with full-vocabulary solves."""
    P, N = 8, 400
    s_c = -5 + rand(P, N, seed=7, scale=0.1)
    s_c[:, :3] = 5 + rand(P, 3, seed=8, scale=0.2)
    s_q = rand(P, N, seed=9, scale=0.3)
    starts = {"first-order": None, "uniform": torch.full((N,), 1 / N, dtype=D)}
    starts |= {f"e{j}": torch.zeros(N, dtype=D).index_fill(0, torch.tensor([j]), 1.0) for j in range(4)}
    alpha, beta, lam = 1.0, 4.0, 2.0
    ms = gf.multistart_fixed_points(s_q, s_c, alpha, beta, lam, starts, max_iter=200)
    sols, conv = [], []
    for name, p0 in starts.items():
        fp = dynamics.fixed_point(s_q, s_c, alpha, beta, lam, tol=1e-9, max_iter=200, screen=False,
                                  p0=None if p0 is None else p0.expand(P, N))
        assert torch.equal(ms.argmax[name], fp.p.argmax(-1)), name
        sols.append(fp.p)
        conv.append(fp.converged)
    conv = torch.stack(conv)
    assert ms.n_converged.equal(conv.sum(0))
    for i in range(P):
        reps = []
        for s in range(len(sols)):
            if conv[s, i] and all(float((sols[s][i] - r).abs().sum()) > 1e-5 for r in reps):
                reps.append(sols[s][i])
        assert int(ms.n_distinct[i]) == len(reps)
    assert int(ms.n_distinct.max()) >= 3 and ms.bound > 1 and ms.columns < N


# --- gated retrieval, the modern Hopfield iteration ----------------------------------------------------------------

def test_best_p_is_the_gated_retrieval():
    s_q, g = rand(5, 7, seed=10), torch.softmax(rand(5, 7, seed=11), -1)
    want = torch.softmax(1.5 * (s_q + 0.7 * g), -1)
    torch.testing.assert_close(energy.best_p(g, s_q, 1.5, 0.7), want, atol=0, rtol=0)
    torch.testing.assert_close(dynamics.gated_retrieval(s_q, g, 1.5, 0.7), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="lam"):
        energy.best_p(g, s_q, 1.5, -1.0)


@pytest.mark.parametrize("activation", ["softmax", "sparsemax"])
def test_classic_mhn_retrieval_is_the_memory_iteration(activation):
    X = cm.random_patterns(30, 64, torch.Generator().manual_seed(1))
    target = torch.randint(30, (40,), generator=torch.Generator().manual_seed(2))
    q = cm.noisy_queries(X, target, 0.25, torch.Generator().manual_seed(3))
    f = (lambda z: torch.softmax(z, -1)) if activation == "softmax" else (lambda z: sparsemax(z, dim=-1))
    retrieve = cm.mhn_retrieve if activation == "softmax" else cm.sparse_mhn_retrieve
    for beta in (0.02, 0.1, 1.0):
        state = q.clone()                      # reference: iterate until every query moves by at most tol
        for _ in range(10):
            new = f(beta * (state @ X)) @ X.T
            done = bool(((new - state).abs().amax(-1) <= 1e-10).all())
            state = new
            if done:
                break
        got = retrieve(X, q, beta)
        assert torch.equal(got, state)
        assert torch.equal(got, memory.retrieve(q, X, beta, tol=1e-10, max_steps=10, activation=activation).state)
    with pytest.raises(ValueError, match="activation"):
        memory.update(q, X, 1.0, activation="relu")


# --- folds -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["strided", "kfold"])
def test_folds_partition_every_query_and_never_evaluate_a_fitted_one(scheme):
    for n, k, seed in [(11, 3, 5), (100, 2, 0), (7, 7, 1)]:
        folds = folds_of(n, k, seed, scheme=scheme)
        evals = torch.cat([ev for _, ev in folds]).sort().values
        assert evals.equal(torch.arange(n))
        for fit, ev in folds:
            assert not bool(torch.isin(ev, fit).any()) and fit.numel() + ev.numel() == n
            assert torch.equal(fit, fit.sort().values) and torch.equal(ev, ev.sort().values)
        assert sorted(ev.numel() for _, ev in folds) in ([n // k] * (k - n % k) + [n // k + 1] * (n % k),)


def test_strided_scheme_is_a_strided_cut_of_the_seeded_permutation():
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(5))
    for i, (_, ev) in enumerate(folds_of(11, 3, 5)):
        assert ev.equal(perm[i::3].sort().values)
    with pytest.raises(ValueError, match="seed"):
        folds_of(11, 3, -1)
    with pytest.raises(ValueError, match="n must"):
        folds_of(1, 2)


# --- the index check ---------------------------------------------------------------------------------------------

def test_indices_accepts_integer_sequences_and_tensors():
    assert indices([2, 0, 1], "layers", 3).equal(torch.tensor([2, 0, 1]))
    assert indices((np.int64(4),), "ids", 5).equal(torch.tensor([4]))
    assert indices(np.array([0, 3]), "rows", 4).dtype == torch.long
    assert indices(torch.tensor([1, 2], dtype=torch.int32), "target", 3).dtype == torch.long
    assert indices(torch.tensor([[0, 1], [1, 0]]), "target", 2, shape=(2, 2)).shape == (2, 2)
    assert indices(2, "target", 3, shape=()).item() == 2
    assert indices([7, 10**6], "labels").tolist() == [7, 10**6]          # no upper end when n is None


@pytest.mark.parametrize("value, kw, match", [
    ([True, False], {}, "integer"), ([0.0, 1.0], {}, "integer"), (torch.tensor([0.0]), {}, "dtype"),
    (torch.tensor([True]), {}, "dtype"), ([], {}, "shape"), ([0, 3], {}, r"out of range: \[3\]"),
    ([-1, 0], {}, r"out of range: \[-1\]"), (torch.tensor([[0]]), {}, "shape"), (1, {}, "shape"),
    ([0, 1], {"shape": (3,)}, r"shape \(3,\)"), ("ab", {}, "str"), (None, {}, "NoneType"),
])
def test_indices_rejects_bad_values_naming_the_parameter(value, kw, match):
    with pytest.raises(ValueError, match=match) as err:
        indices(value, "my_param", 3, **kw)
    assert str(err.value).startswith("my_param must be")


def test_every_index_argument_uses_the_one_check():
    """Out-of-range or float indices are refused, with the parameter's name, wherever indices enter the package."""
    s = rand(4, 5, seed=12)
    X = cm.random_patterns(5, 8, torch.Generator().manual_seed(0))
    calls = {
        "target": [lambda t: dynamics.effective_separation(s, s, t, 1.0),
                   lambda t: dynamics.error_log_odds(s, s, t, 1.0, 1.0),
                   lambda t: gf.gate_stats(s, 1.0, t),
                   lambda t: cm.top1(X.T[:4], X, t),
                   lambda t: memory.ramsauer_error_bound(X, X.T[:4], t, 1.0)],
        "labels": [lambda t: baselines.majority_correct(t, reference=t),
                   lambda t: baselines.label_restricted_correct(s, t)],
        "rows": [lambda t: gf.fit_grid("dense", s, s, torch.log_softmax(s, -1), {"beta": [1.0], "lam": [0.0]}, t)],
    }
    for name, fns in calls.items():
        for fn in fns:
            fn(torch.tensor([0, 1, 2, 3]))                                # valid
            for bad in (torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0, 1, 2, -1])):
                with pytest.raises(ValueError, match=f"^{name} must be"):
                    fn(bad)
