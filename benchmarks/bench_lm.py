"""Language-model engine: forward-pass accounting, overhead of extraction plus analysis, and peak memory.

On the default CPU model (SmolLM2-135M-Instruct) with SST-2 prompts (zero-shot and 1-shot-per-class):
1. forward passes performed == distinct prompts (duplicates given on purpose), and a rerun with a warm cache
   performs none;
2. (cold extraction through the cache + decoding every layer + an additive-retrieval grid) / (pure forward passes
   of the same prompts in the same batches): target <= 1.15;
3. peak resident memory of this process against the model's size + 1 GiB.

    python benchmarks/bench_lm.py [--n-queries 32]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time

import torch

from cgar_src.analysis import lens
from cgar_src.lm import MAX_BATCH_TOKENS, Unembed, load_model, token_batches
from cgar_src.lm.cache import CHUNK_SIZE, cached_states
from cgar_src.tasks.data import TASKS, icl_prompt, label_token_ids, load_examples, sample_demos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-queries", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS,
                    help=f"padded tokens per forward batch (default {MAX_BATCH_TOKENS}, the CPU profile's)")
    args = ap.parse_args()
    if args.n_queries < 1:
        ap.error("--n-queries must be >= 1")
    if args.max_batch_tokens < 1:
        ap.error("--max-batch-tokens must be >= 1")
    torch.manual_seed(0)
    lm = load_model(max_batch_tokens=args.max_batch_tokens)
    task = TASKS["sst2"]
    rng = random.Random(0)
    queries = rng.sample(load_examples("sst2", "test"), args.n_queries)
    pool = load_examples("sst2", "train")
    zero = [icl_prompt(task, q.text, []) for q in queries]
    icl = [icl_prompt(task, q.text, sample_demos(pool, 1, 2, rng, exclude=q.text)) for q in queries]
    prompts = zero + icl + zero[: args.n_queries // 4]           # duplicates on purpose
    distinct = list(dict.fromkeys(prompts))
    labels = label_token_ids(lm.tokenizer, task.label_words)

    # pure forward passes of the whole model, same batches as the cache's calls of lm.hidden_states (its chunks,
    # each grouped by lm.token_batches), nothing kept
    model = lm.model
    batches = [ids for c in range(0, len(distinct), CHUNK_SIZE)
               for _, ids, _ in token_batches(lm.tokenizer, distinct[c:c + CHUNK_SIZE], args.batch_size,
                                                lm.max_batch_tokens)]
    t0 = time.perf_counter()
    with torch.no_grad():
        for input_ids in batches:
            model(input_ids=input_ids, use_cache=False)
    t_forward = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as cache:
        meta = {"dataset": "sst2", "bench": True}
        t0 = time.perf_counter()
        cold = cached_states(lm, prompts, meta, cache_root=cache, batch_size=args.batch_size, progress=False)
        t_extract = time.perf_counter() - t0
        t0 = time.perf_counter()
        un = Unembed(model)
        n = args.n_queries
        h_zero, h_icl = cold.states[:n], cold.states[n:2 * n]
        lens.decode_stats(un, h_zero, labels)
        lens.decode_stats(un, h_icl, labels)
        c_bar = lens.context_vector(h_icl, h_zero)
        L = lm.n_layers
        lens.additive_retrieval(un, h_zero, c_bar, labels, lambdas=[0.0, 0.1, 1.0, 10.0],
                                context_layers=[L // 2, 2 * L // 3, L], query_layers=[L // 2, L])
        t_analysis = time.perf_counter() - t0
        warm = cached_states(lm, prompts, meta, cache_root=cache, batch_size=args.batch_size, progress=False)

    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ratio = (t_extract + t_analysis) / t_forward
    report = {"model": lm.model_id, "prompts_given": len(prompts), "distinct_prompts": len(distinct),
              "forward_passes_cold": cold.n_forward, "forward_passes_warm": warm.n_forward,
              "pure_forward_s": round(t_forward, 2), "extraction_s": round(t_extract, 2),
              "analysis_s": round(t_analysis, 2), "ratio": round(ratio, 3), "target_ratio": 1.15,
              "model_MiB": round(model_bytes / 2**20), "peak_rss_MiB": round(peak / 2**20),
              "memory_budget_MiB": round((model_bytes + 2**30) / 2**20), "threads": torch.get_num_threads()}
    print(json.dumps(report, indent=1))
    print(f"forward passes {cold.n_forward} for {len(distinct)} distinct prompts (warm rerun: {warm.n_forward}); "
          f"(extraction + analysis) / pure forward = {ratio:.3f} ({'meets' if ratio <= 1.15 else 'MISSES'} 1.15); "
          f"peak RSS {peak / 2**20:.0f} MiB vs budget {(model_bytes + 2**30) / 2**20:.0f} MiB "
          f"({'meets' if peak <= model_bytes + 2**30 else 'MISSES'})")


if __name__ == "__main__":
    main()
