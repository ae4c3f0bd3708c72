"""EVA02-AT's joint spatial-temporal RoPE (`posexplorer.encodings.spacetime.eva02at`), our reading (the paper gives no frequencies and its
code was not available): against lucidrains' rotary-embedding-torch (temporal `RotaryEmbedding(D)` frequencies plus
axial `get_axial_freqs`, summed into one table), against two successive rotations, relativity per axis, the kernel's
backends, gradients and bad input."""
import re
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, rotate, angles
from posexplorer.encodings.spacetime.axial2d import grid_positions
from posexplorer.ops.attention import attention_logits
from posexplorer.ops.rotary import apply_rotary_positions

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _video(n_t, h, w):
    "(3, n_t*h*w) positions, rows t, y, x, frame by frame, row-major in a frame"
    g = grid_positions(h, w)
    return torch.cat([torch.arange(n_t).repeat_interleave(h * w)[None], g.repeat(1, n_t)])

@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n_t,h,w,D", [(3, 4, 5, 32), (2, 3, 3, 16), (5, 1, 7, 64)])
def test_matches_lucidrains_summed_tables(backend, n_t, h, w, D):
    "Interleaved layout: angles = RotaryEmbedding(D)(t) + RotaryEmbedding(D/2).get_axial_freqs(h, w), applied once"
    re_ = pytest.importorskip("rotary_embedding_torch")
    temporal = re_.RotaryEmbedding(D, theta=10000.0)(torch.arange(n_t).float())  # (n_t, D)
    spatial = re_.RotaryEmbedding(D // 2, theta=10000.0).get_axial_freqs(h, w).reshape(h * w, D)  # (h*w, D)
    table = (temporal[:, None] + spatial[None]).reshape(n_t * h * w, D)
    x = torch.randn(1, 2, n_t * h * w, D)  # (B, H, T, D)
    theirs = re_.apply_rotary_emb(table, x)
    ours = get("eva02at", dim=D).apply(x.transpose(1, 2).to(DEV), None, _video(n_t, h, w).to(DEV), layout="interleaved", backend=backend)[0]
    torch.testing.assert_close(ours.cpu().transpose(1, 2), theirs, atol=5e-5, rtol=1e-4)  # theirs sums float32 angles after the outer products

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_two_rotations_compose(layout):
    "Temporal RoPE then axial 2D RoPE (each with the positions kernel) = one rotation by the summed angles"
    enc = get("eva02at", dim=32)
    P = _video(2, 3, 5)
    x = torch.randn(1, P.shape[1], 2, 32, dtype=torch.float64)
    a = rotate(x, angles(P[0], enc.temporal_inv_freq, torch.float64), layout)
    b = rotate(a, angles(P, enc.spatial_inv_freq, torch.float64, axis_map=enc.spatial_axis_map), layout)
    torch.testing.assert_close(b, rotate(x, enc.angles(P, torch.float64), layout), **TOL[torch.float64])

def test_relative_per_axis_and_not_separable():
    enc = get("eva02at", dim=16)
    P = _video(2, 3, 4)
    q, k = torch.randn(1, 24, 1, 16, dtype=torch.float64), torch.randn(1, 24, 1, 16, dtype=torch.float64)
    def L(p): return attention_logits(q, k, enc, q_positions=p, k_positions=p, causal=False, backend="torch")
    torch.testing.assert_close(L(P + torch.tensor([[5], [-3], [11]])), L(P), atol=1e-4, rtol=1e-4)
    v = torch.randn(16, dtype=torch.float64)
    def s(dt, dy, dx):
        kk = rotate(v.view(1, 1, 1, 16), enc.angles(torch.tensor([[dt], [dy], [dx]]), torch.float64)).flatten()
        return float(v @ kk)
    assert abs(s(2, 3, 1) - s(2, 0, 0) - s(0, 3, 1) + s(0, 0, 0)) > 1e-3  # time and space interact

def test_reductions():
    "One frame: axial 2D RoPE; a still patch over time: 1D RoPE"
    enc = get("eva02at", dim=24)
    g = grid_positions(3, 3)
    a = enc.angles(torch.cat([torch.zeros(1, 9, dtype=torch.long), g]))
    torch.testing.assert_close(a, get("axial2d", dim=24, base=10000.0).angles(g))
    still = torch.stack([torch.arange(9), torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long)])
    torch.testing.assert_close(enc.angles(still), get("rope", dim=24).angles(torch.arange(9)))

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch_with_gradients(layout):
    enc = get("eva02at", dim=34, partial_rotary_factor=32 / 34)  # 32 features rotate, 2 pass through
    P = _video(3, 3, 4)[:, :35].to(DEV)  # T = 35
    q = torch.randn(2, 35, 3, 34, device=DEV, requires_grad=True)
    k = torch.randn(2, 35, 1, 34, device=DEV, requires_grad=True)
    outs = {b: enc.apply(q, k, P, layout=layout, backend=b) for b in ("torch", "triton")}
    for a, b in zip(outs["torch"], outs["triton"]): torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert all(torch.equal(o[0][..., 32:], q[..., 32:]) and torch.equal(o[1][..., 32:], k[..., 32:]) for o in outs.values())  # pass-through
    gt = torch.autograd.grad(sum(o.square().sum() for o in outs["torch"]), (q, k))
    gk = torch.autograd.grad(sum(o.square().sum() for o in outs["triton"]), (q, k))
    for a, b in zip(gt, gk): torch.testing.assert_close(a, b, **TOL[torch.float32])

BAD = [
    (lambda: get("eva02at", dim=5), ValueError, "`dim`"),
    (lambda: get("eva02at", dim=16, base=0.0), ValueError, "`base`"),
    (lambda: get("eva02at", dim=16, temporal_base=-2.0), ValueError, "`temporal_base`"),
    (lambda: get("eva02at", dim=16, temporal_base="big"), TypeError, "`temporal_base`"),
    (lambda: get("eva02at", dim=16).angles(torch.zeros(2, 5)), ValueError, "`positions` must be (3, T)"),
    (lambda: get("eva02at", dim=16).angles([[0], [0], [0]]), TypeError, "`positions`"),
    (lambda: get("eva02at", dim=16).angles(torch.full((3, 2), float("nan"))), ValueError, "NaN"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=re.escape(word)): f()
