r"""Random instances of the coupled gate-retrieval system for the theory chapters' checks (book: chapters
``05_fixed_point`` and ``05b_coupled_energy``).

An instance is :math:`(\alpha, \beta, \lambda, s_q, s_c)`: gate penalisation and inverse temperature drawn
log-uniformly, the coupling uniformly, query and context evidence standard normal, so that the map
:math:`\Phi_{\alpha,\lambda}(p) = \mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c + \lambda p)))` (chapter ``02_two_stage``)
is probed on both sides of the contraction bound :math:`\beta\lambda^2/(2\eta(\alpha))`.

Points of the simplex come from a Dirichlet distribution. ``torch.distributions`` has no generator argument, so
:func:`random_simplex` draws from torch's global generator: a chapter seeds it once (``torch.manual_seed``) and the
draws follow in the order the chapter makes them. Every other draw takes an explicit ``torch.Generator``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import nonnegative, positive, positive_int

__all__ = ["CouplingInstance", "log_uniform", "random_simplex", "random_instance"]


def _generator(gen) -> torch.Generator:
    if not isinstance(gen, torch.Generator):
        raise ValueError(f"gen must be a torch.Generator, got {type(gen).__name__}")
    return gen


def _range(bounds, name: str, *, log: bool) -> tuple[float, float]:
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi), got {bounds!r}") from None
    lo, hi = (positive(lo, name), positive(hi, name)) if log else (nonnegative(lo, name), nonnegative(hi, name))
    if not lo < hi:
        raise ValueError(f"{name} must have lo < hi, got {bounds!r}")
    return lo, hi


def log_uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    r"""One draw :math:`x = e^u`, :math:`u \sim U(\log lo, \log hi)` (float64), from ``gen``."""
    lo, hi = _range((lo, hi), "(lo, hi)", log=True)
    u = torch.empty(1, dtype=torch.float64).uniform_(math.log(lo), math.log(hi), generator=_generator(gen))
    return math.exp(u.item())


def random_simplex(n: int, size: int, conc: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    r"""``n`` points of the simplex :math:`\triangle^{size-1}` drawn from :math:`\mathrm{Dirichlet}(conc\cdot\mathbf 1)`,
    shape ``(n, size)``, from torch's *global* generator (see the module docstring)."""
    n, size, conc = positive_int(n, "n"), positive_int(size, "size"), positive(conc, "conc")
    return torch.distributions.Dirichlet(torch.full((size,), conc, dtype=dtype)).sample((n,))


@dataclass(frozen=True)
class CouplingInstance:
    """One instance of the coupled system: parameters and evidence vectors of shape ``(N,)``."""

    alpha: float
    beta: float
    lam: float
    s_q: torch.Tensor
    s_c: torch.Tensor


def random_instance(n_memories: int, gen: torch.Generator, *, alpha_range: tuple[float, float] = (0.2, 5.0),
                    beta_range: tuple[float, float] = (0.5, 8.0),
                    lam_range: tuple[float, float] = (0.0, 2.0)) -> CouplingInstance:
    r"""Draw, in this order from ``gen``: :math:`\alpha` and :math:`\beta` log-uniform on their ranges,
    :math:`\lambda` uniform on ``lam_range``, then :math:`s_q, s_c \sim \mathcal N(0, I_N)` (float64).

    The defaults are chapter ``05_fixed_point``'s ranges; ``05b_coupled_energy`` uses
    ``alpha_range=(0.1, 5), beta_range=(0.5, 10), lam_range=(0, 4)``."""
    n_memories, gen = positive_int(n_memories, "n_memories"), _generator(gen)
    alpha_range = _range(alpha_range, "alpha_range", log=True)
    beta_range = _range(beta_range, "beta_range", log=True)
    lam_lo, lam_hi = _range(lam_range, "lam_range", log=False)
    alpha, beta = log_uniform(*alpha_range, gen), log_uniform(*beta_range, gen)
    lam = torch.empty(1, dtype=torch.float64).uniform_(lam_lo, lam_hi, generator=gen).item()
    s_q = torch.randn(n_memories, generator=gen, dtype=torch.float64)
    s_c = torch.randn(n_memories, generator=gen, dtype=torch.float64)
    return CouplingInstance(alpha=alpha, beta=beta, lam=lam, s_q=s_q, s_c=s_c)
