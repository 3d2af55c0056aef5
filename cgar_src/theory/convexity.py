r"""The coupled energy's Hessian and its joint-convexity threshold, checked (book: chapter ``05b_coupled_energy``).

On the tangent space of the two simplices the Hessian of :math:`F(p, g)` (equation ``coupled-hessian``) is
:math:`[[\beta^{-1}\mathrm{diag}(1/p), -\lambda I], [-\lambda I, \alpha I]]` for the sparsemax gate
(:math:`\alpha\,\mathrm{diag}(1/g)` for the entropic one). Lemma ``lem-zero-sum``: :math:`c(p) = \min_{\sum u = 0}
\sum_i u_i^2/p_i\,/\,\|u\|^2 \ge 2`, tight as :math:`p \to (\tfrac12, \tfrac12, 0, \dots)`. Theorem
``thm-joint-convexity``: the tangent Hessian is positive definite at p iff :math:`c(p) > \beta\lambda^2/\alpha`, so F is
jointly convex iff :math:`\beta\lambda^2/(2\alpha) \le 1` (in the limit), Theorem 3.4's contraction bound.
Points of the simplex come from :func:`cgar_src.theory.sampling.random_simplex` (torch's global generator).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import as_tensor, int_in_range, positive_int
from .energy import convexity_constant, coupled_energy, hessian, tangent_hessian, zero_sum_basis
from .gate import GATE_KINDS
from .sampling import log_uniform, random_simplex

__all__ = ["hessian_autograd_error", "lemma_limit_points", "SignCheck", "convexity_sign_check"]


def hessian_autograd_error(n_memories: int, gen: torch.Generator, *, n_per_kind: int = 4, alpha: float = 0.7,
                           beta: float = 3.0, lam: float = 1.2) -> float:
    r"""Largest relative max-norm difference between :func:`~cgar_src.theory.energy.hessian` (the closed form
    :math:`\nabla^2 F`) and autograd's Hessian of F, over ``n_per_kind`` random points (p, g) and scores per gate."""
    n_memories, n_per_kind = int_in_range(n_memories, "n_memories", 2), positive_int(n_per_kind, "n_per_kind")
    err = 0.0
    for kind in GATE_KINDS:
        for _ in range(n_per_kind):
            p, g = random_simplex(2, n_memories)
            s_q = torch.randn(n_memories, generator=gen, dtype=torch.float64)
            s_c = torch.randn(n_memories, generator=gen, dtype=torch.float64)

            def f(x, s_q=s_q, s_c=s_c, kind=kind):
                return coupled_energy(x[:n_memories], x[n_memories:], s_q, s_c, alpha, beta, lam, kind)

            H_auto = torch.autograd.functional.hessian(f, torch.cat([p, g]))
            err = max(err, ((hessian(p, g, alpha, beta, lam, kind) - H_auto).abs().max() / H_auto.abs().max()).item())
    return err


def lemma_limit_points(eps, n_memories: int) -> torch.Tensor:
    r"""The lemma's limit: :math:`p = (\tfrac12 - (N-2)\varepsilon/2, \tfrac12 - (N-2)\varepsilon/2, \varepsilon, \dots,
    \varepsilon)` for every :math:`\varepsilon` in ``eps`` (shape ``(E,)``), shape ``(E, N)``; :math:`c(p) \to 2` as
    :math:`\varepsilon \to 0`."""
    eps = as_tensor(eps, "eps", ndim=1, dtype=torch.float64)
    n = int_in_range(n_memories, "n_memories", 3)
    if (eps <= 0).any() or ((n - 2) * eps >= 1).any():
        raise ValueError(f"eps must lie in (0, 1/(N-2)) so that p is in the open simplex, got {eps.tolist()}")
    return torch.cat([(0.5 - (n - 2) * eps / 2)[:, None].expand(-1, 2), eps[:, None].expand(-1, n - 2)], -1)


@dataclass
class SignCheck:
    r"""Theorem ``thm-joint-convexity`` checked on instances (alpha, beta, lambda) with threshold
    :math:`\beta\lambda^2/(2\alpha)` in [1/4, 4], each at a random point and at the extreme point: the smallest
    tangent eigenvalue against the criterion :math:`c(p) > \beta\lambda^2/\alpha` (``mismatches``), instances below
    the threshold whose random point is not PD (``below_not_pd``), above it by more than 1% whose extreme point is PD
    (``above_pd``), and whether the batched Hessian equals :func:`~cgar_src.theory.energy.tangent_hessian`."""

    threshold: torch.Tensor
    min_eig: torch.Tensor
    predicted_pd: torch.Tensor
    mismatches: int
    below_not_pd: int
    above_pd: int
    matches_library: bool

    @property
    def n_checked(self) -> int:
        return int(self.min_eig.numel())


def convexity_sign_check(n_check: int, extreme: torch.Tensor, gen: torch.Generator) -> SignCheck:
    r"""Draw ``n_check`` instances from ``gen`` (all alphas log-uniform on [0.1, 5], then all betas on [0.5, 10], then
    :math:`\lambda = \sqrt{2\alpha/\beta}\,f` with f log-uniform on [1/2, 2]), pair each with a Dirichlet(1) point and
    with ``extreme`` (a p near :math:`(\tfrac12, \tfrac12, 0, \dots)`), and compute the tangent Hessian
    :math:`B^\top[[\beta^{-1}\mathrm{diag}(1/p), -\lambda I], [-\lambda I, \alpha I]]B` batched over instances (the
    sparsemax gate's; g, drawn at random, does not enter it)."""
    n_check = positive_int(n_check, "n_check")
    extreme = as_tensor(extreme, "extreme", ndim=1, dtype=torch.float64)
    n = extreme.shape[0]
    alphas = torch.tensor([log_uniform(0.1, 5.0, gen) for _ in range(n_check)], dtype=torch.float64)
    betas = torch.tensor([log_uniform(0.5, 10.0, gen) for _ in range(n_check)], dtype=torch.float64)
    lams = (2 * alphas / betas).sqrt() * torch.tensor([log_uniform(0.5, 2.0, gen) for _ in range(n_check)],
                                                      dtype=torch.float64)
    thr = betas * lams**2 / (2 * alphas)  # the threshold, between 1/4 and 4
    P = torch.cat([random_simplex(n_check, n), extreme.expand(n_check, -1)])  # a random and the extreme point each
    G = random_simplex(2 * n_check, n)
    a, b, l = alphas.repeat(2), betas.repeat(2), lams.repeat(2)
    B = zero_sum_basis(n, torch.float64)
    eye = torch.eye(n - 1, dtype=torch.float64).expand(2 * n_check, -1, -1)
    Hpp = B.T @ torch.diag_embed(1 / P) @ B / b[:, None, None]
    H = torch.cat([torch.cat([Hpp, -l[:, None, None] * eye], -1),
                   torch.cat([-l[:, None, None] * eye, a[:, None, None] * eye], -1)], -2)
    min_eig = torch.linalg.eigvalsh(H)[:, 0]
    H_lib = torch.stack([tangent_hessian(P[i], G[i], a[i].item(), b[i].item(), l[i].item())
                         for i in range(0, 2 * n_check, 40)])
    predicted_pd = convexity_constant(P) > b * l**2 / a
    return SignCheck(threshold=thr, min_eig=min_eig, predicted_pd=predicted_pd,
                     mismatches=int(((min_eig > 0) != predicted_pd).sum()),
                     below_not_pd=int(((thr < 1) & (min_eig[:n_check] <= 0)).sum()),
                     above_pd=int(((thr > 1.01) & (min_eig[n_check:] > 0)).sum()),
                     matches_library=bool((H_lib - H[::40]).abs().max() < 1e-9 * H.abs().max()))
