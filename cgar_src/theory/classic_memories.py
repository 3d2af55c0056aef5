r"""Related associative memories on one workload, batched over queries (book chapter ``01b_related_memories``).

Workload: N binary patterns :math:`x_\mu \in \{-1, +1\}^d`, the columns of ``X`` (shape ``(d, N)``); a query is a
stored pattern with each bit flipped independently with probability ``flip`` (rows of shape ``(B, d)``).

* classical Hopfield network (Hopfield 1982): Hebbian weights :math:`W = \tfrac1d\sum_\mu x_\mu x_\mu^\top` with zero
  diagonal, asynchronous sign dynamics :math:`\sigma_i \leftarrow \mathrm{sign}(\sum_j W_{ij}\sigma_j)`;
* dense associative memory (Krotov and Hopfield 2016): energy :math:`E = -\sum_\mu F(x_\mu^\top\sigma)` with the
  rectified polynomial :math:`F(m) = \max(m, 0)^n`, or :math:`F(m) = e^{m}` (Demircigil et al. 2017); asynchronous
  update :math:`\sigma_i \leftarrow \mathrm{sign}\big(\sum_\mu F(m_\mu^{(i+)}) - F(m_\mu^{(i-)})\big)` where
  :math:`m^{(i\pm)}` is the overlap with bit i set to :math:`\pm1`;
* modern Hopfield network (Ramsauer et al. 2020): :math:`\xi \leftarrow X\,\mathrm{softmax}(\beta X^\top\xi)`;
* sparse modern Hopfield network (Hu et al. 2023): :math:`\xi \leftarrow X\,\mathrm{sparsemax}(\beta X^\top\xi)`;
* linear (correlation-matrix) memory of key-value pairs: :math:`W = \sum_\mu v_\mu x_\mu^\top`, one read-out
  :math:`y = W\xi`, decoded against the values :math:`v_\mu` (random patterns of their own).

Two read-outs apply to every model's final state s: *exact recall*, :math:`\mathrm{sign}(s) = x_\mu` in all d bits,
and *top-1*, :math:`\arg\max_\nu x_\nu^\top s = \mu` (winner-take-all over the stored patterns).
"""
from __future__ import annotations

import torch

from .._validate import as_tensor, indices, int_in_range, nonnegative, positive_int
from . import memory
from .dynamics import fixed_point

__all__ = [
    "random_patterns",
    "noisy_queries",
    "hebbian_weights",
    "hopfield_retrieve",
    "dam_retrieve",
    "mhn_retrieve",
    "sparse_mhn_retrieve",
    "linear_memory_readout",
    "exact_recall",
    "top1",
    "gated_retrieve",
    "retrieve",
    "MODELS",
]

#: the memories that :func:`retrieve` dispatches to, by name
MODELS = ("hopfield", "dam_poly", "dam_exp", "mhn", "sparse_mhn", "linear")


def random_patterns(n: int, d: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """N independent uniform patterns in {-1, +1}^d as the columns of a ``(d, N)`` tensor."""
    n, d = positive_int(n, "n"), positive_int(d, "d")
    return (torch.randint(0, 2, (d, n), generator=gen) * 2 - 1).to(dtype)


def noisy_queries(X, target, flip: float, gen: torch.Generator) -> torch.Tensor:
    """The target patterns (``target``: LongTensor of shape ``(B,)``) with each bit flipped with probability
    ``flip`` in [0, 1/2]; shape ``(B, d)``."""
    X = _patterns(X)
    flip = nonnegative(flip, "flip")
    if flip > 0.5:
        raise ValueError(f"flip must be in [0, 0.5], got {flip}")
    target = indices(target, "target", X.shape[1], what="pattern indices")
    clean = X.T[target]
    signs = torch.where(torch.rand(clean.shape, generator=gen, dtype=X.dtype) < flip, -1.0, 1.0).to(X.dtype)
    return clean * signs


def _patterns(X) -> torch.Tensor:
    X = as_tensor(X, "X", ndim=2)
    if not bool(((X == 1) | (X == -1)).all()):
        raise ValueError("X must hold binary patterns with entries in {-1, +1}")
    return X


def _queries(X: torch.Tensor, xi) -> torch.Tensor:
    xi = as_tensor(xi, "xi", ndim=2, dtype=X.dtype)
    if xi.shape[1] != X.shape[0]:
        raise ValueError(f"xi must have shape (B, d = {X.shape[0]}), got {tuple(xi.shape)}")
    return xi


def _sign(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sign with ties (exact zeros) resolved by keeping the current state."""
    return torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, keep)).to(keep.dtype)


def hebbian_weights(X) -> torch.Tensor:
    r"""Hebbian weights :math:`W = \tfrac1d X X^\top` with zero diagonal (Hopfield 1982), shape ``(d, d)``."""
    X = _patterns(X)
    W = X @ X.T / X.shape[0]
    W.fill_diagonal_(0)
    return W


def hopfield_retrieve(X, xi, *, max_sweeps: int = 20) -> torch.Tensor:
    r"""Classical Hopfield retrieval: asynchronous updates :math:`\sigma_i \leftarrow \mathrm{sign}(\sum_j W_{ij}\sigma_j)`
    in the fixed order i = 1..d, sweep after sweep, until no bit changes (the energy
    :math:`-\tfrac12\sigma^\top W\sigma` decreases at every flip) or ``max_sweeps``. Batched over the rows of ``xi``."""
    X = _patterns(X)
    state = _sign(_queries(X, xi), torch.ones_like(xi, dtype=X.dtype))
    max_sweeps = positive_int(max_sweeps, "max_sweeps")
    W = hebbian_weights(X)
    for _ in range(max_sweeps):
        changed = torch.zeros(state.shape[0], dtype=torch.bool)
        for i in range(X.shape[0]):
            new = _sign(state @ W[:, i], state[:, i])
            changed |= new != state[:, i]
            state[:, i] = new
        if not bool(changed.any()):
            break
    return state


def dam_retrieve(X, xi, *, energy: str = "poly", n: int = 3, max_sweeps: int = 20) -> torch.Tensor:
    r"""Dense associative memory retrieval with asynchronous updates, batched over the rows of ``xi``.

    ``energy="poly"``: :math:`F(m) = \max(m, 0)^n` (Krotov and Hopfield 2016; capacity of order :math:`d^{n-1}`);
    ``energy="exp"``: :math:`F(m) = e^{m}` (Demircigil et al. 2017; exponential capacity). Bit i is set to the sign
    of :math:`\sum_\mu F(m_\mu^{(i+)}) - F(m_\mu^{(i-)})`, where :math:`m_\mu^{(i\pm)}` is the overlap of pattern
    :math:`\mu` with the state whose bit i is :math:`\pm 1`; the exponential case compares log-sum-exps (no
    overflow). The overlaps are updated incrementally, so a sweep costs O(B N d)."""
    X = _patterns(X)
    if energy not in ("poly", "exp"):
        raise ValueError(f"energy must be 'poly' or 'exp', got {energy!r}")
    n = int_in_range(n, "n", 2)
    max_sweeps = positive_int(max_sweeps, "max_sweeps")
    state = _sign(_queries(X, xi), torch.ones_like(xi, dtype=X.dtype))
    m = state @ X                                        # overlaps, (B, N)
    for _ in range(max_sweeps):
        changed = torch.zeros(state.shape[0], dtype=torch.bool)
        for i in range(X.shape[0]):
            x_i = X[i]                                   # (N,)
            base = m - state[:, i : i + 1] * x_i         # overlaps without bit i
            plus, minus = base + x_i, base - x_i
            if energy == "poly":
                diff = (plus.clamp_min(0) ** n - minus.clamp_min(0) ** n).sum(-1)
            else:
                diff = torch.logsumexp(plus, -1) - torch.logsumexp(minus, -1)
            new = _sign(diff, state[:, i])
            changed |= new != state[:, i]
            m = base + new[:, None] * x_i
            state[:, i] = new
        if not bool(changed.any()):
            break
    return state


def mhn_retrieve(X, xi, beta: float, *, max_steps: int = 10, tol: float = 1e-10) -> torch.Tensor:
    r"""Modern Hopfield retrieval :math:`\xi \leftarrow X\,\mathrm{softmax}(\beta X^\top\xi)` (Ramsauer et al. 2020),
    iterated to ``tol`` or ``max_steps`` by :func:`cgar_src.theory.memory.retrieve` (chapter ``01_modern_hopfield``);
    X may be any real ``(d, N)`` matrix, ``xi`` is ``(B, d)``."""
    return memory.retrieve(_queries(as_tensor(X, "X", ndim=2), xi), X, beta, tol=tol, max_steps=max_steps).state


def sparse_mhn_retrieve(X, xi, beta: float, *, max_steps: int = 10, tol: float = 1e-10) -> torch.Tensor:
    r"""Sparse modern Hopfield retrieval :math:`\xi \leftarrow X\,\mathrm{sparsemax}(\beta X^\top\xi)` (Hu et al. 2023),
    the same iteration with the sparsemax activation (:func:`cgar_src.theory.memory.retrieve`)."""
    return memory.retrieve(_queries(as_tensor(X, "X", ndim=2), xi), X, beta, tol=tol, max_steps=max_steps,
                           activation="sparsemax").state


def linear_memory_readout(X, V, xi) -> torch.Tensor:
    r"""Linear (correlation-matrix) memory of key-value pairs: :math:`W = \sum_\mu v_\mu x_\mu^\top = V X^\top`
    (keys X, values V, both ``(d, N)``), read-out :math:`y = W\xi = V(X^\top\xi)` (computed without forming W),
    shape ``(B, d)``. Decode against the values V."""
    X, V = as_tensor(X, "X", ndim=2), as_tensor(V, "V", ndim=2)
    if V.shape[1] != X.shape[1]:
        raise ValueError(f"V must hold one value per key (N = {X.shape[1]} columns), got {tuple(V.shape)}")
    return (_queries(X, xi) @ X) @ V.T


def exact_recall(state, X, target) -> torch.Tensor:
    r"""Exact recall: :math:`\mathrm{sign}(s) = x_\mu` in every bit (a zero entry counts as wrong); shape ``(B,)``."""
    X = as_tensor(X, "X", ndim=2)
    state = _queries(X, state)
    target = indices(target, "target", X.shape[1], what="pattern indices")
    return (torch.sign(state) == X.T[target]).all(-1)


def top1(state, X, target) -> torch.Tensor:
    r"""Top-1 (winner-take-all) read-out: :math:`\arg\max_\nu x_\nu^\top s = \mu`; shape ``(B,)``."""
    X = as_tensor(X, "X", ndim=2)
    state = _queries(X, state)
    target = indices(target, "target", X.shape[1], what="pattern indices")
    return (state @ X).argmax(-1) == target


def gated_retrieve(X, K, xi, c, *, alpha: float, beta: float, lam: float, tol: float = 1e-10,
                   max_iter: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The context-gated memory on this workload (book chapters ``02_two_stage`` to ``05_fixed_point``): scores
    :math:`s_q = X^\top\xi/\sqrt d`, :math:`s_c = K^\top c/\sqrt d` (context keys K, contexts c), the coupled fixed
    point :math:`p^* = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c + \lambda p^*)))` (sparsemax gate), and the
    retrieved state :math:`X p^*`. Returns ``(state, p)``, shapes ``(B, d)`` and ``(B, N)``."""
    X, K = as_tensor(X, "X", ndim=2), as_tensor(K, "K", ndim=2)
    if K.shape != X.shape:
        raise ValueError(f"K must have the shape of X {tuple(X.shape)}, got {tuple(K.shape)}")
    xi, c = _queries(X, xi), _queries(X, c)
    if c.shape != xi.shape:
        raise ValueError(f"c must have the shape of xi {tuple(xi.shape)}, got {tuple(c.shape)}")
    scale = X.shape[0] ** 0.5
    fp = fixed_point(xi @ X / scale, c @ K / scale, alpha, beta, lam, tol=tol, max_iter=max_iter)
    return fp.p @ X.T, fp.p


def retrieve(model: str, X, xi, *, beta: float = 1.0, n: int = 3, max_sweeps: int = 10, V=None) -> torch.Tensor:
    """Final state of ``model`` (one of :data:`MODELS`) for every query row: dispatches to the functions above
    (``beta`` for the MHNs, ``n`` for the polynomial DAM, ``max_sweeps`` for the asynchronous binary networks, the
    values ``V`` for the linear memory, whose state is decoded against V)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "hopfield":
        return hopfield_retrieve(X, xi, max_sweeps=max_sweeps)
    if model in ("dam_poly", "dam_exp"):
        return dam_retrieve(X, xi, energy=model[4:], n=n, max_sweeps=max_sweeps)
    if model == "mhn":
        return mhn_retrieve(X, xi, beta)
    if model == "sparse_mhn":
        return sparse_mhn_retrieve(X, xi, beta)
    if V is None:
        raise ValueError("the linear memory needs its values V")
    return linear_memory_readout(X, V, xi)
