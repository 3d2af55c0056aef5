"""The theory of context-gated retrieval (chapters 01-05b): a modern Hopfield memory, the context gate, gated
retrieval and its fixed point, the coupled energy, simulations and the related memories. It imports neither
transformers nor scikit-learn."""
