r"""Language models as memory banks: loading (``model``: hub ids, local folders and the offline GGUF models,
SmolLM2-135M-Instruct by default and Gemma 3 270M), the unembedding or logit lens (``unembed``), hidden
states with patches (``states``), one prefix's keys and values shared by many queries (``prefix``) and the on-disk
state cache (``cache``).

The vocabulary is the memory bank: memory i is row i of the unembedding :math:`W_U`, and a hidden state h is decoded
as :math:`p = \mathrm{softmax}(W_U\,\mathrm{Norm}(h))`. The names below are the engine's public interface;
transformers is imported only when a model is loaded.
"""
from .model import (
                    DEFAULT_MODEL,
                    GGUF_MODELS,
                    MAX_BATCH_TOKENS,
                    GGUFModel,
                    LoadedModel,
                    default_model_dir,
                    gguf_model_dir,
                    load_model,
                    resolved_revision,
                    tolerance,
                    user_cache_dir,
)
from .states import (
                    PATCH_MODES,
                    Patch,
                    batch_budget,
                    check_context_window,
                    context_window,
                    hidden_states,
                    length_batches,
                    token_batches,
)
from .unembed import Unembed, final_norm, final_softcap

__all__ = ["DEFAULT_MODEL", "GGUF_MODELS", "GGUFModel", "MAX_BATCH_TOKENS", "LoadedModel", "default_model_dir",
           "gguf_model_dir", "load_model", "resolved_revision", "tolerance", "user_cache_dir", "PATCH_MODES", "Patch",
           "batch_budget", "check_context_window", "context_window", "hidden_states", "length_batches",
           "token_batches", "Unembed", "final_norm", "final_softcap"]
