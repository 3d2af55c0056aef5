r"""How far every verdict moves when the language model runs in bfloat16 instead of float32.

Two modes, chosen by what the two paths hold.

**Bundles** (two ``.parquet`` result bundles, e.g. the stored bfloat16 ``bundles/robust_reduced`` and a float32 run of the
same configurations): every claim of the robustness chapter (:data:`cgar_src.analysis.robustness.CLAIMS`) is
tested in every cell both bundles share (:func:`cgar_src.analysis.robustness.cell_tests`), and the script counts
the cells whose verdict (holds, reversed, neither) is the same, prints those that move, and the largest change of
an effect size. The last line reads ``cell verdicts unchanged: A of B; same direction: C of B``::

    python -m cgar_src.book.run --profile robust --set bundle=/tmp/robust_fp32 --set dtype=float32 \
        --set "models=[smollm2-135m-instruct]" --set "templates=[book]" --set "seeds=[0, 1, 2]" --set max_queries=100
    python benchmarks/bench_bf16_verdicts.py /tmp/robust_fp32.parquet bundles/robust_reduced.parquet

**Chapter results** (two results folders): the transformer chapters run twice under one profile (default ``cpu``, the book's own parameters), once in float32
(the book's default) and once with ``--set dtype=bfloat16`` (AMX or AVX512-BF16 CPUs; the logit lens stays float32),
each writing its results folder with ``python -m cgar_src.book.run``. This script then reads both folders'
``results.json`` and compares, test by test, every test the claims ledger rests on
(:func:`cgar_src.analysis.ledger.load_tests`: same chapter, setting and compared pair):

- the decision of the exact test alone (real at 0.05 or not) and its direction;
- the decision after Holm over the whole family (:func:`cgar_src.analysis.ledger.holm_family`);
- the size of the effect (``diff``), as the largest absolute change;
- every row's verdict sentence of the claims ledger.

The last line reads ``verdicts unchanged: A of B rows; tests with the same decision after Holm: C of D`` so that both
can be read at a glance.

    python -m cgar_src.book.run --profile cpu --out results/bf16-fp32 --set dtype=float32        # or the book's results/
    python -m cgar_src.book.run --profile cpu --out results/bf16-bf16 --set dtype=bfloat16
    python benchmarks/bench_bf16_verdicts.py results/bf16-fp32 results/bf16-bf16 [--json out.json]

The folders hold one sub-folder per chapter (``memory_collapse``, ``referee_checks``, ...), as the book build's
``results/`` does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cgar_src.analysis.ledger import CHAPTERS, holm_family, load_tests


def compare_folders(fp32: str | Path, bf16: str | Path) -> dict:
    """Test-by-test and row-by-row comparison of two results folders (module docstring). Tests present in one folder
    only are listed, not compared."""
    fams = {}
    for name, folder in (("fp32", fp32), ("bf16", bf16)):
        present = {ch: f for ch, f in CHAPTERS.items() if (Path(folder) / f / "results.json").is_file()}
        if not present:
            raise ValueError(f"{name} folder {folder} holds no chapter results (expected e.g. "
                             f"{Path(folder) / 'memory_collapse' / 'results.json'})")
        fams[name] = (present, holm_family(load_tests(folder, present)))
    chapters = sorted(set(fams["fp32"][0]) & set(fams["bf16"][0]))
    by = {name: {t.key: t for t in fam.distinct() if t.chapter in chapters} for name, (_, fam) in fams.items()}
    common = [k for k in by["fp32"] if k in by["bf16"]]
    rows = []
    for k in common:
        a, b = by["fp32"][k], by["bf16"][k]
        rows.append({"chapter": k[0], "setting": k[1], "name": k[2], "p_fp32": a.raw.p_value, "p_bf16": b.raw.p_value,
                     "diff_fp32": a.raw.diff, "diff_bf16": b.raw.diff,
                     "real_fp32": a.raw.real, "real_bf16": b.raw.real,
                     "direction_same": a.raw.direction == b.raw.direction,
                     "holm_fp32": a.adjusted.real, "holm_bf16": b.adjusted.real})
    verdicts = {name: fam.verdicts() for name, (_, fam) in fams.items()}
    row_cmp = {row: {"fp32": v, "bf16": verdicts["bf16"].get(row), "same": v == verdicts["bf16"].get(row)}
               for row, v in verdicts["fp32"].items()}
    return {"chapters": chapters, "tests": rows,
            "only_fp32": [list(k) for k in by["fp32"] if k not in by["bf16"]],
            "only_bf16": [list(k) for k in by["bf16"] if k not in by["fp32"]],
            "rows": row_cmp,
            "same_raw": sum(r["real_fp32"] == r["real_bf16"] for r in rows),
            "same_holm": sum(r["holm_fp32"] == r["holm_bf16"] for r in rows),
            "same_direction": sum(r["direction_same"] for r in rows),
            "max_abs_diff_change": max((abs(r["diff_fp32"] - r["diff_bf16"]) for r in rows), default=0.0)}


def compare_bundles(fp32: str | Path, bf16: str | Path, *, alpha: float = 0.05) -> dict:
    """Cell-by-cell comparison of the robustness claims in two bundles (module docstring): only the cells (model,
    dataset, template, seed, shots, claim) present in both are compared."""
    from cgar_src.analysis.robustness import cell_tests
    from cgar_src.book.bundle import bundle_frame

    keys = ["claim", "model", "dataset", "template", "seed", "shots"]
    cells = {}
    for name, path in (("fp32", fp32), ("bf16", bf16)):
        rows, side = bundle_frame(path)
        cells[name] = cell_tests(rows, alpha=alpha).set_index(keys)
    both = cells["fp32"].merge(cells["bf16"], how="inner", left_index=True, right_index=True,
                               suffixes=("_fp32", "_bf16"))
    if both.empty:
        raise ValueError(f"the bundles {fp32} and {bf16} share no cell")
    word = lambda h, r: "holds" if h else "reversed" if r else "neither"
    both["verdict_fp32"] = [word(h, r) for h, r in zip(both["holds_fp32"], both["reversed_fp32"])]
    both["verdict_bf16"] = [word(h, r) for h, r in zip(both["holds_bf16"], both["reversed_bf16"])]
    moved = both[both["verdict_fp32"] != both["verdict_bf16"]]
    return {"n_cells": len(both), "same_verdict": int((both["verdict_fp32"] == both["verdict_bf16"]).sum()),
            "same_direction": int((both["direction_fp32"] == both["direction_bf16"]).sum()),
            "max_abs_diff_change": float((both["diff_fp32"] - both["diff_bf16"]).abs().max()),
            "holds_fp32": int(both["holds_fp32"].sum()), "holds_bf16": int(both["holds_bf16"].sum()),
            "moved": [dict(zip(keys, k)) | {"fp32": r["verdict_fp32"], "bf16": r["verdict_bf16"],
                                             "p_fp32": r["p_value_fp32"], "p_bf16": r["p_value_bf16"],
                                             "diff_fp32": r["diff_fp32"], "diff_bf16": r["diff_bf16"]}
                      for k, r in moved.iterrows()]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", help="the float32 run: a results folder, or a bundle (.parquet)")
    ap.add_argument("bf16", help="the bfloat16 run: a results folder, or a bundle (.parquet)")
    ap.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    args = ap.parse_args(argv)
    if str(args.fp32).endswith(".parquet") or str(args.bf16).endswith(".parquet"):
        out = compare_bundles(args.fp32, args.bf16)
        for m in out["moved"]:
            print(f"{m['claim']:<18} {m['model']:<22} {m['dataset']:<7} {m['template']:<9} seed {m['seed']} "
                  f"k={m['shots']}: {m['fp32']} -> {m['bf16']} (diff {m['diff_fp32']:+.3f} -> {m['diff_bf16']:+.3f}, "
                  f"p {m['p_fp32']:.3g} -> {m['p_bf16']:.3g})")
        print(f"{out['n_cells']} cells in both bundles; the claim holds in {out['holds_fp32']} (float32) and "
              f"{out['holds_bf16']} (bfloat16); largest change of an effect size: {out['max_abs_diff_change']:.3f}")
        print(f"cell verdicts unchanged: {out['same_verdict']} of {out['n_cells']}; same direction: "
              f"{out['same_direction']} of {out['n_cells']}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        return out
    out = compare_folders(args.fp32, args.bf16)
    n = len(out["tests"])
    print(f"chapters compared: {', '.join(out['chapters'])}; {n} tests in both "
          f"(only fp32: {len(out['only_fp32'])}, only bf16: {len(out['only_bf16'])})")
    for r in out["tests"]:
        flag = "" if (r["real_fp32"] == r["real_bf16"] and r["holm_fp32"] == r["holm_bf16"]) else "  <- decision moves"
        print(f"{r['chapter']:<22} {r['setting']:<18} {r['name'][:48]:<48} diff {r['diff_fp32']:+.3f} -> "
              f"{r['diff_bf16']:+.3f}  p {r['p_fp32']:.3g} -> {r['p_bf16']:.3g}{flag}")
    for row, v in out["rows"].items():
        if not v["same"]:
            print(f"row {row}: fp32 '{v['fp32']}' | bf16 '{v['bf16']}'")
    print(f"same decision alone: {out['same_raw']} of {n}; same direction: {out['same_direction']} of {n}; "
          f"largest change of an effect size: {out['max_abs_diff_change']:.3f}")
    same_rows = sum(v["same"] for v in out["rows"].values())
    print(f"verdicts unchanged: {same_rows} of {len(out['rows'])} rows; tests with the same decision after Holm: "
          f"{out['same_holm']} of {n}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
