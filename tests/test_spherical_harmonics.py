"Spherical harmonics + SIREN (Rußwurm et al., arXiv 2310.06743): closed forms, the paper's code's convention, orthonormality, poles, kernel parity"
import math
import pytest
import sympy
import torch
from posexplorer.core import get
from posexplorer.encodings.coordinates.spherical_harmonics import (SphericalHarmonicsSiren, double_fourier_sphere, fibonacci_lonlat, pole_spread, sh_features,
                                   sh_index, sphere_quadrature, spherical_harmonics)

def _random_lonlat(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(n, generator=g, dtype=dtype) * 360 - 180, torch.rand(n, generator=g, dtype=dtype) * 180 - 90])

def test_y00_and_closed_forms_up_to_degree_2():
    "Y_0^0 = 1/(2√π); degrees 1 and 2 against the textbook real forms in Cartesian coordinates (Wikipedia's table)"
    p = _random_lonlat(300)
    Y = spherical_harmonics(p, 3)
    lon, lat = torch.deg2rad(p)
    x, y, z = lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()
    c1, c2 = math.sqrt(3 / (4 * math.pi)), 0.5 * math.sqrt(15 / math.pi)
    expected = {(0, 0): torch.full_like(x, 1 / (2 * math.sqrt(math.pi))),
                (1, -1): c1 * y, (1, 0): c1 * z, (1, 1): c1 * x,
                (2, -2): c2 * x * y, (2, -1): c2 * y * z, (2, 0): 0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1),
                (2, 1): c2 * x * z, (2, 2): 0.5 * c2 * (x * x - y * y)}
    for (l, m), e in expected.items(): torch.testing.assert_close(Y[:, sh_index(l, m)], e, atol=1e-13, rtol=1e-12)

def _repo_ylm(l, m, lon_deg, lat_deg):
    """The convention of MarcCoru/locationencoder (locationencoder/pe/spherical_harmonics_generate_ylms.py, calc_ylm, and
    spherical_harmonics.py, SphericalHarmonics.forward): θ = lat + 90°, φ = lon + 180°, sympy's assoc_legendre (which has
    the Condon-Shortley phase) times (-1)^m; written from that description and evaluated with sympy"""
    theta, phi = sympy.rad(sympy.Float(lat_deg) + 90), sympy.rad(sympy.Float(lon_deg) + 180)
    am = abs(m)
    P = sympy.assoc_legendre(l, am, sympy.cos(theta))
    N = sympy.sqrt(sympy.Rational(2 * l + 1, 4) / sympy.pi * sympy.factorial(l - am) / sympy.factorial(l + am))
    if m == 0: return float((N * P).evalf(30))
    trig = sympy.cos(m * phi) if m > 0 else sympy.sin(am * phi)
    return float(((-1) ** m * sympy.sqrt(2) * N * P * trig).evalf(30))

def test_matches_the_paper_code_convention_up_to_a_sign_per_degree():
    "Ours = (-1)^l × the repository's formula, up to degree 6, at random points (sympy, arbitrary precision)"
    p = _random_lonlat(4, seed=3)
    Y = spherical_harmonics(p, 7)
    for l in range(7):
        for m in range(-l, l + 1):
            for i in range(p.shape[1]):
                ref = _repo_ylm(l, m, p[0, i].item(), p[1, i].item())
                assert math.isclose(Y[i, sh_index(l, m)].item(), (-1) ** l * ref, rel_tol=1e-10, abs_tol=1e-12), (l, m, i)
    # two constants printed in the repository's generated file (spherical_harmonics_ylm.py, Yl0_m0 and Yl1_m1)
    assert math.isclose(1 / (2 * math.sqrt(math.pi)), 0.282094791773878, rel_tol=1e-13)
    assert math.isclose(math.sqrt(3 / (4 * math.pi)), 0.48860251190292, rel_tol=1e-12)

@pytest.mark.parametrize("L,dtype,tol", [(8, torch.float64, 1e-12), (20, torch.float64, 1e-12), (20, torch.float32, 2e-5)])
def test_orthonormal_by_quadrature(L, dtype, tol):
    "Gauss-Legendre in sin(latitude) × uniform longitude integrates the Gram matrix exactly: it is the identity"
    nodes, w = sphere_quadrature(L)
    Y = spherical_harmonics(nodes.to(dtype), L).double()
    G = Y.T @ (w[:, None] * Y)
    assert (G - torch.eye(L * L, dtype=torch.float64)).abs().max() < tol

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_pole_artifact(dtype):
    "At a pole every longitude gives the same SH features; the DFS encoding gives different ones"
    f_sh = lambda p: spherical_harmonics(p.to(dtype), 10).double()
    assert pole_spread(f_sh) < (1e-6 if dtype == torch.float32 else 1e-12)
    assert pole_spread(lambda p: double_fourier_sphere(p, 25)) > 5
    south = torch.tensor([[-170.0, 0.0, 45.0], [-90.0, -90.0, -90.0]], dtype=dtype)
    Ys = spherical_harmonics(south, 10)
    assert (Ys - Ys[0]).abs().max() < 1e-6
    # 0.1° apart across the north pole: close in SH, far in DFS
    across = torch.tensor([[0.0, 180.0], [89.95, 89.95]], dtype=torch.float64)
    assert (spherical_harmonics(across, 10).diff(dim=0)).norm() < 0.05
    assert (double_fourier_sphere(across, 25).diff(dim=0)).norm() > 5

@pytest.mark.parametrize("L,T", [(1, 1), (4, 37), (7, 217), (13, 64)])
def test_triton_matches_torch(L, T):
    "The fused kernel (Triton's interpreter on a CPU) equals the float64 reference to float32 rounding; inputs untouched"
    p = fibonacci_lonlat(T)
    if T > 2: p[:, :2] = torch.tensor([[10.0, 100.0], [90.0, -90.0]])
    p0 = p.clone()
    out = sh_features(p, L, backend="triton")
    assert out.shape == (T, L * L) and out.dtype == torch.float32 and torch.equal(p, p0)
    torch.testing.assert_close(out.double(), spherical_harmonics(p.double(), L), atol=2e-5, rtol=2e-5)

def test_triton_strided_input():
    "A (T, 2) tensor transposed to (2, T) (non-contiguous) works"
    pts = fibonacci_lonlat(50).T.contiguous().T  # (2, 50), strides (1, 2)
    assert not pts.is_contiguous()
    torch.testing.assert_close(sh_features(pts, 6, backend="triton"), spherical_harmonics(pts, 6), atol=2e-5, rtol=2e-5)

def test_encoding_defaults_determinism_and_gradients():
    enc = get("spherical_harmonics")
    assert isinstance(enc, SphericalHarmonicsSiren) and enc.n_axes == 2 and enc.dim == 64
    p = enc.default_positions(29)
    assert p.shape == (2, 29) and p[1].abs().max() <= 90
    e = enc.embed(p)
    assert e.shape == (29, 64) and torch.isfinite(e).all()
    torch.testing.assert_close(get("spherical_harmonics").embed(p), e)  # seeded: the same weights every time
    assert not torch.equal(get("spherical_harmonics", seed=1).embed(p), e)
    enc5 = get("spherical_harmonics", dim=5, legendre_polys=4)
    enc5(p).square().sum().backward()
    for n, w in enc5.named_parameters(): assert w.grad is not None and torch.isfinite(w.grad).all(), n

BAD = [
    (lambda: spherical_harmonics([[0.0], [0.0]]), TypeError, "positions"),
    (lambda: spherical_harmonics(torch.zeros(3, 4)), ValueError, "(2, T)"),
    (lambda: spherical_harmonics(torch.tensor([[0.0], [91.0]])), ValueError, "latitude"),
    (lambda: spherical_harmonics(torch.tensor([[float("nan")], [0.0]])), ValueError, "NaN"),
    (lambda: spherical_harmonics(torch.zeros(2, 0)), ValueError, "empty"),
    (lambda: spherical_harmonics(torch.zeros(2, 3), 0), ValueError, "legendre_polys"),
    (lambda: spherical_harmonics(torch.zeros(2, 3), 2.5), TypeError, "legendre_polys"),
    (lambda: sh_features(torch.zeros(2, 3), 3, backend="cuda"), ValueError, "backend"),
    (lambda: get("spherical_harmonics", dim=0), ValueError, "dim"),
    (lambda: get("spherical_harmonics", w0=-1.0), ValueError, "w0"),
    (lambda: double_fourier_sphere(torch.zeros(2, 3), n_freq=0), ValueError, "n_freq"),
    (lambda: fibonacci_lonlat(0), ValueError, "T"),
]

@pytest.mark.parametrize("call,exc,word", BAD)
def test_bad_input(call, exc, word):
    with pytest.raises(exc, match=None) as e: call()
    assert word in str(e.value)
