"""Batched MHN retrieval vs a straightforward per-query Python loop over the same work.

Setting (issue 2): N = 4096 memories, d = 256, 4096 queries, 10 update steps, float32, CPU.
Prints both timings, the ratio, and checks that both paths give the same states. Target: ratio >= 20.

    python benchmarks/bench_retrieval.py [--queries 4096] [--loop-queries 4096]

``--loop-queries`` < queries times the loop on that many queries and scales linearly (reported as such).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from cgar_src.theory import memory


def loop_update(xi: torch.Tensor, X: torch.Tensor, beta: float, steps: int) -> torch.Tensor:
    """The reference: one query at a time, one memory score at a time vectorised only over d."""
    out = []
    for q in xi:
        state = q
        for _ in range(steps):
            scores = X.T @ state
            p = torch.softmax(beta * scores, dim=0)
            state = X @ p
        out.append(state)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memories", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--loop-queries", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.loop_queries <= args.queries:
        ap.error(f"--loop-queries must be in [1, --queries={args.queries}], got {args.loop_queries}")

    torch.manual_seed(args.seed)
    X = torch.randn(args.dim, args.memories) / args.dim**0.5
    xi = torch.randn(args.queries, args.dim) / args.dim**0.5

    t0 = time.perf_counter()
    state = xi
    for _ in range(args.steps):
        state = memory.update(state, X, args.beta)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = loop_update(xi[: args.loop_queries], X, args.beta, args.steps)
    t_loop = (time.perf_counter() - t0) * args.queries / args.loop_queries

    max_diff = (ref - state[: args.loop_queries]).abs().max().item()
    result = {
        **vars(args),
        "threads": torch.get_num_threads(),
        "batched_s": round(t_batched, 3),
        "loop_s": round(t_loop, 3),
        "loop_extrapolated": args.loop_queries < args.queries,
        "speedup": round(t_loop / t_batched, 1),
        "max_abs_diff": max_diff,
        "target_speedup": 20,
    }
    print(json.dumps(result, indent=1))
    print(f"batched {t_batched:.2f} s, per-query loop {t_loop:.2f} s: {t_loop / t_batched:.1f}x "
          f"({'meets' if t_loop / t_batched >= 20 else 'MISSES'} the 20x target); max |difference| {max_diff:.1e}")


if __name__ == "__main__":
    main()
