"""Onset scans of chapter 10 (cgar_src.analysis.onset) on constructed correctness with known onsets."""
import pytest
import torch

from cgar_src.analysis.onset import Onsets, onset_text, precedes, readout_onsets

P, LAYERS = 100, 7


def ones_from(layer: int) -> torch.Tensor:
    """Per-layer correctness: the first half of the queries right before ``layer`` (a majority-like readout), every
    query right from ``layer`` on."""
    a = torch.zeros(P, LAYERS)
    a[:50] = 1
    a[:, layer:] = 1
    return a


MAJORITY = torch.tensor([1.0] * 50 + [0.0] * 50)
LEXICAL = torch.tensor([1.0] * 60 + [0.0] * 40)


@pytest.mark.parametrize("first, second, want", [(3, 5, True), (3, None, True), (5, 5, False), (6, 5, False),
                                                 (None, 2, False), (None, None, False), (0, 1, True)])
def test_precedes(first, second, want):
    assert precedes(first, second) is want
    on = Onsets(probe=first, centred=second, raw=None)
    assert on.separability_first is want
    assert on.ordered is (want and second is not None)          # never by default: the vacuous case apart
    assert on.vacuous is (first is not None and second is None)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_precedes_rejects_non_layers(bad):
    with pytest.raises(ValueError, match="first"):
        precedes(bad, 2)
    with pytest.raises(ValueError, match="second"):
        precedes(2, bad)


def test_onset_text():
    assert onset_text(None) == "none" and onset_text(0) == "layer 0" and onset_text(12) == "layer 12"


def test_readout_onsets_find_the_constructed_layers():
    correct = {"probe": ones_from(2), "centred lens": ones_from(5), "raw lens": ones_from(LAYERS)}   # raw: never
    on = readout_onsets(correct, LEXICAL, MAJORITY, seed=0)
    assert on == Onsets(probe=2, centred=5, raw=None)
    assert on.separability_first


def test_the_probe_must_beat_both_baselines():
    correct = {"probe": ones_from(2), "centred lens": ones_from(4), "raw lens": ones_from(4)}
    perfect_words = torch.ones(P)                      # a bag of words nothing can beat
    on = readout_onsets(correct, perfect_words, MAJORITY, seed=0)
    assert on.probe is None and on.centred == 4 and on.raw == 4   # the lenses only face the majority class
    assert not on.separability_first
    # a probe no better than the words at some layers: its onset is the first layer that beats them too
    probe = ones_from(LAYERS)
    probe[:60, 1:] = 1                                  # layers >= 1 equal the bag of words (0.6): not better
    probe[:, 3:] = 1
    on = readout_onsets({**correct, "probe": probe}, LEXICAL, MAJORITY, seed=0)
    assert on.probe == 3 and on.centred == 4 and on.separability_first


def test_small_differences_are_not_onsets():
    a = ones_from(LAYERS)
    a[50:53, 2:] = 1                                    # +0.03 over the majority class: not a real difference
    on = readout_onsets({"probe": a, "centred lens": a, "raw lens": a}, LEXICAL, MAJORITY, seed=0)
    assert on == Onsets(None, None, None)


def test_readout_onsets_rejects_missing_readouts():
    with pytest.raises(ValueError, match="centred lens"):
        readout_onsets({"probe": ones_from(2), "raw lens": ones_from(2)}, LEXICAL, MAJORITY)
