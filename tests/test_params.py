"""Every chapter's parameters are validated before any work: one registry of rules, bad values fail in seconds."""
import ast
import json
import math
import os
import time
from pathlib import Path

import papermill
import pytest

from cgar_src.book.params import RULES, check, rule_for, validate_parameters

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def declared(nb: Path) -> dict:
    """The chapter's parameters and their default values, as papermill sees them."""
    return {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(nb)).items()}


def corruptions(name: str, default) -> list:
    """Bad values for a parameter: wrong types for its default's type, plus values outside its range."""
    if isinstance(default, bool):
        return ["yes", 1]
    if isinstance(default, int):
        return ["abc", True, 1.5, -1, None]
    if isinstance(default, float):
        return ["abc", True, math.nan, math.inf, -1.0, None]
    if isinstance(default, str):
        return [3, "", None]
    if isinstance(default, list):
        first = default[0] if default else 0
        return ["abc", [first, "bad"], [None], {"a": first}]   # empty lists: SPECIFIC, where a rule forbids them
    if default is None:
        return [3, "nowhere"]
    raise AssertionError(f"no corruption for {name}={default!r}")


# semantic corruptions, applied to whichever chapters declare the name
SPECIFIC = {
    "alpha": [0.0], "batch_size": [0], "beta": [0.0], "C": [0.0], "context_layer_fractions": [[0.5, 1.5], [0.0]],
    "dataset": ["imdb"], "datasets": [["sst2", "imdb"], ["sst2", "sst2"]], "device": ["gpu", "cuda:x"],
    "device_map": ["everywhere"], "dtype": ["float64", "fp16"], "fact_shots": [0],
    "fit_range": [[0.0, 1.0], [0.1], [2.0, 1.0]], "grid_size": [1], "k_shot": [0], "lambdas": [[-0.1], [0.1, math.inf]],
    "lambdas_small": [[0.0, 1.0]], "model_id": ["   "], "n_folds": [1], "n_memories": [0], "n_queries": [0],
    "probe_shots": [[0, 0]], "patch_layer_fractions": [[-0.5]], "query_layer_fractions": [[2.0]],
    "relations": [["p30"], ["P30", "P30"], ["Q30"]], "seed": [2**32], "shots": [[-1], [0, 0]], "sigmas": [[-0.2]],
}
# lists that must not be empty
NON_EMPTY = ("context_layer_fractions", "datasets", "fit_range", "gate_lambdas", "lambdas", "lambdas_small",
             "patch_layer_fractions", "probe_shots", "query_layer_fractions", "relations", "shots", "sigmas")


def bad_sets(nb: Path) -> list[tuple[str, object]]:
    params = declared(nb)
    out = [(name, bad) for name, default in params.items() for bad in corruptions(name, default)]
    out += [(name, bad) for name in params for bad in SPECIFIC.get(name, [])]
    out += [(name, []) for name in params if name in NON_EMPTY]
    return out


def test_defaults_of_every_chapter_pass():
    assert CHAPTERS
    for nb in CHAPTERS:
        validate_parameters(declared(nb))


def test_every_declared_parameter_has_a_rule():
    missing = {nb.name: [n for n in declared(nb) if rule_for(n) is None] for nb in CHAPTERS}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"parameters without a rule in cgar_src.book.params.RULES: {missing}"


def test_registry_is_alphabetical():
    names = list(RULES)
    assert names == sorted(names, key=str.lower), "keep RULES alphabetical (one entry per line)"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_bad_parameters_rejected_naming_the_parameter(nb):
    params = declared(nb)
    cases = bad_sets(nb)
    assert len(cases) >= 2 * len(params)
    for name, bad in cases:
        ns = dict(params, **{name: bad})
        with pytest.raises(ValueError, match=rf"^parameter {name} must be .*, got ") as err:
            validate_parameters(ns)
        assert repr(bad) in str(err.value)


def test_at_least_twenty_bad_sets_every_chapter_represented():
    per_chapter = {nb.stem: len(bad_sets(nb)) for nb in CHAPTERS}
    assert all(n >= 2 for n in per_chapter.values()), per_chapter
    assert sum(per_chapter.values()) >= 20, per_chapter


def test_validation_accepts_papermill_style_values():
    # papermill passes -p beta 2 as an int, -y lists as lists; tuples and PathLike out_dir are fine too
    validate_parameters({"beta": 2, "shots": (0, 1), "out_dir": Path("x"), "device": "cuda:1", "device_map": "auto",
                         "relations": ["P30", "P1412"], "seed": 2**32 - 1, "context_layer_fractions": [1]})
    check("new_layer_fractions", [0.5])           # a suffix rule covers new *_fractions names
    with pytest.raises(ValueError, match="parameter no_such_parameter has no validation rule"):
        check("no_such_parameter", 1)
    validate_parameters({"In": [], "get_ipython": object(), "_": 3})   # IPython's names are not parameters
    with pytest.raises(ValueError, match="namespace"):
        validate_parameters([("seed", 0)])


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_validation_cell_follows_parameters(nb):
    cells = json.loads(nb.read_text())["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    nxt = "".join(cells[i + 1]["source"])
    assert "from cgar_src.book.params import validate_parameters" in nxt and "validate_parameters(globals())" in nxt, (
        f"{nb.name}: the cell after `parameters` must call validate_parameters(globals())")


def test_bad_seed_fails_fast_and_writes_no_cache(tmp_path, monkeypatch):
    """papermill with -p seed abc on the longest chapter: a ValueError in seconds, nothing in the state cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CGAR_CACHE", str(cache))
    out = tmp_path / "out.ipynb"
    t0 = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "chapters" / "07_memory_collapse.ipynb"), str(out),
                                   parameters={"seed": "abc", "out_dir": str(tmp_path / "results")},
                                   cwd=str(ROOT / "chapters"), progress_bar=False, kernel_name="python3")
    elapsed = time.perf_counter() - t0
    assert err.value.ename == "ValueError" and "parameter seed" in err.value.evalue, err.value.evalue
    assert elapsed < 60, f"took {elapsed:.0f} s"
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert not written, written
    assert not (tmp_path / "results").exists()
