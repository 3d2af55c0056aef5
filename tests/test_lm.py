"""Language-model engine on tiny random configs (no downloads): logit lens, batching, cache, analyses, data."""
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

from cgar_src import data, lens
from cgar_src.cache import cached_states
from cgar_src.lm import LoadedModel, Unembed, hidden_states


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
    (cold.path / "chunk_00001.pt").write_bytes(b"garbage")
    fixed = cached_states(tiny, prompts, meta, cache_root=tmp_path, chunk_size=2, progress=False)
    assert fixed.n_forward == 2 and fixed.states.equal(cold.states)
    # a different description is a different cache entry
    other = cached_states(tiny, prompts, {**meta, "seed": 1}, cache_root=tmp_path, chunk_size=2, progress=False)
    assert other.n_forward == 4 and other.path != cold.path
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="prompts"):
        cached_states(tiny, [], meta, cache_root=tmp_path)


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
