"""The book's API reference: a Sphinx directive that documents every public module of a package, found at build time.

``.. cgar-automodules:: cgar_src.theory`` (inside an ``{eval-rst}`` block of ``api.md``) emits the package's docstring,
then one section per public module under it (recursively, in name order; a module whose name starts with ``_`` is
private and left out), each with ``automodule``: the module's docstring, then every public name it defines, in source
order, whether or not its ``__all__`` lists it; a module-level constant (an ``UPPER_CASE`` name assigned at the top
of the module) is listed with its value even without a ``#:`` doc-comment, since docstrings cite constants with
``:data:``. A plain module (``cgar_src.records``) gets the same without a section.
A module added to a package appears in the reference without any edit of the page, and adding one makes an
incremental build re-read the page (the package folders are recorded as its dependencies).

A package's re-exports (``from .model import load_model`` in ``cgar_src/lm/__init__.py``) are documented once, with
their module; their public names (``cgar_src.lm.load_model``) are registered as aliases of that entry, so that a
docstring may cite either name.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.autodoc import DataDocumenter, ModuleDocumenter
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import object_description

# every public name a module defines, in source order, whether or not its ``__all__`` lists it (docstrings cite such
# names); imported names stay with the module that defines them
MEMBER_OPTIONS = ("   :members:", "   :member-order: bysource", "   :ignore-module-all:")
CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")
VALUE_LIMIT = 300   # characters of a constant's value shown in the reference


def public_modules(package: str) -> list[str]:
    """The public modules below ``package`` (itself excluded), recursively and sorted by dotted name."""
    pkg = importlib.import_module(package)
    found = pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")
    return sorted(m.name for m in found if not any(part.startswith("_") for part in m.name.split(".")))


@functools.cache
def constants(module: str) -> frozenset[str]:
    """The ``UPPER_CASE`` names assigned at the top level of ``module``'s source (not those it imports)."""
    names = set()
    for node in ast.parse(inspect.getsource(importlib.import_module(module))).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name) and CONSTANT.fullmatch(t.id)}
    return frozenset(names)


def keep_constants(app: Sphinx, what: str, name: str, obj, skip: bool, options) -> bool | None:
    """``autodoc-skip-member``: keep a module's ``UPPER_CASE`` data even without a doc-comment (autodoc drops it);
    :class:`ConstantDocumenter` then documents it if the module defines it, and nothing does if it is imported."""
    if what == "module" and CONSTANT.fullmatch(name) and not (callable(obj) or inspect.ismodule(obj)):
        return False
    return None


class ConstantDocumenter(DataDocumenter):
    """A constant that its module defines without a ``#:`` doc-comment: its name and value (autodoc's own data
    documenter would skip it, or show the docstring of the value's type); a long value is not shown."""

    objtype = "cgarconstant"
    directivetype = "data"
    priority = DataDocumenter.priority + 1

    @classmethod
    def can_document_member(cls, member, membername: str, isattr: bool, parent) -> bool:
        return isinstance(parent, ModuleDocumenter) and not isattr and membername in constants(parent.modname)

    def get_doc(self) -> list[list[str]]:
        return [self.get_module_comment(self.objpath[-1]) or []]

    def should_suppress_value_header(self) -> bool:
        """A value longer than :data:`VALUE_LIMIT` characters (a table of checksums) is left to the source."""
        return super().should_suppress_value_header() or len(object_description(self.object)) > VALUE_LIMIT


def reexports(package) -> dict[str, str]:
    """``{public name: defining module}`` for the names a package's ``__init__`` imports from its own modules."""
    source = inspect.getsource(package)
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                found[alias.asname or alias.name] = f"{package.__name__}.{node.module}"
    return found


class AutoModules(SphinxDirective):
    """``.. cgar-automodules:: <package or module>``: autodoc for every public module of a package."""

    required_arguments = 1
    has_content = False

    def automodule(self, name: str, members: bool, parent: nodes.Element) -> None:
        lines = [f".. automodule:: {name}", *(MEMBER_OPTIONS if members else ())]
        self.state.nested_parse(StringList(lines, source=f"<cgar-automodules {name}>"), self.content_offset, parent)

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        module = importlib.import_module(name)
        container = nodes.container()
        if not hasattr(module, "__path__"):            # a plain module: docstring and members
            self.automodule(name, True, container)
            return container.children
        for folder in module.__path__:                 # a module added to the package re-reads this page
            self.env.note_dependency(str(Path(folder).resolve()))
            for sub in Path(folder).rglob("*"):
                if sub.is_dir() and not sub.name.startswith(("_", ".")):
                    self.env.note_dependency(str(sub.resolve()))
        self.automodule(name, False, container)        # the package's docstring; its re-exports stay with their module
        for sub in public_modules(name):
            section = nodes.section(ids=[nodes.make_id(f"api-{sub}")])
            section += nodes.title("", "", nodes.literal(text=sub))
            self.automodule(sub, True, section)
            container += section
        self.alias_reexports(module)
        return container.children

    def alias_reexports(self, package) -> None:
        """Register ``package.name`` as an alias of ``module.name`` for every documented re-export of the package."""
        py = self.env.get_domain("py")
        for name, module in reexports(package).items():
            target = py.objects.get(f"{module}.{name}")
            if target is not None:
                py.note_object(f"{package.__name__}.{name}", target.objtype, target.node_id, aliased=True,
                               location=self.get_location())


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.autodoc")
    app.add_directive("cgar-automodules", AutoModules)
    app.add_autodocumenter(ConstantDocumenter)
    app.connect("autodoc-skip-member", keep_constants)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
