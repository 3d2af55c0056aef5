"""Speed of the theory chapters (issue 3 targets).

1. The Figure 2 sweep (N = 1000, d = 128, 2000 trials x 8 noise levels x 5 couplings, fixed point to 1e-8), batched
   over trials, against a per-trial Python loop doing the same arithmetic: the loop calls the same solver
   (``dynamics.fixed_point``, support screening included) on one trial at a time. The loop is timed on
   ``--loop-trials`` trials per (sigma, lambda) and scaled linearly to all trials (it would take tens of minutes in
   full); both paths are checked to agree on those trials. Target: ratio >= 20.
2. Wall time of executing each theory chapter from scratch (nbclient, as the book build does), with the CPU time of
   the kernel process beside it (on a shared machine wall time overstates the cost). Target: < 60 s each, the new
   chapters 01b (related memories) and 05b (coupled energy) included.

    python benchmarks/bench_theory.py [--loop-trials 25] [--skip-chapters] [--chapters 01b_related_memories ...] [--skip-sweep]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cgar_src.theory.simulate import SweepConfig, separation_sweep, separation_trial_loop

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["01b_related_memories", "02_two_stage", "03_separation", "04_phase_transition", "05_fixed_point",
            "05b_coupled_energy"]


def time_chapter(name: str) -> tuple[float, float]:
    """Wall time and kernel CPU time (user + system, seconds) of executing a chapter from scratch."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import os as _os; _t = _os.times(); print('CPU', _t.user + _t.system)"))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "chapters")}}).execute()
    wall = time.perf_counter() - t0
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    return wall, float(text.split("CPU")[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop-trials", type=int, default=25)
    ap.add_argument("--skip-chapters", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true", help="time the chapters only")
    ap.add_argument("--chapters", nargs="+", default=CHAPTERS, choices=CHAPTERS, help="chapters to time")
    args = ap.parse_args()
    cfg = SweepConfig()
    if not 1 <= args.loop_trials <= cfg.n_trials:
        ap.error(f"--loop-trials must be in [1, {cfg.n_trials}], got {args.loop_trials}")

    report = {}
    if not args.skip_sweep:
        report["sweep"] = sweep_report(cfg, args.loop_trials)
    if not args.skip_chapters:
        report["chapters_s"], report["chapters_cpu_s"] = {}, {}
        for name in args.chapters:
            wall, cpu = time_chapter(name)
            report["chapters_s"][name], report["chapters_cpu_s"][name] = round(wall, 1), round(cpu, 1)
            print(f"chapter {name}: {wall:.1f} s wall, {cpu:.1f} s kernel CPU ({'under' if wall < 60 else 'OVER'} the 60 s target)")
    print(json.dumps(report, indent=1))


def sweep_report(cfg: SweepConfig, loop_trials: int) -> dict:
    """Time the batched Figure 2 sweep against the per-trial loop (see the module docstring)."""
    t0 = time.perf_counter()
    res = separation_sweep(cfg)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = separation_trial_loop(cfg, n_trials=loop_trials)
    t_loop = (time.perf_counter() - t0) * cfg.n_trials / loop_trials
    diff = (ref - res.p_target[..., :loop_trials]).abs().max().item()

    report = {**cfg.to_dict(), "threads": torch.get_num_threads(), "batched_s": round(t_batched, 2),
              "loop_s_extrapolated": round(t_loop, 1), "loop_trials_timed": loop_trials,
              "speedup": round(t_loop / t_batched, 1), "max_abs_diff_p": diff, "target_speedup": 20}
    print(f"Figure 2 sweep: batched {t_batched:.1f} s, per-trial loop {t_loop:.0f} s (extrapolated from "
          f"{loop_trials} trials per point): {t_loop / t_batched:.1f}x "
          f"({'meets' if t_loop / t_batched >= 20 else 'MISSES'} the 20x target); max |diff p| {diff:.1e}")
    return report


if __name__ == "__main__":
    main()
