"""Input validation shared by every module: fail early, name the parameter, say what is allowed."""
from __future__ import annotations

import math
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def as_tensor(x, name: str, *, ndim: int | Sequence[int] | None = None, dtype=None) -> torch.Tensor:
    """Convert ``x`` to a finite floating tensor with the expected number of dimensions.

    Raises ``ValueError`` naming ``name`` if the shape is wrong or the values are not finite.
    """
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=dtype or torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from err
    if dtype is not None:
        x = x.to(dtype)
    if x.dtype not in FLOAT_DTYPES:
        x = x.to(torch.get_default_dtype())
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    # min and max are finite iff every entry is (NaN propagates through both): no boolean copy of a large tensor
    if not (torch.isfinite(x.amax()) and torch.isfinite(x.amin())):
        raise ValueError(f"{name} must contain only finite values (no NaN or inf)")
    return x


def positive(value, name: str) -> float:
    """A finite, strictly positive scalar (beta, alpha, tolerances)."""
    v = scalar(value, name)
    if not v > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def nonnegative(value, name: str) -> float:
    """A finite scalar >= 0 (the coupling lambda, noise levels)."""
    v = scalar(value, name)
    if not v >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def int_in_range(value, name: str, lo: int, hi: int | None = None, note: str = "") -> int:
    """An integer (not a bool) in ``[lo, hi]`` (``hi=None``: no upper end); ``note`` explains the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {allowed}{note}, got {value!r}")
    return value


def positive_int(value, name: str) -> int:
    return int_in_range(value, name, 1)


def boolean(value, name: str) -> bool:
    """True or False (not a truthy stand-in such as "yes" or 1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def confidence_level(value) -> float:
    """A confidence level in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"level must be in (0, 1), got {value}")
    return float(value)


def layer_indices(layers, name: str, n: int) -> list[int]:
    """A non-empty list of layer (residual-entry) indices in ``[0, n - 1]``."""
    bad = [l for l in layers if isinstance(l, bool) or not (isinstance(l, int) and 0 <= l < n)]
    if bad or not layers:
        raise ValueError(f"{name} must be non-empty layer indices in [0, {n - 1}], got {layers}")
    return list(layers)


def scalar(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def class_indices(labels, name: str = "labels") -> torch.Tensor:
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.numel() == 0 or y.dtype.is_floating_point or bool((y < 0).any()):
        raise ValueError(f"{name} must be a non-empty 1-d tensor of class indices >= 0, got {tuple(y.shape)} {y.dtype}")
    return y.long()
