"""benchmarks/bench_prefix.py: the FLOP accounting behind its engine fraction, and a smoke run on the default model
(tiny sizes; the measured ratios themselves are the script's output, never asserted as timings)."""
from types import SimpleNamespace

import pytest
from _bench import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_prefix")


def test_attention_flops_count_every_key_once(bench):
    cfg = SimpleNamespace(num_attention_heads=2, hidden_size=8, num_hidden_layers=3)   # head size 4
    per_key = 4 * 2 * 4 * 3
    assert bench.attention_flops(cfg, 0, [1]) == per_key                 # one token attends to itself
    assert bench.attention_flops(cfg, 0, [3]) == per_key * (1 + 2 + 3)
    # a prefix of 2 then queries of 1 and 2 tokens: prefix 1 + 2, query one 3, query two 3 + 4
    assert bench.attention_flops(cfg, 2, [1, 2]) == per_key * (1 + 2 + 3 + 3 + 4)
    # the same as the full prompts minus the prefix counted again
    full = bench.attention_flops(cfg, 0, [3, 4])
    assert full - bench.attention_flops(cfg, 2, [1, 2]) == per_key * (1 + 2)


def test_smoke_run_prints_the_summary_line(bench, capsys):
    out = bench.main(["--n-queries", "3", "--full-queries", "2", "--datasets", "trec", "--shots", "0", "1",
                      "--no-bf16", "--peak-size", "128", "--peak-reps", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("worst tokens-per-query ratio: ") and "; engine fraction of fp32 peak: " in last
    assert out["worst_ratio"] >= 1.0 and out["shape_ceiling_flops"] > 0
    assert all(r["max_rel_diff"] < 1e-3 for r in out["rows"])           # the two paths give the same states
    assert out["engine_fraction_of_peak_bf16"] is None and last.endswith(" (float32)")
    assert out["per_query_fraction_of_peak"] == pytest.approx(
        sum(r["flops_full"] for r in out["rows"]) / sum(r["wall_full"] for r in out["rows"]) / out["peak_flops"])


def test_smoke_run_in_bfloat16_reports_its_fraction_of_the_fp32_peak(bench, capsys):
    from cgar_src.book.params import cpu_supports_bfloat16

    if not cpu_supports_bfloat16():
        pytest.skip("this CPU has neither AMX nor AVX512-BF16")
    out = bench.main(["--n-queries", "3", "--full-queries", "2", "--datasets", "trec", "--shots", "1",
                      "--bf16", "--peak-size", "128", "--peak-reps", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    f16 = out["engine_fraction_of_peak_bf16"]
    assert f16 > 0 and last.endswith(f"(float32; bfloat16 engine: {f16:.3f})")
    # the same FLOPs over the bfloat16 wall time
    row = out["rows"][0]
    assert f16 == pytest.approx(row["flops_shared"] / row["wall_shared_bf16"] / out["peak_flops"])
    assert row["max_rel_diff_bf16"] < 0.2


def test_attention_flops_follow_head_size_and_sliding_windows(bench):
    """Heads x head size need not be the hidden size (Gemma 3: 4 x 256 against 640), and a sliding-window layer
    attends to at most its window: against a count written out token by token."""
    cfg = SimpleNamespace(num_attention_heads=4, head_dim=256, hidden_size=640, num_hidden_layers=2,
                          layer_types=["sliding_attention", "full_attention"], sliding_window=3)
    n_prefix, queries = 5, [1, 4]
    keys = 0
    for window in (3, None):
        positions = list(range(n_prefix)) + [n_prefix + j for q in queries for j in range(q)]
        keys += sum(t + 1 if window is None else min(t + 1, window) for t in positions)
    assert bench.attention_flops(cfg, n_prefix, queries) == 4 * 4 * 256 * keys
    assert bench.attention_flops(cfg, 0, [2]) == 4 * 4 * 256 * ((1 + 2) + (1 + 2))      # inside the window
