"""Input validation shared by every module: fail early, name the parameter, say what is allowed."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

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


def indices(values, name: str, n: int | None = None, *, shape: Sequence[int] | None = None,
            what: str = "indices") -> torch.Tensor:
    """Integer indices in ``[0, n)`` (``n=None``: any index >= 0) as a LongTensor: the one check of every index
    argument (layers, classes, memories, tokens, query rows).

    ``values`` is an integer tensor or array, a Python int, or a list or tuple of Python (or NumPy) ints; bools and
    floats are refused (a mask or a rounded number is not an index). ``shape=None`` asks for a non-empty 1-d
    sequence; otherwise ``values`` must have exactly that shape (``()``: one index). ``what`` names the kind of
    index in the error message. Raises ``ValueError`` naming ``name``."""
    where = f"in [0, {n})" if n is not None else ">= 0"
    want = "a non-empty 1-d sequence" if shape is None else f"of shape {tuple(shape)}"
    problem = f"{name} must be {want} of integer {what} {where}"
    if isinstance(values, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
            raise ValueError(f"{problem}, got {values!r}")
        t = torch.tensor(list(values), dtype=torch.long)
    else:
        if isinstance(values, bool):
            raise ValueError(f"{problem}, got {values!r}")
        try:
            t = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{problem}, got {type(values).__name__}") from err
        if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"{problem}, got dtype {t.dtype}")
    if (t.ndim != 1 or t.numel() == 0) if shape is None else tuple(t.shape) != tuple(shape):
        raise ValueError(f"{problem}, got shape {tuple(t.shape)}")
    if t.numel() and (bool((t < 0).any()) or (n is not None and bool((t >= n).any()))):
        bad = t[(t < 0) | (t >= n)] if n is not None else t[t < 0]
        raise ValueError(f"{problem}; out of range: {bad[:5].tolist()}")
    return t.long()
