"""Shared by tests/test_paper_path.py and tests/test_gemma_path.py: every transformer chapter of a profile executed
with papermill on a tiny random model saved in a local folder, with small sizes, into a temporary state cache.

The chapter list comes from the profile and each chapter's parameters from its own parameters cell, read at test time
(as `python -m cgar_src.book.run` does), so chapters can be added or rewritten without touching these tests.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

# sizes small enough for 2 CPU cores, large enough for every class of every dataset (TREC has 6) to appear and for
# the chapters' cross-validation folds; applied only to the chapters that declare them
SMALL = {"n_queries": 24, "n_facts": 6, "seeds": [0, 1]}   # two demonstration sets: the pooled path runs


def run_every_chapter(profile_name: str, model_dir: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch, *, skip: tuple[str, ...] = (),
                      overrides: dict[str, dict] | None = None) -> dict[str, float]:
    """Execute every chapter of the profile ``profile_name`` (its dtype, its other entries) on the model saved in
    ``model_dir`` (``model_id`` = that folder, CPU, :data:`SMALL` sizes), each into ``tmp_path``, with the state
    cache in ``tmp_path/cache/states``. Fails listing every chapter that raised or that did not record, in
    ``out_dir/params.json``, the weights it ran on (the profile's dtype and the resolved revision ``"local"``).
    Returns each chapter's wall time in seconds. ``skip`` names chapters of the profile left out, ``overrides`` gives
    a chapter parameters of its own on top of the profile's (say why at the call)."""
    import papermill as pm

    from cgar_src.book.run import ROOT, chapter_parameters, load_profile
    from cgar_src.lm.cache import STATE_CACHE_ENV
    from cgar_src.tasks import data

    if data.data_dir() is None:   # only with CGAR_DATA_DIR=hub, and the hub is offline in tests
        pytest.skip("CGAR_DATA_DIR=hub selects the Hugging Face hub, which tests never reach")
    monkeypatch.setenv("CGAR_CACHE", str(tmp_path / "cache"))          # the chapters' kernels inherit it
    monkeypatch.delenv(STATE_CACHE_ENV, raising=False)                  # so the states go to CGAR_CACHE/states
    base = load_profile(profile_name)
    profile = {**base, **SMALL, "model_id": str(model_dir), "device": "cpu", "device_map": None}
    if "random_label_sets" in profile:   # the paper profile's control on every set: every one of SMALL's sets
        profile["random_label_sets"] = min(profile["random_label_sets"], len(SMALL["seeds"]))
    dtype = profile["dtype"]
    failures, seconds = [], {}
    overrides = overrides or {}
    unknown = (set(skip) | set(overrides)) - set(base["chapters"])
    assert not unknown, f"skip or overrides name chapters that profile {profile_name} does not run: {sorted(unknown)}"
    for ch in [c for c in base["chapters"] if c not in skip]:
        source = ROOT / "chapters" / f"{ch}.ipynb"
        params = chapter_parameters(profile, ch, tmp_path / "results")   # what `python -m cgar_src.book.run` passes
        params.update(overrides.get(ch, {}))
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(source), str(tmp_path / f"{ch}.ipynb"), parameters=params,
                                cwd=str(ROOT / "chapters"), progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as err:
            failures.append(f"{ch}: cell {err.exec_count}: {err.ename}: {err.evalue}")
            continue
        finally:
            seconds[ch] = time.perf_counter() - start
        saved = tmp_path / "results" / ch / "params.json"
        if saved.exists():  # a chapter that records its run names the weights it ran on: dtype and resolved revision
            record = json.loads(saved.read_text())
            if record.get("dtype") != dtype or record.get("revision") != "local":
                failures.append(f"{ch}: params.json records dtype={record.get('dtype')!r}, "
                                f"revision={record.get('revision')!r} (expected {dtype!r} and 'local')")
        else:
            failures.append(f"{ch}: wrote no params.json into out_dir")
    assert not failures, "\n".join(failures)
    assert os.listdir(tmp_path / "cache" / "states")                        # states went to the temporary cache
    return seconds
