"""cgar_src: the code behind the executable book on context-gated associative retrieval.

The package is layered; imports flow only downward (a test checks it):

- ``book``: the chapters' parameter validation (``params``) and the profiles (``run``, ``python -m cgar_src.book.run``).
- ``analysis`` and ``tasks``: what the transformer chapters compute (``lens``, ``steering``, ``probes``,
  ``baselines``, ``gate_fit``, ``stats``, and one module per chapter's experiment: ``collapse``, ``coupled``,
  ``factual``, ``separability``, ``onset``, ``referee``, ``crossfit``, ``gate_report``) and the data they compute it
  on (``data``, ``datafiles``, ``icl``, ``templates``, ``demos``).
- ``lm`` and ``theory``: the language-model engine (``model``, ``unembed``, ``states``, ``prefix``, ``cache``) and
  the theory of context-gated retrieval (see ``cgar_src.theory``). ``theory`` needs neither transformers nor
  scikit-learn.
- ``records`` and ``_validate``: JSON records of runs, and input checks shared by every layer.
"""
__version__ = "0.1.0"
