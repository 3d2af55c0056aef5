"""Analyses of language-model states (chapters 06-12): the logit lens as retrieval (``lens``), steering and
patches (``steering``), probes (``probes``), baselines (``baselines``), the theory's gate fitted to a model
(``gate_fit``) and the statistics every verdict uses (``stats``)."""
