"""One validation of every chapter's parameters, run in the cell right after the ``parameters`` cell.

Each chapter calls ``validate_parameters(globals())`` before it loads a model or data, so a bad value given to
papermill (``-p seed abc``, ``-y "shots: [one]"``) fails in well under a second with a ``ValueError`` that names the
parameter, its value and what is allowed, instead of after minutes of extraction. The rules live in one registry,
:data:`RULES`, keyed by parameter name and shared by every chapter (``seed`` means the same everywhere). A name
without a rule is not checked here; ``tests/test_params.py`` fails when a chapter declares a parameter that has no
rule, so every new parameter gets one. Checking is cheap: types, ranges and membership only, no model and no data.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Mapping

__all__ = ["RULES", "Rule", "validate_parameters", "check"]


class Rule:
    """A named predicate on one parameter value: ``check(name, value)`` raises ``ValueError`` or returns None."""

    def __init__(self, allowed: str, ok: Callable[[Any], bool]):
        self.allowed = allowed  # what is allowed, in words, for the error message
        self.ok = ok

    def check(self, name: str, value: Any) -> None:
        try:
            good = bool(self.ok(value))
        except (TypeError, ValueError, OverflowError):
            good = False
        if not good:
            raise ValueError(f"parameter {name} must be {self.allowed}, got {value!r}")

    def __repr__(self) -> str:
        return f"Rule({self.allowed!r})"


# --- building blocks --------------------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    """A finite int or float, not a bool (papermill passes ``-p beta 2`` as the int 2)."""
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _int(lo: int, hi: int | None = None, what: str = "") -> Rule:
    rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    return Rule(f"an integer {rng}{what}", lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi))


def _real(lo: float, *, strict: bool, hi: float | None = None, what: str = "") -> Rule:
    rng = f"{'>' if strict else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
    return Rule(f"a finite number {rng}{what}",
                lambda v: _is_real(v) and (v > lo if strict else v >= lo) and (hi is None or v <= hi))


def _fraction(v: Any) -> bool:
    return _is_real(v) and 0 < v <= 1


def _list(elem: Callable[[Any], bool], allowed: str, *, unique: bool = False, min_len: int = 1) -> Rule:
    """A list (or tuple) of at least ``min_len`` elements each satisfying ``elem``."""

    def ok(v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < min_len or not all(elem(x) for x in v):
            return False
        return not unique or len(set(v)) == len(v)

    more = " without repeats" if unique else ""
    return Rule(f"a list of at least {min_len} {allowed}{more}", ok)


def _choice(*options: str) -> Rule:
    return Rule(f"one of {list(options)}", lambda v: isinstance(v, str) and v in options)


def _nonempty_str(what: str) -> Rule:
    return Rule(f"a non-empty string ({what})", lambda v: isinstance(v, str) and v.strip() != "")


def _task_names() -> tuple[str, ...]:
    from cgar_src.tasks.data import TASKS  # a light import: no datasets, no model
    return tuple(sorted(TASKS))


def _dataset(v: Any) -> bool:
    return isinstance(v, str) and v in _task_names()


_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)\Z")
_RELATION = re.compile(r"P[1-9]\d*\Z")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")

_FRACTIONS = _list(_fraction, "fractions of the depth in (0, 1]", unique=True)
_LAMBDAS = _list(lambda x: _is_real(x) and x >= 0, "finite numbers >= 0")
_PATH = Rule("a non-empty path (string or os.PathLike)",
             lambda v: (isinstance(v, str) and v.strip() != "") or isinstance(v, os.PathLike))


def _fit_range(v: list) -> bool:
    return len(v) == 2 and 0 < v[0] < v[1]


# --- the registry: one entry per parameter name, alphabetical (case-insensitive) ---------------------------------
RULES: dict[str, Rule] = {
    "alpha": _real(0, strict=True, what=" (gate penalisation)"),
    "alphas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (gate penalisations)", unique=True),
    "batch_size": _int(1, what=" (prompts per forward pass)"),
    "beta": _real(0, strict=True, what=" (inverse temperature)"),
    "beta_mhn": _real(0, strict=True, what=" (MHN inverse temperature, times 1/sqrt(d))"),
    "betas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (inverse temperatures)", unique=True),
    "C": _real(0, strict=True, what=" (inverse L2 regularisation of the probes)"),
    "calibrate_shots": _list(lambda x: _is_int(x) and x >= 0, "integers >= 0 (shot counts to calibrate)", unique=True,
                             min_len=0),
    "context_flip": _real(0, strict=False, hi=0.5, what=" (bit-flip probability of the context cue)"),
    "context_gain": _real(0, strict=True),
    "context_layer_fractions": _FRACTIONS,
    "context_noise": _real(0, strict=False),
    "context_noises": _list(lambda x: _is_real(x) and x >= 0, "finite numbers >= 0 (context noise levels)"),
    "curve_n": _int(1, what=" (stored patterns N for the accuracy-vs-noise curve)"),
    "d": _int(1, what=" (pattern dimension)"),
    "d_curve": _int(1, what=" (pattern dimension of the accuracy curves)"),
    "dam_n": _int(2, what=" (degree of the polynomial dense associative memory)"),
    "dataset": Rule(f"one of the datasets in cgar_src.tasks.data.TASKS {list(_task_names())}", _dataset),
    "datasets": _list(_dataset, f"dataset names from cgar_src.tasks.data.TASKS {list(_task_names())}", unique=True),
    "device": Rule("'cpu', 'mps', 'cuda' or 'cuda:N'", lambda v: isinstance(v, str) and bool(_DEVICE.match(v))),
    "device_map": Rule(f"None, one of {list(_DEVICE_MAPS)} or a dict of module names to devices",
                       lambda v: v is None or (isinstance(v, str) and v in _DEVICE_MAPS) or isinstance(v, dict)),
    "dim": _int(1, what=" (pattern dimension)"),
    "dims": _list(lambda x: _is_int(x) and x >= 1, "integers >= 1 (pattern dimensions)", unique=True),
    "dtype": _choice("float32", "float16", "bfloat16"),
    "fact_shots": _int(1, what=" (demonstration facts per prompt)"),
    "fit_range": Rule("a list [lo, hi] of two finite numbers with 0 < lo < hi",
                      lambda v: isinstance(v, (list, tuple)) and all(map(_is_real, v)) and _fit_range(list(v))),
    "flip": _real(0, strict=False, hi=0.5, what=" (bit-flip probability of the query)"),
    "flips": _list(lambda x: _is_real(x) and 0 <= x <= 0.5, "bit-flip probabilities in [0, 0.5]"),
    "gate_alpha": _real(0, strict=True, what=" (sparsemax gate penalisation)"),
    "gate_lambdas": _LAMBDAS,
    "gated_alpha": _real(0, strict=True, what=" (gate penalisation)"),
    "gated_beta": _real(0, strict=True, what=" (inverse temperature)"),
    "gauss_ns": _list(lambda x: _is_int(x) and x >= 2, "integers >= 2 (numbers of Gaussian scores)", unique=True),
    "grid_size": _int(2, what=" (points per axis of the grid)"),
    "k_shot": _int(1, what=" (demonstrations per class)"),
    "lam": _real(0, strict=False, what=" (coupling lambda)"),
    "lambdas": _LAMBDAS,
    "lambdas_ctx": _LAMBDAS,
    "lambdas_small": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (log-spaced couplings)"),
    "lens_float32": Rule("True or False", lambda v: isinstance(v, bool)),
    "max_batch_tokens": _int(1, what=" (padded tokens per forward batch)"),
    "model_id": _nonempty_str("a hub id, a local path or 'smollm2-135m-instruct'"),
    "n_facts": _int(1, what=" (facts per relation)"),
    "n_folds": _int(2, what=" (cross-validation folds)"),
    "n_gauss": _int(1, what=" (samples per N)"),
    "n_instances": _int(1),
    "n_many": _int(1, what=" (random instances)"),
    "n_max": _int(1, what=" (largest number of stored patterns tried)"),
    "n_memories": _int(1, what=" (stored patterns N)"),
    "n_pairs": _int(1),
    "n_points": _int(1),
    "n_queries": _int(1, what=" (queries per dataset)"),
    "n_shift": _int(1, what=" (random instances)"),
    "n_starts": _int(1),
    "n_steps": _int(1),
    "n_trials": _int(1),
    "n_trials_ctx": _int(1),
    "out_dir": _PATH,
    "patch_layer_fractions": _FRACTIONS,
    "probe_shots": _list(lambda x: _is_int(x) and x >= 0, "integers >= 0 (demonstrations per class)", unique=True),
    "query_layer_fractions": _FRACTIONS,
    "query_noise": _real(0, strict=False),
    "random_label_shots": _int(1, what=" (demonstrations per class of the random-label control)"),
    "relations": _list(lambda x: isinstance(x, str) and bool(_RELATION.match(x)),
                       "LAMA T-REx relation ids like 'P30'", unique=True),
    "seed": _int(0, 2**32 - 1, what=" (random seed)"),
    "shots": _list(lambda x: _is_int(x) and x >= 0, "integers >= 0 (demonstrations per class)", unique=True),
    "sigma_q_ctx": _real(0, strict=False, what=" (query noise)"),
    "sigmas": _list(lambda x: _is_real(x) and x >= 0, "finite numbers >= 0 (noise levels)"),
}

# Names ending in one of these suffixes get this rule when they have no entry of their own.
SUFFIX_RULES: dict[str, Rule] = {
    "_fractions": _FRACTIONS,
    "_lambdas": _LAMBDAS,
}


def rule_for(name: str) -> Rule | None:
    """The rule for parameter ``name``: its own entry in :data:`RULES`, else a suffix rule, else None."""
    if name in RULES:
        return RULES[name]
    for suffix, rule in SUFFIX_RULES.items():
        if name.endswith(suffix):
            return rule
    return None


def check(name: str, value: Any) -> None:
    """Check one parameter; ``ValueError`` naming ``name`` if it has no rule or its value breaks the rule."""
    rule = rule_for(name)
    if rule is None:
        raise ValueError(f"parameter {name} has no validation rule in cgar_src.book.params.RULES")
    rule.check(name, value)


def validate_parameters(namespace: Mapping[str, Any]) -> None:
    """Check every name of ``namespace`` (a chapter's ``globals()``) that has a rule (returns None: no cell output).

    Raises ``ValueError`` naming the first bad parameter, its value and what is allowed. Names without a rule
    (imports, IPython's ``In``/``Out``) are skipped. Cheap: no model, no data.
    """
    if not isinstance(namespace, Mapping):
        raise ValueError(f"namespace must be a dict such as globals(), got {type(namespace).__name__}")
    for name in sorted(namespace):
        rule = None if name.startswith("_") else rule_for(name)
        if rule is not None:
            rule.check(name, namespace[name])
