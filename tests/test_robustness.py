"""The spread of the claims over (seed, template) cells, read from a bundle (cgar_src.analysis.robustness)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from cgar_src.analysis import robustness as rb
from cgar_src.book.bundle import bundle_frame

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "robust_reduced.parquet"
N = 40          # queries per configuration
HOLDING = {("t0", 0), ("t0", 1), ("t1", 0), ("t2", 2)}   # the cells where k-shot beats zero-shot: 4 of 6


def synthetic_rows(model: str = "m", layer: int = 6) -> pd.DataFrame:
    """Two templates x three seeds (6 cells), shots 0 and 1 (true) and 1 (random), binary task. Built so that, per
    cell: k-shot beats zero-shot in exactly the cells of HOLDING (30 discordant queries, all for 1-shot) and ties
    elsewhere; calibration never changes an answer; random labels beat true ones everywhere (reversed); N_eff falls
    and label mass falls (reversed) everywhere; the majority class is always wrong on 30 of the 40 queries."""
    gold = np.array([i % 2 for i in range(N)])
    rows = []
    for template in ("t0", "t1", "t2"):
        for seed in (0, 1, 2):
            if template == "t2" and seed != 2 or template == "t1" and seed == 2:
                continue   # 6 cells: t0 x {0,1,2}, t1 x {0,1}, t2 x {2}
            holds = (template, seed) in HOLDING
            for shots, mode in ((0, "true"), (1, "true"), (1, "random")):
                right = np.ones(N, bool)
                if shots == 0 and holds:
                    right[:30] = False
                if mode == "random":
                    right[:] = True
                elif shots == 1:
                    right[30:35] = False          # 5 wrong, random labels get them right: 5 discordant, all reversed
                pred = np.where(right, gold, 1 - gold)
                for q in range(N):
                    rows.append({"model": model, "dataset": "d", "template": template, "seed": seed, "shots": shots,
                                 "label_mode": mode, "query": 100 + q, "gold": gold[q], "pred_full": pred[q],
                                 "pred_label": pred[q], "pred_calibrated": pred[q],
                                 "pred_majority": gold[q] if q >= 30 else 1 - gold[q],
                                 f"neff_{layer}": 50.0 - 40 * shots + (q % 3), f"mass_{layer}": 0.5 - 0.3 * shots,
                                 "neff_1": 3.0, "mass_1": 0.0})
    return pd.DataFrame(rows)


def by_claim(table: pd.DataFrame, claim: str, shots: int = 1) -> pd.Series:
    row = table[(table["claim"] == claim) & (table["shots"] == shots)]
    assert len(row) == 1, row
    return row.iloc[0]


def test_share_of_cells_comes_out_exactly():
    cells = rb.cell_tests(synthetic_rows())
    table = rb.shares(cells)
    kz = by_claim(table, "kshot_beats_zero")
    assert kz["n_cells"] == 6 and kz["templates"] == 3 and kz["seeds"] == 3
    assert kz["share_holds"] == pytest.approx(4 / 6) and kz["share_direction"] == pytest.approx(4 / 6)
    # a holding cell's test: 30 queries right at 1 shot only, 5 right at zero shots only -> McNemar on 30 vs 5
    c = cells[(cells["claim"] == "kshot_beats_zero") & (cells["template"] == "t0") & (cells["seed"] == 0)].iloc[0]
    assert (c["n_a"], c["n_b"]) == (30, 5)
    assert c["p_value"] == pytest.approx(binomtest(30, 35, 0.5).pvalue)
    # elsewhere 0 vs 5: p = 0.0625, the counts point against the claim but the test does not reject
    other = cells[(cells["claim"] == "kshot_beats_zero") & (cells["template"] == "t0") & (cells["seed"] == 2)].iloc[0]
    assert (other["n_a"], other["n_b"], other["direction"], other["reversed"]) == (0, 5, -1, False)
    assert by_claim(table, "beats_majority")["share_holds"] == 1.0
    held = {(r.template, r.seed) for r in cells[cells["claim"] == "kshot_beats_zero"].itertuples() if r.holds}
    assert held == HOLDING
    # N_eff falls (claimed direction -1) in every cell; mass falls, against its claim, in every cell
    assert by_claim(table, "neff_falls")["share_holds"] == 1.0
    mass = by_claim(table, "mass_rises")
    assert mass["share_holds"] == 0.0 and mass["share_reversed"] == 1.0 and mass["share_direction"] == 0.0


def test_claims_that_do_not_hold():
    table = rb.shares(rb.cell_tests(synthetic_rows()))
    cal = by_claim(table, "calibration_helps")
    assert cal["share_holds"] == 0.0 and cal["share_direction"] == 0.0 and cal["share_reversed"] == 0.0
    assert set(table.loc[table["claim"] == "calibration_helps", "shots"]) == {0, 1}   # calibration also at zero shots
    tr = by_claim(table, "true_beats_random")   # 5 discordant queries all for random labels: p = 0.0625, not real
    assert tr["share_holds"] == 0.0 and tr["share_direction"] == 0.0 and tr["share_reversed"] == 0.0
    assert rb.shares(rb.cell_tests(synthetic_rows(), alpha=0.07)).pipe(
        by_claim, "true_beats_random")["share_reversed"] == 1.0                        # at level 0.07 it is reversed


def test_two_models_each_use_their_last_layer_and_contrast():
    rows = pd.concat([synthetic_rows("a", layer=6), synthetic_rows("b", layer=9)], ignore_index=True)
    b = rows["model"] == "b"
    rows.loc[b & (rows["shots"] == 0), "pred_label"] = rows.loc[b & (rows["shots"] == 0), "gold"]   # b: no gain
    assert rb.last_layers(rows) == {"a": 6, "b": 9}
    table = rb.shares(rb.cell_tests(rows))
    kz = table[(table["claim"] == "kshot_beats_zero")].set_index("model")["share_holds"]
    assert kz["a"] == pytest.approx(4 / 6) and kz["b"] == 0.0
    sentences = rb.contrasts(table)
    assert any(s.startswith("k-shot beats zero-shot") and "not reproduced on b (0/6)" in s for s in sentences)
    ledger = rb.ledger_table(table)
    assert list(ledger.columns) == ["a", "b"]
    assert ledger.loc["k-shot beats zero-shot (label-restricted accuracy)", "a"] == "d 4/6"
    assert rb.contrasts(rb.shares(rb.cell_tests(synthetic_rows()))) == []   # one model: nothing to contrast


def test_missing_configuration_leaves_the_cell_out():
    rows = synthetic_rows()
    rows = rows[~((rows["template"] == "t2") & (rows["shots"] == 0))]   # the cell t2/seed 2 lost its zero-shot rows
    kz = by_claim(rb.shares(rb.cell_tests(rows)), "kshot_beats_zero")
    assert kz["n_cells"] == 5 and kz["share_holds"] == pytest.approx(3 / 5)


def test_bad_input():
    rows = synthetic_rows()
    for alpha in (0, 1.5, True, "0.05"):
        with pytest.raises(ValueError, match="alpha"):
            rb.cell_tests(rows, alpha=alpha)
    with pytest.raises(ValueError, match="rows"):
        rb.cell_tests(rows.drop(columns="gold"))
    with pytest.raises(ValueError, match="rows"):
        rb.cell_tests(rows.to_dict("records"))
    shifted = rows.copy()
    shifted.loc[(shifted["shots"] == 0), "query"] += 1000
    with pytest.raises(ValueError, match="rows: configurations .* different queries"):
        rb.cell_tests(shifted)
    with pytest.raises(ValueError, match="claims"):
        rb.cell_tests(rows, claims=[])
    with pytest.raises(ValueError, match="sign"):
        rb.Claim("x", "x", "x", "acc_label", "acc_label", 0)
    with pytest.raises(ValueError, match="a and b"):
        rb.Claim("x", "x", "x", "acc_label", "neff", 1)
    with pytest.raises(ValueError, match="cells"):
        rb.shares(pd.DataFrame())
    with pytest.raises(ValueError, match="shots"):
        rb.ledger_table(rb.shares(rb.cell_tests(rows)), shots=7)
    with pytest.raises(FileNotFoundError, match="--profile robust"):
        bundle_frame(ROOT / "bundles" / "no_such_bundle")


@pytest.mark.skipif(not BUNDLE.is_file(), reason="the stored bundle is not in this checkout")
def test_stored_bundle():
    rows, side = bundle_frame(BUNDLE)
    sizes = rb.bundle_sizes(rows, side)
    table = rb.shares(rb.cell_tests(rows))
    for col in ("share_holds", "share_direction", "share_reversed"):
        assert table[col].between(0, 1).all()
    assert (table["share_holds"] <= table["share_direction"]).all()
    assert set(table["model"]) == set(rows["model"])
    cells_grid = sizes["n_seeds"] * sizes["n_templates"]
    assert (table["n_cells"] <= cells_grid).all()
    config = ["model", "dataset", "template", "seed", "shots", "label_mode"]
    present = rows.drop_duplicates(config).groupby("model").size()
    for model in (m for m in present.index if present[m] == sizes["configs_grid"]):   # complete models
        assert (table.loc[table["model"] == model, "n_cells"] == cells_grid).all(), model
    # one cell recomputed by hand: k-shot (k = 1) against zero-shot, McNemar on the discordant queries
    g = rows[(rows["model"] == present.index[0]) & (rows["template"] == "book") & (rows["seed"] == 0)]
    ds = sorted(g["dataset"].unique())[0]
    a = g[(g["dataset"] == ds) & (g["shots"] == 1) & (g["label_mode"] == "true")].sort_values("query")
    b = g[(g["dataset"] == ds) & (g["shots"] == 0)].sort_values("query")
    ra, rb0 = a["pred_label"].to_numpy() == a["gold"].to_numpy(), b["pred_label"].to_numpy() == b["gold"].to_numpy()
    n10, n01 = int((ra & ~rb0).sum()), int((~ra & rb0).sum())
    cells = rb.cell_tests(g)
    c = cells[(cells["claim"] == "kshot_beats_zero") & (cells["dataset"] == ds) & (cells["shots"] == 1)].iloc[0]
    assert (c["n_a"], c["n_b"]) == (n10, n01)
    assert c["p_value"] == pytest.approx(binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0)


def test_scale_note_tells_the_full_study_from_a_smaller_one():
    rows = synthetic_rows()
    side = {"parameters": {"dtype": "bfloat16", "max_queries": 40}}
    sizes = rb.bundle_sizes(rows, side)
    # the synthetic grid is not complete (6 of 9 cells), so even the matching profile is "smaller"
    profile = {"models": ["m"], "datasets": ["d"], "templates": ["t0", "t1", "t2"], "seeds": [0, 1, 2],
               "shots": [0, 1], "max_queries": 40}
    assert not sizes["complete"]
    assert rb.scale_note(sizes, profile).startswith("smaller than")
    assert rb.scale_note({**sizes, "complete": True}, profile).startswith("the full study that the profile defines")
    # the phrase names the profile it was given, not always "robust"
    assert "the robust_small profile" in rb.scale_note(sizes, {**profile, "profile": "robust_small"})
    for key, other in (("seeds", [0, 1, 2, 3]), ("max_queries", 1000), ("models", ["m", "g"]), ("shots", [0, 1, 2])):
        assert rb.scale_note({**sizes, "complete": True}, {**profile, key: other}).startswith("smaller than"), key
    with pytest.raises(ValueError, match="sizes"):
        rb.scale_note({}, profile)
    with pytest.raises(ValueError, match="profile"):
        rb.scale_note(sizes, {"models": ["m"]})
