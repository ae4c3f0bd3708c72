"""STAR's normalized 2D RoPE (`posexplorer.encodings.spacetime.star`), our reading position = index · ref_size / size (STAR's code was not
available): hand-computed positions, alignment across scales, relativity within a map and across maps in image units,
the kernel with float positions, and bad input."""
import re
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.spacetime.star import star_positions
from posexplorer.figures.star import scales_overlay
from posexplorer.encodings.spacetime.axial2d import grid_positions
from posexplorer.ops.attention import attention_logits

DEV = "cuda" if torch.cuda.is_available() else "cpu"

def test_known_positions():
    "VAR-like scales 1, 2, 4 onto ref 8: by hand"
    p = star_positions([1, 2, 4], ref_size=8)
    expect_y = [0] + [0, 0, 4, 4] + [0] * 4 + [2] * 4 + [4] * 4 + [6] * 4
    expect_x = [0] + [0, 4, 0, 4] + [0, 2, 4, 6] * 4
    assert p[0].tolist() == expect_y and p[1].tolist() == expect_x
    assert star_positions([(3, 2)], ref_size=6).T.tolist() == [[0, 0], [0, 3], [2, 0], [2, 3], [4, 0], [4, 3]]

@pytest.mark.parametrize("s,k", [(2, 2), (3, 4), (5, 3)])
def test_children_share_positions(s, k):
    "Cell (i, j) of an s × s map sits on cell (k·i, k·j) of the (k·s) × (k·s) map"
    a, b = star_positions([s]), star_positions([k * s])
    torch.testing.assert_close(a, b.reshape(2, k * s, k * s)[:, ::k, ::k].reshape(2, s * s))

def test_relative_within_and_across_maps():
    enc = get("star", dim=16)
    P = star_positions([2, 4, 8])
    T = P.shape[1]
    q, k = torch.randn(1, T, 2, 16, dtype=torch.float64), torch.randn(1, T, 2, 16, dtype=torch.float64)
    def L(p): return attention_logits(q, k, enc, q_positions=p, k_positions=p, causal=False, backend="torch")
    torch.testing.assert_close(L(P + torch.tensor([[3.5], [-7.0]])), L(P), atol=1e-4, rtol=1e-4)
    v = torch.randn(1, 1, 1, 16, dtype=torch.float64).expand(1, T, 1, 16)
    S = attention_logits(v, v, enc, q_positions=P, k_positions=P, causal=False, backend="torch")[0, 0]
    i2, i4 = 0, 4 + 1 * 4 + 1  # 2×2 cell (0,0) at (0,0); 4×4 cell (1,1) at (4,4)
    j8, k8 = 20, 20 + 2 * 8 + 2  # 8×8 cell (0,0) at (0,0); 8×8 cell (2,2) at (4,4)
    assert P[:, i4].tolist() == P[:, k8].tolist() == [4.0, 4.0]
    torch.testing.assert_close(S[i2, i4], S[j8, k8])  # same image offset, same score, whatever the maps

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch_float_positions(layout):
    enc = get("star", dim=36, partial_rotary_factor=32 / 36, ref_size=7.0)  # 32 features rotate, 4 pass through
    P = enc.positions([1, 3, 5], device=DEV)  # T = 35, positions like 7/3
    q, k = torch.randn(2, 35, 3, 36, device=DEV), torch.randn(2, 35, 1, 36, device=DEV)
    t, r = enc.apply(q, k, P, layout=layout, backend="triton"), enc.apply(q, k, P, layout=layout, backend="torch")
    for a, b in zip(t, r): torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert torch.equal(t[0][..., 32:], q[..., 32:]) and torch.equal(r[1][..., 32:], k[..., 32:])  # pass-through

def test_reduces_to_axial2d_at_ref_size():
    enc, ax = get("star", dim=24, ref_size=6.0), get("axial2d", dim=24, base=10000.0)
    torch.testing.assert_close(enc.angles(enc.positions([6])), ax.angles(grid_positions(6, 6)))

def test_overlay_figure():
    fig = scales_overlay((1, 2, 4), ref_size=4)
    assert [t.name for t in fig.data] == ["1 × 1", "2 × 2", "4 × 4"] and list(fig.data[1].x) == [0, 2, 0, 2]

BAD = [
    (lambda: star_positions([]), ValueError, "`sizes`"),
    (lambda: star_positions("4"), ValueError, "`sizes`"),
    (lambda: star_positions([0]), ValueError, "`sizes`"),
    (lambda: star_positions([(2, 3, 4)]), ValueError, "`sizes`"),
    (lambda: star_positions([2.5]), TypeError, "`sizes`"),
    (lambda: star_positions([2], ref_size=0), ValueError, "`ref_size`"),
    (lambda: get("star", dim=16, ref_size=-1.0), ValueError, "`ref_size`"),
    (lambda: get("star", dim=3), ValueError, "`dim`"),
    (lambda: get("star", dim=16).angles(torch.zeros(3, 4)), ValueError, "`positions` must be (2, T)"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=re.escape(word)): f()
