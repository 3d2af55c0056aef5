"""The offline models side by side (issue 21): conversion, load time, forward tokens per second and peak memory.

For each offline GGUF model (``cgar_src.lm.GGUF_MODELS``: SmolLM2-135M-Instruct, Gemma 3 270M), each step in a fresh
Python process (so that its peak resident memory is its own):

1. cold: the first conversion (sha256 check, dequantisation, float32 safetensors) into an empty temporary
   ``$CGAR_CACHE`` (deleted afterwards), then the first load from it (``--skip-cold`` leaves this out);
2. warm: ``load_model(name)`` from the user cache (converted there first if needed, not timed), then the residual
   states of a fixed batch of real prompts (``hidden_states``, the engine's forward path, batch size 8): SST-2
   test queries with one demonstration per class, as in ``bench_lm.py``, after one untimed warm-up batch.

Printed per model: seconds to convert and to load (warm: the tokenizer and the float32 weights, first in a fresh
process, where transformers imports its model and tokenizer modules lazily, then once more in the same process;
``import transformers`` itself is not counted), tokens forwarded per second (each model's own tokens of the same prompts) and the peak resident
memory of each step.

    python benchmarks/bench_models.py [--n-queries 32] [--skip-cold] [--models gemma-3-270m]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def _prompts(n_queries: int) -> list[str]:
    import random

    from cgar_src.tasks.data import TASKS, icl_prompt, load_examples, sample_demos

    rng = random.Random(0)
    queries = rng.sample(load_examples("sst2", "test"), n_queries)
    pool = load_examples("sst2", "train")
    return [icl_prompt(TASKS["sst2"], q.text, sample_demos(pool, 1, 2, rng, exclude=q.text)) for q in queries]


def child(step: str, name: str, n_queries: int) -> dict:
    import torch
    import transformers  # noqa: F401  (imported before the clock starts)

    from cgar_src.lm import gguf_model_dir, hidden_states, load_model

    torch.manual_seed(0)
    out: dict = {"model": name, "step": step}
    if step == "cold":
        t0 = time.perf_counter()
        folder = gguf_model_dir(name)
        out["convert_s"] = time.perf_counter() - t0
        out["float32_mib"] = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        t0 = time.perf_counter()
        load_model(name)
        out["first_load_s"] = time.perf_counter() - t0
    else:
        gguf_model_dir(name)                         # converted already, or now (not timed)
        t0 = time.perf_counter()
        lm = load_model(name)
        out["load_s"] = time.perf_counter() - t0              # a fresh process: transformers' lazy imports included
        del lm
        t0 = time.perf_counter()
        lm = load_model(name)
        out["reload_s"] = time.perf_counter() - t0            # the same process again: the load itself
        out["parameters"] = sum(p.numel() for p in lm.model.parameters())
        prompts = _prompts(n_queries)
        hidden_states(lm, prompts[:8], batch_size=8, progress=False)          # warm-up
        lengths = [len(ids) for ids in lm.tokenizer(prompts)["input_ids"]]
        t0 = time.perf_counter()
        hidden_states(lm, prompts, batch_size=8, progress=False)
        seconds = time.perf_counter() - t0
        out.update(forward_s=seconds, prompts=len(prompts), tokens=sum(lengths), tokens_per_s=sum(lengths) / seconds)
    out["peak_rss_mib"] = _peak_mib()
    return out


def _run(step: str, name: str, n_queries: int, env: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", step, name, "--n-queries", str(n_queries)],
                         env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{step} step of {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    from cgar_src.lm import GGUF_MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(GGUF_MODELS), choices=list(GGUF_MODELS))
    ap.add_argument("--n-queries", type=int, default=32)
    ap.add_argument("--skip-cold", action="store_true", help="leave out the first conversion (minutes)")
    ap.add_argument("--child", nargs=2, metavar=("STEP", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n_queries < 8:
        ap.error("--n-queries must be >= 8 (one warm-up batch of 8)")
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.n_queries)))
        return
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads default, {args.n_queries} SST-2 1-shot prompts")
    rows = []
    for name in args.models:
        row: dict = {"model": name}
        if not args.skip_cold:
            with tempfile.TemporaryDirectory(prefix="bench-models-") as fresh:
                row["cold"] = _run("cold", name, args.n_queries, {**os.environ, "CGAR_CACHE": fresh})
        row["warm"] = _run("warm", name, args.n_queries, dict(os.environ))
        rows.append(row)
        cold, warm = row.get("cold", {}), row["warm"]
        line = f"{name}: {warm['parameters'] / 1e6:.0f}M parameters; "
        if cold:
            line += (f"first conversion {cold['convert_s']:.1f} s (peak RSS {cold['peak_rss_mib']:.0f} MiB, "
                     f"float32 copy {cold['float32_mib']:.0f} MiB), first load {cold['first_load_s']:.1f} s; ")
        line += (f"warm load {warm['load_s']:.1f} s in a fresh process, {warm['reload_s']:.1f} s again; forward {warm['tokens']} tokens of {warm['prompts']} prompts in "
                 f"{warm['forward_s']:.1f} s = {warm['tokens_per_s']:.0f} tokens/s; "
                 f"peak RSS {warm['peak_rss_mib']:.0f} MiB")
        print(line, flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
