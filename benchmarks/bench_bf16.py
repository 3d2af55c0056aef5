r"""How far bfloat16 moves the states and the verdicts of a bundle configuration against float32.

Runs the bundle writer's rows (``cgar_src.book.bundle.configuration_rows``) for the same configurations in
float32 and in bfloat16 (the lens float32 in both), each from an empty state cache, and prints per configuration:
the largest difference of the residual states relative to their norm (every layer), the largest difference of the
last layer's label logits, the agreement of each prediction (full-vocabulary, label-restricted, calibrated) and the
accuracies in each dtype, with the time and tokens/s of each pass.

    python benchmarks/bench_bf16.py [--datasets trec sst2] [--shots 0 4] [--template book] [--max-queries 100]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from cgar_src.book.bundle import Config, bundle_layers, configuration_rows
from cgar_src.lm import Unembed, load_model
from cgar_src.tasks.data import TASKS, load_examples
from cgar_src.tasks.icl import shared_task_states
from cgar_src.tasks.templates import TEMPLATE_NAMES


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--datasets", nargs="+", default=["trec", "sst2"], choices=sorted(TASKS))
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 4])
    ap.add_argument("--template", default="book", choices=TEMPLATE_NAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-queries", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    if args.max_queries < 1 or args.batch_size < 1 or any(k < 0 for k in args.shots):
        ap.error("--max-queries and --batch-size must be >= 1, --shots >= 0")
    models = {dt: load_model(args.model, dtype=dt) for dt in ("float32", "bfloat16")}
    lenses = {dt: Unembed(lm.model, float32=True) for dt, lm in models.items()}
    out = []
    print(f"{'dataset':8}{'shots':>6}{'state diff':>11}{'dz last':>9}{'agree full':>11}{'agree label':>12}"
          f"{'agree cal':>10}{'acc32 lab/cal':>15}{'acc16 lab/cal':>15}{'tok/s 32':>9}{'tok/s 16':>9}")
    for dataset in args.datasets:
        for shots in args.shots:
            res = {}
            for dt, lm in models.items():
                with tempfile.TemporaryDirectory() as cache:
                    t0 = time.perf_counter()
                    n = min(args.max_queries, len(load_examples(dataset, TASKS[dataset].query_split)))
                    st = shared_task_states(lm, dataset, n_queries=n,
                                            shots=shots, seed=args.seed, template=args.template, cache_root=cache,
                                            batch_size=args.batch_size, progress=False)
                    secs = time.perf_counter() - t0
                    cols, _ = configuration_rows(lm, lenses[dt], Config(lm.model_id, dataset, args.template,
                                                                        args.seed, shots, "true"),
                                                 max_queries=args.max_queries, layers=bundle_layers(lm.n_layers),
                                                 batch_size=args.batch_size, cache_root=cache)
                res[dt] = (st, cols, st.tokens / secs)
            (s32, c32, r32), (s16, c16, r16) = res["float32"], res["bfloat16"]
            diff = float(((s16.h - s32.h).norm(dim=-1) / s32.h.norm(dim=-1).clamp_min(1e-30)).max())
            zl = f"z_{models['float32'].n_layers}"
            dz = float(np.abs(c16[zl] - c32[zl]).max())
            gold = c32["gold"]
            agree = {k: float((c16[k] == c32[k]).mean()) for k in ("pred_full", "pred_label", "pred_calibrated")}
            acc = {dt: (float((c["pred_label"] == gold).mean()), float((c["pred_calibrated"] == gold).mean()))
                   for dt, c in (("float32", c32), ("bfloat16", c16))}
            row = {"dataset": dataset, "shots": shots, "n_queries": len(gold), "max_rel_state_diff": diff,
                   "max_abs_label_logit_diff": dz, "agreement": agree, "accuracy": acc,
                   "tokens_per_s": {"float32": r32, "bfloat16": r16}}
            out.append(row)
            print(f"{dataset:8}{shots:6d}{diff:11.2e}{dz:9.3f}{agree['pred_full']:11.3f}{agree['pred_label']:12.3f}"
                  f"{agree['pred_calibrated']:10.3f}{acc['float32'][0]:8.3f}/{acc['float32'][1]:.3f}"
                  f"{acc['bfloat16'][0]:8.3f}/{acc['bfloat16'][1]:.3f}{r32:9.0f}{r16:9.0f}")
    worst = min(min(r["agreement"].values()) for r in out)
    print(f"largest relative state difference {max(r['max_rel_state_diff'] for r in out):.2e}; lowest prediction "
          f"agreement {worst:.3f}; largest accuracy change "
          f"{max(abs(a - b) for r in out for a, b in zip(r['accuracy']['float32'], r['accuracy']['bfloat16'])):.3f}")
    return {"rows": out}


if __name__ == "__main__":
    main()
