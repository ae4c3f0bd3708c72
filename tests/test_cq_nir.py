"CQ-NIR (Jiang, Hua, Han, arXiv 2308.11025): quantization is idempotent, the encoding is constant within a cell, the paper code's grid"
import math
import pytest
import torch
from posexplorer.core import get
from posexplorer.encodings.coordinates.cq_nir import CQNIR, fourier_features, quantize

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,offset", [(5 / 25599, -2.5), (0.25, 0.0), (1 / 3, 0.7), (1e-3, -1.0)])
def test_quantize_idempotent(dtype, cell, offset):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5001, generator=g, dtype=torch.float64) * 6 - 3).to(dtype)
    qx = quantize(x, cell, offset)
    assert qx.dtype == dtype and torch.equal(quantize(qx, cell, offset), qx)
    assert (qx.double() - x.double()).abs().max() <= cell / 2 * (1 + 1e-6) + (1e-6 if dtype == torch.float32 else 0)

@pytest.mark.parametrize("dim", [2, 14, 32])
@pytest.mark.parametrize("cell,fracs", [(2.0 ** -7, (0.0, 0.013, 0.5, 0.77, 0.999)),  # a dyadic cell: edges are exact
                                        (0.01, (0.013, 0.5, 0.77, 0.99))])  # 0.01·k is not exact: stay off the edges
def test_constant_within_a_cell(dim, cell, fracs):
    "Every point of a cell gets the encoding of the cell centre; the neighbouring cell gets another"
    enc = get("cq_nir", dim=dim, cell_size=cell, offset=0.0)
    k = torch.arange(-150, 150, dtype=torch.float64)  # cells k: [k·h, (k+1)·h)
    centre = enc.embed(cell * (k + 0.5))
    for frac in fracs:
        assert torch.equal(enc.embed(cell * (k + frac)), centre), frac
    assert not torch.equal(enc.embed(cell * (k + 1.5)), centre)  # the next cell

def test_matches_the_paper_code_grid():
    """The grid of MachinePerceptionLab/CQ-NIR, neus_cq/models/fields.py, SDFNetwork.pts_loc: normalize
    [-2.5, 2.5] to [0, 1], floor on cube_size = 1/(res - 1) with res = 25600, add half a cube, map back (written from that
    description). Our defaults give the same points."""
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(20_000, generator=g, dtype=torch.float64) * 5 - 2.5
    xmin, xmax, res = -2.5, 2.5, 25600
    cube = 1 / (res - 1)
    norm = (pts - xmin) / (xmax - xmin)
    centre = (norm / cube).floor() * cube + cube / 2
    theirs = centre * 2 * xmax - xmax
    enc = get("cq_nir")
    torch.testing.assert_close(enc.quantize(pts), theirs, atol=1e-12, rtol=0)

def test_nerf_embedder_bands():
    "NeRF's embedder (log_sampling): 2**linspace(0, multires-1, multires); multires = 7 as in neus_cq/confs/womask.conf; sin then cos"
    x = torch.tensor([0.3, -1.1], dtype=torch.float64)
    e = fourier_features(x, 14, 6.0, torch.float64)
    for i, f in enumerate([1, 2, 4, 8, 16, 32, 64]):
        torch.testing.assert_close(e[:, 2 * i], torch.sin(f * x)); torch.testing.assert_close(e[:, 2 * i + 1], torch.cos(f * x))

def test_defaults_and_conformance_shapes():
    enc = get("cq_nir")
    assert isinstance(enc, CQNIR) and enc.dim == 14 and enc.n_axes == 1
    for d in range(2, 33, 2):
        e = get("cq_nir", dim=d).embed(torch.arange(23))
        assert e.shape == (23, d) and e.dtype == torch.float32 and torch.isfinite(e).all()

def test_input_untouched():
    x = torch.linspace(-1, 1, 37); x0 = x.clone()
    get("cq_nir").embed(x); quantize(x, 0.1)
    assert torch.equal(x, x0)

BAD = [
    (lambda: quantize([0.1], 0.1), TypeError, "x"),
    (lambda: quantize(torch.tensor([float("inf")]), 0.1), ValueError, "x"),
    (lambda: quantize(torch.zeros(3), 0.0), ValueError, "cell_size"),
    (lambda: quantize(torch.zeros(3), 0.1, offset=float("nan")), TypeError, "offset"),
    (lambda: get("cq_nir", dim=3), ValueError, "dim"),
    (lambda: get("cq_nir", cell_size=-1.0), ValueError, "cell_size"),
    (lambda: get("cq_nir", max_freq_log2=-1.0), ValueError, "max_freq_log2"),
    (lambda: get("cq_nir").embed(torch.zeros(2, 5)), ValueError, "(T,)"),
    (lambda: get("cq_nir").embed(torch.zeros(0)), ValueError, "empty"),
    (lambda: get("cq_nir").embed(torch.tensor([float("nan")])), ValueError, "NaN"),
]

@pytest.mark.parametrize("call,exc,word", BAD)
def test_bad_input(call, exc, word):
    with pytest.raises(exc) as e: call()
    assert word in str(e.value)
