"""MotionLab's aligned RoPE (`posexplorer.encodings.spacetime.aligned_rope`): against MotionLab's attention path (Diouo/MotionLab,
rfmotion/models/architectures/rfmotion_denoiser_4path.py, JointAttnProcessor2_0: each motion segment rotated by its own
`RotaryEmbedding(dim_head, use_xpos=True).rotate_queries_and_keys`, then concatenated), run with lucidrains'
rotary-embedding-torch; the kernel backends; bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.spacetime.aligned_rope import AlignedRoPE, aligned_position_ids

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _motionlab_qk(rope, segments):
    "MotionLab's order: rotate each (B, H, T_s, D) segment's q and k on its own, then concatenate [source, target] along T"
    out = [rope.rotate_queries_and_keys(q, k) for q, k in segments]
    return torch.cat([q for q, _ in out], 2), torch.cat([k for _, k in out], 2)

def _ours_qk(segments, D):
    q = torch.cat([q for q, _ in segments], 2).transpose(1, 2)  # (B, T, H, D)
    k = torch.cat([k for _, k in segments], 2).transpose(1, 2)
    pos = aligned_position_ids([q.shape[2] for q, _ in segments])
    oq, ok = get("aligned_rope", dim=D).apply(q.to(DEV), k.to(DEV), pos.to(DEV), layout="interleaved")  # lucidrains pairs (2i, 2i+1)
    return oq.cpu().transpose(1, 2), ok.cpu().transpose(1, 2)

def _close_logits(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())

@pytest.mark.parametrize("T,D", [(12, 64), (31, 64), (7, 16)])
def test_matches_motionlab_equal_lengths(T, D):
    "Source and target of one length (MotionLab pads a batch to one length): the logits are MotionLab's"
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    segs = [(torch.randn(2, 8, T, D), torch.randn(2, 8, T, D)) for _ in range(2)]  # [source, target], (B, heads, T, D)
    tq, tk = _motionlab_qk(RotaryEmbedding(D, use_xpos=True), segs)
    oq, ok = _ours_qk(segs, D)
    _close_logits(oq @ ok.transpose(-1, -2), tq @ tk.transpose(-1, -2))

def test_matches_motionlab_warm_cache_unequal_lengths():
    """lucidrains caches the xPos scale of its first call and serves shorter sequences from it, so after a call on the
    longest segment every segment is centred alike: the logits are exactly ours (uncentred)"""
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    D = 64
    rope = RotaryEmbedding(D, use_xpos=True)
    rope.rotate_queries_and_keys(torch.randn(1, 1, 40, D), torch.randn(1, 1, 40, D))  # an earlier, longer call warms the cache
    segs = [(torch.randn(1, 8, 13, D), torch.randn(1, 8, 13, D)), (torch.randn(1, 8, 21, D), torch.randn(1, 8, 21, D))]
    tq, tk = _motionlab_qk(rope, segs)
    oq, ok = _ours_qk(segs, D)
    _close_logits(oq @ ok.transpose(-1, -2), tq @ tk.transpose(-1, -2))

def test_motionlab_cold_cache_centres_each_segment():
    """Without the cache each segment is centred on its own ⌊T/2⌋: per segment, their q is ours times ζ^(−c/B) and their k
    ours over it, so between segments of different lengths their logits carry an extra per-pair factor"""
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    D, lens = 32, (9, 14)
    segs = [(torch.randn(1, 2, n, D), torch.randn(1, 2, n, D)) for n in lens]
    tq, tk = _motionlab_qk(RotaryEmbedding(D, use_xpos=True, cache_if_possible=False), segs)
    oq, ok = _ours_qk(segs, D)
    enc = get("aligned_rope", dim=D)
    c = torch.cat([enc.scales(torch.tensor([-(n // 2)]))[0].repeat_interleave(2).expand(n, D) for n in lens])  # (T, D)
    torch.testing.assert_close(oq * c, tq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ok / c, tk, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(oq @ ok.transpose(-1, -2), tq @ tk.transpose(-1, -2), rtol=1e-3, atol=1e-3)

def test_positions_and_alignment():
    assert aligned_position_ids([3, 2, 4]).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert aligned_position_ids((5,)).dtype == torch.long
    enc, T = get("aligned_rope", dim=16), 11
    x = torch.randn(1, T, 2, 16)
    qk = torch.cat([x, x], 1)
    q, k = enc.apply(qk, qk, aligned_position_ids([T, T]), backend="torch")
    z = torch.einsum("bqhd,bkhd->bhqk", q, k)
    torch.testing.assert_close(z[..., T:, :T], z[..., :T, :T])  # target→source block = the source's self block

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch(dtype, layout):
    enc = get("aligned_rope", dim=32)
    pos = aligned_position_ids([19, 18]).to(DEV)
    q, k = torch.randn(2, 37, 3, 32, device=DEV).to(dtype), torch.randn(2, 37, 1, 32, device=DEV).to(dtype)  # head dim = dim: no partial rotary
    t, r = enc.apply(q, k, pos, layout=layout, backend="triton"), enc.apply(q, k, pos, layout=layout, backend="torch")
    for a, b in zip(t, r): torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])

BAD = [
    (lambda: aligned_position_ids([]), ValueError, "`lengths`"),
    (lambda: aligned_position_ids([3, 0]), ValueError, "`lengths`"),
    (lambda: aligned_position_ids([3, 2.5]), TypeError, "`lengths`"),
    (lambda: aligned_position_ids(7), TypeError, "`lengths`"),
    (lambda: aligned_position_ids("34"), TypeError, "`lengths`"),
    (lambda: get("aligned_rope", dim=5), ValueError, "`dim`"),
    (lambda: get("aligned_rope", scale_base=0.0), ValueError, "`scale_base`"),
    (lambda: get("aligned_rope").apply(torch.randn(1, 4, 1, 64), None, aligned_position_ids([2, 3])), ValueError, "`positions`"),
    (lambda: get("aligned_rope", dim=32).apply(torch.randn(1, 5, 1, 36), None, aligned_position_ids([2, 3])), ValueError, "head dim 36"),
    (lambda: get("aligned_rope").apply(torch.randn(1, 5, 1, 64), torch.randn(1, 5, 1, 60), aligned_position_ids([2, 3])), ValueError, "head dim 60"),
    (lambda: get("aligned_rope").apply(torch.randn(1, 2, 1, 64), None, torch.tensor([0, 2 ** 31])), ValueError, "`positions`"),  # factors leave float32
    (lambda: get("aligned_rope").apply(torch.randn(1, 2, 1, 64).half(), None, torch.tensor([0, 4000])), ValueError, "`positions`"),  # and float16
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=word.replace("`", "")): f()

def test_long_segments_within_range_match_float64():
    "A 3000-frame segment in float16 stays within its range (|n| <= 3966 at B = 512, d = 64); a 5000-frame one is refused"
    enc = get("aligned_rope", dim=64)
    assert math.floor(enc.max_position(torch.float16)) == 3966 == math.floor(512 * 14 * math.log(2) / math.log(1.4 / 0.4))
    pos = aligned_position_ids([3000, 3000])[::500]  # frames 0, 500, ..., of both segments
    q, k = (torch.rand(2, 1, len(pos), 2, 64, dtype=torch.float64) * 2 - 1)
    l16 = torch.einsum("bqhd,bkhd->bhqk", *enc.apply(q.half(), k.half(), pos, backend="torch")).double()
    l64 = torch.einsum("bqhd,bkhd->bhqk", *enc.apply(q, k, pos, backend="torch"))
    causal = pos[:, None] >= pos[None, :]  # keys not after their query: factors at most 1
    assert torch.isfinite(l16).all()
    torch.testing.assert_close(l16[..., causal], l64[..., causal], rtol=2e-2, atol=2e-2)  # float16 rounds q, k and the outputs (2⁻¹¹)
    with pytest.raises(ValueError, match="positions"): enc.apply(q.half(), k.half(), aligned_position_ids([5000, 5000]), backend="torch")
