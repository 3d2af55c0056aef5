r"""One prefix, many queries: tokens forwarded and wall time per query, shared demonstration prefix against
per-query prompts, and the engine's fraction of this machine's measured fp32 matmul peak.

For each dataset and shot count (default SmolLM2-135M, ``--n-queries`` seeded queries of the query split, one
demonstration set per configuration: ``cgar_src.tasks.demos.draw_demo_set`` with the queries excluded):

- per-query prompts: ``cgar_src.lm.hidden_states`` of the full prompts (demonstrations + query, each forwarded whole);
- shared prefix: ``cgar_src.lm.prefix.prefix_states`` (the demonstrations forwarded once, then only the queries);
- tokens forwarded per query, wall time per query, the amortised ratio tokens forwarded / the queries' own tokens
  (1 when nothing is forwarded twice; the per-query prompts' ratio is 1 + |prefix| / mean |query|), and the largest
  difference between the two paths' states relative to the state's norm;
- the fp32 matmul peak of this machine measured in the same run (best of ``--peak-reps`` products of two
  ``--peak-size`` square float32 matrices, 2 n^3 FLOPs each) and the engine's achieved fraction of it, with
  FLOPs = 2 x (the body's matmul weights) x tokens forwarded + the attention's two matrix products over the context
  (:func:`attention_flops`: 4 x heads x head size x the keys each token attends to, per layer; with a prefix of
  1000 tokens this is a third of the total, so leaving it out would understate the engine badly at 4 shots);
- the same machine's float32 rate at the model's own matmul shapes (:func:`shape_ceiling`: each body Linear applied to
  ``batch size x mean query tokens`` rows, the shape of one shared-prefix batch), the ceiling a forward pass of this
  model could reach with nothing but its matmuls; the engine's fraction of it is printed beside.

- with ``--bf16`` (default on CPUs with AMX or AVX512-BF16, ``cgar_src.book.params.cpu_supports_bfloat16``): the
  shared-prefix engine again on a bfloat16 copy of the model: its tokens/s and the largest difference of its states
  from the float32 ones, relative to the state's norm (the issue's bf16 column).

The per-query baseline runs on the first ``--full-queries`` queries only (its cost per query does not depend on how
many there are; it is the slow path), the shared prefix on all ``--n-queries``.

The last line reads ``worst tokens-per-query ratio: X; engine fraction of fp32 peak: Y (float32; bfloat16 engine:
Z)``: X is the largest amortised ratio of the shared-prefix engine over all configurations, Y the float32 engine's
FLOPs over its wall time, all configurations together, divided by the peak, and Z the same FLOPs over the bfloat16
engine's wall time (the number format the bundles run in), against the same fp32 peak; Z is absent with ``--no-bf16``.

    python benchmarks/bench_prefix.py [--n-queries 300] [--full-queries 32] [--batch-size 8] [--no-bf16] [--datasets sst2 agnews trec] [--shots 0 1 2 4]
    python benchmarks/bench_prefix.py --n-queries 4 --datasets sst2          # smoke test
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from cgar_src.lm import MAX_BATCH_TOKENS, hidden_states, load_model
from cgar_src.lm.prefix import prefix_states
from cgar_src.tasks.data import TASKS, load_examples
from cgar_src.tasks.demos import check_no_leakage, draw_demo_set
from cgar_src.tasks.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES


def body_matmul_weights(model: torch.nn.Module) -> int:
    """Weights of the transformer body's matrix multiplications (Linear and GPT-2's Conv1D), output head excluded
    (as in ``benchmarks/bench_gpu.py``): each costs 2 FLOPs per token."""
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.base_model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def _keys_attended(start: int, count: int, window: int | None) -> float:
    """Keys attended by the tokens at positions start .. start+count-1 under a causal mask: position t sees
    t + 1 keys, or at most ``window`` in a sliding-window layer."""
    full = count * start + count * (count + 1) / 2
    lo, hi = max(start, window or 0), start + count
    if window is None or hi <= lo:
        return full
    m = hi - lo
    return full - (m * (lo + 1 - window) + m * (m - 1) / 2)


def attention_flops(config, n_prefix: int, query_lens: list[int]) -> float:
    r"""FLOPs of the attention's two matrix products (scores :math:`QK^\top` and :math:`AV`) when the prefix runs once
    and each query runs after it: a token that attends to m keys costs :math:`4 H d_h m` per layer (H query heads of
    size :math:`d_h`, which need not multiply to the hidden size, as in Gemma 3; grouped key/value heads do not change
    it). The prefix's token t attends to t + 1 keys, query token j to :math:`n_{prefix} + j + 1`; in a sliding-window
    layer (``config.layer_types``) to at most ``config.sliding_window``. Pass ``n_prefix=0`` and the full prompts'
    lengths for the per-query path."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    total = 0.0
    for kind in types:
        window = config.sliding_window if kind == "sliding_attention" else None
        total += _keys_attended(0, n_prefix, window) + sum(_keys_attended(n_prefix, q, window) for q in query_lens)
    return 4.0 * heads * head_dim * total


def shape_ceiling(model: torch.nn.Module, rows: int, reps: int, device: torch.device) -> float:
    """Measured float32 FLOP/s of the body's own Linear layers applied to ``rows`` input rows (best of ``reps`` per
    distinct weight shape, weighted by how often the shape occurs): what the forward pass's matmuls can reach here."""
    shapes: dict[tuple[int, int], int] = {}
    for m in model.base_model.modules():
        if isinstance(m, torch.nn.Linear):
            shapes[tuple(m.weight.shape)] = shapes.get(tuple(m.weight.shape), 0) + 1
    flops, seconds = 0.0, 0.0
    for (out_f, in_f), count in shapes.items():
        x, w = torch.randn(rows, in_f, device=device), torch.randn(out_f, in_f, device=device)
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        flops += count * 2.0 * rows * in_f * out_f
        seconds += count * best
    return flops / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, reps: int, device: torch.device) -> float:
    """Measured float32 matmul FLOP/s: the best of ``reps`` products of two n x n matrices (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.matmul(a, b)                                   # warm-up
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def _rate(rows: list[dict], flops: str, wall: str) -> float:
    """FLOP/s of all configurations together: their FLOPs over their wall time."""
    return sum(r[flops] for r in rows) / sum(r[wall] for r in rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model id or path (default: the offline default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-queries", type=int, default=300, help="queries per demonstration set (shared prefix)")
    ap.add_argument("--full-queries", type=int, default=32, help="of which the per-query baseline runs")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the shared prefix in bfloat16 (default: where the CPU supports it)")
    ap.add_argument("--datasets", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 1, 2, 4], help="demonstrations per class")
    ap.add_argument("--template", default=DEFAULT_TEMPLATE, choices=TEMPLATE_NAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS)
    ap.add_argument("--peak-size", type=int, default=2048, help="side of the square matrices of the peak measurement")
    ap.add_argument("--peak-reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    for name in ("n_queries", "full_queries", "batch_size", "max_batch_tokens", "peak_size", "peak_reps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(k < 0 for k in args.shots) or args.seed < 0:
        ap.error("--shots and --seed must be >= 0")

    torch.manual_seed(0)
    lm = load_model(args.model, device=args.device, max_batch_tokens=args.max_batch_tokens)
    device = lm.device
    weights = body_matmul_weights(lm.model)
    peak = matmul_peak(args.peak_size, args.peak_reps, device)
    print(f"{lm.model_id}: {weights / 1e6:.1f} M body matmul weights; fp32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s ({args.peak_size}^3, best of {args.peak_reps}); device {device}")
    hidden_states(lm, ["warm-up"], progress=False)
    if args.bf16 is None:
        from cgar_src.book.params import cpu_supports_bfloat16

        args.bf16 = device.type != "cpu" or cpu_supports_bfloat16()
    lm16 = load_model(args.model, dtype="bfloat16", device=args.device,
                      max_batch_tokens=args.max_batch_tokens) if args.bf16 else None

    head = (f"{'dataset':8}{'shots':>6}{'prefix':>8}{'query':>7}{'tok/q full':>11}{'tok/q shared':>13}"
            f"{'ratio full':>11}{'ratio shared':>13}{'s/q full':>10}{'s/q shared':>11}{'speed-up':>9}"
            f"{'peak frac':>10}{'max rel diff':>13}" + (f"{'bf16 tok/s':>11}{'fp32 tok/s':>11}{'bf16 diff':>10}"
                                                        if args.bf16 else ""))
    print(head)
    rows = []
    for dataset in args.datasets:
        task = TASKS[dataset]
        pool = load_examples(dataset, task.query_split)
        if args.n_queries > len(pool):
            ap.error(f"--n-queries {args.n_queries} exceeds the {len(pool)} queries of {dataset}")
        queries = random.Random(args.seed).sample(pool, args.n_queries)
        for shots in args.shots:
            ds = draw_demo_set(dataset, template=args.template, seed=args.seed, shots=shots,
                               exclude=[q.text for q in queries])
            check_no_leakage(ds, queries)
            nf = min(args.full_queries, args.n_queries)
            full = [ds.prompt(q.text) for q in queries[:nf]]
            parts = [ds.query_part(q.text) for q in queries]
            n_full = sum(len(x) for x in lm.tokenizer(full)["input_ids"])
            _sync(device)
            t0 = time.perf_counter()
            h_full = hidden_states(lm, full, batch_size=args.batch_size, progress=False)
            _sync(device)
            t_full = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = prefix_states(lm, ds.prefix(), parts, batch_size=args.batch_size)
            _sync(device)
            t_shared = time.perf_counter() - t0
            own = sum(len(r) for r in res.query_ids)
            own_f = sum(len(r) for r in res.query_ids[:nf])
            rel = float(((res.states[:nf] - h_full).norm(dim=-1) / h_full.norm(dim=-1).clamp_min(1e-30)).max())
            flops = 2.0 * weights * res.tokens_forwarded + attention_flops(
                lm.model.config, res.n_prefix, [len(r) for r in res.query_ids])
            full_lens = [len(x) for x in lm.tokenizer(full)["input_ids"]]
            flops_full = 2.0 * weights * n_full + attention_flops(lm.model.config, 0, full_lens)
            row = {"dataset": dataset, "shots": shots, "template": args.template, "demo_set": ds.key(),
                   "n_queries": args.n_queries, "prefix_tokens": res.n_prefix, "boundary_tokens": res.n_boundary,
                   "own_tokens": own, "tokens_full": n_full, "tokens_shared": res.tokens_forwarded,
                   "full_queries": nf, "ratio_full": n_full / own_f, "ratio_shared": res.tokens_forwarded / own,
                   "s_per_query_full": t_full / nf, "s_per_query_shared": t_shared / args.n_queries,
                   "wall_shared": t_shared, "flops_shared": flops, "wall_full": t_full, "flops_full": flops_full,
                   "fraction_of_peak_shared": flops / t_shared / peak,
                   "fraction_of_peak_full": flops_full / t_full / peak, "max_rel_diff": rel}
            extra = ""
            if lm16 is not None:
                _sync(device)
                t0 = time.perf_counter()
                r16 = prefix_states(lm16, ds.prefix(), parts, batch_size=args.batch_size)
                _sync(device)
                t16 = time.perf_counter() - t0
                d16 = float(((r16.states - res.states).norm(dim=-1) / res.states.norm(dim=-1).clamp_min(1e-30)).max())
                row |= {"wall_shared_bf16": t16, "tokens_per_s_bf16": r16.tokens_forwarded / t16,
                        "tokens_per_s_fp32": res.tokens_forwarded / t_shared, "max_rel_diff_bf16": d16}
                extra = f"{row['tokens_per_s_bf16']:11.0f}{row['tokens_per_s_fp32']:11.0f}{d16:10.1e}"
            rows.append(row)
            n = args.n_queries
            print(f"{dataset:8}{shots:6d}{res.n_prefix:8d}{own / n:7.1f}{n_full / nf:11.1f}"
                  f"{res.tokens_forwarded / n:13.1f}"
                  f"{row['ratio_full']:11.2f}{row['ratio_shared']:13.3f}{row['s_per_query_full']:10.4f}"
                  f"{row['s_per_query_shared']:11.4f}{row['s_per_query_full'] / row['s_per_query_shared']:9.2f}{row['fraction_of_peak_shared']:10.3f}"
                  f"{rel:13.1e}" + extra)
    worst = max(r["ratio_shared"] for r in rows)
    achieved = _rate(rows, "flops_shared", "wall_shared")
    fraction = achieved / peak
    mean_query = sum(r["own_tokens"] for r in rows) / sum(r["n_queries"] for r in rows)
    ceiling = shape_ceiling(lm.model, max(1, round(args.batch_size * mean_query)), args.peak_reps, device)
    # the per-query prompts' forward passes (whole prompts, the old design) on the same model, in the same run
    fraction_full = _rate(rows, "flops_full", "wall_full") / peak
    print(f"engine: {achieved / 1e9:.1f} GFLOP/s; the model's own matmul shapes at {round(args.batch_size * mean_query)} "
          f"rows reach {ceiling / 1e9:.1f} GFLOP/s here ({ceiling / peak:.3f} of the square peak); the engine is at "
          f"{achieved / ceiling:.3f} of that ceiling; the per-query prompts' forward passes reach {fraction_full:.3f} "
          f"of the peak")
    fraction16 = None
    if lm16 is not None:
        tok16 = sum(r["tokens_shared"] for r in rows) / sum(r["wall_shared_bf16"] for r in rows)
        tok32 = sum(r["tokens_shared"] for r in rows) / sum(r["wall_shared"] for r in rows)
        # the same FLOPs (same tokens, same attention) done in the bfloat16 engine's wall time, against the fp32 peak
        fraction16 = _rate(rows, "flops_shared", "wall_shared_bf16") / peak
        print(f"bf16: {tok16:.0f} tokens/s against {tok32:.0f} in fp32 ({tok16 / tok32:.2f}x); largest relative "
              f"state difference {max(r['max_rel_diff_bf16'] for r in rows):.2e}; the bfloat16 engine (the bundles') "
              f"does the same FLOPs at {fraction16:.3f} of the fp32 peak")
    out = {"model": lm.model_id, "device": str(device), "peak_flops": peak, "body_matmul_weights": weights,
           "rows": rows, "worst_ratio": worst, "engine_fraction_of_peak": fraction, "shape_ceiling_flops": ceiling,
           "engine_fraction_of_shape_ceiling": achieved / ceiling, "engine_fraction_of_peak_bf16": fraction16,
           "per_query_fraction_of_peak": fraction_full,
           "args": vars(args)}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    print(f"worst tokens-per-query ratio: {worst:.3f}; engine fraction of fp32 peak: {fraction:.3f}"
          + (f" (float32; bfloat16 engine: {fraction16:.3f})" if fraction16 is not None else " (float32)"))
    return out


if __name__ == "__main__":
    main()
