r"""The unembedding as a memory bank: the logit lens built from the model's own final norm and output embeddings.

Book: chapter 06 (attention and the first-order approximation). Memory i is row i of :math:`W_U`, and a residual state h is
decoded as :math:`\mathrm{logits} = W_U\,\mathrm{Norm}(h)`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import boolean

__all__ = ["Unembed", "final_norm"]


def final_norm(model: nn.Module) -> nn.Module:
    """The final norm, found generically: the last direct child of the base model that is a norm over the hidden
    size (a module with a 1-d weight of that size that is not an embedding): ``norm`` in Llama and Qwen2, ``ln_f`` in
    GPT-2."""
    hidden = model.config.hidden_size
    found = None
    for _, child in model.base_model.named_children():
        weight = getattr(child, "weight", None)
        if (isinstance(weight, torch.Tensor) and weight.ndim == 1 and weight.shape[0] == hidden
                and not isinstance(child, nn.Embedding)):
            found = child
    if found is None:
        raise ValueError(f"no final norm found among the children of {type(model.base_model).__name__}")
    return found


class Unembed(nn.Module):
    """Logit lens (tuned-lens style): ``logits = W_U Norm_final(h)`` from the model's own final norm and output
    embeddings, for residual-stream states of any layer.

    ``float32=True`` reads the lens in float32 for a bfloat16/float16 model: a float32 copy of the final norm and of
    :math:`W_U` (2.1 GB for Llama-3-8B's 128256 x 4096), so that analyses whose checks are calibrated in float32
    (chapter ``06_attention_first_order``) see float32 arithmetic on the model's states. For a float32 model it
    changes nothing (the model's own modules are used, no copy). Where the copy cannot be had, use
    :func:`~cgar_src.lm.model.tolerance` with :attr:`dtype`."""

    def __init__(self, model: nn.Module, *, float32: bool = False):
        super().__init__()
        boolean(float32, "float32")
        norm = final_norm(model)
        out = model.get_output_embeddings()
        if out is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
        if float32 and out.weight.dtype in (torch.float16, torch.bfloat16):
            norm = copy.deepcopy(norm).float()           # a few thousand parameters
            w = out.weight.detach().float()              # converted straight from the low-precision weight
            bias = getattr(out, "bias", None)
            copy32 = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
            copy32.weight = nn.Parameter(w, requires_grad=False)
            if bias is not None:
                copy32.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
            out = copy32
        self.final_norm = norm
        self.unembedding = out
        self.vocab_size = out.weight.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the lens computes in (float32 when built with ``float32=True`` or for a float32 model)."""
        return self.weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        """:math:`W_U`, shape ``(vocab, d)``: row i is memory i."""
        return self.unembedding.weight

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        p = self.weight
        return self.final_norm(h.to(device=p.device, dtype=p.dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of residual states ``h`` (..., d), in float32 (float64 for a float64 copy)."""
        logits = self.unembedding(self.normalize(h))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

