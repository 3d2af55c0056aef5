"""Bad input fails before any work, naming the parameter: chapter 07 (the longest) and the profile command.

Ten bad inputs a new user can give, each checked three ways: the chapter's validation cell
(``validate_parameters`` on chapter 07's parameters, as papermill would set them), the profile command
(``python -m cgar_src.book.run --set ...`` / ``--out``), and, for three of them, chapter 07 end to end through the
papermill command line. Every case must fail in seconds with a ``ValueError`` naming the parameter, with nothing in
the cache (``$CGAR_CACHE``: no states, and no model conversion either, so nothing was loaded) and no output folder.
A computed result is never lost to a late failure of its folder (``save_run`` rescues it).
"""
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import papermill
import pytest
import torch
import yaml

from cgar_src.book import run
from cgar_src.book.params import validate_parameters

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "07_memory_collapse.ipynb"
# a device this machine lacks: 'cuda' without CUDA (as here), else the GPU index one past the last
ABSENT_DEVICE = "cuda" if torch.cuda.device_count() == 0 else f"cuda:{torch.cuda.device_count()}"
UNDER_A_FILE = "<a path under a regular file>"   # replaced by tmp_path/'file'/'x' (a folder that cannot be created)

CASES = [("n_queries", 0), ("n_queries", 100000), ("datasets", ["imdb"]), ("datasets", "sst2"),
         ("model_id", "nonexistent/model-xyz"), ("dtype", "float8"), ("shots", [-1]), ("batch_size", 0),
         ("out_dir", UNDER_A_FILE), ("device", ABSENT_DEVICE)]
IDS = [f"{name}={value}" for name, value in CASES]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty cache ($CGAR_CACHE, inherited by kernels and subprocesses), the hub offline, a regular file under
    which no folder can be made, and the output folder the runs must not create."""
    monkeypatch.setenv("CGAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "file").write_text("a regular file, not a folder")
    return tmp_path


def value_for(value, sandbox: Path):
    return str(sandbox / "file" / "x") if value == UNDER_A_FILE else value


def assert_nothing_written(sandbox: Path) -> None:
    cache = sandbox / "cache"
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert not written, f"written to the cache: {written}"      # states/ and models/ both stay empty
    assert not (sandbox / "results").exists(), "an output folder was left behind"
    assert not (sandbox / "file" / "x").exists()


def chapter_defaults() -> dict:
    return {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(CHAPTER)).items()}


@pytest.mark.parametrize("name,value", CASES, ids=IDS)
def test_chapter_validation_rejects(name, value, sandbox, monkeypatch):
    """Chapter 07's validation cell on its parameters with one bad value (run in chapters/, as papermill --cwd)."""
    monkeypatch.chdir(ROOT / "chapters")
    ns = {**chapter_defaults(), "out_dir": str(sandbox / "results" / "memory_collapse")}
    ns[name] = value_for(value, sandbox)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"^parameter {name} must be .*, got {re.escape(repr(ns[name]))}"):
        validate_parameters(ns)
    assert time.perf_counter() - t0 < 10
    assert_nothing_written(sandbox)


@pytest.mark.parametrize("name,value", CASES, ids=IDS)
def test_profile_command_rejects(name, value, sandbox, monkeypatch, capsys):
    """The profile command with one bad --set (or --out): a usage error naming the parameter, before the model."""
    monkeypatch.setattr(run, "profile_model", lambda prof: pytest.fail("the model was loaded"))
    if name == "out_dir":           # the command's output folder is --out
        out, sets, named = Path(value_for(value, sandbox)), [], "--out"
    else:                           # --set NAME=VALUE, the value in YAML as a user types it
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        out, sets, named = sandbox / "results", [f"{name}={text}"], name
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"^parameter {named} must be "):
        run.check_profile(run.load_profile("cpu", sets), out)
    with pytest.raises(SystemExit) as exit_:
        run.main(["--profile", "cpu", "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    assert exit_.value.code == 2 and f"error: parameter {named} must be " in capsys.readouterr().err
    assert time.perf_counter() - t0 < 10
    assert_nothing_written(sandbox)


@pytest.mark.parametrize("name,value", [c for c in CASES if c[0] in ("out_dir", "device", "model_id")],
                         ids=["out_dir", "device", "model_id"])
def test_chapter_through_papermill_fails_in_seconds(name, value, sandbox):
    """`papermill --cwd chapters chapters/07_memory_collapse.ipynb OUT -p NAME VALUE`: the kernel stops in the
    validation cell with a ValueError naming NAME, before the model loads (the cache stays empty)."""
    out_nb = sandbox / "out.ipynb"
    params = {"out_dir": str(sandbox / "results" / "memory_collapse"), name: value_for(value, sandbox)}
    cmd = [sys.executable, "-m", "papermill", "--cwd", "chapters", str(CHAPTER.relative_to(ROOT)), str(out_nb),
           "--no-progress-bar", "-k", "python3"]
    for k, v in params.items():
        cmd += ["-p", k, v]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0, proc.stderr[-2000:]
    errors = [o for c in json.loads(out_nb.read_text())["cells"] if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ValueError", errors
    assert errors[0]["evalue"].startswith(f"parameter {name} must be "), errors[0]["evalue"]
    assert elapsed < 45, f"took {elapsed:.0f} s"
    assert_nothing_written(sandbox)


def test_profile_command_line_fails_in_seconds(sandbox):
    """`python -m cgar_src.book.run --set device=<absent>` in a fresh process: exit status 2, the parameter named."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cgar_src.book.run", "--set", f"device={ABSENT_DEVICE}", "--out",
                           str(sandbox / "results")], cwd=sandbox, capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: parameter device must be a device of this machine, one of ['cpu'" in proc.stderr
    assert f"got '{ABSENT_DEVICE}'" in proc.stderr
    assert time.perf_counter() - t0 < 30
    assert_nothing_written(sandbox)


def test_save_run_never_loses_a_result(tmp_path, monkeypatch):
    """When the output folder fails at the end after all (here: it became a regular file), save_run keeps the
    computed parameters and results in a rescue folder and the error names it."""
    from cgar_src.records import save_run

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))   # where the rescue folder goes (tempfile reads TMPDIR)
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)        # forget the cached temporary directory
    (tmp_path / "out").write_text("not a folder")
    params, results = {"seed": 3, "shots": (0, 1)}, {"accuracy": torch.tensor([0.25, 0.5])}
    with pytest.raises(OSError, match=r"could not write into out_dir .*saved to (\S+) instead") as err:
        save_run(tmp_path / "out" / "run", params, results)
    rescue = Path(str(err.value).rsplit("saved to ", 1)[1].removesuffix(" instead"))
    assert rescue.parent == tmp_path / "tmp"
    assert json.loads((rescue / "params.json").read_text()) == {"seed": 3, "shots": [0, 1]}
    assert json.loads((rescue / "results.json").read_text()) == {"accuracy": [0.25, 0.5]}
    # and a good folder gets both files, with no temporary file left beside them
    assert save_run(tmp_path / "good", params, results) == tmp_path / "good"
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == ["params.json", "results.json"]
