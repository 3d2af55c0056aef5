r"""Capacities of the related associative memories on one workload (book: chapter ``01b_related_memories``).

The workload: N random patterns :math:`x_\mu \in \{-1, +1\}^d`; a query is a stored pattern with every bit flipped
with probability :math:`\rho`; the context-gated memory also gets a context, the target's key :math:`k_\mu` with bits
flipped with probability :math:`\rho_c`. Read-outs of a final state s: exact recall (:math:`\mathrm{sign}(s) = x_\mu`)
and top-1 (:math:`\arg\max_\nu x_\nu^\top s = \mu`). The **capacity** at dimension d is the largest N on the grid
2, 4, 8, ... at which at least 99% of the trials succeed, before the first failure. The models are those of
:mod:`cgar_src.theory.classic_memories`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .._validate import int_in_range, nonnegative, positive, positive_int
from . import classic_memories as cm

__all__ = ["Workload", "workload_accuracy", "capacity_scan", "capacity", "noise_scan", "linear_memory_threshold",
           "known_capacity_scales"]


@dataclass(frozen=True)
class Workload:
    """The models' settings on the workload: queries per point, the context's bit-flip probability, the MHNs' beta
    (times :math:`1/\\sqrt d`), the polynomial DAM's degree, and the context-gated memory's alpha, beta and couplings
    (its scores are overlaps divided by :math:`\\sqrt d`)."""

    n_trials: int = 200
    context_flip: float = 0.2
    beta_mhn: float = 4.0
    dam_n: int = 3
    gated_alpha: float = 1.0
    gated_beta: float = 4.0
    gated_lambdas: tuple[float, ...] = (0.0, 0.5, 1.0)

    def __post_init__(self):
        positive_int(self.n_trials, "n_trials")
        if not 0 <= nonnegative(self.context_flip, "context_flip") <= 0.5:
            raise ValueError(f"context_flip must be in [0, 0.5], got {self.context_flip}")
        positive(self.beta_mhn, "beta_mhn")
        int_in_range(self.dam_n, "dam_n", 2)
        positive(self.gated_alpha, "gated_alpha")
        positive(self.gated_beta, "gated_beta")
        if len(self.gated_lambdas) == 0:
            raise ValueError("gated_lambdas must not be empty")
        for lam in self.gated_lambdas:
            nonnegative(lam, "gated_lambdas")

    @property
    def models(self) -> list[str]:
        """The classic models, then ``gated_<lambda>`` for every coupling."""
        return list(cm.MODELS) + [f"gated_{l:g}" for l in self.gated_lambdas]


def workload_accuracy(wl: Workload, d: int, n: int, flip: float, seed: int,
                      models: Iterable[str] | None = None) -> dict[str, tuple[float, float]]:
    """(exact recall, top-1) accuracy of every model in ``models`` (default: all of ``wl.models``) on one workload
    drawn from ``seed``: the same patterns, keys, values, targets, queries and contexts for every model."""
    d, n, seed = positive_int(d, "d"), positive_int(n, "n"), int_in_range(seed, "seed", 0)
    models = wl.models if models is None else list(models)
    unknown = [m for m in models if m not in wl.models]
    if unknown:
        raise ValueError(f"models must be among {wl.models}, got {unknown}")
    gen = torch.Generator().manual_seed(seed)
    X, K, V = cm.random_patterns(n, d, gen), cm.random_patterns(n, d, gen), cm.random_patterns(n, d, gen)
    target = torch.randint(n, (wl.n_trials,), generator=gen)
    q, c = cm.noisy_queries(X, target, flip, gen), cm.noisy_queries(K, target, wl.context_flip, gen)
    out = {}
    for m in models:
        if m.startswith("gated_"):
            state, _ = cm.gated_retrieve(X, K, q, c, alpha=wl.gated_alpha, beta=wl.gated_beta, lam=float(m[6:]))
        else:
            state = cm.retrieve(m, X, q.clone(), beta=wl.beta_mhn / math.sqrt(d), n=wl.dam_n, V=V)
        ref = V if m == "linear" else X  # the linear memory recalls the value stored with the key
        out[m] = (cm.exact_recall(state, ref, target).double().mean().item(),
                  cm.top1(state, ref, target).double().mean().item())
    return out


def capacity_scan(wl: Workload, dims: Sequence[int], n_max: int, flip: float, seed: int, *, d_curve: int | None = None,
                  level: float = 0.99, floor: float = 0.05) -> dict[int, dict[str, dict[int, tuple[float, float]]]]:
    """Accuracies ``acc[d][model][N]`` for N = 2, 4, ..., up to ``n_max``, workload seed ``seed + 1000 d + N``. A
    model leaves the scan once both read-outs are below ``level`` (at ``d_curve``, used for the accuracy curves: once
    both are below ``floor``)."""
    n_max = int_in_range(n_max, "n_max", 2)
    grid = [2 ** k for k in range(1, int(math.log2(n_max)) + 1)]
    acc = {d: {m: {} for m in wl.models} for d in dims}
    for d in dims:
        alive = list(wl.models)
        for n in grid:
            if not alive:
                break
            res = workload_accuracy(wl, d, n, flip, seed + 1000 * d + n, models=alive)
            for m in list(alive):
                acc[d][m][n] = res[m]
                if max(res[m]) < (floor if d == d_curve else level):
                    alive.remove(m)
    return acc


def capacity(curve: Mapping[int, tuple[float, float]], which: int, level: float = 0.99) -> int:
    """The largest N of ``curve`` ({N: (exact, top-1)}) with read-out ``which`` (0: exact, 1: top-1) at least
    ``level``, before the first N below it; 0 if the smallest N already fails."""
    which = int_in_range(which, "which", 0, 1)
    cap = 0
    for n in sorted(curve):
        if curve[n][which] < level:
            break
        cap = n
    return cap


def noise_scan(wl: Workload, d: int, n: int, flips: Sequence[float],
               seed: int) -> dict[float, dict[str, tuple[float, float]]]:
    """Accuracies of every model at every query noise in ``flips`` (workload seed ``seed + 7 + int(1000 rho)``)."""
    return {rho: workload_accuracy(wl, d, n, rho, seed + 7 + int(1000 * rho)) for rho in flips}


def linear_memory_threshold(d: int) -> int:
    r"""The smallest integer :math:`N \ge 2` with :math:`N\ln N \ge d^2/2`: the top-1 threshold of the linear memory
    (conjectured sharp at :math:`d^2 \sim 2N\log N` for Gaussian pairs)."""
    target = positive_int(d, "d") ** 2 / 2
    hi = 2
    while hi * math.log(hi) < target:
        hi *= 2
    lo = max(hi // 2, 1)  # lo fails (or is below 2), hi passes: bisect for the first passing N in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mid * math.log(mid) >= target else (mid, hi)
    return hi


def known_capacity_scales(d: int, dam_n: int) -> dict[str, float]:
    r"""The known capacity scales at dimension d, by name: :math:`0.138\,d` (Amit et al.), :math:`d/(2\ln d)`
    (McEliece et al.), :math:`d^{n-1}/(2(2n-3)!!\ln d)` (Krotov and Hopfield, degree ``dam_n``) and
    :func:`linear_memory_threshold`."""
    d, dam_n = int_in_range(d, "d", 2), int_in_range(dam_n, "dam_n", 2)
    double_factorial = math.prod(range(2 * dam_n - 3, 0, -2))  # (2n-3)!!
    return {"0.138 d": 0.138 * d, "d / (2 ln d)": d / (2 * math.log(d)),
            f"d^{dam_n - 1} / (2 (2n-3)!! ln d)": d ** (dam_n - 1) / (2 * double_factorial * math.log(d)),
            "N ln N = d^2 / 2  (solve for N)": linear_memory_threshold(d)}
