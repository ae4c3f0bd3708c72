"""Our reading of the RoPE + ALiBi harmonic combination (arXiv:2410.18441): harmonic slopes, the logits against a
plain-torch computation of the formula, relativity, the kernels, and bad input. The paper's formula is not available,
so the outside references are the parts: the harmonic numbers, ALiBi's published slopes, Hugging Face's rotary."""
import math
from fractions import Fraction
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from conftest import TOL
from posexplorer.core import get, rotate
from posexplorer.ops.attention import attend, attention_logits
from posexplorer.encodings.classics.bias import alibi_slopes
from posexplorer.encodings.classics.rope_alibi_harmonic import RopeAlibiHarmonic, harmonic_slopes
from posexplorer.figures.rope_alibi_harmonic import logit_vs_distance, head_slopes_plot

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

def by_hand(q, k, positions, slopes, inv_freq):
    "q·R_{n-m}k/√D − m_h|n − m| with the rotation written as complex multiplication (interleaved pairs), float64"
    a = positions.double()[:, None] * inv_freq.double()[None]  # (T, R)
    def rot(x):  # half layout: pair i is (i, i + R)
        R = a.shape[-1]
        z = torch.complex(x[..., :R].double(), x[..., R:2 * R].double()) * torch.polar(torch.ones_like(a), a)[None, :, None]
        return torch.cat([z.real, z.imag, x[..., 2 * R:].double()], -1)
    s = torch.einsum("bqhd,bkhd->bhqk", rot(q), rot(k)) / math.sqrt(q.shape[-1])
    return s - slopes.double()[:, None, None] * (positions[None, :] - positions[:, None]).abs().double()

def test_harmonic_slopes_against_harmonic_numbers():
    for H in (1, 2, 7, 8, 12):
        assert Fraction(harmonic_slopes(H, 1.0, torch.float64).sum().item()).limit_denominator(10**6) == sum(Fraction(1, h) for h in range(1, H + 1))
    assert torch.equal(harmonic_slopes(4, 2.0, torch.float64), torch.tensor([2.0, 1.0, 2 / 3, 0.5], dtype=torch.float64))

def test_default_c_is_alibis_first_slope():
    "Head 1 matches ALiBi's published first slope 2^(-8/H); with 8 heads, head 2 too (1/4)"
    for H in (1, 4, 8, 16):
        enc = get("rope_alibi_harmonic", n_heads=H)
        assert enc.linear_slopes()[0].item() == pytest.approx(2 ** (-8 / H)) == alibi_slopes(H)[0].item()
    assert torch.allclose(get("rope_alibi_harmonic").linear_slopes()[:2], torch.tensor([0.5, 0.25]))
    assert torch.allclose(get("rope_alibi_harmonic", n_heads=3, c=0.3).linear_slopes(), torch.tensor([0.3, 0.15, 0.1]))

@SETTINGS
@given(H=st.integers(1, 6), T=st.integers(1, 30), dim=st.integers(1, 8).map(lambda r: 2 * r), share=st.sampled_from([1.0, 0.5]), seed=st.integers(0, 99))
def test_logits_match_the_formula(H, T, dim, share, seed):
    "Heads of D = dim / share features, `dim` of which rotate (share 0.5: partial rotary, asked for by partial_rotary_factor)"
    D = round(dim / share)
    enc = get("rope_alibi_harmonic", n_heads=H, dim=D, c=0.7, partial_rotary_factor=share)
    assert enc.rotary.rotary_dim == dim
    q, k = torch.randn(2, 1, T, H, D, generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(T)
    got = attention_logits(q, k, enc, q_positions=pos, k_positions=pos, causal=False)
    torch.testing.assert_close(got.double(), by_hand(q, k, pos, enc.slopes, enc.rotary.inv_freq), atol=1e-4, rtol=1e-4)

@SETTINGS
@given(T=st.integers(2, 25), shift=st.integers(-300, 3000))
def test_relative(T, shift):
    enc = get("rope_alibi_harmonic", n_heads=4, dim=16)
    q, k = torch.randn(2, 1, T, 4, 16)
    pos = torch.arange(T)
    torch.testing.assert_close(attention_logits(q, k, enc, q_positions=pos + shift, k_positions=pos + shift, causal=False), attention_logits(q, k, enc, q_positions=pos, k_positions=pos, causal=False), atol=2e-3, rtol=1e-3)

def test_rope_part_matches_hugging_face():
    "The carried rotary is RoPE: Hugging Face's Llama rotary gives the same q"
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig
    enc = get("rope_alibi_harmonic", n_heads=4, dim=32)
    cfg = LlamaConfig(hidden_size=128, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    q = torch.randn(1, 19, 4, 32)
    cos, sin = llama.LlamaRotaryEmbedding(cfg)(q, torch.arange(19)[None])
    hq, _ = llama.apply_rotary_pos_emb(q, q, cos, sin, unsqueeze_dim=2)
    torch.testing.assert_close(enc.rotary.apply(q, None)[0], hq, **TOL[torch.float32])

@pytest.mark.parametrize("causal", [True, False])
def test_kernels_on_the_two_parts(causal):
    "Rotary kernel then the bias-attention kernel (in-register slopes) equals softmax of the formula applied to v"
    enc = get("rope_alibi_harmonic", n_heads=3, dim=16)
    bias_part = get("alibi", n_heads=3); bias_part.slopes = enc.slopes
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 1, 29, 3, 16, generator=g)
    qr, kr = enc.rotary.apply(q, k, backend="triton")
    s = by_hand(q, k, torch.arange(29), enc.slopes, enc.rotary.inv_freq)
    if causal: s = s.masked_fill(~torch.ones(29, 29, dtype=torch.bool).tril(), float("-inf"))
    want = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double()).float()
    torch.testing.assert_close(attend(qr, kr, v, bias_part, causal=causal, backend="triton"), want, **TOL[torch.float32])

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_applies_the_carried_rotary(backend):
    enc = get("rope_alibi_harmonic", n_heads=2, dim=8)
    q, k, v = torch.randn(3, 1, 11, 2, 8)
    pos = torch.arange(11)
    a = enc.rotary.angles(pos)  # the composition by hand: rotate q and k, then add the harmonic bias
    logits = torch.einsum("bqhd,bkhd->bhqk", rotate(q, a), rotate(k, a)) / math.sqrt(8) + enc.bias(pos, pos)[None]
    torch.testing.assert_close(attention_logits(q, k, enc, causal=False), logits, **TOL[torch.float32])
    want = torch.einsum("bhqk,bkhd->bqhd", logits.masked_fill(~torch.ones(11, 11, dtype=torch.bool).tril(), float("-inf")).softmax(-1), v)
    torch.testing.assert_close(attend(q, k, v, enc, backend=backend), want, **TOL[torch.float32])

def test_figures():
    enc = get("rope_alibi_harmonic", n_heads=2, dim=8)
    f = logit_vs_distance({"rope": get("rope", dim=8), "ours": enc}, max_distance=10, dim=8, n_heads=2)
    assert len(f.data) == 4 and len(f.layout.sliders[0].steps) == 2
    r = torch.arange(11).double()
    rope_logit = 2 * torch.cos(r[:, None] * enc.rotary.inv_freq.double()[None]).sum(-1) / math.sqrt(8)
    torch.testing.assert_close(torch.tensor(f.data[3].y), rope_logit - enc.slopes[1].double() * r, atol=1e-4, rtol=0)
    s = head_slopes_plot(enc)
    assert list(s.data[0].y) == pytest.approx(enc.slopes.tolist())

CASES = [  # (id, call, exception, the argument its message must name)
    ("zero heads", lambda: get("rope_alibi_harmonic", n_heads=0), ValueError, "n_heads"),
    ("float heads", lambda: get("rope_alibi_harmonic", n_heads=4.0), TypeError, "n_heads"),
    ("odd dim", lambda: get("rope_alibi_harmonic", dim=7), ValueError, "dim"),
    ("zero base", lambda: get("rope_alibi_harmonic", base=0.0), ValueError, "base"),
    ("zero partial_rotary_factor", lambda: get("rope_alibi_harmonic", partial_rotary_factor=0.0), ValueError, "partial_rotary_factor"),
    ("q wider than dim", lambda: attention_logits(torch.randn(1, 3, 2, 20), torch.randn(1, 3, 2, 20), get("rope_alibi_harmonic", n_heads=2, dim=16)), ValueError, "q"),
    ("negative c", lambda: get("rope_alibi_harmonic", c=-0.5), ValueError, "c"),
    ("zero c", lambda: get("rope_alibi_harmonic", c=0), ValueError, "c"),
    ("string c", lambda: get("rope_alibi_harmonic", c="1/2"), TypeError, "c"),
    ("slopes for no heads", lambda: harmonic_slopes(0), ValueError, "n_heads"),
    ("half-precision slopes", lambda: harmonic_slopes(4, dtype=torch.float16), TypeError, "dtype"),
    ("2-D positions", lambda: get("rope_alibi_harmonic").bias(torch.zeros(2, 2), torch.arange(2)), ValueError, "q_positions"),
    ("heads mismatch in the figure", lambda: logit_vs_distance(get("rope_alibi_harmonic", n_heads=4), n_heads=8), ValueError, "n_heads"),
    ("head 0 in the figure", lambda: logit_vs_distance(get("rope_alibi_harmonic", n_heads=2), n_heads=2, heads=(0,)), ValueError, "heads"),
    ("slopes of an encoding without them", lambda: head_slopes_plot(get("t5", n_heads=2)), ValueError, "encodings"),
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"): call()
