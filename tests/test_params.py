"""Every chapter's parameters are validated before any work: one registry of rules, bad values fail in seconds."""
import ast
import json
import math
import re
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
    "device_map": ["everywhere", {}, {"model": "gpu"}, {"model": -1}, {3: "cpu"}], "dtype": ["float64", "fp16"],
    "fact_shots": [0],
    "fit_range": [[0.0, 1.0], [0.1], [2.0, 1.0]], "grid_size": [1], "k_shot": [0], "lambdas": [[-0.1], [0.1, math.inf]],
    "lambdas_small": [[0.0, 1.0]], "model_id": ["   "], "n_folds": [1], "n_memories": [0], "n_queries": [0],
    "probe_shots": [[0, 0]], "patch_layer_fractions": [[-0.5]], "query_layer_fractions": [[2.0]],
    "relations": [["p30"], ["P30", "P30"], ["Q30"]], "seed": [2**32], "shots": [[-1], [0, 0]], "sigmas": [[-0.2]],
}
# lists that must not be empty
NON_EMPTY = ("context_layer_fractions", "datasets", "fit_range", "lambdas", "lambdas_small",
             "patch_layer_fractions", "probe_shots", "query_layer_fractions", "relations", "shots", "sigmas")


def bad_sets(nb: Path) -> list[tuple[str, object]]:
    params = declared(nb)
    out = [(name, bad) for name, default in params.items() for bad in corruptions(name, default)]
    out += [(name, bad) for name in params for bad in SPECIFIC.get(name, [])]
    out += [(name, []) for name in params if name in NON_EMPTY]
    return out


def test_defaults_of_every_chapter_pass(monkeypatch):
    """Every chapter's defaults pass all checks, those against this machine included (run from chapters/, as
    papermill --cwd chapters does, so that the default out_dir resolves there; the check leaves no folder)."""
    assert CHAPTERS
    monkeypatch.chdir(ROOT / "chapters")
    before = {p for p in (ROOT / "results").rglob("*")} if (ROOT / "results").exists() else None
    for nb in CHAPTERS:
        validate_parameters(declared(nb))
    after = {p for p in (ROOT / "results").rglob("*")} if (ROOT / "results").exists() else None
    assert after == before, "validation left folders behind"


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
    # papermill passes -p beta 2 as an int, -y lists as lists; tuples and PathLike out_dir are fine too (the values
    # alone: machine=False leaves out the checks against this machine, which has no second GPU)
    validate_parameters({"beta": 2, "shots": (0, 1), "out_dir": Path("x"), "device": "cuda:1", "device_map": "auto",
                         "relations": ["P30", "P1412"], "seed": 2**32 - 1, "context_layer_fractions": [1]},
                        machine=False)
    validate_parameters({"device_map": {"model.layers.0": 0, "lm_head": "cpu", "model.norm": "disk"}}, machine=False)
    assert not Path("x").exists()
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


# --- checks against this machine ---------------------------------------------------------------------------------

def fake_gpus(monkeypatch, n: int) -> None:
    """Pretend this machine has ``n`` CUDA devices and no MPS (the device check asks only these two)."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_device_must_exist_on_this_machine(monkeypatch):
    from cgar_src.book.params import available_devices

    fake_gpus(monkeypatch, 0)
    assert available_devices() == ["cpu"]
    validate_parameters({"device": "cpu"})
    for bad in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ValueError, match=r"^parameter device must be a device of this machine, one of \['cpu'\], "
                                             rf"got '{bad}'"):
            validate_parameters({"device": bad})
    fake_gpus(monkeypatch, 2)
    assert available_devices() == ["cpu", "cuda", "cuda:0", "cuda:1"]
    for good in ("cuda", "cuda:0", "cuda:1"):
        validate_parameters({"device": good})
    with pytest.raises(ValueError, match=r"parameter device .*'cuda:1'\], got 'cuda:2'"):
        validate_parameters({"device": "cuda:2"})
    # a device_map dict places modules on devices that must exist too ('disk' always does)
    validate_parameters({"device_map": {"model": 1, "lm_head": "cpu", "norm": "disk"}})
    with pytest.raises(ValueError, match=r"parameter device_map .*module 'lm_head' is placed on 2"):
        validate_parameters({"device_map": {"model": 1, "lm_head": 2}})
    validate_parameters({"device_map": "auto"})   # strategies place modules on whatever exists


def test_out_dir_must_be_creatable_and_writable_and_is_left_clean(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    for bad in (tmp_path / "file" / "x", tmp_path / "file", tmp_path / "file" / "x" / "y"):
        pattern = (r"^parameter out_dir must be a folder that can be created and written, got "
                   rf"{re.escape(repr(str(bad)))} \((NotADirectoryError|FileExistsError): ")
        with pytest.raises(ValueError, match=pattern) as err:
            validate_parameters({"out_dir": str(bad)})
        assert isinstance(err.value.__cause__, OSError)
    new = tmp_path / "a" / "b" / "c"
    validate_parameters({"out_dir": new})           # creatable: checked, and the folders made are removed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.json").write_text("{}")
    validate_parameters({"out_dir": kept})          # an existing folder keeps its files, and gets no probe left over
    assert sorted(p.name for p in kept.iterdir()) == ["old.json"]
    # a static bad value fails before the output folder is even probed
    with pytest.raises(ValueError, match="parameter seed"):
        validate_parameters({"seed": -1, "out_dir": tmp_path / "file" / "x"})


def test_model_id_is_found_without_loading(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from cgar_src.lm import DEFAULT_MODEL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    validate_parameters({"model_id": DEFAULT_MODEL})
    with pytest.raises(ValueError, match=r"^parameter model_id must be .*got 'nonexistent/model-xyz' \(not in the "
                                         r"local Hugging Face cache, and HF_HUB_OFFLINE is set"):
        validate_parameters({"model_id": "nonexistent/model-xyz"})
    with pytest.raises(ValueError, match=r"parameter model_id .*got './no/such/model' \(no such local folder"):
        validate_parameters({"model_id": "./no/such/model"})
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"parameter model_id .*has no config.json"):
        validate_parameters({"model_id": str(folder)})
    (folder / "config.json").write_text("{}")
    validate_parameters({"model_id": str(folder)})

    # online: one metadata request decides (faked here: tests never reach the hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def answer(exc):
        def model_info(self, repo_id, **kw):
            assert kw.get("timeout"), "the hub is asked with a timeout"
            if exc is not None:
                raise exc
        return model_info

    class NotFound(RepositoryNotFoundError):
        def __init__(self):
            Exception.__init__(self, "404")

    class Gated(GatedRepoError):
        def __init__(self):
            Exception.__init__(self, "401 gated")

    monkeypatch.setattr(HfApi, "model_info", answer(NotFound()))
    with pytest.raises(ValueError, match=r"parameter model_id .*no such model on the Hugging Face hub"):
        validate_parameters({"model_id": "nonexistent/model-xyz"})
    monkeypatch.setattr(HfApi, "model_info", answer(ConnectionError("Name or service not known")))
    with pytest.raises(ValueError, match=r"parameter model_id .*the hub could not be asked \(ConnectionError"):
        validate_parameters({"model_id": "nonexistent/model-xyz"})
    for ok in (Gated(), None):   # a gated repository exists (loading it needs a token); so does a public one
        monkeypatch.setattr(HfApi, "model_info", answer(ok))
        validate_parameters({"model_id": "someone/some-model"})


def test_n_queries_at_most_every_datasets_query_split():
    from cgar_src.tasks.data import TASKS, load_examples

    sizes = {ds: len(load_examples(ds, TASKS[ds].query_split)) for ds in TASKS}
    smallest = min(sizes, key=sizes.get)
    validate_parameters({"n_queries": sizes[smallest], "datasets": sorted(TASKS)}, machine=False)
    with pytest.raises(ValueError, match=rf"^parameter n_queries must be at most {sizes[smallest]}, the "
                                         rf"{TASKS[smallest].query_split} examples of {smallest} .*got "
                                         rf"{sizes[smallest] + 1}$"):
        validate_parameters({"n_queries": sizes[smallest] + 1, "datasets": sorted(TASKS)}, machine=False)
    largest = max(sizes, key=sizes.get)
    validate_parameters({"n_queries": sizes[largest], "dataset": largest}, machine=False)   # one dataset (chapter 06)
    with pytest.raises(ValueError, match="parameter n_queries must be at most"):
        validate_parameters({"n_queries": sizes[largest] + 1, "dataset": largest}, machine=False)
    validate_parameters({"n_queries": 10**6}, machine=False)   # random queries of the theory chapters: no dataset


def test_random_label_sets_at_most_the_sets():
    """The random-label control runs on the first random_label_sets demonstration sets: never more than there are."""
    from cgar_src.book.params import check_across

    check_across({"random_label_sets": 3, "seeds": [0, 1, 2]})
    with pytest.raises(ValueError, match="random_label_sets"):
        check_across({"random_label_sets": 3, "seeds": [0, 1]})
