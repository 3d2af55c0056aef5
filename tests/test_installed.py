"""The package works installed: `pip install .` (not editable) into a fresh virtual environment, then the profile
command and both profiles from a folder outside the repository.

The venv sees this interpreter's packages (``--system-site-packages``: torch and the rest are not downloaded again)
and gets cgar_src itself with ``pip install --no-deps --no-build-isolation`` from a copy of the repository's
packaging inputs (pyproject.toml, README.md, LICENSE, cgar_src/, params/, data/): setuptools builds in the source
tree, and the copy keeps its build/ and egg-info out of the working tree. Every check runs the venv's python in a
temporary folder and asserts that the cgar_src it imports is the venv's, not the repository's (whose editable
install the system site-packages also carry).
"""
import json
import os
import shutil
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ("pyproject.toml", "README.md", "LICENSE", "cgar_src", "params", "data")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv folder, a working folder outside the repository) after a non-editable install."""
    base = tmp_path_factory.mktemp("installed")
    src = base / "src"
    src.mkdir()
    for name in PACKAGING:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env_dir = base / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                          cwd=base, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = base / "work"
    work.mkdir()
    return python, env_dir, work


def venv_run(installed, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    python, _, work = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CGAR_DATA_DIR")}
    env.update(HF_HUB_OFFLINE="1", CGAR_CACHE=str(work / "cache"))
    cmd = [str(python), *(["-c", textwrap.dedent(code)] if code is not None else args)]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=180, env=env)


def test_profile_command_help_runs_installed(installed):
    proc = venv_run(installed, "-m", "cgar_src.book.run", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--profile" in proc.stdout and "--chapters DIR" in proc.stdout and "(cpu, paper, robust)" in proc.stdout


def test_both_profiles_load_from_the_installed_package(installed):
    python, env_dir, work = installed
    proc = venv_run(installed, code="""
        import json, cgar_src
        from cgar_src.book import run
        from cgar_src.book.run import load_profile
        from cgar_src.tasks.datafiles import bundled_dir
        from pathlib import Path
        top = Path(cgar_src.__file__).parent
        modules = sorted(str(p.relative_to(top)) for p in top.rglob("*.py") if "bookdata" not in p.parts)
        print(json.dumps({"file": cgar_src.__file__, "profiles": run.profile_names(), "modules": modules,
                          "clone_chapters": run.clone_chapters() is not None, "data": str(bundled_dir()),
                          "cpu": load_profile("cpu"), "paper": load_profile("paper")}))
        """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    here = Path(got["file"]).resolve()
    assert here.is_relative_to(env_dir.resolve()) and not here.is_relative_to(ROOT), got["file"]
    assert Path(got["data"]).resolve().is_relative_to(env_dir.resolve()), got["data"]   # cgar_src.bookdata
    assert got["profiles"] == ["cpu", "paper", "robust"] and got["clone_chapters"] is False
    # every module of the repository's cgar_src is installed (pyproject.toml lists the packages one by one); the
    # installed one has the profiles' __init__.py besides
    ours = sorted(str(p.relative_to(ROOT / "cgar_src")) for p in (ROOT / "cgar_src").rglob("*.py"))
    assert sorted(set(got["modules"]) - {"book/profiles/__init__.py"}) == ours
    assert got["cpu"]["model_id"] == "smollm2-135m-instruct" and got["cpu"]["device"] == "cpu"
    assert got["paper"]["model_id"] == "meta-llama/Meta-Llama-3-8B" and got["paper"]["dtype"] == "bfloat16"
    assert got["cpu"]["chapters"] and got["cpu"]["chapters"] == got["paper"]["chapters"]


def test_chapter_stage_names_how_to_point_at_a_clone(installed):
    """Installed without a clone, the profile command stops before any work and says to pass --chapters; with a
    clone's chapters/ it gets past that check (its next step would load the model: --chapters here points at the
    repository but a missing chapter name makes it stop, still before the model)."""
    _, _, work = installed
    proc = venv_run(installed, "-m", "cgar_src.book.run", "--profile", "cpu", "--out", str(work / "results"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "installed cgar_src does not carry: pass --chapters DIR" in proc.stderr
    proc = venv_run(installed, "-m", "cgar_src.book.run", "--profile", "cpu", "--out", str(work / "results"),
                    "--chapters", str(ROOT / "chapters"), "--set", "chapters=[06_attention_first_order, 99_none]")
    assert proc.returncode == 2 and "parameter --chapters must be a folder" in proc.stderr, proc.stderr[-3000:]
    assert "99_none.ipynb" in proc.stderr and "06_attention" not in proc.stderr.split("missing")[-1]
    assert not (work / "results").exists() and not (work / "cache").exists()
