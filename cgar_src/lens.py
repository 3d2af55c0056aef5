r"""Analyses on cached states, no new forward passes: streaming vocabulary decode, context vectors, and the
additive (first-order) retrieval :math:`p(\lambda) = \mathrm{softmax}(W_U\,\mathrm{Norm}(h_{zero}^{(l')} + \lambda\bar c^{(l)}))`.

The decode streams over the vocabulary in chunks with a running log-sum-exp, so it never materialises
prompts x layers x vocabulary; it returns per state the argmax token, :math:`N_{eff} = \exp(H(p))`, the probability
mass on the label tokens and the label logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validate import _scalar
from .lm import Unembed

__all__ = ["DecodeStats", "decode_stats", "context_vector", "CONTEXT_VARIANTS", "additive_retrieval"]

CONTEXT_VARIANTS = ("difference", "icl_mean", "random_label")


@dataclass
class DecodeStats:
    """Per-state results of decoding through the unembedding (leading shape = the states' leading shape)."""

    argmax: torch.Tensor
    n_eff: torch.Tensor
    label_mass: torch.Tensor
    label_logits: torch.Tensor

    def correct(self, label_token_ids: list[int], labels: torch.Tensor) -> torch.Tensor:
        """Per state, 1.0 where the argmax over the full vocabulary is the correct label's token (first axis =
        prompts, matched with ``labels``)."""
        ids = torch.as_tensor(label_token_ids)
        return (self.argmax == ids[labels].view(-1, *([1] * (self.argmax.ndim - 1)))).double()

    def accuracy(self, label_token_ids: list[int], labels: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary accuracy: :meth:`correct` averaged over the prompts."""
        return self.correct(label_token_ids, labels).mean(0)


@torch.no_grad()
def decode_stats(unembed: Unembed, states: torch.Tensor, label_token_ids: list[int], *,
                 vocab_chunk: int = 8192, state_batch: int = 256) -> DecodeStats:
    """Decode residual states ``(..., d)`` through ``W_U Norm_final``, streaming over vocabulary chunks."""
    if states.ndim < 1 or states.shape[-1] != unembed.weight.shape[1]:
        raise ValueError(f"states must end in the hidden size {unembed.weight.shape[1]}, got {tuple(states.shape)}")
    lead = states.shape[:-1]
    flat = states.reshape(-1, states.shape[-1])
    W = unembed.weight
    labels = torch.as_tensor(label_token_ids, device=W.device)
    outs = {k: [] for k in ("argmax", "n_eff", "label_mass", "label_logits")}
    for s in range(0, flat.shape[0], state_batch):
        h = unembed.normalize(flat[s:s + state_batch])
        m = torch.full((h.shape[0],), -math.inf, device=W.device)
        z_sum = torch.zeros(h.shape[0], device=W.device)      # sum exp(z - m)
        zz_sum = torch.zeros(h.shape[0], device=W.device)     # sum z exp(z - m)
        best_val = torch.full((h.shape[0],), -math.inf, device=W.device)
        best_idx = torch.zeros(h.shape[0], dtype=torch.long, device=W.device)
        for v in range(0, W.shape[0], vocab_chunk):
            z = (h @ W[v:v + vocab_chunk].T).float()
            cmax, carg = z.max(-1)
            better = cmax > best_val
            best_val, best_idx = torch.where(better, cmax, best_val), torch.where(better, carg + v, best_idx)
            m_new = torch.maximum(m, cmax)
            scale = torch.exp(m - m_new)
            e = torch.exp(z - m_new[:, None])
            z_sum = z_sum * scale + e.sum(-1)
            zz_sum = zz_sum * scale + (e * z).sum(-1)
            m = m_new
        lse = m + torch.log(z_sum)
        entropy = lse - zz_sum / z_sum
        lab = (h @ W[labels].T).float()
        outs["argmax"].append(best_idx.cpu())
        outs["n_eff"].append(torch.exp(entropy).cpu())
        outs["label_mass"].append(torch.exp(lab - lse[:, None]).sum(-1).cpu())
        outs["label_logits"].append(lab.cpu())
    cat = {k: torch.cat(v) for k, v in outs.items()}
    return DecodeStats(argmax=cat["argmax"].reshape(lead), n_eff=cat["n_eff"].reshape(lead),
                       label_mass=cat["label_mass"].reshape(lead),
                       label_logits=cat["label_logits"].reshape(*lead, len(label_token_ids)))


def context_vector(h_icl: torch.Tensor, h_zero: torch.Tensor | None = None, variant: str = "difference") -> torch.Tensor:
    r"""Averaged context vector :math:`\bar c^{(l)}` per layer from states ``(P, L+1, d)``; returns ``(L+1, d)``.

    * ``difference``: :math:`\mathrm{mean}_P(h_{ICL} - h_{zero})` (the book's default: what the demonstrations add);
    * ``icl_mean``: :math:`\mathrm{mean}_P\,h_{ICL}`;
    * ``random_label``: the difference computed from ICL prompts whose demonstrations carry random labels (pass those
      states as ``h_icl``): a control.
    """
    if variant not in CONTEXT_VARIANTS:
        raise ValueError(f"variant must be one of {CONTEXT_VARIANTS}, got {variant!r}")
    if variant == "icl_mean":
        return h_icl.mean(0)
    if h_zero is None or h_zero.shape != h_icl.shape:
        raise ValueError(f"variant {variant!r} needs h_zero with the shape of h_icl {tuple(h_icl.shape)}")
    return (h_icl - h_zero).mean(0)


def additive_retrieval(unembed: Unembed, h_zero: torch.Tensor, c_bar: torch.Tensor, label_token_ids: list[int], *,
                       lambdas: list[float], context_layers: list[int], query_layers: list[int],
                       **decode_kwargs) -> DecodeStats:
    r"""First-order retrieval over a grid: for every query layer l', context layer l and coupling lambda, decode
    :math:`h_{zero}^{(l')} + \lambda\bar c^{(l)}` for every prompt. ``h_zero`` is ``(P, L+1, d)``, ``c_bar`` is
    ``(L+1, d)``. Result fields have shape ``(P, len(query_layers), len(context_layers), len(lambdas))``."""
    n_layers = h_zero.shape[1]
    for name, layers in (("context_layers", context_layers), ("query_layers", query_layers)):
        bad = [l for l in layers if not (isinstance(l, int) and 0 <= l < n_layers)]
        if bad or not layers:
            raise ValueError(f"{name} must be non-empty layer indices in [0, {n_layers - 1}], got {layers}")
    lam = torch.tensor([_scalar(x, "lambdas") for x in lambdas], dtype=h_zero.dtype)
    if lam.numel() == 0:
        raise ValueError("lambdas must be a non-empty list of finite numbers")
    c = lam[None, :, None] * c_bar[context_layers][:, None, :]          # (C, K, d)
    parts = [decode_stats(unembed, h_zero[:, l, None, None, :] + c[None], label_token_ids, **decode_kwargs)
             for l in query_layers]                                      # one query layer at a time: (P, C, K, d)
    return DecodeStats(**{f: torch.stack([getattr(p, f) for p in parts], dim=1)
                          for f in ("argmax", "n_eff", "label_mass", "label_logits")})
