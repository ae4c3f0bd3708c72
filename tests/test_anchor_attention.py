"""Precision and AnchorAttention (`posexplorer.encodings.inference.anchor_attention`): drift of RoPE scores under a uniform shift per dtype, the
anchor layout's structure, the registered encoding, and bad input."""
import math
import pytest
import torch
from posexplorer.core import get
from posexplorer.encodings.classics.rope import RoPE
from posexplorer.encodings.inference.anchor_attention import AnchorAttention, anchor_layout, key_errors, log_shifts, rotate_in, shift_deviation
from posexplorer.figures.anchor_attention import shift_deviation_plot, mask_plot

SHIFTS = log_shifts(2 ** 20, 21)

@pytest.mark.parametrize("base", [1e4, 5e5, 1e6])
def test_float64_has_no_drift(base):
    "Rotations and angles in float64: the score at distance Δ equals q·R_Δ k up to float64 rounding, up to 1M positions"
    assert shift_deviation(SHIFTS, base=base, dtype=torch.float64, angle_dtype=torch.float64).max() < 1e-8

@pytest.mark.parametrize("base", [1e4, 5e5, 1e6])
def test_bf16_drift_exceeds_fp32(base):
    bf, f32 = (shift_deviation(SHIFTS, base=base, dtype=dt) for dt in (torch.bfloat16, torch.float32))
    small = SHIFTS <= 2 ** 14  # before the float32 angle error dominates both
    assert (bf[small] > 20 * f32[small]).all() and bf.mean() > 4 * f32.mean()
    assert 0.01 < bf[0] < 0.06  # ≈ 2^-8 · ‖q‖‖k‖ / a few, for d = 128

def test_float32_angle_error_grows_with_position():
    "float32 activations: only the float32 angle error is left, ∝ s; float64 angles remove it"
    d = shift_deviation(SHIFTS, dtype=torch.float32)
    assert d[-1] > 1e3 * d[:3].max() and d[-1] > 0.01
    assert shift_deviation(SHIFTS, dtype=torch.float32, angle_dtype=torch.float64).max() < 2e-6

def test_angles_in_low_precision():
    "bf16 angles make the score noise; fp16 positions past 65504 overflow to NaN"
    d = shift_deviation(torch.tensor([0, 10 ** 5]), dtype=torch.float32, angle_dtype=torch.bfloat16)
    assert d[1] > 3 and d[0] < 0.1
    assert torch.isnan(shift_deviation(torch.tensor([10 ** 5]), dtype=torch.float32, angle_dtype=torch.float16)).all()

def test_outside_bf16_spacing():
    "From IEEE/bfloat16's 8-bit significand (outside the project): integers are exact up to 256, spaced 8 apart in [1024, 2048)"
    assert torch.arange(257.0).to(torch.bfloat16).float().tolist()[:256] == list(range(256))
    assert torch.tensor(1027.0).to(torch.bfloat16).item() == 1024.0 and torch.tensor(1029.0).to(torch.bfloat16).item() == 1032.0

def test_rotate_in_is_exact_at_position_zero():
    x = torch.randn(5, 16).to(torch.bfloat16)
    f = torch.rand(8, dtype=torch.float64)
    assert torch.equal(rotate_in(x, torch.zeros(5), f, torch.bfloat16, torch.bfloat16), x.double())

def test_first_token_is_more_exact_at_position_zero():
    e0, es = key_errors(0, T=32, n=256), key_errors(4096, T=32, n=256)
    assert e0[0] < 0.85 * e0[1:].median() and es[0] > 0.85 * es[1:].median()

# ---- the anchor layout --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lens", [[1], [3, 2], [7, 1, 5], [2, 2, 2, 2]])
@pytest.mark.parametrize("reset", [False, True])
def test_mask_structure(lens, reset):
    "Each document sees itself causally plus the anchor; the anchor sees only itself; the anchor's position is fixed"
    mask, pos = anchor_layout(lens, anchor_position=0, reset_positions=reset)
    T = 1 + sum(lens)
    assert mask.shape == (T, T) and mask.dtype == torch.bool and pos.shape == (T,) and pos.dtype == torch.long
    assert mask[:, 0].all() and mask[0].sum() == 1  # everyone sees the anchor; it sees only itself
    doc = torch.repeat_interleave(torch.arange(len(lens) + 1), torch.tensor([1] + lens))
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    expected = ((doc[:, None] == doc[None, :]) & (j <= i)) | (j == 0)
    assert torch.equal(mask, expected)
    assert pos[0] == 0
    if reset: assert torch.equal(pos[1:], torch.cat([torch.arange(1, L + 1) for L in lens]))
    else: assert torch.equal(pos, torch.arange(T))

def test_anchor_position_is_fixed():
    for lens in ([4], [10, 3], [1, 1, 1]):
        for reset in (False, True):
            assert anchor_layout(lens, anchor_position=5, reset_positions=reset)[1][0] == 5
    enc = get("anchor_attention", dim=16, anchor_position=3)
    assert enc.position_ids([2, 2])[0] == 3 and torch.equal(enc.mask([2, 2]), anchor_layout([2, 2])[0])

def test_registered_encoding_is_rope():
    enc = get("anchor_attention", dim=32)
    assert isinstance(enc, AnchorAttention) and isinstance(enc, RoPE) and enc.family == "rotary"
    assert torch.equal(enc.angles(torch.arange(9)), get("rope", dim=32).angles(torch.arange(9)))
    assert enc.card.arxiv == "2411.13476" and enc.card.properties["relative"]

def test_figures():
    f = shift_deviation_plot(max_position=1024, dtypes=(torch.bfloat16,), angle_dtypes=(torch.float32, torch.float64))
    assert len(f.data) == 2 and f.layout.title.text.endswith("?")
    m = mask_plot([2, 3], reset_positions=True)
    assert m.data[0].z is not None and len(m.data[0].z) == 6

# ---- precision at large positions ------------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # where a float32 θ_i or a float32 angle would be off by radians

def test_far_positions_match_float64_reference():
    "The encoding's own apply (float32 activations) at positions up to 2³¹ − 1 is right to float32 rounding: the bf16 breakdown is not ours"
    enc, theta = get("anchor_attention", dim=32), 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    q = torch.randn(1, 3, 2, 32)
    a, x = torch.remainder(FAR.double()[:, None] * theta, 2 * math.pi)[None, :, None], q.double()  # (1, T, 1, R)
    ref = torch.cat([x[..., :16] * a.cos() - x[..., 16:] * a.sin(), x[..., 16:] * a.cos() + x[..., :16] * a.sin()], -1)
    torch.testing.assert_close(enc.apply(q, None, FAR, backend="torch")[0].double(), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="head dim"): enc.apply(torch.randn(1, 3, 2, 40), None)  # partial rotary is asked for

# ---- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc,word", [([], ValueError, "is empty"), ([3, 0], ValueError, "doc_lengths"),
                                          ([2.5], TypeError, "doc_lengths"), ("abc", TypeError, "doc_lengths"),
                                          (5, TypeError, "doc_lengths"), ([True], TypeError, "doc_lengths")])
def test_bad_doc_lengths(bad, exc, word):
    with pytest.raises(exc, match=word.replace("`", "")): anchor_layout(bad)

def test_bad_shift_input():
    with pytest.raises(ValueError, match="anchor_position"): anchor_layout([2], anchor_position=-1)
    with pytest.raises(ValueError, match="shifts"): shift_deviation(torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="shifts"): shift_deviation([0, 1])
    with pytest.raises(ValueError, match="base"): shift_deviation(SHIFTS, base=0.0)
    with pytest.raises(ValueError, match="dim"): shift_deviation(SHIFTS, dim=7)
    with pytest.raises(ValueError, match="dtypes"): shift_deviation(SHIFTS, dtype="bf16")
    with pytest.raises(ValueError, match="max_position"): log_shifts(0)
