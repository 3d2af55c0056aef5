r"""Stage 2 and the coupled system: gated retrieval, the self-consistent map and its fixed point.

Book chapters :ref:`ch-two-stage` (energy), :ref:`ch-separation` (gap), :ref:`ch-fixed-point` (Theorem 3.4). Our
reconstruction (:ref:`ch-two-stage`, equations :eq:`gated-retrieval` and :eq:`coupled-map`): scores
:math:`s_q = X^\top\xi`, :math:`s_c = K^\top c`, gate :math:`g = G_\alpha(s_c + \lambda p)`, retrieval
:math:`p = \mathrm{softmax}(\beta(s_q + \lambda g))`, so the retrieval distribution solves
:math:`p^* = \Phi_{\alpha,\lambda}(p^*)` with

.. math:: \Phi_{\alpha,\lambda}(p) = \mathrm{softmax}\big(\beta(s_q + \lambda G_\alpha(s_c + \lambda p))\big).

Scores carry any leading batch axes; the memory axis is last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import as_tensor, boolean, indices, nonnegative, positive, positive_int
from .gate import GateKind, check_kind, eta, gate, gate_jacobian_at, gate_unchecked

__all__ = [
    "gated_energy",
    "gated_retrieval",
    "phi",
    "FixedPoint",
    "fixed_point",
    "support_screen",
    "contraction_bound",
    "phi_jacobian",
    "phi_unchecked",
    "phi_jacobian_unchecked",
    "spectral_radius",
    "first_order",
    "feedback_term",
    "Separation",
    "effective_separation",
    "retrieval_probability_bound",
    "error_log_odds",
    "alpha_crit_coupled",
    "measured_alpha_crit_batch",
]


def check_scores(s_q, s_c=None):
    s_q = as_tensor(s_q, "s_q")
    if s_c is None:
        return s_q, None
    s_c = as_tensor(s_c, "s_c", dtype=s_q.dtype)
    try:
        shape = torch.broadcast_shapes(s_q.shape, s_c.shape)
    except RuntimeError:
        shape = None
    if shape is None or shape[-1] != s_q.shape[-1] or s_c.shape[-1] != s_q.shape[-1]:
        raise ValueError(f"s_c (or g) must broadcast against s_q {tuple(s_q.shape)} with the same number of memories, "
                         f"got {tuple(s_c.shape)}")
    return s_q.expand(shape), s_c.expand(shape)


def gated_energy(xi, X, g, beta: float, lam: float) -> torch.Tensor:
    r"""Gated retrieval energy :math:`E(\xi; g) = -\beta^{-1}\log\sum_i e^{\beta(x_i^\top\xi + \lambda g_i)} + \tfrac12\|\xi\|^2`.

    Its gradient step :math:`\xi - \nabla_\xi E = X\,\mathrm{softmax}(\beta(X^\top\xi + \lambda g))` is the gated update."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    X = as_tensor(X, "X", ndim=2)
    xi = as_tensor(xi, "xi", dtype=X.dtype)
    g = as_tensor(g, "g", dtype=X.dtype)
    if xi.shape[-1] != X.shape[0] or g.shape[-1] != X.shape[1]:
        raise ValueError(f"xi must end in d = {X.shape[0]} and g in N = {X.shape[1]}; got {tuple(xi.shape)}, {tuple(g.shape)}")
    return -torch.logsumexp(beta * (xi @ X + lam * g), -1) / beta + 0.5 * (xi * xi).sum(-1)


def gated_retrieval(s_q, g, beta: float, lam: float) -> torch.Tensor:
    r"""Retrieval distribution :math:`p = \mathrm{softmax}(\beta(s_q + \lambda g))`: the gate adds :math:`\lambda g_i` to logit i."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    s_q, g = check_scores(s_q, g)
    return torch.softmax(beta * (s_q + lam * g), dim=-1)


def phi(p, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""The self-consistency map :math:`\Phi_{\alpha,\lambda}(p)`."""
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    s_q, s_c = check_scores(s_q, s_c)
    p = as_tensor(p, "p", dtype=s_q.dtype)
    return _phi(p, s_q, s_c, alpha, beta, lam, check_kind(kind))[0]


def _phi(p, s_q, s_c, alpha: float, beta: float, lam: float, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`phi` without input validation (the solver's inner loop); returns Phi(p) and the gate G(s_c + lam p)."""
    g = gate_unchecked(s_c + lam * p, alpha, kind)
    return torch.softmax(beta * (s_q + lam * g), dim=-1), g


def contraction_bound(alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> float:
    r"""Global Lipschitz bound :math:`L = \beta\lambda^2 / (2\eta(\alpha))` of :math:`\Phi` (Theorem 3.4), with
    :math:`\eta = \alpha` (sparsemax: :math:`\beta\lambda^2/(2\alpha)`) or :math:`2\alpha` (entropic:
    :math:`\beta\lambda^2/(4\alpha)`), :func:`cgar_src.theory.gate.eta`. Sharp: two tied memories attain it and
    have three fixed points once it exceeds 1 (Theorem ``thm-sharpness``, chapter ``05_fixed_point``)."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    return beta * lam**2 / (2 * eta(alpha, kind))


@dataclass
class FixedPoint:
    """Result of :func:`fixed_point`: the fixed point p, its gate g, per-instance residual and iterations, the
    contraction bound, and how many columns the iteration ran on (N, or fewer after :func:`support_screen`)."""

    p: torch.Tensor
    g: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    bound: float
    columns: int


def fixed_point(
    s_q,
    s_c,
    alpha: float,
    beta: float,
    lam: float,
    *,
    kind: GateKind = "sparsemax",
    tol: float = 1e-10,
    max_iter: int = 1000,
    p0=None,
    damping: float = 1.0,
    screen: bool | None = None,
) -> FixedPoint:
    r"""Solve :math:`p = \Phi_{\alpha,\lambda}(p)` for a whole batch by (damped) fixed-point iteration.

    ``p_{t+1} = (1-\omega) p_t + \omega\Phi(p_t)``. The default start is the first-order solution
    :math:`\Phi(0) = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))`. Each instance stops counting iterations
    when its residual :math:`\|\Phi(p)-p\|_\infty` drops to ``tol``; the loop ends when all have converged or at
    ``max_iter``. Below the contraction bound (L < 1) convergence is geometric with rate L (Theorem 3.4, chapter
    ``05_fixed_point``).

    ``screen`` (sparsemax gate only): iterate on the screened columns of :func:`support_screen` plus one column for
    the rest, exact because :math:`\Phi(p)` depends on p only through the screened columns (chapter
    ``03_separation``). The default (``None``) screens with the default start and iterates on all N columns when
    ``p0`` is given or the gate is softmax; ``screen=False`` never. ``screen=True`` screens from ``p0`` too: the
    iteration on the screened columns is the same, and off them the result has the fixed point's exact form
    :math:`p_j \propto e^{\beta s_{q,j}}` (there p0 enters only through its entry at the largest unscreened
    :math:`s_q`, in the residual).
    """
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    tol = positive(tol, "tol")
    max_iter = positive_int(max_iter, "max_iter")
    damping = positive(damping, "damping")
    if damping > 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    s_q, s_c = check_scores(s_q, s_c)
    kind = check_kind(kind)
    if screen is None:
        screen = kind == "sparsemax" and p0 is None
    elif boolean(screen, "screen") and kind != "sparsemax":
        raise ValueError(f"screen=True needs the sparsemax gate (only its support can be screened), got kind={kind!r}")
    if p0 is not None:
        p0 = as_tensor(p0, "p0", dtype=s_q.dtype)
        try:
            p0 = p0.expand_as(s_q)
        except RuntimeError:
            raise ValueError(f"p0 must broadcast against s_q {tuple(s_q.shape)}, got {tuple(p0.shape)}") from None
    batch, n = s_q.shape[:-1], s_q.shape[-1]
    sq, sc = s_q.reshape(-1, n), s_c.reshape(-1, n)
    x0 = None if p0 is None else p0.reshape(-1, n)
    idx = _support_screen(sc, alpha, lam) if screen else None
    columns = n if idx is None else idx.shape[-1]
    if idx is None:  # the iterate is p itself
        consts = (sq, sc)

        def step_map(x, c):
            return _phi(x, c[0], c[1], alpha, beta, lam, kind)

        x = step_map(torch.zeros_like(sq), consts)[0] if x0 is None else x0.clone()
    else:  # the iterate is [p on the screened columns C, p at the largest unscreened s_q]
        rest = beta * sq.scatter(-1, idx, float("-inf"))
        rest_max = rest.amax(-1)
        consts = (sq.gather(-1, idx), sc.gather(-1, idx), torch.logsumexp(rest, -1), rest_max)

        def step_map(x, c):
            sq_c, sc_c, lse_rest, m_rest = c
            g_c = gate_unchecked(sc_c + lam * x[:, :-1], alpha, kind)
            logits = beta * (sq_c + lam * g_c)
            log_z = torch.logaddexp(torch.logsumexp(logits, -1), lse_rest)
            return torch.cat([torch.exp(logits - log_z[:, None]), torch.exp(m_rest - log_z)[:, None]], -1), g_c

        if x0 is None:
            x = step_map(sq.new_zeros(sq.shape[0], columns + 1), consts)[0]
        else:
            x = torch.cat([x0.gather(-1, idx), x0.gather(-1, rest.argmax(-1, keepdim=True))], -1)
    x, g, residual, iterations = _iterate(step_map, x, consts, tol=tol, max_iter=max_iter, damping=damping)
    if idx is None:
        p = x
    else:  # unscreened columns share one factor: p_j = p_{j*} exp(beta (s_q,j - s_q,j*))
        p = torch.exp(rest - rest_max[:, None]) * x[:, -1:]
        p.scatter_(-1, idx, x[:, :-1])
        g = torch.zeros_like(sq).scatter_(-1, idx, g)
    p, g = p.reshape(s_q.shape), g.reshape(s_q.shape)
    residual, iterations = residual.reshape(batch), iterations.reshape(batch)
    return FixedPoint(p=p, g=g, residual=residual, iterations=iterations, converged=residual <= tol,
                      bound=contraction_bound(alpha, beta, lam, kind), columns=columns)


def _iterate(step_map, x: torch.Tensor, consts: tuple, *, tol: float, max_iter: int,
             damping: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The solvers' loop over the rows of a ``(B, K)`` iterate: :math:`x \leftarrow (1-\omega)x + \omega F(x)` with
    ``(F(x), gate) = step_map(x, consts)``, every tensor of ``consts`` holding one row per instance. A row stops when
    its residual :math:`\|F(x) - x\|_\infty` is at most ``tol`` (it keeps that x, whose image is within ``tol``); each
    step evaluates and updates only the rows still moving; at most ``max_iter`` updates. Returns ``(x, gate at x,
    residual, iterations)``; the gate has the width step_map gives it."""
    n_rows = x.shape[0]
    g = None  # the gate at the returned x
    iterations = torch.zeros(n_rows, dtype=torch.long)
    residual = torch.full((n_rows,), float("inf"), dtype=x.dtype)
    active = torch.arange(n_rows)
    for step in range(max_iter + 1):
        every = active.numel() == n_rows  # skip the gathers while no row has converged
        xa, ca = (x, consts) if every else (x[active], tuple(t[active] for t in consts))
        new, g_active = step_map(xa, ca)
        if g is None:
            g = g_active.new_empty(n_rows, g_active.shape[-1])
        res = (new - xa).abs().amax(-1)
        residual[active] = res
        g[active] = g_active
        moving = res > tol
        active, new = active[moving], new[moving]
        if active.numel() == 0 or step == max_iter:
            break
        iterations[active] += 1
        x[active] = new if damping == 1 else (1 - damping) * x[active] + damping * new
    return x, g, residual, iterations


def support_screen(s_c, alpha: float, lam: float) -> torch.Tensor | None:
    r"""Support screening for the sparsemax gate (book chapter ``03_separation``): the columns of a ``(B, N)`` batch
    of context scores that can carry gate mass.

    For every p on the simplex, :math:`u = s_c + \lambda p` and :math:`G_\alpha(u) = \mathrm{sparsemax}(u/\alpha)` is
    zero wherever :math:`u_i \le \max u - \alpha` (the threshold is at least :math:`\max(u/\alpha) - 1` because the
    largest gate entry is at most 1). As :math:`u_i \le s_{c,i} + \lambda` and :math:`\max u \ge \max s_c`, only columns
    with :math:`s_{c,i} > \max s_c - \alpha - \lambda` can ever enter the support; there :math:`\Phi` depends on p only
    through those columns, and all other columns of :math:`\Phi(p)` are :math:`e^{\beta s_{q,j}}/Z`, one common factor.
    Returns the indices of the K largest :math:`s_c` per row (K = the most candidates in any row, with a small
    margin for round-off; extra columns change nothing), or None when no column can be dropped."""
    return _support_screen(as_tensor(s_c, "s_c", ndim=2), positive(alpha, "alpha"), nonnegative(lam, "lam"))


def _support_screen(s_c: torch.Tensor, alpha: float, lam: float) -> torch.Tensor | None:
    """:func:`support_screen` without input validation (called by the solver on validated scores)."""
    top = s_c.amax(-1, keepdim=True)
    margin = (alpha + lam) * (1 + 1e-6) + 1e-9 * top.abs()
    k = int((s_c > top - margin).sum(-1).max())
    if k >= s_c.shape[-1]:
        return None
    return s_c.topk(k, dim=-1).indices


def phi_jacobian(p, s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Jacobian of :math:`\Phi` at p: :math:`\beta\lambda^2\,(\mathrm{diag}\,q - qq^\top)\,J_G(s_c + \lambda p)` with
    :math:`q = \Phi(p)`; shape ``(..., N, N)``. Its norm is at most the contraction bound. A product of two symmetric
    PSD matrices, so its eigenvalues are real and non-negative (Lemma ``lem-real-spectrum``, chapter
    ``05_fixed_point``)."""
    alpha, beta, lam = positive(alpha, "alpha"), positive(beta, "beta"), nonnegative(lam, "lam")
    s_q, s_c = check_scores(s_q, s_c)
    p = as_tensor(p, "p", dtype=s_q.dtype)
    return phi_jacobian_unchecked(p, s_q, s_c, alpha, beta, lam, check_kind(kind))[1]


def phi_unchecked(p: torch.Tensor, s_q: torch.Tensor, s_c: torch.Tensor, alpha, beta, lam, kind: str) -> torch.Tensor:
    """:func:`phi` without input validation, for inner loops whose inputs were validated once (alpha, beta, lam may
    be tensors that broadcast against the scores, one value per row)."""
    g = gate_unchecked(s_c + lam * p, alpha, kind)
    return torch.softmax(beta * (s_q + lam * g), dim=-1)


def phi_jacobian_unchecked(p: torch.Tensor, s_q: torch.Tensor, s_c: torch.Tensor, alpha: float, beta: float,
                           lam: float, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\Phi(p)` and :func:`phi_jacobian` without input validation (scalar alpha, beta, lam)."""
    g = gate_unchecked(s_c + lam * p, alpha, kind)
    q = torch.softmax(beta * (s_q + lam * g), dim=-1)
    S = torch.diag_embed(q) - q.unsqueeze(-1) * q.unsqueeze(-2)
    return q, beta * lam**2 * S @ gate_jacobian_at(g, alpha, kind)


def spectral_radius(J: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue modulus of each square matrix in ``J`` (the local contraction rate at a fixed point)."""
    return torch.linalg.eigvals(J).abs().amax(-1)


def first_order(s_q, s_c, alpha: float, beta: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""First-order approximation: drop the feedback, :math:`p^{(1)} = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))`."""
    s_q, s_c = check_scores(s_q, s_c)
    return gated_retrieval(s_q, gate(s_c, alpha, kind), beta, lam)


def feedback_term(p, s_c, alpha: float, lam: float, kind: GateKind = "sparsemax") -> torch.Tensor:
    r"""Second-order feedback :math:`R = G_\alpha(s_c + \lambda p) - G_\alpha(s_c)`; :math:`\|R\|_2 \le \lambda\|p\|_2/\eta(\alpha)`."""
    return gate(s_c + lam * p, alpha, kind) - gate(s_c, alpha, kind)


@dataclass
class Separation:
    """Gaps of the target memory against its strongest competitor (all of shape ``batch``)."""

    raw: torch.Tensor
    gate: torch.Tensor
    effective: torch.Tensor


def _split(v: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's entry and the competitors' entries (the target masked to -inf), one copy of ``v``."""
    t = target.unsqueeze(-1)
    return v.gather(-1, t).squeeze(-1), v.scatter(-1, t, float("-inf"))


def _gap(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    own, others = _split(v, target)
    return own - others.amax(-1)


def error_log_odds(s_q, g, target, beta: float, lam: float) -> torch.Tensor:
    r""":math:`\log((1-p_\mu)/p_\mu) = \log\sum_{j\ne\mu} e^{\beta(\ell_j - \ell_\mu)}` with
    :math:`\ell = s_q + \lambda g`, computed from the logits, so it stays exact where :math:`1 - p_\mu` underflows."""
    beta, lam = positive(beta, "beta"), nonnegative(lam, "lam")
    s_q, g = check_scores(s_q, g)
    target = indices(target, "target", s_q.shape[-1], shape=s_q.shape[:-1], what="memory indices")
    own, others = _split(beta * (s_q + lam * g), target)
    return torch.logsumexp(others, -1) - own


def effective_separation(s_q, g, target, lam: float) -> Separation:
    r""":math:`\Delta_{raw} = s_{q,\mu} - \max_{j\ne\mu}s_{q,j}`, :math:`\Delta_{gate} = g_\mu - \max_{j\ne\mu} g_j` and
    :math:`\Delta_{eff} = \min_{j\ne\mu}[(s_{q,\mu}+\lambda g_\mu) - (s_{q,j}+\lambda g_j)] \ge \Delta_{raw} + \lambda\Delta_{gate}`
    (Theorem ``thm-separation``)."""
    lam = nonnegative(lam, "lam")
    s_q, g = check_scores(s_q, g)
    target = indices(target, "target", s_q.shape[-1], shape=s_q.shape[:-1], what="memory indices")
    return Separation(raw=_gap(s_q, target), gate=_gap(g, target), effective=_gap(s_q + lam * g, target))


def retrieval_probability_bound(delta, n_memories: int, beta: float) -> torch.Tensor:
    r"""Lower bound :math:`p_\mu \ge 1/(1 + (N-1)e^{-\beta\Delta})` on the target's retrieval probability."""
    beta = positive(beta, "beta")
    n_memories = positive_int(n_memories, "n_memories")
    delta = torch.as_tensor(delta)
    if n_memories == 1:
        return torch.ones_like(delta)
    return torch.sigmoid(beta * delta - math.log(n_memories - 1))


def alpha_crit_coupled(s_q, s_c, beta: float, lam: float) -> torch.Tensor:
    r"""Critical penalisation of the sparsemax gate *with feedback* (book chapter ``04_phase_transition``).

    The one-hot gate :math:`e_m` on :math:`m = \arg\max s_c` is a fixed point iff
    :math:`\alpha \le \alpha_{crit}(\lambda) = \min_{j\ne m}\,(u_m - u_j)` with :math:`u = s_c + \lambda p^\circ` and
    :math:`p^\circ = \mathrm{softmax}(\beta(s_q + \lambda e_m))` (and provided m stays the top of u). At
    :math:`\lambda = 0` this is :math:`s_{c,(1)} - s_{c,(2)}`."""
    s_q, s_c = check_scores(s_q, s_c)
    lam = nonnegative(lam, "lam")
    m = s_c.argmax(-1, keepdim=True)
    onehot = torch.zeros_like(s_c).scatter(-1, m, 1.0)
    u = s_c + lam * gated_retrieval(s_q, onehot, beta, lam)
    return u.gather(-1, m).squeeze(-1) - u.scatter(-1, m, float("-inf")).amax(-1)


def measured_alpha_crit(s_q, s_c, beta: float, lam: float, *, lo: float, hi: float, kind: GateKind = "sparsemax",
                        xtol: float = 1e-10, one_tol: float = 1e-12) -> float:
    """Measure the transition of one instance by bisection on alpha: the largest alpha whose fixed-point gate
    still has a peak of 1 (within ``one_tol``). Requires the peak to be 1 at ``lo`` and below 1 at ``hi``."""
    lo, hi, xtol = positive(lo, "lo"), positive(hi, "hi"), positive(xtol, "xtol")
    if not lo < hi:
        raise ValueError(f"lo must be < hi, got lo={lo}, hi={hi}")

    def one_hot(alpha: float) -> bool:
        fp = fixed_point(s_q, s_c, alpha, beta, lam, kind=kind, tol=1e-14, max_iter=10_000)
        return bool(fp.g.amax(-1).min() >= 1 - one_tol)

    if not one_hot(lo) or one_hot(hi):
        raise ValueError(f"the gate must be one-hot at lo={lo} and not at hi={hi}; widen the bracket")
    while hi - lo > xtol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if one_hot(mid) else (lo, mid)
    return 0.5 * (lo + hi)


def measured_alpha_crit_batch(s_q, s_c, beta: float, lam, *, lo, hi, n_bisect: int = 40, tol: float = 1e-13,
                              max_iter: int = 5000, one_tol: float = 1e-12) -> torch.Tensor:
    r"""Batched :func:`measured_alpha_crit` (book chapter ``04_phase_transition``): for every row of ``s_q``, ``s_c``
    (shape ``(B, N)``), with its own coupling ``lam`` (scalar or shape ``(B,)``), bisect on alpha for the largest
    alpha at which the sparsemax gate at the fixed point is one-hot (peak within ``one_tol`` of 1).

    Each probe solves :math:`p = \Phi_{\alpha,\lambda}(p)` by undamped iteration from the first-order start
    :math:`\Phi(0)` with the loop of :func:`fixed_point`, on all N columns and with a per-row alpha. ``lo``, ``hi``
    (scalars or shape ``(B,)``) must bracket the transition: one-hot at ``lo``, not at ``hi``; rows where they do not
    raise ValueError. Returns the midpoints of the final brackets, shape ``(B,)``."""
    beta, tol = positive(beta, "beta"), positive(tol, "tol")
    n_bisect, max_iter = positive_int(n_bisect, "n_bisect"), positive_int(max_iter, "max_iter")
    s_q, s_c = check_scores(as_tensor(s_q, "s_q", ndim=2), s_c)
    B = s_q.shape[0]

    def per_row(x, name):
        t = torch.as_tensor(x, dtype=s_q.dtype).expand(B).clone()
        if not torch.isfinite(t).all() or (t < 0).any() or (name != "lam" and (t <= 0).any()):
            raise ValueError(f"{name} must be finite and {'>= 0' if name == 'lam' else '> 0'} (scalar or one per row)")
        return t

    lam_t, lo_t, hi_t = per_row(lam, "lam"), per_row(lo, "lo"), per_row(hi, "hi")
    if (lo_t >= hi_t).any():
        raise ValueError("lo must be < hi in every row")

    def step_map(x, c):  # Phi with one alpha and one lambda per row
        sq, sc, a, l = c
        g = gate_unchecked(sc + l * x, a, "sparsemax")
        return torch.softmax(beta * (sq + l * g), -1), g

    def one_hot(alpha: torch.Tensor) -> torch.Tensor:
        consts = (s_q, s_c, alpha[:, None], lam_t[:, None])
        x = step_map(torch.zeros_like(s_q), consts)[0]
        g = _iterate(step_map, x, consts, tol=tol, max_iter=max_iter, damping=1.0)[1]
        return g.amax(-1) >= 1 - one_tol

    if not bool(one_hot(lo_t).all()) or bool(one_hot(hi_t).any()):
        raise ValueError("the gate must be one-hot at lo and not at hi in every row; widen the brackets")
    for _ in range(n_bisect):
        mid = 0.5 * (lo_t + hi_t)
        ok = one_hot(mid)
        lo_t, hi_t = torch.where(ok, mid, lo_t), torch.where(ok, hi_t, mid)
    return 0.5 * (lo_t + hi_t)
