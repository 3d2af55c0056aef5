r"""Uncertainty and paired comparisons for held-out accuracies (book: every transformer chapter).

* :func:`wilson` / :func:`accuracy_ci`: the Wilson score interval of a proportion (scipy), which stays inside
  [0, 1] and is not degenerate at 0/n or n/n (a percentile bootstrap prints "0.000 [0.000, 0.000]" there);
* :func:`compare`: two methods scored on the *same* queries. The paired difference of accuracies
  :math:`\hat\Delta = \mathrm{mean}_i(a_i - b_i)` with a seeded paired-bootstrap percentile interval (queries
  resampled, both methods kept together; shown, never decisive), and the exact McNemar test: under :math:`H_0` the
  discordant queries split as :math:`\mathrm{Binomial}(n_{a\,only} + n_{b\,only}, 1/2)`, which is the two-sided
  sign test on the paired differences :math:`a_i - b_i \in \{-1, 0, 1\}`;
* :func:`sign_test`: the same exact test for a non-binary per-query paired difference :math:`d_i` (a change of label
  mass, of :math:`\log N_{eff}`, of a KL divergence): ties :math:`d_i = 0` dropped, the number of positive
  :math:`d_i` among the rest is :math:`\mathrm{Binomial}(n_+ + n_-, 1/2)` under :math:`H_0` (median difference 0),
  with the mean and its bootstrap interval for display;
* :func:`holm`: Holm's step-down adjustment of a family of p-values (the claims ledger, chapter
  ``13_claims_ledger``);
* :func:`bootstrap_ci`: percentile bootstrap of a mean (for non-binary per-query quantities).

The book calls a difference *real* only when its exact paired test (McNemar for 0/1 outcomes, the sign test
otherwise) rejects at level :data:`ALPHA` = 0.05, two-sided; otherwise the methods are indistinguishable at this n.
The paired-bootstrap interval is printed beside it to show the size of the difference, but it never decides: with
few discordant queries it can exclude 0 while the exact test does not reject. Within a chapter each test is read at
level 0.05 on its own; the claims ledger corrects the tests its verdicts rest on as one family (:func:`holm`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest

from .._validate import confidence_level, nonnegative, positive_int

__all__ = ["ALPHA", "wilson", "accuracy_ci", "Comparison", "compare", "SignTest", "sign_test", "holm",
           "paired_from_record", "ledger_entry", "bootstrap_ci", "fmt_ci", "fmt_list", "paired_test", "PermutationTest",
           "permutation_test"]

ALPHA = 0.05   #: the level at which a paired difference is called real (two-sided exact test)


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


def _sign_p(n_pos: int, n_neg: int) -> float:
    """Exact two-sided sign test: P-value of ``n_pos`` successes in ``n_pos + n_neg`` fair coin flips (1 if none)."""
    return float(binomtest(n_pos, n_pos + n_neg, 0.5).pvalue) if n_pos + n_neg else 1.0


class _Decided:
    """The decision rule shared by :class:`Comparison` and :class:`SignTest` (both have ``diff`` and ``p_value``)."""

    diff: float
    p_value: float

    @property
    def real(self) -> bool:
        """The difference is called real only when the exact paired test rejects at level :data:`ALPHA`."""
        return self.p_value < ALPHA

    @property
    def direction(self) -> int:
        """The sign the test counts: +1 when more queries favour A than B, -1 when fewer, 0 when as many."""
        raise NotImplementedError

    @property
    def better(self) -> bool:
        """A really beats B: the exact test rejects and more queries favour A."""
        return self.real and self.direction > 0

    @property
    def worse(self) -> bool:
        """A really loses to B: the exact test rejects and more queries favour B."""
        return self.real and self.direction < 0

    def verdict(self, a: str, b: str) -> str:
        """A sentence for the text: which is better, or that they are indistinguishable at this n."""
        if not self.real:
            return f"{a} and {b} are indistinguishable at n = {self.n} ({self})"
        return f"{a} {'beats' if self.better else 'loses to'} {b} ({self})"


@dataclass(frozen=True)
class Comparison(_Decided):
    """Method A against method B on the same n queries (0/1 outcomes): exact McNemar test."""

    n: int
    diff: float        # mean(a) - mean(b)
    lo: float          # paired-bootstrap interval of the difference (display only)
    hi: float
    p_value: float     # exact McNemar (two-sided binomial test on the discordant queries)
    n_a_only: int      # queries A gets right and B wrong
    n_b_only: int

    test = "McNemar"

    @property
    def direction(self) -> int:
        """+1 when A alone is right more often than B alone (then ``diff`` > 0), -1 when less, 0 when as often."""
        return int(np.sign(self.n_a_only - self.n_b_only))

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}], McNemar p = {self.p_value:.3g}"


@dataclass(frozen=True)
class SignTest(_Decided):
    """A non-binary paired difference :math:`d_i` (A minus B per query) on n queries: exact two-sided sign test."""

    n: int
    diff: float        # mean of d
    lo: float          # percentile-bootstrap interval of the mean (display only)
    hi: float
    p_value: float     # exact sign test: Binomial(n_pos + n_neg, 1/2), ties dropped
    n_pos: int         # queries with d > 0
    n_neg: int         # queries with d < 0

    test = "sign"

    @property
    def direction(self) -> int:
        """+1 when more differences are positive than negative, -1 when fewer, 0 when as many (the mean ``diff``
        is shown beside it and can, for skewed differences, have the other sign)."""
        return int(np.sign(self.n_pos - self.n_neg))

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}], sign test p = {self.p_value:.3g}"

    def fmt(self, digits: int = 3) -> str:
        """The mean, its interval and the p-value with ``digits`` decimals."""
        return (f"{self.diff:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}], "
                f"sign test p = {self.p_value:.3g}")


def _diffs(diffs) -> torch.Tensor:
    """Per-query paired differences as a flat float64 tensor: non-empty and finite (ValueError naming ``diffs``)."""
    d = torch.as_tensor(diffs, dtype=torch.float64).flatten()
    if d.numel() == 0:
        raise ValueError("diffs must not be empty")
    if not torch.isfinite(d).all():
        raise ValueError("diffs must be finite per-query differences")
    return d


@dataclass(frozen=True)
class PermutationTest(_Decided):
    r"""A paired difference :math:`d_i` (A minus B per query) whose MEAN is tested: the paired permutation
    (sign-flip) test, under the null hypothesis that each :math:`d_i` is symmetric about 0. Used for per-query
    outcomes averaged over demonstration sets (shares, not 0/1), where the sign test would test the median instead."""

    n: int
    diff: float        # mean of d
    lo: float          # percentile-bootstrap interval of the mean (display only)
    hi: float
    p_value: float     # (1 + #{|mean of flipped d| >= |mean of d|}) / (1 + n_perm), two-sided
    n_perm: int        # random sign flips drawn
    n_pos: int         # queries with d > 0
    n_neg: int         # queries with d < 0

    test = "permutation"

    @property
    def direction(self) -> int:
        """+1 when the mean difference is positive, -1 when negative, 0 when it is 0."""
        return int(np.sign(round(self.diff, 12)))

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}], permutation p = {self.p_value:.3g}"

    def fmt(self, digits: int = 3) -> str:
        """The mean, its interval and the p-value with ``digits`` decimals."""
        return (f"{self.diff:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}], "
                f"permutation p = {self.p_value:.3g}")


def permutation_test(diffs, *, n_perm: int = 20000, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> PermutationTest:
    r"""Paired permutation test of the mean of per-query differences ``diffs`` ``(P,)``: ``n_perm`` random sign
    flips :math:`\epsilon_i \in \{\pm 1\}` (seeded with ``seed``), two-sided p-value
    :math:`(1 + \#\{b : |\overline{\epsilon^{(b)} d}| \ge |\bar d|\}) / (1 + n_{perm})` (a valid test at every
    ``n_perm``; its resolution is :math:`1/(1 + n_{perm})`), with the mean and its percentile-bootstrap interval for
    display."""
    d = _diffs(diffs)
    positive_int(n_perm, "n_perm")
    mean, lo, hi = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    g = torch.Generator().manual_seed(seed)
    observed = abs(float(d.mean())) - 1e-12 * float(d.abs().max())   # ties in float arithmetic count as extreme
    hits, done = 0, 0
    while done < n_perm:
        b = min(5000, n_perm - done)
        signs = torch.randint(0, 2, (b, d.numel()), generator=g, dtype=torch.float64) * 2 - 1
        hits += int(((signs * d).mean(1).abs() >= observed).sum())
        done += b
    return PermutationTest(n=d.numel(), diff=mean, lo=lo, hi=hi, p_value=(1 + hits) / (1 + n_perm), n_perm=n_perm,
                           n_pos=int((d > 0).sum()), n_neg=int((d < 0).sum()))


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
    return Comparison(n=d.size, diff=float(d.mean()), lo=float(lo), hi=float(hi), p_value=_sign_p(n10, n01),
                      n_a_only=n10, n_b_only=n01)


def sign_test(diffs, *, resolution: float = 0.0, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> SignTest:
    r"""Exact two-sided sign test of per-query paired differences ``diffs`` ``(P,)`` (A minus B, any real values):
    :math:`p = P(|X - m/2| \ge |n_+ - m/2|)`, :math:`X \sim \mathrm{Binomial}(m, 1/2)`, :math:`m = n_+ + n_-`, where
    :math:`n_\pm = \#\{i : \pm d_i > r\}` and the differences with :math:`|d_i| \le r` (``resolution``) are ties and
    dropped; with the mean and its percentile-bootstrap interval (:func:`bootstrap_ci`) for display. ``resolution``:
    the size below which a difference is round-off, not a measurement (0: only exact zeros are ties). A sign test
    counts directions, so two quantities equal up to round-off (a model and its own limit) would otherwise give a
    direction to every query, and the verdict would follow the last digits of the machine's arithmetic."""
    d = _diffs(diffs)
    nonnegative(resolution, "resolution")
    mean, lo, hi = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    n_pos, n_neg = int((d > resolution).sum()), int((d < -resolution).sum())
    return SignTest(n=d.numel(), diff=mean, lo=lo, hi=hi, p_value=_sign_p(n_pos, n_neg), n_pos=n_pos, n_neg=n_neg)


def paired_test(a, b, *, seed: int = 0) -> Comparison | PermutationTest:
    r"""The paired test of A against B on the same queries: exact McNemar (:func:`compare`) when both are 0/1
    outcomes, else the paired permutation test of the mean of :math:`a_i - b_i` (:func:`permutation_test`). With A
    averaged over S demonstration sets per query (:func:`cgar_src.analysis.seeds.seed_mean`), the query stays the
    unit, so the pooled test never counts a query twice; with S = 1 the outcomes are 0/1 and the test is McNemar's.
    (A sign test would count the direction of each query's share difference and test its median: with shares in
    {0, 1/3, 2/3, 1} it can reject while the mean difference is near 0.)"""
    x, y = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same queries, got {x.numel()} and {y.numel()} entries")
    binary = lambda t: bool(((t == 0) | (t == 1)).all())
    if binary(x) and binary(y):
        return compare(x.numpy(), y.numpy(), seed=seed)
    return permutation_test(x - y, seed=seed)


def holm(p_values: Sequence[float]) -> list[float]:
    r"""Holm's step-down adjustment of m p-values (Holm 1979), in the input order. With the p-values sorted,
    :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math:: \tilde p_{(i)} = \min\Big(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\Big),

    so rejecting :math:`\tilde p < \alpha` controls the family-wise error rate at :math:`\alpha` under any
    dependence; monotone in the sorted order, never below the raw p-value, equal to Bonferroni's :math:`m p` for the
    smallest. Ties keep their input order (the adjusted values of tied p-values are equal)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a flat sequence of p-values, got shape {p.shape}")
    if p.size and (not np.isfinite(p).all() or (p < 0).any() or (p > 1).any()):
        raise ValueError("p_values must all lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def paired_from_record(record: Mapping) -> Comparison | SignTest | PermutationTest:
    """Rebuild a :class:`Comparison` (``record["test"] == "McNemar"``), :class:`SignTest` (``"sign"``) or
    :class:`PermutationTest` (``"permutation"``) from its JSON record (its fields, as the chapters save them with
    ``vars(c) | {"test": c.test}``)."""
    kinds = {"McNemar": Comparison, "sign": SignTest, "permutation": PermutationTest}
    kind = record.get("test") if isinstance(record, Mapping) else None
    if kind not in kinds:
        raise ValueError(f"record['test'] must be one of {sorted(kinds)}, got {kind!r}")
    cls = kinds[kind]
    fields = cls.__dataclass_fields__
    missing = sorted(set(fields) - set(record))
    if missing:
        raise ValueError(f"record of a {kind} test lacks the fields {missing}")
    return cls(**{f: record[f] for f in fields})


def ledger_entry(row: str, role: str, setting: str, name: str, test: Comparison | SignTest | PermutationTest) -> dict:
    """One test of the claims ledger's family, as a chapter records it in its results (``ledger_tests``): the
    ledger row it decides (``row``), its part in that row's verdict rule (``role``), the setting (a dataset, a
    coupling, ...), what is compared (``name``, "A minus B"), the kind of test (``test``: ``"McNemar"``,
    ``"sign"`` or ``"permutation"``) and every field of the test (``p_value``, ``diff``, ``lo``, ``hi``, ``n`` and the counts), so that
    :func:`paired_from_record` rebuilds it."""
    for arg, v in (("row", row), ("role", role), ("setting", setting), ("name", name)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{arg} must be a non-empty string, got {v!r}")
    if not isinstance(test, (Comparison, SignTest, PermutationTest)):
        raise ValueError(f"test must be a Comparison, a SignTest or a PermutationTest, got {type(test).__name__}")
    return {"row": row, "role": role, "setting": setting, "name": name, "test": test.test} | vars(test)


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
