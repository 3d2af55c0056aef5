"""Uncertainty for held-out accuracies: percentile bootstrap over queries, seeded."""
from __future__ import annotations

import torch

__all__ = ["bootstrap_ci"]


def bootstrap_ci(values: torch.Tensor, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (one per query) and its percentile-bootstrap interval at ``level``: (mean, low, high)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("values must not be empty")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(values.numel(), (n_boot, values.numel()), generator=gen)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return values.mean().item(), lo, hi
