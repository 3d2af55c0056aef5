r"""Residual-stream hidden states of prompts: batching and patches.

Entry l of the L+1 states of a prompt is the input to block l (l = 0 is the embedding) and entry L is the input to
the final norm, captured by a hook, because Hugging Face's last ``hidden_states`` entry is already normalised in
Llama-style models. So :meth:`~cgar_src.lm.unembed.Unembed.forward` applies the final norm to every layer alike, and
decoding entry L reproduces the model's logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from .._validate import positive_int
from .model import MAX_BATCH_TOKENS, LoadedModel
from .unembed import final_norm

__all__ = ["Patch", "PATCH_MODES", "hidden_states", "length_batches", "token_batches", "check_context_window",
           "context_window", "batch_budget", "OOM_ERRORS", "check_lengths", "common_prefix", "pack_right", "split_batch"]


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


def check_lengths(lm: LoadedModel, lengths: list[int], what: str) -> None:
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
    check_lengths(lm, [len(x) for x in lm.tokenizer(prompts)["input_ids"]], what)


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
        out.append(pack_right([ids[i] for i in idx], idx, pad))
    return out


def pack_right(rows: list[list[int]], idx: list[int], pad: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    input_ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for row, r in enumerate(rows):
        input_ids[row, :len(r)] = torch.tensor(r)
    return idx, input_ids, torch.tensor([len(r) - 1 for r in rows])


def split_batch(batch: tuple[list[int], torch.Tensor, torch.Tensor]) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """A batch cut into two halves (in length order), each trimmed to its own longest prompt."""
    idx, input_ids, last = batch
    half = len(idx) // 2
    return [(idx[a:b], input_ids[a:b, :int(last[a:b].max()) + 1], last[a:b]) for a, b in ((0, half), (half, len(idx)))]


OOM_ERRORS = tuple(e for e in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
             if e is not None)


def batch_budget(lm: LoadedModel, max_batch_tokens: int | None = None) -> int:
    """The padded-token budget of a forward batch: ``max_batch_tokens``, else the model's own
    (``lm.max_batch_tokens``), checked to be a positive integer."""
    return positive_int(lm.max_batch_tokens if max_batch_tokens is None else max_batch_tokens, "max_batch_tokens")


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common leading run of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def hidden_states(lm: LoadedModel, prompts: list[str], *, batch_size: int = 8, progress: bool = True,
                  patch: Patch | None = None, max_batch_tokens: int | None = None) -> torch.Tensor:
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
    """
    if not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    budget = batch_budget(lm, max_batch_tokens)
    model, tok = lm.model, lm.tokenizer
    vectors = _check_patch(lm, patch, len(prompts)) if patch is not None else None
    lengths: list[int] = []
    pending = token_batches(tok, prompts, batch_size, budget, lengths_out=lengths)
    check_lengths(lm, lengths, f"{len(prompts)} prompts")
    norm = final_norm(model)
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
                pending[:0] = split_batch(batch)
                continue
            current["rows"], current["last"] = torch.arange(len(idx)), last
            captured.clear()
            if vectors is not None:
                current["v"] = vectors[idx]
            try:
                # the transformer body only: logits are recomputed from the states by Unembed when needed, so the
                # output head (vocab x d over every position) is skipped
                res = model.base_model(input_ids=input_ids.to(lm.device), output_hidden_states=True,
                                       use_cache=False)
            except OOM_ERRORS as err:
                res = None
                if len(idx) == 1:
                    raise RuntimeError(f"out of memory on a single prompt of {input_ids.shape[1]} tokens: "
                                       "use a larger device, device_map='auto' or a shorter prompt") from err
                too_big = input_ids.numel() if too_big is None else min(too_big, input_ids.numel())
            if res is None:  # outside the except block, so that the failed attempt's memory can be freed
                captured.clear()
                if lm.device.type == "cuda":
                    torch.cuda.empty_cache()
                pending[:0] = split_batch(batch)
                continue
            states = torch.stack([last_token(h).float().cpu() for h in res.hidden_states[:-1]] + [captured[-1]], dim=1)
            if vectors is not None:  # HF records a block's input before its pre-hooks run: show the patched entry
                states[:, patch.layer] = current["patched"]
            out[idx] = states
            del res
            bar.update(len(idx))
    finally:
        bar.close()
        for h in hooks:
            h.remove()
    return out

