"""The theory of context-gated retrieval (chapters 01-05b). It imports neither transformers nor scikit-learn.

The core: ``memory`` (modern Hopfield network), ``gate`` (the context gate), ``dynamics`` (gated retrieval, the
self-consistent fixed point, separation), ``energy`` (the coupled system's energy), ``simulate`` (random banks and
the Figure 2 sweep), ``classic_memories`` (the related associative memories), ``plotting`` (Figure 1). The chapters'
experiments, one module per idea: ``capacity`` (01b), ``lipschitz`` (02), ``sweeps`` and ``gain`` (03: the measured
exponential gain and capacity against predictions made before the runs), ``phase`` and ``continuation`` (04: the
transition with feedback, continuation up and down in alpha), ``contraction`` and ``sharpness`` (05: the pitchfork
that makes Theorem 3.4 sharp, the census of fixed points), ``multistability`` (05, 05b), ``convexity`` and ``descent``
(05b), and ``sampling`` (random instances for 05, 05b)."""
