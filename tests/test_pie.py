"""PIE (`posexplorer.encodings.inference.pie`): shifting cached keys by Δ equals encoding at p + Δ, layer 0 after PIE equals full
re-encoding, the Triton path (shared kernel, in place) matches the torch reference, Hugging Face's Llama rotation as
an outside reference, and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, angles, inv_freq, rotate
from posexplorer.encodings.classics.rope import RoPE
from posexplorer.encodings.inference.pie import PIE, shift_keys_, TinyLlama, TinyConfig, apply_edits, edit_cache, compare_edit

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def test_registered_as_rope():
    pie = get("pie", dim=32, base=500000.0)
    assert isinstance(pie, PIE) and isinstance(pie, RoPE) and pie.card.arxiv == "2407.03157" and pie.card.year == 2024
    torch.testing.assert_close(pie.inv_freq, get("rope", dim=32, base=500000.0).inv_freq)

@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("delta", [1, 37, -12, 0.25, "per-token"])
def test_shift_equals_encoding_at_shifted_position(layout, delta):
    f = inv_freq(16, dtype=torch.float64)
    k = torch.randn(2, 23, 3, 20, dtype=torch.float64)  # partial rotary: 16 of 20 features
    pos, start = torch.arange(23) + 1000, 9
    d = torch.randint(-50, 50, (14,)).double() if delta == "per-token" else torch.full((14,), float(delta), dtype=torch.float64)
    cache = rotate(k, angles(pos, f, torch.float64), layout)
    out = shift_keys_(cache, start, d if delta == "per-token" else delta, f, layout=layout)
    assert out is cache
    want = rotate(k, angles(torch.cat([pos[:start].double(), pos[start:] + d]), f, torch.float64), layout)
    torch.testing.assert_close(cache, want, **TOL[torch.float64])

def test_per_batch_delta_and_float32():
    f = inv_freq(8)
    k = torch.randn(2, 10, 1, 8)
    d = torch.tensor([[1.0] * 6, [5.0] * 6])
    c = shift_keys_(k.clone(), 4, d, f)
    for b in range(2):
        torch.testing.assert_close(c[b:b + 1], shift_keys_(k[b:b + 1].clone(), 4, float(d[b, 0]), f), **TOL[torch.float32])

def test_matches_hugging_face_llama_rotation():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig
    rot = llama.LlamaRotaryEmbedding(LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0))
    kh = torch.randn(1, 2, 31, 32)
    def hf(positions):
        cos, sin = rot(kh, positions[None])
        return llama.apply_rotary_pos_emb(kh, kh, cos, sin)[1].transpose(1, 2)
    c = hf(torch.arange(31))
    get("pie", dim=32).shift_keys_(c, 11, -7)
    torch.testing.assert_close(c, hf(torch.cat([torch.arange(11), torch.arange(11, 31) - 7])), atol=1e-5, rtol=1e-5)

EDITS = {"insertion": [(30, 30, torch.arange(5)[None])], "deletion": [(20, 27, torch.zeros(1, 0, dtype=torch.long))],
         "multi": [(10, 10, torch.arange(3)[None]), (40, 44, torch.zeros(1, 0, dtype=torch.long)), (50, 51, torch.arange(4)[None])]}

@pytest.mark.parametrize("edit", list(EDITS))
def test_layer0_after_pie_equals_full_reencoding(edit):
    model = TinyLlama(TinyConfig(n_layers=3), seed=1)
    doc = torch.randint(0, 101, (1, 61))
    r = compare_edit(model, doc, EDITS[edit])
    assert r["pie"]["key_error"][0] < 1e-6 and r["stale"]["key_error"][0] > 0.1
    assert all(p < s for p, s in zip(r["pie"]["key_error"], r["stale"]["key_error"]))

def test_edit_cache_layer0_keys_and_values_exact():
    model = TinyLlama(TinyConfig(n_layers=2), seed=2)
    doc = torch.randint(0, 101, (1, 40))
    e = EDITS["multi"][:2]
    new = apply_edits(doc, e)
    full = model.extend(new[:, :-1], torch.arange(new.shape[1] - 1))[1]
    c = edit_cache(model, model.extend(doc[:, :-1], torch.arange(39))[1], e)
    torch.testing.assert_close(c[0][0], full[0][0], **TOL[torch.float32])
    torch.testing.assert_close(c[0][1], full[0][1], **TOL[torch.float32])

@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("T,start", [(37, 11), (1, 0), (5, 4)])
@pytest.mark.parametrize("per_token", [False, True])
def test_triton_matches_reference(layout, T, start, per_token):
    f = inv_freq(16).to(DEV)
    k = torch.randn(2, T, 3, 22, device=DEV)
    d = torch.randn(T - start, device=DEV) * 20 if per_token else 9
    kt, kr, k0 = k.clone(), k.clone(), k.clone()
    shift_keys_(kt, start, d, f, layout=layout, backend="triton")
    shift_keys_(kr, start, d, f, layout=layout, backend="torch")
    torch.testing.assert_close(kt, kr, **TOL[torch.float32])
    assert torch.equal(kt[:, :start], k0[:, :start]) and torch.equal(kt[..., 16:], k0[..., 16:])

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_low_precision(dtype):
    f = inv_freq(16).to(DEV)
    k = torch.randn(1, 19, 2, 16, device=DEV).to(dtype)
    kt, kr = k.clone(), k.clone()
    shift_keys_(kt, 3, 5, f, backend="triton"); shift_keys_(kr, 3, 5, f, backend="torch")
    torch.testing.assert_close(kt.float(), kr.float(), **TOL[dtype])

# ---- precision at large positions and shifts ------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # where a float32 θ_i or a float32 angle would be off by radians

def rotate_reference(k, positions, theta):
    "Float64 reference, half layout: pair i turned by m·θ_i reduced mod 2π; features past 2R pass through"
    R, x = len(theta), k.double()
    a = torch.remainder(positions.double()[..., None] * theta, 2 * math.pi)[..., None, :]  # (T, 1, R) or (B, T, 1, R)
    x1, x2 = x[..., :R], x[..., R:2 * R]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin(), x[..., 2 * R:]], -1)

def test_far_positions_and_shifts_match_float64_reference():
    "θ_i = b^(−2i/d) in float64: apply at m up to 2³¹ − 1, and a shift by Δ up to 2³¹ − 1, right to float32 rounding"
    theta = 500000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    pie, k = get("pie", dim=20, base=500000.0, partial_rotary_factor=0.8), torch.randn(1, len(FAR), 2, 20)
    torch.testing.assert_close(pie.apply(k, None, FAR, backend="torch")[0].double(), rotate_reference(k, FAR, theta), rtol=1e-6, atol=1e-6)
    c = pie.shift_keys_(k.clone(), 0, FAR.clone(), backend="torch")  # keys cached at position 0, each moved by its own Δ
    torch.testing.assert_close(c.double(), rotate_reference(k, FAR, theta), rtol=1e-6, atol=1e-6)

def test_head_dim_must_match():
    "The encoding's `apply` and `shift_keys_` refuse a head dim other than `dim`: partial rotary is asked for, never inferred"
    k = torch.randn(1, 6, 2, 20)
    with pytest.raises(ValueError, match="head dim"): get("pie", dim=16).apply(k, None)
    with pytest.raises(ValueError, match="head dim"): get("pie", dim=16).shift_keys_(k, 2, 3)

@pytest.mark.parametrize("args,exc,word", [
    (dict(k_cache=[1.0]), TypeError, "k_cache"),
    (dict(k_cache=torch.zeros(2, 4, 8)), ValueError, "k_cache"),
    (dict(k_cache=torch.zeros(1, 4, 1, 8, dtype=torch.long)), TypeError, "k_cache"),
    (dict(start=5), ValueError, "start"),
    (dict(start=-1), ValueError, "start"),
    (dict(start=1.0), TypeError, "start"),
    (dict(delta=torch.zeros(3)), ValueError, "delta"),
    (dict(delta=float("nan")), TypeError, "delta"),
    (dict(delta=torch.tensor([1.0, float("inf")])), ValueError, "delta"),
    (dict(delta=True), TypeError, "delta"),
    (dict(delta="2"), TypeError, "delta"),
    (dict(inv_freq=inv_freq(16)), ValueError, "pairs"),
    (dict(layout="neox"), ValueError, "layout"),
    (dict(backend="cuda"), ValueError, "backend"),
])
def test_bad_input(args, exc, word):
    kw = dict(k_cache=torch.zeros(1, 4, 1, 8), start=2, delta=1, inv_freq=inv_freq(8))
    kw.update(args)
    with pytest.raises(exc, match=word): shift_keys_(**kw)
