"""One validation of every chapter's parameters, run in the cell right after the ``parameters`` cell.

Each chapter calls ``validate_parameters(globals())`` before it loads a model or data, so a bad value given to
papermill (``-p seed abc``, ``-y "shots: [one]"``) fails in seconds with a ``ValueError`` that names the
parameter, its value and what is allowed, instead of after minutes of extraction. The rules live in one registry,
:data:`RULES`, keyed by parameter name and shared by every chapter (``seed`` means the same everywhere). A name
without a rule is not checked here; ``tests/test_params.py`` fails when a chapter declares a parameter that has no
rule, so every new parameter gets one.

Three kinds of check, in this order, all before any model or state is loaded:

1. the rules of :data:`RULES`: types, ranges and membership of each value on its own;
2. rules across parameters (:func:`check_across`): ``n_queries`` at most the query split of every dataset in
   ``datasets`` (or ``dataset``), counted from the dataset files (a fraction of a second);
3. this machine (:func:`check_machine`): ``device`` (and the devices of a ``device_map`` dict) exists here,
   ``model_id`` (and each of ``models``) can be found (the default model, a local model folder, or a hub id that is
   in the local Hugging Face cache or, online, on the hub), ``dtype: bfloat16`` on the CPU only where the CPU has
   native bfloat16 arithmetic (:func:`cpu_supports_bfloat16`), and ``out_dir`` can be created and written
   (:func:`check_output_folder`: a probe
   file is written and removed; folders the probe created are removed again, so a check leaves nothing behind).

``validate_parameters(ns, machine=False)`` runs the first two only: what a profile file can be checked for on any
machine (``cgar_src.book.run.load_profile``); the profile command runs all three before it loads a model.
"""
from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RULES", "Rule", "validate_parameters", "check", "check_across", "check_machine", "check_output_folder",
           "available_devices", "cpu_supports_bfloat16"]


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


def _template_names() -> tuple[str, ...]:
    from cgar_src.tasks.templates import TEMPLATE_NAMES  # a light import: no datasets, no model
    return tuple(TEMPLATE_NAMES)


_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)\Z")
_MAP_TARGET = re.compile(r"(cpu|disk|mps|cuda(:\d+)?)\Z")   # where a device_map dict may place a module
_RELATION = re.compile(r"P[1-9]\d*\Z")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")

_FRACTIONS = _list(_fraction, "fractions of the depth in (0, 1]", unique=True)
_LAMBDAS = _list(lambda x: _is_real(x) and x >= 0, "finite numbers >= 0")
_PATH = Rule("a non-empty path (string or os.PathLike)",
             lambda v: (isinstance(v, str) and v.strip() != "") or isinstance(v, os.PathLike))


def _device_map_ok(v: Any) -> bool:
    if v is None or (isinstance(v, str) and v in _DEVICE_MAPS):
        return True
    return (isinstance(v, dict) and len(v) > 0 and all(isinstance(k, str) for k in v)
            and all((_is_int(t) and t >= 0) or (isinstance(t, str) and bool(_MAP_TARGET.match(t))) for t in v.values()))


def _fit_range(v: list) -> bool:
    return len(v) == 2 and 0 < v[0] < v[1]


# --- the registry: one entry per parameter name, alphabetical (case-insensitive) ---------------------------------
#: the rule of every chapter parameter, keyed by name
#:
#: :meta hide-value:
RULES: dict[str, Rule] = {
    "alpha": _real(0, strict=True, what=" (gate penalisation)"),
    "alphas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (gate penalisations)", unique=True),
    "batch_size": _int(1, what=" (prompts per forward pass)"),
    "beta": _real(0, strict=True, what=" (inverse temperature)"),
    "beta_mhn": _real(0, strict=True, what=" (MHN inverse temperature, times 1/sqrt(d))"),
    "betas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (inverse temperatures)", unique=True),
    "bundle": _PATH,
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
    "device_map": Rule(f"None, one of {list(_DEVICE_MAPS)} or a non-empty dict of module names to devices (a GPU "
                       "index >= 0, 'cpu', 'disk', 'mps', 'cuda' or 'cuda:N')", lambda v: _device_map_ok(v)),
    "dim": _int(1, what=" (pattern dimension)"),
    "dims": _list(lambda x: _is_int(x) and x >= 1, "integers >= 1 (pattern dimensions)", unique=True),
    "dtype": _choice("float32", "float16", "bfloat16"),
    "fact_shots": _int(1, what=" (demonstration facts per prompt)"),
    "fit_range": Rule("a list [lo, hi] of two finite numbers with 0 < lo < hi",
                      lambda v: isinstance(v, (list, tuple)) and all(map(_is_real, v)) and _fit_range(list(v))),
    "fixed_point_alphas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (the fixed point's gate penalisations)",
                                unique=True),
    "fixed_point_betas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (the fixed point's inverse temperatures)",
                               unique=True),
    "fixed_point_lambdas": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (the fixed point's couplings)",
                                 unique=True),
    "flip": _real(0, strict=False, hi=0.5, what=" (bit-flip probability of the query)"),
    "flips": _list(lambda x: _is_real(x) and 0 <= x <= 0.5, "bit-flip probabilities in [0, 0.5]"),
    "gate_alpha": _real(0, strict=True, what=" (sparsemax gate penalisation)"),
    "gate_kappas": _list(lambda x: _is_real(x) and x >= 0,
                         "finite numbers >= 0 (gate couplings per unit penalisation, lambda/alpha)", unique=True),
    "gated_alpha": _real(0, strict=True, what=" (gate penalisation)"),
    "gated_beta": _real(0, strict=True, what=" (inverse temperature)"),
    "gauss_ns": _list(lambda x: _is_int(x) and x >= 2, "integers >= 2 (numbers of Gaussian scores)", unique=True),
    "grid_size": _int(2, what=" (points per axis of the grid)"),
    "k_shot": _int(1, what=" (demonstrations per class)"),
    "label_modes": _list(lambda x: x in ("true", "random"), "label modes 'true' or 'random'", unique=True),
    "lam": _real(0, strict=False, what=" (coupling lambda)"),
    "lambdas": _LAMBDAS,
    "lambdas_ctx": _LAMBDAS,
    "lambdas_small": _list(lambda x: _is_real(x) and x > 0, "finite numbers > 0 (log-spaced couplings)"),
    "lens_float32": Rule("True or False", lambda v: isinstance(v, bool)),
    "max_batch_tokens": _int(1, what=" (padded tokens per forward batch)"),
    "max_queries": _int(1, what=" (queries per dataset at most; all of a smaller query split)"),
    "model_id": _nonempty_str("a hub id, a local path or an offline model: 'smollm2-135m-instruct', 'gemma-3-270m'"),
    "models": _list(lambda x: isinstance(x, str) and x.strip() != "",
                    "non-empty strings (hub ids, local paths or offline model names)", unique=True),
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
    "query_seed": _int(0, 2**32 - 1, what=" (random seed of the query sample)"),
    "random_label_sets": _int(1, what=" (the first this many demonstration sets also run the random-label control)"),
    "random_label_shots": _int(1, what=" (demonstrations per class of the random-label control)"),
    "relations": _list(lambda x: isinstance(x, str) and bool(_RELATION.match(x)),
                       "LAMA T-REx relation ids like 'P30'", unique=True),
    "results_dir": _PATH,
    "seed": _int(0, 2**32 - 1, what=" (random seed)"),
    "seeds": _list(lambda x: _is_int(x) and 0 <= x <= 2**32 - 1, "integers in [0, 2^32 - 1] (random seeds)",
                   unique=True),
    "shots": _list(lambda x: _is_int(x) and x >= 0, "integers >= 0 (demonstrations per class)", unique=True),
    "sigma_q_ctx": _real(0, strict=False, what=" (query noise)"),
    "sigmas": _list(lambda x: _is_real(x) and x >= 0, "finite numbers >= 0 (noise levels)"),
    "templates": _list(lambda x: isinstance(x, str) and x in _template_names(),
                       f"template names from cgar_src.tasks.templates.TEMPLATE_NAMES {list(_template_names())}",
                       unique=True),
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


def _fail(name: str, allowed: str, value: Any, why: str = "") -> None:
    raise ValueError(f"parameter {name} must be {allowed}, got {value!r}" + (f" ({why})" if why else ""))


# --- rules across parameters ------------------------------------------------------------------------------------

def check_across(namespace: Mapping[str, Any]) -> None:
    """Rules that tie parameters together, for values that passed :data:`RULES`.

    ``random_label_sets`` (the first sets that also run the random-label control) must not exceed the number of
    ``seeds``. ``n_queries`` (queries sampled per dataset, without replacement) must not exceed the query split of any dataset
    of ``datasets`` (or ``dataset``): counted from the dataset files (:func:`cgar_src.tasks.data.load_examples`;
    sha256-checked, a fraction of a second). Skipped when the data come from the Hugging Face hub
    (``CGAR_DATA_DIR=hub``: a download is no check), where sampling raises the same error later.
    """
    if "random_label_sets" in namespace and "seeds" in namespace and namespace["random_label_sets"] > len(namespace["seeds"]):
        _fail("random_label_sets", f"at most the number of demonstration sets, len(seeds) = {len(namespace['seeds'])}",
              namespace["random_label_sets"])
    names = namespace.get("datasets", [namespace["dataset"]] if "dataset" in namespace else None)
    if "n_queries" not in namespace or not names:
        return
    from cgar_src.tasks.data import TASKS, data_dir, load_examples

    if data_dir() is None:
        return
    sizes = {ds: len(load_examples(ds, TASKS[ds].query_split)) for ds in names}
    smallest = min(sizes, key=sizes.get)
    if namespace["n_queries"] > sizes[smallest]:
        split = TASKS[smallest].query_split
        _fail("n_queries", f"at most {sizes[smallest]}, the {split} examples of {smallest} (query examples per "
              f"dataset: {sizes})", namespace["n_queries"])


# --- this machine -----------------------------------------------------------------------------------------------

def available_devices() -> list[str]:
    """The torch devices of this machine: ``cpu``, then ``cuda`` and ``cuda:0`` .. ``cuda:{n-1}`` for the
    ``torch.cuda.device_count()`` GPUs, then ``mps`` where ``torch.backends.mps.is_available()``."""
    import torch

    n = torch.cuda.device_count()
    return ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else []) + (
        ["mps"] if torch.backends.mps.is_available() else [])


def _check_device(name: str, value: Any) -> None:
    where = "cuda:0" if value == "cuda" else value   # 'cuda' is the current GPU: there must be one
    if value == "cpu":
        return
    devices = available_devices()
    if where not in devices:
        _fail(name, f"a device of this machine, one of {devices}", value)


def cpu_supports_bfloat16() -> bool:
    """True when this CPU has native bfloat16 arithmetic (AMX tiles or AVX512-BF16), as torch reports it
    (``torch.cpu._is_amx_tile_supported``, ``torch.cpu._is_avx512_bf16_supported``; False where torch has neither
    probe). Without it a bfloat16 forward pass on the CPU is emulated and slower than float32."""
    import torch

    probes = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(bool(p()) for p in probes if p is not None)
    except Exception:   # a probe that fails says nothing: treat as unsupported
        return False


def _check_dtype(namespace: Mapping[str, Any]) -> None:
    if namespace.get("dtype") == "bfloat16" and namespace.get("device", "cpu") == "cpu" and not cpu_supports_bfloat16():
        _fail("dtype", "'float32' on this CPU (it has neither AMX nor AVX512-BF16, so bfloat16 would be emulated and "
              "slower)", "bfloat16")


def _check_device_map(value: Any) -> None:
    if not isinstance(value, dict):
        return   # None and the strategies ("auto", ...) place modules on whatever devices exist
    devices = available_devices()
    for module, target in value.items():
        where = f"cuda:{target}" if _is_int(target) else "cuda:0" if target == "cuda" else target
        if where != "disk" and where not in devices:
            _fail("device_map", f"a dict whose devices exist on this machine ({devices} or 'disk')", value,
                  f"module {module!r} is placed on {target!r}")


def _offline() -> bool:
    return any(os.environ.get(v, "0").strip().lower() not in ("0", "", "false", "no", "off")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_model_id(value: str, revision: str | None = None) -> None:
    """``model_id`` names a model that :func:`cgar_src.lm.load_model` can find, checked without loading it: the
    name of an offline GGUF model (``cgar_src.lm.GGUF_MODELS``), an existing local folder with a ``config.json``,
    or a hub id whose ``config.json`` (at ``revision``) is in the local Hugging Face cache; otherwise the hub id
    must exist on the hub (one metadata request, 10 s timeout), which needs the hub: offline (``HF_HUB_OFFLINE``) or
    unreachable, it is an error here, as it would be in ``load_model`` after retries."""
    from cgar_src.lm import GGUF_MODELS

    allowed = (f"an offline model ({', '.join(map(repr, GGUF_MODELS))}), a local model folder (with config.json) "
               "or a Hugging Face hub id such as 'owner/name'")
    if value in GGUF_MODELS:
        return
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            _fail("model_id", allowed, value, f"{path} exists but is not a model folder: it has no config.json")
        return
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        _fail("model_id", allowed, value, "no such local folder, and not a valid hub id")
    if isinstance(try_to_load_from_cache(value, "config.json", revision=revision), str):
        return   # in the local Hugging Face cache
    if _offline():
        _fail("model_id", allowed, value, "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set: only "
              "cached hub ids, local folders and the default model load offline")
    try:
        HfApi().model_info(value, revision=revision, timeout=10)
    except GatedRepoError:
        return   # exists; loading it needs an accepted licence and a token
    except RepositoryNotFoundError:
        _fail("model_id", allowed, value, "no such model on the Hugging Face hub (a typo, or a private repository: "
              "log in with `huggingface-cli login`)")
    except Exception as err:   # no network, a proxy, the hub down: nothing to load from
        _fail("model_id", allowed, value, f"not in the local Hugging Face cache, and the hub could not be asked "
              f"({type(err).__name__}: {err})")


def check_output_folder(path: Any, name: str = "out_dir") -> Path:
    """Check that folder ``path`` can be created and written: create it (with its missing parents), write and
    remove a probe file, then remove again the folders this check created, so that it leaves nothing behind.
    ``ValueError`` naming ``name`` and the folder when any step fails. Returns the folder as a ``Path``."""
    folder = Path(path).expanduser()
    created: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    failure: OSError | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cgar-write-probe-{os.getpid()}-{uuid.uuid4().hex}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        failure = err
    finally:
        for d in created:   # deepest first; only folders this check made, and only while they are empty
            try:
                d.rmdir()
            except OSError:
                break
    if failure is not None:
        why = f"{type(failure).__name__}: {failure.strerror or failure}" + (
            f": {failure.filename}" if failure.filename else "")
        raise ValueError(f"parameter {name} must be a folder that can be created and written, got {str(path)!r} "
                         f"({why})") from failure
    return folder


def check_machine(namespace: Mapping[str, Any], *, revision: str | None = None) -> None:
    """The checks against this machine, for values that passed :data:`RULES`: ``device``, ``device_map``,
    ``model_id`` (at ``revision``, a profile's engine option), then ``out_dir`` (:func:`check_output_folder`), each
    where present."""
    if "device" in namespace:
        _check_device("device", namespace["device"])
    if "device_map" in namespace:
        _check_device_map(namespace["device_map"])
    if "model_id" in namespace:
        _check_model_id(namespace["model_id"], revision)
    for model in namespace.get("models", ()):
        _check_model_id(model, revision)
    if "dtype" in namespace:
        _check_dtype(namespace)
    if "out_dir" in namespace:
        check_output_folder(namespace["out_dir"])


def validate_parameters(namespace: Mapping[str, Any], *, machine: bool = True) -> None:
    """Check every name of ``namespace`` (a chapter's ``globals()``) that has a rule (returns None: no cell output).

    First each value on its own (:data:`RULES`), then across parameters (:func:`check_across`), then, unless
    ``machine=False``, against this machine (:func:`check_machine`: device, model, output folder). Raises
    ``ValueError`` naming the first bad parameter, its value and what is allowed. Names without a rule (imports,
    IPython's ``In``/``Out``) are skipped. Loads no model and no states, and leaves no file behind.
    """
    if not isinstance(namespace, Mapping):
        raise ValueError(f"namespace must be a dict such as globals(), got {type(namespace).__name__}")
    params = {}
    for name in sorted(namespace):
        rule = None if name.startswith("_") else rule_for(name)
        if rule is not None:
            rule.check(name, namespace[name])
            params[name] = namespace[name]
    check_across(params)
    if machine:
        revision = namespace.get("revision")
        check_machine(params, revision=revision if isinstance(revision, str) else None)
