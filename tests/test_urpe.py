"""URPE (Luo et al. 2022): C = 1 is plain relative-bias attention, the paper code's formula reproduced independently,
the kernel against the reference, the relative forms against the tables, and bad input."""
import math
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
from conftest import TOL
from posexplorer.core import get
from posexplorer.ops.attention import attend
from posexplorer.encodings.classics.urpe import URPE
from posexplorer.figures.urpe import position_readout_plot, toeplitz_map, urpe_attention_map

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

def rpe_by_hand(q, k, v, b, causal, c=None):
    "softmax(QKᵀ/√d + B) (∘ C) V for (B, T, H, D) inputs and (H, Tq, Tk) tables, written out without posexplorer"
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1]) + b.double()
    if causal: s = s.masked_fill(~torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(k.shape[1] - q.shape[1]), float("-inf"))
    p = s.softmax(-1) * (1.0 if c is None else c.double())
    return torch.einsum("bhqk,bkhd->bqhd", p, v.double()).float()

@SETTINGS
@given(H=st.integers(1, 5), T=st.integers(1, 41), M=st.integers(0, 50), causal=st.booleans(), seed=st.integers(0, 99))
def test_c_one_is_relative_bias_attention(H, T, M, causal, seed):
    "URPE with C = 1 is exactly softmax(QKᵀ/√d + B) V, through posexplorer.ops.attention.attend"
    enc = get("urpe", n_heads=H, max_distance=M, seed=seed, bias_std=1.0, scale_std=0.0)
    assert torch.equal(enc.scale_table, torch.ones(H, 2 * M + 1))
    q, k, v = torch.randn(3, 2, T, H, 8, generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(T)
    torch.testing.assert_close(attend(q, k, v, enc, causal=causal, backend="torch"), rpe_by_hand(q, k, v, enc.bias(pos, pos), causal), **TOL[torch.float32])

@SETTINGS
@given(H=st.integers(1, 4), T=st.integers(1, 33), causal=st.booleans(), seed=st.integers(0, 99))
def test_attend_multiplies_probabilities_by_c(H, T, causal, seed):
    enc = get("urpe", n_heads=H, max_distance=12, seed=seed, bias_std=1.0, scale_std=0.7)
    q, k, v = torch.randn(3, 1, T, H, 8, generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(T)
    want = rpe_by_hand(q, k, v, enc.bias(pos, pos), causal, enc.scale(pos, pos))
    torch.testing.assert_close(attend(q, k, v, enc, causal=causal, backend="torch"), want, **TOL[torch.float32])

def paper_code_attention(x_q, x_k, x_v, rp_weight, ur_weight, n_heads):
    """The data flow of the official URPE code (lsj2408/URPE, fairseq `MultiheadAttention` with `rel_pos_bias` and
    `ur_rel_pos_bias`, tables in the `--rel-pos-unique` / `--ur-attn-unique` mode), reproduced from its description:
    inputs (T, B, E) with the heads packed in E, tables shaped like `nn.Embedding` weights (2L - 1, H) indexed by
    (key - query) - min over an L-position grid, q scaled before the product, B added before the softmax, C multiplied
    after it, no mask (an encoder)."""
    T, Bsz, E = x_q.shape
    hd, L = E // n_heads, (rp_weight.shape[0] + 1) // 2
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # memory - context, (L, L)
    idx = (rel - rel.min())[:T, :T]
    def per_head(w): return F.embedding(idx, w).permute(2, 0, 1).unsqueeze(0).expand(Bsz, -1, -1, -1).reshape(Bsz * n_heads, T, T)
    def heads(x): return x.reshape(T, Bsz * n_heads, hd).transpose(0, 1)  # (B*H, T, hd), row b*H + h
    w = torch.bmm(heads(x_q * hd ** -0.5), heads(x_k).transpose(1, 2)) + per_head(rp_weight)
    w = w.softmax(-1) * per_head(ur_weight)
    return torch.bmm(w, heads(x_v)).transpose(0, 1).reshape(T, Bsz, E)

@pytest.mark.parametrize("T,L,H", [(1, 1, 1), (7, 7, 2), (13, 20, 3), (29, 32, 4)])
def test_matches_the_paper_code_formula(T, L, H):
    "Same numbers as the official code's attention for tables of every offset of an L-token grid (our M = L - 1)"
    g = torch.Generator().manual_seed(T)
    hd, Bsz = 8, 2
    x_q, x_k, x_v = torch.randn(3, T, Bsz, H * hd, dtype=torch.float64, generator=g)
    rp_w, ur_w = torch.randn(2, 2 * L - 1, H, dtype=torch.float64, generator=g)
    want = paper_code_attention(x_q, x_k, x_v, rp_w, ur_w, H)  # (T, B, E)
    enc = get("urpe", n_heads=H, max_distance=L - 1, bias_table=rp_w.T.contiguous(), scale_table=ur_w.T.contiguous())
    def ours(x): return x.transpose(0, 1).reshape(Bsz, T, H, hd)  # (B, T, H, hd)
    got = attend(ours(x_q), ours(x_k), ours(x_v), enc, causal=False, backend="torch")
    torch.testing.assert_close(got.reshape(Bsz, T, H * hd).transpose(0, 1), want, atol=1e-5, rtol=1e-5)  # float32 probabilities inside

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq,Tk", [(19, 19), (3, 37), (1, 40)])
def test_triton_kernel_matches_reference(causal, Tq, Tk):
    enc = get("urpe", n_heads=3, max_distance=9, seed=2, bias_std=1.0, scale_std=0.5)
    g = torch.Generator().manual_seed(Tk)
    q, k, v = torch.randn(1, Tq, 3, 16, generator=g), torch.randn(1, Tk, 3, 16, generator=g), torch.randn(1, Tk, 3, 16, generator=g)
    torch.testing.assert_close(attend(q, k, v, enc, causal=causal, backend="triton"), attend(q, k, v, enc, causal=causal, backend="torch"), **TOL[torch.float32])

@SETTINGS
@given(H=st.integers(1, 12), Tq=st.integers(1, 30), Tk=st.integers(1, 30), M=st.integers(0, 40), shift=st.integers(-50, 1000))
def test_relative_forms_agree_with_tables(H, Tq, Tk, M, shift):
    "relative_bias/relative_scale at offsets k − q are what bias/scale put on each diagonal; shifts change nothing"
    enc = get("urpe", n_heads=H, max_distance=M, scale_std=0.3)
    qp, kp = torch.arange(Tq) + shift, torch.arange(Tk) + shift
    off = kp[None, :] - qp[:, None]
    assert torch.equal(enc.bias(qp, kp), enc.relative_bias(off)) and torch.equal(enc.scale(qp, kp), enc.relative_scale(off))
    r = torch.arange(-(Tk - 1), Tq)
    assert enc.relative_bias(r).shape == enc.relative_scale(r).shape == (H, Tq + Tk - 1)
    clipped = r.clamp(-M, M) + M
    assert torch.equal(enc.relative_scale(r), enc.scale_table[:, clipped])
    assert torch.equal(enc.scale(qp - shift, kp - shift), enc.scale(qp, kp))

def test_constant_input_position_identification():
    "RPE gives every position the same output on a constant input; the ramp C recovers each position exactly"
    T = 25
    r = torch.arange(-(T - 1), T)[None]
    ramp = get("urpe", n_heads=1, max_distance=T - 1, bias_table=torch.zeros(1, 2 * T - 1), scale_table=(r <= 0).float())
    fig = position_readout_plot({"rpe": get("urpe", n_heads=1, bias_std=3.0, scale_std=0.0), "ramp": ramp}, T=T)
    rpe_y, ramp_y = (torch.tensor(t.y) for t in fig.data)
    torch.testing.assert_close(rpe_y, torch.ones(T, dtype=rpe_y.dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(T * ramp_y - 1, torch.arange(T, dtype=ramp_y.dtype), atol=1e-5, rtol=0)

def test_gradients_reach_the_tables_and_inputs_are_untouched():
    bt, ct = torch.zeros(2, 11, requires_grad=True), torch.ones(2, 11, requires_grad=True)
    enc = get("urpe", n_heads=2, max_distance=5, bias_table=bt, scale_table=ct)
    q, k, v = torch.randn(3, 1, 9, 2, 4)
    q0 = q.clone()
    attend(q, k, v, enc, causal=True, backend="torch").sum().backward()
    assert ct.grad[:, :6].abs().min() > 0 and ct.grad[:, 6:].abs().max() == 0  # causal: offsets −5 (clipped −8..−5) to 0
    assert torch.equal(q, q0) and torch.equal(bt.detach(), torch.zeros(2, 11))

def test_figures():
    enc = get("urpe", n_heads=3, max_distance=4, scale_std=0.5)
    f = toeplitz_map(enc, T=7)
    assert len(f.data) == 3 and len(f.layout.sliders[0].steps) == 3 and f.layout.title.text.endswith("?")
    z = torch.tensor(f.data[2].z)
    assert torch.allclose(z, enc.scale(torch.arange(7), torch.arange(7))[2])
    m = urpe_attention_map(enc, T=9, heads=(1,))
    assert len(m.data) == 2 and not m.layout.sliders

CASES = [  # (id, call, exception, the argument its message must name)
    ("zero heads", lambda: get("urpe", n_heads=0), ValueError, "n_heads"),
    ("float heads", lambda: get("urpe", n_heads=2.0), TypeError, "n_heads"),
    ("bool heads", lambda: get("urpe", n_heads=True), TypeError, "n_heads"),
    ("negative max_distance", lambda: get("urpe", max_distance=-1), ValueError, "max_distance"),
    ("float max_distance", lambda: get("urpe", max_distance=1.5), TypeError, "max_distance"),
    ("negative seed", lambda: get("urpe", seed=-1), ValueError, "seed"),
    ("negative bias_std", lambda: get("urpe", bias_std=-0.1), ValueError, "bias_std"),
    ("nan scale_std", lambda: get("urpe", scale_std=float("nan")), ValueError, "scale_std"),
    ("string scale_std", lambda: get("urpe", scale_std="0.1"), TypeError, "scale_std"),
    ("bias_table of wrong shape", lambda: get("urpe", n_heads=2, max_distance=3, bias_table=torch.zeros(2, 6)), ValueError, "bias_table"),
    ("scale_table not a tensor", lambda: get("urpe", n_heads=1, max_distance=0, scale_table=[[1.0]]), TypeError, "scale_table"),
    ("scale_table with inf", lambda: get("urpe", n_heads=1, max_distance=0, scale_table=torch.tensor([[math.inf]])), ValueError, "scale_table"),
    ("integer bias_table", lambda: get("urpe", n_heads=1, max_distance=0, bias_table=torch.zeros(1, 1, dtype=torch.long)), TypeError, "bias_table"),
    ("fractional q_positions", lambda: get("urpe").bias(torch.tensor([0.5]), torch.arange(3)), ValueError, "q_positions"),
    ("2-D k_positions", lambda: get("urpe").scale(torch.arange(3), torch.zeros(2, 3, dtype=torch.long)), ValueError, "k_positions"),
    ("list positions", lambda: get("urpe").bias([0, 1], torch.arange(3)), TypeError, "q_positions"),
    ("bool offsets", lambda: get("urpe").relative_bias(torch.tensor([True])), TypeError, "offsets"),
    ("nan offsets", lambda: get("urpe").relative_scale(torch.tensor([float("nan")])), ValueError, "offsets"),
    ("toeplitz_map of another encoding", lambda: toeplitz_map(get("rope", dim=8)), TypeError, "enc"),
    ("toeplitz_map head out of range", lambda: toeplitz_map(get("urpe", n_heads=2), heads=(2,)), ValueError, "heads"),
    ("readout of a rotary encoding", lambda: position_readout_plot(get("rope", dim=8)), ValueError, "encodings"),
    ("readout head out of range", lambda: position_readout_plot(get("urpe", n_heads=2), head=2), ValueError, "head"),
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"): call()
