"""Numbers in notebook text outputs compared with a stated tolerance; every other character compared exactly.

nbval compares a re-executed cell's outputs with the stored ones as exact strings. Several of the book's printed
numbers are statistics of float32 model states whose last bits depend on the machine, the thread count, the batch
composition and whether the states were computed in-process or read back from the state cache; a rounding boundary
between two runs then flips a printed last digit (0.99 vs 0.98) and an exact comparison fails on noise. This module
makes the comparison tolerant for *numbers only*:

* A text is split into number tokens and the text between them. The text between (words, verdicts such as
  "supported" / "not supported" or "real" / "not real", labels, punctuation, newlines) must be identical, except that
  a run of spaces or tabs matches any other run of spaces or tabs (column padding moves when a number gains a digit or
  a minus sign). The two texts must hold the same number of numbers.
* A number token is an optional sign, digits with an optional fraction, and an optional exponent, not glued to a
  letter, digit or underscore on either side: ``SmolLM2-135M``, ``float64``, ``0xADDRESS`` and ``sst2`` are text and
  compare exactly; ``c:15``, ``-0.020``, ``+0.011``, ``85.3%``, ``[+0.011, +0.091]``, ``9.25e-06``, ``10 of 13`` hold
  numbers. ``-0.00`` equals ``0.00`` and ``+0.011`` equals ``0.011`` (same value).
* Two numbers ``a``, ``b`` match when ``|a - b| <= max(atol, REL_TOL * max(|a|, |b|))``, computed exactly in
  decimal arithmetic, where ``atol`` depends on how they are written:

  - fixed-point decimals (``0.99``): ``atol = ABS_TOL``;
  - integers (``13``): ``atol = 0``: a count below ``1 / REL_TOL = 100`` must match exactly (``10 of 13`` vs
    ``11 of 13`` fails; layer indices, shot counts, dimensions below 100 never drift), while a count of several
    hundred may move by 1 % (``201 of 300`` vs ``203 of 300`` passes: a few borderline queries flipping);
  - scientific notation on either side (``9.25e-06``): ``atol = 0``: p-values, residuals and printed tolerance
    constants (``1e-12``) agree to 1 % of their magnitude.

The constants and why:

* ``ABS_TOL = 1e-2``: one unit in the second decimal, the precision at which the book prints and glues its fractions
  (accuracies, slopes, cosines, shares). Float noise moves such a number across a rounding boundary by exactly one
  unit in its last printed digit; one query of 100 flipping moves an accuracy by 0.01. A change of two units or more
  (``0.98`` vs ``1.00``, ``0.62`` vs ``0.72``) is not noise and fails.
* ``REL_TOL = 1e-2``: 1 % of the magnitude, for numbers at or above 1 (median ``N_eff`` 730.0, energies, odds ratios)
  and counts of several hundred, whose last printed digit is finer than the noise of the statistic.

Used by nbval through :func:`install` (called from the repository's root ``conftest.py``, which pytest loads for any
test path, ``pytest chapters/X.ipynb`` included), with the ``tests/sanitize.cfg`` sanitizers applied first, and by
``tests/test_reproducible.py`` to compare re-executions with each other. Only stream text (stdout, stderr),
``text/plain`` and glued values (``application/papermill.record/text/plain``, what myst-nb's ``glue`` stores) are
compared this way; other MIME types keep nbval's exact comparison (images are not compared at all).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

__all__ = ["ABS_TOL", "REL_TOL", "TOLERANT_MIME", "NumericText", "split_numbers", "numbers_match", "texts_match",
           "explain", "mark_numeric", "install", "notebook_texts", "compare_notebooks"]

ABS_TOL = Decimal("1e-2")   # fixed-point decimals: one unit in the second decimal
REL_TOL = Decimal("1e-2")   # every number: 1 % of the larger magnitude
TOLERANT_MIME = ("text/plain", "application/papermill.record/text/plain")

# sign, digits, optional fraction, optional exponent; not glued to a word character (or a '.') on either side
_NUMBER = re.compile(r"(?<![\w.])[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w])")
_BLANKS = re.compile(r"[ \t]+")


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """``(pieces, numbers)``: the text between the number tokens (``len(numbers) + 1`` pieces, runs of spaces and
    tabs collapsed to one space) and the number tokens as written."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    pieces, numbers, last = [], [], 0
    for m in _NUMBER.finditer(text):
        pieces.append(_BLANKS.sub(" ", text[last:m.start()]))
        numbers.append(m.group(0))
        last = m.end()
    pieces.append(_BLANKS.sub(" ", text[last:]))
    return pieces, numbers


def _kind(token: str) -> str:
    return "sci" if "e" in token.lower() else "fixed" if "." in token else "int"


def numbers_match(a: str, b: str, *, rel: Decimal = REL_TOL, abs_: Decimal = ABS_TOL) -> bool:
    """Whether two number tokens (as written) agree: ``|a - b| <= max(atol, rel * max(|a|, |b|))``, exactly, with
    ``atol = abs_`` when both are fixed-point or one is fixed-point and the other an integer, else 0 (integers,
    scientific notation); see the module docstring."""
    x, y = Decimal(a), Decimal(b)
    kinds = {_kind(a), _kind(b)}
    atol = abs_ if "fixed" in kinds and "sci" not in kinds else Decimal(0)
    return abs(x - y) <= max(atol, Decimal(rel) * max(abs(x), abs(y)))


def explain(ref: str, test: str) -> str | None:
    """Why ``test`` does not match ``ref`` (None when it does): the first differing text or number."""
    (rp, rn), (tp, tn) = split_numbers(ref), split_numbers(test)
    if len(rn) != len(tn):
        return f"{len(rn)} numbers in the reference, {len(tn)} in the new output"
    for i, (a, b) in enumerate(zip(rp, tp)):
        if a != b:
            return f"text differs before number {i + 1}: reference {a[-60:]!r}, new {b[-60:]!r}"
    for i, (a, b) in enumerate(zip(rn, tn)):
        if not numbers_match(a, b):
            return (f"number {i + 1}: reference {a}, new {b} (beyond max(abs {ABS_TOL}, rel {REL_TOL}) for "
                    f"fixed-point decimals; integers and scientific notation: rel only)")
    return None


def texts_match(ref: str, test: str) -> bool:
    """Whether two output texts agree: identical text between the numbers (up to the width of blank runs), the same
    count of numbers, each pair within tolerance (:func:`numbers_match`)."""
    return explain(ref, test) is None


class NumericText(str):
    """A str that compares equal (``==``, ``!=``) to another str when :func:`texts_match` holds."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and texts_match(str(self), str(other))

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


def mark_numeric(outputs: Iterable) -> list:
    """Copies of notebook outputs whose stream text and :data:`TOLERANT_MIME` values are :class:`NumericText`."""
    from nbformat import NotebookNode

    marked = []
    for out in outputs:
        out = NotebookNode(dict(out))
        if out.get("output_type") == "stream" and isinstance(out.get("text"), str):
            out["text"] = NumericText(out["text"])
        elif isinstance(out.get("data"), dict):
            out["data"] = NotebookNode({k: NumericText(v) if k in TOLERANT_MIME and isinstance(v, str) else v
                                        for k, v in out["data"].items()})
        marked.append(out)
    return marked


def install() -> None:
    """Make nbval (its ``IPyNbCell``) compare numbers in text outputs with tolerance. nbval compares every output
    value with ``!=`` after passing it through ``IPyNbCell.sanitize``: the outputs are marked as
    :class:`NumericText` before the comparison, the sanitizers keep the mark, and a failure report gains a line from
    :func:`explain`. Idempotent."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:   # the book's tooling is not installed: no notebook is compared, nothing to extend
        return
    if getattr(IPyNbCell, "_cgar_numeric_tolerance", False):
        return
    compare, sanitize, report = IPyNbCell.compare_outputs, IPyNbCell.sanitize, IPyNbCell.format_output_compare

    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, mark_numeric(test), mark_numeric(ref), skip_compare)

    def sanitize_marked(self, s):
        out = sanitize(self, s)
        return NumericText(out) if isinstance(s, NumericText) and isinstance(out, str) else out

    def format_output_compare(self, key, left, right):
        report(self, key, left, right)
        if isinstance(left, NumericText) and isinstance(right, str):
            self.comparison_traceback.append(f"  numeric tolerance: {explain(left, right)}")

    IPyNbCell.compare_outputs = compare_outputs
    IPyNbCell.sanitize = sanitize_marked
    IPyNbCell.format_output_compare = format_output_compare
    IPyNbCell._cgar_numeric_tolerance = True


def sanitize_patterns(cfg_text: str) -> list[tuple[str, str]]:
    """The (regex, replacement) pairs of a sanitize file such as ``tests/sanitize.cfg`` (nbval's own parser)."""
    from nbval.plugin import get_sanitize_patterns

    return get_sanitize_patterns(cfg_text)


def notebook_texts(nb, patterns: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """``(where, text)`` for every text output of an executed notebook (a ``nbformat`` node) that the tolerant
    comparison covers: stream text per code cell (streams of one name joined, as nbval does) and the
    :data:`TOLERANT_MIME` values of display data, after the sanitizers ``patterns``. ``where`` names the code cell
    (its index among code cells) and the stream or MIME type, glued values by their glue name."""
    rows = []
    for n, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        streams: dict[str, str] = {}
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                streams[out["name"]] = streams.get(out["name"], "") + out["text"]
            for mime in TOLERANT_MIME:
                if mime in out.get("data", {}):
                    name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                    rows.append((f"code cell {n} {mime}" + (f" (glue {name!r})" if name else ""), out["data"][mime]))
        rows += [(f"code cell {n} {name}", text) for name, text in streams.items()]
    out = []
    for where, text in rows:
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        out.append((where, text))
    return out


def compare_notebooks(ref, test, patterns: list[tuple[str, str]] = ()) -> list[str]:
    """Every difference between the text outputs of two executions of a notebook beyond the tolerance (empty when
    they agree): a missing or extra output, or :func:`explain`'s reason."""
    a, b = notebook_texts(ref, patterns), notebook_texts(test, patterns)
    problems = []
    if [w for w, _ in a] != [w for w, _ in b]:
        problems.append(f"different outputs: {[w for w, _ in a]} vs {[w for w, _ in b]}")
    for (where, x), (_, y) in zip(a, b):
        why = explain(x, y)
        if why:
            problems.append(f"{where}: {why}\n  reference: {x!r}\n  new:       {y!r}")
    return problems
