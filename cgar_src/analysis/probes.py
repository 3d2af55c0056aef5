r"""Linear separability of hidden states against its baselines (book chapter ``10_separability``, the paper's
Figure 7).

* :func:`probe_correct`: a logistic regression (scikit-learn) on one layer's last-token states, scored held-out by
  k-fold cross-validation: every query is predicted by a probe that never saw it. Its accuracy says how much label
  information is *linearly decodable* at that layer.
* :func:`lexical_probe_correct`: the same folds, but a bag-of-words (TF-IDF) logistic regression on the query
  *text*: the baseline a hidden-state probe has to beat before one can say the model computed anything the words
  do not already give away.
* :func:`label_logits`: the logit lens restricted to the label tokens, :math:`z^{(l)}_y = w_y^\top
  \mathrm{Norm}(h^{(l)})`; its argmax says how much of the label is already *aligned with the unembedding*, i.e.
  readable by the model's own memories.
* :func:`centred_lens_correct`: the same readout with each layer's label bias removed, cross-fitted on the probe's
  folds: :math:`\hat y_i^{(l)} = \arg\max_y \big(z^{(l)}_{iy} - \bar z^{(l)}_{y}\big)` with :math:`\bar z^{(l)}_y`
  the mean over the queries of the *other* folds. A raw lens that answers one constant label at a layer (its
  accuracy then equals that label's base rate) is told apart from a layer that holds no aligned label information.
* :func:`onset_layer`: the first layer at which a readout really beats every baseline (the exact paired test of
  :func:`cgar_src.analysis.stats.paired_test` rejects at 0.05 in the readout's favour: McNemar for 0/1 outcomes, the
  paired permutation test of the mean for outcomes averaged over demonstration sets).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .._validate import indices, int_in_range, positive
from ..lm import Unembed
from .stats import ALPHA, permutation_test
from .steering import folds_of

__all__ = ["probe_correct", "lexical_probe_correct", "label_logits", "centred_lens_correct", "really_beats",
           "onset_layer"]

LEXICAL_CS = (0.1, 1.0, 10.0, 100.0)  # the grid the lexical baseline chooses its L2 penalty from, inside each fold


def _labels(labels, n: int | None = None) -> np.ndarray:
    y = indices(labels, "labels", what="class indices")
    if n is not None and y.numel() != n:
        raise ValueError(f"labels must have one entry per query ({n}), got {y.numel()}")
    return y.numpy()


def _cv(n: int, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) index pairs every readout of this module uses, as NumPy arrays for scikit-learn:
    :func:`cgar_src.analysis.steering.folds_of` with ``scheme="kfold"`` (scikit-learn's ``KFold(n_folds,
    shuffle=True, random_state=seed)`` partition; not stratified, so rare classes need not appear in every fold)."""
    return [(fit.numpy(), ev.numpy()) for fit, ev in folds_of(n, n_folds, seed, scheme="kfold")]


def _row_space(A: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``(d, r)`` of the row space of ``A`` ``(n, d)`` (singular values above numpy's rank
    threshold, ``max(n, d) * eps * s_max``); ``(d, 0)`` when ``A`` is 0."""
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    keep = s > max(A.shape) * np.finfo(A.dtype).eps * (s[0] if s.size else 0.0)
    return vt[keep].T


def probe_correct(states: torch.Tensor, labels: torch.Tensor, *, n_folds: int = 5, C: float = 1.0, seed: int = 0,
                  tol: float = 1e-8, progress: bool = True) -> torch.Tensor:
    r"""Held-out correctness ``(P, L+1)`` of a per-layer logistic-regression probe on ``states`` ``(P, L+1, d)``:
    standardised features (scaled on each fold's training queries), L2 penalty ``C``, predictions cross-validated on
    :func:`cgar_src.analysis.steering.folds_of` (``scheme="kfold"``).

    The probe is solved to its exact optimum, so that its predictions depend on the states alone, not on a solver's
    stopping point (with lbfgs stopped at scikit-learn's default tolerance, round-off of 1e-6 in the states, the
    difference between two machines, changes about 12 of 9,000 predictions on chapter 10's TREC states; here none,
    ``tests/test_probes.py``). The L2-penalised optimum lies in the span of the training rows (the stationarity
    condition :math:`w = -C\,X_{train}^\top r`), so with :math:`V` an orthonormal basis of that span
    (``_row_space``, at most as many columns as training queries) the problem in the coordinates
    :math:`X V` has the same optimum :math:`w = V u` and the same penalty :math:`\|w\| = \|u\|`: it is solved there by
    Newton's method (scikit-learn's ``newton-cg``, gradient tolerance ``tol``), a few iterations on a problem of
    n_train features instead of d. A layer whose training rows are all equal (the embedding of the prompt's last
    token, the same for every query) has an empty span: the probe is its intercept alone and answers the training
    queries' most frequent class."""
    if states.ndim != 3 or states.shape[0] != torch.as_tensor(labels).shape[0]:
        raise ValueError(f"states must be (P, L+1, d) with P = len(labels) = {torch.as_tensor(labels).shape[0]}, "
                         f"got {tuple(states.shape)}")
    y = _labels(labels)
    cv = _cv(len(y), n_folds, seed)
    positive(C, "C")
    positive(tol, "tol")
    X_all = states.double().numpy()
    pred = np.empty(states.shape[:2], dtype=y.dtype)
    with threadpool_limits(1):  # small dense problems: one BLAS thread is faster and does not fight other work
        for train, test in tqdm(cv, desc="probes", unit="fold", disable=not progress):
            if len(np.unique(y[train])) == 1:        # a fold with one class: predict it (LogisticRegression refuses)
                pred[test] = y[train][0]
                continue
            for l in range(states.shape[1]):
                scaler = StandardScaler().fit(X_all[train, l])
                A, B = scaler.transform(X_all[train, l]), scaler.transform(X_all[test, l])
                V = _row_space(A)
                if V.shape[1] == 0:
                    pred[test, l] = np.bincount(y[train]).argmax()
                    continue
                clf = LogisticRegression(C=C, solver="newton-cg", tol=tol, max_iter=200).fit(A @ V, y[train])
                pred[test, l] = clf.predict(B @ V)
    return torch.from_numpy((pred == y[:, None]).astype(np.float32))


def _lexical_model(C: float):
    # word unigrams and bigrams, sublinear term frequency, L2-normalised rows; fitted inside each training fold only
    return make_pipeline(TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(C=C, max_iter=1000))


def _fit_predict(C: float, texts: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    if len(np.unique(y[train])) == 1:                 # a fold with one class: predict it (LogisticRegression refuses)
        return np.full(len(test), y[train][0])
    return _lexical_model(C).fit(texts[train], y[train]).predict(texts[test])


def lexical_probe_correct(texts: list[str], labels, *, n_folds: int = 5, seed: int = 0, Cs=LEXICAL_CS,
                          inner_folds: int = 3) -> torch.Tensor:
    r"""Held-out correctness ``(P,)`` of a bag-of-words baseline on the query texts: TF-IDF of word uni- and
    bigrams, then an L2 logistic regression, on the same folds as :func:`probe_correct`. Its penalty is
    chosen per outer fold from ``Cs`` by an inner ``inner_folds``-fold cross-validation on that fold's training
    queries only (nested, so no query ever informs its own prediction): the baseline is given its best chance."""
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings (the query texts)")
    y = _labels(labels, len(texts))
    cv = _cv(len(y), n_folds, seed)
    Cs = tuple(Cs)
    if not Cs:
        raise ValueError("Cs must hold at least one penalty")
    for c in Cs:
        positive(c, "Cs")
    int_in_range(inner_folds, "inner_folds", 2)
    X = np.asarray(texts, dtype=object)
    pred = np.empty(len(y), dtype=np.int64)
    with threadpool_limits(1):
        _nested(X, y, cv, Cs, inner_folds, seed, pred)
    return torch.from_numpy((pred == y).astype(np.float32))


def _nested(X: np.ndarray, y: np.ndarray, cv, Cs: tuple, inner_folds: int, seed: int, pred: np.ndarray) -> None:
    for train, test in cv:
        if len(train) < inner_folds:
            raise ValueError(f"inner_folds={inner_folds} exceeds the {len(train)} training queries of a fold")
        inner = _cv(len(train), inner_folds, seed)
        score = [np.mean(np.concatenate([_fit_predict(C, X[train], y[train], tr, te) == y[train][te]
                                         for tr, te in inner])) for C in Cs]
        best = Cs[int(np.argmax(score))]               # ties: the smallest C (strongest penalty) listed first
        pred[test] = _fit_predict(best, X, y, train, test)


def label_logits(unembed: Unembed, states: torch.Tensor, label_token_ids: list[int]) -> torch.Tensor:
    r"""Logit lens on the label tokens only: :math:`z_y = w_y^\top \mathrm{Norm}_{final}(h)` for states
    ``(..., d)``, then the model's final soft-cap :math:`c\tanh(z_y/c)` where it has one
    (:meth:`~cgar_src.lm.unembed.Unembed.cap`); returns ``(..., n_labels)`` in float32 (the label columns of
    :func:`cgar_src.analysis.lens.decode_stats`, without the full-vocabulary pass)."""
    W = unembed.weight
    if states.ndim < 1 or states.shape[-1] != W.shape[1]:
        raise ValueError(f"states must end in the hidden size {W.shape[1]}, got {tuple(states.shape)}")
    ids = indices(label_token_ids, "label_token_ids", W.shape[0], what="token ids")
    with torch.no_grad():
        rows = W[ids.to(W.device)]
        return unembed.cap((unembed.normalize(states) @ rows.T).float()).cpu()


def centred_lens_correct(label_logits: torch.Tensor, labels, *, n_folds: int = 5, seed: int = 0) -> torch.Tensor:
    r"""Held-out correctness of the bias-corrected lens readout :math:`\arg\max_y (z_{iy} - \bar z_y)`, where
    :math:`\bar z_y` is label y's mean logit over the training queries of query i's fold (the folds of
    :func:`probe_correct`; no labels are used, only the queries' own logits). ``label_logits`` is ``(P, n_labels)``
    or ``(P, L+1, n_labels)`` (then every layer is centred separately); returns ``(P,)`` or ``(P, L+1)``."""
    z = torch.as_tensor(label_logits, dtype=torch.float64)
    if z.ndim not in (2, 3):
        raise ValueError(f"label_logits must be (P, n_labels) or (P, L+1, n_labels), got {tuple(z.shape)}")
    y = _labels(labels, z.shape[0])
    if int(y.max()) >= z.shape[-1]:
        raise ValueError(f"labels reach class {int(y.max())} but label_logits has only {z.shape[-1]} label columns")
    if not torch.isfinite(z).all():
        raise ValueError("label_logits must be finite")
    centred = torch.empty_like(z)
    for train, test in _cv(z.shape[0], n_folds, seed):
        centred[test] = z[test] - z[train].mean(0, keepdim=True)
    return (centred.argmax(-1) == torch.from_numpy(y).reshape(-1, *[1] * (z.ndim - 2))).float()


def really_beats(a, b, *, seed: int = 0) -> bool:
    r"""Whether A really beats B on the same queries: the decision ``better`` of
    :func:`cgar_src.analysis.stats.paired_test`. For 0/1 outcomes that is McNemar's exact test (with
    :math:`d_i = a_i - b_i`: :math:`n_+ > n_-` and the two-sided binomial test of :math:`n_+` in :math:`n_+ + n_-`
    trials rejects at 0.05), computed here without its bootstrap interval (onset scans make hundreds of such
    decisions); for outcomes averaged over demonstration sets, the paired permutation test of the mean difference
    (:func:`cgar_src.analysis.stats.permutation_test`, seeded with ``seed``), run only when the mean difference is
    positive (otherwise A cannot really beat B), and only where two screens leave its decision open: Hoeffding's
    bound on the sign-flip tail below 0.01 (it rejects), a normal z-score below 1 (it does not)."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.shape != y.shape or x.numel() == 0:
        raise ValueError(f"a and b must score the same non-empty set of queries, got {x.numel()} and {y.numel()}")
    d = x - y
    binary = lambda t: bool(((t == 0) | (t == 1)).all())
    if binary(x) and binary(y):
        n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
        return n_pos > n_neg and float(binomtest(n_pos, n_pos + n_neg, 0.5).pvalue) < ALPHA
    mean, ss = float(d.mean()), float((d * d).sum())
    if mean <= 0:
        return False
    n = d.numel()
    # Screens that settle the permutation test's decision without drawing the permutations. Hoeffding's bound on
    # the sign-flip distribution, P(|sum e_i d_i| >= T) <= 2 exp(-T^2 / (2 sum d_i^2)), T = n |mean|: below 0.01
    # the test (20000 draws) rejects at 0.05 but with a negligible chance; a normal z below 1 (p about 0.32)
    # leaves it far from rejecting.
    T2 = (n * mean) ** 2
    if 2 * math.exp(-T2 / (2 * ss)) < 0.01:
        return True
    if T2 < ss:                        # z = n |mean| / sqrt(sum d_i^2) < 1
        return False
    return permutation_test(d, seed=seed).better


def onset_layer(correct: torch.Tensor, baselines: list, *, seed: int = 0) -> int | None:
    r"""The first layer :math:`l` at which the readout ``correct`` ``(P, L+1)`` *really* beats every baseline: for
    each baseline (``(P,)``, the same at every layer, or ``(P, L+1)``), the exact paired test of :math:`a^{(l)}`
    against :math:`b^{(l)}` rejects at level 0.05 in the readout's favour (:func:`really_beats`: McNemar for 0/1
    outcomes, the paired permutation test of the mean for per-query means over demonstration sets, seeded with
    ``seed``). ``None`` when no layer does. A scan over layers: one layer passing by chance is likelier than at a
    single pre-chosen layer."""
    a = torch.as_tensor(correct)
    if a.ndim != 2:
        raise ValueError(f"correct must be (P, L+1) per-query, per-layer correctness, got {tuple(a.shape)}")
    if not baselines:
        raise ValueError("baselines must be a non-empty list of correctness vectors (P,) or (P, L+1)")
    bs = []
    for b in baselines:
        b = torch.as_tensor(b)
        if b.shape not in (a.shape[:1], a.shape):
            raise ValueError(f"every baseline must have shape {tuple(a.shape[:1])} or {tuple(a.shape)}, got {tuple(b.shape)}")
        bs.append(b)
    for l in range(a.shape[1]):
        if all(really_beats(a[:, l], b if b.ndim == 1 else b[:, l], seed=seed) for b in bs):
            return l
    return None
