r"""Uncertainty and paired comparisons for held-out accuracies (book: every transformer chapter).

* :func:`wilson` / :func:`accuracy_ci`: the Wilson score interval of a proportion (scipy), which stays inside
  [0, 1] and is not degenerate at 0/n or n/n (a percentile bootstrap prints "0.000 [0.000, 0.000]" there);
* :func:`compare`: two methods scored on the *same* queries. The paired difference of accuracies
  :math:`\hat\Delta = \mathrm{mean}_i(a_i - b_i)` with a seeded paired-bootstrap percentile interval (queries
  resampled, both methods kept together), and the exact McNemar test: under :math:`H_0` the discordant queries
  split as :math:`\mathrm{Binomial}(n_{a\,only} + n_{b\,only}, 1/2)`. The book calls a difference *real* only when
  the paired interval excludes 0, and otherwise says the methods are indistinguishable at this n.
* :func:`bootstrap_ci`: percentile bootstrap of a mean (for non-binary per-query quantities).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest

from .._validate import confidence_level, positive_int

__all__ = ["wilson", "accuracy_ci", "Comparison", "compare", "bootstrap_ci", "fmt_ci", "fmt_list"]


def _binary(x, name: str) -> np.ndarray:
    a = np.asarray(torch.as_tensor(x, dtype=torch.float64).flatten().cpu())
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold per-query correctness values 0 or 1")
    return a


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """Proportion ``k / n`` and its Wilson score interval at ``level``: (p, low, high)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, n = {n}], got {k!r}")
    confidence_level(level)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def accuracy_ci(correct, level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy of a 0/1 vector (one entry per query) with its Wilson interval: (mean, low, high)."""
    a = _binary(correct, "correct")
    return wilson(int(a.sum()), a.size, level)


def fmt_list(items: list[str]) -> str:
    """Items joined by commas, or ``"none"`` (how the chapters' verdicts name the settings a claim holds in)."""
    return ", ".join(items) if items else "none"


def fmt_ci(ci: tuple[float, float, float], digits: int = 3) -> str:
    """``0.650 [0.55, 0.74]``: a mean and its interval as the chapters print them."""
    return f"{ci[0]:.{digits}f} [{ci[1]:.2f}, {ci[2]:.2f}]"


@dataclass(frozen=True)
class Comparison:
    """Method A against method B on the same n queries."""

    n: int
    diff: float        # mean(a) - mean(b)
    lo: float          # paired-bootstrap interval of the difference
    hi: float
    p_value: float     # exact McNemar (two-sided binomial test on the discordant queries)
    n_a_only: int      # queries A gets right and B wrong
    n_b_only: int

    @property
    def real(self) -> bool:
        """The difference is called real only when its paired interval excludes 0."""
        return self.lo > 0 or self.hi < 0

    @property
    def better(self) -> bool:
        """A really beats B: the paired interval lies above 0."""
        return self.real and self.diff > 0

    @property
    def worse(self) -> bool:
        """A really loses to B: the paired interval lies below 0."""
        return self.real and self.diff < 0

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}], McNemar p = {self.p_value:.3g}"

    def verdict(self, a: str, b: str) -> str:
        """A sentence for the text: which is better, or that they are indistinguishable at this n."""
        if not self.real:
            return f"{a} and {b} are indistinguishable at n = {self.n} ({self})"
        return f"{a} {'beats' if self.diff > 0 else 'loses to'} {b} ({self})"


def compare(a, b, *, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> Comparison:
    """Paired comparison of two 0/1 correctness vectors on the same queries (see the module docstring)."""
    x, y = _binary(a, "a"), _binary(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same queries, got {x.size} and {y.size} entries")
    confidence_level(level)
    positive_int(n_boot, "n_boot")
    d = x - y
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    n10, n01 = int((d > 0).sum()), int((d < 0).sum())
    p = binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    return Comparison(n=d.size, diff=float(d.mean()), lo=float(lo), hi=float(hi), p_value=float(p),
                      n_a_only=n10, n_b_only=n01)


def bootstrap_ci(values: torch.Tensor, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (one per query) and its percentile-bootstrap interval at ``level``: (mean, low, high)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("values must not be empty")
    confidence_level(level)
    positive_int(n_boot, "n_boot")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(values.numel(), (n_boot, values.numel()), generator=gen)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return values.mean().item(), lo, hi
