"""Dens3R's position-interpolated 2D RoPE (`posexplorer.encodings.spacetime.dens3r`), a labelled reading: against the logic of CroCo's
`RoPE2D` (naver/croco, models/pos_embed.py; re-written here, y half then x half, each a 1D RoPE in the half layout,
base 100) up to a fixed feature permutation, at integer positions and at interpolated float positions; position
interpolation by hand; the kernel with float positions; bad input."""
import re
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.spacetime.axial2d import grid_positions
from posexplorer.encodings.spacetime.dens3r import interpolated_positions

DEV = "cuda" if torch.cuda.is_available() else "cpu"

def _croco_rope2d(tokens, positions, base=100.0):
    """CroCo's RoPE2D, re-written for float positions: tokens (B, H, T, D), positions (B, T, 2) rows (y, x); the first
    D/2 features rotate with y, the rest with x, each half pairing feature i with i + D/4"""
    D = tokens.shape[-1] // 2
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    def rope1d(t, p):
        f = p.double()[..., None] * inv  # (B, T, D/2)
        cos, sin = torch.cat([f, f], -1).cos()[:, None], torch.cat([f, f], -1).sin()[:, None]
        return t * cos + torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1) * sin
    y, x = tokens.chunk(2, -1)
    return torch.cat([rope1d(y, positions[..., 0]), rope1d(x, positions[..., 1])], -1)

def _perm(D):
    "Feature c of CroCo's layout is feature perm[c] of ours (half layout, y pairs first)"
    q = D // 4
    return torch.cat([torch.arange(0, q), torch.arange(2 * q, 3 * q), torch.arange(q, 2 * q), torch.arange(3 * q, 4 * q)])

@pytest.mark.parametrize("h,w,D", [(8, 8, 16), (5, 7, 32), (40, 24, 64), (64, 50, 8)])
def test_matches_croco_rope2d_up_to_permutation(h, w, D):
    "At the training grid (integer positions, CroCo's own case) and above it (interpolated float positions)"
    enc = get("dens3r", dim=D, train_size=32)
    P = enc.positions(h, w)  # (2, T)
    x = torch.randn(1, h * w, 2, D, dtype=torch.float64)  # (B, T, H, D)
    ours = enc.apply(x, None, P, layout="half", backend="torch")[0]
    p = _perm(D)
    theirs = _croco_rope2d(x[..., p].transpose(1, 2), P.T[None]).transpose(1, 2)
    torch.testing.assert_close(theirs, ours[..., p], atol=1e-6, rtol=1e-6)  # our θ are float32

def test_integer_positions_up_to_training_size():
    assert torch.equal(interpolated_positions(32, 20, 32), grid_positions(32, 20).float())
    assert torch.equal(interpolated_positions(3, 4, (3, 4)), grid_positions(3, 4).float())

def test_interpolation_by_hand():
    "A 64 × 48 test grid onto a 32 × 32 training grid: y steps 1/2, x steps 2/3"
    p = interpolated_positions(64, 48, 32)
    assert p[:, 1].tolist() == pytest.approx([0.0, 2 / 3]) and p[:, 48].tolist() == pytest.approx([0.5, 0.0])
    assert (p.max(1).values < 32).all()

def test_relative_within_a_grid():
    from posexplorer.ops.attention import attention_logits
    enc = get("dens3r", dim=16, train_size=8)
    P = enc.positions(12, 10)
    q, k = torch.randn(1, 120, 1, 16, dtype=torch.float64), torch.randn(1, 120, 1, 16, dtype=torch.float64)
    def L(p): return attention_logits(q, k, enc, q_positions=p, k_positions=p, causal=False, backend="torch")
    torch.testing.assert_close(L(P + torch.tensor([[2.25], [-9.0]])), L(P), atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch(layout):
    enc = get("dens3r", dim=34, partial_rotary_factor=32 / 34, train_size=(3, 4))  # 32 features rotate, 2 pass through
    P = enc.positions(5, 7, device=DEV)
    q, k = torch.randn(2, 35, 3, 34, device=DEV), torch.randn(2, 35, 1, 34, device=DEV)
    t, r = enc.apply(q, k, P, layout=layout, backend="triton"), enc.apply(q, k, P, layout=layout, backend="torch")
    for a, b in zip(t, r): torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert torch.equal(t[0][..., 32:], q[..., 32:]) and torch.equal(r[1][..., 32:], k[..., 32:])  # pass-through

BAD = [
    (lambda: interpolated_positions(0, 4), ValueError, "`h`"),
    (lambda: interpolated_positions(4, 4, train_size=0), ValueError, "`train_size`"),
    (lambda: interpolated_positions(4, 4, train_size=(2, 3, 4)), TypeError, "`train_size`"),
    (lambda: interpolated_positions(4, 4, train_size=2.5), TypeError, "`train_size`"),
    (lambda: get("dens3r", dim=16, train_size="32"), TypeError, "`train_size`"),
    (lambda: get("dens3r", dim=9), ValueError, "`dim`"),
    (lambda: get("dens3r", dim=16).angles(torch.zeros(1, 4)), ValueError, "`positions` must be (2, T)"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=re.escape(word)): f()
