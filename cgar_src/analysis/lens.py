r"""Analyses on cached states, no new forward passes: streaming vocabulary decode, context vectors, and the
additive (first-order) retrieval :math:`p(\lambda) = \mathrm{softmax}(W_U\,\mathrm{Norm}(h_{zero}^{(l')} + \lambda\bar c^{(l)}))`.

The decode streams over the vocabulary in chunks with a running log-sum-exp, so it never materialises
prompts x layers x vocabulary; it returns per state the argmax token, :math:`N_{eff} = \exp(H(p))`, the probability
mass on the label tokens and the label logits.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._validate import indices, scalar
from ..lm import Unembed

__all__ = ["DecodeStats", "decode_stats", "context_vector", "CONTEXT_VARIANTS", "additive_retrieval", "rms_form", "logit_bias",
           "retrieved_pattern", "readout_basis", "readout_rows", "span_fraction", "norm_matched_random", "leave_one_out_mean", "FirstOrderCheck", "first_order_check"]

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


class _Chunk(NamedTuple):
    start: int            # first token id of the chunk
    z: torch.Tensor       # logits of the chunk
    e: torch.Tensor       # exp(z - m)
    scale: torch.Tensor   # exp(previous m - m): rescales sums accumulated over earlier chunks
    m: torch.Tensor       # running maximum over the chunks so far
    cmax: torch.Tensor    # the chunk's maximum and its position in the chunk
    carg: torch.Tensor


def _vocab_stream(unembed: Unembed, h: torch.Tensor, vocab_chunk: int):
    """Online softmax over the vocabulary in chunks (shared by :func:`decode_stats` and :func:`retrieved_pattern`):
    the logits of normalised states ``h`` are those of the lens, :math:`W_U h` then the model's soft-cap
    (:meth:`~cgar_src.lm.unembed.Unembed.cap`, the identity for a model without one)."""
    W = unembed.weight
    m = torch.full((h.shape[0],), -math.inf, device=W.device)
    for v in range(0, W.shape[0], vocab_chunk):
        z = unembed.cap((h @ W[v:v + vocab_chunk].T).float())
        cmax, carg = z.max(-1)
        m_new = torch.maximum(m, cmax)
        yield _Chunk(v, z, torch.exp(z - m_new[:, None]), torch.exp(m - m_new), m_new, cmax, carg)
        m = m_new


@torch.no_grad()
def decode_stats(unembed: Unembed, states: torch.Tensor, label_token_ids: list[int], *,
                 vocab_chunk: int = 8192, state_batch: int = 256) -> DecodeStats:
    """Decode residual states ``(..., d)`` through ``W_U Norm_final`` (then the model's final soft-cap, where it has
    one: the logits of :class:`~cgar_src.lm.unembed.Unembed`), streaming over vocabulary chunks."""
    if states.ndim < 1 or states.shape[-1] != unembed.weight.shape[1]:
        raise ValueError(f"states must end in the hidden size {unembed.weight.shape[1]}, got {tuple(states.shape)}")
    lead = states.shape[:-1]
    flat = states.reshape(-1, states.shape[-1])
    W = unembed.weight
    labels = torch.as_tensor(label_token_ids, device=W.device)
    outs = {k: [] for k in ("argmax", "n_eff", "label_mass", "label_logits")}
    for s in range(0, flat.shape[0], state_batch):
        h = unembed.normalize(flat[s:s + state_batch])
        z_sum = torch.zeros(h.shape[0], device=W.device)      # sum exp(z - m)
        zz_sum = torch.zeros(h.shape[0], device=W.device)     # sum z exp(z - m)
        best_val = torch.full((h.shape[0],), -math.inf, device=W.device)
        best_idx = torch.zeros(h.shape[0], dtype=torch.long, device=W.device)
        for c in _vocab_stream(unembed, h, vocab_chunk):
            better = c.cmax > best_val
            best_val, best_idx = torch.where(better, c.cmax, best_val), torch.where(better, c.carg + c.start, best_idx)
            z_sum = z_sum * c.scale + c.e.sum(-1)
            zz_sum = zz_sum * c.scale + (c.e * c.z).sum(-1)
        lse = c.m + torch.log(z_sum)
        entropy = lse - zz_sum / z_sum
        lab = unembed.cap((h @ W[labels].T).float())
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


def norm_matched_random(c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random directions with the norms of ``c`` ``(..., d)``, one per row: the control for a context vector."""
    noise = torch.randn(c.shape, generator=generator, dtype=c.dtype)
    return noise / noise.norm(dim=-1, keepdim=True) * c.norm(dim=-1, keepdim=True)


def leave_one_out_mean(x: torch.Tensor) -> torch.Tensor:
    """Row i of the result is the mean of all rows of ``x`` but row i (first axis, at least two rows): a per-query
    average that never contains the query itself."""
    if x.shape[0] < 2:
        raise ValueError(f"x needs at least two rows for leave-one-out means, got {x.shape[0]}")
    return (x.sum(0, keepdim=True) - x) / (x.shape[0] - 1)


def rms_form(unembed: Unembed) -> tuple[torch.Tensor, float] | None:
    r"""``(gain, eps)`` when the final norm is an RMSNorm, :math:`\mathrm{Norm}(x) = \gamma\odot x /
    \sqrt{\mathrm{mean}(x^2) + \epsilon}`, checked numerically on random inputs: :math:`\gamma` is the norm's
    weight :math:`w` (Llama, Qwen2, Mistral...) or :math:`1 + w` (Gemma's ``Gemma3RMSNorm``, whose weight is the
    offset from 1, applied in float32: then ``gain`` is ``1 + w`` in at least float32, as the model computes it).
    None otherwise (e.g. GPT-2's LayerNorm), and then callers use the generic path."""
    norm = unembed.final_norm
    weight = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1 or not isinstance(eps, (int, float)):
        return None
    if getattr(norm, "bias", None) is not None:
        return None
    x = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype) * 3
    with torch.no_grad():
        got = norm(x).float()
        unit = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    tol = 1e-5 if weight.dtype in (torch.float32, torch.float64) else 2e-2
    for gain in (weight, 1 + weight.detach().to(torch.promote_types(weight.dtype, torch.float32))):
        if torch.allclose(got, gain.float() * unit, rtol=tol, atol=tol):
            return gain, float(eps)
    return None


def _stats_of_logits(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """argmax, N_eff, label mass and label logits of logits ``z`` ``(B, V)`` (float32)."""
    m, arg = z.max(-1)
    e = torch.exp(z - m[:, None])
    s = e.sum(-1)
    lse = m + torch.log(s)
    entropy = lse - (e * z).sum(-1) / s
    lab = z[:, labels]
    return arg, torch.exp(entropy), torch.exp(lab - lse[:, None]).sum(-1), lab


@torch.no_grad()
def _additive_rms(unembed: Unembed, gain: torch.Tensor, eps: float, h: torch.Tensor, c: torch.Tensor,
                  lam: torch.Tensor, label_token_ids: list[int], prompt_batch: int = 64) -> DecodeStats:
    r"""The additive grid for an RMSNorm model by linearity (no decode per grid point): with
    :math:`z_h = W_U(\gamma\odot h)` and :math:`z_c = W_U(\gamma\odot c)`,
    :math:`W_U\mathrm{Norm}(h + \lambda c) = (z_h + \lambda z_c)/r` with
    :math:`r^2 = (\|h\|^2 + 2\lambda\, h\cdot c + \lambda^2\|c\|^2)/d + \epsilon`: two matrix products per query
    instead of one per (context layer, lambda), then the model's soft-cap
    (:meth:`~cgar_src.lm.unembed.Unembed.cap`, the identity without one). ``h`` ``(P, d)``, ``c``
    ``(P or 1, C, d)``; fields ``(P, C, K)``."""
    W = unembed.weight
    g = gain.to(W.dtype)
    d = h.shape[-1]
    labels = torch.as_tensor(label_token_ids, device=W.device)
    P, C, K = h.shape[0], c.shape[1], lam.numel()
    out = {"argmax": torch.zeros(P, C, K, dtype=torch.long), "n_eff": torch.zeros(P, C, K),
           "label_mass": torch.zeros(P, C, K), "label_logits": torch.zeros(P, C, K, len(label_token_ids))}
    lam64 = lam.double()
    for s0 in range(0, P, prompt_batch):
        hb = h[s0:s0 + prompt_batch].to(W.device).double()
        cb = (c if c.shape[0] == 1 else c[s0:s0 + prompt_batch]).to(W.device).double()
        zh = ((hb * g.double()).to(W.dtype) @ W.T).float()                        # (b, V)
        zc = ((cb * g.double()).to(W.dtype) @ W.T).float()                        # (b or 1, C, V)
        hh = (hb * hb).sum(-1)                                                    # (b,)
        hc = (hb[:, None, :] * cb).sum(-1)                                        # (b, C)
        cc = (cb * cb).sum(-1).expand_as(hc)                                      # (b, C)
        for j in range(C):
            for i in range(K):
                r = torch.rsqrt((hh + 2 * lam64[i] * hc[:, j] + lam64[i] ** 2 * cc[:, j]) / d + eps).float()
                z = unembed.cap((zh + float(lam64[i]) * zc[:, j]) * r[:, None])
                arg, n_eff, mass, lab = _stats_of_logits(z, labels)
                sl = slice(s0, s0 + hb.shape[0])
                out["argmax"][sl, j, i], out["n_eff"][sl, j, i] = arg.cpu(), n_eff.cpu()
                out["label_mass"][sl, j, i], out["label_logits"][sl, j, i] = mass.cpu(), lab.cpu()
    return DecodeStats(**out)


def additive_retrieval(unembed: Unembed, h_zero: torch.Tensor, c_bar: torch.Tensor, label_token_ids: list[int], *,
                       lambdas: list[float], context_layers: list[int], query_layers: list[int],
                       **decode_kwargs) -> DecodeStats:
    r"""First-order retrieval over a grid: for every query layer l', context layer l and coupling lambda, decode
    :math:`h_{zero}^{(l')} + \lambda\bar c^{(l)}` for every prompt. ``h_zero`` is ``(P, L+1, d)``; ``c_bar`` is
    ``(L+1, d)`` (one vector for all prompts) or ``(P, L+1, d)`` (one per prompt, e.g. leave-one-out means). Result
    fields have shape ``(P, len(query_layers), len(context_layers), len(lambdas))``. For an RMSNorm model
    (:func:`rms_form`) the grid is computed by linearity of the unembedding (``_additive_rms``, the same numbers
    to float32 round-off), otherwise by one streamed decode per grid point."""
    n_layers = h_zero.shape[1]
    indices(context_layers, "context_layers", n_layers, what="layer indices")
    indices(query_layers, "query_layers", n_layers, what="layer indices")
    if c_bar.shape not in (h_zero.shape[1:], h_zero.shape):
        raise ValueError(f"c_bar must have shape {tuple(h_zero.shape[1:])} or {tuple(h_zero.shape)}, got {tuple(c_bar.shape)}")
    lam = torch.tensor([scalar(x, "lambdas") for x in lambdas], dtype=h_zero.dtype)
    if lam.numel() == 0:
        raise ValueError("lambdas must be a non-empty list of finite numbers")
    c_bar = c_bar if c_bar.ndim == 3 else c_bar[None]
    rms = rms_form(unembed)
    if rms is not None:
        parts = [_additive_rms(unembed, *rms, h_zero[:, l], c_bar[:, context_layers], lam, label_token_ids)
                 for l in query_layers]
    else:
        c = lam[None, None, :, None] * c_bar[:, context_layers][:, :, None, :]      # (P or 1, C, K, d)
        parts = [decode_stats(unembed, h_zero[:, l, None, None, :] + c, label_token_ids, **decode_kwargs)
                 for l in query_layers]                                  # one query layer at a time: (P, C, K, d)
    return DecodeStats(**{f: torch.stack([getattr(p, f) for p in parts], dim=1)
                          for f in ("argmax", "n_eff", "label_mass", "label_logits")})


@torch.no_grad()
def logit_bias(unembed: Unembed, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""The direct-bias term of the additive score: :math:`s_c = W_U\,J_{Norm}(h)\,c`, so that
    :math:`W_U\mathrm{Norm}(h + \lambda c) = W_U\mathrm{Norm}(h) + \lambda s_c + O(\lambda^2)` (book chapter
    ``06_attention_first_order``). A Jacobian-vector product through the model's own final norm; ``h`` and ``c`` are
    ``(P, d)``, the result is ``(P, vocab)`` in the unembedding's dtype (at least float32)."""
    h = h.to(device=unembed.weight.device, dtype=unembed.weight.dtype)
    c = c.to(device=h.device, dtype=h.dtype).expand_as(h)
    _, jc = torch.func.jvp(unembed.final_norm, (h,), (c,))
    return (jc @ unembed.weight.T).to(torch.promote_types(jc.dtype, torch.float32))


@torch.no_grad()
def retrieved_pattern(unembed: Unembed, states: torch.Tensor, *, vocab_chunk: int = 8192) -> torch.Tensor:
    r"""The Hopfield output of a decode: :math:`\xi^+ = W_U^\top p` with :math:`p = \mathrm{softmax}(W_U\,
    \mathrm{Norm}(h))` (the logits soft-capped first where the model caps them, as the lens does), the
    probability-weighted mean of the memories (rows of :math:`W_U`), streamed over the vocabulary. ``states``
    ``(P, d)``; returns ``(P, d)`` float32."""
    W = unembed.weight
    h = unembed.normalize(states)
    z_sum = torch.zeros(h.shape[0], device=W.device)
    acc = torch.zeros(h.shape[0], W.shape[1], device=W.device, dtype=torch.float64)  # the mean cancels: accumulate in float64
    for c in _vocab_stream(unembed, h, vocab_chunk):
        z_sum = z_sum * c.scale + c.e.sum(-1)
        acc = acc * c.scale[:, None].double() + c.e.double() @ W[c.start:c.start + vocab_chunk].double()
    return (acc / z_sum[:, None].double()).float().cpu()


def readout_basis(unembed: Unembed, token_ids: list[int], *, through_norm: bool = True) -> torch.Tensor:
    r"""Orthonormal basis ``(d, k)`` of the span of the tokens' readout directions. ``through_norm=True``: the
    residual-stream directions :math:`\gamma \odot w_y` that a state moves along to raise token y's logit (the
    final norm's gain :math:`\gamma` times the unembedding row); ``False``: the rows :math:`w_y` themselves (the
    space of retrieved patterns :math:`W_U^\top p`)."""
    q, _ = torch.linalg.qr(readout_rows(unembed, token_ids, through_norm=through_norm).T.cpu())
    return q


def readout_rows(unembed: Unembed, token_ids: list[int], *, through_norm: bool = True,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""The tokens' readout directions ``(k, d)`` in ``dtype``: :math:`\gamma \odot w_y` (``through_norm=True``,
    the final norm's gain times the unembedding row, when the norm has a gain: :math:`\gamma` of :func:`rms_form`
    for an RMSNorm, so :math:`1 + w` for Gemma's, else the norm's weight) or the rows :math:`w_y`."""
    ids = indices(token_ids, "token_ids", unembed.weight.shape[0], what="token ids")
    rows = unembed.weight[ids.to(unembed.weight.device)].to(dtype)
    if not through_norm:
        return rows
    rms = rms_form(unembed)
    gain = rms[0] if rms is not None else getattr(unembed.final_norm, "weight", None)
    if gain is not None:
        rows = rows * gain.to(device=rows.device, dtype=dtype)
    return rows


def span_fraction(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    r"""Fraction of each vector's squared norm inside the span of ``basis`` (orthonormal columns):
    :math:`\|Q^\top v\|^2/\|v\|^2`. A random direction has expected fraction k/d."""
    v = vectors.float()
    return ((v @ basis) ** 2).sum(-1) / (v ** 2).sum(-1)


# --- chapter 06: validity of the first-order (additive) approximation, computed in float64 ---------------------


@dataclass
class FirstOrderCheck:
    r"""What :func:`first_order_check` measured, per context layer (``C``), coupling (``K``) and query (``P``): the
    relative remainder :math:`\rho(\lambda) = \|z(\lambda) - s_q - \lambda s_c\| / \|z(\lambda) - s_q\|` of the
    first-order expansion :math:`z(\lambda) = W_U\mathrm{Norm}(h + \lambda\bar c^{(l)}) = s_q + \lambda s_c +
    O(\lambda^2)` (book chapter ``06_attention_first_order``, equation ``additive-first-order``) and whether the full
    and the linearised logits have the same argmax."""

    lambdas: torch.Tensor       # (K,) float64, the couplings
    context_layers: list[int]   # the C layers the context vectors were taken from
    remainder: torch.Tensor     # (C, K, P) float64: ||z(lam) - s_q - lam s_c|| / ||z(lam) - s_q||
    agree: torch.Tensor         # (C, K, P) bool: argmax of z(lam) == argmax of s_q + lam s_c

    def median_remainder(self) -> torch.Tensor:
        """``(C, K)``: the median relative remainder over the queries (``torch.median``: the lower of the two middle
        values for an even number of queries)."""
        return self.remainder.median(dim=-1).values

    def agreement(self) -> torch.Tensor:
        """``(C, K)`` float64: the fraction of queries whose full and linearised decodes pick the same token."""
        return self.agree.double().mean(-1)

    def slopes(self, fit_range: list[float] | tuple[float, float]) -> dict[int, float]:
        r"""Per context layer, the least-squares slope of :math:`\log` median remainder against :math:`\log\lambda`
        over the couplings with ``fit_range[0] <= lambda <= fit_range[1]``. The remainder of the first-order
        expansion is :math:`O(\lambda^2)` and the logit change :math:`O(\lambda)`, so the relative remainder has
        slope 1 where the expansion holds (book chapter ``06_attention_first_order``)."""
        if not isinstance(fit_range, (list, tuple)) or len(fit_range) != 2:
            raise ValueError(f"fit_range must be a pair [low, high] of couplings, got {fit_range!r}")
        lo, hi = scalar(fit_range[0], "fit_range"), scalar(fit_range[1], "fit_range")
        sel = (self.lambdas >= lo) & (self.lambdas <= hi)
        if not 0 < lo < hi or int(sel.sum()) < 2:
            raise ValueError(f"fit_range must satisfy 0 < low < high and hold at least two of the lambdas "
                             f"{self.lambdas.tolist()}, got {list(fit_range)}")
        x = self.lambdas[sel].log()
        y = self.median_remainder()[:, sel].log()
        xc = x - x.mean()
        slope = ((y - y.mean(-1, keepdim=True)) * xc).sum(-1) / (xc * xc).sum()
        return {l: float(s) for l, s in zip(self.context_layers, slope)}


@torch.no_grad()
def first_order_check(unembed: Unembed, h: torch.Tensor, c_bar: torch.Tensor, *, lambdas: list[float],
                      context_layers: list[int], vocab_chunk: int = 8192) -> FirstOrderCheck:
    r"""How well the additive score is approximated by its first order (book chapter ``06_attention_first_order``,
    equation ``additive-first-order``): with :math:`z(\lambda) = W_U\,\mathrm{Norm}(h + \lambda\bar c^{(l)})`,
    :math:`s_q = z(0)` and :math:`s_c = W_U J_{Norm}(h)\,\bar c^{(l)}`,

    .. math::
        z(\lambda) = s_q + \lambda s_c + O(\lambda^2), \qquad
        \rho(\lambda) = \frac{\|z(\lambda) - s_q - \lambda s_c\|}{\|z(\lambda) - s_q\|},

    for every query state (rows of ``h``, ``(P, d)``, one layer), context layer (rows ``context_layers`` of
    ``c_bar``, ``(L+1, d)``) and coupling in ``lambdas`` (positive); also whether :math:`\arg\max z(\lambda)` equals
    :math:`\arg\max(s_q + \lambda s_c)`.

    Both numerator and denominator are differences of nearly equal logit vectors, so they are never formed by
    subtraction in float32. For an RMSNorm model (:func:`rms_form`: :math:`\mathrm{Norm}(x) = \gamma\odot x/r(x)`,
    :math:`r(x)^2 = \|x\|^2/d + \epsilon`) they are computed in closed form, in float64: with :math:`r_0 = r(h)`,
    :math:`r = r(h + \lambda c)`, :math:`\Delta = r^2 - r_0^2 = (2\lambda\,h\cdot c + \lambda^2\|c\|^2)/d`,
    :math:`B = 1/r - 1/r_0 = -\Delta/(r r_0 (r + r_0))` and

    .. math::
        A = B + \frac{\lambda\,h\cdot c}{d\,r_0^3}
          = \frac{\lambda\,h\cdot c}{d}\,\frac{(r - r_0)(r + 2r_0)}{r_0^3\,r\,(r + r_0)}
            - \frac{\lambda^2\|c\|^2}{d\,r\,r_0\,(r + r_0)}, \qquad r - r_0 = \frac{\Delta}{r + r_0},

    the remainder is :math:`W_U(\gamma\odot(A\,h + \lambda B\,c))` and the logit change
    :math:`W_U(\gamma\odot(B\,h + \lambda c/r))`: no cancelling terms, exact to float64 round-off for any
    :math:`\lambda > 0`. Other norms (e.g. LayerNorm) are evaluated from a float64 copy of the final norm, where the
    subtractions lose at most :math:`\sim 10^{-16}/\lambda^2` of relative accuracy (a warning is issued when that
    copy does not compute in float64). The unembedding is read in float64 in chunks of ``vocab_chunk`` rows (its
    bias, if any, cancels in both differences and enters the argmax)."""
    W = unembed.weight
    d = W.shape[1]
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[-1] != d or h.shape[0] == 0:
        raise ValueError(f"h must be query states of shape (P, {d}), got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    if not isinstance(c_bar, torch.Tensor) or c_bar.ndim != 2 or c_bar.shape[-1] != d:
        raise ValueError(f"c_bar must be context vectors of shape (L+1, {d}), got "
                         f"{tuple(c_bar.shape) if isinstance(c_bar, torch.Tensor) else type(c_bar).__name__}")
    layers = indices(context_layers, "context_layers", c_bar.shape[0], what="layer indices").tolist()
    if not isinstance(lambdas, (list, tuple)) or not lambdas:
        raise ValueError(f"lambdas must be a non-empty list of positive couplings, got {lambdas!r}")
    lam = torch.tensor([scalar(x, "lambdas") for x in lambdas], dtype=torch.float64)
    if bool((lam <= 0).any()):
        raise ValueError(f"lambdas must be positive (the relative remainder is 0/0 at lambda = 0), got {list(lambdas)}")
    if isinstance(vocab_chunk, bool) or not isinstance(vocab_chunk, int) or vocab_chunk < 1:
        raise ValueError(f"vocab_chunk must be a positive integer, got {vocab_chunk!r}")
    dev = W.device if W.device.type != "mps" else torch.device("cpu")   # MPS has no float64
    h64 = h.to(dev, torch.float64)
    c64 = c_bar[layers].to(dev, torch.float64)
    bias = getattr(unembed.unembedding, "bias", None)
    rms = rms_form(unembed)
    parts = (_first_order_rms(W, bias, *rms, h64, c64, lam.to(dev), vocab_chunk) if rms is not None else
             _first_order_generic(unembed, W, bias, h64, c64, lam.to(dev), vocab_chunk))
    num, den, agree = (t.cpu() for t in parts)
    return FirstOrderCheck(lambdas=lam, context_layers=layers, remainder=num.sqrt() / den.sqrt(),
                           agree=agree)


class _RunningArgmax:
    """Argmax over the vocabulary, streamed over chunks, per (context layer, coupling, query)."""

    def __init__(self, C: int, K: int, P: int, device: torch.device):
        self.best = torch.full((C, K, P), -math.inf, dtype=torch.float64, device=device)
        self.arg = torch.zeros(C, K, P, dtype=torch.long, device=device)

    def update(self, j: int, k: int, start: int, z: torch.Tensor) -> None:
        """Logits ``z`` ``(P, V_c)`` of the chunk whose first token id is ``start``."""
        cmax, carg = z.max(-1)
        better = cmax > self.best[j, k]
        self.best[j, k] = torch.where(better, cmax, self.best[j, k])
        self.arg[j, k] = torch.where(better, carg + start, self.arg[j, k])


def _vocab_chunks(W: torch.Tensor, bias: torch.Tensor | None, vocab_chunk: int, device: torch.device):
    """``(start, W_chunk, bias_chunk)`` in float64 (bias chunk None when the unembedding has no bias)."""
    for start in range(0, W.shape[0], vocab_chunk):
        Wc = W[start:start + vocab_chunk].to(device, torch.float64)
        bc = None if bias is None else bias[start:start + vocab_chunk].to(device, torch.float64)
        yield start, Wc, bc


def _first_order_rms(W: torch.Tensor, bias: torch.Tensor | None, gain: torch.Tensor, eps: float, h: torch.Tensor,
                     c: torch.Tensor, lam: torch.Tensor, vocab_chunk: int):
    r""":func:`first_order_check` for an RMSNorm model, in closed form (float64; the formulas are in its docstring).
    Every logit vector is :math:`a\,z_h + b\,z_c` with :math:`z_h = W_U(\gamma\odot h)`,
    :math:`z_c = W_U(\gamma\odot c)` and per-query coefficients, so the squared norms are the quadratic forms
    :math:`a^2 z_h\cdot z_h + 2ab\,z_h\cdot z_c + b^2 z_c\cdot z_c` of three inner products, and only the argmax
    needs the logits themselves."""
    d = h.shape[-1]
    g = gain.to(h.device, torch.float64)
    hc = c @ h.T                                           # (C, P)
    cc = (c * c).sum(-1)[:, None, None]                    # (C, 1, 1)
    r0 = torch.sqrt((h * h).sum(-1) / d + eps)             # (P,)
    lv = lam[None, :, None]                                # (1, K, 1)
    hcv = hc[:, None, :]                                   # (C, 1, P)
    delta = (2 * lv * hcv + lv ** 2 * cc) / d              # r^2 - r0^2, (C, K, P)
    r = torch.sqrt(r0 ** 2 + delta)
    s = r + r0
    B = -delta / (r * r0 * s)                              # 1/r - 1/r0
    A = lv * hcv / d * (delta / s) * (r + 2 * r0) / (r0 ** 3 * r * s) - lv ** 2 * cc / (d * r * r0 * s)
    lin_h = 1 - lv * hcv / (d * r0 ** 2)                   # s_q + lam s_c = (lin_h z_h + lam z_c) / r0
    C, K, P = r.shape
    zhh = torch.zeros(P, dtype=torch.float64, device=h.device)
    zhc = torch.zeros(C, P, dtype=torch.float64, device=h.device)
    zcc = torch.zeros(C, dtype=torch.float64, device=h.device)
    full, lin = _RunningArgmax(C, K, P, h.device), _RunningArgmax(C, K, P, h.device)
    for start, Wc, bc in _vocab_chunks(W, bias, vocab_chunk, h.device):
        zh, zc = (h * g) @ Wc.T, (c * g) @ Wc.T            # (P, V_c), (C, V_c)
        zhh += (zh * zh).sum(-1)
        zhc += zc @ zh.T
        zcc += (zc * zc).sum(-1)
        for j in range(C):
            for k, lk in enumerate(lam.tolist()):
                zf = torch.add(zh, zc[j], alpha=lk)          # r * z(lam) without the bias
                zl = torch.addcmul(lk * zc[j], lin_h[j, k][:, None], zh)   # r0 * (s_q + lam s_c)
                if bc is not None:
                    zf, zl = zf / r[j, k][:, None] + bc, zl / r0[:, None] + bc
                full.update(j, k, start, zf)                 # r, r0 > 0: the argmax of the logits either way
                lin.update(j, k, start, zl)

    def sq_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:   # ||a z_h + b z_c||^2, (C, K, P)
        return (a * a * zhh + 2 * a * b * zhc[:, None, :] + b * b * zcc[:, None, None]).clamp_min(0)

    return sq_norm(A, lv * B), sq_norm(B, lv / r), full.arg == lin.arg


def _first_order_generic(unembed: Unembed, W: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                         c: torch.Tensor, lam: torch.Tensor, vocab_chunk: int):
    """:func:`first_order_check` for any final norm: a float64 copy of the norm; the differences are taken between
    float64 state vectors, then mapped through W_U in float64."""
    norm = copy.deepcopy(unembed.final_norm).to(h.device, torch.float64)
    x = torch.randn(2, h.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(h.device)
    if torch.equal(norm(x), norm(x.float().double())):
        warnings.warn(f"{type(norm).__name__} does not compute in float64 (its output ignores input bits below "
                      "float32): the first-order remainder is accurate only to float32 round-off", stacklevel=3)
    n0 = norm(h)                                                                        # (P, d)
    jc = torch.stack([torch.func.jvp(norm, (h,), (cj.expand_as(h),))[1] for cj in c])   # (C, P, d)
    full = torch.stack([torch.stack([norm(h + lk * cj) for lk in lam]) for cj in c])    # (C, K, P, d)
    lin = n0 + lam[None, :, None, None] * jc[:, None]
    rem, dz = full - lin, full - n0
    C, K, P = full.shape[:3]
    num = torch.zeros(C, K, P, dtype=torch.float64, device=h.device)
    den = torch.zeros_like(num)
    arg_full, arg_lin = _RunningArgmax(C, K, P, h.device), _RunningArgmax(C, K, P, h.device)
    for start, Wc, bc in _vocab_chunks(W, bias, vocab_chunk, h.device):
        num += ((rem @ Wc.T) ** 2).sum(-1)
        den += ((dz @ Wc.T) ** 2).sum(-1)
        for j in range(C):
            for k in range(K):
                zf, zl = full[j, k] @ Wc.T, lin[j, k] @ Wc.T
                arg_full.update(j, k, start, zf if bc is None else zf + bc)
                arg_lin.update(j, k, start, zl if bc is None else zl + bc)
    return num, den, arg_full.arg == arg_lin.arg
