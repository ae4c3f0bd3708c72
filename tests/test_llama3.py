"""Llama 3.1 RoPE scaling (`posexplorer.encodings.context.llama3`): Hugging Face parity, Llama 3.1's band counts, the shared kernel, bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, inv_freq, rotate
from posexplorer.encodings.context.llama3 import Llama3RoPE, llama3_frequencies

DEV = "cuda" if torch.cuda.is_available() else "cpu"

def _hf(head_dim, theta, factor, low, high, L0, prf=1.0, max_pos=131072):
    "Hugging Face's inv_freq and attention_scaling for a Llama config with llama3 rope_parameters"
    tf = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    rp = dict(rope_type="llama3", rope_theta=theta, factor=factor, low_freq_factor=low, high_freq_factor=high,
              original_max_position_embeddings=L0, partial_rotary_factor=prf)
    cfg = tf.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_pos, rope_parameters=rp)
    return ROPE_INIT_FUNCTIONS["llama3"](cfg, None)

@pytest.mark.parametrize("head_dim,theta,factor,low,high,L0,prf", [
    (128, 500000.0, 8.0, 1.0, 4.0, 8192, 1.0),  # Llama 3.1 8B / 70B / 405B
    (64, 500000.0, 32.0, 1.0, 4.0, 8192, 1.0),  # Llama 3.2 1B
    (128, 500000.0, 32.0, 1.0, 4.0, 8192, 1.0),  # Llama 3.2 3B
    (128, 500000.0, 16.0, 1.0, 1.0, 8192, 1.0),  # Llama 4 Scout: equal factors, a hard step
    (96, 10000.0, 4.0, 2.0, 8.0, 4096, 1.0),
    (80, 10000.0, 4.0, 1.0, 4.0, 2048, 0.4),  # partial rotary
    (16, 100.0, 2.0, 0.5, 3.0, 64, 1.0),
])
def test_matches_hugging_face(head_dim, theta, factor, low, high, L0, prf):
    hf, scale = _hf(head_dim, theta, factor, low, high, L0, prf)
    enc = get("llama3", dim=head_dim, base=theta, factor=factor, low_freq_factor=low, high_freq_factor=high,
              original_max_position_embeddings=L0, partial_rotary_factor=prf)
    assert enc.inv_freq.dtype == torch.float64 and enc.inv_freq.shape == hf.shape
    torch.testing.assert_close(enc.inv_freq.float(), hf, rtol=1e-6, atol=0)  # HF computes in float32: a few ulp off
    assert enc.attention_scale == scale == 1.0

def test_llama31_band_counts():
    "d = 128, base 500000, L0 = 8192, factors 1/4/8: 29 pairs kept (0-28), 6 smoothed (29-34), 29 scaled (35-63)"
    enc = get("llama3", dim=128, base=500000.0)
    base = inv_freq(128, 500000.0, torch.float64)
    lam = 2 * math.pi / base
    ours = dict(kept=lam < 8192 / 4, scaled=lam > 8192 / 1)
    ours["smoothed"] = ~ours["kept"] & ~ours["scaled"]
    assert {k: int(v.sum()) for k, v in ours.items()} == dict(kept=29, smoothed=6, scaled=29)
    assert ours["kept"][:29].all() and ours["smoothed"][29:35].all() and ours["scaled"][35:].all()
    # the same bands read off our frequencies and off Hugging Face's
    stretch = base / enc.inv_freq.double()
    assert torch.allclose(stretch[ours["kept"]], torch.tensor(1.0, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(stretch[ours["scaled"]], torch.tensor(8.0, dtype=torch.float64), rtol=1e-6)
    assert ((stretch[ours["smoothed"]] > 1.01) & (stretch[ours["smoothed"]] < 7.99)).all()
    hf, _ = _hf(128, 500000.0, 8.0, 1.0, 4.0, 8192)
    b32 = base.float()
    hf_kept, hf_scaled = torch.isclose(hf, b32, rtol=1e-6, atol=0), torch.isclose(hf, b32 / 8, rtol=1e-6, atol=0)
    assert torch.equal(hf_kept, ours["kept"]) and torch.equal(hf_scaled, ours["scaled"])

def test_meta_reference_loop():
    "Meta's `apply_scaling` (llama-models), restated pair by pair in float64, gives our frequencies"
    f = inv_freq(128, 500000.0, torch.float64)
    ref = []
    for t in f.tolist():
        w = 2 * math.pi / t
        if w < 8192 / 4: ref.append(t)
        elif w > 8192: ref.append(t / 8)
        else:
            g = (8192 / w - 1) / (4 - 1)
            ref.append((1 - g) * t / 8 + g * t)
    torch.testing.assert_close(llama3_frequencies(f, 8.0, 1.0, 4.0, 8192), torch.tensor(ref, dtype=torch.float64), rtol=1e-14, atol=0)

def test_continuous_and_monotone():
    "The stretch θ/θ' never decreases from fast to slow pairs and has no jump at either band edge"
    f = torch.logspace(-6, 0, 4001, dtype=torch.float64)  # frequencies dense across both edges
    st = f / llama3_frequencies(f, 8.0, 1.0, 4.0, 8192)
    assert (st.diff() <= 0).all() and st.min() == 1.0 and st.max() == 8.0  # f increasing -> stretch non-increasing
    for turns in (1.0, 4.0):  # the edges, in turns within L0
        e = torch.tensor([turns * (1 - 1e-9), turns * (1 + 1e-9)], dtype=torch.float64) * 2 * math.pi / 8192
        side = e / llama3_frequencies(e, 8.0, 1.0, 4.0, 8192)
        assert abs(side[0] - side[1]) < 1e-7

def test_scaled_pairs_are_position_interpolation():
    "A scaled pair's angle at m equals RoPE's at m/s"
    enc, rope = get("llama3", dim=64, base=500000.0), get("rope", dim=64, base=500000.0)
    m = torch.arange(0, 65536, 1023)
    a, r = enc.angles(m, torch.float64), rope.angles(m / 8.0, torch.float64)
    sc = 2 * math.pi / rope.inv_freq.double() > 8192
    torch.testing.assert_close(a[:, sc], r[:, sc], rtol=1e-6, atol=1e-9)

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_shared_kernel_matches_reference(backend):
    enc = get("llama3", dim=64, base=500000.0, factor=32.0)
    q, k = torch.randn(2, 41, 3, 64, device=DEV), torch.randn(2, 41, 1, 64, device=DEV)
    pos = torch.arange(41, device=DEV) + 9000  # past L0
    oq, ok = enc.apply(q, k, pos, backend=backend)
    a = enc.angles(pos.cpu(), torch.float64)  # a float64 reference: float32 angles near 9000 rad would be off by 5e-4
    torch.testing.assert_close(oq.cpu().double(), rotate(q.cpu().double(), a), **TOL[torch.float32])
    torch.testing.assert_close(ok.cpu().double(), rotate(k.cpu().double(), a), **TOL[torch.float32])

# ---- precision at large positions -----------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # positions where a float32 θ_i or a float32 angle would be off by radians

def rotate_reference(q, positions, theta):
    "Float64 reference, half layout: pair i turned by m·θ_i reduced mod 2π; features past 2R pass through"
    R, x = len(theta), q.double()
    a = torch.remainder(positions.double()[:, None] * theta, 2 * math.pi)[None, :, None]  # (1, T, 1, R)
    x1, x2 = x[..., :R], x[..., R:2 * R]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin(), x[..., 2 * R:]], -1)

def test_far_positions_match_float64_reference():
    "Meta's apply_scaling written out in float64 (Llama 3.1: d = 128, b = 5·10⁵, s = 8, factors 1/4, L0 = 8192): float32 apply to rounding"
    d, b, s, L0 = 128, 500000.0, 8.0, 8192
    theta = b ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    wavelen = 2 * math.pi / theta
    g = ((L0 / wavelen - 1) / (4 - 1)).clamp(0, 1)  # 1: kept (wavelength < L0/4), 0: divided by s (> L0)
    ref_theta = (1 - g) * theta / s + g * theta
    enc = get("llama3", dim=d, base=b, factor=s)
    q = torch.randn(1, len(FAR), 3, d)
    torch.testing.assert_close(enc.apply(q, None, FAR, backend="torch")[0].double(), rotate_reference(q, FAR, ref_theta), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(enc.angles(FAR, torch.float64), FAR.double()[:, None] * ref_theta, rtol=1e-13, atol=0)  # float64 throughout

def test_head_dim_must_match():
    "Partial rotary is asked for (partial_rotary_factor), never inferred from a wider head"
    q = torch.randn(1, 5, 2, 80)
    with pytest.raises(ValueError, match="head dim"): get("llama3", dim=64).apply(q, q.clone())

@pytest.mark.parametrize("params,exc,arg", [
    (dict(factor=0.5), ValueError, "factor"),
    (dict(factor=0.0), ValueError, "factor"),
    (dict(factor="8"), TypeError, "factor"),
    (dict(low_freq_factor=-1.0), ValueError, "low_freq_factor"),
    (dict(high_freq_factor=float("inf")), ValueError, "high_freq_factor"),
    (dict(low_freq_factor=4.0, high_freq_factor=1.0), ValueError, "high_freq_factor"),
    (dict(original_max_position_embeddings=0), ValueError, "original_max_position_embeddings"),
    (dict(original_max_position_embeddings=8192.0), TypeError, "original_max_position_embeddings"),
    (dict(dim=7), ValueError, "dim"),
    (dict(partial_rotary_factor=1.5), ValueError, "partial_rotary_factor"),
])
def test_bad_input(params, exc, arg):
    with pytest.raises(exc, match=arg): Llama3RoPE(**params)
