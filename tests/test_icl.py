"""The chapters' task states: ONE demonstration set shared by all queries (Zhao et al. 2021), its content-free prompt
(the set's demonstrations, then the template with "N/A"), the same queries for every demonstration seed, zero-shot
states shared across shot counts, seeds and label modes, and the random-label control as a permutation."""
import pytest
import torch

from cgar_src.lm import DEFAULT_MODEL, hidden_states, load_model
from cgar_src.tasks.icl import CONTENT_FREE_INPUT, task_states


@pytest.fixture(scope="module")
def smol():
    return load_model(DEFAULT_MODEL)


def test_one_demonstration_set_shared_by_all_queries(smol, tmp_path):
    ts = task_states(smol, "trec", n_queries=3, shots=1, cache_root=tmp_path, progress=False, content_free=True)
    assert ts.h_cf.shape == ts.h_icl.shape and len(ts.cf_prompts) == 3 and len(set(ts.cf_prompts)) == 1
    prefix = ts.demo_set.prefix()
    assert ts.params["demo_set_key"] == ts.demo_set.key() and len(ts.demo_set.examples) == 6   # 1 per class
    for icl, cf, zero in zip(ts.icl_prompts, ts.cf_prompts, ts.zero_prompts):
        assert icl.startswith(prefix) and cf.startswith(prefix)      # the same demonstrations, in the same order
        assert cf.endswith(f"Question: {CONTENT_FREE_INPUT}\nAnswer type:")
        assert zero.split("\n")[0] not in cf                          # the query itself never enters
        assert icl.endswith("\n\n" + zero)                             # the book template: demonstrations, then query
    # the prefix engine's states equal the full prompts' own forward passes
    torch.testing.assert_close(ts.h_cf, hidden_states(smol, ts.cf_prompts, progress=False), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ts.h_icl, hidden_states(smol, ts.icl_prompts, progress=False), atol=1e-3, rtol=1e-5)
    # content_free changes nothing else, and a second call is served from the cache
    plain = task_states(smol, "trec", n_queries=3, shots=1, cache_root=tmp_path, progress=False)
    assert torch.equal(plain.h_icl, ts.h_icl) and plain.h_cf is None and plain.n_forward == 0
    # another demonstration seed: another set, the same queries (paired), the same zero-shot states
    other = task_states(smol, "trec", n_queries=3, shots=1, seed=1, cache_root=tmp_path, progress=False)
    assert other.demo_set.key() != ts.demo_set.key() and other.query_rows == ts.query_rows
    assert torch.equal(other.labels, ts.labels) and torch.equal(other.h_zero, ts.h_zero) and other.n_forward == 3 + 1   # + its content-free prompt


def test_random_labels_permute_the_sets_own_labels(smol, tmp_path):
    """The control changes the mapping only: the same texts in the same order, the same multiset of label words."""
    true = task_states(smol, "sst2", n_queries=4, shots=2, cache_root=tmp_path, progress=False)
    rand = task_states(smol, "sst2", n_queries=4, shots=2, label_mode="random", cache_root=tmp_path, progress=False)
    t, r = true.demo_set, rand.demo_set
    assert [e.text for e in t.examples] == [e.text for e in r.examples]
    assert sorted(t.labels) == sorted(r.labels) and r.true_labels == t.labels
    assert rand.params["label_mode"] == "random" and rand.query_rows == true.query_rows


def test_zero_shot_content_free_is_one_prompt_and_zero_states_are_shared(smol, tmp_path):
    z = task_states(smol, "sst2", n_queries=4, shots=0, cache_root=tmp_path, progress=False, content_free=True)
    assert len(set(z.cf_prompts)) == 1 and z.n_forward == 4 + 1       # four queries, one shared content-free prompt
    assert torch.equal(z.h_cf[0], z.h_cf[3])
    rl = task_states(smol, "sst2", n_queries=4, shots=1, label_mode="random", cache_root=tmp_path, progress=False)
    assert rl.n_forward == 4 + 1 and torch.equal(rl.h_zero, z.h_zero)  # only the 1-shot set's prompts were new
    with pytest.raises(ValueError, match="content_free"):
        task_states(smol, "sst2", n_queries=4, shots=0, cache_root=tmp_path, progress=False, content_free="yes")
