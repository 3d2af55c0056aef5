r"""Random instances of the context-gated memory and the batched Figure 2 sweep (book: :ref:`ch-separation`).

The instance (our reconstruction, the simulation protocol of :ref:`ch-separation`): N unit-norm memories X and N unit-norm context keys K in
:math:`\mathbb{R}^d`; a trial picks a target :math:`\mu`, a query :math:`\xi = x_\mu + \sigma_q z` and a context
:math:`c = k_\mu + \sigma_c z'` (z, z' standard normal per coordinate). Query evidence :math:`s_q = X^\top\xi`, context
evidence :math:`s_c = \gamma K^\top c` with the context circuit's gain :math:`\gamma`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from tqdm import tqdm

from .._validate import boolean, int_in_range, nonnegative, positive, positive_int
from .dynamics import contraction_bound, effective_separation, error_log_odds, fixed_point

__all__ = ["SweepConfig", "Bank", "make_bank", "sweep_scores", "separation_sweep", "separation_trial_loop"]


@dataclass(frozen=True)
class SweepConfig:
    """Parameters of the Figure 2 sweep; stored next to every result."""

    n_memories: int = 1000
    dim: int = 128
    n_trials: int = 2000
    sigmas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
    lambdas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    beta: float = 4.0
    alpha: float = 40.0
    context_gain: float = 150.0
    context_noise: float = 0.2
    kind: str = "sparsemax"
    tol: float = 1e-8
    seed: int = 0

    def __post_init__(self):
        for name in ("n_memories", "dim", "n_trials"):
            positive_int(getattr(self, name), name)
        int_in_range(self.seed, "seed", 0)
        if self.n_memories < 2:
            raise ValueError(f"n_memories must be >= 2, got {self.n_memories}")
        for s in self.sigmas:
            nonnegative(s, "sigmas")
        for lam in self.lambdas:
            nonnegative(lam, "lambdas")
        for name in ("beta", "alpha", "context_gain", "tol"):
            positive(getattr(self, name), name)
        nonnegative(self.context_noise, "context_noise")

    def to_dict(self) -> dict:
        return asdict(self)


def _unit_columns(d: int, n: int, gen: torch.Generator, dtype) -> torch.Tensor:
    A = torch.randn(d, n, generator=gen, dtype=dtype)
    return A / A.norm(dim=0)


class Bank(NamedTuple):
    r"""What :func:`make_bank` draws: memories X and context keys K (``d x N``, unit columns), each trial's target
    (the memory its context :math:`c = k_\mu + \sigma_c z'` points to), the standard-normal query and context noise
    ``z_q``, ``z_c`` (``n_trials x d``), and the memory the query is a noisy copy of (``query_target``; the target
    itself unless ``query_elsewhere``)."""

    X: torch.Tensor
    K: torch.Tensor
    target: torch.Tensor
    z_q: torch.Tensor
    z_c: torch.Tensor
    query_target: torch.Tensor

    def scores(self, cfg: SweepConfig, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`sweep_scores` of this bank at query noise ``sigma``."""
        return sweep_scores(cfg, self.X, self.K, self.target, self.z_q, self.z_c, sigma, query_target=self.query_target)


def make_bank(cfg: SweepConfig, dtype=torch.float64, *, generator: torch.Generator | None = None,
              query_elsewhere: bool = False) -> Bank:
    """Memories X, context keys K (both ``d x N``, unit columns), targets, and the standard-normal query and
    context noise of every trial, all from ``cfg.seed`` (common random numbers across sigma and lambda).

    ``generator``: continue this generator's stream instead of a fresh one seeded with ``cfg.seed`` (chapter
    ``04_phase_transition`` draws one small instance after another from one stream). ``query_elsewhere``: each
    trial's query copies a memory other than its target, uniform over the other N - 1, drawn right after the targets
    (``04_phase_transition``'s instances where query and context disagree). Draw order: X, K, targets, [query
    memories], query noise, context noise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    query_elsewhere = boolean(query_elsewhere, "query_elsewhere")
    gen = torch.Generator().manual_seed(cfg.seed) if generator is None else generator
    X = _unit_columns(cfg.dim, cfg.n_memories, gen, dtype)
    K = _unit_columns(cfg.dim, cfg.n_memories, gen, dtype)
    target = torch.randint(cfg.n_memories, (cfg.n_trials,), generator=gen)
    query_target = target
    if query_elsewhere:  # target + 1 + U{0, ..., N-2} mod N: uniform over the other memories
        query_target = (target + 1 + torch.randint(cfg.n_memories - 1, (cfg.n_trials,), generator=gen)) % cfg.n_memories
    z_q = torch.randn(cfg.n_trials, cfg.dim, generator=gen, dtype=dtype)
    z_c = torch.randn(cfg.n_trials, cfg.dim, generator=gen, dtype=dtype)
    return Bank(X, K, target, z_q, z_c, query_target)


def sweep_scores(cfg: SweepConfig, X, K, target, z_q, z_c, sigma: float, *, query_target=None):
    r"""Query and context evidence of every trial at query noise ``sigma`` (shapes ``(n_trials, N)``):
    :math:`s_q = X^\top(x_\nu + \sigma z)`, :math:`s_c = \gamma K^\top(k_\mu + \sigma_c z')` with ``nu =
    query_target`` (default: the target mu)."""
    xi = X.T[target if query_target is None else query_target] + sigma * z_q
    c = K.T[target] + cfg.context_noise * z_c
    return xi @ X, cfg.context_gain * (c @ K)


@dataclass
class SweepResult:
    """Per (sigma, lambda, trial) outcomes of the sweep; tensors of shape ``(S, L, T)``, except ``columns`` ``(S, L)``:
    the memories the solver iterated on (:func:`cgar_src.theory.dynamics.support_screen`)."""

    config: SweepConfig
    correct: torch.Tensor
    p_target: torch.Tensor
    log_odds: torch.Tensor
    delta_raw: torch.Tensor
    delta_gate: torch.Tensor
    delta_eff: torch.Tensor
    support: torch.Tensor
    gate_correct: torch.Tensor
    iterations: torch.Tensor
    columns: torch.Tensor
    max_residual: float
    bounds: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> torch.Tensor:
        """Retrieval accuracy (argmax p = target), shape ``(S, L)``."""
        return self.correct.double().mean(-1)


def separation_sweep(cfg: SweepConfig = SweepConfig(), *, progress: bool = False) -> SweepResult:
    """Solve the coupled fixed point for every trial, noise level and coupling, batched over trials."""
    X, K, target, z_q, z_c, _ = make_bank(cfg)
    S, L, T = len(cfg.sigmas), len(cfg.lambdas), cfg.n_trials
    out = {k: torch.empty(S, L, T, dtype=torch.float64) for k in ("p_target", "log_odds", "delta_raw", "delta_gate", "delta_eff")}
    correct = torch.empty(S, L, T, dtype=torch.bool)
    support = torch.empty(S, L, T, dtype=torch.long)
    gate_correct = torch.empty(S, L, T, dtype=torch.bool)
    iterations = torch.empty(S, L, T, dtype=torch.long)
    columns = torch.empty(S, L, dtype=torch.long)  # memories the solver iterated on (support screening)
    max_residual = 0.0
    pairs = [(i, j) for i in range(S) for j in range(L)]
    scores = None
    for i, j in tqdm(pairs, desc="sigma x lambda", disable=not progress):
        if j == 0:
            scores = sweep_scores(cfg, X, K, target, z_q, z_c, cfg.sigmas[i])
        s_q, s_c = scores
        fp = fixed_point(s_q, s_c, cfg.alpha, cfg.beta, cfg.lambdas[j], kind=cfg.kind, tol=cfg.tol)
        sep = effective_separation(s_q, fp.g, target, cfg.lambdas[j])
        out["p_target"][i, j] = fp.p.gather(-1, target[:, None])[:, 0]
        out["log_odds"][i, j] = error_log_odds(s_q, fp.g, target, cfg.beta, cfg.lambdas[j])
        out["delta_raw"][i, j], out["delta_gate"][i, j], out["delta_eff"][i, j] = sep.raw, sep.gate, sep.effective
        correct[i, j] = fp.p.argmax(-1) == target
        support[i, j] = (fp.g > 0).sum(-1)
        gate_correct[i, j] = fp.g.argmax(-1) == target
        iterations[i, j] = fp.iterations
        columns[i, j] = fp.columns
        max_residual = max(max_residual, fp.residual.max().item())
    return SweepResult(config=cfg, correct=correct, support=support, gate_correct=gate_correct, iterations=iterations, columns=columns, max_residual=max_residual,
                       bounds=[contraction_bound(cfg.alpha, cfg.beta, lam, cfg.kind) for lam in cfg.lambdas], **out)


def separation_trial_loop(cfg: SweepConfig, n_trials: int | None = None) -> torch.Tensor:
    """Reference for the benchmark: the same arithmetic one trial at a time in a Python loop.

    Returns the target's retrieval probability, shape ``(S, L, n_trials)`` (the first ``n_trials`` trials)."""
    X, K, target, z_q, z_c, _ = make_bank(cfg)
    n = cfg.n_trials if n_trials is None else positive_int(n_trials, "n_trials")
    p_target = torch.empty(len(cfg.sigmas), len(cfg.lambdas), n, dtype=torch.float64)
    for i, sigma in enumerate(cfg.sigmas):
        for j, lam in enumerate(cfg.lambdas):
            for t in range(n):
                one = slice(t, t + 1)
                s_q, s_c = sweep_scores(cfg, X, K, target[one], z_q[one], z_c[one], sigma)
                fp = fixed_point(s_q[0], s_c[0], cfg.alpha, cfg.beta, lam, kind=cfg.kind, tol=cfg.tol)
                p_target[i, j, t] = fp.p[target[t]]
    return p_target
