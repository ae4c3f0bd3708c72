"""Position Interpolation (`posexplorer.encodings.context.pi`, registered as "linear"): Hugging Face's `rope_type="linear"`, lucidrains'
`interpolate_factor`, the issue's positions-or-frequencies check, the paper's interpolation bound, and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, get, inv_freq
from posexplorer.encodings.context.pi import LinearRoPE, fitted_qk

BACKENDS = ["torch", "triton"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- Hugging Face transformers -----------------------------------------------------------------------------
@pytest.mark.parametrize("head_dim,theta,factor,partial", [(64, 10000.0, 4.0, 1.0), (128, 500000.0, 8.0, 1.0), (96, 1e6, 2.5, 1.0),
                                                          (80, 10000.0, 3.0, 0.4), (32, 10000.0, 1.0, 0.5), (16, 100.0, 32.0, 1.0)])
def test_hf_linear_inv_freq(head_dim, theta, factor, partial):
    "ROPE_INIT_FUNCTIONS['linear'] gives the same frequencies and attention scale (HF rounds θ_i to float32 before dividing)"
    tf = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = {"rope_type": "linear", "factor": factor, "rope_theta": theta, "partial_rotary_factor": partial}
    cfg = tf.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, rope_parameters=params)
    hf, scale = ROPE_INIT_FUNCTIONS["linear"](cfg, None)
    enc = get("linear", dim=head_dim, base=theta, factor=factor, partial_rotary_factor=partial)
    assert enc.rotary_dim == int(head_dim * partial) == 2 * len(hf)
    assert enc.inv_freq.dtype == torch.float64
    torch.testing.assert_close(enc.inv_freq.float(), hf, rtol=1e-6, atol=0)  # HF rounds θ_i to float32 before dividing
    assert enc.attention_scale == scale == 1.0

@pytest.mark.parametrize("backend", BACKENDS)
def test_hf_linear_llama_rotary(backend):
    "LlamaRotaryEmbedding with linear scaling plus apply_rotary_pos_emb, in our (B, T, H, D) layout"
    tf = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as llama
    B, T, Hq, Hk, D = 2, 41, 4, 2, 32
    cfg = tf.LlamaConfig(hidden_size=D * Hq, num_attention_heads=Hq, num_key_value_heads=Hk,
                         rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    q, k = torch.randn(B, T, Hq, D), torch.randn(B, T, Hk, D)
    pos = torch.arange(T)[None].expand(B, T) + torch.tensor([[0], [3000]])  # per-batch offsets, past the original context
    cos, sin = llama.LlamaRotaryEmbedding(cfg)(q, pos)
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    oq, ok = get("linear", dim=D, factor=4.0).apply(q.to(DEV), k.to(DEV), pos.to(DEV), backend=backend)
    torch.testing.assert_close(oq.cpu(), hq, atol=1e-4, rtol=1e-4); torch.testing.assert_close(ok.cpu(), hk, atol=1e-4, rtol=1e-4)

# ---- lucidrains' rotary-embedding-torch: it divides the positions ---------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D,factor", [(32, 4.0), (64, 2.0), (16, 3.0)])
def test_lucidrains_interpolate_factor(backend, D, factor):
    "RotaryEmbedding(interpolate_factor=s) reads position m as m/s; interleaved pairs, (B, H, T, D) tensors"
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    x = torch.randn(2, 3, 53, D)
    theirs = RotaryEmbedding(D, interpolate_factor=factor).rotate_queries_or_keys(x)
    ours, _ = get("linear", dim=D, factor=factor).apply(x.transpose(1, 2).contiguous().to(DEV), None, layout="interleaved", backend=backend)
    torch.testing.assert_close(ours.cpu().transpose(1, 2), theirs, atol=1e-5, rtol=1e-5)

# ---- the check: scaling positions or frequencies gives the same angles -------------------------------
@pytest.mark.parametrize("s", [2.0, 4.0, 8.0, 16.0, 64.0])
@pytest.mark.parametrize("dim", [2, 8, 64, 128])
def test_positions_or_frequencies_power_of_two_exact(s, dim):
    "angles(m/s, θ) == angles(m, θ/s) bit for bit in float64 and float32 when s is a power of two; and through the encodings"
    m = torch.arange(0, 70000)
    f64, f32 = inv_freq(dim, dtype=torch.float64), inv_freq(dim)
    assert torch.equal(angles(m.double() / s, f64, torch.float64), angles(m, f64 / s, torch.float64))
    assert torch.equal(angles(m.float() / s, f32), angles(m, f32 / s))
    enc = get("linear", dim=dim, factor=s)
    assert torch.equal(enc.angles(m, torch.float64), get("rope", dim=dim).angles(m.double() / s, torch.float64))
    assert torch.equal(enc.angles(m), get("rope", dim=dim).angles(m.float() / s))
    assert torch.equal(enc.inv_freq, get("rope", dim=dim).inv_freq / s)

@pytest.mark.parametrize("s", [3.0, 1.5, 2.5, 6.0, 7.3, 1.0001])
def test_positions_or_frequencies_other_factors(s):
    "Other factors: two roundings on each side, equal to float32 (float64) rounding"
    m = torch.arange(0, 70000)
    f64 = inv_freq(128, dtype=torch.float64)
    torch.testing.assert_close(angles(m.double() / s, f64, torch.float64), angles(m, f64 / s, torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(angles(m.float() / s, f64.float()), angles(m, (f64 / s).float()), rtol=3e-7, atol=0)
    enc = get("linear", dim=128, factor=s)
    torch.testing.assert_close(enc.angles(m, torch.float64), angles(m.double() / s, f64, torch.float64), rtol=1e-7, atol=0)

# ---- the paper's Theorem 2.1 -------------------------------------------------------------------------------
def _a(h, s, theta): return (h * torch.exp(1j * s[:, None] * theta)).real.sum(-1)

def _interp_error(h, s, theta):
    s1 = s.floor(); lam = s - s1
    return (_a(h, s, theta) - (1 - lam) * _a(h, s1, theta) - lam * _a(h, s1 + 1, theta)).abs()

@pytest.mark.parametrize("d,c", [(128, 10000.0), (64, 10000.0), (256, 500000.0), (16, 100.0)])
def test_interpolation_bound_exact_constant(d, c):
    "|a(s) − a_lin(s)| ≤ ½ max|h_j| Σθ_j² (s − s1)(s2 − s), on random q, k and on q = k = 1, at many fractional s"
    theta = inv_freq(d, c, torch.float64)
    s = torch.rand(400, dtype=torch.float64) * 4096
    w = (s - s.floor()) * (s.floor() + 1 - s)
    for h in [torch.randn(d // 2, dtype=torch.complex128) for _ in range(8)] + [torch.full((d // 2,), 2.0, dtype=torch.complex128)]:
        bound = h.abs().max() * (theta ** 2).sum() / 2 * w
        assert (_interp_error(h, s, theta) <= bound + 1e-12).all()

def test_interpolation_bound_paper_constant_fails():
    "Theorem 2.1's constant d/(8 ln c) is too small: q = k = 1 at s = 1/2 (d = 128, c = 10^4) exceeds it; PI at s = 2 produces it"
    d, c = 128, 10000.0
    theta = inv_freq(d, c, torch.float64)
    h, half = torch.full((64,), 2.0, dtype=torch.complex128), torch.tensor([0.5], dtype=torch.float64)
    err = _interp_error(h, half, theta).item()
    stated = d * 2.0 * 0.25 / (8 * math.log(c))
    assert stated < err < 2.0 * (theta ** 2).sum().item() / 8
    assert 1 / (1 - c ** (-4 / d)) > d / (4 * math.log(c))  # the step (14) of the proof, reversed
    x = torch.ones(1, 3, 1, d, dtype=torch.float64)
    q, k = get("linear", dim=d, factor=2.0).apply(x, x)
    sc = (q[0, :, 0] * k[0, 0, 0]).sum(-1)  # distances 0, 1, 2 = a(0), a(1/2), a(1)
    assert abs((sc[1] - (sc[0] + sc[2]) / 2).item() - err) < 1e-9  # float64 θ_i, float64 angles for float64 activations

def test_fitted_scores_extrapolate_wildly_interpolate_tamely():
    "PI's §2.2: q, k fitted to noise on [0, L) score in hundreds beyond L; PI with s = 4 keeps them tame to 4L"
    from posexplorer.figures import shared as viz
    L = 1024
    qk = fitted_qk(L)
    fig = viz.score_vs_distance({"rope": get("rope", dim=128), "pi": get("linear", dim=128, factor=4.0)}, max_distance=4 * L, q=qk, dim=128)
    r, p = (torch.tensor(t.y) for t in fig.data)
    assert r[:L].abs().max() < 1 and r[L:].abs().max() > 50 and p.abs().max() < 1

# ---- precision at large positions ---------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # positions where a float32 θ_i or a float32 angle would be off by radians

def rotate_reference(q, positions, theta):
    "Float64 reference, half layout: pair i turned by m·θ_i reduced mod 2π; features past 2R pass through"
    R, x = len(theta), q.double()
    a = torch.remainder(positions.double()[:, None] * theta, 2 * math.pi)[None, :, None]  # (1, T, 1, R)
    x1, x2 = x[..., :R], x[..., R:2 * R]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin(), x[..., 2 * R:]], -1)

@pytest.mark.parametrize("s", [4.0, 3.0])
def test_far_positions_match_float64_reference(s):
    "θ_i / s = b^(−2i/d) / s in float64: enc.apply in float32 at m up to 2³¹ − 1 is right to float32 rounding (partial rotary too)"
    d, b = 80, 10000.0
    theta = b ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32) / s  # 32 of the 80 features rotate
    enc = get("linear", dim=d, base=b, factor=s, partial_rotary_factor=0.4)
    q = torch.randn(1, len(FAR), 3, d)
    torch.testing.assert_close(enc.apply(q, None, FAR, backend="torch")[0].double(), rotate_reference(q, FAR, theta), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(enc.angles(FAR, torch.float64), FAR.double()[:, None] * theta, rtol=1e-15, atol=0)  # float64 throughout

def test_head_dim_must_match():
    "Partial rotary is asked for (partial_rotary_factor), never inferred from a wider head"
    q = torch.randn(1, 5, 2, 80)
    with pytest.raises(ValueError, match="head dim"): get("linear", dim=32).apply(q, q.clone())

# ---- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(factor=0.5), ValueError, "`factor` must be >= 1"),
    (dict(factor=0.0), ValueError, "`factor`"),
    (dict(factor=-2.0), ValueError, "`factor`"),
    (dict(factor=float("inf")), ValueError, "`factor`"),
    (dict(factor=float("nan")), ValueError, "`factor`"),
    (dict(factor="4"), TypeError, "`factor`"),
    (dict(factor=True), TypeError, "`factor`"),
    (dict(factor=None), TypeError, "`factor`"),
    (dict(dim=7), ValueError, "`dim`"),
    (dict(dim=64, partial_rotary_factor=0.3), ValueError, "`partial_rotary_factor`"),
    (dict(base=-1.0), ValueError, "`base`"),
])
def test_bad_input(kwargs, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")): get("linear", **kwargs)

def test_fitted_qk_bad_input():
    with pytest.raises(ValueError, match="`L`"): fitted_qk(0)
    with pytest.raises(ValueError, match="`rcond`"): fitted_qk(16, rcond=0.0)
    with pytest.raises(ValueError, match="`dim`"): fitted_qk(16, dim=5)

def test_card():
    enc = get("linear", dim=16)
    assert isinstance(enc, LinearRoPE) and enc.card.arxiv == "2306.15595" and enc.card.properties == {"relative": True}
    assert enc.factor == 4.0 and enc.card.notebook == "context/pi.ipynb"
