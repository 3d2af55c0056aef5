"""Language-model engine on tiny random configs (no downloads): logit lens, batching, cache, analyses, data."""
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from cgar_src.analysis import lens
from cgar_src.lm import LoadedModel, Unembed, hidden_states
from cgar_src.lm.cache import cached_states
from cgar_src.tasks import data


def byte_tokenizer():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["<pad>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


V = 257
CONFIGS = {
    "llama": (LlamaForCausalLM, LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=V)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=V)),
    "gpt2": (GPT2LMHeadModel, GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=V, n_positions=256)),
}


@pytest.fixture(params=sorted(CONFIGS), scope="module")
def tiny(request):
    torch.manual_seed(0)
    cls, cfg = CONFIGS[request.param]
    model = cls(cfg).eval()
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), model_id=f"tiny-{request.param}", revision="none",
                       dtype="float32")


PROMPTS = ["Review: good film\nSentiment:", "a", "Question: who?\nAnswer type:", "Article: stocks fell sharply"]


def test_last_layer_decode_reproduces_logits(tiny):
    un = Unembed(tiny.model)
    states = hidden_states(tiny, PROMPTS, batch_size=1, progress=False)
    assert states.shape == (len(PROMPTS), tiny.n_layers + 1, 64) and states.dtype == torch.float32
    for i, p in enumerate(PROMPTS):
        enc = tiny.tokenizer(p, return_tensors="pt")
        logits = tiny.model(**enc).logits[0, -1]
        torch.testing.assert_close(un(states[i, -1]), logits, atol=1e-4, rtol=0)


def test_batched_equals_unbatched(tiny):
    one = hidden_states(tiny, PROMPTS, batch_size=1, progress=False)
    many = hidden_states(tiny, PROMPTS, batch_size=4, progress=False)
    torch.testing.assert_close(many, one, atol=1e-4, rtol=0)


# prompts of different lengths, some sharing leading parts (used by tests/test_gemma.py and tests/test_gemma_path.py)
TWIN_PROMPTS = ["Review: good film\nSentiment: positive\n\nReview: so bad\nSentiment:",
                "Question: who?\nAnswer type: Human\n\nQuestion: where is it\nAnswer type:",
                "Article: stocks fell sharply", "xyz", "short"]


def test_streaming_decode_matches_full_softmax(tiny):
    un = Unembed(tiny.model)
    states = hidden_states(tiny, PROMPTS, progress=False)
    labels = [5, 17, 101]
    st = lens.decode_stats(un, states, labels, vocab_chunk=50, state_batch=3)
    p = torch.softmax(un(states), -1)
    torch.testing.assert_close(st.n_eff, torch.exp(-(p * p.log()).sum(-1)), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(st.label_mass, p[..., labels].sum(-1), atol=1e-6, rtol=1e-5)
    assert (st.argmax == p.argmax(-1)).all()


def test_additive_retrieval_grid(tiny):
    un = Unembed(tiny.model)
    h = hidden_states(tiny, PROMPTS, progress=False)
    c = lens.context_vector(h.flip(0), h)
    st = lens.additive_retrieval(un, h, c, [1, 2], lambdas=[0.0, 0.5], context_layers=[1, 3], query_layers=[3])
    assert st.n_eff.shape == (4, 1, 2, 2)
    zero = lens.decode_stats(un, h[:, 3], [1, 2])
    torch.testing.assert_close(st.n_eff[:, 0, 0, 0], zero.n_eff)        # lambda = 0 is the zero-shot decode
    direct = lens.decode_stats(un, h[:, 3] + 0.5 * c[1], [1, 2])
    torch.testing.assert_close(st.label_logits[:, 0, 0, 1], direct.label_logits)
    with pytest.raises(ValueError, match="context_layers"):
        lens.additive_retrieval(un, h, c, [1], lambdas=[1.0], context_layers=[9], query_layers=[3])
    with pytest.raises(ValueError, match="lambdas"):
        lens.additive_retrieval(un, h, c, [1], lambdas=[float("nan")], context_layers=[1], query_layers=[3])
    with pytest.raises(ValueError, match="variant"):
        lens.context_vector(h, h, "mean")


def test_cache_counts_forward_passes_and_recovers(tiny, tmp_path):
    prompts = PROMPTS + PROMPTS[:2]  # duplicates share one forward pass
    meta = {"dataset": "toy", "shots": 0, "seed": 0}
    cold = cached_states(tiny, prompts, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    assert cold.n_forward == 4
    warm = cached_states(tiny, prompts, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    assert warm.n_forward == 0 and warm.states.equal(cold.states)
    # a damaged chunk is detected and recomputed, not used
    (cold.path / "chunk_00001.safetensors").write_bytes(b"garbage")
    fixed = cached_states(tiny, prompts, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    assert fixed.n_forward == 2 and fixed.states.equal(cold.states)
    # a different description is a different cache entry
    other = cached_states(tiny, prompts, {**meta, "seed": 1}, cache_root=tmp_path, chunk_size=2, progress=False)
    assert other.n_forward == 4 and other.path != cold.path
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="prompts"):
        cached_states(tiny, [], meta, cache_root=tmp_path)


def test_cache_stores_safetensors_and_never_unpickles(tiny, tmp_path, monkeypatch):
    """Chunks are safetensors files (tensor plus the prompts' sha256 as metadata); a chunk in the old pickled format
    sitting where a chunk would be is ignored and recomputed, and torch.load / pickle are never called."""
    import pickle

    from safetensors import safe_open

    meta = {"dataset": "toy", "shots": 0, "seed": 0}
    cold = cached_states(tiny, PROMPTS, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    files = sorted(cold.path.glob("chunk_*"))
    assert files and all(f.suffix == ".safetensors" for f in files)
    with safe_open(str(files[0]), framework="pt") as f:
        assert set(f.keys()) == {"states"} and "prompt_sha" in f.metadata()
    # the old format: a pickled dict beside (and in place of) the new chunks
    for f in files:
        torch.save({"prompt_sha": [], "states": torch.zeros(1)}, f.with_suffix(".pt"))
        f.unlink()

    def forbidden(*args, **kwargs):
        raise AssertionError("the state cache unpickled a file")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    again = cached_states(tiny, PROMPTS, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    assert again.n_forward == len(PROMPTS) and again.states.equal(cold.states)
    warm = cached_states(tiny, PROMPTS, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    assert warm.n_forward == 0 and warm.states.equal(cold.states)


def test_data_prompts_and_demos():
    pool = [data.Example(f"text {i}", i % 2) for i in range(20)]
    rng = random.Random(0)
    demos = data.sample_demos(pool, 2, 2, rng, exclude="text 0")
    assert sorted(d.label for d in demos) == [0, 0, 1, 1] and all(d.text != "text 0" for d in demos)
    assert data.sample_demos(pool, 2, 2, random.Random(0), exclude="text 0") == demos  # seeded
    with pytest.raises(ValueError, match="shots"):
        data.sample_demos(pool, 11, 2, rng)
    prompt = data.icl_prompt(data.TASKS["sst2"], "a query", demos)
    assert prompt.endswith("Review: a query\nSentiment:") and prompt.count("Sentiment:") == 5
    with pytest.raises(ValueError, match="share their first token"):
        data.label_token_ids(byte_tokenizer(), ["negative", "positive"])
    with pytest.raises(ValueError, match="dataset"):
        data.load_examples("imdb", "train")


def test_local_data_formats():
    root = data.data_dir()
    if root is None:
        pytest.skip("no local data directory")
    sst = data.load_examples("sst2", "test")
    assert len(sst) == 1821 and {e.label for e in sst} == {0, 1}
    trec = data.load_examples("trec", "test")
    assert len(trec) == 500 and {e.label for e in trec} == set(range(6))
    ag = data.load_examples("agnews", "test-odd")
    assert len(ag) == 3800 and {e.label for e in ag} == set(range(4))
    facts = data.load_facts(["P19"])
    prompts = data.lama_prompts(facts, facts[:3], 2, random.Random(0))
    assert all(p.endswith("was born in") for p in prompts["zero"])
    assert all(z in pos and z in neg for z, pos, neg in zip(prompts["zero"], prompts["positive"], prompts["negative"]))
    with pytest.raises(ValueError, match="split"):
        data.load_examples("sst2", "dev")


# --- the GPU-ready engine (issue 14): cache key, batching budget, out-of-memory retry, context window, loading ---

def test_state_cache_key_of_the_default_settings_is_unchanged(tmp_path):
    """Regression guard: the state-cache key of the default model with the default settings (float32, batch_size
    8, 2048 tokens a batch). The sha below was computed with the code of 2026-11-23, before the engine gained its
    max_batch_tokens setting, out-of-memory retry and float32 lens, with
    `cached_states(load_model(), PROMPTS_KEY, META_KEY).path.name`: the shared warm cache depends on it. Only the
    identity (model id, resolved revision, dtype) and the prompt texts enter the key, so a tiny model carrying the
    default model's identity reproduces it; tests/test_default_model.py checks that the real default model
    resolves to that identity. If this fails, every cached state would be recomputed."""
    torch.manual_seed(0)
    cls, cfg = CONFIGS["llama"]
    lm = LoadedModel(model=cls(cfg).eval(), tokenizer=byte_tokenizer(), model_id="smollm2-135m-instruct",
                     revision="gguf-sha256:b179c9523d0e6a0f", dtype="float32")
    prompts = ["Review: a gripping, funny film\nSentiment:", "Review: dull and overlong\nSentiment:"]
    meta = {"dataset": "sst2", "split": "test", "template": "Review: {text}\nSentiment:", "shots": 0, "seed": 0,
            "kind": "zero"}
    key = "ca3d160b707fc9d5e447736c4dca267fb6ee0523305021608b138d03834097ab"
    assert cached_states(lm, prompts, meta, cache_root=tmp_path, progress=False).path.name == key
    assert cached_states(lm, prompts, meta, cache_root=tmp_path, progress=False, max_batch_tokens=2048).path.name == key
    # the budget is part of the key (another grouping moves float results at the 1e-5 level) ...
    other = cached_states(lm, prompts, meta, cache_root=tmp_path, progress=False, max_batch_tokens=4096)
    assert other.path.name != key
    # ... and a LoadedModel's own budget is what the cache uses by default
    lm.max_batch_tokens = 4096
    assert cached_states(lm, prompts, meta, cache_root=tmp_path, progress=False).path == other.path


def test_max_batch_tokens_budget(tiny):
    from cgar_src.lm import length_batches

    lengths = [5, 40, 3, 41, 39]
    assert length_batches(lengths, 8, max_tokens=80) == [[2, 0], [4, 1], [3]]     # 2 x 40 fits, 3 x 41 does not
    assert length_batches(lengths, 8, max_tokens=10_000) == [[2, 0, 4, 1, 3]]
    alone = hidden_states(tiny, PROMPTS, batch_size=4, progress=False, max_batch_tokens=1)   # one prompt a batch
    together = hidden_states(tiny, PROMPTS, batch_size=4, progress=False, max_batch_tokens=10_000)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        hidden_states(tiny, PROMPTS, progress=False, max_batch_tokens=0)


def _fail_when(monkeypatch, lm, too_big):
    """Make the transformer body raise the accelerator's out-of-memory error on batches with too_big(ids) true;
    returns the list of batch shapes attempted."""
    body = lm.model.base_model
    original = body.forward
    shapes = []

    def forward(*args, **kwargs):
        ids = kwargs["input_ids"]
        shapes.append(tuple(ids.shape))
        if too_big(ids):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(body, "forward", forward)
    return shapes


def test_out_of_memory_splits_the_batch_and_retries(tiny, tmp_path, monkeypatch):
    prompts = PROMPTS * 3                                   # 12 prompts, 8 distinct lengths
    reference = hidden_states(tiny, prompts, batch_size=6, progress=False)
    ref_cache = cached_states(tiny, prompts, {"dataset": "toy"}, cache_root=tmp_path / "a", batch_size=6,
                              progress=False)
    shapes = _fail_when(monkeypatch, tiny, lambda ids: ids.shape[0] > 2)    # at most 2 prompts fit
    split = hidden_states(tiny, prompts, batch_size=6, progress=False)
    torch.testing.assert_close(split, reference, atol=1e-4, rtol=0)        # every prompt's states, in order
    assert max(s[0] for s in shapes) == 6 and all(s[0] <= 2 for s in shapes[-3:])
    ok = [s for s in shapes if s[0] <= 2]
    assert sum(s[0] for s in ok) == len(prompts)                            # no prompt lost, none done twice
    # after the first failure, batches as large are split before they run: one failed attempt per size, not per batch
    assert sum(s[0] > 2 for s in shapes) <= 2
    # the cache key does not depend on how the batch was split
    via_cache = cached_states(tiny, prompts, {"dataset": "toy"}, cache_root=tmp_path / "b", batch_size=6,
                              progress=False)
    assert via_cache.path.name == ref_cache.path.name and via_cache.n_forward == 4
    torch.testing.assert_close(via_cache.states, ref_cache.states, atol=1e-4, rtol=0)


def test_out_of_memory_on_one_prompt_is_an_error(tiny, monkeypatch):
    _fail_when(monkeypatch, tiny, lambda ids: ids.shape[1] > 10)
    with pytest.raises(RuntimeError, match="single prompt of 27 tokens"):
        hidden_states(tiny, PROMPTS, batch_size=1, progress=False)


def test_prompt_longer_than_the_context_window_is_rejected_before_any_forward_pass(tiny, monkeypatch, tmp_path):
    from cgar_src.lm import check_context_window, context_window

    window = context_window(tiny)
    assert window == {"tiny-gpt2": 256, "tiny-llama": 2048, "tiny-qwen2": 32768}[tiny.model_id]  # n_positions in GPT-2
    long = "x" * (window + 5)                                               # one byte, one token
    check_context_window(tiny, PROMPTS + ["x" * window], "fits")           # exactly the window is fine
    with pytest.raises(ValueError, match=rf"sst2, 4-shot: 1 of 5 exceed the context window .*{window} tokens.*"
                                         rf"prompt 2, has {window + 5} tokens"):
        check_context_window(tiny, PROMPTS[:2] + [long] + PROMPTS[2:], "sst2, 4-shot")
    shapes = _fail_when(monkeypatch, tiny, lambda ids: True)
    with pytest.raises(ValueError, match="context window"):
        cached_states(tiny, PROMPTS + [long], {"dataset": "toy"}, cache_root=tmp_path, progress=False)
    assert shapes == [] and not list(tmp_path.rglob("chunk_*"))


def test_tolerance_scales_with_the_unit_round_off():
    from cgar_src.lm import tolerance

    assert tolerance("float32") == tolerance(torch.float64) == 1e-5
    assert tolerance("bfloat16") == 8 * 2.0 ** -7 and tolerance(torch.float16) == 8 * 2.0 ** -10
    assert tolerance("bfloat16", float32=0.1) == 0.1
    for bad in ("int8", torch.int64, 3):
        with pytest.raises(ValueError, match="dtype"):
            tolerance(bad)


def test_float32_logit_lens_of_a_bf16_model():
    torch.manual_seed(0)
    cls, cfg = CONFIGS["llama"]
    model32 = cls(cfg).eval()
    model16 = cls(cfg).eval()
    model16.load_state_dict(model32.state_dict())
    model16 = model16.to(torch.bfloat16)
    h = torch.randn(5, 64)
    lens16, lens32 = Unembed(model16), Unembed(model16, float32=True)
    assert lens16.dtype == torch.bfloat16 and lens32.dtype == torch.float32
    assert model16.lm_head.weight.dtype == torch.bfloat16 and model16.model.norm.weight.dtype == torch.bfloat16
    # the float32 lens is the float32 model's lens on the bf16-rounded weights: compare with those weights in float32
    ref = cls(cfg).eval()
    ref.load_state_dict({k: v.float() for k, v in model16.state_dict().items()})
    torch.testing.assert_close(lens32(h), Unembed(ref)(h), atol=1e-5, rtol=1e-5)
    assert (lens16(h) - lens32(h)).abs().max() > 1e-4                        # the bf16 lens does round
    same = Unembed(model32, float32=True)                                     # a float32 model: no copy
    assert same.unembedding is model32.lm_head and same.final_norm is model32.model.norm
    with pytest.raises(ValueError, match="float32"):
        Unembed(model32, float32=1)


@pytest.fixture()
def saved_tiny(tmp_path):
    torch.manual_seed(0)
    cls, cfg = CONFIGS["llama"]
    folder = tmp_path / "tiny-llama"
    cls(cfg).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def test_load_model_passes_options_through_and_loads_onto_the_device(saved_tiny, monkeypatch):
    import huggingface_hub.utils as hub_utils
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from cgar_src.lm import load_model

    seen = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append((kwargs, hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    bars_before = (hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled())
    lm = load_model(str(saved_tiny), dtype="bfloat16", attn_implementation="eager", local_files_only=True,
                    token=False, max_batch_tokens=512)
    kwargs, loading_bar, hub_bars_off = seen[-1]
    assert kwargs["device_map"] == "cpu"                    # straight onto the device, not through .to(device)
    assert kwargs["attn_implementation"] == "eager" and kwargs["local_files_only"] is True and kwargs["token"] is False
    assert "revision" not in kwargs and "cache_dir" not in kwargs    # None is left out, not passed on
    assert not loading_bar and not hub_bars_off             # the per-tensor bar off, the hub's download bars on
    assert (hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()) == bars_before
    assert lm.model.config._attn_implementation == "eager" and lm.model.dtype == torch.bfloat16
    assert lm.revision == "local" and lm.max_batch_tokens == 512 and lm.device.type == "cpu"
    assert lm.identity == {"model_id": str(saved_tiny), "revision": "local", "dtype": "bfloat16"}
    assert load_model(str(saved_tiny), device_map="cpu").dtype == "float32"
    assert seen[-1][0]["device_map"] == "cpu"
    for bad, name in [(dict(device="gpu0"), "device"), (dict(max_batch_tokens=0), "max_batch_tokens")]:
        with pytest.raises(ValueError, match=name):
            load_model(str(saved_tiny), **bad)


def test_resolved_revision_is_the_commit_hash_of_a_hub_snapshot(saved_tiny, tmp_path):
    """A hub model's revision in the cache key and params.json is the snapshot's commit hash, never "main": built
    offline as a hub cache folder (models--org--name/snapshots/<commit>, refs/main) read with local_files_only."""
    import shutil

    from cgar_src.lm import load_model

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(saved_tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    lm = load_model("acme/tiny-llama", cache_dir=tmp_path / "hub", local_files_only=True)
    assert lm.revision == commit and lm.identity["revision"] == commit
