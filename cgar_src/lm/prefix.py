r"""One prefix, many queries: the demonstrations' keys and values computed once and reused for every query.

For prompts :math:`p_i = s \Vert q_i` sharing a prefix :math:`s` (the demonstrations), causal attention makes the
keys and values of the prefix's tokens independent of what follows them, so the residual states of :math:`q_i`'s
tokens are a function of :math:`(K_s, V_s)` and :math:`q_i` alone. :func:`prefix_states` runs the prefix once with a
key/value cache, keeps that cache for every batch of queries, and runs only the queries' own tokens at positions
:math:`|s|, |s|+1, \dots`. It returns what :func:`cgar_src.lm.states.hidden_states` returns for the full prompts
(last-token residual states of every layer, L+1 entries, entry L the final norm's input; module docstring of
``states``), up to float summation order (tested to 1e-4 in float32 on Llama, Qwen2, GPT-2 and Gemma-3 configs).
Forwarded tokens drop from :math:`\sum_i (|s| + |q_i|)` to :math:`|s| + \sum_i |q_i|`.

Tokenization rule. Tokenizing :math:`s` and :math:`q_i` apart can differ from tokenizing :math:`s \Vert q_i` (a merge
across the boundary, a special token). So each full prompt is tokenized as a whole (exactly the ids
``hidden_states`` would forward), and the shared part is the longest run of leading token ids that the prefix's own
tokenization and every full prompt have in common, at most all but the last token of the shortest prompt (each query
runs at least one token). With ``strict=True``, anything short of the prefix's whole tokenization raises ValueError;
otherwise the boundary tokens simply move to the queries (:attr:`PrefixStates.n_boundary`). The book's template
split (``cgar_src.tasks.templates.Template.split``) ends the prefix with a label word, so nothing moves there.

Attention over the shared prefix. With ``padding_side="right"`` (default) the prefix's keys and values are never
copied per query: each layer's attention runs :func:`shared_prefix_attention` (registered with transformers'
``AttentionInterface`` for the query passes only), which scores every query row of the batch against the one stored
prefix :math:`(K_s, V_s)` in a single matrix product (the batch folded into the rows) and against the batch's own
keys under the causal mask, then normalises both parts together:

.. math:: o_i = \frac{\sum_{t \in s} e^{q_i\cdot k_t/\sqrt{d}}\, v_t + \sum_{j \le i} e^{q_i\cdot k_j/\sqrt{d}}\, v_j}
          {\sum_{t \in s} e^{q_i\cdot k_t/\sqrt{d}} + \sum_{j \le i} e^{q_i\cdot k_j/\sqrt{d}}},

exactly causal attention over prefix + query (a sliding window, where the layer has one, restricts both sums to the
last W positions). Expanding the prefix's cache over a batch instead (``Cache.batch_repeat_interleave``) copies
:math:`B\,|s|` keys and values per layer, twice; scoring the one stored prefix instead made a 4-shot pass 1.56x
faster on TREC and 1.34x on AG-News (one thread, batch 8, 200 queries, the two kernels interleaved, 2026-11-30).

Padding. ``padding_side="right"`` (default): queries padded after their last token, no attention mask; a query's real
tokens never see the padding after them, and its last real token is read at its own length. ``padding_side="left"``:
padding before the query's tokens, masked out by an explicit attention mask, with position ids counted over real
tokens only, so every query's last real token sits in the last column; both give the same states (tested); it
expands the prefix's cache over each batch (the model's own attention kernel with the mask). Left padding is
refused for models with sliding-window layers (Gemma-2/3, Mistral-style configs): their window counts key/value
slots, so padding between the prefix and a query would push prefix keys out of the window.

Book: the transformer chapters read these states (chapter 07 onwards), through
:func:`cgar_src.lm.cache.cached_prefix_states` and ``cgar_src.tasks.icl`` (one demonstration set's keys and values
shared by all queries and by its content-free prompt).
"""
from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .._validate import boolean, positive_int
from .model import LoadedModel
from .states import OOM_ERRORS, batch_budget, check_lengths, common_prefix, length_batches, pack_right, split_batch
from .unembed import final_norm

__all__ = ["PrefixStates", "PADDING_SIDES", "ATTENTION", "shared_prefix_tokens", "shared_prefix_attention",
           "prefix_states"]

PADDING_SIDES = ("right", "left")

#: the name :func:`shared_prefix_attention` is registered under in transformers' ``AttentionInterface``
ATTENTION = "cgar_shared_prefix"


@dataclass(frozen=True)
class _SharedPrefix:
    """One prefix's keys and values per layer, ``layer -> (K (h_kv, n, d), V (h_kv, n, d_v), position of K[:, 0])``
    (a sliding-window layer stores only its last keys), and the prefix's length: the queries' first position."""

    layers: dict[int, tuple[torch.Tensor, torch.Tensor, int]]
    length: int


_ACTIVE: ContextVar[_SharedPrefix | None] = ContextVar("cgar_shared_prefix", default=None)


@dataclass
class PrefixStates:
    """States ``(Q, L+1, d)`` of the prompts prefix + query_i (float32, in the order given), with the token
    accounting: ``prefix_ids`` (forwarded once), each query's own ids ``query_ids`` (forwarded per query),
    ``n_prefix_alone`` (tokens of the prefix tokenized by itself) and the padded tokens of the query batches."""

    states: torch.Tensor
    prefix_ids: list[int]
    query_ids: list[list[int]]
    n_prefix_alone: int
    padded_tokens: int = 0
    n_batches: int = 0
    padding_side: str = "right"
    extra: dict = field(default_factory=dict)

    @property
    def n_prefix(self) -> int:
        """Tokens of the shared prefix (forwarded once)."""
        return len(self.prefix_ids)

    @property
    def n_boundary(self) -> int:
        """Tokens of the prefix's own tokenization that moved to the queries (0 when the rule holds exactly)."""
        return self.n_prefix_alone - self.n_prefix

    @property
    def tokens_forwarded(self) -> int:
        """Real tokens forwarded: the prefix once plus every query's own tokens, :math:`|s| + \\sum_i |q_i|`."""
        return self.n_prefix + sum(len(q) for q in self.query_ids)

    @property
    def tokens_full(self) -> int:
        """Real tokens the full prompts would forward one by one, :math:`\\sum_i (|s| + |q_i|)`."""
        return sum(self.n_prefix + len(q) for q in self.query_ids)


def shared_prefix_tokens(tokenizer, prefix: str, queries: list[str], *,
                         strict: bool = False) -> tuple[list[int], list[list[int]], int]:
    """The tokenization rule (module docstring): ``(shared ids, each query's remaining ids, tokens of the prefix
    alone)``, with ``shared + rest_i`` equal to the tokenization of ``prefix + queries[i]`` for every i."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {type(prefix).__name__}")
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q for q in queries):
        raise ValueError("queries must be a non-empty list of non-empty strings")
    boolean(strict, "strict")
    full = tokenizer([prefix + q for q in queries])["input_ids"]
    alone = tokenizer(prefix)["input_ids"] if prefix else []
    n = len(alone)
    for i, ids in enumerate(full):
        c = common_prefix(alone, ids)
        if strict and c < len(alone):
            raise ValueError(f"strict: the tokens of prefix + queries[{i}] do not start with the prefix's own "
                             f"{len(alone)} tokens (they agree on {c}); the boundary merges across prefix and query")
        n = min(n, c, len(ids) - 1)
    if strict and n < len(alone):
        raise ValueError(f"strict: a query leaves no token of its own after the prefix's {len(alone)} tokens")
    return full[0][:n], [ids[n:] for ids in full], len(alone)


def shared_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            sliding_window: int | None = None, softcap: float | None = None,
                            **kwargs) -> tuple[torch.Tensor, None]:
    r"""Causal attention of a batch of right-padded queries over one shared prefix plus their own tokens (module
    docstring): ``query (B, H, q, d)``, the queries' own ``key``/``value (B, H_kv, q, d)``; the prefix's keys and
    values come from the active shared prefix (set by :func:`prefix_states`), indexed by ``module.layer_idx``.
    Scores over the prefix are one ``bmm`` per key/value head with the batch folded into the rows (no copy of the
    prefix per query); scores, softmax (one shared maximum over both parts) and the weighted sum run in float32, also
    for a bfloat16 model (as the fused CPU kernel accumulates). A sliding window W keeps
    the keys at positions :math:`> p - W` for a query at position p (transformers' ``sliding_window_overlay``);
    ``softcap`` c (Gemma 2) maps every score s to :math:`c \tanh(s / c)` before the softmax.
    Returns ``(output (B, q, H, d_v), None)``, the layout of transformers' attention functions."""
    prefix = _ACTIVE.get()
    if prefix is None:
        raise RuntimeError(f"{ATTENTION} attention runs only inside prefix_states (no shared prefix is active)")
    if attention_mask is not None:
        raise ValueError(f"{ATTENTION}: explicit attention masks are not supported (right padding needs none)")
    pk, pv, first = prefix.layers[module.layer_idx]
    b, h, q, d = query.shape
    hkv, n, dv = pk.shape[0], pk.shape[1], pv.shape[-1]
    g = h // hkv
    dev = query.device
    work = torch.promote_types(query.dtype, torch.float32)      # bfloat16 models: scores and softmax in float32
    pk, pv, key, value = pk.to(work), pv.to(work), key.to(work), value.to(work)   # no copy when already `work`
    # rows (h_kv, b, g, q) against the prefix's n keys and the batch's own q keys
    qg = query.to(work).reshape(b, hkv, g * q, d)
    s_pre = torch.bmm(qg.transpose(0, 1).reshape(hkv, b * g * q, d), pk.transpose(1, 2))
    s_pre = s_pre.view(hkv, b, g, q, n).mul_(scaling)
    s_own = torch.matmul(qg, key.transpose(-1, -2)).view(b, hkv, g, q, q).transpose(0, 1).mul_(scaling)
    if softcap is not None:                                  # Gemma 2: c tanh(s / c) on every score
        s_pre = s_pre.div_(softcap).tanh_().mul_(softcap)
        s_own = s_own.div_(softcap).tanh_().mul_(softcap)
    i = torch.arange(q, device=dev)
    hidden_own = i[None, :] > i[:, None]                                    # key j after query i
    if sliding_window is not None:
        hidden_own |= i[None, :] <= i[:, None] - sliding_window
        key_pos = first + torch.arange(n, device=dev)
        hidden_pre = key_pos[None, :] <= (prefix.length + i)[:, None] - sliding_window
        s_pre.masked_fill_(hidden_pre, float("-inf"))
    s_own.masked_fill_(hidden_own, float("-inf"))
    top = torch.maximum(s_pre.amax(-1), s_own.amax(-1)).unsqueeze(-1)       # finite: each query sees itself
    e_pre, e_own = s_pre.sub_(top).exp_(), s_own.sub_(top).exp_()
    z = (e_pre.sum(-1) + e_own.sum(-1)).unsqueeze(-1)
    out = torch.bmm(e_pre.view(hkv, b * g * q, n), pv).view(hkv, b, g, q, dv)
    out = out.add_(torch.matmul(e_own, value.transpose(0, 1).unsqueeze(2))).div_(z).to(query.dtype)
    return out.permute(1, 3, 0, 2, 4).reshape(b, q, h, dv), None


@contextmanager
def _shared_prefix_attention(model, cache, n_prefix: int):
    """Within the block the model's attention is :func:`shared_prefix_attention` over ``cache``'s keys and values
    (one row each), and its own implementation again after."""
    from transformers import AttentionInterface

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, shared_prefix_attention)
    layers = {}
    for i, layer in enumerate(cache.layers):
        work = torch.promote_types(layer.keys.dtype, torch.float32)
        keys, values = layer.keys[0].to(work), layer.values[0].to(work)
        layers[i] = (keys, values, n_prefix - keys.shape[1])
    own = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    if model.config._attn_implementation != ATTENTION:
        raise ValueError(f"{type(model).__name__} cannot switch its attention implementation; use padding_side='left'")
    token = _ACTIVE.set(_SharedPrefix(layers, n_prefix))
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        model.set_attn_implementation(own)


def _sliding_layers(model) -> bool:
    """True when the model's key/value cache has sliding-window layers (read from an empty ``DynamicCache`` built
    from the config, the same dispatch the forward pass uses)."""
    from transformers import DynamicCache

    return any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers)


def _left_pack(rows: list[list[int]], idx: list[int], pad: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Rows padded on the left: ids ``(b, T)`` and the query mask ``(b, T)`` (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, r in enumerate(rows):
        ids[row, width - len(r):] = torch.tensor(r)
        mask[row, width - len(r):] = 1
    return idx, ids, mask


@torch.no_grad()
def prefix_states(lm: LoadedModel, prefix: str, queries: list[str], *, batch_size: int = 8,
                  max_batch_tokens: int | None = None, padding_side: str = "right", strict: bool = False,
                  progress: bool = False) -> PrefixStates:
    """Last-token residual states of every layer of the prompts ``prefix + q`` for each q in ``queries``, with the
    prefix forwarded once (module docstring). Queries are batched as in ``hidden_states``
    (``states.length_batches``: by length, at most ``batch_size`` queries and ``max_batch_tokens`` padded query
    tokens a batch, default ``lm.max_batch_tokens``). With right padding every batch attends to the one stored
    prefix through :func:`shared_prefix_attention`; with left padding each batch gets the prefix's key/value cache
    repeated over its rows (``Cache.batch_repeat_interleave`` of a copy) and the model's own attention. On an
    accelerator's out-of-memory error a batch is split in two and retried, down to one query. The full prompts must
    fit the model's context window (checked before any forward pass)."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    positive_int(batch_size, "batch_size")
    budget = batch_budget(lm, max_batch_tokens)
    model, tok = lm.model, lm.tokenizer
    if padding_side == "left" and _sliding_layers(model):
        raise ValueError(f"padding_side='left' is not supported for {type(model).__name__}: its sliding-window "
                         "layers count padding slots inside the window; use padding_side='right'")
    shared, rest, n_alone = shared_prefix_tokens(tok, prefix, queries, strict=strict)
    n_shared = len(shared)
    check_lengths(lm, [n_shared + len(r) for r in rest], f"{len(queries)} prefix + query prompts")
    pad = tok.pad_token_id or 0
    device = lm.device
    norm = final_norm(model)
    current: dict[str, torch.Tensor] = {}
    captured: list[torch.Tensor] = []

    def last_token(h: torch.Tensor) -> torch.Tensor:
        return h[current["rows"].to(h.device), current["last"].to(h.device)]

    hook = norm.register_forward_pre_hook(lambda _m, args: captured.append(last_token(args[0]).float().cpu()))
    out = torch.empty(len(queries), lm.n_layers + 1, model.config.hidden_size)
    result = PrefixStates(out, list(shared), rest, n_alone, padding_side=padding_side)
    bar = tqdm(total=len(queries), desc="query passes", disable=not progress, unit="query")
    stack, shared_attention = ExitStack(), False
    try:
        cache = None
        if n_shared:
            current["rows"], current["last"] = torch.zeros(1, dtype=torch.long), torch.tensor([n_shared - 1])
            cache = model.base_model(input_ids=torch.tensor([shared], device=device), use_cache=True).past_key_values
            if padding_side == "right":
                stack.enter_context(_shared_prefix_attention(model, cache, n_shared))
                shared_attention = True
        pending = [pack_right([rest[i] for i in idx], idx, pad) if padding_side == "right"
                   else _left_pack([rest[i] for i in idx], idx, pad)
                   for idx in length_batches([len(r) for r in rest], batch_size, budget)]
        while pending:
            batch = pending.pop(0)
            idx, ids, aux = batch
            b, width = ids.shape
            kwargs: dict = {}
            if padding_side == "right":
                last = aux                                          # each query's last real column
                if shared_attention:
                    kwargs["position_ids"] = torch.arange(n_shared, n_shared + width, device=device).expand(b, -1)
            else:
                last = torch.full((b,), width - 1, dtype=torch.long)
                kwargs["attention_mask"] = torch.cat([torch.ones(b, n_shared, dtype=torch.long), aux], 1).to(device)
                kwargs["position_ids"] = (n_shared + (aux.cumsum(1) - 1).clamp(min=0)).to(device)
            current["rows"], current["last"] = torch.arange(b), last
            captured.clear()
            past = None
            if cache is not None and not shared_attention:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(b)
            try:
                res = model.base_model(input_ids=ids.to(device), past_key_values=past, output_hidden_states=True,
                                       use_cache=past is not None, **kwargs)
            except OOM_ERRORS as err:
                res = None
                if b == 1:
                    raise RuntimeError(f"out of memory on one query of {width} tokens after a prefix of {n_shared}: "
                                       "use a larger device or a shorter prompt") from err
            if res is None:  # outside the except block, so that the failed attempt's memory can be freed
                del past
                captured.clear()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if padding_side == "right":
                    pending[:0] = split_batch(batch)
                else:
                    half = b // 2
                    pending[:0] = [_left_pack([rest[i] for i in part], part, pad) for part in (idx[:half], idx[half:])]
                continue
            states = torch.stack([last_token(h).float().cpu() for h in res.hidden_states[:-1]] + [captured[-1]], dim=1)
            out[idx] = states
            result.padded_tokens += ids.numel()
            result.n_batches += 1
            del res, past
            bar.update(b)
    finally:
        stack.close()
        bar.close()
        hook.remove()
    return result
