"""Axial 2D RoPE (`posexplorer.encodings.spacetime.axial2d`): against lucidrains' rotary-embedding-torch (`get_axial_freqs`), against the logic
of naver-ai/rope-vit's `compute_axial_cis` + `apply_rotary_emb` (deit/models_v2_rope.py; re-written here, complex form,
x block first), 2D relativity per axis, the shared kernel's backends, gradients, and bad input."""
import math, re
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, get, rotate
from posexplorer.encodings.spacetime.axial2d import Axial2D, axial_frequencies, grid_positions, near_square
from posexplorer.figures.axial2d import grid_attention_map
from posexplorer.ops.attention import attention_logits

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- lucidrains' rotary-embedding-torch -----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("h,w,D,base", [(5, 7, 32, 100.0), (3, 3, 8, 10000.0), (1, 9, 64, 10.0)])
def test_matches_lucidrains_axial(backend, h, w, D, base):
    "RotaryEmbedding(D/2).get_axial_freqs(h, w): y features first, then x, interleaved pairs"
    re = pytest.importorskip("rotary_embedding_torch")
    freqs = re.RotaryEmbedding(D // 2, theta=base).get_axial_freqs(h, w).reshape(h * w, D)  # (T, D)
    x = torch.randn(2, 3, h * w, D)  # (B, H, T, D)
    theirs = re.apply_rotary_emb(freqs, x)
    ours = get("axial2d", dim=D, base=base).apply(x.transpose(1, 2).to(DEV), None, grid_positions(h, w, DEV), layout="interleaved", backend=backend)[0]
    torch.testing.assert_close(ours.cpu().transpose(1, 2), theirs, **TOL[torch.float32])

# ---- naver-ai/rope-vit ----------------------------------------------------------------------------------
def _rope_vit_axial(x, h, w, theta):
    """rope-vit's axial RoPE, re-written: per axis D/4 frequencies theta**(-4j/D); t_x = t % w, t_y = t // w;
    complex table cat([x, y]); interleaved pairs of x (B, H, T, D) multiplied by it"""
    D = x.shape[-1]
    f = 1.0 / theta ** (torch.arange(0, D, 4)[: D // 4].double() / D)
    t = torch.arange(h * w, dtype=torch.float64)
    ang = torch.cat([torch.outer(t % w, f), torch.outer(torch.div(t, w, rounding_mode="floor"), f)], -1)  # (T, D/2)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(ang), ang)).flatten(-2)

@pytest.mark.parametrize("h,w,D", [(14, 14, 64), (4, 6, 16), (2, 5, 8)])
def test_matches_rope_vit_up_to_block_order(h, w, D):
    "rope-vit puts the x block of pairs first: swapping the two halves of the features maps one onto the other"
    x = torch.randn(1, 2, h * w, D, dtype=torch.float64)
    swap = torch.cat([torch.arange(D // 2, D), torch.arange(D // 2)])
    theirs = _rope_vit_axial(x[..., swap], h, w, 100.0)[..., swap]
    enc = get("axial2d", dim=D)
    ours = rotate(x.transpose(1, 2), enc.angles(grid_positions(h, w), torch.float64), "interleaved").transpose(1, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)  # our θ_j are float64 rounded to float32 once

def test_frequencies_known_values():
    "d = 8, base 100: θ = (1, 0.1) on each axis"
    f, amap = axial_frequencies(8, 100.0)
    torch.testing.assert_close(f, torch.tensor([1.0, 0.1, 1.0, 0.1], dtype=torch.float64))
    assert amap.tolist() == [0, 0, 1, 1]
    for d in (2, 6, 10, 30):
        f, amap = axial_frequencies(d, 100.0)
        R = d // 2
        assert len(f) == R and (amap == 0).sum() == (R + 1) // 2 and (amap == 1).sum() == R // 2

# ---- properties -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [2, 6, 16, 64])
def test_relative_per_axis(D):
    "Shifting queries and keys by (dy, dx), different on each axis, leaves the logits unchanged"
    enc = get("axial2d", dim=D)
    q, k = torch.randn(1, 20, 2, D, dtype=torch.float64), torch.randn(1, 20, 2, D, dtype=torch.float64)
    p = grid_positions(4, 5)
    def logits(pp): return attention_logits(q, k, enc, q_positions=pp, k_positions=pp, causal=False, backend="torch")
    shifted = p + torch.tensor([[37], [-11]])
    torch.testing.assert_close(logits(shifted), logits(p), atol=1e-4, rtol=1e-4)

def test_y_and_x_are_distinct():
    enc = get("axial2d", dim=16)
    q = torch.randn(1, 2, 1, 16, dtype=torch.float64)
    a = attention_logits(q, q, enc, q_positions=torch.tensor([[0, 2], [0, 3]]), k_positions=torch.tensor([[0, 2], [0, 3]]), causal=False, backend="torch")
    b = attention_logits(q, q, enc, q_positions=torch.tensor([[0, 3], [0, 2]]), k_positions=torch.tensor([[0, 3], [0, 2]]), causal=False, backend="torch")
    assert not torch.allclose(a, b)

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch_with_gradients(layout):
    enc = get("axial2d", dim=36, partial_rotary_factor=32 / 36)  # 32 features rotate, 4 pass through
    pos = grid_positions(7, 5, DEV)  # T = 35
    q = torch.randn(2, 35, 3, 36, device=DEV, requires_grad=True)
    k = torch.randn(2, 35, 1, 36, device=DEV, requires_grad=True)
    q0, k0 = q.detach().clone(), k.detach().clone()
    outs = {b: enc.apply(q, k, pos, layout=layout, backend=b) for b in ("torch", "triton")}
    for a, b in zip(outs["torch"], outs["triton"]): torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert all(torch.equal(o[0][..., 32:], q[..., 32:]) and torch.equal(o[1][..., 32:], k[..., 32:]) for o in outs.values())  # pass-through
    gt = torch.autograd.grad(sum(o.square().sum() for o in outs["torch"]), (q, k))
    gk = torch.autograd.grad(sum(o.square().sum() for o in outs["triton"]), (q, k))
    for a, b in zip(gt, gk): torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert torch.equal(q.detach(), q0) and torch.equal(k.detach(), k0)  # inputs untouched

def test_default_positions_grid():
    enc = get("axial2d", dim=8)
    assert near_square(35) == (6, 6)
    assert enc.default_positions(35).tolist() == grid_positions(6, 6)[:, :35].tolist()

def test_grid_attention_map_offsets():
    import numpy as np
    fig = grid_attention_map(get("axial2d", dim=32), 5, 6, queries=[(0, 0), (1, 2)])
    z0, z1 = (np.asarray(t.z) for t in fig.data)
    assert np.allclose(z0[:4, :4], z1[1:, 2:], atol=1e-5)  # the same offsets from either query

# ---- bad input ------------------------------------------------------------------------------------------
BAD = [
    (lambda: grid_positions(0, 3), ValueError, "`h`"),
    (lambda: grid_positions(2, 2.5), TypeError, "`w`"),
    (lambda: near_square(0), ValueError, "`T`"),
    (lambda: get("axial2d", dim=7), ValueError, "`dim`"),
    (lambda: get("axial2d", dim=16, base=-1.0), ValueError, "`base`"),
    (lambda: get("axial2d", dim=16, partial_rotary_factor=0.0), ValueError, "`partial_rotary_factor`"),
    (lambda: get("axial2d", dim=16).angles(torch.zeros(3, 5)), ValueError, "`positions` must be (2, T)"),
    (lambda: get("axial2d", dim=16).angles(torch.zeros(5)), ValueError, "rows"),
    (lambda: grid_attention_map(get("axial2d", dim=16), 3, 3, queries=[(0, 3)]), ValueError, "`queries`"),
    (lambda: grid_attention_map(get("axial2d", dim=16), 3, 3, positions=torch.zeros(2, 8)), ValueError, "`positions`"),
    (lambda: grid_attention_map("axial2d", 3, 3), ValueError, "`encoding`"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=re.escape(word)): f()
