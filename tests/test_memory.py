"""Unit tests of the modern Hopfield core (cgar_src.theory.memory): invariants and input validation."""
import math

import pytest
import torch
import torch.nn.functional as F

from cgar_src.theory import memory


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def instance(request):
    g = torch.Generator().manual_seed(1)
    dtype = request.param
    X = torch.randn(16, 40, generator=g, dtype=torch.float64).to(dtype)
    xi = torch.randn(300, 16, generator=g, dtype=torch.float64).to(dtype)
    return X, xi


def tol(dtype):
    return 1e-4 if dtype == torch.float32 else 1e-10


def test_dtype_is_kept(instance):
    X, xi = instance
    assert memory.update(xi, X, 0.7).dtype == X.dtype
    assert memory.energy(xi, X, 0.7).dtype == X.dtype


def test_energy_is_nonnegative_and_never_increases(instance):
    X, xi = instance
    for beta in (0.1, 1.0, 8.0):
        state = xi
        e = memory.energy(state, X, beta)
        assert (e >= -tol(X.dtype)).all()
        for _ in range(10):
            state = memory.update(state, X, beta)
            e_new = memory.energy(state, X, beta)
            assert (e_new <= e + tol(X.dtype) * (1 + e.abs())).all()
            e = e_new


def test_update_is_negative_gradient_step(instance):
    X, xi = instance
    xi = xi.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(memory.energy(xi, X, 2.0).sum(), xi)
    torch.testing.assert_close(xi.detach() - grad, memory.update(xi.detach(), X, 2.0), atol=tol(X.dtype), rtol=0)


def test_update_equals_softmax_attention(instance):
    X, xi = instance
    beta = 0.5
    attn = F.scaled_dot_product_attention(xi[None], X.T[None], X.T[None], scale=beta)[0]
    torch.testing.assert_close(attn, memory.update(xi, X, beta), atol=tol(X.dtype), rtol=0)


def test_single_query_matches_batch(instance):
    X, xi = instance
    torch.testing.assert_close(memory.update(xi[3], X, 1.0), memory.update(xi, X, 1.0)[3])


def test_retrieve_converges_to_a_fixed_point():
    g = torch.Generator().manual_seed(2)
    X = 3 * torch.randn(32, 10, generator=g, dtype=torch.float64) / math.sqrt(32)
    xi = X.T + 0.1 * torch.randn(10, 32, generator=g, dtype=torch.float64)
    res = memory.retrieve(xi, X, beta=4.0, tol=1e-12, max_steps=200)
    assert res.converged.all()
    torch.testing.assert_close(memory.update(res.state, X, 4.0), res.state, atol=1e-11, rtol=0)
    # well separated patterns are retrieved: the fixed point is closest to the stored pattern it started near
    assert (torch.cdist(res.state, X.T).argmin(1) == torch.arange(10)).all()


def test_separation_by_hand():
    X = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 0.5]], dtype=torch.float64)
    # overlaps: x0.x0=1, x0.x1=0, x0.x2=0.5 -> 0.5 ; x1: 4 - max(0, 1) = 3 ; x2: 0.5 - max(0.5, 1) = -0.5
    torch.testing.assert_close(memory.separation(X), torch.tensor([0.5, 3.0, -0.5], dtype=torch.float64))
    torch.testing.assert_close(memory.association_matrix(X), X.T @ X)


def test_ramsauer_bound_holds_and_is_exponential():
    g = torch.Generator().manual_seed(3)
    U = torch.randn(64, 20, generator=g, dtype=torch.float64)
    U = U / U.norm(dim=0)
    for r in (1.0, 2.0, 4.0, 6.0):
        X = r * U
        target = torch.arange(20).repeat(20)
        noise = torch.randn(len(target), 64, generator=g, dtype=torch.float64)
        xi = X[:, target].T + 0.1 * r * noise / noise.norm(dim=-1, keepdim=True)
        err = (memory.update(xi, X, 1.0) - X[:, target].T).norm(dim=-1)
        assert (err <= memory.ramsauer_error_bound(X, xi, target, 1.0)).all()
    # at the exact pattern the bound is 2M(N-1)exp(-beta Delta)
    b = memory.ramsauer_error_bound(X, X[:, 0], 0, 2.0)
    expected = 2 * X.norm(dim=0).max() * 19 * torch.exp(-2.0 * memory.separation(X)[0])
    torch.testing.assert_close(b, expected)


def test_hamux_energy_reduces_to_mhn_energy(instance):
    X, xi = instance
    beta = 1.3
    const = math.log(X.shape[1]) / beta + 0.5 * X.norm(dim=0).max() ** 2
    torch.testing.assert_close(memory.hamux_energy(xi, xi @ X, X, beta) + const, memory.energy(xi, X, beta),
                               atol=tol(X.dtype) * 10, rtol=0)


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf"), "a", True])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        memory.update(torch.zeros(3), torch.eye(3), beta)


def test_bad_shapes_and_values():
    X = torch.eye(3)
    with pytest.raises(ValueError, match="xi"):
        memory.update(torch.zeros(4), X, 1.0)
    with pytest.raises(ValueError, match="X"):
        memory.update(torch.zeros(3), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="xi"):
        memory.energy(torch.tensor([0.0, float("nan"), 0.0]), X, 1.0)
    with pytest.raises(ValueError, match="X"):
        memory.separation(torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="target"):
        memory.ramsauer_error_bound(X, torch.zeros(3), 5, 1.0)
    with pytest.raises(ValueError, match="tol"):
        memory.retrieve(torch.zeros(3), X, 1.0, tol=0)
    with pytest.raises(ValueError, match="max_steps"):
        memory.retrieve(torch.zeros(3), X, 1.0, max_steps=0)


def _separated(r=4.0, d=32, n=12, seed=5):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(d, n, generator=g, dtype=torch.float64)
    return r * U / U.norm(dim=0), g


def test_theorem4_mean_jacobian_and_bound():
    X, g = _separated()
    target = torch.arange(X.shape[1])
    x_star = memory.pattern_fixed_point(X, target, 1.0)
    torch.testing.assert_close(memory.update(x_star, X, 1.0), x_star, atol=1e-12, rtol=0)
    xi = X.T + 0.3 * torch.randn(X.shape[1], X.shape[0], generator=g, dtype=torch.float64)
    Jm = memory.mean_jacobian(xi, x_star, X, 1.0)
    torch.testing.assert_close(memory.update(xi, X, 1.0) - x_star, (Jm @ (xi - x_star).unsqueeze(-1)).squeeze(-1),
                               atol=1e-10, rtol=0)
    assert (torch.linalg.matrix_norm(Jm, 2) <= memory.ramsauer_jacobian_bound(X, xi, target, x_star, 1.0)).all()
    # the Jacobian is the autograd one
    q = xi[0].clone().requires_grad_(True)
    J_auto = torch.autograd.functional.jacobian(lambda v: memory.update(v, X, 1.0), q)
    torch.testing.assert_close(memory.update_jacobian(xi[0], X, 1.0), J_auto)


def test_theorem5_as_stated_and_the_book_variant_is_tighter():
    X, g = _separated()
    target = torch.arange(X.shape[1])
    x_star = memory.pattern_fixed_point(X, target, 1.0)
    M = X.norm(dim=0).max()
    noise = torch.randn(X.shape[1], X.shape[0], generator=g, dtype=torch.float64)
    xi = X.T + noise / noise.norm(dim=-1, keepdim=True) / (4 * M)
    first, fixed = memory.ramsauer_theorem5_bounds(X, xi, target, x_star, 1.0)
    assert ((memory.update(xi, X, 1.0) - X.T).norm(dim=-1) <= first).all()
    assert (memory.ramsauer_error_bound(X, xi, target, 1.0) <= first * (1 + 1e-12)).all()
    assert ((x_star - X.T).norm(dim=-1) <= 1 / (2 * M)).all()
    assert ((x_star - X.T).norm(dim=-1) <= fixed).all()


def test_fixed_point_helpers_validate():
    with pytest.raises(ValueError, match="target"):
        memory.pattern_fixed_point(torch.eye(3, dtype=torch.float64), 7, 1.0)
    with pytest.raises(ValueError, match="max_steps"):
        memory.pattern_fixed_point(torch.eye(3, dtype=torch.float64), 0, 1.0, max_steps=1, tol=1e-300)
    with pytest.raises(ValueError, match="n_nodes"):
        memory.mean_jacobian(torch.zeros(3), torch.zeros(3), torch.eye(3), 1.0, n_nodes=0)
