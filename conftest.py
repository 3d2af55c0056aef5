"""Root conftest, loaded by pytest for any test path under the repository (``pytest chapters/X.ipynb`` included,
which does not load ``tests/conftest.py``): nbval compares the numbers in text outputs with the tolerance of
``tests/nbval_tolerance.py`` (the rules and constants are stated there); all other text must match exactly."""
import importlib.util
import sys
from pathlib import Path

_MODULE = Path(__file__).resolve().parent / "tests" / "nbval_tolerance.py"
if "nbval_tolerance" not in sys.modules:   # the same module object the tests import as ``nbval_tolerance``
    _spec = importlib.util.spec_from_file_location("nbval_tolerance", _MODULE)
    sys.modules["nbval_tolerance"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["nbval_tolerance"])
sys.modules["nbval_tolerance"].install()
