r"""The spread of the transformer claims over demonstration sets, templates and models, read from a result bundle
(book chapter ``14_robustness``, label ``ch-robustness``; the per-model column of the claims ledger, chapter
``13_claims_ledger``).

A bundle (:mod:`cgar_src.book.bundle`) holds one row per (model, dataset, template, seed, shots, label mode, query).
A *cell* is one (model, dataset, template, seed): one prompt template and, per shot count, one demonstration set
drawn with that seed and shared by the cell's queries. Every claim of :data:`CLAIMS` compares two per-query
quantities of the same queries, A and B, each read from one configuration (shots, label mode) of the cell:

* a right/wrong outcome (``acc_label``: :math:`\arg\max_y z_y` is the gold class; ``acc_full``: the full-vocabulary
  answer is; ``acc_calibrated``: the contextually calibrated answer is; ``acc_majority``: the demonstration pool's
  majority class is) is compared with the exact McNemar test (:func:`cgar_src.analysis.stats.compare`): the
  discordant queries split as :math:`\mathrm{Binomial}(n_{A\,only} + n_{B\,only}, 1/2)` under :math:`H_0`;
* a continuous quantity (``neff``: :math:`N_{eff} = \exp H(\mathrm{softmax}(W_U \mathrm{Norm}(h_L)))`; ``mass``:
  the lens' probability mass on the label tokens, both at the model's last stored layer L) is compared with the
  exact two-sided sign test on :math:`d_i = A_i - B_i` (:func:`cgar_src.analysis.stats.sign_test`; ties dropped).

Each claim has a direction :math:`s \in \{+1, -1\}` (A above B, or below). In a cell the claim

* *holds* when its exact test rejects at level ``alpha`` (two-sided, each cell on its own, no multiplicity
  correction) and the counts point in the claimed direction: :math:`s\,(n_{A} - n_{B}) > 0`, with
  :math:`n_A, n_B` the queries favouring A and B (the test's ``direction``, :mod:`cgar_src.analysis.stats`);
* *points its way* when the counts point in the claimed direction, tested or not;
* is *reversed* when the test rejects in the other direction.

Per (claim, model, dataset, shots), :func:`shares` counts the cells present, ``n_cells`` (a cell counts when both of
its configurations are in the bundle), and reports the shares of those cells where the claim holds, points its way
and is reversed. Under :math:`H_0` (no difference in any cell) the share that holds is at most about
:math:`\alpha/2` in expectation. The cells share their queries and templates, so the shares describe the spread over
demonstration sets and templates; they are not independent replications.

* the rows come from :func:`cgar_src.book.bundle.bundle_frame` (no logit vectors) with the sidecar;
* :func:`cell_tests`: one row per (claim, cell, shots) with its test;
* :func:`shares`: the tidy table of shares; :func:`ledger_table`: one column per model for the ledger;
* :func:`bundle_sizes`: the sizes present in the bundle, for the text; :func:`contrasts`: claims that hold on one
  model and not on the other.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .stats import compare, sign_test

__all__ = ["Claim", "CLAIMS", "QUANTITIES", "CELL", "last_layers", "cell_tests", "shares", "pooled_text",
           "ledger_table", "wide_table", "bundle_sizes", "scale_note", "contrasts", "plot_shares", "ROBUST_COMMAND"]

#: the command that writes the full-size bundle (5 seeds, 1000 queries per dataset, both models)
ROBUST_COMMAND = "python -m cgar_src.book.run --profile robust"
#: the columns that name a cell
CELL = ("model", "dataset", "template", "seed")
#: a bundle row's configuration columns and the per-query columns read here (``cgar_src.book.bundle`` writes them)
CONFIG_COLUMNS = ("model", "dataset", "template", "seed", "shots", "label_mode")
ROW_COLUMNS = CONFIG_COLUMNS + ("query", "gold", "pred_full", "pred_label", "pred_calibrated", "pred_majority")
#: per-query quantities a claim can compare: right/wrong outcomes (McNemar) and continuous ones (sign test)
QUANTITIES = {"acc_label": "McNemar", "acc_full": "McNemar", "acc_calibrated": "McNemar", "acc_majority": "McNemar",
              "neff": "sign", "mass": "sign"}
_PRED = {"acc_label": "pred_label", "acc_full": "pred_full", "acc_calibrated": "pred_calibrated",
         "acc_majority": "pred_majority"}
_N_BOOT = 200   # the stats functions' bootstrap interval is display only and unused here: kept small


@dataclass(frozen=True)
class Claim:
    """A claim tested in every cell: quantity ``a`` at (k shots, ``a_mode``) against quantity ``b`` at (``b_shots``
    or, when None, the same k; ``b_mode``), in the direction ``sign`` (+1: A above B). ``min_shots``: the smallest
    k it is tested at. ``ledger``: the claims-ledger row it corresponds to (chapter ``13_claims_ledger``)."""

    id: str
    title: str
    ledger: str
    a: str
    b: str
    sign: int
    b_shots: int | None = None
    a_mode: str = "true"
    b_mode: str = "true"
    min_shots: int = 1

    def __post_init__(self):
        for name in ("a", "b"):
            if getattr(self, name) not in QUANTITIES:
                raise ValueError(f"{name} must be one of {sorted(QUANTITIES)}, got {getattr(self, name)!r}")
        if QUANTITIES[self.a] != QUANTITIES[self.b]:
            raise ValueError(f"a and b must be of one kind (both right/wrong or both continuous), got {self.a!r} and "
                             f"{self.b!r}")
        if self.sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {self.sign!r}")
        for name in ("a_mode", "b_mode"):
            if getattr(self, name) not in ("true", "random"):
                raise ValueError(f"{name} must be 'true' or 'random', got {getattr(self, name)!r}")

    @property
    def test(self) -> str:
        """``McNemar`` for right/wrong outcomes, ``sign`` for continuous quantities."""
        return QUANTITIES[self.a]


#: the claims, fixed before any bundle was read; each is paired on the same queries of one cell
CLAIMS: tuple[Claim, ...] = (
    Claim("kshot_beats_zero", "k-shot beats zero-shot (label-restricted accuracy)", "Figures 4, 8, 9 (accuracy)",
          "acc_label", "acc_label", +1, b_shots=0),
    Claim("beats_majority", "k-shot beats the pool's majority class", "Figures 5, 10, 11 (majority baseline)",
          "acc_label", "acc_majority", +1),
    Claim("calibration_helps", "calibration helps (at the same shots)", "baseline: contextual calibration",
          "acc_calibrated", "acc_label", +1, min_shots=0),
    Claim("true_beats_random", "true labels beat random labels (accuracy)", "Abstract 4 (label mapping)",
          "acc_label", "acc_label", +1, b_mode="random"),
    Claim("neff_falls", "N_eff at the last layer falls with shots", "Figures 4, 8, 9 (collapse)",
          "neff", "neff", -1, b_shots=0),
    Claim("mass_rises", "label mass at the last layer rises with shots", "Figures 4, 8, 9 (collapse)",
          "mass", "mass", +1, b_shots=0),
)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a test level in (0, 1), got {alpha!r}")
    return float(alpha)


def last_layers(rows) -> dict[str, int]:
    """Per model, its last stored layer: the largest l whose ``neff_<l>`` and ``mass_<l>`` are filled on all of that
    model's rows (the bundle stores each model's own layers; another model's columns are empty on its rows)."""
    _check_rows(rows)
    layers = sorted(int(m.group(1)) for c in rows.columns if (m := re.fullmatch(r"neff_(\d+)", c)))
    out = {}
    for model, g in rows.groupby("model", observed=True, sort=True):
        full = [n for n in layers if f"mass_{n}" in g and g[f"neff_{n}"].notna().all() and g[f"mass_{n}"].notna().all()]
        if not full:
            raise ValueError(f"rows hold no complete neff_<l>/mass_<l> columns for model {model!r}")
        out[str(model)] = full[-1]
    return out


def _check_rows(rows) -> None:
    import pandas as pd

    if not isinstance(rows, pd.DataFrame):
        raise ValueError(f"rows must be a pandas DataFrame of bundle rows (load_bundle), got {type(rows).__name__}")
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"rows lack the bundle columns {missing}")
    if rows.empty:
        raise ValueError("rows must hold at least one bundle row")


def _quantity(g, name: str, layer: int) -> np.ndarray:
    if name in _PRED:
        return (g[_PRED[name]].to_numpy() == g["gold"].to_numpy()).astype(np.float64)
    return g[f"{name}_{layer}"].to_numpy(dtype=np.float64)


def cell_tests(rows, *, alpha: float = 0.05, claims: Sequence[Claim] = CLAIMS):
    """Every claim in every cell and at every shot count k of the cell (k >= the claim's ``min_shots``) where both
    configurations are present: one row with the cell, ``claim``, ``shots``, the test (``McNemar`` or ``sign``),
    ``n`` (paired queries), ``diff`` (mean of A minus B), ``n_a`` and ``n_b`` (queries favouring A and B),
    ``p_value`` (exact, two-sided), ``direction`` (+1, 0, -1: the counts' sign times the claim's), ``holds``
    (``p_value < alpha`` and ``direction == +1``), ``reversed`` (``p_value < alpha`` and ``direction == -1``).

    The two configurations must hold the same queries (the bundle draws them with one ``query_seed``); otherwise
    ValueError naming ``rows``."""
    import pandas as pd

    alpha = _check_alpha(alpha)
    _check_rows(rows)
    if isinstance(claims, Claim) or not claims or not all(isinstance(c, Claim) for c in claims):
        raise ValueError(f"claims must be a non-empty sequence of Claim, got {claims!r}")
    bad = sorted({m for m in rows["label_mode"].unique() if m not in ("true", "random")})
    if bad:
        raise ValueError(f"rows hold label modes {bad}; a bundle has 'true' and 'random'")
    layer = last_layers(rows)
    configs = {key: g.sort_values("query") for key, g in rows.groupby(list(CONFIG_COLUMNS), observed=True, sort=True)}
    out = []
    for key, g in configs.items():
        model, dataset, template, seed, k, mode = key
        for c in claims:
            if mode != c.a_mode or k < c.min_shots:
                continue
            b_key = (model, dataset, template, seed, k if c.b_shots is None else c.b_shots, c.b_mode)
            other = configs.get(b_key)
            if other is None:
                continue
            qa, qb = g["query"].to_numpy(), other["query"].to_numpy()
            if qa.shape != qb.shape or (qa != qb).any():
                raise ValueError(f"rows: configurations {key} and {b_key} of one cell hold different "
                                 f"queries; a bundle pairs every configuration on the same queries")
            a, b = _quantity(g, c.a, layer[model]), _quantity(other, c.b, layer[model])
            if c.test == "McNemar":
                t = compare(a, b, n_boot=_N_BOOT)
                n_a, n_b = t.n_a_only, t.n_b_only
            else:
                t = sign_test(a - b, n_boot=_N_BOOT)
                n_a, n_b = t.n_pos, t.n_neg
            direction = int(np.sign(n_a - n_b)) * c.sign
            out.append({"claim": c.id, "model": model, "dataset": dataset, "template": template, "seed": int(seed),
                        "shots": int(k), "layer": layer[model], "test": c.test, "n": t.n, "diff": t.diff,
                        "n_a": n_a, "n_b": n_b, "p_value": t.p_value, "direction": direction,
                        "holds": bool(t.p_value < alpha and direction > 0),
                        "reversed": bool(t.p_value < alpha and direction < 0)})
    if not out:
        raise ValueError("rows hold no cell with both configurations of any claim (zero-shot and k-shot rows)")
    return pd.DataFrame(out)


def shares(cells):
    """The tidy table of :func:`cell_tests`' rows, one row per (claim, model, dataset, shots): ``n_cells`` (the
    (template, seed) cells present), ``n_holds``, ``share_holds`` = n_holds / n_cells, ``share_direction`` (cells
    whose counts point the claimed way), ``share_reversed`` (cells where the test rejects the other way), and
    ``templates`` and ``seeds`` (how many of each the cells span). Claims keep the order of :data:`CLAIMS`."""
    import pandas as pd

    need = ("claim", "model", "dataset", "template", "seed", "shots", "holds", "direction", "reversed")
    if not isinstance(cells, pd.DataFrame) or any(c not in cells.columns for c in need) or cells.empty:
        raise ValueError("cells must be the non-empty DataFrame that cell_tests returns")
    order = {c.id: i for i, c in enumerate(CLAIMS)}
    g = cells.groupby(["claim", "model", "dataset", "shots"], sort=False)
    out = g.agg(n_cells=("holds", "size"), n_holds=("holds", "sum"), n_direction=("direction", lambda d: (d > 0).sum()),
                n_reversed=("reversed", "sum"), templates=("template", "nunique"), seeds=("seed", "nunique"))
    out = out.reset_index()
    out["share_holds"] = out["n_holds"] / out["n_cells"]
    out["share_direction"] = out["n_direction"] / out["n_cells"]
    out["share_reversed"] = out["n_reversed"] / out["n_cells"]
    out["title"] = out["claim"].map({c.id: c.title for c in CLAIMS}).fillna(out["claim"])
    out["_o"] = out["claim"].map(order).fillna(len(order))
    return out.sort_values(["_o", "dataset", "shots", "model"]).drop(columns="_o").reset_index(drop=True)


def ledger_table(table, shots: int | None = None):
    """One row per claim, one column per model (the ledger's per-model columns): at ``shots`` (default: the largest
    shot count in ``table``; calibration also has 0), per dataset the cells where the claim holds out of the cells
    present, e.g. ``sst2 9/9, agnews 3/9, trec 0/9``. ``table``: :func:`shares`' output."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or "share_holds" not in table.columns or table.empty:
        raise ValueError("table must be the non-empty DataFrame that shares returns")
    k = int(table["shots"].max()) if shots is None else shots
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k not in set(table["shots"]):
        raise ValueError(f"shots must be a shot count present in table {sorted(set(table['shots']))}, got {shots!r}")
    t = table[table["shots"] == k]
    titles = {c.id: c.title for c in CLAIMS}
    rows = {}
    for (claim, model), g in t.groupby(["claim", "model"], sort=False):
        rows.setdefault(titles.get(claim, claim), {})[model] = ", ".join(
            f"{r.dataset} {r.n_holds}/{r.n_cells}" for r in g.itertuples())
    out = pd.DataFrame.from_dict(rows, orient="index")
    out = out[sorted(out.columns)].fillna("no cells")
    out.index.name = f"claim (k = {k})"
    return out


def bundle_sizes(rows, sidecar: Mapping | None = None) -> dict:
    """The sizes present in ``rows`` (whatever the profile asked for): models, datasets, templates, seeds, shot
    counts, queries per configuration (min and max), configurations present per model against the full grid of the
    values present, and the sidecar's dtype and query budget (``max_queries``) where a sidecar is given. Numbers and
    short texts, ready to glue."""
    _check_rows(rows)
    if sidecar is not None and not isinstance(sidecar, Mapping):
        raise ValueError(f"sidecar must be the bundle's sidecar dict or None, got {type(sidecar).__name__}")
    models = sorted(rows["model"].unique())
    datasets, templates = sorted(rows["dataset"].unique()), sorted(rows["template"].unique())
    seeds, shots = sorted(int(s) for s in rows["seed"].unique()), sorted(int(k) for k in rows["shots"].unique())
    per_config = rows.groupby(list(CONFIG_COLUMNS), observed=True).size()
    grid = len(datasets) * len(templates) * len(seeds) * sum(1 if k == 0 else 2 for k in shots)
    present = rows.drop_duplicates(list(CONFIG_COLUMNS)).groupby("model").size()
    params = (sidecar or {}).get("parameters", {})
    out = {"n_models": len(models), "models": ", ".join(models), "n_datasets": len(datasets),
           "datasets": ", ".join(datasets), "n_templates": len(templates), "templates": ", ".join(templates),
           "n_seeds": len(seeds), "seeds": ", ".join(map(str, seeds)), "shots": ", ".join(map(str, shots)),
           "queries_min": int(per_config.min()), "queries_max": int(per_config.max()), "n_rows": len(rows),
           "configs_grid": grid, "cells_grid": len(templates) * len(seeds),
           "configs_present": "; ".join(f"{m}: {int(present[m])} of {grid}" for m in models),
           "complete": all(int(present[m]) == grid for m in models)}
    if params:
        out["dtype"] = str(params.get("dtype", "unknown"))
        out["max_queries"] = int(params.get("max_queries", 0))
    return out


def scale_note(sizes: Mapping, profile: Mapping) -> str:
    """How the bundle stands against the study a profile defines (``load_profile("robust")``), as a phrase to glue:
    "the full study ..." when its models, datasets, templates, seed count, shot counts and query budget
    (``bundle_sizes`` with the sidecar) are the profile's and every model is complete, else "smaller than the study
    ..." with the profile's sizes."""
    if not isinstance(sizes, Mapping) or "complete" not in sizes:
        raise ValueError("sizes must be the dict that bundle_sizes returns")
    if not isinstance(profile, Mapping) or not {"models", "datasets", "templates", "seeds", "shots",
                                                 "max_queries"} <= set(profile):
        raise ValueError("profile must be a loaded profile with models, datasets, templates, seeds, shots and "
                         "max_queries")
    want = {"models": ", ".join(sorted(profile["models"])), "datasets": ", ".join(sorted(profile["datasets"])),
            "templates": ", ".join(sorted(profile["templates"])), "n_seeds": len(profile["seeds"]),
            "shots": ", ".join(str(k) for k in sorted(profile["shots"])), "max_queries": int(profile["max_queries"])}
    name = f"the {profile['profile']} profile" if profile.get("profile") else "the profile"
    study = (f"{', '.join(profile['models'])}; {len(profile['seeds'])} seeds, {len(profile['templates'])} templates, "
             f"shots {want['shots']} and up to {want['max_queries']} queries per dataset")
    if all(sizes.get(k) == v for k, v in want.items()) and sizes["complete"]:
        return f"the full study that {name} defines ({study})"
    return f"smaller than the study that {name} defines ({study})"


def contrasts(table, threshold: float = 0.5) -> list[str]:
    """Sentences for the (claim, dataset, shots) where the claim holds in more than ``threshold`` of the cells on
    one model and in at most that share on another ("not reproduced on this model"); empty with one model."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or "share_holds" not in table.columns:
        raise ValueError("table must be the DataFrame that shares returns")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a share in [0, 1), got {threshold!r}")
    titles = {c.id: c.title for c in CLAIMS}
    out = []
    for (claim, dataset, k), g in table.groupby(["claim", "dataset", "shots"], sort=False):
        if g["model"].nunique() < 2:
            continue
        yes = [r for r in g.itertuples() if r.share_holds > threshold]
        no = [r for r in g.itertuples() if r.share_holds <= threshold]
        if yes and no:
            out.append(f"{titles.get(claim, claim)}, {dataset}, k = {k}: holds on "
                       + ", ".join(f"{r.model} ({r.n_holds}/{r.n_cells})" for r in yes)
                       + "; not reproduced on " + ", ".join(f"{r.model} ({r.n_holds}/{r.n_cells})" for r in no))
    return out


def pooled_text(table, shots: int | None = None) -> dict[str, str]:
    """Per claim (its id), the cells where it holds at ``shots`` (default: the largest shot count in ``table``),
    pooled over datasets, per model: ``"smollm2-135m-instruct 27/27, gemma-3-270m 3/9"``. ``table``:
    :func:`shares`' output."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or "share_holds" not in table.columns or table.empty:
        raise ValueError("table must be the non-empty DataFrame that shares returns")
    k = int(table["shots"].max()) if shots is None else shots
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k not in set(table["shots"]):
        raise ValueError(f"shots must be a shot count present in table {sorted(set(table['shots']))}, got {shots!r}")
    t = table[table["shots"] == k].groupby(["claim", "model"], sort=False)[["n_holds", "n_cells"]].sum()
    out: dict[str, str] = {}
    for c in CLAIMS:
        if c.id in t.index.get_level_values(0):
            g = t.loc[c.id].sort_index()
            out[c.id] = ", ".join(f"{m} {int(r.n_holds)}/{int(r.n_cells)}" for m, r in g.iterrows())
    return out


def plot_shares(table, *, alpha: float = 0.05):
    """The chapter's figure (``fig-robust-shares``): one panel per dataset; per claim and shot count (rows), per
    model (colours), the share of (template, seed) cells where the claim holds (filled) and where its counts point
    the claimed way (open); a dotted line at ``alpha / 2``, about the share that holds by chance when nothing
    differs. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    import pandas as pd

    alpha = _check_alpha(alpha)
    if not isinstance(table, pd.DataFrame) or "share_holds" not in table.columns or table.empty:
        raise ValueError("table must be the non-empty DataFrame that shares returns")
    titles = {c.id: c.title for c in CLAIMS}
    keys = list(dict.fromkeys(zip(table["claim"], table["shots"])))
    keys.sort(key=lambda ck: ([c.id for c in CLAIMS].index(ck[0]) if ck[0] in titles else len(CLAIMS), ck[1]))
    ypos = {ck: i for i, ck in enumerate(keys)}
    datasets, models = list(dict.fromkeys(table["dataset"])), sorted(table["model"].unique())
    colors = dict(zip(models, plt.cm.tab10(np.arange(len(models)))))
    offset = dict(zip(models, np.linspace(-0.18, 0.18, len(models)) if len(models) > 1 else [0.0]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(2.5 * len(datasets) + 3.7, 0.3 * len(keys) + 2.0),
                             sharey=True, squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        t = table[table["dataset"] == ds]
        for m in models:
            tm = t[t["model"] == m]
            y = [ypos[ck] + offset[m] for ck in zip(tm["claim"], tm["shots"])]
            ax.scatter(tm["share_direction"], y, s=36, facecolors="none", edgecolors=colors[m])
            ax.scatter(tm["share_holds"], y, s=36, color=colors[m], label=m)
        ax.axvline(alpha / 2, color="grey", ls=":", lw=1)
        for i in range(1, len(keys)):
            if keys[i][0] != keys[i - 1][0]:
                ax.axhline(i - 0.5, color="0.85", lw=0.8)
        ax.set_xlim(-0.04, 1.04)
        ax.set_title(ds)
        ax.set_xlabel("share of (template, seed) cells")
    axes[0, 0].set_yticks(range(len(keys)), [f"{titles.get(c, c)}, k = {k}" for c, k in keys], fontsize=9)
    axes[0, 0].set_ylim(len(keys) - 0.5, -0.5)
    axes[0, 0].set_ylabel("claim, shots per class k")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], ls="", marker="o", color="k"),
                plt.Line2D([], [], ls="", marker="o", mfc="none", color="k"),
                plt.Line2D([], [], color="grey", ls=":")]
    labels += [f"holds (exact test, p < {alpha:g}, claimed direction)", "points the claimed way",
               f"alpha/2 = {alpha / 2:g}"]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.025 * (len(labels) > 3), 1, 1))
    return fig


def wide_table(table):
    """The chapter's table: one row per (claim, dataset, k), one column per model, each entry ``holds/cells, way w,
    reversed r``: the cells where the claim holds, of the cells present; ``w`` of them point the claimed way; in
    ``r`` the exact test rejects the other way. ``table``: :func:`shares`' output."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or "share_holds" not in table.columns or table.empty:
        raise ValueError("table must be the non-empty DataFrame that shares returns")
    t = table.assign(entry=[f"{r.n_holds}/{r.n_cells}, way {r.n_direction}, reversed {r.n_reversed}"
                            for r in table.itertuples()])
    out = t.pivot_table(index=["title", "dataset", "shots"], columns="model", values="entry", aggfunc="first",
                        sort=False).fillna("no cells")
    out = out.reindex(list(dict.fromkeys(zip(t["title"], t["dataset"], t["shots"]))))[sorted(out.columns)]
    out.columns.name = None
    out.index.names = ["claim", "dataset", "k"]
    return out
