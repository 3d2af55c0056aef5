"""Related memories (chapter 01b): each update rule against a direct reference, and basic retrieval behaviour."""
import pytest
import torch
from entmax import sparsemax

from cgar_src.theory import classic_memories as cm
from cgar_src.theory import dynamics, memory

D = torch.float64


def setup(n=12, d=40, flip=0.1, b=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = cm.random_patterns(n, d, gen)
    target = torch.randint(n, (b,), generator=gen)
    return X, target, cm.noisy_queries(X, target, flip, gen)


def test_patterns_and_noise():
    gen = torch.Generator().manual_seed(1)
    X = cm.random_patterns(50, 400, gen)
    assert X.shape == (400, 50) and set(X.unique().tolist()) == {-1.0, 1.0}
    target = torch.arange(50)
    q = cm.noisy_queries(X, target, 0.2, gen)
    assert abs((q != X.T).double().mean().item() - 0.2) < 0.01
    torch.testing.assert_close(cm.noisy_queries(X, target, 0.0, gen), X.T)


def test_hebbian_weights():
    X, _, _ = setup()
    W = cm.hebbian_weights(X)
    ref = X @ X.T / X.shape[0]
    ref.fill_diagonal_(0)
    torch.testing.assert_close(W, ref)
    torch.testing.assert_close(W, W.T)


def test_hopfield_one_sweep_matches_sequential_reference():
    X, _, q = setup(n=8, d=30, flip=0.3)
    W = cm.hebbian_weights(X)
    ref = q.clone()
    for i in range(X.shape[0]):  # reference: one asynchronous sweep, one query at a time
        for b in range(ref.shape[0]):
            h = (W[i] * ref[b]).sum()
            ref[b, i] = 1.0 if h > 0 else (-1.0 if h < 0 else ref[b, i])
    torch.testing.assert_close(cm.hopfield_retrieve(X, q, max_sweeps=1), ref)


def test_hopfield_final_states_are_fixed_points_and_low_load_recall():
    X, target, q = setup(n=3, d=200, flip=0.1)
    s = cm.hopfield_retrieve(X, q, max_sweeps=50)
    W = cm.hebbian_weights(X)
    h = s @ W
    assert ((h * s) >= 0).all()            # every bit agrees with its field (or the field is 0): a fixed point
    assert cm.exact_recall(s, X, target).all()


@pytest.mark.parametrize("energy, n", [("poly", 3), ("poly", 4), ("exp", 2)])
def test_dam_one_sweep_matches_energy_reference(energy, n):
    X, _, q = setup(n=10, d=24, flip=0.3)
    F = (lambda m: m.clamp_min(0) ** n) if energy == "poly" else torch.exp
    ref = q.clone()
    for i in range(X.shape[0]):   # reference: set bit i to the sign that gives the lower energy -sum_mu F(x_mu . s)
        plus, minus = ref.clone(), ref.clone()
        plus[:, i], minus[:, i] = 1.0, -1.0
        diff = F(plus @ X).sum(-1) - F(minus @ X).sum(-1)
        ref[:, i] = torch.where(diff > 0, 1.0, torch.where(diff < 0, -1.0, ref[:, i]))
    torch.testing.assert_close(cm.dam_retrieve(X, q, energy=energy, n=n, max_sweeps=1), ref)


def test_dam_capacity_beyond_hopfield():
    # load N/d = 0.5: far above the classical network's ~0.14, well within the cubic DAM's ~d^2
    X, target, q = setup(n=32, d=64, flip=0.1, b=100, seed=3)
    assert cm.exact_recall(cm.dam_retrieve(X, q, n=3), X, target).double().mean() > 0.95
    assert cm.exact_recall(cm.hopfield_retrieve(X, q), X, target).double().mean() < 0.5


def test_mhn_and_sparse_mhn_updates():
    X, target, q = setup()
    beta = 0.2
    torch.testing.assert_close(cm.mhn_retrieve(X, q, beta, max_steps=1), memory.update(q, X, beta))
    torch.testing.assert_close(cm.sparse_mhn_retrieve(X, q, beta, max_steps=1), sparsemax(beta * (q @ X), dim=-1) @ X.T)
    # a large beta makes sparsemax one-hot: the state is exactly the nearest pattern
    s = cm.sparse_mhn_retrieve(X, q, 10.0)
    torch.testing.assert_close(s, X.T[(q @ X).argmax(-1)])
    assert cm.exact_recall(s, X, target).all()


def test_linear_memory_and_readouts():
    X, target, q = setup()
    V = cm.random_patterns(X.shape[1], X.shape[0], torch.Generator().manual_seed(9))
    torch.testing.assert_close(cm.linear_memory_readout(X, V, q), q @ (V @ X.T).T)
    # at low load the read-out of a clean key decodes to its value, in every bit
    Xs, Vs = X[:, :3], V[:, :3]
    y = cm.linear_memory_readout(Xs, Vs, Xs.T)
    assert cm.exact_recall(y, Vs, torch.arange(3)).all()
    s = X.T[target].clone()
    assert cm.exact_recall(s, X, target).all() and cm.top1(s, X, target).all()
    s[:, 0] = 0.0                                     # a zero bit is not a recall
    assert not cm.exact_recall(s, X, target).any()


def test_gated_memory_at_zero_coupling_is_one_mhn_step():
    X, target, q = setup()
    gen = torch.Generator().manual_seed(5)
    K = cm.random_patterns(X.shape[1], X.shape[0], gen)
    c = cm.noisy_queries(K, target, 0.1, gen)
    state, p = cm.gated_retrieve(X, K, q, c, alpha=1.0, beta=2.0, lam=0.0)
    torch.testing.assert_close(p, torch.softmax(2.0 * q @ X / X.shape[0] ** 0.5, -1))
    torch.testing.assert_close(state, p @ X.T)
    _, p_lam = cm.gated_retrieve(X, K, q, c, alpha=1.0, beta=2.0, lam=0.5)
    fp = dynamics.fixed_point(q @ X / X.shape[0] ** 0.5, c @ K / X.shape[0] ** 0.5, 1.0, 2.0, 0.5, tol=1e-10)
    torch.testing.assert_close(p_lam, fp.p)


def test_validation():
    X, target, q = setup()
    with pytest.raises(ValueError, match="flip"):
        cm.noisy_queries(X, target, 0.7, torch.Generator())
    with pytest.raises(ValueError, match="binary"):
        cm.hebbian_weights(X * 0.5)
    with pytest.raises(ValueError, match="energy"):
        cm.dam_retrieve(X, q, energy="cubic")
    with pytest.raises(ValueError, match="values V"):
        cm.retrieve("linear", X, q)
    with pytest.raises(ValueError, match="model"):
        cm.retrieve("bam", X, q)
    with pytest.raises(ValueError, match="xi"):
        cm.mhn_retrieve(X, q[:, :5], 1.0)
    with pytest.raises(ValueError, match="target"):
        cm.top1(q, X, target.double())
