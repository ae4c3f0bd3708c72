"""FreeFlux probe (`posexplorer.encodings.inference.freeflux`): shifting the keys by Δ equals moving the queries by −Δ (logits and a whole
joint block), the probe card, the 3-axis positions, kernel parity and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, angles, rotate
from posexplorer.encodings.classics.rope import RoPE
from posexplorer.ops.rotary import apply_rotary_positions
from posexplorer.encodings.inference.freeflux import (FreeFlux, TinyMMDiT, MMDiTConfig, flux_positions, axial_frequencies, probe_layers, _joint)

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def test_card():
    enc = get("freeflux", dim=32)
    assert isinstance(enc, FreeFlux) and isinstance(enc, RoPE) and enc.card.arxiv == "2503.16153"

def test_flux_positions():
    p = flux_positions(2, 2, 3)
    assert p.shape == (3, 8) and p[:, :2].abs().sum() == 0
    assert p[:, 2:].T.tolist() == [[0, r, c] for r in range(2) for c in range(3)]

@pytest.mark.parametrize("delta", [(0.0, 0.0, 3.0), (0.0, -2.0, 1.5), (1.0, 4.0, -5.0)])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_keys_by_delta_equal_queries_by_minus_delta_logits(delta, layout):
    f, amap = axial_frequencies((4, 6, 6))
    p = flux_positions(3, 4, 5).double()
    d = torch.tensor(delta, dtype=torch.float64)[:, None]
    q, k = torch.randn(1, 23, 2, 16, dtype=torch.float64), torch.randn(1, 23, 2, 16, dtype=torch.float64)
    rot = lambda x, pos: rotate(x, angles(pos, f, torch.float64, axis_map=amap), layout)
    s1 = torch.einsum("bqhd,bkhd->bhqk", rot(q, p), rot(k, p + d))
    s2 = torch.einsum("bqhd,bkhd->bhqk", rot(q, p - d), rot(k, p))
    torch.testing.assert_close(s1, s2, **TOL[torch.float64])

@pytest.mark.parametrize("layer", [0, 3])
def test_keys_by_delta_equal_queries_by_minus_delta_block(layer):
    model = TinyMMDiT(MMDiTConfig(n_layers=4), seed=3)
    x, p = torch.randn(2, 5 + 12, 64), flux_positions(5, 3, 4)
    probe = get("freeflux", dim=16)
    d = torch.tensor([0.0, 1.0, -2.0])[:, None]
    with torch.no_grad():
        a = _joint(model, model.blocks[layer], x, 5, p, probe.shifted(p, d))
        b = _joint(model, model.blocks[layer], x, 5, probe.shifted(p, -d), p)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

def test_probe_zero_shift_and_masked_shift():
    model = TinyMMDiT(MMDiTConfig(n_layers=3))
    text, image, p = torch.randn(1, 4, 64), torch.randn(1, 9, 64), flux_positions(4, 3, 3)
    assert probe_layers(model, text, image, p, (0.0, 0.0, 0.0)) == [0.0] * 3
    assert all(c > 0 for c in probe_layers(model, text, image, p, (0.0, 1.0, 0.0)))
    mask = torch.arange(13) >= 4
    s = FreeFlux().shifted(p, torch.tensor([0.0, 0.0, 2.0])[:, None], mask)
    assert s.dtype == torch.float64 and torch.equal(s[:, :4], p[:, :4].double()) and torch.equal(s[2, 4:], p[2, 4:].double() + 2)

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_kernel_parity_shifted_3axis(layout):
    f, amap = axial_frequencies((4, 6, 6))
    p = FreeFlux().shifted(flux_positions(3, 5, 5), torch.tensor([0.0, 0.5, 3.0])[:, None]).to(DEV)
    x = torch.randn(2, 28, 3, 16, device=DEV)
    t = apply_rotary_positions(x, None, p, f.to(DEV), amap.to(DEV), layout=layout, backend="triton")[0]
    torch.testing.assert_close(t, rotate(x, angles(p, f.to(DEV), axis_map=amap.to(DEV)), layout), **TOL[torch.float32])

# ---- precision at large positions ------------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # where float32 positions, θ_i or angles would be off by radians

def rotate_reference(x, angles64):
    "Float64 reference, half layout: pair i turned by its float64 angle reduced mod 2π"
    R, x = angles64.shape[-1], x.double()
    a = torch.remainder(angles64, 2 * math.pi)[None, :, None]  # (1, T, 1, R)
    return torch.cat([x[..., :R] * a.cos() - x[..., R:] * a.sin(), x[..., R:] * a.cos() + x[..., :R] * a.sin()], -1)

def test_far_positions_match_float64_reference():
    "Shifted positions stay exact (float64) near 2³¹, and the 3-axis rotation there is right to float32 rounding"
    p = torch.stack([FAR, FAR - 7, FAR // 3])  # (3, T) index, row, column
    s = FreeFlux().shifted(p, torch.tensor([0.0, 0.5, 3.0])[:, None])
    assert torch.equal(s - p.double(), torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)[:, None].expand(3, 3))  # no position rounded
    theta = torch.cat([10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for d in (4, 6, 6)])  # (8,)
    axis = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    x = torch.randn(1, 3, 2, 16)
    f, amap = axial_frequencies((4, 6, 6))
    out = apply_rotary_positions(x, None, s, f, amap, backend="torch")[0]
    torch.testing.assert_close(out.double(), rotate_reference(x, s[axis].T * theta), rtol=1e-6, atol=1e-6)
    enc, q = get("freeflux", dim=16), torch.randn(1, 3, 2, 16)  # the encoding itself: RoPE
    torch.testing.assert_close(enc.apply(q, None, FAR, backend="torch")[0].double(),
                               rotate_reference(q, FAR.double()[:, None] * 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="head dim"): enc.apply(torch.randn(1, 3, 2, 20), None)  # partial rotary is asked for

def test_bad_axes_dim():
    with pytest.raises(ValueError, match="axes_dim"): TinyMMDiT(MMDiTConfig(axes_dim=(4, 4, 4)))
