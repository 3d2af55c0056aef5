r"""Linear separability of hidden states (book chapter ``10_separability``, the paper's Figure 7).

A probe is a logistic regression (scikit-learn) on one layer's last-token states, scored held-out by k-fold
cross-validation: every query is predicted by a probe that never saw it. Its accuracy says how much label
information is *linearly decodable* at that layer; the logit-lens label accuracy (argmax of the label tokens'
logits) says how much of it is already *aligned with the unembedding*, i.e. readable by the model's own memories.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ._validate import int_in_range, positive

__all__ = ["probe_correct"]


def probe_correct(states: torch.Tensor, labels: torch.Tensor, *, n_folds: int = 5, C: float = 1.0, seed: int = 0,
                  progress: bool = True) -> torch.Tensor:
    """Held-out correctness ``(P, L+1)`` of a per-layer logistic-regression probe on ``states`` ``(P, L+1, d)``:
    standardised features, L2 penalty ``C``, ``n_folds``-fold cross-validated predictions (shuffled, seeded; not
    stratified, so rare classes need not appear in every fold)."""
    if states.ndim != 3 or states.shape[0] != labels.shape[0]:
        raise ValueError(f"states must be (P, L+1, d) with P = len(labels) = {labels.shape[0]}, got {tuple(states.shape)}")
    int_in_range(n_folds, "n_folds", 2, labels.shape[0], " (the number of queries)")
    positive(C, "C")
    y = labels.numpy()
    cv = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    out = torch.zeros(states.shape[:2])
    for l in tqdm(range(states.shape[1]), desc="probes", unit="layer", disable=not progress):
        X = states[:, l].double().numpy()
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        pred = cross_val_predict(clf, X, y, cv=cv)
        out[:, l] = torch.from_numpy((pred == y).astype(np.float32))
    return out
