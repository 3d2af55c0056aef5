r"""Several demonstration sets: the spread of a number over sets, and per-query means for the pooled paired test
(book: the transformer chapters 07-12, which draw one balanced set per seed, shared by all queries).

Every set is shown to the SAME queries (``cgar_src.tasks.icl.task_states`` draws the queries with ``query_seed``),
so a query's outcome under S sets can be averaged, :math:`\bar a_i = \frac1S \sum_s a_{s,i}`, and compared with its
zero-shot outcome :math:`b_i` by one exact paired test whose unit is the query
(:func:`cgar_src.analysis.stats.paired_test`: McNemar for S = 1, the paired permutation test of the mean of
:math:`\bar a_i - b_i` otherwise).
Next to that pooled test each headline number is given per set, as its mean and range over the S sets
(:func:`spread`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["seed_mean", "Spread", "spread"]

def seed_mean(items: Sequence[Any]) -> Any:
    r"""The per-query mean over demonstration sets of a dataclass of per-query tensors (e.g.
    :class:`cgar_src.analysis.collapse.LensCurves`): every tensor field averaged over ``items`` in float64 (0/1
    outcomes become the share of sets that got the query right), ``None`` fields kept, anything else taken from the
    first item (it must agree). One item is returned unchanged."""
    items = list(items)
    if not items or not all(dataclasses.is_dataclass(x) and type(x) is type(items[0]) for x in items):
        raise ValueError("items must be a non-empty list of dataclasses of one type (one per demonstration set)")
    if len(items) == 1:
        return items[0]
    out = {}
    for f in dataclasses.fields(items[0]):
        vals = [getattr(x, f.name) for x in items]
        if all(v is None for v in vals):
            out[f.name] = None
        elif all(isinstance(v, torch.Tensor) for v in vals):
            if len({tuple(v.shape) for v in vals}) != 1:
                raise ValueError(f"field {f.name!r} has different shapes across sets: {[tuple(v.shape) for v in vals]}")
            out[f.name] = torch.stack([v.double() for v in vals]).mean(0)
        elif any(isinstance(v, torch.Tensor) or v is None for v in vals):
            raise ValueError(f"field {f.name!r} is missing in some sets")
        else:
            out[f.name] = vals[0]
    return type(items[0])(**out)


@dataclasses.dataclass(frozen=True)
class Spread:
    """A number over S demonstration sets: its mean, smallest and largest value."""

    mean: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        """``"0.520 (0.480-0.550 over 3 sets)"``; one set, or one value at these digits: the value alone."""
        if self.n == 1 or f"{self.lo:.{digits}f}" == f"{self.hi:.{digits}f}":
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ({self.lo:.{digits}f}-{self.hi:.{digits}f} over {self.n} sets)"

    def __str__(self) -> str:
        return self.fmt()


def spread(values: Sequence[float]) -> Spread:
    """Mean, minimum and maximum of one number over the demonstration sets (one value per set)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"values must be a non-empty list of finite numbers (one per set), got {list(values)!r}")
    return Spread(mean=float(v.mean()), lo=float(v.min()), hi=float(v.max()), n=int(v.size))
