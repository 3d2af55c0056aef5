"""The parameter profiles of ``python -m cgar_src.book.run`` (``cpu.yaml``, ``paper.yaml``), installed as the package
data ``cgar_src.book.profiles`` (pyproject.toml maps this folder there). This file makes the folder a regular package,
so that ``importlib.resources.files("cgar_src.book.profiles")`` finds it in an editable install too (setuptools'
editable finder maps a folder to a package only when it has an ``__init__.py``)."""
