"""cgar_src: the code behind the executable book on context-gated associative retrieval.

Modules are named after the paper's concepts: ``memory`` (modern Hopfield network), ``gate`` (the context gate),
``dynamics`` (gated retrieval and the self-consistent fixed point), ``simulate`` (random instances and the
Figure 2 sweep); the transformer side: ``lm`` (models, unembedding, hidden states), ``data`` (datasets and
prompts), ``cache`` (on-disk state cache), ``lens`` (decoding and additive retrieval). The language-model modules
import transformers lazily: ``import cgar_src.lm``.
"""
from . import dynamics, gate, memory

__all__ = ["memory", "gate", "dynamics"]
__version__ = "0.1.0"
