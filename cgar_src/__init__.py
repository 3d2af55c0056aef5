"""cgar_src: the code behind the executable book on context-gated associative retrieval.

Modules are named after the paper's concepts: ``memory`` (modern Hopfield network), ``gate`` (the context gate),
``dynamics`` (gated retrieval and the self-consistent fixed point).
"""
from . import dynamics, gate, memory

__all__ = ["memory", "gate", "dynamics"]
__version__ = "0.1.0"
