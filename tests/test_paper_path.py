"""The `paper` profile's code path on CPU: every transformer chapter of params/paper.yaml, executed with papermill on a
tiny random Llama saved in bfloat16 (the SmolLM2 tokenizer beside it, so label words and LAMA objects tokenise as
for a real model), with small sizes. It guards the GPU path's dtype logic (bf16 weights, float32 states and lens,
dtype-dependent tolerances) without a GPU: what would break on Llama-3-8B in bf16 breaks here first.

The chapter list comes from params/paper.yaml and each chapter's parameters from its own parameters cell, read at
test time (as `python -m cgar_src.book.run` does), so chapters can be added or rewritten without touching this test.
Select it alone with `python -m pytest tests/test_paper_path.py` (or `-m paper_path`).
"""
import json

import pytest
import torch
from _chapter_path import run_every_chapter

pytestmark = pytest.mark.paper_path


@pytest.fixture(scope="module")
def tiny_bf16_llama(tmp_path_factory):
    """A random 4-block Llama (hidden 64) with SmolLM2-135M's tokenizer and vocabulary, saved in bfloat16 (4 blocks:
    the chapters pick layers as fractions of the depth, which a 2-block model collapses)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cgar_src.lm import default_model_dir

    folder = tmp_path_factory.mktemp("tiny-bf16-llama")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=8192,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_every_transformer_chapter_runs_on_a_bf16_llama(tiny_bf16_llama, tmp_path, monkeypatch):
    from cgar_src.book.run import load_profile
    from cgar_src.lm import load_model

    lm = load_model(str(tiny_bf16_llama), dtype="bfloat16")
    assert lm.model.dtype == torch.bfloat16 and lm.revision == "local"
    assert load_profile("paper")["dtype"] == "bfloat16"
    run_every_chapter("paper", tiny_bf16_llama, tmp_path, monkeypatch)


def test_bench_gpu_runs_on_a_tiny_random_model(tmp_path, capsys, monkeypatch):
    """benchmarks/bench_gpu.py, the script that measures the paper profile on a GPU, on CPU with a tiny random Llama:
    one dataset, shots 0 and 1, one chapter; its accounting must be consistent (tokens, FLOPs, stages)."""
    import importlib.util

    from cgar_src.book.run import ROOT
    from cgar_src.tasks import data

    if data.data_dir() is None:
        pytest.skip("no local data directory")
    # bench_gpu points CGAR_CACHE at its own cold cache; monkeypatch puts the variable back afterwards, so that the
    # chapters' kernels started later in the same session (nbval) keep reading the user's state cache
    monkeypatch.setenv("CGAR_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--profile", "paper", "--model", "tiny-random", "--device", "cpu", "--set", "n_queries=6",
                         "--set", "shots=[0, 1]", "--set", "datasets=[sst2]", "--chapters",
                         "--peak-tflops", "1.0", "--workdir", str(tmp_path), "--json", str(tmp_path / "b.json")])
    assert [(s["dataset"], s["shots"]) for s in report["stages"]] == [("sst2", 0), ("sst2", 1)]
    zero, one = report["stages"]
    # each stage: 6 queries and its demonstration set's content-free prompt; k=1 reuses the zero-shot states
    assert zero["prompts"] == 7 and one["prompts"] == 7
    assert one["tokens"] > zero["tokens"] > 0 and one["padded_tokens"] >= one["tokens"]
    from transformers import AutoModelForCausalLM

    w = bench.body_matmul_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-random"))  # saved by bench
    assert w == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)   # q, o; k, v (2 kv heads of 16); gate, up, down
    assert zero["flops"] > 2 * w * zero["tokens"]               # plus attention
    assert 0 < zero["fraction_of_peak"] == zero["tflops"] / 1.0
    assert report["dtype"] == "bfloat16" and report["chapters"] == []
    assert json.loads((tmp_path / "b.json").read_text())["stages"][1]["tokens"] == one["tokens"]
    assert "total" in capsys.readouterr().out
