"""VideoRoPE (`posexplorer.encodings.spacetime.videorope`): the channel assignment and the position ids against the logic of the paper's
code (Wiselnn570/VideoRoPE: `apply_m_modify_multimodal_rotary_pos_emb` and `get_t_scale_rope_index` in
videorope-transformer/modeling_videorope.py), reproduced independently here; text equals RoPE; bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, inv_freq
from posexplorer.encodings.spacetime.videorope import VideoRoPE, videorope_axis_map

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- the paper's code, re-derived --------------------------------------------------------------------------
def code_channel_rows(mrope_section, hybrid=False):
    """Which row of the (3, T, 2R) cos/sin tables (0 = t, 1 = h, 2 = w) each of the 2R channels takes in the paper's code:
    per half of the head, h + w spatial channels alternating h, w, then the t temporal channels. `hybrid` (HoPE) marks
    the temporal channels -1: cos = 1, sin = 0 there."""
    t, spatial = mrope_section[0], mrope_section[1] + mrope_section[2]
    half = [1 + j % 2 for j in range(spatial)] + [-1 if hybrid else 0] * t
    return half + half

def code_rotate(x, positions, freqs, mrope_section, hybrid=False):
    "x: (B, T, H, 2R); positions (3, T); the code's `q * cos + rotate_half(q) * sin` with its channel selection, float64"
    ang = positions.double()[..., None] * freqs.double()  # (3, T, R)
    emb = torch.cat([ang, ang], -1)  # (3, T, 2R)
    rows = code_channel_rows(mrope_section, hybrid)
    cos = torch.stack([emb[r, :, c].cos() if r >= 0 else torch.ones(emb.shape[1], dtype=torch.float64) for c, r in enumerate(rows)], -1)
    sin = torch.stack([emb[r, :, c].sin() if r >= 0 else torch.zeros(emb.shape[1], dtype=torch.float64) for c, r in enumerate(rows)], -1)
    R = x.shape[-1] // 2
    rot_half = torch.cat([-x[..., R:], x[..., :R]], -1)
    return x * cos[None, :, None] + rot_half * sin[None, :, None]

def code_positions(segments, scale):
    """The position ids of `get_t_scale_rope_index` for a segment list: text continues from the last block's largest t + 1;
    a (T, H, W) video starting at s gets t = s + scale·f, h = t + r − (H−1)//2, w = t + c − (W−1)//2. Returns (3, N), next."""
    cols, nxt = [], 0.0
    for kind, size in segments:
        if kind == "text":
            cols.append(torch.arange(size, dtype=torch.float64).expand(3, -1) + nxt); nxt += size
        else:
            T, H, W = size
            f, r, c = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
            t = (nxt + scale * f).double().flatten()
            cols.append(torch.stack([t, t + (r - (H - 1) // 2).flatten(), t + (c - (W - 1) // 2).flatten()])); nxt = t.max().item() + 1
    return torch.cat(cols, 1), nxt

# ---- channel assignment -------------------------------------------------------------------------------------
def test_axis_map_d128_is_the_codes():
    assert VideoRoPE(dim=128).axis_map.tolist() == code_channel_rows([16, 24, 24])[:64]
    assert videorope_axis_map(64).tolist() == [1, 2] * 24 + [0] * 16

@pytest.mark.parametrize("dim,section", [(128, [16, 24, 24]), (64, [8, 12, 12]), (32, [4, 6, 6]), (40, [6, 7, 7]), (16, [0, 4, 4])])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rotation_matches_code(dim, section, backend):
    "Our rotation (half layout) equals the code's channel selection for random float (t, h, w) positions"
    T = 23
    enc = get("videorope", dim=dim, temporal_pairs=section[0])
    pos = torch.randn(3, T, dtype=torch.float64) * 50
    q, k = torch.randn(2, T, 3, dim, dtype=torch.float64), torch.randn(2, T, 1, dim, dtype=torch.float64)
    ref_q, ref_k = code_rotate(q, pos, inv_freq(dim).double(), section), code_rotate(k, pos, inv_freq(dim).double(), section)  # float32 θ_i, as both codes store them
    assert_rotates_like(enc, q, k, pos, ref_q, ref_k, backend)

def assert_rotates_like(enc, q, k, pos, ref_q, ref_k, backend):
    "The encoding's rotation of float64 q, k equals the code's: in float64 on the torch path, float32 on the kernel"
    if backend == "torch":
        oq, ok = enc.apply(q, k, pos, backend="torch")
        torch.testing.assert_close(oq, ref_q, **TOL[torch.float64]); torch.testing.assert_close(ok, ref_k, **TOL[torch.float64])
    else:
        oq, ok = enc.apply(q.float().to(DEV), k.float().to(DEV), pos.float().to(DEV), backend="triton")
        torch.testing.assert_close(oq.cpu().double(), ref_q, atol=2e-4, rtol=1e-4); torch.testing.assert_close(ok.cpu().double(), ref_k, atol=2e-4, rtol=1e-4)

def test_default_temporal_pairs_rule():
    for R in range(1, 70):
        assert (VideoRoPE(dim=2 * R).axis_map == 0).sum() == R // 4

def test_temporal_pairs_are_the_slowest():
    enc = VideoRoPE(dim=128)
    assert enc.inv_freq[enc.axis_map == 0].max() < enc.inv_freq[enc.axis_map > 0].min()

def test_text_equals_rope():
    enc, rope = get("videorope", dim=64), get("rope", dim=64)
    q, k = torch.randn(1, 41, 2, 64), torch.randn(1, 41, 2, 64)
    a, b = enc.apply(q, k, backend="torch"), rope.apply(q, k, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

# ---- position ids ----------------------------------------------------------------------------------------------
SEQS = [
    [("text", 3), ("video", (3, 4, 4)), ("text", 2)],
    [("video", (2, 3, 5)), ("text", 4)],
    [("text", 2), ("image", (1, 3, 3)), ("text", 1), ("video", (4, 2, 2)), ("video", (2, 1, 3)), ("text", 3)],
]

@pytest.mark.parametrize("segments", SEQS)
@pytest.mark.parametrize("stride", [2.0, 1.0, 0.5, 1.5])
def test_position_ids_match_code(segments, stride):
    mm = pytest.importorskip("posexplorer.encodings.spacetime.mrope")
    pos, nxt = mm.mrope_position_ids(segments, scheme="videorope", temporal_stride=stride)
    ref, ref_next = code_positions(segments, stride)
    torch.testing.assert_close(pos.double(), ref)
    assert float(nxt) == ref_next

# ---- bad input -------------------------------------------------------------------------------------------------
BAD = [
    (dict(dim=128, temporal_pairs=65), ValueError, "`temporal_pairs` (65)"),
    (dict(dim=128, temporal_pairs=-1), ValueError, "`temporal_pairs` must be >= 0"),
    (dict(dim=128, temporal_pairs=1.5), TypeError, "`temporal_pairs` must be an int"),
    (dict(dim=128, temporal_pairs=True), TypeError, "`temporal_pairs` must be an int"),
    (dict(dim=7), ValueError, "`dim`"),
    (dict(dim=128, base=0.0), ValueError, "`base`"),
]

@pytest.mark.parametrize("kw,exc,words", BAD)
def test_bad_input(kw, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")): get("videorope", **kw)

def test_bad_positions():
    enc = get("videorope", dim=16)
    q = torch.randn(1, 5, 1, 16)
    with pytest.raises(ValueError, match="axes of `positions`"): enc.apply(q, q, torch.arange(5)[None].expand(2, 5).contiguous())  # two axes, not three

# ---- a δ per video (issue 17) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("segments", SEQS)
def test_per_video_stride_list_equal_to_scalar_and_to_code(segments):
    "A list repeating one δ is the scalar; the code's single scale (2.0, `get_t_scale2_rope_index`) is the list's constant case"
    from posexplorer.encodings.spacetime.mrope import mrope_position_ids
    n = sum(k == "video" for k, _ in segments)
    pos, nxt = mrope_position_ids(segments, "videorope", [2.0] * n)
    ref, ref_next = code_positions(segments, 2.0)
    assert torch.equal(pos, mrope_position_ids(segments, "videorope", 2.0)[0]) and torch.equal(pos, ref) and nxt == ref_next
