"""Chapter 12's cross-fitted evaluation (cgar_src.analysis.crossfit): lens scores on a tiny random model, known
answers on synthetic scores, and that no fold's parameters ever see its own held-out queries."""
import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import crossfit
from cgar_src.analysis import gate_fit as gf
from cgar_src.analysis.baselines import majority_class
from cgar_src.analysis.steering import folds_of
from cgar_src.lm import Unembed

GRIDS = {"dense": {"beta": [0.5, 1.0, 2.0], "lam": [0.0, 0.5, 2.0]},
         "gated": {"alpha": [0.3, 1.0, 3.0, 1e4], "beta": [0.5, 1.0, 2.0], "kappa": [0.0, 0.5, 2.0]}}
FP_GRID = {"alpha": [0.3, 1.0], "beta": [0.5, 1.0], "lam": [0.25, 1.0, 2.0]}   # bounds 0.016 to 6.7: both regions
LABEL_IDS = [3, 7, 11]
TRUTH = {"beta": 1.0, "lam": 0.5}                       # the dense model that generates the target


def synthetic(P=40, V=60, seed=0):
    """Scores (P, V) whose in-context target is the dense model at TRUTH, labels over three label tokens."""
    g = torch.Generator().manual_seed(seed)
    s_q = 2 * torch.randn(P, V, generator=g, dtype=torch.float64)
    s_c = 2 * torch.randn(P, V, generator=g, dtype=torch.float64)
    target = gf.log_probs_dense(s_q, s_c, **TRUTH)
    labels = torch.randint(0, len(LABEL_IDS), (P,), generator=g)
    return s_q, target, s_c, labels


def run(s_q, target, s_c, labels, folds):
    return crossfit.evaluate(s_q, target, s_c, labels, LABEL_IDS, folds, GRIDS, FP_GRID)


def test_layer_tags():
    assert crossfit.layer_tags(30, [25, 30]) == {30: "last", 25: "early"}
    assert crossfit.layer_tags(30, [10, 20, 30]) == {30: "last", 10: "early", 20: "early2"}
    assert crossfit.layer_tags(30, [30]) == {30: "last"}


def test_fixed_point_starts_are_distributions():
    target = torch.log_softmax(torch.randn(4, 20, dtype=torch.float64), -1)
    starts = crossfit.fixed_point_starts(target, [2, 9])
    assert list(starts) == ["first-order", "uniform", "in-context", "label 0", "label 1"]
    assert starts["first-order"] is None
    for name in ("uniform", "in-context", "label 0", "label 1"):
        assert torch.allclose(starts[name].sum(-1), torch.ones((), dtype=torch.float64))
    assert starts["label 1"][9] == 1 and starts["label 1"].sum() == 1
    torch.testing.assert_close(starts["in-context"], target.exp())


def test_lens_scores_on_a_tiny_model(tiny):
    un = Unembed(tiny.model)
    g = torch.Generator().manual_seed(1)
    L = tiny.n_layers
    h = [torch.randn(5, L + 1, 64, generator=g) for _ in range(3)]
    sc = crossfit.lens_scores(un, *h, query_layer=L, context_layers=[1, L])
    assert sc.s_q.dtype == torch.float64 and sc.s_q.shape == (5, un.weight.shape[0])
    with torch.no_grad():
        torch.testing.assert_close(sc.s_q, un(h[0][:, L]).double())
        torch.testing.assert_close(sc.target, torch.log_softmax(un(h[1][:, L]).double(), -1))
        torch.testing.assert_close(sc.s_c[1], un(h[2][:, 1]).double())
    assert list(sc.s_c) == [1, L]
    assert torch.allclose(sc.target.logsumexp(-1), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="context_layers"):
        crossfit.lens_scores(un, *h, query_layer=L, context_layers=[L + 1])
    with pytest.raises(ValueError, match="query_layer"):
        crossfit.lens_scores(un, *h, query_layer=-1, context_layers=[1])
    with pytest.raises(ValueError, match="one shape"):
        crossfit.lens_scores(un, h[0], h[1][:2], h[2], query_layer=L, context_layers=[1])


def test_evaluate_recovers_the_generating_model():
    s_q, target, s_c, labels = synthetic()
    folds = folds_of(s_q.shape[0], 2, seed=0)
    ev = run(s_q, target, s_c, labels, folds)
    assert list(ev.fits) == list(crossfit.FITTED) and list(ev.per_query) == list(crossfit.FITTED)
    assert ev.fits["dense"].params == [TRUTH, TRUTH]
    # past the dense limit (alpha = 1e4 here) the gate is the dense model at kappa = lambda / alpha: it fits as well
    assert bool((ev.alpha_dense < 1e4).all())
    assert ev.per_query["gated"]["kl"].abs().max() < 1e-4
    assert all(p["alpha"] == 1e4 and p["lam"] == pytest.approx(0.5e4) for p in ev.fits["gated"].params)
    # the fixed point on its own grid: one fit inside the contraction region, one outside it
    assert all(b < 1 for b in ev.fits["fixed_point"].extra["bound"])
    assert all(b >= 1 for b in ev.fits["fixed_point_out"].extra["bound"])
    assert ev.per_query["dense"]["kl"].abs().max() < 1e-4           # float32 grids: zero up to round-off
    assert ev.per_query["dense"]["agree"].min() == 1.0
    assert ev.per_query["zero_shot"]["kl"].mean() > 0.05             # the context matters in these data
    gold = torch.tensor(LABEL_IDS)[labels]
    assert torch.equal(ev.icl_correct, (target.argmax(-1) == gold).double())
    for m, q in ev.per_query.items():
        assert torch.equal(q["correct"], (ev.fits[m].argmax == gold).double())
    # the prior's accuracy: each fold answers its fitting half's majority label
    for fit, held in folds:
        c = majority_class(labels[fit])
        assert torch.equal(ev.per_query["prior"]["correct_majority"][held], (labels[held] == c).double())
    assert ev.support_by_alpha.shape == (4, s_q.shape[0])
    assert torch.equal(ev.support_by_alpha, gf.support_sizes(s_c, GRIDS["gated"]["alpha"]))


def test_evaluate_theory_quantities():
    s_q, target, s_c, labels = synthetic(seed=2)
    folds = folds_of(s_q.shape[0], 2, seed=1)
    ev = run(s_q, target, s_c, labels, folds)
    th, gated = ev.theory, ev.fits["gated"]
    assert th["n_starts"] == 3 + len(LABEL_IDS)
    gold = torch.tensor(LABEL_IDS)[labels]
    for f, (_, held) in enumerate(folds):                    # each query at its own fold's fitted gate
        st = gf.gate_stats(s_c[held], gated.params[f]["alpha"], gold[held])
        assert torch.equal(th["support"][held], st.support.double())
        assert torch.equal(th["delta_gate"][held], st.delta_gate.double())
    assert bool(((th["one_hot"] == 1) == (th["support"] == 1)).all())
    for sfx in ("", "_out"):
        assert bool((th["n_converged" + sfx] <= th["n_starts"]).all())
        assert bool((th["n_distinct" + sfx] <= th["n_converged" + sfx]).all())
    # inside the contraction region every start converges to the one fixed point (Theorem thm-fixed-point)
    assert bool((th["n_distinct"] == 1).all()) and bool((th["n_converged"] == th["n_starts"]).all())
    # the multi-start count runs at each fold's fitted fixed point: the first-order start is the fit's own solution
    for m in ("fixed_point", "fixed_point_out"):
        fit = ev.fits[m]
        for f, (_, held) in enumerate(folds):
            d = fit.params[f]
            lp, _ = gf.log_probs_fixed_point(s_q[held], s_c[held], d["alpha"], d["beta"], d["lam"], tol=1e-9,
                                             max_iter=300)
            assert torch.allclose(fit.kl[held], gf.kl(target[held], lp), atol=1e-6)


def test_no_fold_is_fitted_on_its_own_held_out_queries():
    s_q, target, s_c, labels = synthetic(seed=3)
    folds = folds_of(s_q.shape[0], 2, seed=0)
    a = run(s_q, target, s_c, labels, folds)
    _, held = folds[0]
    g = torch.Generator().manual_seed(9)
    target_b, labels_b = target.clone(), labels.clone()
    target_b[held] = torch.log_softmax(5 * torch.randn(len(held), s_q.shape[1], generator=g, dtype=torch.float64), -1)
    labels_b[held] = (labels[held] + 1) % len(LABEL_IDS)
    b = run(s_q, target_b, s_c, labels_b, folds)
    for m in crossfit.FITTED:                        # fold 0 is fitted on the other half only: nothing moves
        assert a.fits[m].params[0] == b.fits[m].params[0], m
        assert torch.equal(a.fits[m].argmax[held], b.fits[m].argmax[held]), m
    other = folds[1][1]                              # fold 1 is fitted on the changed half: its scores move
    assert not torch.equal(a.fits["prior"].kl[other], b.fits["prior"].kl[other])
    c = majority_class(labels[folds[0][0]])
    assert torch.equal(b.per_query["prior"]["correct_majority"][held], (labels_b[held] == c).double())
    assert torch.equal(a.theory["support"][held], b.theory["support"][held])


def test_evaluate_rejects_bad_input():
    s_q, target, s_c, labels = synthetic(P=10, V=20)
    folds = folds_of(10, 2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        run(s_q, target, s_c, labels[:5], folds)
    with pytest.raises(ValueError, match="label_ids"):
        crossfit.evaluate(s_q, target, s_c, labels, [3, 7, 99], folds, GRIDS, FP_GRID)
    with pytest.raises(ValueError, match="labels reach"):
        crossfit.evaluate(s_q, target, s_c, labels, [3, 7], folds, GRIDS, FP_GRID)
    with pytest.raises(ValueError, match="grids"):
        crossfit.evaluate(s_q, target, s_c, labels, LABEL_IDS, folds, {"dense": GRIDS["dense"]}, FP_GRID)
    with pytest.raises(ValueError, match=r"grid\['kappa'\]"):
        crossfit.evaluate(s_q, target, s_c, labels, LABEL_IDS, folds,
                          {"dense": GRIDS["dense"], "gated": dict(GRIDS["gated"], kappa=[-1.0])}, FP_GRID)
    with pytest.raises(ValueError, match="fixed_point_grid must hold points inside"):
        crossfit.evaluate(s_q, target, s_c, labels, LABEL_IDS, folds, GRIDS, dict(FP_GRID, lam=[0.1]))
    with pytest.raises(ValueError, match=r"fixed_point_grid\['lam'\]"):
        crossfit.evaluate(s_q, target, s_c, labels, LABEL_IDS, folds, GRIDS, dict(FP_GRID, lam=[0.0, 2.0]))
    with pytest.raises(ValueError, match="folds"):
        run(s_q, target, s_c, labels, [(torch.arange(5), torch.arange(5))])


def shared_context(s_q, seed: int):
    """One context vector for every query (the design of one content-free prompt per demonstration set), and the
    target the dense model at TRUTH makes of it."""
    g = torch.Generator().manual_seed(seed)
    c = (2 * torch.randn(s_q.shape[1], generator=g, dtype=torch.float64)).expand(s_q.shape[0], -1).clone()
    return c, gf.log_probs_dense(s_q, c, **TRUTH)


def test_evaluate_with_one_context_shared_by_the_queries():
    """With the context evidence constant over the queries the dense and gated models add one fixed bias vector to
    every query; cross-fitting over the queries still identifies (beta, lambda), and the gate's theory quantities
    are one number per fold (only Delta_gate varies, with the query's label)."""
    s_q, _, _, labels = synthetic(seed=3)
    s_c, target = shared_context(s_q, seed=7)
    folds = folds_of(s_q.shape[0], 2, seed=0)
    ev = run(s_q, target, s_c, labels, folds)
    assert ev.fits["dense"].params == [TRUTH, TRUTH]
    assert ev.per_query["dense"]["kl"].abs().max() < 1e-4
    assert ev.per_query["gated"]["kl"].mean() <= ev.per_query["zero_shot"]["kl"].mean()
    assert ev.alpha_dense.unique().numel() == 1 and ev.theory["alpha_crit"].unique().numel() == 1
    for _, held in folds:
        for k in ("support", "one_hot"):
            assert ev.theory[k][held].unique().numel() == 1
        # Delta_gate takes one value per label: it depends on the query only through its gold token
        for y in labels[held].unique():
            assert ev.theory["delta_gate"][held][labels[held] == y].unique().numel() == 1


def test_evaluate_many_in_worker_processes_gives_the_serial_numbers():
    """Two jobs in two spawned worker processes give exactly what the serial loop gives, in order."""
    import dataclasses

    jobs = []
    for seed in (0, 1):
        s_q, target, s_c, labels = synthetic(P=20, V=30, seed=seed)
        jobs.append(dict(s_q=s_q, target_logp=target, s_c=s_c, labels=labels, label_ids=LABEL_IDS,
                         folds=folds_of(20, 2, 0), grids=GRIDS, fixed_point_grid=FP_GRID))
    serial = crossfit.evaluate_many(jobs, processes=1)
    parallel = crossfit.evaluate_many(jobs, processes=2)
    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if dataclasses.is_dataclass(x):
            return all(same(getattr(x, f.name), getattr(y, f.name)) for f in dataclasses.fields(x))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y or (x != x and y != y)          # NaN equals NaN here

    assert len(serial) == len(parallel) == 2 and all(same(a, b) for a, b in zip(serial, parallel))
    with pytest.raises(ValueError, match="processes"):
        crossfit.evaluate_many(jobs, processes=0)
    with pytest.raises(ValueError, match="jobs"):
        crossfit.evaluate_many([1])
