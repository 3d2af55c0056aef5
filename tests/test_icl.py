"""Content-free prompts of contextual calibration and of the gate chapter: the query's own demonstrations, then the
template with "N/A"; zero-shot states shared across shot counts and label modes."""
import pytest
import torch

from cgar_src.lm import DEFAULT_MODEL, hidden_states, load_model
from cgar_src.tasks.icl import CONTENT_FREE_INPUT, task_states


@pytest.fixture(scope="module")
def smol():
    return load_model(DEFAULT_MODEL)


def test_content_free_prompts_share_the_query_demonstrations(smol, tmp_path):
    ts = task_states(smol, "trec", n_queries=3, shots=1, cache_root=tmp_path, progress=False, content_free=True)
    assert ts.h_cf.shape == ts.h_icl.shape and len(ts.cf_prompts) == 3
    for icl, cf, zero in zip(ts.icl_prompts, ts.cf_prompts, ts.zero_prompts):
        demos_icl, demos_cf = icl.rsplit("\n\n", 1)[0], cf.rsplit("\n\n", 1)[0]
        assert demos_icl == demos_cf                                  # the same demonstrations, in the same order
        assert cf.endswith(f"Question: {CONTENT_FREE_INPUT}\nAnswer type:")
        assert zero.split("\n")[0] not in cf                          # the query itself never enters
    # computed from the in-context prompts' keys and values over the shared demonstrations, equal to their own pass
    torch.testing.assert_close(ts.h_cf, hidden_states(smol, ts.cf_prompts, progress=False), atol=1e-3, rtol=1e-5)
    # content_free changes nothing else, and a second call is served from the cache
    plain = task_states(smol, "trec", n_queries=3, shots=1, cache_root=tmp_path, progress=False)
    assert torch.equal(plain.h_icl, ts.h_icl) and plain.h_cf is None and plain.n_forward == 0


def test_zero_shot_content_free_is_one_prompt_and_zero_states_are_shared(smol, tmp_path):
    z = task_states(smol, "sst2", n_queries=4, shots=0, cache_root=tmp_path, progress=False, content_free=True)
    assert len(set(z.cf_prompts)) == 1 and z.n_forward == 4 + 1       # four queries, one shared content-free prompt
    assert torch.equal(z.h_cf[0], z.h_cf[3])
    rl = task_states(smol, "sst2", n_queries=4, shots=1, label_mode="random", cache_root=tmp_path, progress=False)
    assert rl.n_forward == 4 and torch.equal(rl.h_zero, z.h_zero)     # only the 1-shot prompts were new
    with pytest.raises(ValueError, match="content_free"):
        task_states(smol, "sst2", n_queries=4, shots=0, cache_root=tmp_path, progress=False, content_free="yes")
