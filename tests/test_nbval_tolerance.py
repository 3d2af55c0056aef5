"""The tolerant comparison of notebook outputs (tests/nbval_tolerance.py): numbers within the stated tolerance,
every other character exactly; and its installation into nbval, whose own comparison code runs below."""
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import nbformat
import nbval_tolerance as tol
import pytest
from nbformat.v4 import new_output

nbval_plugin = pytest.importorskip("nbval.plugin")
IPyNbCell, nocolors = nbval_plugin.IPyNbCell, nbval_plugin.nocolors

SANITIZE = Path(__file__).with_name("sanitize.cfg")


@pytest.mark.parametrize("ref, new", [
    ("slope: 0.99 (first order predicts 1)", "slope: 0.98 (first order predicts 1)"),   # one unit, last digit
    ("0.99", "1.00"),
    ("-0.00", "0.00"),                                       # the sign of a rounded zero
    ("+0.011", "0.011"),
    ("label mass +0.796 [+0.775, +0.817]", "label mass +0.797 [+0.774, +0.818]"),
    ("[+0.011, +0.091]", "[+0.012, +0.090]"),
    ("McNemar p = 9.25e-06", "McNemar p = 9.26e-06"),        # scientific: 1 % relative
    ("median N_eff 730.0", "median N_eff 733.5"),            # >= 1: 1 % relative
    ("201 of 300 queries", "203 of 300 queries"),            # a count of hundreds: 1 %
    ("accuracy 85.3%", "accuracy 85.9%"),
    ("  0.00    1.00\n", " -0.00    0.99\n"),                # column padding moves with a minus sign
    ("True", "True"),
    ("no numbers here\n", "no numbers here\n"),
])
def test_noise_passes(ref, new):
    assert tol.texts_match(ref, new), tol.explain(ref, new)
    assert tol.explain(ref, new) is None
    assert tol.NumericText(ref) == new and not (tol.NumericText(ref) != new)


@pytest.mark.parametrize("ref, new, why", [
    ("slope 0.62", "slope 0.72", "number 1"),
    ("0.98", "1.00", "number 1"),                            # two units in the last digit
    ("cosine 0.99", "cosine 0.97", "number 1"),
    ("collapse real", "collapse not real", "text differs"),
    ("-> supported", "-> not supported", "text differs"),
    ("-> real", "-> partly", "text differs"),
    ("all slopes within [0.8, 1.2]: True", "all slopes within [0.8, 1.2]: False", "text differs"),
    ("retrieved memory ' Paris'", "retrieved memory ' London'", "text differs"),
    ("10 of 13 instances", "11 of 13 instances", "number 1"),  # small counts are exact
    ("layer 30", "layer 31", "number 1"),
    ("L = 30 blocks, d = 64", "L = 30 blocks, d = 65", "number 2"),
    ("to 1e-12: True", "to 1e-10: True", "number 1"),         # printed tolerance constants
    ("p = 3.2e-05", "p = 3.3e-05", "number 1"),
    ("p = 1e-4", "p = 0.0001", None),                         # same value, any notation
    ("accuracy 85%", "accuracy 87%", "number 1"),
    ("[+0.011, +0.091]", "[+0.011, +0.191]", "number 2"),
    ("[+0.011, +0.091]", "(+0.011, +0.091)", "text differs"),
    ("+0.011", "-0.011", "number 1"),
    ("model SmolLM2-135M", "model SmolLM2-136M", "text differs"),   # digits inside a name are text
    ("dtype float32", "dtype float64", "text differs"),
    ("sst2", "sst3", "text differs"),
    ("0.5", "0.5 0.5", "numbers in the reference"),
    ("a b", "ab", "text differs"),
    ("line\n", "line\n\n", "text differs"),
])
def test_real_changes_fail(ref, new, why):
    if why is None:
        assert tol.texts_match(ref, new)
        return
    assert not tol.texts_match(ref, new)
    assert not tol.NumericText(ref) == new and tol.NumericText(ref) != new
    assert why in tol.explain(ref, new)


def test_tolerance_constants_and_rules():
    assert tol.ABS_TOL == tol.REL_TOL == tol.Decimal("0.01")
    assert tol.numbers_match("0.01", "0.02") and not tol.numbers_match("0.01", "0.03")
    assert tol.numbers_match("99", "100") and not tol.numbers_match("98", "99")   # integers: rel only
    assert tol.numbers_match("1", "0.99")                                         # a fixed-point side: abs applies
    assert not tol.numbers_match("1e-3", "2e-3")                                  # scientific: rel only
    assert tol.split_numbers("c:15 ran 2 x3 at 0xADDRESS, -0.5%") == (
        ["c:", " ran ", " x3 at 0xADDRESS, ", "%"], ["15", "2", "-0.5"])
    with pytest.raises(ValueError, match="text"):
        tol.split_numbers(0.5)


class _Cell:
    """The parts of an nbval cell that its output comparison touches, with nbval's own (patched) methods."""

    compare_outputs = IPyNbCell.compare_outputs
    sanitize = IPyNbCell.sanitize
    format_output_compare = IPyNbCell.format_output_compare

    def __init__(self):
        skip = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")   # nbval's IPyNbFile defaults
        self.parent = SimpleNamespace(skip_compare=skip,
                                      sanitize_patterns=OrderedDict(tol.sanitize_patterns(SANITIZE.read_text())))
        self.colors, self.config = nocolors, None
        self.ihook = SimpleNamespace(pytest_assertrepr_compare=lambda **kw: [])


def _stream(text):
    return new_output("stream", name="stdout", text=text)


def _glue(name, value):
    return new_output("display_data", data={"application/papermill.record/text/plain": value},
                      metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})


def _figure(size):
    return new_output("display_data",
                      data={"image/png": "iVBORw0KGgo=", "text/plain": f"<Figure size {size} with 2 Axes>"})


def _cell_outputs(slopes="0.99 1.04", verdict="supported", glued="0.99", figure="1100x380"):
    """A chapter cell's outputs: printed slopes and a verdict, one glued value, a figure (None: no figure)."""
    outs = [_stream(f"slopes: {slopes}\nverdict: {verdict}\n"), _glue("fo_slope_min", glued)]
    return outs + ([_figure(figure)] if figure else [])


def test_installed_into_nbval_for_every_test_path():
    """The root conftest installs the comparison, so `pytest chapters/X.ipynb` (which does not load
    tests/conftest.py) compares with tolerance too."""
    assert getattr(IPyNbCell, "_cgar_numeric_tolerance", False)
    assert (Path(__file__).parents[1] / "conftest.py").read_text().count("install()") == 1
    before = IPyNbCell.compare_outputs
    tol.install()
    assert IPyNbCell.compare_outputs is before          # idempotent: not wrapped twice


def test_nbval_comparison_passes_noise_and_fails_real_changes():
    ref = _cell_outputs()
    assert _Cell().compare_outputs(_cell_outputs(slopes="0.98 1.04", glued="0.98"), ref)
    assert _Cell().compare_outputs(_cell_outputs(figure="900x380"), ref)   # sanitize.cfg still applies
    for changed in (_cell_outputs(slopes="0.72 1.04"), _cell_outputs(verdict="not supported"),
                    _cell_outputs(glued="0.62"), _cell_outputs(figure=None)):
        assert not _Cell().compare_outputs(changed, ref)
    # the report of a numeric mismatch says which number and why
    cell = _Cell()
    assert not cell.compare_outputs(_cell_outputs(slopes="0.72 1.04"), ref)
    assert any("numeric tolerance: number 1: reference 0.99, new 0.72" in line for line in cell.comparison_traceback)


def test_other_mime_types_stay_exact():
    ref = [new_output("display_data", data={"text/html": "<b>0.99</b>", "text/plain": "0.99"})]
    new = [new_output("display_data", data={"text/html": "<b>0.98</b>", "text/plain": "0.98"})]
    assert not _Cell().compare_outputs(new, ref)
    same_html = [new_output("display_data", data={"text/html": "<b>0.99</b>", "text/plain": "0.98"})]
    assert _Cell().compare_outputs(same_html, ref)


def test_stored_outputs_are_not_mutated():
    ref = [_stream("a 0.99\n")]
    _Cell().compare_outputs([_stream("a 0.98\n")], ref)
    assert type(ref[0].text) is str


def test_compare_notebooks():
    def nb(*outputs):
        cell = nbformat.v4.new_code_cell("x")
        cell.outputs = list(outputs)
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("m"), cell])

    patterns = tol.sanitize_patterns(SANITIZE.read_text())
    ref = nb(_stream("slope 0.99\n"), _stream("done\n"), _glue("s", "0.99"), _figure("1100x380"))
    assert tol.compare_notebooks(ref, nb(_stream("slope 0.98\ndone\n"), _glue("s", "0.98"), _figure("10x10")),
                                 patterns) == []
    problems = tol.compare_notebooks(ref, nb(_stream("slope 0.72\ndone\n"), _glue("s", "0.99"), _figure("1100x380")),
                                     patterns)
    assert len(problems) == 1 and "code cell 0 stdout: number 1" in problems[0]
    assert tol.compare_notebooks(ref, nb(_stream("slope 0.99\ndone\n"), _figure("1100x380")), patterns)
    assert "(glue 's')" in tol.notebook_texts(ref)[0][0]
