"""One prefix, many queries (cgar_src.lm.prefix) on tiny random Llama, Qwen2, GPT-2 and Gemma-3 configs: the states
of prefix + query equal those of the full prompts, whatever the batching, padding side or tokenizer boundary."""
import pytest
import torch
from test_lm import CONFIGS, V, _fail_when, byte_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from cgar_src.lm import LoadedModel, hidden_states
from cgar_src.lm.prefix import prefix_states, shared_prefix_tokens

# Gemma-3: sliding-window layers (window 8, far shorter than the prefix) between global ones, so the prefix cache of
# a sliding layer holds only its last 7 keys and the expansion must keep the layer's own position bookkeeping
GEMMA3 = (Gemma3ForCausalLM, Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=V,
                                              sliding_window=8, max_position_embeddings=512,
                                              layer_types=["sliding_attention", "full_attention",
                                                           "sliding_attention", "full_attention"]))
ALL = {**CONFIGS, "gemma3": GEMMA3}


@pytest.fixture(params=sorted(ALL), scope="module")
def tiny4(request):
    torch.manual_seed(0)
    cls, cfg = ALL[request.param]
    return LoadedModel(model=cls(cfg).eval(), tokenizer=byte_tokenizer(), model_id=f"tiny-{request.param}",
                       revision="none", dtype="float32")


PREFIX = ("Review: a gorgeous, witty film\nSentiment: positive\n\n"
          "Review: dull and far too long\nSentiment: negative")
QUERIES = ["\n\nReview: " + t + "\nSentiment:" for t in
           ["fine", "a moving and beautifully acted story", "no", "so bad it hurts", "an utter triumph of style",
            "meh", "the plot never arrives, and the jokes leave early", "ok!", "wow", "charming"]]


def _full(prefix, queries):
    return [prefix + q for q in queries]


@pytest.fixture(scope="module")
def want(tiny4):
    """The reference: hidden_states of the full prompts, batched by 8 (batched equals unbatched to 1e-4,
    tests/test_lm.py), computed once per model."""
    return hidden_states(tiny4, _full(PREFIX, QUERIES), batch_size=8, progress=False)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_prefix_states_equal_the_full_prompts(tiny4, want, batch_size):
    """10 queries of 5 to 50 characters: with batch size 8 one batch is padded over very different lengths."""
    got = prefix_states(tiny4, PREFIX, QUERIES, batch_size=batch_size)
    assert got.states.shape == want.shape == (len(QUERIES), tiny4.n_layers + 1, 64)
    torch.testing.assert_close(got.states, want, atol=1e-4, rtol=0)
    # the prefix ran once: every query forwards only its own tokens
    assert got.n_prefix == len(PREFIX) and got.n_boundary == 0          # byte-level: one token per character
    assert got.query_ids == [list(tiny4.tokenizer(q)["input_ids"]) for q in QUERIES]
    assert got.tokens_forwarded == len(PREFIX) + sum(len(q) for q in QUERIES)
    assert got.tokens_full == sum(len(p) for p in _full(PREFIX, QUERIES))
    assert got.n_batches == (len(QUERIES) if batch_size == 1 else 2)


def test_left_padding_gives_the_same_states(tiny4, want):
    if tiny4.model_id == "tiny-gemma3":   # sliding windows count padding slots: refused, not silently wrong
        with pytest.raises(ValueError, match="padding_side"):
            prefix_states(tiny4, PREFIX, QUERIES, padding_side="left")
        return
    left = prefix_states(tiny4, PREFIX, QUERIES, batch_size=8, padding_side="left")
    torch.testing.assert_close(left.states, want, atol=1e-4, rtol=0)
    assert left.padding_side == "left" and left.padded_tokens > left.tokens_forwarded - left.n_prefix
    bare = [q.lstrip() for q in QUERIES]                 # no prefix: padding rows see nothing, real rows unharmed
    torch.testing.assert_close(prefix_states(tiny4, "", bare, batch_size=8, padding_side="left").states,
                               hidden_states(tiny4, bare, batch_size=8, progress=False), atol=1e-4, rtol=0)


def test_batch_budget_and_no_prefix(tiny4, want):
    """A tight token budget splits the queries into more batches (same states); an empty prefix runs the queries
    as they are (nothing shared)."""
    tight = prefix_states(tiny4, PREFIX, QUERIES, batch_size=8, max_batch_tokens=60)
    torch.testing.assert_close(tight.states, want, atol=1e-4, rtol=0)
    assert tight.n_batches > 2
    bare = [q.lstrip() for q in QUERIES]
    none = prefix_states(tiny4, "", bare, batch_size=4)
    assert none.n_prefix == 0
    torch.testing.assert_close(none.states, hidden_states(tiny4, bare, batch_size=4, progress=False),
                               atol=1e-4, rtol=0)


def merge_tokenizer():
    """Byte-level BPE whose one merge joins two newlines: "x\\n" + "\\ny" tokenizes across the boundary."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["ĊĊ"] = len(vocab)                                   # 256: inside the tiny models' vocabulary of 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "Ċ")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_tokenization_rule_at_a_merging_boundary(tiny4):
    tok = merge_tokenizer()
    prefix, queries = "Review: good\nSentiment: positive\n", ["\nReview: bad\nSentiment:", "\nReview: ok\nSentiment:"]
    assert tok(prefix + queries[0])["input_ids"][len(prefix) - 1] == 256          # the boundary merges
    with pytest.raises(ValueError, match="strict"):
        shared_prefix_tokens(tok, prefix, queries, strict=True)
    shared, rest, n_alone = shared_prefix_tokens(tok, prefix, queries)
    assert n_alone == len(prefix) and len(shared) == n_alone - 1                  # the last newline moved over
    assert all(shared + r == tok(prefix + q)["input_ids"] for q, r in zip(queries, rest))
    lm = LoadedModel(model=tiny4.model, tokenizer=tok, model_id=tiny4.model_id, revision="none", dtype="float32")
    got = prefix_states(lm, prefix, queries, batch_size=2)
    assert got.n_boundary == 1
    torch.testing.assert_close(got.states, hidden_states(lm, _full(prefix, queries), batch_size=2, progress=False),
                               atol=1e-4, rtol=0)
    # a query that is the prefix's own continuation still runs at least its last token
    shared, rest, _ = shared_prefix_tokens(byte_tokenizer(), "abc", ["d", "de"])
    assert shared == byte_tokenizer()("abc")["input_ids"] and [len(r) for r in rest] == [1, 2]


def test_bad_input_is_refused():
    lm = LoadedModel(model=CONFIGS["llama"][0](CONFIGS["llama"][1]).eval(), tokenizer=byte_tokenizer(),
                     model_id="tiny-llama", revision="none", dtype="float32")
    for kwargs, name in [(dict(padding_side="middle"), "padding_side"), (dict(batch_size=0), "batch_size"),
                         (dict(max_batch_tokens=0), "max_batch_tokens"), (dict(strict="yes"), "strict")]:
        with pytest.raises(ValueError, match=name):
            prefix_states(lm, PREFIX, QUERIES, **kwargs)
    with pytest.raises(ValueError, match="queries"):
        prefix_states(lm, PREFIX, [])
    with pytest.raises(ValueError, match="queries"):
        prefix_states(lm, PREFIX, ["ok", ""])
    with pytest.raises(ValueError, match="context window"):
        prefix_states(lm, "x" * 5000, ["y"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_out_of_memory_splits_the_query_batch(monkeypatch, padding_side):
    """A batch that runs out of accelerator memory is split in two and retried: every query's states, in order,
    none lost or done twice; one query that does not fit is an error."""
    torch.manual_seed(0)
    lm = LoadedModel(model=CONFIGS["llama"][0](CONFIGS["llama"][1]).eval(), tokenizer=byte_tokenizer(),
                     model_id="tiny-llama", revision="none", dtype="float32")
    reference = prefix_states(lm, PREFIX, QUERIES, batch_size=8, padding_side=padding_side).states
    shapes = _fail_when(monkeypatch, lm, lambda ids: ids.shape[0] > 2)
    got = prefix_states(lm, PREFIX, QUERIES, batch_size=8, padding_side=padding_side)
    torch.testing.assert_close(got.states, reference, atol=1e-4, rtol=0)
    ok = [s for s in shapes[1:] if s[0] <= 2]                     # shapes[0]: the prefix's own pass
    assert shapes[0] == (1, len(PREFIX)) and sum(s[0] for s in ok) == len(QUERIES) and got.n_batches == len(ok)
    monkeypatch.undo()
    _fail_when(monkeypatch, lm, lambda ids: ids.shape[1] < len(PREFIX) and ids.shape[1] > 20)
    with pytest.raises(RuntimeError, match="out of memory on one query"):
        prefix_states(lm, PREFIX, QUERIES, batch_size=1, padding_side=padding_side)


def _reference_attention(query, pk, pv, first, n_prefix, key, value, scaling, window):
    """Causal attention written out over the explicit key sequence (the stored prefix keys, then the queries' own):
    every row of the batch gets its own copy of the prefix, softmax over the visible keys."""
    b, h, q, _ = query.shape
    g = h // pk.shape[0]
    keys = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), key], 2).repeat_interleave(g, 1)
    values = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), value], 2).repeat_interleave(g, 1)
    pos_k = torch.cat([first + torch.arange(pk.shape[1]), n_prefix + torch.arange(q)])
    pos_q = n_prefix + torch.arange(q)
    visible = pos_k[None, :] <= pos_q[:, None]
    if window is not None:
        visible &= pos_k[None, :] > pos_q[:, None] - window
    scores = (query.double() @ keys.double().transpose(-1, -2)) * scaling
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (weights @ values.double()).transpose(1, 2)                        # (b, q, h, d)


@pytest.mark.parametrize("window", [None, 3, 6, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_attention_is_causal_attention_over_prefix_and_query(window, dtype):
    """The folded attention (one stored prefix for every row) against attention over each row's explicit prompt,
    with grouped key/value heads (4 query heads, 2 key/value heads), a stored prefix that starts after position 0
    (a sliding layer's cache) and windows shorter than the query, than the prefix, and longer than both."""
    from types import SimpleNamespace

    from cgar_src.lm.prefix import _ACTIVE, _SharedPrefix, shared_prefix_attention

    gen = torch.Generator().manual_seed(0)
    b, h, hkv, q, d, n_prefix, first = 3, 4, 2, 5, 8, 11, 2
    query, key, value = (torch.randn(b, n_h, q, d, generator=gen) for n_h in (h, hkv, hkv))
    pk, pv = torch.randn(hkv, n_prefix - first, d, generator=gen), torch.randn(hkv, n_prefix - first, d, generator=gen)
    want = _reference_attention(query, pk, pv, first, n_prefix, key, value, 0.3, window)
    token = _ACTIVE.set(_SharedPrefix({0: (pk.to(dtype), pv.to(dtype), first)}, n_prefix))
    try:
        got, weights = shared_prefix_attention(SimpleNamespace(layer_idx=0), query.to(dtype), key.to(dtype),
                                               value.to(dtype), None, scaling=0.3, sliding_window=window)
    finally:
        _ACTIVE.reset(token)
    assert weights is None and got.dtype == dtype and got.shape == (b, q, h, d)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_shared_prefix_attention_only_inside_prefix_states(tiny4):
    """Outside prefix_states the attention function refuses to run, and prefix_states gives the model its own
    attention implementation back, also when a query pass fails."""
    from types import SimpleNamespace

    from cgar_src.lm.prefix import shared_prefix_attention

    x = torch.zeros(1, 2, 1, 4)
    with pytest.raises(RuntimeError, match="inside prefix_states"):
        shared_prefix_attention(SimpleNamespace(layer_idx=0), x, x[:, :1], x[:, :1], None, scaling=1.0)
    own = tiny4.model.config._attn_implementation
    prefix_states(tiny4, PREFIX, QUERIES[:3], batch_size=2)
    assert tiny4.model.config._attn_implementation == own

    def fail(*args, **kwargs):
        raise KeyError("a failing query pass")

    real = tiny4.model.base_model.forward
    calls = []

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) if len(calls) == 1 else fail()

    tiny4.model.base_model.forward = second_call_fails
    try:
        with pytest.raises(KeyError, match="failing"):
            prefix_states(tiny4, PREFIX, QUERIES[:3], batch_size=2)
    finally:
        del tiny4.model.base_model.forward
    assert len(calls) == 2 and tiny4.model.config._attn_implementation == own
