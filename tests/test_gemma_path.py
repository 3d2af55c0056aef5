"""Gemma's code path through the book (issue 21): every transformer chapter of params/cpu.yaml, executed with papermill
on a tiny random Gemma-3 (6 blocks, hidden 64, float32) whose sliding layers see a window of 16 tokens, shorter than
every few-shot prompt, so the sliding-window code paths (the key/value twins, the attention masks) run in every
chapter; Gemma 3 270M's own tokenizer (262144 tokens) is saved beside it, so label words and LAMA objects tokenise as
for the real model. It is to Gemma what tests/test_paper_path.py is to the bf16 Llama: what would break on the real
Gemma 3 270M breaks here first, in a fraction of its time. The chapters' parameters and list come from the profile
and the notebooks at test time (tests/_chapter_path.py).

Also here, unmarked (so the unit tests run them): the analyses that decode through :attr:`Unembed.weight` and
:meth:`Unembed.normalize` directly (streaming decodes, label logits, the additive grid) apply the model's final
soft-cap exactly as the lens does.

Select the chapter path alone with `python -m pytest tests/test_gemma_path.py -m gemma_path`; it is also marked
`paper_path`, so every run that leaves the slow papermill paths out (`-m "not paper_path"`) leaves it out too.
"""
import copy
import warnings

import pytest
import torch
from _chapter_path import run_every_chapter
from test_gemma import gemma2, gemma3
from test_lm import TWIN_PROMPTS

from cgar_src.analysis import lens, probes
from cgar_src.lm import GGUF_MODELS, LoadedModel, Unembed, hidden_states

# the pattern of Gemma 3 (five sliding layers to one global layer), shortened: 4 sliding, 2 full
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention",
               "sliding_attention", "sliding_attention", "full_attention"]
WINDOW = 16


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory):
    """A random 6-block Gemma-3 text model (hidden 64, one key/value head of 16 as in the real model, window 16),
    configured from Gemma 3 270M's own config (token ids, rope per layer type, no soft-cap) with only the sizes
    changed, its norm weights randomised so that Gemma's (1 + w) scale does work, saved in float32 with the real
    tokenizer. Six blocks: the chapters' layer fractions 0.5, 0.67 and 0.83 land on distinct layers (3, 4, 5)."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from cgar_src.lm.model import gguf_model_dir

    try:
        real = gguf_model_dir("gemma-3-270m")
    except FileNotFoundError as err:
        pytest.skip(f"Gemma 3 270M's tokenizer is not available (install `{GGUF_MODELS['gemma-3-270m'].install}`): "
                    f"{err}")
    tokenizer = AutoTokenizer.from_pretrained(real)
    spec = Gemma3TextConfig.from_pretrained(real).to_dict()
    spec.update(hidden_size=64, intermediate_size=128, num_hidden_layers=len(LAYER_TYPES), num_attention_heads=4,
                num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                layer_types=LAYER_TYPES, max_position_embeddings=8192)
    cfg = Gemma3TextConfig(**{k: v for k, v in spec.items() if k not in ("architectures", "transformers_version")})
    assert cfg.vocab_size == len(tokenizer) and cfg.final_logit_softcapping is None
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():   # Gemma initialises its norm weights at 0 (scale 1 + 0)
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.paper_path
@pytest.mark.gemma_path
def test_every_transformer_chapter_runs_on_a_sliding_window_gemma3(tiny_gemma3_dir, tmp_path, monkeypatch):
    from cgar_src.book.run import load_profile
    from cgar_src.lm import load_model
    from cgar_src.tasks import data
    from cgar_src.tasks.demos import draw_demo_set

    if data.data_dir() is None:
        pytest.skip("CGAR_DATA_DIR=hub selects the Hugging Face hub, which tests never reach")
    lm = load_model(str(tiny_gemma3_dir))
    assert type(lm.model).__name__ == "Gemma3ForCausalLM" and lm.revision == "local" and lm.n_layers == 6
    assert lm.model.config.sliding_window == WINDOW and load_profile("cpu")["dtype"] == "float32"
    # even the shortest demonstration prefix (SST-2, one shot per class) outruns the window: the sliding layers slide
    prefix = draw_demo_set("sst2", shots=1).prefix()
    assert len(lm.tokenizer(prefix)["input_ids"]) > WINDOW
    # chapter 12 on one dataset, with small grids: on a random model the content-free lens scores are nearly flat, so
    # the gate's support spans most of the 262144-token vocabulary and every fixed-point solve of the book's grid
    # (80 points, up to 300 iterations each) runs over all of it (over 10 minutes on 2 cores, measured 2026-11-30).
    # Two fixed-point settings on each side of the contraction bound (0.5 and 8) keep every code path of the chapter
    # (grids, cross-fits, both fixed-point regions, multi-start, tables). On the real Gemma the book's own grids ran
    # in 93 s with papermill (-p model_id gemma-3-270m)
    small_fit = {"datasets": ["sst2"], "alphas": [0.1, 1.0, 10.0], "fixed_point_alphas": [0.25, 2.0],
                 "fixed_point_betas": [1.0], "fixed_point_lambdas": [0.5, 2.0]}
    seconds = run_every_chapter("cpu", tiny_gemma3_dir, tmp_path, monkeypatch,
                                overrides={"12_gate_in_transformer": small_fit})
    print({ch: round(t, 1) for ch, t in seconds.items()})


# ---- the soft-cap in the analyses that bypass Unembed.forward ------------------------------------------------------

@pytest.fixture(scope="module", params=["gemma2-softcap", "gemma3-no-cap"])
def capped(request):
    """A tiny Gemma-2 with a soft-cap of 0.3 (every logit bent by it) and a tiny Gemma-3 without one, with their
    lens and the states of a few prompts."""
    lm = gemma2(softcap=0.3) if request.param == "gemma2-softcap" else gemma3()
    states = hidden_states(lm, TWIN_PROMPTS[:4], batch_size=2, progress=False)
    return lm, Unembed(lm.model), states


def _reference(un: Unembed, states: torch.Tensor, labels: list[int]):
    """Full-vocabulary softmax statistics of the lens's own logits (Unembed.forward, soft-cap included)."""
    with torch.no_grad():
        z = un(states).double()
    p = torch.softmax(z, -1)
    n_eff = torch.exp(-(p * torch.log(p)).sum(-1))
    return z, p, n_eff


def test_streaming_decode_and_label_logits_use_the_lens_logits(capped):
    """decode_stats (streamed over vocabulary chunks) and probes.label_logits equal the statistics of Unembed's own
    logits, soft-cap included; with a cap, the uncapped logits would not (so the check can fail)."""
    lm, un, states = capped
    labels = [5, 17, 40]
    z, p, n_eff = _reference(un, states, labels)
    got = lens.decode_stats(un, states, labels, vocab_chunk=7)
    torch.testing.assert_close(got.label_logits.double(), z[..., labels], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.n_eff.double(), n_eff, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.label_mass.double(), p[..., labels].sum(-1), atol=1e-6, rtol=1e-5)
    assert torch.equal(got.argmax, z.argmax(-1))
    torch.testing.assert_close(probes.label_logits(un, states, labels).double(), z[..., labels], atol=1e-5, rtol=0)
    raw = (un.normalize(states) @ un.weight[labels].T).double()
    if un.softcap is None:
        assert torch.equal(un.cap(raw), raw)
    else:
        assert (raw - z[..., labels]).abs().max() > 1e-2


def test_retrieved_pattern_uses_the_capped_softmax(capped):
    r"""xi+ = W_U^T softmax(lens logits), soft-cap included."""
    lm, un, states = capped
    h = states[:, -1]
    _, p, _ = _reference(un, h, [0])
    want = p @ un.weight.double()
    torch.testing.assert_close(lens.retrieved_pattern(un, h, vocab_chunk=7).double(), want, atol=1e-5, rtol=1e-4)


def test_additive_grid_by_linearity_applies_the_cap():
    """The RMSNorm shortcut of additive_retrieval (_additive_rms, taken for a Llama-style norm) caps its logits too:
    a tiny Llama given a soft-cap of 0.3 in its config agrees with the lens decoding h + lambda c directly."""
    from test_lm import CONFIGS, byte_tokenizer

    cls, cfg = CONFIGS["llama"]
    cfg = copy.deepcopy(cfg)           # test_lm's config is shared: the soft-cap stays on this copy
    torch.manual_seed(0)
    lm = LoadedModel(model=cls(cfg).eval(), tokenizer=byte_tokenizer(), model_id="tiny-llama", revision="none",
                     dtype="float32")
    lm.model.config.final_logit_softcapping = 0.3
    un = Unembed(lm.model)
    assert un.softcap == 0.3 and lens.rms_form(un) is not None
    states = hidden_states(lm, TWIN_PROMPTS[:3], batch_size=3, progress=False)
    c = states[1:].mean(0) - states[0]
    lambdas, labels = [0.0, 1.0, 3.0], [5, 17]
    got = lens.additive_retrieval(un, states, c, labels, lambdas=lambdas, context_layers=[1, 2], query_layers=[2])
    for j, l in enumerate([1, 2]):
        for k, lam in enumerate(lambdas):
            z, p, n_eff = _reference(un, states[:, 2] + lam * c[l], labels)
            torch.testing.assert_close(got.label_logits[:, 0, j, k].double(), z[:, labels], atol=1e-4, rtol=0)
            torch.testing.assert_close(got.n_eff[:, 0, j, k].double(), n_eff, atol=1e-3, rtol=1e-4)


# ---- Gemma's (1 + w) RMSNorm in the closed-form paths -------------------------------------------------------------

def test_gemma_norm_is_an_rmsnorm_of_gain_one_plus_w():
    """rms_form recognises Gemma3RMSNorm as gamma * x / r(x) with gamma = 1 + w (w: its weight, randomised here so
    that w and 1 + w differ), so the float64 closed forms serve Gemma; the readout directions use the same gamma."""
    from cgar_src.lm.unembed import final_norm

    lm = gemma3()
    un = Unembed(lm.model)
    w = final_norm(lm.model).weight.detach()
    assert w.abs().max() > 0.5
    gain, eps = lens.rms_form(un)
    torch.testing.assert_close(gain, 1 + w, atol=0, rtol=0)
    assert eps == final_norm(lm.model).eps
    ids = [5, 17, 40]
    torch.testing.assert_close(lens.readout_rows(un, ids), un.weight[ids] * (1 + w), atol=0, rtol=0)
    torch.testing.assert_close(lens.readout_rows(un, ids, through_norm=False), un.weight[ids], atol=0, rtol=0)


def test_first_order_check_on_gemma_matches_brute_force_float64():
    """The closed-form remainder on Gemma equals a float64 brute force with the (1 + w) norm written by hand (the
    generic path could not: Gemma3RMSNorm computes in float32, so its remainder at small lambda was round-off)."""
    from test_first_order import _reference

    from cgar_src.lm.unembed import final_norm

    lm = gemma3()
    un = Unembed(lm.model)
    norm = final_norm(lm.model)
    g = (1.0 + norm.weight.detach().float()).double()      # the model's gain, as it computes it (float32)
    hand = lambda x: g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps)   # noqa: E731
    states = hidden_states(lm, TWIN_PROMPTS, batch_size=2, progress=False)
    h, c = states[:, 3], states[:, 2].mean(0, keepdim=True).expand(4, -1) * 0.3
    lambdas = [1e-2, 3e-2, 0.1, 1.0, 3.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no "does not compute in float64" warning: the closed form
        fo = lens.first_order_check(un, h, c, lambdas=lambdas, context_layers=[0])
    rem, agree = _reference(hand, un.weight, None, h, c[0], lambdas)
    torch.testing.assert_close(fo.remainder[0], rem, rtol=1e-8, atol=0)
    assert torch.equal(fo.agree[0], agree)


def test_additive_grid_on_gemma_by_linearity_equals_the_direct_decode():
    """additive_retrieval on Gemma (now the RMSNorm shortcut) equals decoding h + lambda c through the lens."""
    lm = gemma3()
    un = Unembed(lm.model)
    states = hidden_states(lm, TWIN_PROMPTS, batch_size=2, progress=False)
    c = lens.context_vector(states.flip(0), states)
    lambdas, labels = [0.0, 0.5, 2.0], [5, 17]
    got = lens.additive_retrieval(un, states, c, labels, lambdas=lambdas, context_layers=[1, 4], query_layers=[3])
    for j, layer in enumerate([1, 4]):
        for k, lam in enumerate(lambdas):
            direct = lens.decode_stats(un, states[:, 3] + lam * c[layer], labels)
            torch.testing.assert_close(got.label_logits[:, 0, j, k], direct.label_logits, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.n_eff[:, 0, j, k], direct.n_eff, atol=1e-3, rtol=1e-4)
            assert torch.equal(got.argmax[:, 0, j, k], direct.argmax)
