"""HoPE (`posexplorer.encodings.spacetime.hope`): the zero-frequency pairs give a position-independent score; the channel assignment and
the position ids against the logic of the paper's code (hrlics/HoPE, modeling_hope.py: `apply_hybrid_multimodal_rotary_pos_emb`
and `get_dynamic_rope_index`), reproduced independently in test_videorope.py's helpers; the floor; dynamic temporal
scaling; bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, inv_freq
from posexplorer.encodings.spacetime.hope import HoPE, HOPE_STRIDES
from test_videorope import code_rotate, code_channel_rows, code_positions, SEQS, assert_rotates_like

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _zero_features(enc):
    "Feature indices (half layout) of the pairs with θ_i = 0"
    R = len(enc.inv_freq)
    z = torch.nonzero(enc.inv_freq == 0).flatten()
    return torch.cat([z, z + R])

# ---- zero-frequency pairs: a position-independent score -------------------------------------------------------
@pytest.mark.parametrize("dim", [8, 32, 128])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_zero_pairs_contribute_a_position_independent_score(dim, backend, layout):
    "For arbitrary (t, h, w) positions of queries and keys, the zero pairs' share of q·k is the unrotated q_Z·k_Z, everywhere"
    enc = get("hope", dim=dim)
    Tq, Tk = 13, 17
    qp, kp = torch.randn(3, Tq) * 1000, torch.randn(3, Tk) * 1000  # any positions, any distances
    q, k = torch.randn(1, Tq, 2, dim, device=DEV), torch.randn(1, Tk, 2, dim, device=DEV)
    oq, ok = enc.apply(q, k, qp.to(DEV), k_positions=kp.to(DEV), layout=layout, backend=backend)
    Z = _zero_features(enc)
    if layout == "interleaved": Z = torch.cat([2 * Z[:len(Z) // 2], 2 * Z[:len(Z) // 2] + 1])
    assert len(Z) == 2 * (dim // 8)
    share = torch.einsum("qhd,khd->hqk", oq[0][..., Z], ok[0][..., Z])  # (H, Tq, Tk)
    unrotated = torch.einsum("qhd,khd->hqk", q[0][..., Z], k[0][..., Z])
    torch.testing.assert_close(share, unrotated, **TOL[torch.float32])
    # the same content at every position: the share is one number
    oq1, ok1 = enc.apply(q[:, :1].expand(1, Tq, 2, dim).contiguous(), k[:, :1].expand(1, Tk, 2, dim).contiguous(), qp.to(DEV), k_positions=kp.to(DEV), layout=layout, backend=backend)
    s1 = torch.einsum("qhd,khd->hqk", oq1[0][..., Z], ok1[0][..., Z])
    torch.testing.assert_close(s1, s1[:, :1, :1].expand_as(s1), **TOL[torch.float32])

def test_rotating_pairs_do_depend_on_position():
    "Contrast: the other pairs' share changes with distance"
    enc = get("hope", dim=32)
    q = torch.randn(1, 1, 1, 32)
    R = 16
    S = torch.cat([torch.arange(12), torch.arange(12) + R])
    scores = []
    for d in (0, 5, 50):
        oq, ok = enc.apply(q, q, torch.zeros(3, 1), k_positions=torch.full((3, 1), float(d)), backend="torch")
        scores.append((oq[..., S] * ok[..., S]).sum().item())
    assert len({round(s, 4) for s in scores}) == 3

# ---- the allocation against the code ---------------------------------------------------------------------------
def test_allocation_d128():
    enc = HoPE(dim=128)
    assert code_channel_rows([16, 24, 24], hybrid=True)[:64] == torch.where(enc.inv_freq == 0, -1, enc.axis_map).tolist()
    assert torch.equal(enc.inv_freq[:48], inv_freq(128)[:48]) and (enc.inv_freq[48:] == 0).all()

@pytest.mark.parametrize("dim,section", [(128, [16, 24, 24]), (64, [8, 12, 12]), (40, [6, 7, 7]), (16, [2, 3, 3])])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rotation_matches_code(dim, section, backend):
    "Our rotation (half layout) equals the code's: VideoRoPE's channel selection with cos = 1, sin = 0 on the temporal channels"
    T = 19
    enc = get("hope", dim=dim, nope_pairs=section[0])
    pos = torch.randn(3, T, dtype=torch.float64) * 50
    q, k = torch.randn(1, T, 3, dim, dtype=torch.float64), torch.randn(1, T, 1, dim, dtype=torch.float64)
    f = inv_freq(dim).double()  # the code's float32 θ_i, before it zeroes any channel
    ref_q, ref_k = code_rotate(q, pos, f, section, hybrid=True), code_rotate(k, pos, f, section, hybrid=True)
    assert_rotates_like(enc, q, k, pos, ref_q, ref_k, backend)

def test_nope_pairs_zero_is_videorope():
    h, v = get("hope", dim=64, nope_pairs=0), get("videorope", dim=64, temporal_pairs=0)
    assert torch.equal(h.inv_freq, v.inv_freq) and torch.equal(h.axis_map, v.axis_map)

# ---- position ids and dynamic temporal scaling -----------------------------------------------------------------
@pytest.mark.parametrize("segments", SEQS)
@pytest.mark.parametrize("stride", HOPE_STRIDES)
def test_position_ids_match_code(segments, stride):
    "`get_dynamic_rope_index` with one δ: VideoRoPE's layout; HoPE.position_ids passes δ through"
    pos, nxt = HoPE(dim=16).position_ids(segments, temporal_stride=stride)
    ref, ref_next = code_positions(segments, stride)
    torch.testing.assert_close(pos.double(), ref)
    assert float(nxt) == ref_next
    assert torch.equal(HoPE(dim=16, temporal_stride=stride).position_ids(segments)[0], pos)

def test_sample_temporal_stride():
    enc = HoPE(dim=16)
    g = torch.Generator().manual_seed(1)
    draws = [enc.sample_temporal_stride(g) for _ in range(500)]
    assert set(draws) == set(HOPE_STRIDES)
    counts = [draws.count(s) for s in HOPE_STRIDES]
    assert min(counts) > 60  # uniform: about 100 each
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [enc.sample_temporal_stride(g1) for _ in range(20)] == [enc.sample_temporal_stride(g2) for _ in range(20)]
    assert HoPE(dim=16, training_strides=(2.0,)).sample_temporal_stride() == 2.0

# ---- the floor ---------------------------------------------------------------------------------------------------
def test_score_floor_against_mrope_and_videorope():
    "q = k on text: HoPE's score is never below M-RoPE's or VideoRoPE's, and never below |q_Z|² − Σ_S |q_i|²"
    from posexplorer.figures.shared import score_vs_distance
    encs = {"m": get("mrope", dim=64), "v": get("videorope", dim=64), "h": get("hope", dim=64)}
    fig = score_vs_distance(encs, max_distance=3000, q="random", seed=3)
    y = {t.name: torch.tensor(t.y) for t in fig.data}
    assert (y["h"] >= y["m"] - 1e-3).all() and (y["h"] >= y["v"] - 1e-3).all()
    assert (y["h"] - y["v"])[1:].max() > 1  # and strictly above somewhere

# ---- bad input -----------------------------------------------------------------------------------------------------
BAD = [
    (dict(dim=128, nope_pairs=65), ValueError, r"`nope_pairs` \(65\)"),
    (dict(dim=128, nope_pairs=-1), ValueError, "`nope_pairs` must be >= 0"),
    (dict(dim=128, nope_pairs=2.0), TypeError, "`nope_pairs` must be an int"),
    (dict(dim=128, temporal_stride=0.0), ValueError, "`temporal_stride` must be finite and > 0"),
    (dict(dim=128, temporal_stride=-1), ValueError, "`temporal_stride`"),
    (dict(dim=128, temporal_stride=float("nan")), ValueError, "`temporal_stride`"),
    (dict(dim=128, temporal_stride="1"), TypeError, "`temporal_stride` must be a real number"),
    (dict(dim=128, training_strides=()), ValueError, "`training_strides` must be a non-empty"),
    (dict(dim=128, training_strides=(0.5, 0.0)), ValueError, "`training_strides`"),
    (dict(dim=128, training_strides=0.5), ValueError, "`training_strides` must be a non-empty"),
    (dict(dim=9), ValueError, "`dim`"),
]

@pytest.mark.parametrize("kw,exc,words", BAD)
def test_bad_input(kw, exc, words):
    with pytest.raises(exc, match=words): get("hope", **kw)

def test_bad_position_ids_input():
    enc = HoPE(dim=16)
    with pytest.raises(ValueError, match="`temporal_stride`"): enc.position_ids([("text", 2)], temporal_stride=0)
    with pytest.raises(TypeError, match="`temporal_stride`"): enc.position_ids([("text", 2)], temporal_stride="x")
    with pytest.raises(ValueError, match="segments"): enc.position_ids([("audio", 2)])

# ---- a δ per video, as the authors' training draws it (issue 17) ---------------------------------------------------
def test_per_video_strides_by_hand_from_authors_rule():
    """hrlics/HoPE, modeling_hope.py, `get_dynamic_rope_index`: inside the loop over vision blocks, δ = random.choice(scale_factors)
    per block; t = s + δ·f, h = t + r − (H−1)//2, w = t + c − (W−1)//2 with s = (largest t so far) + 1; text after a block starts
    at its max t + 1. Written out by hand for text 2, video (3, 2, 2) at δ = 0.75, text 1, video (2, 1, 3) at δ = 1.5, text 2."""
    segs = [("text", 2), ("video", (3, 2, 2)), ("text", 1), ("video", (2, 1, 3)), ("text", 2)]
    v1 = [(t, t + r, t + c) for t in (2, 2.75, 3.5) for r in (0, 1) for c in (0, 1)]  # s = 2; (H-1)//2 = (W-1)//2 = 0
    v2 = [(t, t, t + c - 1) for t in (5.5, 7.0) for c in (0, 1, 2)]  # s = 4.5 + 1; (W-1)//2 = 1
    cols = [(0, 0, 0), (1, 1, 1)] + v1 + [(4.5,) * 3] + v2 + [(8.0,) * 3, (9.0,) * 3]
    pos, nxt = HoPE(dim=16).position_ids(segs, [0.75, 1.5])
    assert pos.tolist() == torch.tensor(cols, dtype=torch.float64).T.tolist() and nxt == 10.0

def test_two_videos_nearest_single_stride_off_by_half():
    "The issue's case: two 3-frame videos at (0.75, 1.5); the nearest single δ of the training set (1.0) is off by 0.5 positions"
    segs = [("text", 2), ("video", (3, 1, 1)), ("text", 1), ("video", (3, 1, 1))]
    mixed = HoPE(dim=16).position_ids(segs, (0.75, 1.5))[0]
    gaps = {d: (HoPE(dim=16).position_ids(segs, d)[0] - mixed).abs().max().item() for d in HOPE_STRIDES}
    assert gaps == {0.5: 2.5, 0.75: 1.5, 1.0: 0.5, 1.25: 1.0, 1.5: 1.5}

def test_sample_temporal_strides_one_per_video():
    enc, segs = HoPE(dim=16), [("video", (2, 1, 1)), ("image", (1, 2, 2)), ("text", 3), ("video", (3, 1, 1))]
    g = torch.Generator().manual_seed(0)
    draws = [tuple(enc.sample_temporal_strides(segs, g)) for _ in range(100)]
    assert {len(d) for d in draws} == {2} and len(set(draws)) > 10 and all(s in HOPE_STRIDES for d in draws for s in d)
    assert enc.position_ids(segs, list(draws[0]))[0].shape == (3, 2 + 4 + 3 + 3)
    with pytest.raises(ValueError, match="`temporal_stride`"): enc.position_ids(segs, [1.0, -1.0])
    with pytest.raises(ValueError, match="2 video segments"): enc.position_ids(segs, [1.0])
