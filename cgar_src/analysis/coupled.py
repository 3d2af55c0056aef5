r"""Coupled retrieval: steering the zero-shot state with an averaged context vector (book chapter
``08_coupled_retrieval``, the paper's Figures 5, 10 and 11).

The first-order form of the context-gated memory, :math:`p^{(1)} = \mathrm{softmax}(\beta(s_q + \lambda
G_\alpha(s_c)))` (chapter ``05_fixed_point``), has the transformer analogue (chapter 08, equation
``additive-retrieval``)

.. math:: p(\lambda) = \mathrm{softmax}\big(W_U\,\mathrm{Norm}_{final}(h_{zero}^{(l')} + \lambda\,\bar c^{(l)})\big),
   \qquad \bar c^{(l)} = \mathrm{mean}_q\big(h_{ICL}^{(l)} - h_{zero}^{(l)}\big).

* :func:`additive_hits`: the full-vocabulary argmax and label mass of that retrieval over (query layer, context
  layer, lambda), by linearity of the unembedding for an RMSNorm model, without the entropy and label logits that
  :func:`cgar_src.analysis.lens.additive_retrieval` also computes (small prompt batches keep the logits in cache);
* :func:`coupled_grid`: the accuracy and label mass of that retrieval for :math:`\bar c`, a norm-matched random
  direction and the norm-matched label-prior vector, with the baselines that need no vector and the limit
  :math:`\lambda \to \infty` (the decode of :math:`\bar c` alone), for ONE demonstration set;
* :func:`query_layer_hits`: the same retrieval at one coupling for every (query layer, context layer) pair;
* :func:`fixed_setting` and :func:`best_setting`: :math:`\bar c` at a (context layer, coupling) fixed before
  looking, or at its in-sample best, against the controls and the baselines, over S demonstration sets shown to the
  same queries (:class:`PooledSetting`): per-set accuracies (:func:`cgar_src.analysis.seeds.spread`) and exact
  paired tests with the query as the unit, on each query's outcome averaged over the sets
  (:func:`cgar_src.analysis.stats.paired_test`: McNemar for one set, the paired permutation test of the mean
  otherwise);
* :func:`verdict_values` and :func:`layer_verdicts`: the chapter's verdicts across datasets, shot counts and the
  fixed context layers.

The vector :math:`\bar c` is always computed on the queries it is scored on; the best setting of
:func:`best_setting` is chosen on them too (in-sample), the setting of :func:`fixed_setting` is not. Chapter
``11_referee_checks`` cross-fits the same comparison (:mod:`cgar_src.analysis.steering`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .._validate import indices, int_in_range, scalar
from ..lm import Unembed
from . import baselines, lens
from .seeds import Spread, spread
from .stats import Comparison, PermutationTest, accuracy_ci, fmt_ci, fmt_list, paired_test

__all__ = ["VECTORS", "additive_hits", "CoupledGrid", "coupled_grid", "query_layer_hits", "PooledSetting",
           "fixed_setting", "best_setting", "verdict_values", "verdict_of", "reason_of", "layer_verdicts"]

VECTORS = ("c_bar", "random", "label_prior")   # the context vector and its two norm-matched controls


@torch.no_grad()
def additive_hits(unembed: Unembed, h_zero: torch.Tensor, vector: torch.Tensor, label_token_ids: list[int], *,
                  lambdas: Sequence[float], context_layers: Sequence[int], query_layers: Sequence[int],
                  prompt_batch: int = 8, mass: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Full-vocabulary argmax and label mass of :math:`\mathrm{softmax}(W_U\,\mathrm{Norm}(h_{zero}^{(l')} +
    \lambda v^{(l)}))` (chapter 08, equation ``additive-retrieval``) for every query, query layer l', context layer l
    and coupling: ``h_zero`` ``(P, L+1, d)``, ``vector`` ``(L+1, d)`` (one vector for all queries); both results
    ``(P, Q, C, K)``. For an RMSNorm final norm :math:`\mathrm{Norm}(x) = \gamma\odot x/\sqrt{\|x\|^2/d+\epsilon}`
    (:func:`cgar_src.analysis.lens.rms_form`), by linearity,

    .. math:: W_U\mathrm{Norm}(h + \lambda v) = (z_h + \lambda z_v)/r, \quad z_h = W_U(\gamma\odot h),\;
       z_v = W_U(\gamma\odot v),\; r^2 = (\|h\|^2 + 2\lambda\, h\cdot v + \lambda^2\|v\|^2)/d + \epsilon,

    then the model's soft-cap (:meth:`~cgar_src.lm.unembed.Unembed.cap`): the numbers of
    :func:`cgar_src.analysis.lens.additive_retrieval` (to float32 round-off) without its entropy and label logits,
    over ``prompt_batch`` queries at a time. Any other final norm: that function itself. ``mass=False``: the argmax
    only (the label mass is ``None``), computed as :math:`\arg\max_v (z_h + \lambda z_v)_v` (the positive factor
    :math:`1/r` and the increasing soft-cap do not move it), without the softmax over the vocabulary."""
    n_layers = h_zero.shape[1] if h_zero.ndim == 3 else 0
    if h_zero.ndim != 3 or vector.shape != h_zero.shape[1:]:
        raise ValueError(f"h_zero must be (P, L+1, d) and vector (L+1, d) alike, got {tuple(h_zero.shape)} and "
                         f"{tuple(vector.shape)}")
    cl = indices(context_layers, "context_layers", n_layers, what="layer indices").tolist()
    ql = indices(query_layers, "query_layers", n_layers, what="layer indices").tolist()
    lam = [scalar(x, "lambdas") for x in lambdas]
    if not lam:
        raise ValueError("lambdas must be a non-empty list of finite numbers")
    int_in_range(prompt_batch, "prompt_batch", 1)
    rms = lens.rms_form(unembed)
    if rms is None:
        st = lens.additive_retrieval(unembed, h_zero, vector, label_token_ids, lambdas=lam, context_layers=cl,
                                     query_layers=ql)
        return st.argmax, st.label_mass if mass else None
    gain, eps = rms
    W = unembed.weight
    g = gain.to(W.device).double()
    labels = torch.as_tensor(label_token_ids, device=W.device)
    P, Q, C, K, d = h_zero.shape[0], len(ql), len(cl), len(lam), h_zero.shape[-1]
    arg = torch.zeros(P, Q, C, K, dtype=torch.long)
    lmass = torch.zeros(P, Q, C, K) if mass else None
    v = vector[cl].to(W.device).double()                                       # (C, d)
    zv = ((v * g).to(W.dtype) @ W.T).float()                                   # (C, V)
    vv = (v * v).sum(-1)                                                       # (C,)
    for q, l in enumerate(ql):
        h_all = h_zero[:, l].to(W.device).double()                             # (P, d)
        zh_all = ((h_all * g).to(W.dtype) @ W.T).float()                       # (P, V): one product, W read once
        for s0 in range(0, P, prompt_batch):
            hb = h_all[s0:s0 + prompt_batch]                                   # (b, d)
            zh = zh_all[s0:s0 + prompt_batch]                                  # (b, V), a view: never written
            hh, hv = (hb * hb).sum(-1), hb @ v.T                               # (b,), (b, C)
            sl = slice(s0, s0 + hb.shape[0])
            for j in range(C):
                for i, x in enumerate(lam):
                    if x == 0 and j > 0:          # lambda = 0 adds nothing: the same decode at every context layer
                        arg[sl, q, j, i] = arg[sl, q, 0, i]
                        if lmass is not None:
                            lmass[sl, q, j, i] = lmass[sl, q, 0, i]
                        continue
                    if lmass is None:
                        arg[sl, q, j, i] = torch.add(zh, zv[j], alpha=x).argmax(-1).cpu()
                        continue
                    r = torch.rsqrt((hh + 2 * x * hv[:, j] + x * x * vv[j]) / d + eps).float()
                    z = unembed.cap(torch.add(zh, zv[j], alpha=x).mul_(r[:, None]))
                    m, a = z.max(-1)
                    lab = z[:, labels]
                    lse = m + torch.log(z.sub_(m[:, None]).exp_().sum(-1))
                    arg[sl, q, j, i] = a.cpu()
                    lmass[sl, q, j, i] = torch.exp(lab - lse[:, None]).sum(-1).cpu()
    return arg, lmass


@dataclass
class CoupledGrid:
    """Additive retrieval of one dataset, shot count ``k`` and demonstration set. ``acc[name]`` and ``mass[name]``
    ``(P, C, K)``: per query, context layer and coupling, at the final query layer, for each vector of
    :data:`VECTORS` (``mass`` for the controls only when asked for); ``acc_all`` ``(P, Q, C, K)``: :math:`\\bar c` at every query layer; ``base``: per-query
    correctness ``(P,)`` of the baselines that need no vector, by display name; ``alone`` ``(C, P)``: the decode of
    :math:`\\bar c^{(l)}` alone (the limit :math:`\\lambda \\to \\infty`); ``labels`` ``(P,)``."""

    k: int
    acc: dict[str, torch.Tensor]
    mass: dict[str, torch.Tensor]
    acc_all: torch.Tensor
    base: dict[str, torch.Tensor]
    alone: torch.Tensor
    labels: torch.Tensor

    def best_over_lambda(self) -> torch.Tensor:
        """Mean accuracy of :math:`\\bar c` maximised over the coupling: ``(query layers, context layers)``."""
        return self.acc_all.mean(0).amax(-1)

    def concentrates(self) -> bool:
        """Some (context layer, coupling) puts more than half the mean probability mass on the label tokens."""
        return bool(self.mass["c_bar"].mean(0).max() > 0.5)


def coupled_grid(unembed: Unembed, h_zero: torch.Tensor, h_icl: torch.Tensor, labels: torch.Tensor,
                 label_token_ids: list[int], *, k: int, lambdas: Sequence[float], context_layers: Sequence[int],
                 query_layers: Sequence[int], generator: torch.Generator, pool: torch.Tensor,
                 h_cf: torch.Tensor | None = None, h_cf_zero: torch.Tensor | None = None,
                 prompt_batch: int = 8, control_mass: bool = True) -> CoupledGrid:
    r"""The additive retrieval of chapter 08 (equation ``additive-retrieval``) for zero-shot and ``k``-shot states
    ``(P, L+1, d)`` of the same queries under ONE demonstration set. :math:`\bar c` is
    :func:`cgar_src.analysis.lens.context_vector` (variant ``difference``); its controls are
    :func:`cgar_src.analysis.lens.norm_matched_random` (drawn from ``generator``) and
    :func:`cgar_src.analysis.baselines.label_prior_vector` with the norms of :math:`\bar c`, both at the final
    query layer only (all computed by :func:`additive_hits`). ``query_layers`` must hold the final layer L.
    Baselines: zero-shot, zero-shot restricted to the labels, k-shot prompting, the majority answer (the majority
    class of ``pool``, the demonstration pool's labels), and contextual calibration of zero-shot (``h_cf_zero``: the
    content-free zero-shot states) and of k-shot prompting (``h_cf``: the set's content-free prompt), each when
    given; ``h_cf``/``h_cf_zero`` are ``(P, L+1, d)`` (one row per query, e.g. the set's one prompt repeated) or
    ``(L+1, d)``. ``control_mass=False`` skips the controls' label mass (their accuracy needs no softmax over the
    vocabulary: about a third of the cost)."""
    if h_zero.ndim != 3 or h_icl.shape != h_zero.shape or h_zero.shape[0] != labels.shape[0]:
        raise ValueError(f"h_zero {tuple(h_zero.shape)} and h_icl {tuple(h_icl.shape)} must be (P, L+1, d) alike, "
                         f"with P = {labels.shape[0]} labels")
    for name, h in (("h_cf", h_cf), ("h_cf_zero", h_cf_zero)):
        if h is not None and h.shape not in (h_zero.shape, h_zero.shape[1:]):
            raise ValueError(f"{name} must have the shape of h_zero {tuple(h_zero.shape)} or "
                             f"{tuple(h_zero.shape[1:])}, got {tuple(h.shape)}")
    L = h_zero.shape[1] - 1
    if L not in query_layers:
        raise ValueError(f"query_layers must include the final layer {L}, got {list(query_layers)}")
    qi = list(query_layers).index(L)
    answers = torch.as_tensor(label_token_ids)[labels]
    hit = lambda s: s.correct(label_token_ids, labels)
    c_bar = lens.context_vector(h_icl, h_zero)
    vectors = {"c_bar": c_bar, "random": lens.norm_matched_random(c_bar, generator),
               "label_prior": baselines.label_prior_vector(unembed, label_token_ids, c_bar.norm(dim=-1))}
    grid = dict(lambdas=list(lambdas), context_layers=list(context_layers), prompt_batch=prompt_batch)
    acc, mass = {}, {}
    for name, v in vectors.items():   # the controls only at the final query layer
        arg, m = additive_hits(unembed, h_zero, v, label_token_ids, **grid,
                               query_layers=list(query_layers) if name == "c_bar" else [L],
                               mass=name == "c_bar" or control_mass)
        j = qi if name == "c_bar" else 0
        correct = (arg == answers[:, None, None, None]).double()
        acc[name] = correct[:, j]
        if m is not None:
            mass[name] = m[:, j]
        if name == "c_bar":
            acc_all = correct
    zero = lens.decode_stats(unembed, h_zero[:, L], label_token_ids)
    icl = lens.decode_stats(unembed, h_icl[:, L], label_token_ids)
    alone = lens.decode_stats(unembed, c_bar[list(context_layers)], label_token_ids)   # the limit lambda -> infinity
    base = {"zero-shot": hit(zero),
            "zero-shot, label-restricted": baselines.label_restricted_correct(zero.label_logits, labels),
            f"{k}-shot prompting": hit(icl), "majority answer": baselines.majority_correct(labels, reference=pool)}
    cf_logits = lambda h: lens.decode_stats(unembed, h[..., L, :], label_token_ids).label_logits
    if h_cf_zero is not None:
        base["zero-shot, calibrated"] = baselines.calibrated_correct(zero.label_logits, cf_logits(h_cf_zero), labels)
    if h_cf is not None:
        base[f"{k}-shot, calibrated"] = baselines.calibrated_correct(icl.label_logits, cf_logits(h_cf), labels)
    return CoupledGrid(k=k, acc=acc, mass=mass, acc_all=acc_all, base=base,
                       alone=(alone.argmax[:, None] == answers[None]).double(), labels=labels)


def query_layer_hits(unembed: Unembed, h_zero: torch.Tensor, h_icl: torch.Tensor, labels: torch.Tensor,
                     label_token_ids: list[int], *, context_layers: Sequence[int], query_layers: Sequence[int],
                     lam: float, prompt_batch: int = 8) -> torch.Tensor:
    r"""Per-query correctness ``(P, Q, C)`` of the additive retrieval of :math:`\bar c^{(l)}` (variant
    ``difference``, from ``h_icl`` and ``h_zero`` ``(P, L+1, d)``) added to the zero-shot state at every query layer
    l' of ``query_layers`` and context layer l of ``context_layers``, at the one coupling ``lam`` (chapter 08's
    query-layer map, read at a coupling fixed before looking; :func:`additive_hits`)."""
    if h_zero.ndim != 3 or h_icl.shape != h_zero.shape or h_zero.shape[0] != labels.shape[0]:
        raise ValueError(f"h_zero {tuple(h_zero.shape)} and h_icl {tuple(h_icl.shape)} must be (P, L+1, d) alike, "
                         f"with P = {labels.shape[0]} labels")
    arg, _ = additive_hits(unembed, h_zero, lens.context_vector(h_icl, h_zero), label_token_ids, lambdas=[lam],
                           context_layers=context_layers, query_layers=query_layers, prompt_batch=prompt_batch)
    return (arg[..., 0] == torch.as_tensor(label_token_ids)[labels][:, None, None]).double()


def _grids(grid: CoupledGrid | Sequence[CoupledGrid]) -> list[CoupledGrid]:
    grids = [grid] if isinstance(grid, CoupledGrid) else list(grid)
    if not grids or not all(isinstance(g, CoupledGrid) for g in grids):
        raise ValueError("grids must be a CoupledGrid or a non-empty list of them (one per demonstration set)")
    g0 = grids[0]
    for g in grids[1:]:
        if g.k != g0.k or g.acc["c_bar"].shape != g0.acc["c_bar"].shape or not torch.equal(g.labels, g0.labels):
            raise ValueError("grids must score the same queries with the same shot count and grid (one per set)")
        if set(g.base) != set(g0.base):
            raise ValueError(f"grids must hold the same baselines, got {sorted(g0.base)} and {sorted(g.base)}")
    return grids


@dataclass
class PooledSetting:
    """:math:`\\bar c` at one (context layer, coupling) over S demonstration sets shown to the same queries, against
    the controls and the baselines.

    ``layer``/``lam``: indices of the setting; ``prior_layer``/``prior_lam``: where the label-prior vector is read
    (the same setting when it was fixed before looking, its own in-sample best otherwise); ``selection``:
    ``"fixed"`` or ``"in-sample"``; ``rows``: per-set, per-query correctness ``(S, P)`` by display name (the
    baselines, then the vectors; rows that need no set repeat); ``best_simple``: the baseline of highest mean
    accuracy among those that need no vector (ties: the first listed); ``paired``: exact paired tests with the query
    as the unit, on each query's correctness averaged over the sets (:func:`cgar_src.analysis.stats.paired_test`),
    of :math:`\\bar c` against k-shot prompting, the label-restricted zero-shot answer, the label-prior vector, the
    majority answer and the strongest simple baseline."""

    grids: list[CoupledGrid]
    context_layers: list[int]
    lambdas: list[float]
    layer: int
    lam: int
    prior_layer: int
    prior_lam: int
    selection: str
    rows: dict[str, torch.Tensor] = field(repr=False)
    paired: dict[str, Comparison | PermutationTest]
    best_simple: str

    @property
    def k(self) -> int:
        return self.grids[0].k

    @property
    def n_sets(self) -> int:
        return len(self.grids)

    @property
    def best(self) -> torch.Tensor:
        """Per-query correctness of :math:`\\bar c` at this setting, averaged over the sets ``(P,)``."""
        return self.rows[self.c_bar_row].mean(0)

    @property
    def c_bar_row(self) -> str:
        return next(n for n in self.rows if n.startswith("c_bar, "))

    def spread(self, name: str) -> Spread:
        """Accuracy of row ``name`` per set: its mean, smallest and largest value over the sets."""
        if name not in self.rows:
            raise ValueError(f"name must be one of {list(self.rows)}, got {name!r}")
        return spread(self.rows[name].mean(1).tolist())

    def concentrates(self) -> bool:
        """Some (context layer, coupling) puts more than half the mean probability mass on the label tokens (mass
        averaged over queries and sets)."""
        return bool(torch.stack([g.mass["c_bar"].mean(0) for g in self.grids]).mean(0).max() > 0.5)

    def setting_text(self) -> str:
        """``"c:25, lambda 1"``: the setting of :math:`\\bar c`."""
        return f"c:{self.context_layers[self.layer]}, lambda {self.lambdas[self.lam]:g}"

    def lines(self, dataset: str) -> list[str]:
        """The printed table: every row's accuracy (one set, or a row that needs no set: with its Wilson 95%
        interval; otherwise its mean and range over the sets), then the pooled paired tests."""
        def cell(v: torch.Tensor) -> str:
            same = bool((v == v[:1]).all())
            return fmt_ci(accuracy_ci(v[0])) if same else self.spread_of(v).fmt(3)

        sets = f"{self.n_sets} demonstration set(s)"
        return ([f"{dataset}, {self.k} demonstration(s) per class, {sets}, {self.selection} setting"]
                + [f"  {name:>52}: {cell(v)}" for name, v in self.rows.items()]
                + [f"  pooled paired, c_bar {n.replace('_', ' ')}"
                   + (f" ({self.best_simple})" if n == "vs_best_simple" else "") + f": {c}"
                   for n, c in self.paired.items()])

    @staticmethod
    def spread_of(v: torch.Tensor) -> Spread:
        return spread(v.mean(1).tolist())

    def record(self) -> dict:
        """The JSON record of this dataset, shot count and setting (results file of chapter 08)."""
        g = self.grids
        mean_grid = lambda f: torch.stack([f(x) for x in g]).mean(0).round(decimals=4)
        return {"selection": self.selection, "n_sets": self.n_sets,
                "context_layer": self.context_layers[self.layer], "lambda": self.lambdas[self.lam],
                "label_prior_setting": [self.context_layers[self.prior_layer], self.lambdas[self.prior_lam]],
                "accuracy_per_set": {n: v.mean(1).tolist() for n, v in self.rows.items()},
                "paired": {n: vars(c) | {"test": c.test} for n, c in self.paired.items()},
                "strongest_simple_baseline": self.best_simple,
                "accuracy_at_largest_lambda": [x.acc["c_bar"][:, self.layer, -1].mean().item() for x in g],
                "mean_accuracy_grid": mean_grid(lambda x: x.acc["c_bar"].mean(0)),
                "mean_mass_grid": mean_grid(lambda x: x.mass["c_bar"].mean(0)),
                "random_accuracy_grid": mean_grid(lambda x: x.acc["random"].mean(0)),
                "label_prior_accuracy_grid": mean_grid(lambda x: x.acc["label_prior"].mean(0)),
                "best_accuracy_query_x_context_first_set": g[0].best_over_lambda().round(decimals=4)}

    def glue_values(self, dataset: str, tag: str) -> dict:
        """The numbers the text cites, by glue name ``{dataset}_{tag}_...`` without the ``coupled_`` prefix: the
        pooled paired tests as text, accuracies as their spread over the sets (:meth:`cgar_src.analysis.seeds.Spread.fmt`, 3 decimals; one
        set: the value). The random vector's best accuracy over the grid (``rand_max``, the grid averaged over the
        sets) and its accuracy at this setting (``ctrl``) only when ``tag`` is not ``"kmax"``."""
        g, k = self.grids, self.k
        out: dict = {f"{dataset}_{tag}_{n}": str(c) for n, c in self.paired.items()}
        out[f"{dataset}_{tag}_best_simple"] = self.best_simple
        per_set = lambda f: spread([f(x).mean().item() for x in g]).fmt(3)
        j, i, jp, ip = self.layer, self.lam, self.prior_layer, self.prior_lam
        means = {"add": lambda x: x.acc["c_bar"][:, j, i], "icl": lambda x: x.base[f"{k}-shot prompting"],
                 "restricted": lambda x: x.base["zero-shot, label-restricted"],
                 "prior": lambda x: x.acc["label_prior"][:, jp, ip], "lam10": lambda x: x.acc["c_bar"][:, j, -1],
                 "alone": lambda x: x.alone[j], "majority": lambda x: x.base["majority answer"]}
        if tag != "kmax":
            means["ctrl"] = lambda x: x.acc["random"][:, j, i]
        out |= {f"{dataset}_{tag}_{n}": per_set(f) for n, f in means.items()}
        if tag != "kmax":
            out[f"{dataset}_{tag}_rand_max"] = round(
                torch.stack([x.acc["random"].mean(0) for x in g]).mean(0).max().item(), 3)
        return out


def _pooled(grids: list[CoupledGrid], cl: list[int], lam: list[float], j: int, i: int, jp: int, ip: int,
            selection: str, seed: int) -> PooledSetting:
    stack = lambda f: torch.stack([f(x).double() for x in grids])          # (S, P)
    rows = {n: stack(lambda x, n=n: x.base[n]) for n in grids[0].base}
    tag = "best" if selection == "in-sample" else "fixed"
    rows[f"c_bar, {tag} (c:{cl[j]}, lambda {lam[i]:g})"] = stack(lambda x: x.acc["c_bar"][:, j, i])
    rows["label-prior vector, same setting"] = stack(lambda x: x.acc["label_prior"][:, j, i])
    if (jp, ip) != (j, i):
        rows[f"label-prior vector, its best (c:{cl[jp]}, lambda {lam[ip]:g})"] = stack(
            lambda x: x.acc["label_prior"][:, jp, ip])
    rows["random vector, same setting"] = stack(lambda x: x.acc["random"][:, j, i])
    rows[f"c_bar alone (lambda -> infinity), c:{cl[j]}"] = stack(lambda x: x.alone[j])
    mean = lambda n: rows[n].mean(0)
    best = rows[f"c_bar, {tag} (c:{cl[j]}, lambda {lam[i]:g})"].mean(0)
    simple = max(grids[0].base, key=lambda n: float(rows[n].mean()))   # the strongest baseline needing no vector
    prior = stack(lambda x: x.acc["label_prior"][:, jp, ip]).mean(0)
    k = grids[0].k
    paired = {"vs_prompting": paired_test(best, mean(f"{k}-shot prompting"), seed=seed),
              "vs_restricted": paired_test(best, mean("zero-shot, label-restricted"), seed=seed),
              "vs_label_prior": paired_test(best, prior, seed=seed),
              "vs_majority": paired_test(best, mean("majority answer"), seed=seed),
              "vs_best_simple": paired_test(best, mean(simple), seed=seed)}
    return PooledSetting(grids=grids, context_layers=cl, lambdas=lam, layer=j, lam=i, prior_layer=jp, prior_lam=ip,
                         selection=selection, rows=rows, paired=paired, best_simple=simple)


def _check_axes(grids: list[CoupledGrid], context_layers: Sequence[int], lambdas: Sequence[float]) -> None:
    C, K = len(context_layers), len(lambdas)
    if grids[0].acc["c_bar"].shape[1:] != (C, K):
        raise ValueError(f"grid has {tuple(grids[0].acc['c_bar'].shape[1:])} (context layers, lambdas); "
                         f"context_layers and lambdas give {(C, K)}")


def fixed_setting(grids: CoupledGrid | Sequence[CoupledGrid], *, context_layers: Sequence[int],
                  lambdas: Sequence[float], context_layer: int, lam: float, seed: int = 0) -> PooledSetting:
    """:math:`\\bar c` at the (``context_layer``, ``lam``) fixed before looking (both must be on the grid), the
    label-prior and random vectors at the same setting, over the sets of ``grids`` (:class:`PooledSetting`)."""
    grids = _grids(grids)
    _check_axes(grids, context_layers, lambdas)
    cl, lm = list(context_layers), [float(x) for x in lambdas]
    if context_layer not in cl:
        raise ValueError(f"context_layer must be one of the grid's context layers {cl}, got {context_layer!r}")
    if not isinstance(lam, (int, float)) or float(lam) not in lm:
        raise ValueError(f"lam must be one of the grid's couplings {lm}, got {lam!r}")
    j, i = cl.index(context_layer), lm.index(float(lam))
    return _pooled(grids, cl, lm, j, i, j, i, "fixed", seed)


def best_setting(grids: CoupledGrid | Sequence[CoupledGrid], *, context_layers: Sequence[int],
                 lambdas: Sequence[float], seed: int = 0) -> PooledSetting:
    """The in-sample best (context layer, coupling) of :math:`\\bar c` and, separately, of the label-prior vector
    (first maximum, in row-major order, of the accuracy averaged over queries and sets), over the sets of ``grids``
    (:class:`PooledSetting`; chosen on the queries it is scored on, so optimistic)."""
    grids = _grids(grids)
    _check_axes(grids, context_layers, lambdas)
    K = len(lambdas)
    mean = lambda name: torch.stack([g.acc[name].mean(0) for g in grids]).mean(0)
    j, i = divmod(int(mean("c_bar").argmax()), K)
    jp, ip = divmod(int(mean("label_prior").argmax()), K)
    return _pooled(grids, list(context_layers), list(lambdas), j, i, jp, ip, "in-sample", seed)


def verdict_values(settings: Mapping[tuple[str, int], PooledSetting]) -> dict[str, str]:
    """The chapter's verdicts over ``settings[dataset, k]``, by glue name without the ``coupled_`` prefix: where
    :math:`\\bar c` is really better (or worse) than each reference (pooled paired tests), where it concentrates
    more than half the mass on the labels, and the verdict ladder of
    :func:`cgar_src.analysis.baselines.additive_verdict` per dataset and shot count (``verdict``, grouped by verdict
    in the order of :data:`cgar_src.analysis.baselines.VERDICTS`; ``verdict_detail``, each with its reason, every
    rung stated against the strongest simple baseline)."""
    def where(test: str, sign: int = 1) -> str:
        return fmt_list([f"{ds} ({k}-shot)" for (ds, k), s in settings.items()
                       if (s.paired[test].better if sign > 0 else s.paired[test].worse)])

    verdict = {f"{ds} k={k}": verdict_of(s) for (ds, k), s in settings.items()}
    text = "; ".join(f"{v} on {', '.join(n for n in verdict if verdict[n] == v)}"
                     for v in baselines.VERDICTS if v in verdict.values())
    return {"beats_prompting": where("vs_prompting"), "loses_prompting": where("vs_prompting", -1),
            "beats_restricted": where("vs_restricted"), "loses_restricted": where("vs_restricted", -1),
            "beats_prior": where("vs_label_prior"), "loses_prior": where("vs_label_prior", -1),
            "beats_majority": where("vs_majority"), "beats_best_simple": where("vs_best_simple"),
            "loses_best_simple": where("vs_best_simple", -1),
            "concentrates": fmt_list([f"{ds} ({k}-shot)" for (ds, k), s in settings.items() if s.concentrates()]),
            "verdict": text,
            "verdict_detail": "; ".join(f"{ds} ({k}-shot): {verdict_of(s)}, {reason_of(s)}"
                                        for (ds, k), s in settings.items())}


def layer_verdicts(settings: Mapping[tuple[str, int, int | str], PooledSetting]) -> dict[str, str]:
    """The verdict ladder at every fixed setting, ``settings[dataset, k, where]`` (``where`` a context layer, shown
    as ``c:25``, or a label such as ``"c:25, lambda 1"``), by glue name without the ``coupled_`` prefix:
    ``fixed_verdicts`` (per dataset and shot count, the settings grouped by verdict:
    ``"sst2 (1-shot): partly at c:25, c:30; label-set prior only at c:20"``), ``fixed_changes`` (the datasets whose
    verdict changes across the fixed settings, or ``"none"``) and ``fixed_stable`` (those whose verdict does not,
    with it)."""
    if not settings:
        raise ValueError("settings must hold at least one (dataset, k, context_layer) -> PooledSetting")
    by: dict[tuple[str, int], dict[str, str]] = {}
    for (ds, k, where), s in settings.items():
        by.setdefault((ds, k), {})[f"c:{where}" if isinstance(where, int) else str(where)] = verdict_of(s)
    parts, changes, stable = [], [], []
    for (ds, k), v in by.items():
        name = f"{ds} ({k}-shot)"
        groups = [f"{w} at {', '.join(x for x in v if v[x] == w)}" for w in baselines.VERDICTS if w in v.values()]
        parts.append(f"{name}: {'; '.join(groups)}")
        (changes if len(set(v.values())) > 1 else stable).append(
            name if len(set(v.values())) > 1 else f"{name} ({next(iter(v.values()))})")
    return {"fixed_verdicts": "; ".join(parts), "fixed_changes": fmt_list(changes), "fixed_stable": fmt_list(stable)}


def verdict_of(setting: PooledSetting) -> str:
    """The verdict ladder (:func:`cgar_src.analysis.baselines.additive_verdict`) of one setting, against the
    majority answer, the label-prior vector and the strongest simple baseline (pooled paired tests)."""
    c = setting.paired
    return baselines.additive_verdict(c["vs_majority"], c["vs_label_prior"], c["vs_best_simple"])


def reason_of(setting: PooledSetting) -> str:
    """Why :func:`verdict_of` gave its verdict (:func:`cgar_src.analysis.baselines.verdict_reason`)."""
    c = setting.paired
    return baselines.verdict_reason(c["vs_majority"], c["vs_label_prior"], c["vs_best_simple"], setting.best_simple)
