"""Known answers for the separability readouts of chapter 10: shared folds, the bag-of-words baseline, the logit lens
on the label tokens, the bias-corrected (centred) lens and the onset layer."""
import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold
from test_lm import PROMPTS, tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import lens, probes
from cgar_src.analysis.stats import paired_test
from cgar_src.analysis.steering import folds_of
from cgar_src.lm import Unembed, hidden_states


@pytest.mark.parametrize("n, n_folds, seed", [(23, 5, 3), (2, 2, 0), (10, 3, 7), (101, 10, 12345), (40, 40, 1)])
def test_kfold_scheme_is_sklearn_kfold_and_covers_every_query_once(n, n_folds, seed):
    """The probes' folds are folds_of(scheme="kfold"): exactly scikit-learn's shuffled KFold partition."""
    f = folds_of(n, n_folds, seed, scheme="kfold")
    ref = list(KFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(n)))
    assert len(f) == n_folds
    assert all(np.array_equal(a[1].numpy(), b[1]) and np.array_equal(a[0].numpy(), b[0]) for a, b in zip(f, ref))
    assert sorted(torch.cat([te for _, te in f]).tolist()) == list(range(n))
    for n_bad in (1, n + 1, 2.5):
        with pytest.raises(ValueError, match="n_folds"):
            folds_of(n, n_bad, seed, scheme="kfold")


def test_kfold_scheme_depends_on_the_seed_and_differs_from_the_strided_scheme():
    f = folds_of(23, 5, 3, scheme="kfold")
    assert not torch.equal(folds_of(23, 5, 4, scheme="kfold")[0][1], f[0][1])
    strided = folds_of(23, 5, 3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(f, strided))
    with pytest.raises(ValueError, match="scheme"):
        folds_of(23, 5, 3, scheme="stratified")


def test_lexical_probe_reads_a_keyword_perfectly():
    rng = np.random.default_rng(0)
    filler = ["the", "a", "film", "story", "was", "is", "very", "quite", "long", "short"]
    keys = ["superb", "dreadful", "baffling"]
    labels = torch.arange(60) % 3
    texts = [" ".join(rng.choice(filler, 5)) + " " + keys[y] for y in labels.tolist()]
    acc = probes.lexical_probe_correct(texts, labels, n_folds=5, seed=0)
    assert acc.shape == (60,) and acc.dtype == torch.float32 and acc.mean() == 1.0


def test_lexical_probe_on_uninformative_text_is_the_training_majority():
    # identical texts carry no information: each fold must answer its training queries' majority class
    labels = torch.tensor([0] * 14 + [1] * 6 + [2] * 5)
    texts = ["the same words for every query"] * len(labels)
    acc = probes.lexical_probe_correct(texts, labels, n_folds=5, seed=1)
    expected = np.zeros(len(labels))
    y = labels.numpy()
    for train, test in folds_of(len(y), 5, 1, scheme="kfold"):
        expected[test] = y[test] == np.bincount(y[train]).argmax()
    np.testing.assert_array_equal(acc.numpy(), expected)


@pytest.mark.parametrize("kw, match", [(dict(texts=[]), "texts"), (dict(texts=["a", ""]), "texts"),
                                       (dict(labels=torch.tensor([0, 1, 0])), "labels"),
                                       (dict(n_folds=1), "n_folds"), (dict(Cs=()), "Cs"), (dict(Cs=(1.0, -1.0)), "Cs"),
                                       (dict(inner_folds=1), "inner_folds"),
                                       (dict(labels=torch.tensor([0.0, 1.0, 0.0, 1.0])), "labels")])
def test_lexical_probe_rejects_bad_input(kw, match):
    args = dict(texts=["good", "bad", "fine", "awful"], labels=torch.tensor([0, 1, 0, 1]), n_folds=2) | kw
    with pytest.raises(ValueError, match=match):
        probes.lexical_probe_correct(args.pop("texts"), args.pop("labels"), **args)


def test_centred_lens_removes_a_constant_label_bias():
    # label 1's logit carries a bias of +5 on every query; the true label gets +1: the raw argmax always says 1
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (40,), generator=g)
    z = 0.1 * torch.randn(40, 3, generator=g) + torch.nn.functional.one_hot(labels, 3)
    z[:, 1] += 5.0
    raw = (z.argmax(-1) == labels).float()
    assert raw.mean() == (labels == 1).float().mean()            # the raw readout is the base rate of label 1
    cen = probes.centred_lens_correct(z, labels, n_folds=5, seed=0)
    assert cen.mean() == 1.0
    # per layer: a (P, L+1, n_labels) input is centred layer by layer, like stacking the 2-d calls
    z3 = torch.stack([z, torch.roll(z, 1, dims=-1), -z], 1)
    per_layer = torch.stack([probes.centred_lens_correct(z3[:, l], labels, n_folds=5, seed=0) for l in range(3)], 1)
    torch.testing.assert_close(probes.centred_lens_correct(z3, labels, n_folds=5, seed=0), per_layer)


def test_centred_lens_is_cross_fitted():
    # the mean subtracted from a query's logits must come from the other folds only
    g = torch.Generator().manual_seed(0)
    z = torch.randn(30, 3, generator=g) * torch.tensor([1.0, 1.0, 3.0])
    labels = torch.randint(0, 3, (30,), generator=g)
    got = probes.centred_lens_correct(z, labels, n_folds=3, seed=2)
    want = torch.zeros(30)
    for train, test in folds_of(30, 3, 2, scheme="kfold"):
        pred = (z[test] - z[train].mean(0)).argmax(-1)
        want[test] = (pred == labels[test]).float()
    torch.testing.assert_close(got, want)
    full = ((z - z.mean(0)).argmax(-1) == labels).float()       # in-sample centring answers differently here
    assert not torch.equal(got, full)
    with pytest.raises(ValueError, match="label_logits"):
        probes.centred_lens_correct(z[:, 0], labels)
    with pytest.raises(ValueError, match="label columns"):
        probes.centred_lens_correct(z[:, :2], labels.clamp(max=1) * 2)


def test_label_logits_are_the_lens_label_columns(tiny):
    un = Unembed(tiny.model)
    states = hidden_states(tiny, PROMPTS, batch_size=2, progress=False)
    ids = [5, 17, 40]
    z = probes.label_logits(un, states, ids)
    assert z.shape == (len(PROMPTS), tiny.n_layers + 1, 3)
    torch.testing.assert_close(z, lens.decode_stats(un, states, ids).label_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z[:, -1], un(states[:, -1])[:, ids], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="hidden size"):
        probes.label_logits(un, states[..., :10], ids)
    with pytest.raises(ValueError, match="label_token_ids"):
        probes.label_logits(un, states, [un.vocab_size])


def test_onset_layer_finds_the_first_layer_that_really_beats_every_baseline():
    n = 100
    base = torch.tensor([1.0] * 50 + [0.0] * 50)
    a = torch.stack([base, base.clone(), torch.ones(n), torch.ones(n)], 1)
    a[50:53, 1] = 1                                               # +0.03: not a real difference
    assert probes.onset_layer(a, [base]) == 2
    assert probes.onset_layer(a, [base, torch.ones(n)]) is None   # nothing beats a perfect baseline
    per_layer = torch.stack([base, base, torch.ones(n), torch.zeros(n)], 1)
    assert probes.onset_layer(a, [per_layer]) == 3                # a (P, L+1) baseline is compared layer by layer
    with pytest.raises(ValueError, match="correct"):
        probes.onset_layer(base, [base])
    with pytest.raises(ValueError, match="baselines"):
        probes.onset_layer(a, [])
    with pytest.raises(ValueError, match="baseline"):
        probes.onset_layer(a, [base[:10]])


def test_probe_rejects_bad_tol_and_c():
    states, labels = torch.randn(20, 2, 4), torch.arange(20) % 2
    with pytest.raises(ValueError, match="tol"):
        probes.probe_correct(states, labels, tol=0.0, progress=False)
    with pytest.raises(ValueError, match="C"):
        probes.probe_correct(states, labels, C=-1.0, progress=False)


def test_really_beats_is_the_decision_of_the_paired_test():
    """The onset scans' decision agrees with stats.paired_test(...).better, on 0/1 outcomes (McNemar) and on
    outcomes averaged over three sets (permutation test of the mean)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(24):          # from really worse through indistinguishable to clearly better (the screens)
        n = 30 + 10 * (trial % 4)
        b = (torch.rand(n, generator=g) < 0.5).double()
        a = (torch.rand(n, generator=g) < 0.3 + 0.028 * trial).double()
        means = torch.stack([(torch.rand(n, generator=g) < 0.3 + 0.028 * trial).double() for _ in range(3)]).mean(0)
        for x in (a, means):
            assert probes.really_beats(x, b) == paired_test(x, b).better
    assert probes.really_beats(torch.ones(20), torch.zeros(20))
    assert not probes.really_beats(torch.zeros(20), torch.ones(20))    # really worse is not "beats"
    with pytest.raises(ValueError, match="same"):
        probes.really_beats(torch.ones(3), torch.ones(4))


def test_onset_layer_on_means_over_sets_tests_the_mean():
    """Shares over three sets: a readout right in one set of three on many queries has MORE queries favouring it
    than the baseline, but a lower mean; the permutation test of the mean does not call it better."""
    base = torch.tensor([1.0] * 20 + [0.0] * 40)
    a = torch.stack([base, base.clone()], 1)
    a[20:, 1] = 2 / 3                       # 40 queries gain 2/3: mean +0.44, really better
    assert probes.onset_layer(a, [base]) == 1
    a[:20, 1] = 1 / 3                       # 20 queries lose 2/3, 40 gain 1/3: the mean difference is 0
    a[20:, 1] = 1 / 3
    assert paired_test(a[:, 1], base).diff == pytest.approx(0.0, abs=1e-6)
    assert probes.onset_layer(a, [base]) is None


def test_probe_is_the_exact_optimum_of_the_full_problem_and_ignores_round_off():
    """Solved in the span of the training rows, the probe predicts what scikit-learn's cross_val_predict predicts on the
    full d features solved to a tight tolerance (the same penalised problem, one optimum), more features than
    training queries as in the book (d = 576 > 200). Round-off of 1e-6 in the states (two machines' kernels) changes
    no prediction. A layer whose rows are all equal predicts the training folds' most frequent class, and a fold
    whose training queries hold one class predicts it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    n, d, labels = 60, 80, torch.arange(60) % 3
    states = torch.randn(n, 4, d, generator=g, dtype=torch.float64)
    states[:, 1:, :3] += 0.7 * torch.nn.functional.one_hot(labels, 3)[:, None]
    states[:, 0] = states[0, 0]                                   # layer 0: the same row for every query
    got = probes.probe_correct(states, labels, progress=False)
    y, cv = labels.numpy(), probes._cv(n, 5, 0)
    for l in range(1, 4):
        ref = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)),
                                states[:, l].numpy(), y, cv=cv)
        np.testing.assert_array_equal(got[:, l].numpy(), (ref == y).astype(np.float32))
    first = np.array([np.bincount(y[train]).argmax() for train, _ in cv])
    want = np.empty(n, dtype=y.dtype)
    for (_, test), c in zip(cv, first):
        want[test] = c
    np.testing.assert_array_equal(got[:, 0].numpy(), (want == y).astype(np.float32))
    assert 0 < float(got[:, 1:].mean()) < 1                       # neither trivial nor perfect: a real test
    noisy = states * (1 + 1e-6 * torch.randn(states.shape, generator=g, dtype=torch.float64))
    noisy[:, 0] = states[0, 0]
    assert torch.equal(probes.probe_correct(noisy, labels, progress=False), got)
    one = torch.tensor([0] * 9 + [1])                  # 2 folds: the fold trained on zeros only predicts 0
    acc = probes.probe_correct(torch.randn(10, 2, 3, generator=g), one, n_folds=2, seed=0, progress=False)
    assert acc.shape == (10, 2) and set(acc.unique().tolist()) <= {0.0, 1.0}
