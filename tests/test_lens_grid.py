"""The additive grid by linearity of an RMSNorm unembedding equals the decode of every grid point."""
import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture: llama, qwen2, gpt2)

import cgar_src.analysis.lens as lens
from cgar_src.lm import Unembed


@pytest.mark.parametrize("per_prompt", [False, True])
def test_rms_fast_grid_equals_direct_decode(tiny, per_prompt, monkeypatch):
    un = Unembed(tiny.model)
    fast_path = lens.rms_form(un)
    name = type(un.final_norm).__name__
    assert (fast_path is not None) == name.endswith("RMSNorm"), name      # GPT-2's LayerNorm takes the generic path
    gen = torch.Generator().manual_seed(3)
    P, L1, d = 70, tiny.n_layers + 1, tiny.model.config.hidden_size      # 70 > one prompt batch of 64
    h = torch.randn(P, L1, d, generator=gen) * 2
    c = torch.randn(*((P, L1, d) if per_prompt else (L1, d)), generator=gen)
    grid = dict(lambdas=[0.0, 0.3, 2.0, 10.0], context_layers=[1, L1 - 1], query_layers=[0, L1 - 1])
    ids = [3, 17, 100]
    got = lens.additive_retrieval(un, h, c, ids, **grid)
    monkeypatch.setattr(lens, "rms_form", lambda u: None)                # force the per-point decode
    want = lens.additive_retrieval(un, h, c, ids, **grid)
    assert got.argmax.shape == (P, 2, 2, 4)
    assert (got.argmax == want.argmax).float().mean() > 0.999
    for f in ("n_eff", "label_mass", "label_logits"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=1e-4, atol=1e-5)
