"""The book builds with zero warnings, and every chapter's HTML exists with its figures and no traceback."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def n_figures(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum("image/png" in out.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code" for out in c["outputs"])


@pytest.fixture(scope="module")
def build():
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    return proc


def test_book_builds_without_warnings(build):
    log = build.stdout + build.stderr
    # Sphinx warnings and errors (the kernel's own start-up notice on stderr is not a book warning)
    warnings = [line for line in log.splitlines()
                if re.search(r"WARNING|ERROR", line) and not line.startswith("[IPKernelApp]")]
    assert build.returncode == 0, log[-5000:]
    assert not warnings, "\n".join(warnings)


def test_every_chapter_rendered(build):
    assert build.returncode == 0
    for f in toc_files():
        html = ROOT / "_build" / "html" / f"{f}.html"
        assert html.exists(), html
        text = html.read_text()
        assert "Traceback (most recent call last)" not in text, f
        nb = ROOT / f"{f}.ipynb"
        if nb.exists():
            figures = n_figures(nb)
            assert text.count("<img") >= figures, f"{f}: {figures} figures in the notebook, fewer in the HTML"
            assert f"{Path(f).name}.ipynb" in text, f"{f}: no notebook download link"
