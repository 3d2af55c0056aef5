"""lens.first_order_check (chapter 06): the first-order remainder of the additive score, in closed form and float64.

References are brute-force float64 evaluations of the same quantities from hand-written norms on tiny random models
(an RMSNorm Llama: the closed-form path; a LayerNorm GPT-2: the generic path), so every check below could fail.
"""
import copy
import math
import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from cgar_src.analysis import lens
from cgar_src.lm import Unembed

D, V, P = 32, 97, 6
LAMBDAS = [1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=V)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # a non-trivial gain, as in a trained model
        model.model.norm.weight.copy_(1 + 0.5 * torch.randn(D))
    return model


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=D, n_layer=2, n_head=4, vocab_size=V, n_positions=64)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.copy_(1 + 0.5 * torch.randn(D))
        model.transformer.ln_f.bias.copy_(0.1 * torch.randn(D))
    return model


def _states(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Query states (P, D) of residual-stream size, and context vectors (4, D) about a third of their norm."""
    g = torch.Generator().manual_seed(seed)
    h = 4 * torch.randn(P, D, generator=g) + 2 * torch.randn(D, generator=g)
    c = 1.3 * torch.randn(4, D, generator=g)
    return h, c


def _reference(norm, W: torch.Tensor, bias, h: torch.Tensor, c: torch.Tensor, lambdas):
    """Brute force in float64: z(lam) = W Norm(h + lam c) (+ bias), s_q + lam s_c by autograd's jvp;
    returns the relative remainder (K, P) and the argmax agreement (K, P)."""
    W, h, c = W.double(), h.double(), c.double().expand_as(h)
    b = 0 if bias is None else bias.double()
    z0 = norm(h) @ W.T
    s_c = torch.func.jvp(norm, (h,), (c,))[1] @ W.T
    rem, agree = [], []
    for lam in lambdas:
        z = norm(h + lam * c) @ W.T
        lin = z0 + lam * s_c
        rem.append((z - lin).norm(dim=-1) / (z - z0).norm(dim=-1))
        agree.append((z + b).argmax(-1) == (lin + b).argmax(-1))
    return torch.stack(rem), torch.stack(agree)


def _rms_norm(un: Unembed):
    gain, eps = lens.rms_form(un)
    g = gain.double()
    return lambda x: g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def test_closed_form_matches_brute_force_float64_on_an_rmsnorm_model():
    un = Unembed(_llama())
    assert lens.rms_form(un) is not None            # the closed-form path
    h, c = _states()
    fo = lens.first_order_check(un, h, c, lambdas=LAMBDAS, context_layers=[0, 2, 3])
    assert fo.remainder.shape == (3, len(LAMBDAS), P) and fo.remainder.dtype == torch.float64
    assert fo.agree.shape == (3, len(LAMBDAS), P) and fo.agree.dtype == torch.bool
    for j, layer in enumerate([0, 2, 3]):
        rem, agree = _reference(_rms_norm(un), un.weight, None, h, c[layer], LAMBDAS)
        torch.testing.assert_close(fo.remainder[j], rem, rtol=1e-8, atol=0)
        assert torch.equal(fo.agree[j], agree)
    assert fo.context_layers == [0, 2, 3] and fo.lambdas.tolist() == LAMBDAS


def test_generic_path_matches_brute_force_on_a_layernorm_model():
    un = Unembed(_gpt2())
    assert lens.rms_form(un) is None                # LayerNorm with a bias: the float64-copy path
    h, c = _states(2)
    ln = un.final_norm
    norm = lambda x: torch.nn.functional.layer_norm(x, (D,), ln.weight.double(), ln.bias.double(), ln.eps)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # torch's LayerNorm computes in float64: no precision warning
        fo = lens.first_order_check(un, h, c, lambdas=LAMBDAS, context_layers=[1])
    rem, agree = _reference(norm, un.weight, None, h, c[1], LAMBDAS)
    torch.testing.assert_close(fo.remainder[0], rem, rtol=1e-8, atol=0)
    assert torch.equal(fo.agree[0], agree)


def test_the_remainder_is_exact_where_float32_subtraction_is_round_off():
    """At lambda = 1e-6 .. 1e-4 the remainder is ~1e-8 of the logits: subtracted in float32 it is noise, in closed
    form it follows lambda^2 exactly (slope 1 of the relative remainder, ratio 10 per decade)."""
    un = Unembed(_llama())
    h, c = _states()
    tiny = [1e-6, 1e-5, 1e-4]
    fo = lens.first_order_check(un, h, c, lambdas=tiny, context_layers=[0])
    ratio = fo.remainder[0, 1:] / fo.remainder[0, :-1]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 10.0), rtol=1e-3, atol=0)
    assert abs(fo.slopes([1e-6, 1e-4])[0] - 1) < 1e-3
    # the float32 subtraction the chapter used to do is far off here (which is why it is not done)
    s_q, s_c = un(h), lens.logit_bias(un, h, c[0])
    full = un(h + 1e-5 * c[0])
    naive = (full - s_q - 1e-5 * s_c).norm(dim=-1) / (full - s_q).norm(dim=-1)
    assert ((naive.double() - fo.remainder[0, 1]).abs() / fo.remainder[0, 1]).max() > 0.5


def test_float_noise_in_the_states_barely_moves_the_slopes():
    """States that differ in the last float32 bits (another batch or thread count): slopes move by far less than
    the 0.01 the chapter prints."""
    un = Unembed(_llama())
    h, c = _states()
    noisy = h * (1 + 1e-6 * torch.randn(h.shape, generator=torch.Generator().manual_seed(3)))
    a = lens.first_order_check(un, h, c, lambdas=LAMBDAS, context_layers=[0, 3])
    b = lens.first_order_check(un, noisy, c, lambdas=LAMBDAS, context_layers=[0, 3])
    for layer in (0, 3):
        assert abs(a.slopes([0.1, 1.0])[layer] - b.slopes([0.1, 1.0])[layer]) < 1e-4


def test_vocabulary_chunks_and_bias():
    un = Unembed(_llama())
    h, c = _states()
    whole = lens.first_order_check(un, h, c, lambdas=LAMBDAS, context_layers=[0, 1])
    chunked = lens.first_order_check(un, h, c, lambdas=LAMBDAS, context_layers=[0, 1], vocab_chunk=25)
    torch.testing.assert_close(chunked.remainder, whole.remainder, rtol=1e-12, atol=0)
    assert torch.equal(chunked.agree, whole.agree)
    # an unembedding bias cancels in both differences but moves the argmax
    torch.manual_seed(4)
    biased = torch.nn.Linear(D, V, bias=True)
    with torch.no_grad():
        biased.weight.copy_(un.weight)
        biased.bias.copy_(5 * torch.randn(V))
    un.unembedding = biased
    fo = lens.first_order_check(un, h, c, lambdas=LAMBDAS, context_layers=[0], vocab_chunk=10)
    torch.testing.assert_close(fo.remainder, whole.remainder[:1], rtol=1e-12, atol=0)
    _, agree = _reference(_rms_norm(un), un.weight, biased.bias, h, c[0], LAMBDAS)
    assert torch.equal(fo.agree[0], agree)


def test_a_low_precision_lens_is_read_in_float64():
    """A bfloat16 model's lens (its own bf16 norm and W_U) gives the numbers of a float32 model holding the same
    (bf16-representable) weights: the check reads gain and W_U in float64 either way."""
    m16 = _llama().to(torch.bfloat16)
    m32 = copy.deepcopy(m16).float()
    h, c = _states()
    a = lens.first_order_check(Unembed(m16), h, c, lambdas=LAMBDAS, context_layers=[2])
    b = lens.first_order_check(Unembed(m32), h, c, lambdas=LAMBDAS, context_layers=[2])
    torch.testing.assert_close(a.remainder, b.remainder, rtol=1e-12, atol=0)


def test_a_norm_that_computes_in_float32_is_reported():
    """The generic path warns when the norm's float64 copy ignores float64 bits (transformers' LlamaRMSNorm casts
    to float32 internally, which is why RMSNorm models take the closed form)."""
    un = Unembed(_llama())
    h, c = _states()
    with pytest.warns(UserWarning, match="does not compute in float64"):
        lens._first_order_generic(un, un.weight, None, h.double(), c[:1].double(),
                                  torch.tensor([0.1, 1.0], dtype=torch.float64), 64)


def test_summaries_and_slopes():
    lam = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    rem = torch.stack([3.0 * lam, 0.5 * lam ** 2])[:, :, None].expand(2, 4, 5).clone()   # slopes 1 and 2
    rem[0, :, 0] = 100.0                                                              # one outlier query
    agree = torch.ones(2, 4, 5, dtype=torch.bool)
    agree[1, 3, :2] = False
    fo = lens.FirstOrderCheck(lambdas=lam, context_layers=[4, 7], remainder=rem, agree=agree)
    slopes = fo.slopes([0.01, 10.0])
    assert math.isclose(slopes[4], 1.0, abs_tol=1e-12) and math.isclose(slopes[7], 2.0, abs_tol=1e-12)
    assert fo.median_remainder()[0, 2] == 3.0                 # the median ignores the outlier
    assert fo.agreement()[1].tolist() == [1.0, 1.0, 1.0, 0.6]
    for bad in ([0.01], [1.0, 0.1], [0.0, 1.0], [2.0, 5.0], "0.1-1"):
        with pytest.raises(ValueError, match="fit_range"):
            fo.slopes(bad)


@pytest.mark.parametrize("kwargs, name", [
    ({"lambdas": [0.0, 1.0]}, "lambdas"),
    ({"lambdas": [-0.1]}, "lambdas"),
    ({"lambdas": []}, "lambdas"),
    ({"lambdas": [float("nan")]}, "lambdas"),
    ({"context_layers": [4]}, "context_layers"),
    ({"context_layers": [True]}, "context_layers"),
    ({"context_layers": []}, "context_layers"),
    ({"vocab_chunk": 0}, "vocab_chunk"),
])
def test_bad_input_names_the_parameter(kwargs, name):
    un = Unembed(_llama())
    h, c = _states()
    args = {"lambdas": [0.1, 1.0], "context_layers": [0], **kwargs}
    with pytest.raises(ValueError, match=name):
        lens.first_order_check(un, h, c, **args)


def test_bad_shapes_name_the_parameter():
    un = Unembed(_llama())
    h, c = _states()
    with pytest.raises(ValueError, match="^h must"):
        lens.first_order_check(un, h[:, :5], c, lambdas=[1.0], context_layers=[0])
    with pytest.raises(ValueError, match="^h must"):
        lens.first_order_check(un, h[None], c, lambdas=[1.0], context_layers=[0])
    with pytest.raises(ValueError, match="^c_bar must"):
        lens.first_order_check(un, h, c[0], lambdas=[1.0], context_layers=[0])
