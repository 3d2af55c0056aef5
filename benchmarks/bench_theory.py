"""Speed of the theory chapters (issue 3 targets).

1. The Figure 2 sweep (N = 1000, d = 128, 2000 trials x 8 noise levels x 5 couplings, fixed point to 1e-8), batched
   over trials, against a per-trial Python loop doing the same arithmetic: the loop calls the same solver
   (``dynamics.fixed_point``, support screening included) on one trial at a time. The loop is timed on
   ``--loop-trials`` trials per (sigma, lambda) and scaled linearly to all trials (it would take tens of minutes in
   full); both paths are checked to agree on those trials. Target: ratio >= 20.
2. Wall time of executing each theory chapter from scratch (nbclient, as the book build does). Target: < 60 s each.

    python benchmarks/bench_theory.py [--loop-trials 25] [--skip-chapters]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cgar_src.simulate import SweepConfig, separation_sweep, separation_trial_loop

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["02_two_stage", "03_separation", "04_phase_transition", "05_fixed_point"]


def time_chapter(name: str) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "chapters")}}).execute()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop-trials", type=int, default=25)
    ap.add_argument("--skip-chapters", action="store_true")
    args = ap.parse_args()
    cfg = SweepConfig()
    if not 1 <= args.loop_trials <= cfg.n_trials:
        ap.error(f"--loop-trials must be in [1, {cfg.n_trials}], got {args.loop_trials}")

    t0 = time.perf_counter()
    res = separation_sweep(cfg)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = separation_trial_loop(cfg, n_trials=args.loop_trials)
    t_loop = (time.perf_counter() - t0) * cfg.n_trials / args.loop_trials
    diff = (ref - res.p_target[..., : args.loop_trials]).abs().max().item()

    report = {"sweep": {**cfg.to_dict(), "threads": torch.get_num_threads(), "batched_s": round(t_batched, 2),
                        "loop_s_extrapolated": round(t_loop, 1), "loop_trials_timed": args.loop_trials,
                        "speedup": round(t_loop / t_batched, 1), "max_abs_diff_p": diff, "target_speedup": 20}}
    print(f"Figure 2 sweep: batched {t_batched:.1f} s, per-trial loop {t_loop:.0f} s (extrapolated from "
          f"{args.loop_trials} trials per point): {t_loop / t_batched:.1f}x "
          f"({'meets' if t_loop / t_batched >= 20 else 'MISSES'} the 20x target); max |diff p| {diff:.1e}")
    if not args.skip_chapters:
        report["chapters_s"] = {}
        for name in CHAPTERS:
            t = time_chapter(name)
            report["chapters_s"][name] = round(t, 1)
            print(f"chapter {name}: {t:.1f} s ({'under' if t < 60 else 'OVER'} the 60 s target)")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
