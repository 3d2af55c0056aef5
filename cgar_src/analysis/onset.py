r"""Onset scans: the first layer at which a readout *really* beats its baselines (book chapter ``10_separability``,
the paper's Figure 7 "separability early, alignment late").

For per-query, per-layer correctness :math:`a^{(l)}_i \in \{0, 1\}` of a readout and baselines :math:`b_i` the onset is

.. math:: l^\star = \min\{\,l : \text{for every baseline } b,\ a^{(l)} \text{ really beats } b\,\},

"really beats" meaning that the exact McNemar test of :func:`cgar_src.analysis.stats.compare` rejects at level 0.05
and more queries favour the readout (``None`` when no layer qualifies; the scan itself is
:func:`cgar_src.analysis.probes.onset_layer`). Chapter 10 scans three readouts: the linear probe against
the bag of words *and* the majority class (separability), the centred logit lens against the majority class
(bias-corrected alignment) and the raw lens against the majority class. "Separability before alignment" holds in a
setting when both onsets exist and the probe's comes strictly before the centred lens's (:attr:`Onsets.ordered`); a
setting in which the centred lens never qualifies has no alignment for separability to precede, and is counted
apart (:attr:`Onsets.vacuous`), never as support. A scan over many layers favours early onsets (one layer can pass by chance), so onsets read as upper
bounds on "how early" are, if anything, too early.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .probes import onset_layer

__all__ = ["Onsets", "readout_onsets", "precedes", "onset_text"]


def precedes(first: int | None, second: int | None) -> bool:
    """``first`` onset strictly before ``second``: True iff ``first`` exists and ``second`` is ``None`` (never) or
    later. A missing first onset never precedes anything."""
    for name, v in (("first", first), ("second", second)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be a layer index >= 0 or None, got {v!r}")
    return first is not None and (second is None or first < second)


def onset_text(layer: int | None) -> str:
    """``"layer 7"``, or ``"none"`` when no layer qualified (as the chapter's text cites an onset)."""
    return "none" if layer is None else f"layer {layer}"


@dataclass(frozen=True)
class Onsets:
    """Onset layers of one setting (``None``: no layer qualifies)."""

    probe: int | None      # the probe really beats the bag of words and the majority class
    centred: int | None    # the centred lens really beats the majority class
    raw: int | None        # the raw lens really beats the majority class

    @property
    def separability_first(self) -> bool:
        """The probe's onset comes strictly before the centred lens's, or the centred lens has none
        (:func:`precedes`; includes the vacuous case)."""
        return precedes(self.probe, self.centred)

    @property
    def ordered(self) -> bool:
        """Separability before alignment, not vacuously: both onsets exist and the probe's is strictly earlier."""
        return self.centred is not None and precedes(self.probe, self.centred)

    @property
    def vacuous(self) -> bool:
        """The probe has an onset but the centred lens never beats the majority class: nothing to precede."""
        return self.probe is not None and self.centred is None


def readout_onsets(correct: Mapping[str, torch.Tensor], lexical: torch.Tensor, majority: torch.Tensor, *,
                   seed: int = 0) -> Onsets:
    """The three onset scans of chapter 10 on one setting. ``correct`` maps ``"probe"``, ``"centred lens"`` and
    ``"raw lens"`` to held-out correctness ``(P, L+1)``; ``lexical`` and ``majority`` are the baselines' ``(P,)``
    correctness on the same queries."""
    missing = [k for k in ("probe", "centred lens", "raw lens") if k not in correct]
    if missing:
        raise ValueError(f"correct must hold the readouts 'probe', 'centred lens' and 'raw lens'; missing {missing}")
    return Onsets(probe=onset_layer(correct["probe"], [lexical, majority], seed=seed),
                  centred=onset_layer(correct["centred lens"], [majority], seed=seed),
                  raw=onset_layer(correct["raw lens"], [majority], seed=seed))
