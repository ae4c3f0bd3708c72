"""ERoPE (`posexplorer.encodings.spacetime.erope`): against GenCompositor's released code (TencentARC/GenCompositor), re-implemented here from
its logic, the shared kernel's backends, and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.spacetime.erope import ERoPE, erope_position_ids, cogvideox_sections, axial_inv_freq, ARRANGEMENTS

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- GenCompositor's code path, written out ------------------------------------------------------------
# diffusers/src/diffusers/models/embeddings.py in TencentARC/GenCompositor:
#   get_1d_rotary_pos_embed: freqs = 1 / theta ** (arange(0, dim, 2) / dim) in float32, cos and sin repeat-interleaved;
#   get_3d_rotary_pos_embed: dim_t = d // 4, dim_h = dim_w = d // 8 * 3, table (T, gh, gw) flattened t-major, [t | h | w];
#   apply_rotary_emb (use_real_unbind_dim=-1): pairs (2i, 2i+1), x * cos + rotate(x) * sin.
# pipelines/cogvideo/pipeline_cogvideox_inpainting_i2v_branch3_sep.py: the transformer gets the table for height * 2
#   (base_height 480 * 2, so at the base resolution the crop region is the whole grid: integer positions);
# CogVideoXPatchEmbed_sep.forward: video tokens are [background (T, H, W), foreground (T, H, W)], each raster order;
# CogVideoXAttnProcessor2_0: rotates every video token with row j of that table.

def _their_1d(dim, pos, theta=10000.0):
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim)
    f = torch.outer(pos.float(), freqs)
    return f.cos().repeat_interleave(2, 1), f.sin().repeat_interleave(2, 1)

def _their_3d_table(d, gh, gw, T):
    "cos, sin (T·gh·gw, d): CogVideoX's 3D table over integer grids, t slowest"
    dt, dh = d // 4, d // 8 * 3
    parts = [_their_1d(dt, torch.arange(T)), _their_1d(dh, torch.arange(gh)), _their_1d(dh, torch.arange(gw))]
    def combine(i):
        t = parts[0][i][:, None, None].expand(T, gh, gw, -1)
        h = parts[1][i][None, :, None].expand(T, gh, gw, -1)
        w = parts[2][i][None, None].expand(T, gh, gw, -1)
        return torch.cat([t, h, w], -1).reshape(T * gh * gw, -1)
    return combine(0), combine(1)

def _their_apply(x, cos, sin): # x (B, heads, S, d)
    xr, xi = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rot = torch.stack([-xi, xr], -1).flatten(3)
    return x.float() * cos + rot.float() * sin

@pytest.mark.parametrize("T,H,W,d", [(13, 3, 4, 64), (4, 2, 5, 64), (3, 3, 3, 128), (1, 1, 2, 64)])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matches_gencompositor_code(T, H, W, d, backend):
    "ERoPE with the released arrangement and interleaved pairs rotates q and k exactly as GenCompositor's code does"
    S = 2 * T * H * W
    q = torch.randn(1, 2, S, d)  # (B, heads, S, d) as the attention processor holds them
    cos, sin = _their_3d_table(d, 2 * H, W, T)
    theirs = _their_apply(q, cos, sin)
    pos = erope_position_ids(T, H, W, "released")
    ours = get("erope", dim=d).apply(q.transpose(1, 2).to(DEV), None, pos.to(DEV), layout="interleaved", backend=backend)[0].cpu()
    torch.testing.assert_close(ours.transpose(1, 2), theirs, rtol=1e-4, atol=1e-4)  # theirs: float32 frequencies and angles

def test_sections_match_cogvideox_split():
    "d // 4 features for t, d // 8 * 3 for h and for w (get_3d_rotary_pos_embed), wherever that split is valid"
    for d in (16, 32, 64, 128, 256):
        assert tuple(2 * s for s in cogvideox_sections(d // 2)) == (d // 4, d // 8 * 3, d // 8 * 3)
    for R in range(1, 70):
        s = cogvideox_sections(R)
        assert sum(s) == R and min(s) >= 0 and s[1] == s[2]

def test_stacked_arrangement_and_disjointness():
    for T, H, W in [(1, 1, 1), (2, 3, 1), (5, 2, 3)]:
        st, rel = (erope_position_ids(T, H, W, a) for a in ARRANGEMENTS)
        n = T * H * W
        if T == 1: assert torch.equal(st, rel)  # one frame: the two arrangements agree
        assert torch.equal(st[0, n:], st[0, :n]) and torch.equal(st[1, n:], st[1, :n] + H) and torch.equal(st[2, n:], st[2, :n])
        for p in (st, rel): assert p.T.unique(dim=0).shape[0] == 2 * n and int(p[1].max()) == 2 * H - 1

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_torch_with_batched_positions(dtype):
    "(3, B, T) positions: a stacked batch and a released batch, odd length"
    enc = get("erope", dim=36, partial_rotary_factor=32 / 36)  # 32 features rotate, 4 pass through
    pos = torch.stack([erope_position_ids(3, 2, 3, a)[:, :35] for a in ARRANGEMENTS], 1).to(DEV)  # (3, 2, 35)
    q, k = torch.randn(2, 35, 3, 36, device=DEV).to(dtype), torch.randn(2, 35, 1, 36, device=DEV).to(dtype)
    t, r = enc.apply(q, k, pos, backend="triton"), enc.apply(q, k, pos, backend="torch")
    for a, b in zip(t, r): torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])
    assert torch.equal(t[0][..., 32:], q[..., 32:]) and torch.equal(r[1][..., 32:], k[..., 32:])  # pass-through

# ---- bad input ------------------------------------------------------------------------------------------
BAD = [
    (lambda: erope_position_ids(0, 2, 2), ValueError, "`frames`"),
    (lambda: erope_position_ids(2, 1.5, 2), TypeError, "`height`"),
    (lambda: erope_position_ids(2, 2, True), TypeError, "`width`"),
    (lambda: erope_position_ids(2, 2, 2, "overlap"), ValueError, "`arrangement`"),
    (lambda: cogvideox_sections(0), ValueError, "`n_pairs`"),
    (lambda: axial_inv_freq((1, 1, 1), base=-2.0), ValueError, "`base`"),
    (lambda: get("erope", dim=7), ValueError, "`dim`"),
    (lambda: get("erope", dim=64, partial_rotary_factor=0.0), ValueError, "`partial_rotary_factor`"),
    (lambda: get("erope", dim=8).angles(torch.arange(5)), ValueError, "`positions`"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=word.replace("`", "")): f()
