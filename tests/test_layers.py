"""The package's layering, checked on the source of every module of cgar_src (parsed with ``ast``, never imported):

(a) imports flow only downward: book -> analysis and tasks -> lm and theory -> records and _validate. A module may
    import its own subpackage and any lower layer; analysis and tasks never import each other, nor do lm and
    theory; records, _validate and the root package import nothing from cgar_src;
(b) ``cgar_src.theory`` (and what it may import) imports neither transformers nor scikit-learn, checked in the
    source and, in a fresh interpreter, in ``sys.modules`` after importing every theory module;
(c) no module imports a private name (leading underscore) of another cgar_src module, nor reaches one as an
    attribute of an imported module; the module ``_validate`` itself is public to the package.

The checker is unit-tested on small synthetic sources, so a broken rule cannot pass silently.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import cgar_src

ROOT = "cgar_src"
PACKAGE_DIR = Path(cgar_src.__file__).resolve().parent
# rank of every part of the package: a module may import only parts of lower rank (or its own part)
RANK = {"records": 0, "_validate": 0, "threads": 0, "theory": 1, "lm": 1, "tasks": 2, "analysis": 2, "book": 3}
LEAVES = ("records", "_validate", "threads")                  # import nothing from cgar_src
THEORY_BANNED = ("transformers", "sklearn")        # third-party packages theory must not need


@dataclass(frozen=True)
class Module:
    name: str          # dotted, e.g. "cgar_src.theory.gate"
    source: str
    is_package: bool   # an __init__.py


def discover(package_dir: Path = PACKAGE_DIR) -> dict[str, Module]:
    """Every module of the package on disk, by dotted name."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        out[name] = Module(name, path.read_text(encoding="utf-8"), is_package)
    return out


def part_of(name: str) -> str | None:
    """The layer part of a cgar_src module ("theory", "records", ...); None for the root package."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@dataclass(frozen=True)
class Edge:
    """One import of ``target`` (a cgar_src module, or a third-party top-level package) by a module."""

    line: int
    target: str
    private: str | None = None   # a private name imported from or reached through the target


def edges(module: Module, known: set[str]) -> list[Edge]:
    """All imports of a module (at any depth: function-level imports count) and its uses of private attributes of
    imported cgar_src modules."""
    tree = ast.parse(module.source, filename=module.name)
    out: list[Edge] = []
    aliases: dict[str, str] = {}      # local name -> cgar_src module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append(Edge(node.lineno, a.name))
                if a.name.split(".")[0] == ROOT:
                    if a.asname:
                        aliases[a.asname] = a.name
                    last = a.name.split(".")[-1]
                    if _is_private(last) and last != "_validate":
                        out.append(Edge(node.lineno, a.name, private=last))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:          # a submodule: the edge goes to it
                    out.append(Edge(node.lineno, sub))
                    aliases[a.asname or a.name] = sub
                    if _is_private(a.name) and a.name != "_validate":
                        out.append(Edge(node.lineno, sub, private=a.name))
                else:                      # a name defined in base
                    out.append(Edge(node.lineno, base, private=a.name if _is_private(a.name) else None))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _is_private(node.attr) and f"{aliases[node.value.id]}.{node.attr}" not in known):
            out.append(Edge(node.lineno, aliases[node.value.id], private=node.attr))
    return out


def violations(modules: dict[str, Module]) -> list[str]:
    """Every breach of rules (a)-(c) in ``modules``, one line each (empty when the package is layered)."""
    known = set(modules)
    found = []
    for m in modules.values():
        own = part_of(m.name)
        for e in edges(m, known):
            where = f"{m.name}:{e.line}"
            top = e.target.split(".")[0]
            if top != ROOT:
                if (own == "theory" or own in LEAVES or own is None) and top in THEORY_BANNED:
                    found.append(f"{where} imports {e.target}: theory and what it may import must not need {top}")
                continue
            target = part_of(e.target)
            if e.private is not None and e.target != m.name:
                found.append(f"{where} imports the private name {e.private} of {e.target}")
            if e.target == m.name or target is None and e.target == ROOT and e.private is None and own is not None:
                continue   # itself, or the root package's own (import-free) namespace
            if own is None or own in LEAVES:
                found.append(f"{where} imports {e.target}: {own or 'the root package'} imports nothing from cgar_src")
            elif target is None or target not in RANK:
                found.append(f"{where} imports {e.target}, which belongs to no layer")
            elif target != own and RANK[target] >= RANK[own]:
                found.append(f"{where} imports {e.target}: {own} may not import {target} (imports flow downward)")
    return found


# --- the checker on synthetic sources ----------------------------------------------------------------------------

def tree(**sources: str) -> dict[str, Module]:
    """Modules from keyword sources: ``theory__gate="..."`` is cgar_src.theory.gate; ``theory="..."`` the
    subpackage's __init__ (every subpackage named gets an empty __init__)."""
    out = {ROOT: Module(ROOT, "", True)}
    for key, src in sources.items():
        parts = key.split("__")
        name = ".".join([ROOT] + parts)
        is_package = len(parts) == 1 and parts[0] not in LEAVES
        out[name] = Module(name, src, is_package)
        if len(parts) == 2:
            out.setdefault(f"{ROOT}.{parts[0]}", Module(f"{ROOT}.{parts[0]}", "", True))
    return out


GOOD = dict(
    records="import json\n",
    _validate="import torch\n",
    theory__gate="from .._validate import as_tensor\n",
    theory__dynamics="from .gate import gate\nfrom . import gate as g\nfrom .. import _validate\n",
    lm__model="from .._validate import positive_int\nfrom ..records import save_run\n",
    tasks__icl="from ..lm import LoadedModel\nfrom .. import records\n",
    analysis__lens="from ..theory import dynamics\nfrom ..lm.model import LoadedModel\n"
                   "def f():\n    from sklearn.linear_model import LogisticRegression\n"
                   "    return dynamics.fixed_point\n",
    book__run="from ..analysis import lens\nfrom ..tasks.icl import task_states\n"
              "from cgar_src.theory.gate import gate\n",
)


def test_checker_passes_a_layered_tree():
    assert violations(tree(**GOOD)) == []


@pytest.mark.parametrize("module, source, needle", [
    ("theory__gate", "from ..analysis import lens\n", "theory may not import analysis"),
    ("theory__gate", "def f():\n    from ..lm import model\n", "theory may not import lm"),
    ("lm__model", "from ..theory.gate import gate\n", "lm may not import theory"),
    ("lm__model", "import cgar_src.tasks.icl\n", "lm may not import tasks"),
    ("analysis__lens", "from ..tasks import icl\n", "analysis may not import tasks"),
    ("analysis__lens", "from ..book.run import main\n", "analysis may not import book"),
    ("tasks__icl", "from ..analysis.lens import decode\n", "tasks may not import analysis"),
    ("tasks__icl", "from cgar_src.book import run\n", "tasks may not import book"),
    ("records", "from ._validate import positive\n", "records imports nothing"),
    ("_validate", "from .records import save_run\n", "_validate imports nothing"),
    ("theory__gate", "import sklearn.linear_model\n", "must not need sklearn"),
    ("theory__gate", "def f():\n    from transformers import AutoModel\n", "must not need transformers"),
    ("_validate", "import transformers\n", "must not need transformers"),
    ("theory__dynamics", "from .gate import _kernel\n", "private name _kernel of cgar_src.theory.gate"),
    ("theory__dynamics", "from .._validate import _check\n", "private name _check of cgar_src._validate"),
    ("theory__dynamics", "from . import gate\nx = gate._kernel\n", "private name _kernel of cgar_src.theory.gate"),
    ("analysis__lens", "import cgar_src.theory.gate as tg\ny = tg._kernel(1)\n", "private name _kernel"),
])
def test_checker_flags_a_bad_import(module, source, needle):
    found = violations(tree(**(GOOD | {module: source})))
    assert len(found) == 1 and needle in found[0], found


def test_checker_allows_dunders_own_privates_and_the_validate_module():
    ok = GOOD | {"theory__dynamics": "from . import gate\nfrom .. import _validate\n"
                                     "def _own():\n    return _validate.as_tensor, gate.__name__\n_own()\n"}
    assert violations(tree(**ok)) == []


# --- the package itself ------------------------------------------------------------------------------------------

def test_the_package_is_found_and_every_module_parses():
    modules = discover()
    assert {f"{ROOT}.{p}" for p in RANK} <= set(modules)
    assert {f"{ROOT}.theory.dynamics", f"{ROOT}.analysis.gate_fit", f"{ROOT}.lm.model"} <= set(modules)
    for m in modules.values():
        edges(m, set(modules))


def test_imports_flow_downward_and_no_private_name_crosses_a_module():
    assert violations(discover()) == []


def test_theory_imports_neither_transformers_nor_sklearn_at_run_time():
    """A fresh interpreter imports every theory module; transformers and scikit-learn must not be loaded."""
    theory = sorted(n for n in discover() if n.startswith(f"{ROOT}.theory."))
    assert len(theory) >= 6
    code = ("import importlib, json, sys\n"
            f"for name in {theory!r}:\n    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {THEORY_BANNED!r})))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE_DIR.parent)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    assert "cgar_src.theory.dynamics" in theory
