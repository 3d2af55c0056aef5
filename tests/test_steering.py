"""Patching, the first-order bias, localisation measures, cross-fitted baselines and probes, on tiny random models."""
import pytest
import torch
from test_lm import PROMPTS, tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.analysis import lens, steering
from cgar_src.analysis.probes import probe_correct
from cgar_src.lm import Patch, Unembed, hidden_states


def test_patch_identities(tiny):
    base = hidden_states(tiny, PROMPTS, batch_size=2, progress=False)
    L = tiny.n_layers
    for layer in range(L + 1):
        same = hidden_states(tiny, PROMPTS, batch_size=2, progress=False, patch=Patch(layer, base[:, layer]))
        torch.testing.assert_close(same, base, atol=1e-4, rtol=0)
        zero = hidden_states(tiny, PROMPTS, batch_size=2, progress=False, patch=Patch(layer, torch.zeros(64), "add"))
        torch.testing.assert_close(zero, base, atol=1e-4, rtol=0)
        v = torch.randn(64, generator=torch.Generator().manual_seed(layer)) * 3
        moved = hidden_states(tiny, PROMPTS, batch_size=2, progress=False, patch=Patch(layer, v))
        torch.testing.assert_close(moved[:, layer], v.expand(len(PROMPTS), -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(moved[:, :layer], base[:, :layer], atol=1e-4, rtol=0)
        if layer < L:  # the blocks after the patch see it
            assert (moved[:, layer + 1] - base[:, layer + 1]).abs().max() > 1e-3


def test_patch_of_the_final_norm_input_is_decoding(tiny):
    v = torch.randn(len(PROMPTS), 64, generator=torch.Generator().manual_seed(1))
    h = hidden_states(tiny, PROMPTS, batch_size=3, progress=False, patch=Patch(tiny.n_layers, v))
    torch.testing.assert_close(h[:, -1], v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad, match", [(Patch(-1, torch.zeros(64)), "patch.layer"),
                                        (Patch(0, torch.zeros(64), "swap"), "patch.mode"),
                                        (Patch(0, torch.zeros(63)), "patch.vectors"),
                                        (Patch(0, torch.full((64,), float("nan"))), "patch.vectors")])
def test_bad_patch_is_rejected(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        hidden_states(tiny, PROMPTS, progress=False, patch=bad)


def test_logit_bias_is_the_derivative_of_the_additive_score(tiny):
    un = Unembed(tiny.model)
    h = hidden_states(tiny, PROMPTS, progress=False)[:, -1]
    c = torch.randn(64, generator=torch.Generator().manual_seed(2))
    c = c / c.norm() * h.norm(dim=-1, keepdim=True)                               # each state's own scale
    s_c = lens.logit_bias(un, h, c)
    eps = 1e-3
    with torch.no_grad():
        fd = (un(h + eps * c) - un(h - eps * c)) / (2 * eps)
    torch.testing.assert_close(s_c, fd, atol=2e-3 * fd.abs().max().item(), rtol=0)
    # a direction along the state itself does not move a scale-invariant norm's output (RMSNorm / LayerNorm)
    # (up to the norm's epsilon, which matters for the tiny GPT-2's small states)
    assert (lens.logit_bias(un, h, h).abs().amax(-1) < 5e-2 * s_c.abs().amax(-1)).all()


def test_retrieved_pattern_is_the_probability_weighted_memory(tiny):
    un = Unembed(tiny.model)
    h = hidden_states(tiny, PROMPTS, progress=False)[:, -1]
    with torch.no_grad():
        p = torch.softmax(un(h).double(), -1)
    ref = p @ un.weight.double()
    torch.testing.assert_close(lens.retrieved_pattern(un, h, vocab_chunk=50).double(), ref, atol=1e-6, rtol=1e-5)


def test_readout_basis_and_span_fraction(tiny):
    un = Unembed(tiny.model)
    ids = [3, 40, 100]
    for through_norm in (True, False):
        Q = lens.readout_basis(un, ids, through_norm=through_norm)
        assert Q.shape == (64, 3)
        torch.testing.assert_close(Q.T @ Q, torch.eye(3), atol=1e-5, rtol=0)
    Q = lens.readout_basis(un, ids, through_norm=False)
    inside = torch.tensor([1.0, -2.0, 0.5]) @ un.weight[ids].detach()          # a combination of the rows
    assert lens.span_fraction(inside, Q).item() == pytest.approx(1.0, abs=1e-5)
    v = torch.randn(500, 64, generator=torch.Generator().manual_seed(3))
    orth = v - (v @ Q) @ Q.T
    assert lens.span_fraction(orth, Q).abs().max() < 1e-6
    assert lens.span_fraction(v, Q).mean().item() == pytest.approx(3 / 64, rel=0.25)  # random direction: k/d
    with pytest.raises(ValueError, match="token_ids"):
        lens.readout_basis(un, [])


def test_additive_retrieval_per_prompt_context(tiny):
    un = Unembed(tiny.model)
    h = hidden_states(tiny, PROMPTS, progress=False)
    c = torch.randn(h.shape[1:], generator=torch.Generator().manual_seed(4))
    grid = dict(lambdas=[0.0, 1.0], context_layers=[1, 3], query_layers=[3])
    shared = lens.additive_retrieval(un, h, c, [5, 6], **grid)
    per = lens.additive_retrieval(un, h, c.expand_as(h).clone(), [5, 6], **grid)
    torch.testing.assert_close(per.n_eff, shared.n_eff)
    with pytest.raises(ValueError, match="c_bar"):
        lens.additive_retrieval(un, h, c[:2], [5, 6], **grid)


def test_folds_partition_the_queries():
    folds = steering.folds_of(11, 3, seed=5)
    evals = torch.cat([ev for _, ev in folds]).sort().values
    assert torch.equal(evals, torch.arange(11))
    for fit, ev in folds:
        assert not set(fit.tolist()) & set(ev.tolist()) and len(fit) + len(ev) == 11
    with pytest.raises(ValueError, match="n_folds"):
        steering.folds_of(5, 1)


def test_heldout_additive_never_uses_a_query_to_score_itself(tiny):
    un = Unembed(tiny.model)
    prompts = [f"{p} {i}" for i in range(3) for p in PROMPTS]                      # 12 queries
    h0 = hidden_states(tiny, prompts, progress=False)
    g = torch.Generator().manual_seed(6)
    h1 = h0 + torch.randn(h0.shape, generator=g)
    labels = torch.randint(0, 2, (len(prompts),), generator=g)
    kw = dict(lambdas=[0.5, 2.0], context_layers=[1, 2, 3], query_layer=3, n_folds=2, seed=0)
    a = steering.heldout_additive(un, h0, h1, labels, [10, 20], **kw)
    assert a.correct.shape == (12,) and set(a.correct.unique().tolist()) <= {0.0, 1.0}
    assert len(a.choices) == 2 and all(c["context_layer"] in (1, 2, 3) for c in a.choices)
    fit, ev = steering.folds_of(12, 2, seed=0)[0]
    h1b = h1.clone()
    h1b[ev] += 50 * torch.randn(h1b[ev].shape, generator=g)       # scramble the evaluated fold's own ICL states
    b = steering.heldout_additive(un, h0, h1b, labels, [10, 20], **kw)
    assert torch.equal(a.correct[ev], b.correct[ev]) and a.choices[0] == b.choices[0]
    with pytest.raises(ValueError, match="must agree"):
        steering.heldout_additive(un, h0, h1[:5], labels, [10, 20], **kw)


def test_heldout_task_vector_never_uses_a_query_to_score_itself(tiny, tmp_path):
    un = Unembed(tiny.model)
    prompts = [f"{p} {i}" for i in range(2) for p in PROMPTS]                      # 8 queries
    h_icl = hidden_states(tiny, [p + " ctx" for p in prompts], progress=False)
    labels = torch.tensor([0, 1] * 4)
    kw = dict(layers=[1, 2], n_folds=2, seed=0, cache_root=tmp_path)
    a = steering.heldout_task_vector(tiny, un, prompts, h_icl, labels, [10, 20], **kw)
    again = steering.heldout_task_vector(tiny, un, prompts, h_icl, labels, [10, 20], **kw)    # from the cache
    assert torch.equal(a.correct, again.correct) and a.choices == again.choices
    fit, ev = steering.folds_of(8, 2, seed=0)[0]
    scrambled = h_icl.clone()
    scrambled[ev] += 10
    b = steering.heldout_task_vector(tiny, un, prompts, scrambled, labels, [10, 20], **kw)
    assert torch.equal(a.correct[ev], b.correct[ev]) and a.choices[0] == b.choices[0]
    assert all(c["layer"] in (1, 2) for c in a.choices)
    with pytest.raises(ValueError, match="layers"):
        steering.heldout_task_vector(tiny, un, prompts, h_icl, labels, [10, 20], layers=[tiny.n_layers])


def test_probe_finds_the_informative_layer():
    g = torch.Generator().manual_seed(7)
    labels = torch.arange(60) % 3
    states = torch.randn(60, 2, 20, generator=g)
    states[:, 1, :3] += 6 * torch.nn.functional.one_hot(labels, 3)                # layer 1 separable, layer 0 noise
    acc = probe_correct(states, labels, n_folds=5, progress=False).mean(0)
    assert acc[1] == 1.0 and acc[0] < 0.6
    with pytest.raises(ValueError, match="n_folds"):
        probe_correct(states, labels, n_folds=1, progress=False)
    with pytest.raises(ValueError, match="states"):
        probe_correct(states[:10], labels, progress=False)


def test_fact_states_shapes_and_validation(tiny, tmp_path):
    from cgar_src.tasks.icl import fact_states

    fs = fact_states(tiny, ["P30", "P37"], n_facts=3, shots=2, seed=1, cache_root=tmp_path, progress=False)
    assert fs.h_zero.shape == fs.h_pos.shape == fs.h_neg.shape == (6, tiny.n_layers + 1, 64)
    assert fs.relations == ["P30"] * 3 + ["P37"] * 3 and fs.object_ids.shape == (6,)
    assert fs.n_forward == 18 and not torch.equal(fs.h_pos, fs.h_neg)
    again = fact_states(tiny, ["P30", "P37"], n_facts=3, shots=2, seed=1, cache_root=tmp_path, progress=False)
    assert again.n_forward == 0 and torch.equal(again.h_pos, fs.h_pos)
    for kw, match in [(dict(n_facts=1), "n_facts"), (dict(shots=0), "shots"),
                      (dict(relations=["P30", "P30"]), "relations"), (dict(relations=["P0"]), "P0")]:
        args = dict(relations=["P30"], n_facts=3, shots=2) | kw
        with pytest.raises(ValueError, match=match):
            fact_states(tiny, args.pop("relations"), cache_root=tmp_path, progress=False, **args)


def test_length_batches():
    from cgar_src.lm import length_batches

    lengths = [50, 1200, 10, 300, 3000, 40, 300]
    batches = length_batches(lengths, batch_size=3, max_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)                                       # in order of length: little padding
    assert [4] in batches and [1] in batches                          # longer than the budget: alone
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, batch_size=0)


def test_patched_states_are_cached_by_patch(tiny, tmp_path):
    from cgar_src.lm.cache import cached_states

    v1, v2 = torch.ones(64), -torch.ones(64)
    a = cached_states(tiny, PROMPTS, {"t": 1}, cache_root=tmp_path, progress=False, patch=Patch(1, v1))
    b = cached_states(tiny, PROMPTS, {"t": 1}, cache_root=tmp_path, progress=False, patch=Patch(1, v1))
    c = cached_states(tiny, PROMPTS, {"t": 1}, cache_root=tmp_path, progress=False, patch=Patch(1, v2))
    assert a.n_forward == len(PROMPTS) and b.n_forward == 0 and c.n_forward == len(PROMPTS)
    assert torch.equal(a.states, b.states) and not torch.equal(a.states, c.states)
    torch.testing.assert_close(a.states[:, 1], v1.expand(len(PROMPTS), -1))
    with pytest.raises(ValueError, match="one vector"):
        cached_states(tiny, PROMPTS, {"t": 1}, cache_root=tmp_path, progress=False,
                      patch=Patch(1, torch.zeros(len(PROMPTS), 64)))


def test_norm_matched_random_and_leave_one_out_mean():
    g = torch.Generator().manual_seed(8)
    c = torch.randn(5, 7, generator=g) * torch.arange(1, 6).view(5, 1)
    r = lens.norm_matched_random(c, torch.Generator().manual_seed(0))
    torch.testing.assert_close(r.norm(dim=-1), c.norm(dim=-1))
    assert torch.nn.functional.cosine_similarity(r, c, dim=-1).abs().max() < 0.99
    x = torch.randn(6, 3, 4, generator=g)
    loo = lens.leave_one_out_mean(x)
    for i in range(6):
        torch.testing.assert_close(loo[i], torch.cat([x[:i], x[i + 1:]]).mean(0))
    with pytest.raises(ValueError, match="two rows"):
        lens.leave_one_out_mean(x[:1])


def test_heldout_additive_transform_identity_and_zero(tiny):
    """``transform`` is applied to each fold's c_bar: the identity changes nothing, the zero vector gives the
    zero-shot accuracy at every setting, and a wrong shape is rejected."""
    torch.manual_seed(0)
    lm = tiny
    unembed = Unembed(lm.model)
    P, d = 12, lm.model.config.hidden_size
    h_zero = torch.randn(P, lm.n_layers + 1, d)
    h_icl = h_zero + torch.randn(P, lm.n_layers + 1, d)
    labels = torch.randint(0, 2, (P,))
    ids = [5, 9]
    grid = dict(lambdas=[0.5, 2.0], context_layers=[1, lm.n_layers], query_layer=lm.n_layers, seed=0)
    plain = steering.heldout_additive(unembed, h_zero, h_icl, labels, ids, **grid)
    same = steering.heldout_additive(unembed, h_zero, h_icl, labels, ids, **grid, transform=lambda c: c.clone())
    assert torch.equal(plain.correct, same.correct) and plain.choices == same.choices
    zero = steering.heldout_additive(unembed, h_zero, h_icl, labels, ids, **grid, transform=torch.zeros_like)
    expect = lens.decode_stats(unembed, h_zero[:, lm.n_layers], ids).correct(ids, labels)
    assert torch.equal(zero.correct, expect)
    with pytest.raises(ValueError, match="transform must return"):
        steering.heldout_additive(unembed, h_zero, h_icl, labels, ids, **grid, transform=lambda c: c[0])


def test_heldout_additive_restricted_by_layer_and_icl_mean(tiny):
    """The steered state's label-restricted score is the argmax of its label logits at the chosen setting; a context
    layer fixed in advance gives what a grid of that one layer gives; ``icl_mean`` adds the mean ICL state."""
    torch.manual_seed(1)
    un = Unembed(tiny.model)
    P, L, d = 16, tiny.n_layers, tiny.model.config.hidden_size
    h_zero = torch.randint(-3, 4, (P, L + 1, d)).float()        # integer-valued: the means below are exact
    h_icl = h_zero + torch.randint(-3, 4, (P, L + 1, d)).float()
    labels = torch.randint(0, 3, (P,))
    ids = [5, 9, 13]
    grid = dict(lambdas=[0.5, 2.0, 8.0], query_layer=L, n_folds=2, seed=0)
    a = steering.heldout_additive(un, h_zero, h_icl, labels, ids, context_layers=[1, 2, L], **grid)
    assert set(a.by_layer) == {1, 2, L} and a.restricted_correct.shape == (P,)
    for l in (1, 2, L):
        one = steering.heldout_additive(un, h_zero, h_icl, labels, ids, context_layers=[l], **grid)
        assert torch.equal(a.by_layer[l], one.correct)
        assert [c["lambda_by_layer"][l] for c in a.choices] == [c["lambda"] for c in one.choices]
    for (fit, ev), ch in zip(steering.folds_of(P, 2, 0), a.choices):
        c_bar = lens.context_vector(h_icl[fit], h_zero[fit])
        st = lens.additive_retrieval(un, h_zero[ev], c_bar, ids, lambdas=[ch["lambda"]],
                                     context_layers=[ch["context_layer"]], query_layers=[L])
        want = (st.label_logits.reshape(len(ev), -1).argmax(-1) == labels[ev]).double()
        assert torch.equal(a.restricted_correct[ev], want)
        assert torch.equal(a.correct[ev], st.correct(ids, labels[ev]).flatten())
    # label-restricted is never below full-vocabulary correctness of the same state
    assert bool((a.restricted_correct >= a.correct).all())
    # icl_mean: mean(h_icl) is the difference vector of ICL states h_icl + h_zero
    m = steering.heldout_additive(un, h_zero, h_icl, labels, ids, context_layers=[1, L], variant="icl_mean", **grid)
    same = steering.heldout_additive(un, h_zero, h_icl + h_zero, labels, ids, context_layers=[1, L], **grid)
    assert torch.equal(m.correct, same.correct) and m.choices == same.choices
    with pytest.raises(ValueError, match="variant"):
        steering.heldout_additive(un, h_zero, h_icl, labels, ids, context_layers=[1], variant="mean", **grid)
