r"""Chapter ``03_separation``'s measurements beyond the Figure 2 sweep: the odds-ratio check of the separation theorem
and the context-noise axis, where the gate is uncertain.

**Odds ratio.** For the target :math:`\mu` and retrieval logits :math:`\ell = s_q + \lambda g`, the error odds are
:math:`(1 - p_\mu)/p_\mu = \sum_{j\ne\mu} e^{-\beta(\ell_\mu - \ell_j)}`. On the same trial (common random numbers),
their ratio against :math:`\lambda = 0` can never exceed the theorem's factor :math:`e^{-\beta\lambda\Delta_{gate}}`,
:math:`\Delta_{gate} = g_\mu - \max_{j\ne\mu} g_j` (Theorem ``thm-separation``).

**Context-noise axis.** Figure 2's instance (:mod:`cgar_src.theory.simulate`) at one query noise :math:`\sigma_q`,
with the context noise :math:`\sigma_c` varied; for every trial and coupling the coupled fixed point
:math:`p^* = \Phi_{\alpha,\lambda}(p^*)` and the first-order model :math:`p^{(1)} = \Phi(0) =
\mathrm{softmax}(\beta(s_q + \lambda G_\alpha(s_c)))` of chapter ``05_fixed_point``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .._validate import nonnegative, positive, positive_int
from .dynamics import effective_separation, error_log_odds, first_order, fixed_point
from .simulate import SweepConfig, make_bank

__all__ = ["odds_ratio_vs_uncoupled", "ContextNoisePoint", "context_noise_sweep"]


def odds_ratio_vs_uncoupled(log_odds: torch.Tensor, delta_gate: torch.Tensor, lambdas: Sequence[float], beta: float,
                            *, lambda_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Measured and predicted log error-odds ratios against :math:`\lambda = 0`.

    ``log_odds`` and ``delta_gate`` carry the couplings ``lambdas`` (the first must be 0) on axis ``lambda_dim``.
    Returns ``(log_ratio, log_factor)``: :math:`\log\frac{(1-p_\mu)/p_\mu\,|_\lambda}{(1-p_\mu)/p_\mu\,|_0}` and
    :math:`-\beta\lambda\Delta_{gate}`; the separation theorem says ``log_ratio <= log_factor`` on every trial."""
    beta = positive(beta, "beta")
    lambdas = [nonnegative(l, "lambdas") for l in lambdas]
    if not lambdas or lambdas[0] != 0:
        raise ValueError(f"lambdas must start with 0 (the uncoupled reference), got {lambdas}")
    if log_odds.shape != delta_gate.shape:
        raise ValueError(f"log_odds {tuple(log_odds.shape)} and delta_gate {tuple(delta_gate.shape)} must have the "
                         "same shape")
    if not -log_odds.ndim <= lambda_dim < log_odds.ndim or log_odds.shape[lambda_dim] != len(lambdas):
        raise ValueError(f"lambda_dim={lambda_dim} must be an axis of length len(lambdas)={len(lambdas)}, "
                         f"shape {tuple(log_odds.shape)}")
    shape = [1] * log_odds.ndim
    shape[lambda_dim] = len(lambdas)
    lam = torch.tensor(lambdas, dtype=torch.float64).view(shape)
    return log_odds - log_odds.narrow(lambda_dim, 0, 1), -beta * lam * delta_gate


@dataclass
class ContextNoisePoint:
    r"""One context-noise level :math:`\sigma_c` of :func:`context_noise_sweep`. Per coupling (axis 0, length L) and
    trial (axis 1, length T): ``not_one_hot`` (the fixed point's gate has support > 1), ``log_ratio`` and
    ``log_factor`` (:func:`odds_ratio_vs_uncoupled`), ``first_order_gap`` :math:`\|p^{(1)} - p^*\|_1`. Per coupling:
    ``accuracy`` (argmax :math:`p^*` is the target), ``accuracy_first_order``, ``disagreement`` (fraction of trials where
    the argmaxes of :math:`p^{(1)}` and :math:`p^*` differ). ``context_accuracy``: the context circuit alone
    (argmax :math:`s_c`) picks the target."""

    sigma_c: float
    accuracy: torch.Tensor
    accuracy_first_order: torch.Tensor
    not_one_hot: torch.Tensor
    context_accuracy: float
    log_ratio: torch.Tensor
    log_factor: torch.Tensor
    max_residual: float
    disagreement: torch.Tensor
    first_order_gap: torch.Tensor

    def violations(self, atol: float = 1e-9) -> int:
        """(coupling, trial) pairs whose odds shrink less than the theorem's factor allows (beyond ``atol``)."""
        return int((self.log_ratio > self.log_factor + atol).sum())

    def median_log10_on_spread_gates(self, j: int) -> tuple[float, float, int]:
        r"""At coupling index ``j``, over the trials whose gate is not one-hot: the median measured
        :math:`\log_{10}` odds ratio, the median predicted :math:`\log_{10} e^{-\beta\lambda\Delta_{gate}}` and the
        number of such trials (NaN medians when there are none)."""
        m = self.not_one_hot[j]
        if not m.any():
            return float("nan"), float("nan"), 0
        ln10 = math.log(10)
        return self.log_ratio[j][m].median().item() / ln10, self.log_factor[j][m].median().item() / ln10, int(m.sum())


def context_noise_sweep(cfg: SweepConfig, context_noises: Sequence[float], lambdas: Sequence[float], sigma_q: float,
                        n_trials: int) -> list[ContextNoisePoint]:
    r"""Figure 2's instance (``cfg``: memories, keys, beta, alpha, context gain, seed) at query noise ``sigma_q``, for
    every context noise in ``context_noises`` and coupling in ``lambdas`` (the first must be 0), ``n_trials`` trials.

    Each level draws its bank from ``cfg.seed`` (:func:`cgar_src.theory.simulate.make_bank`): the same memories, keys,
    targets and noise directions at every :math:`\sigma_c`, so the levels differ only in the context noise's size."""
    if len(context_noises) == 0:
        raise ValueError("context_noises must not be empty")
    n_trials, sigma_q = positive_int(n_trials, "n_trials"), nonnegative(sigma_q, "sigma_q")
    points = []
    for sigma_c in context_noises:
        cfg_c = replace(cfg, n_trials=n_trials, sigmas=(sigma_q,), lambdas=tuple(lambdas), context_noise=sigma_c)
        bank = make_bank(cfg_c)
        s_q, s_c = bank.scores(cfg_c, sigma_q)
        target = bank.target
        row = {k: [] for k in ("acc", "acc_first", "spread", "log_odds", "delta_gate", "disagree", "fo_err", "residual")}
        for lam in cfg_c.lambdas:
            fp = fixed_point(s_q, s_c, cfg_c.alpha, cfg_c.beta, lam, kind=cfg_c.kind, tol=cfg_c.tol)
            p1 = first_order(s_q, s_c, cfg_c.alpha, cfg_c.beta, lam, kind=cfg_c.kind)
            row["acc"].append((fp.p.argmax(-1) == target).double().mean())
            row["acc_first"].append((p1.argmax(-1) == target).double().mean())
            row["spread"].append((fp.g > 0).sum(-1) > 1)
            row["log_odds"].append(error_log_odds(s_q, fp.g, target, cfg_c.beta, lam))
            row["delta_gate"].append(effective_separation(s_q, fp.g, target, lam).gate)
            row["disagree"].append((p1.argmax(-1) != fp.p.argmax(-1)).double().mean())
            row["fo_err"].append((p1 - fp.p).abs().sum(-1))
            row["residual"].append(fp.residual.max())
        row = {k: torch.stack(v) for k, v in row.items()}
        log_ratio, log_factor = odds_ratio_vs_uncoupled(row["log_odds"], row["delta_gate"], cfg_c.lambdas, cfg_c.beta,
                                                        lambda_dim=0)
        points.append(ContextNoisePoint(
            sigma_c=sigma_c, accuracy=row["acc"], accuracy_first_order=row["acc_first"], not_one_hot=row["spread"],
            context_accuracy=(s_c.argmax(-1) == target).double().mean().item(), log_ratio=log_ratio,
            log_factor=log_factor, max_residual=row["residual"].max().item(), disagreement=row["disagree"],
            first_order_gap=row["fo_err"]))
    return points
