"""Same numbers on any machine: a chapter re-executed under a cold state cache (every state computed in-process, as
on a newcomer's machine), a warm one (states read back from the cache) and another thread count or batch size prints
and glues the same numbers, compared with the tolerance nbval uses (tests/nbval_tolerance.py: numbers within
max(0.01, 1 %), every word, verdict and label exactly).

Chapter 06 (the transformer chapter whose slope once differed between machines) runs three times with papermill
(``--cwd chapters``) and an isolated state cache (``$CGAR_STATE_CACHE``; the converted model is shared, not converted
again): cold, warm, and with one thread and batch size 4 (another batch grouping is another cache entry, so its
states are computed again). It runs with fewer queries than the book (``n_queries``), since the runs are compared
with each other, not with the stored outputs (nbval does that). A theory chapter (01, with fewer random queries)
runs with the default thread count and with one thread; it reads no state cache (checked), so cold and warm are the
same run for it.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import nbval_tolerance as tol
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
SANITIZE = tol.sanitize_patterns(Path(__file__).with_name("sanitize.cfg").read_text())
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _execute(name: str, out: Path, parameters: dict, env: dict, monkeypatch) -> nbformat.NotebookNode:
    """Execute chapters/<name>.ipynb with papermill from the chapters folder; the kernel inherits ``env``."""
    import papermill as pm

    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        pm.execute_notebook(str(CHAPTERS / f"{name}.ipynb"), str(out), parameters=parameters, cwd=str(CHAPTERS),
                            progress_bar=False, kernel_name="python3")
    return nbformat.read(out, as_version=4)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _same(ref: nbformat.NotebookNode, runs: dict[str, nbformat.NotebookNode]) -> None:
    problems = [f"{label}: {p}" for label, nb in runs.items() for p in tol.compare_notebooks(ref, nb, SANITIZE)]
    assert not problems, "outputs differ beyond the tolerance:\n" + "\n".join(problems)


def test_chapter_06_cold_warm_one_thread_and_another_batch_size(tmp_path, monkeypatch):
    from cgar_src.tasks import data

    if data.data_dir() is None:
        pytest.skip("CGAR_DATA_DIR=hub selects the Hugging Face hub, which tests never reach")
    name = "06_attention_first_order"
    cache = tmp_path / "states"
    params = {"n_queries": 8, "out_dir": str(tmp_path / "results")}
    env = {"CGAR_STATE_CACHE": str(cache)}
    cold = _execute(name, tmp_path / "cold.ipynb", params, env, monkeypatch)
    filled = _files(cache)
    assert any(f.endswith(".safetensors") for f in filled)          # the states went to the isolated cache
    warm = _execute(name, tmp_path / "warm.ipynb", params, env, monkeypatch)
    assert _files(cache) == filled                                   # read back, nothing recomputed
    other = _execute(name, tmp_path / "other.ipynb", {**params, "batch_size": 4}, {**env, **ONE_THREAD}, monkeypatch)
    assert _files(cache) > filled                                    # batch size 4: computed in-process again
    glued = [where for where, _ in tol.notebook_texts(cold)]
    assert any("fo_slope_min" in w for w in glued) and any("fo_agree_10" in w for w in glued)
    _same(cold, {"warm cache": warm, "one thread, batch size 4": other})


def test_theory_chapter_with_one_thread(tmp_path, monkeypatch):
    name = "01_modern_hopfield"
    env = {"CGAR_STATE_CACHE": str(tmp_path / "states")}
    params = {"n_queries": 1024}
    default = _execute(name, tmp_path / "default.ipynb", params, env, monkeypatch)
    one = _execute(name, tmp_path / "one_thread.ipynb", params, {**env, **ONE_THREAD}, monkeypatch)
    assert not _files(tmp_path / "states")                           # no state cache: cold and warm are one run
    assert tol.notebook_texts(default)
    _same(default, {"one thread": one})


def test_state_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    """$CGAR_STATE_CACHE moves only the state cache; unset (or empty) it is user_cache_dir()/states, beside the
    converted models."""
    import torch
    from test_lm import byte_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from cgar_src.lm import LoadedModel, user_cache_dir
    from cgar_src.lm.cache import STATE_CACHE_ENV, cached_states, state_cache_dir

    monkeypatch.setenv("CGAR_CACHE", str(tmp_path / "user"))
    monkeypatch.delenv(STATE_CACHE_ENV, raising=False)
    assert state_cache_dir() == user_cache_dir() / "states" == tmp_path / "user" / "states"
    monkeypatch.setenv(STATE_CACHE_ENV, "")
    assert state_cache_dir() == tmp_path / "user" / "states"
    monkeypatch.setenv(STATE_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert state_cache_dir() == tmp_path / "elsewhere"
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=257)
    lm = LoadedModel(model=LlamaForCausalLM(cfg).eval(), tokenizer=byte_tokenizer(), model_id="tiny", revision="none",
                     dtype="float32")
    got = cached_states(lm, ["a prompt"], {"kind": "test"}, progress=False)
    assert got.path.parent.parent == tmp_path / "elsewhere" and got.n_forward == 1
    assert not (tmp_path / "user" / "states").exists()
    explicit = cached_states(lm, ["a prompt"], {"kind": "test"}, cache_root=tmp_path / "given", progress=False)
    assert explicit.path.parent.parent == tmp_path / "given"          # an explicit cache_root still wins
