"""Execution time of the transformer chapters under the default (cpu) settings (issue 5 target: each at most
5 minutes on 2 cores from a cold state cache, seconds from a warm one; issue 11: the gate chapter at most 3).

Each chapter is executed alone with nbclient (as the book build does), first with an empty state cache (a fresh
``$CGAR_CACHE`` that shares only the converted default model, a one-time install cost of about 20 s), then again
with the cache it just filled. Run it on an otherwise idle machine: other jobs on the cores inflate the cold times.

    python benchmarks/bench_chapters.py [--chapters 07_memory_collapse 09_factual_steering]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench_theory import time_chapter

from cgar_src.lm import user_cache_dir

CHAPTERS = ["06_attention_first_order", "07_memory_collapse", "08_coupled_retrieval", "09_factual_steering",
            "10_separability", "11_referee_checks", "12_gate_in_transformer"]
TARGET_COLD_S = {"12_gate_in_transformer": 180}   # seconds; every other chapter 300


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapters", nargs="+", default=CHAPTERS, choices=CHAPTERS)
    args = ap.parse_args()
    models = user_cache_dir() / "models"
    report = {}
    for name in args.chapters:
        with tempfile.TemporaryDirectory() as cache:
            if models.exists():
                os.symlink(models, Path(cache) / "models")
            os.environ["CGAR_CACHE"] = cache          # the kernel inherits it
            (cold, cold_cpu), (warm, warm_cpu) = time_chapter(name), time_chapter(name)
        report[name] = {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "cold_kernel_cpu_s": round(cold_cpu, 1),
                        "warm_kernel_cpu_s": round(warm_cpu, 1)}
        target = TARGET_COLD_S.get(name, 300)
        print(f"{name}: cold {cold:.0f} s ({'under' if cold <= target else 'OVER'} the {target} s target), "
              f"warm {warm:.0f} s", flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
