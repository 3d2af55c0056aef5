"""cgar_src: the code behind the executable book on context-gated associative retrieval.

The package is layered; imports flow only downward (a test checks it):

- ``book``: the chapters' parameter validation (``params``) and the profiles (``run``, ``python -m cgar_src.book.run``).
- ``analysis`` and ``tasks``: what the transformer chapters compute (``lens``, ``steering``, ``probes``,
  ``baselines``, ``gate_fit``, ``stats``) and the data they compute it on (``data``, ``datafiles``, ``icl``).
- ``lm`` and ``theory``: the language-model engine (``model``, ``unembed``, ``states``, ``cache``) and the theory of
  context-gated retrieval (``memory``, ``gate``, ``dynamics``, ``energy``, ``simulate``, ``classic_memories``,
  ``plotting``). ``theory`` needs neither transformers nor scikit-learn.
- ``records`` and ``_validate``: JSON records of runs, and input checks shared by every layer.
"""
__version__ = "0.1.0"
