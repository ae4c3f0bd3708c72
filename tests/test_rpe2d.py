"""RPE-2D (`posexplorer.encodings.spacetime.rpe2d`): randomized 2D positions in training, the plain grid at inference; the sampling is our
choice (RPE-2D's code was not available): an independent re-derivation of the draw from the same generator, order and
range, coverage, reduction to axial 2D RoPE at inference, relativity, the kernel, and bad input."""
import re
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.spacetime.axial2d import grid_positions
from posexplorer.encodings.spacetime.rpe2d import sampled_positions
from posexplorer.figures.rpe2d import positions_figure
from posexplorer.ops.attention import attention_logits

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.mark.parametrize("h,w,M,seed", [(4, 5, 20, 0), (16, 16, 48, 3), (1, 7, 7, 2), (3, 3, (5, 9), 1)])
def test_draw_is_sorted_sample_without_replacement(h, w, M, seed):
    "Rows: h sorted values of randperm(M_y); columns: w sorted values of the next randperm(M_x), same generator"
    My, Mx = (M, M) if isinstance(M, int) else M
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.randperm(My, generator=g)[:h].sort().values, torch.randperm(Mx, generator=g)[:w].sort().values
    expect = torch.stack([ys.repeat_interleave(w), xs.repeat(h)])
    assert torch.equal(sampled_positions(h, w, M, torch.Generator().manual_seed(seed)), expect)

@pytest.mark.parametrize("seed", range(5))
def test_order_and_range(seed):
    p = sampled_positions(7, 9, 30, torch.Generator().manual_seed(seed))
    rows, cols = p[0].view(7, 9), p[1].view(7, 9)
    assert (rows.diff(dim=0) > 0).all() and (cols.diff(dim=1) > 0).all() and (rows.diff(dim=1) == 0).all()
    assert p.min() >= 0 and p.max() < 30

def test_full_range_is_the_grid():
    assert torch.equal(sampled_positions(5, 8, (5, 8)), grid_positions(5, 8))

def test_coverage():
    "Each value in [0, M) is drawn with probability n/M: over 300 draws every value appears"
    g, seen = torch.Generator().manual_seed(0), torch.zeros(40, dtype=torch.long)
    for _ in range(300): seen += torch.bincount(sampled_positions(1, 10, 40, g)[1], minlength=40)
    assert (seen > 0).all() and seen.sum() == 3000

def test_inference_is_axial2d_and_relative():
    enc = get("rpe2d", dim=16, max_position=32)
    torch.testing.assert_close(enc.angles(enc.positions(6, 5)), get("axial2d", dim=16, base=10000.0).angles(grid_positions(6, 5)))
    P = enc.positions(6, 5, train=True)
    q, k = torch.randn(1, 30, 1, 16, dtype=torch.float64), torch.randn(1, 30, 1, 16, dtype=torch.float64)
    def L(p): return attention_logits(q, k, enc, q_positions=p, k_positions=p, causal=False, backend="torch")
    torch.testing.assert_close(L(P + torch.tensor([[4], [-13]])), L(P), atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch(layout):
    enc = get("rpe2d", dim=32, max_position=20)
    P = enc.positions(5, 7, train=True, device=DEV)
    q, k = torch.randn(2, 35, 3, 32, device=DEV), torch.randn(2, 35, 1, 32, device=DEV)
    t, r = enc.apply(q, k, P, layout=layout, backend="triton"), enc.apply(q, k, P, layout=layout, backend="torch")
    for a, b in zip(t, r): torch.testing.assert_close(a, b, **TOL[torch.float32])

def test_figure():
    fig = positions_figure((4, 4), (8, 8), 8, draws=2)
    assert [t.name for t in fig.data] == ["inference (plain grid)", "training draw 1", "training draw 2"]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["1", "2"]

BAD = [
    (lambda: sampled_positions(9, 4, 8), ValueError, "`max_position`"),
    (lambda: sampled_positions(0, 4), ValueError, "`h`"),
    (lambda: sampled_positions(2, 2, max_position=0), ValueError, "`max_position`"),
    (lambda: sampled_positions(2, 2, max_position=(4,)), TypeError, "`max_position`"),
    (lambda: get("rpe2d", dim=16, seed=-1), ValueError, "`seed`"),
    (lambda: get("rpe2d", dim=16, seed=1.5), TypeError, "`seed`"),
    (lambda: get("rpe2d", dim=16, max_position="64"), TypeError, "`max_position`"),
    (lambda: get("rpe2d", dim=16, max_position=4).positions(5, 3, train=True), ValueError, "`max_position`"),
    (lambda: get("rpe2d", dim=11), ValueError, "`dim`"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=re.escape(word)): f()
