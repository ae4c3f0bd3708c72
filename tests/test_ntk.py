"""NTK-aware ("ntk") and dynamic NTK ("dynamic_ntk", `posexplorer.encodings.context.ntk`): Hugging Face's `rope_type="dynamic"` at several
lengths and through its stateful rotary module, static NTK against the formula, against HF dynamic at L0(2 − 1/s) and
against lucidrains' `theta_rescale_factor`, the KV-cache drift, and bad input."""
import math
import pytest
import torch
from posexplorer.core import angles, get, inv_freq, rotate
from posexplorer.ops.attention import attention_logits
from posexplorer.encodings.context.ntk import NTKRoPE, DynamicNTKRoPE, ntk_base, sequence_length, cached_key_drift, cached_logit_change
from posexplorer.figures.ntk import cache_drift_plot

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _dynamic_config(head_dim, theta, factor, L0, partial=1.0):
    tf = pytest.importorskip("transformers")
    params = {"rope_type": "dynamic", "factor": factor, "rope_theta": theta, "partial_rotary_factor": partial}
    return tf.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=L0, rope_parameters=params)

CASES = [(128, 10000.0, 4.0, 4096, 1.0), (64, 500000.0, 2.0, 8192, 1.0), (96, 1e6, 8.0, 2048, 1.0), (80, 10000.0, 3.0, 1024, 0.4),
         (16, 10000.0, 1.0, 512, 1.0), (4, 100.0, 2.5, 64, 1.0)]

# ---- Hugging Face: _compute_dynamic_ntk_parameters at several lengths --------------------------------------------
@pytest.mark.parametrize("head_dim,theta,factor,L0,partial", CASES)
def test_hf_dynamic_inv_freq(head_dim, theta, factor, L0, partial):
    from transformers.modeling_rope_utils import _compute_dynamic_ntk_parameters, ROPE_INIT_FUNCTIONS
    cfg = _dynamic_config(head_dim, theta, factor, L0, partial)
    enc = get("dynamic_ntk", dim=head_dim, base=theta, factor=factor, original_max_position_embeddings=L0, partial_rotary_factor=partial)
    init, scale = ROPE_INIT_FUNCTIONS["dynamic"](cfg, None)  # at initialization HF uses seq_len = max_position_embeddings
    assert enc.inv_freq.dtype == torch.float64
    torch.testing.assert_close(enc.inv_freq.float(), init, rtol=1e-6, atol=0)  # HF computes in float32: a few ulp off
    assert enc.attention_scale == scale == 1.0 and enc.rotary_dim == 2 * len(init)
    for L in (1, L0 // 3, L0 - 1, L0, L0 + 1, L0 + 17, 2 * L0, 3 * L0 + 5, 8 * L0, 50 * L0 + 1):
        hf = _compute_dynamic_ntk_parameters(cfg, None, seq_len=L)[0]
        torch.testing.assert_close(enc.inv_freq_at(L).float(), hf, rtol=1e-6, atol=0, msg=f"seq_len={L}")
        last = torch.arange(max(0, L - 3), L)  # the newest positions: L is read as their max + 1
        torch.testing.assert_close(enc.angles(last), angles(last, hf), rtol=2e-6, atol=1e-6)

@pytest.mark.parametrize("L", [5, 64, 65, 97, 300])
def test_hf_dynamic_rotary_module(L):
    "A fresh LlamaRotaryEmbedding(rope_type='dynamic') over positions 0..L-1 gives our cos and sin"
    tf = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as llama
    cfg = _dynamic_config(32, 10000.0, 2.0, 64)
    cos, sin = llama.LlamaRotaryEmbedding(cfg)(torch.zeros(1, 1, 32), torch.arange(L)[None])
    a = get("dynamic_ntk", dim=32, factor=2.0, original_max_position_embeddings=64).angles(torch.arange(L))
    torch.testing.assert_close(cos[0], a.cos().repeat(1, 2), atol=2e-5, rtol=0)
    torch.testing.assert_close(sin[0], a.sin().repeat(1, 2), atol=2e-5, rtol=0)

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hf_dynamic_apply(backend):
    "Llama's rotary embedding plus apply_rotary_pos_emb, past L0, in our (B, T, H, D) layout"
    tf = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as llama
    B, T, Hq, Hk, D = 2, 77, 4, 2, 32
    cfg = _dynamic_config(D, 10000.0, 4.0, 48)
    q, k = torch.randn(B, T, Hq, D), torch.randn(B, T, Hk, D)
    cos, sin = llama.LlamaRotaryEmbedding(cfg)(q, torch.arange(T)[None])
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    oq, ok = get("dynamic_ntk", dim=D, factor=4.0, original_max_position_embeddings=48).apply(q.to(DEV), k.to(DEV), backend=backend)
    torch.testing.assert_close(oq.cpu(), hq, atol=1e-5, rtol=1e-5); torch.testing.assert_close(ok.cpu(), hk, atol=1e-5, rtol=1e-5)

# ---- the KV-cache pitfall, in Hugging Face and ours -------------------------------------------------------------------
@pytest.mark.parametrize("prompt", [1, 5, 40])
def test_hf_generation_cache_drift(prompt):
    """HF's stateful module fed a prompt then one position per step rotates each key as our cache model says (length
    max(prompt, p + 1)); a fresh module over the whole sequence rotates it as our fresh pass; they differ by our drift"""
    tf = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as llama
    L0, T, D = 32, 120, 16
    cfg = _dynamic_config(D, 10000.0, 2.0, L0)
    emb, x = llama.LlamaRotaryEmbedding(cfg), torch.zeros(1, 1, D)
    steps = [emb(x, torch.arange(prompt)[None])[0][0]] + [emb(x, torch.tensor([[t]]))[0][0] for t in range(prompt, T)]
    hf_cached, hf_fresh = torch.cat(steps), llama.LlamaRotaryEmbedding(cfg)(x, torch.arange(T)[None])[0][0]
    enc = get("dynamic_ntk", dim=D, factor=2.0, original_max_position_embeddings=L0)
    cached = torch.stack([angles(torch.tensor([p]), enc.inv_freq_at(max(prompt, p + 1)), torch.float64)[0] for p in range(T)])
    torch.testing.assert_close(hf_cached, cached.cos().float().repeat(1, 2), atol=1e-4, rtol=0)
    fresh = enc.angles(torch.arange(T), torch.float64)
    torch.testing.assert_close(hf_fresh, fresh.cos().float().repeat(1, 2), atol=1e-4, rtol=0)
    drift = torch.stack([cached_key_drift(enc, p, [T], prompt)[0] for p in range(T)])  # (T, D/2)
    torch.testing.assert_close(hf_cached[:, :D // 2], (fresh + drift).cos().float(), atol=1e-4, rtol=0)
    assert (hf_cached - hf_fresh).abs().max() > 0.1

def test_drift_zero_before_L0_nonzero_after():
    "Keys cached before L0 match a fresh pass exactly while L <= L0, and differ at every L > L0 (position 0 excepted)"
    enc = get("dynamic_ntk", dim=64, factor=4.0, original_max_position_embeddings=100)
    Ls = list(range(100, 450))
    for p in (1, 7, 50, 99):
        d = cached_key_drift(enc, p, Ls).abs().max(-1).values
        assert d[0] == 0 and (d[1:] > 0).all()
        lc = cached_logit_change(enc, p, Ls)
        assert lc[0] == 0 and (lc[1:] > 0).all()
    assert cached_key_drift(enc, 0, Ls).abs().max() == 0
    d = cached_key_drift(enc, 200, range(201, 300)).abs().max(-1).values  # cached past L0: exact at its own step only
    assert d[0] == 0 and (d[1:] > 0).all()

def test_drift_repairs_the_cache():
    "Turning the cached key back by its drift gives the key a fresh pass computes; and the logit change is that of q·k"
    enc = get("dynamic_ntk", dim=32, factor=2.0, original_max_position_embeddings=20)
    k, q = torch.randn(1, 1, 1, 32, dtype=torch.float64), torch.randn(1, 1, 1, 32, dtype=torch.float64)
    for p, L in [(3, 50), (19, 21), (30, 200)]:
        cached_k = rotate(k, angles(torch.tensor([p]), enc.inv_freq_at(p + 1), torch.float64))
        fresh_k = rotate(k, angles(torch.tensor([p]), enc.inv_freq_at(L), torch.float64))
        d = cached_key_drift(enc, p, [L])
        torch.testing.assert_close(rotate(cached_k, -d), fresh_k); torch.testing.assert_close(rotate(fresh_k, d), cached_k)

def test_drift_plot():
    "Per-pair drift of one key (heatmap) and the logit change of each key: zero up to L0, nonzero past it"
    enc = get("dynamic_ntk", dim=32, factor=4.0, original_max_position_embeddings=64)
    fig = cache_drift_plot(enc, key_positions=(10, 63, 90), drift_key=20, max_length=256, points=50)
    assert len(fig.data) == 4 and fig.data[0].type == "heatmap" and fig.layout.title.text.endswith("?")
    x, z = torch.tensor(fig.data[0].x), torch.tensor(fig.data[0].z)
    assert z.shape == (16, len(x)) and x[0] == 21 and (z[:, x <= 64] == 0).all() and (z[:, x > 64].amax(0) > 0).all()
    for t in fig.data[1:]:
        x, y = torch.tensor(t.x), torch.tensor(t.y)
        assert (y[x <= 64] == 0).all() and (y[x > max(64, x[0])] > 0).all()

@pytest.mark.parametrize("kw,exc,words", [
    (dict(key_position=-1, lengths=[5]), ValueError, "`key_position`"),
    (dict(key_position=5, lengths=[5]), ValueError, "`lengths`"),
    (dict(key_position=5, lengths=[]), ValueError, "`lengths`"),
    (dict(key_position=2, lengths=[4], prompt=8), ValueError, "`lengths`"),
    (dict(key_position=2, lengths=[9], prompt=0), ValueError, "`prompt`"),
    (dict(key_position=1.5, lengths=[9]), TypeError, "`key_position`"),
])
def test_drift_bad_input(kw, exc, words):
    with pytest.raises(exc, match=words): cached_key_drift(get("dynamic_ntk", dim=8), **kw)

# ---- static NTK -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,base,s", [(128, 10000.0, 4.0), (64, 500000.0, 8.0), (4, 10000.0, 2.0), (32, 100.0, 1.0), (256, 1e6, 16.0)])
def test_ntk_formula(d, base, s):
    "θ'_i = (b·s^(d/(d−2)))^(−2i/d) = θ_i·s^(−2i/(d−2)): 1 for pair 0, s for the last"
    enc = get("ntk", dim=d, base=base, factor=s)
    want = 1 / (base * s ** (d / (d - 2))) ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    torch.testing.assert_close(enc.inv_freq, want, rtol=1e-15, atol=0)  # float64; `core.inv_freq` writes it 1/base**expo, a few ulp apart
    i = torch.arange(d // 2, dtype=torch.float64)
    torch.testing.assert_close(inv_freq(d, base, torch.float64) / want, s ** (2 * i / (d - 2)), rtol=1e-12, atol=0)
    assert enc.inv_freq[0] == 1.0

@pytest.mark.parametrize("name", ["ntk", "dynamic_ntk"])
def test_dim_2_no_division_by_zero(name):
    "d = 2: one pair of frequency 1 that no base changes"
    enc = get(name, dim=2, factor=8.0)
    assert enc.inv_freq.tolist() == [1.0] and ntk_base(10000.0, 8.0, 2) == 10000.0
    torch.testing.assert_close(enc.angles(torch.arange(100_000)), torch.arange(100_000, dtype=torch.float32)[:, None])

@pytest.mark.parametrize("head_dim,theta,factor,L0,partial", [c for c in CASES if (c[3] * (2 - 1 / c[2])) % 1 == 0])
def test_ntk_equals_hf_dynamic_at_identity_length(head_dim, theta, factor, L0, partial):
    "α(L) = s·L/L0 − (s − 1) = s exactly at L = L0(2 − 1/s): static NTK with factor s is HF's dynamic type there"
    from transformers.modeling_rope_utils import _compute_dynamic_ntk_parameters
    cfg = _dynamic_config(head_dim, theta, factor, L0, partial)
    L = int(L0 * (2 - 1 / factor))
    hf = _compute_dynamic_ntk_parameters(cfg, None, seq_len=L)[0]
    enc = get("ntk", dim=head_dim, base=theta, factor=factor, partial_rotary_factor=partial)
    torch.testing.assert_close(enc.inv_freq.float(), hf, rtol=1e-6, atol=0)  # HF's float32 θ: a few ulp off
    dyn = get("dynamic_ntk", dim=head_dim, base=theta, factor=factor, original_max_position_embeddings=L0, partial_rotary_factor=partial)
    assert dyn.alpha(L) == factor and torch.equal(dyn.inv_freq_at(L), enc.inv_freq)

@pytest.mark.parametrize("D,s", [(32, 4.0), (64, 2.0), (128, 8.0), (6, 3.0)])
def test_lucidrains_theta_rescale_factor(D, s):
    "rotary-embedding-torch's theta_rescale_factor is bloc97's formula"
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    torch.testing.assert_close(get("ntk", dim=D, factor=s).inv_freq.float(), RotaryEmbedding(D, theta_rescale_factor=s).freqs.detach(), rtol=1e-6, atol=0)  # theirs float32

# ---- dynamic NTK properties ---------------------------------------------------------------------------------------
def test_dynamic_is_rope_up_to_L0_and_static_ntk_past_it():
    dyn = get("dynamic_ntk", dim=64, factor=4.0, original_max_position_embeddings=256)
    for T in (1, 100, 256):
        assert torch.equal(dyn.angles(torch.arange(T)), get("rope", dim=64).angles(torch.arange(T)))
    for L in (257, 400, 1024, 5000):
        ntk = get("ntk", dim=64, factor=dyn.alpha(L))
        assert torch.equal(dyn.angles(torch.arange(L)), ntk.angles(torch.arange(L)))
    assert sequence_length(torch.tensor([[0, 3], [9, 2]])) == 10 and dyn.alpha(256 * 4) == 13.0

def test_dynamic_not_relative():
    "Same distances, different logits once the sequence passes L0"
    enc = get("dynamic_ntk", dim=32, factor=4.0, original_max_position_embeddings=64)
    q, k = torch.randn(1, 20, 2, 32), torch.randn(1, 20, 2, 32)
    p = torch.arange(20)
    def logits(shift): return attention_logits(q, k, enc, q_positions=p + shift, k_positions=p + shift, backend="torch")
    torch.testing.assert_close(logits(40), logits(0), atol=1e-4, rtol=1e-4)
    assert (logits(200) - logits(0)).nan_to_num().abs().max() > 1e-2

def test_dynamic_float32_float64_agree_far_past_L0():
    enc = get("dynamic_ntk", dim=64)
    pos = torch.arange(100_000, 100_050)
    torch.testing.assert_close(enc.angles(pos).double(), enc.angles(pos, torch.float64), rtol=1e-6, atol=1e-6)

# ---- precision at large positions -------------------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # positions where a float32 θ_i or a float32 angle would be off by radians

def rotate_reference(q, positions, theta):
    "Float64 reference, half layout: pair i turned by m·θ_i reduced mod 2π; features past 2R pass through"
    R, x = len(theta), q.double()
    a = torch.remainder(positions.double()[:, None] * theta, 2 * math.pi)[None, :, None]  # (1, T, 1, R)
    x1, x2 = x[..., :R], x[..., R:2 * R]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin(), x[..., 2 * R:]], -1)

@pytest.mark.parametrize("name", ["ntk", "dynamic_ntk"])
def test_far_positions_match_float64_reference(name):
    "bloc97's θ'_i = (b·α^(d/(d−2)))^(−2i/d) in float64, α = s (static) or s·L/L0 − (s − 1), L = 2³¹ (dynamic): float32 apply to rounding"
    d, b, s, L0 = 64, 10000.0, 4.0, 4096
    alpha = s if name == "ntk" else s * 2 ** 31 / L0 - (s - 1)
    theta = (b * alpha ** (d / (d - 2))) ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    enc = get(name, dim=d, base=b, factor=s, **({} if name == "ntk" else dict(original_max_position_embeddings=L0)))
    q = torch.randn(1, len(FAR), 3, d)
    torch.testing.assert_close(enc.apply(q, None, FAR, backend="torch")[0].double(), rotate_reference(q, FAR, theta), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(enc.angles(FAR, torch.float64), FAR.double()[:, None] * theta, rtol=1e-13, atol=0)  # float64 throughout

@pytest.mark.parametrize("name", ["ntk", "dynamic_ntk"])
def test_head_dim_must_match(name):
    "Partial rotary is asked for (partial_rotary_factor), never inferred from a wider head"
    q = torch.randn(1, 5, 2, 40)
    with pytest.raises(ValueError, match="head dim"): get(name, dim=32).apply(q, q.clone())

# ---- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ntk", "dynamic_ntk"])
@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(factor=0.5), ValueError, "`factor` must be >= 1"),
    (dict(factor=0.0), ValueError, "`factor`"),
    (dict(factor=float("inf")), ValueError, "`factor`"),
    (dict(factor="4"), TypeError, "`factor`"),
    (dict(factor=True), TypeError, "`factor`"),
    (dict(dim=9), ValueError, "`dim`"),
    (dict(base=0.0), ValueError, "`base`"),
])
def test_bad_input(name, kwargs, exc, words):
    with pytest.raises(exc, match=words): get(name, **kwargs)

@pytest.mark.parametrize("value,exc", [(0, ValueError), (-5, ValueError), (4096.0, TypeError), ("4096", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_original_max_position_embeddings(value, exc):
    with pytest.raises(exc, match="`original_max_position_embeddings`"): get("dynamic_ntk", original_max_position_embeddings=value)

def test_dynamic_bad_positions():
    enc = get("dynamic_ntk", dim=8)
    with pytest.raises(ValueError, match="`positions`"): enc.angles(torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="`positions`"): enc.angles([0, 1, 2])
    with pytest.raises(ValueError, match="`positions`"): enc.angles(torch.tensor([0.0, float("nan")]))

def test_cards():
    ntk, dyn = get("ntk", dim=16), get("dynamic_ntk", dim=16)
    assert isinstance(ntk, NTKRoPE) and isinstance(dyn, DynamicNTKRoPE)
    assert ntk.card.properties == {"relative": True} and dyn.card.properties == {"relative": False}
    assert ntk.card.arxiv == dyn.card.arxiv == "" and ntk.card.notebook == dyn.card.notebook == "context/ntk.ipynb"
    assert dyn.factor == ntk.factor == 4.0 and dyn.original_max_position_embeddings == 4096
