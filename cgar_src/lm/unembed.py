r"""The unembedding as a memory bank: the logit lens built from the model's own final norm and output embeddings.

Book: chapter 06 (attention and the first-order approximation). Memory i is row i of :math:`W_U`, and a residual state h is
decoded as :math:`\mathrm{logits} = W_U\,\mathrm{Norm}(h)`, followed by the model's final soft-capping
:math:`c\tanh(\cdot/c)` where its config sets ``final_logit_softcapping`` = c (Gemma-2).

The lens applies the model's own final norm module to each state it decodes, so every layer's state is normalised by
its own root mean square (a fresh norm per state, never a scale reused from the last layer), in the norm's own
arithmetic: Llama's RMSNorm scales by :math:`w`, Gemma's (``Gemma3RMSNorm``) by :math:`1 + w` computed in float32.
Gemma's embedding scale :math:`\sqrt{d}` is applied inside its embedding module, so entry 0 of the hidden states
(``states.hidden_states``) already includes it, and :math:`W_U` (tied to the unscaled embedding matrix) is the
output head's own weight: nothing in the lens rescales either.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import boolean

__all__ = ["Unembed", "final_norm", "final_softcap"]


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


def final_softcap(model: nn.Module) -> float | None:
    """The model's final logit soft-capping c (``config.final_logit_softcapping``, read from the text config of a
    multimodal one), or None when it has none (Llama, Qwen2, GPT-2, Gemma-3; Gemma-2 has c = 30)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    if cap is None:
        return None
    if not (isinstance(cap, (int, float)) and cap > 0):
        raise ValueError(f"config.final_logit_softcapping must be a number > 0 or None, got {cap!r}")
    return float(cap)


class Unembed(nn.Module):
    r"""Logit lens (tuned-lens style): ``logits = W_U Norm_final(h)`` from the model's own final norm and output
    embeddings, for residual-stream states of any layer, then :math:`c\tanh(\mathrm{logits}/c)` when the model
    soft-caps its logits (``softcap``; module docstring). At the last entry (the final norm's input) it
    reproduces the model's own logits.

    ``float32=True`` reads the lens in float32 for a bfloat16/float16 model: a float32 copy of the final norm and of
    :math:`W_U` (2.1 GB for Llama-3-8B's 128256 x 4096), so that analyses whose checks are calibrated in float32
    (chapter ``06_attention_first_order``) see float32 arithmetic on the model's states. For a float32 model it
    changes nothing (the model's own modules are used, no copy). Where the copy cannot be had, use
    :func:`~cgar_src.lm.model.tolerance` with :attr:`dtype`.

    Analyses that read :attr:`weight` and :meth:`normalize` directly (streaming decodes) compute
    :math:`W_U\,\mathrm{Norm}(h)` without the soft-cap; they should pass their logits through :meth:`cap`, which
    is the identity when ``softcap`` is None. The cap is monotone, so rankings and argmax do not depend on it."""

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
        self.softcap: float | None = final_softcap(model)   #: the final soft-cap c, or None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the lens computes in (float32 when built with ``float32=True`` or for a float32 model)."""
        return self.weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        """:math:`W_U`, shape ``(vocab, d)``: row i is memory i."""
        return self.unembedding.weight

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """The model's final norm applied to each state ``h`` (..., d) on its own (its own RMS)."""
        p = self.weight
        return self.final_norm(h.to(device=p.device, dtype=p.dtype))

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        r"""The model's final soft-capping :math:`c\tanh(\mathrm{logits}/c)`, or ``logits`` unchanged without one."""
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of residual states ``h`` (..., d), in float32 (float64 for a float64 copy)."""
        logits = self.cap(self.unembedding(self.normalize(h)))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))
