"""The book builds with zero warnings, and every chapter's HTML exists with its figures and no traceback.

The checks of the built pages (internal links and anchors, numbered figure captions, no tracebacks) also run in the
Pages workflow on the published build: there ``CGAR_BOOK_HTML=_build/html`` points them at the HTML it has just
built (with ``-W -n``, from the stored outputs) instead of building again.
"""
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("CGAR_BOOK_HTML") or ROOT / "_build" / "html").resolve()


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
    if os.environ.get("CGAR_BOOK_HTML"):   # the workflow built the book itself (-W -n); check that HTML
        return SimpleNamespace(returncode=0, stdout="", stderr="")
    # The book as it is published: built -W -n from the stored outputs (execution off, .ci/published-config). That
    # the stored outputs are what the code produces is nbval's job (it executes every chapter in this same run), so
    # the suite does not execute every chapter twice; README step 1 builds with execution.
    config = subprocess.run([sys.executable, str(ROOT / ".ci" / "published-config")], capture_output=True, text=True,
                            check=True).stdout
    config_file = ROOT / "_build" / "published_config.yml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "-W", "-n", "--keep-going",
           "--config", str(config_file)]
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
        html = HTML / f"{f}.html"
        assert html.exists(), html
        text = html.read_text()
        assert "Traceback (most recent call last)" not in text, f
        nb = ROOT / f"{f}.ipynb"
        if nb.exists():
            figures = n_figures(nb)
            assert text.count("<img") >= figures, f"{f}: {figures} figures in the notebook, fewer in the HTML"
            assert f"{Path(f).name}.ipynb" in text, f"{f}: no notebook download link"


# --- the built HTML, parsed: links, anchors, figures, tracebacks -----------------------------------------------

class Page(HTMLParser):
    """Links (href/src), element ids, and output figures (images under _images/) with or without a numbered caption."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.figures: list[dict] = []         # every <figure>: its images, caption number and caption text
        self.loose_images: list[str] = []     # output images outside any <figure>
        self._stack: list[dict] = []
        self._in_number = 0
        self._in_caption = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])
        if tag == "figure":
            self._stack.append({"images": [], "number": "", "caption": "", "id": a.get("id", "")})
        elif tag == "img" and "_images/" in (a.get("src") or ""):
            (self._stack[-1]["images"] if self._stack else self.loose_images).append(a["src"])
        elif tag == "figcaption" and self._stack:
            self._in_caption += 1
        elif tag == "span" and "caption-number" in (a.get("class") or "").split() and self._stack:
            self._in_number += 1

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "figure" and self._stack:
            self.figures.append(self._stack.pop())
        elif tag == "figcaption" and self._in_caption:
            self._in_caption -= 1
        elif tag == "span" and self._in_number:
            self._in_number -= 1

    def handle_data(self, data):
        if self._stack and self._in_number:
            self._stack[-1]["number"] += data
        elif self._stack and self._in_caption:
            self._stack[-1]["caption"] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def html_pages() -> list[Path]:
    """The book's pages (not the theme's template fragments copied under _static/)."""
    return sorted(p for p in HTML.rglob("*.html") if "_static" not in p.relative_to(HTML).parts)


def chapter_pages() -> list[Path]:
    return [HTML / f"{f}.html" for f in toc_files() if f.startswith("chapters/")]


def test_internal_links_and_anchors_resolve(build):
    """Every relative href/src of every built page points at a file that exists, and #anchors at an element id."""
    assert build.returncode == 0
    pages = html_pages()
    assert pages, f"no HTML under {HTML}"
    ids: dict[Path, set[str]] = {}
    broken = []
    for page in pages:
        for link in parse(page).links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//") or not (parts.path or parts.fragment):
                continue                        # external (checked by the workflow's linkcheck), or a bare "#"
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(HTML)}: {link} (no file)")
                continue
            if parts.fragment and target.suffix == ".html" and target.is_relative_to(HTML):
                if target not in ids:
                    ids[target] = parse(target).ids
                if unquote(parts.fragment) not in ids[target]:
                    broken.append(f"{page.relative_to(HTML)}: {link} (no anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


def test_every_figure_has_a_numbered_caption(build):
    """Every output image of every chapter page sits in a <figure> whose caption carries a number ("Fig. N")."""
    assert build.returncode == 0
    bad = []
    for path in chapter_pages():
        page = parse(path)
        name = path.relative_to(HTML)
        bad += [f"{name}: image {src} outside a numbered figure" for src in page.loose_images]
        for fig in page.figures:
            if fig["images"] and not re.fullmatch(r"Fig\. \d+(\.\d+)*\s*", fig["number"]):
                bad.append(f"{name}: figure {fig['id'] or fig['images'][0]} has no number ({fig['number']!r})")
            elif fig["images"] and len(fig["caption"].strip()) < 20:
                bad.append(f"{name}: figure {fig['id']} has no real caption ({fig['caption'].strip()!r})")
    assert not bad, "\n".join(bad)


def test_chapters_have_launch_buttons(build):
    """Colab and Binder buttons (``launch_buttons`` in _config.yml) on every chapter page, opening its notebook."""
    assert build.returncode == 0
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    repo = url.removeprefix("https://github.com/").strip("/")
    for path in chapter_pages():
        nb = f"chapters/{path.stem}.ipynb"
        if not (ROOT / nb).exists():   # a Markdown page (the claims ledger) has no notebook to launch
            continue
        text = path.read_text(encoding="utf-8")
        assert f"https://colab.research.google.com/github/{repo}/blob/main/{nb}" in text, f"{path.name}: no Colab button"
        assert f"https://mybinder.org/v2/gh/{repo}/main?urlpath=tree/{nb}" in text, f"{path.name}: no Binder button"


def test_no_page_shows_a_traceback(build):
    assert build.returncode == 0
    shown = [str(p.relative_to(HTML)) for p in html_pages()
             if re.search(r"Traceback \(most recent call last\)|class=\"[^\"]*\btraceback\b", p.read_text(encoding="utf-8"))]
    assert not shown, f"pages showing a traceback: {shown}"


def figure_cells(nb: Path) -> list[dict]:
    """Code cells whose output shows an image on the page (glued figures are shown by {glue:figure} instead)."""
    cells = json.loads(nb.read_text())["cells"]
    hidden = {"remove-output", "remove-cell"}
    return [c for c in cells if c["cell_type"] == "code" and not hidden & set(c.get("metadata", {}).get("tags", []))
            and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


def numref(text: str, name: str) -> bool:
    """True when ``text`` references figure ``name`` with {numref}`name` or {numref}`... <name>`."""
    return re.search(r"\{numref\}`([^`]*<)?" + re.escape(name) + ">?`", text) is not None


@pytest.mark.parametrize("chapter", sorted((ROOT / "chapters").glob("*.ipynb")), ids=lambda p: p.stem)
def test_figure_cells_have_captions_and_hidden_code(chapter):
    """Reader's view, on the notebook itself: every cell that shows a figure has myst-nb figure metadata (a caption
    and a name ``fig-...`` that the text references with {numref}) and its code collapsed (``hide-input``); every
    {glue:figure} has a ``:name: fig-...`` that the text references."""
    cells = json.loads(chapter.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    bad = []
    for c in figure_cells(chapter):
        fig = c.get("metadata", {}).get("mystnb", {}).get("figure", {})
        head = "".join(c["source"]).splitlines()[0][:60] if c["source"] else ""
        if not fig.get("caption") or not str(fig.get("name", "")).startswith("fig-"):
            bad.append(f"no figure caption/name: {head}")
        elif not numref(text, fig["name"]):
            bad.append(f"figure {fig['name']} is never referenced with {{numref}}")
        if "hide-input" not in c.get("metadata", {}).get("tags", []):
            bad.append(f"code not collapsed (hide-input): {head}")
    for m in re.finditer(r"```\{glue:figure\}\s*(\S+)\n((?::[\w-]+:.*\n)*)", text):
        name = re.search(r"^:name:\s*(fig-[\w-]+)", m.group(2), flags=re.M)
        if not name:
            bad.append(f"{{glue:figure}} {m.group(1)} has no :name: fig-...")
        elif not numref(text, name.group(1)):
            bad.append(f"figure {name.group(1)} is never referenced with {{numref}}")
    assert not bad, f"{chapter.name}:\n" + "\n".join(bad)
