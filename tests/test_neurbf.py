"""NeuRBF (`posexplorer.encodings.coordinates.neurbf`, arXiv:2309.15426): the inverse-quadratic RBF and the frequency table against entry-by-entry
float64 formulas written from the code's `util_network.rbf_ivq_a_fb` and `configs/img.py`, the composition
h = b + Σ w ⊙ sin(ω φ̂), locality, gradients, the data-adaptive start, a short fit, and bad input."""
import math
import pytest
import torch
from posexplorer.core import get
from posexplorer.encodings.coordinates.neurbf import (FourierFeatures, NeuRBF, log_freqs, mlp, n_params, pixel_grid, rbf_ivq,
    synthetic_image, weighted_kmeans)
from posexplorer.tools.train_neurbf import fit_image, psnr

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def test_rbf_ivq_entrywise():
    x, c = torch.rand(7, 2, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
    M = torch.randn(5, 2, 2, dtype=torch.float64); S = M.transpose(1, 2) @ M
    out = rbf_ivq(x, c, S)
    for t in range(7):
        for k in range(5):
            dx, dy = (x[t] - c[k]).tolist()
            q = S[k, 0, 0] * dx * dx + (S[k, 0, 1] + S[k, 1, 0]) * dx * dy + S[k, 1, 1] * dy * dy
            assert math.isclose(out[t, k].item(), 1 / (1 + q.item()), rel_tol=1e-12)

def test_code_frequency_table():
    "configs/img.py: 32 channels, pe_lc0_rbf_freq = [2^-3, 2^12], exp2(linspace(log2 lo, log2 hi, n))"
    f = log_freqs(32, 2 ** -3, 2 ** 12).double()
    ref = torch.tensor([2 ** (-3 + 15 * j / 31) for j in range(32)], dtype=torch.float64)
    torch.testing.assert_close(f, ref, rtol=1e-6, atol=0)
    enc = get("neurbf")
    assert enc.dim == 32 and enc.n_neighbors == 4 and torch.equal(enc.freqs, log_freqs(32, 2 ** -3, 2 ** 12))

@pytest.mark.parametrize("dim,K,T", [(2, 4, 1), (8, 16, 13), (32, 64, 40), (30, 50, 17)])
def test_embed_is_the_composition(dim, K, T):
    enc = NeuRBF(dim=dim, n_kernels=K)
    assert enc.n_kernels == math.isqrt(K) ** 2
    p = enc.default_positions(T)
    assert p.shape == (2, T) and p.min() > 0 and p.max() < 1
    assert enc.embed(p).shape == (T, dim)
    p = torch.rand(2, T, dtype=torch.float64)  # random points: no ties between equidistant kernels
    h = enc.double().embed(p)  # the module runs in float64 once converted
    x = p.T
    c, S = enc.centers.double().detach(), enc.shapes.double().detach()
    d = torch.cdist(x, c)
    ref = torch.empty(T, dim, dtype=torch.float64)
    for t in range(T):
        nb = d[t].argsort()[:enc.n_neighbors]
        phi = rbf_ivq(x[t:t + 1], c[nb], S[nb])[0]
        phi = phi / (phi.sum() + 1e-8)  # the code adds 1e-8 to the sum
        ref[t] = enc.bias.double() + (enc.weights.double()[nb] * torch.sin(phi[:, None] * enc.freqs.double())).sum(0)
    torch.testing.assert_close(h, ref, atol=1e-9, rtol=1e-9)

def test_locality_and_gradients():
    enc = NeuRBF(dim=8, n_kernels=16)
    p = torch.tensor([[0.1], [0.1]])
    idx, _ = enc.neighbors(p.T)
    h = enc.embed(p)
    far = torch.tensor([k for k in range(16) if k not in idx[0]])
    with torch.no_grad(): enc.weights[far] = 100.0; enc.centers[far] += 0.01
    torch.testing.assert_close(enc.embed(p), h)
    enc.embed(enc.default_positions(40)).square().sum().backward()
    for name, q in enc.named_parameters():
        assert q.grad is not None and torch.isfinite(q.grad).all(), name
    assert enc.centers.grad.abs().sum() > 0 and enc.shape_factors.grad.abs().sum() > 0  # the kernels adapt too
    frozen = NeuRBF(dim=8, n_kernels=16, learn_kernels=False)
    assert n_params(frozen) == 16 * 8 + 8

def test_shapes_positive_definite_and_init():
    enc = NeuRBF(dim=4, n_kernels=25)
    assert (torch.linalg.eigvalsh(enc.shapes.detach()) > 0).all()
    torch.testing.assert_close(enc.shapes.detach(), torch.eye(2).expand(25, 2, 2) * 100 + 1e-6 * torch.eye(2), atol=1e-4, rtol=1e-6)  # (2/h)² I, h = 1/5
    img = synthetic_image(32)
    enc.init_from_image(img)
    assert (torch.linalg.eigvalsh(enc.shapes.detach()) > 0).all() and enc.centers.min() >= 0 and enc.centers.max() <= 1

def test_weighted_kmeans():
    pts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [6.0, 5.0]])
    c, lab = weighted_kmeans(pts, torch.tensor([1.0, 3.0, 1.0, 1.0]), torch.tensor([[0.0, 0.5], [4.0, 4.0]]))
    torch.testing.assert_close(c, torch.tensor([[0.0, 0.75], [5.5, 5.0]]))
    assert lab.tolist() == [0, 0, 1, 1]
    c2, _ = weighted_kmeans(pts, torch.ones(4), torch.tensor([[0.0, 0.5], [4.0, 4.0], [100.0, 100.0]]))
    assert c2[2].tolist() == [100.0, 100.0]  # an empty cluster keeps its centre

def test_short_fit_improves_and_helpers():
    img = synthetic_image(24)
    assert img.shape == (24, 24) and 0 <= img.min() and img.max() <= 1
    torch.testing.assert_close(pixel_grid(2, 3).T[:2], torch.tensor([[1 / 6, 0.25], [0.5, 0.25]]))
    enc = NeuRBF(dim=16, n_kernels=16, freq_range=(0.125, 64.0)).init_from_image(img)
    net = mlp([16, 16, 1])
    with torch.no_grad(): before = psnr(net(enc(pixel_grid(24, 24)))[:, 0].view(24, 24), img)
    after, pred = fit_image(enc, net, img, steps=60, lr=3e-2, progress=False)
    assert pred.shape == (24, 24) and after > before + 3 and after > 15, (before, after)
    assert FourierFeatures(8)(pixel_grid(4, 4)).shape == (16, 32)

BAD = [
    (lambda: get("neurbf", dim=5), ValueError, "`dim`"),
    (lambda: get("neurbf", n_kernels=0), ValueError, "`n_kernels`"),
    (lambda: get("neurbf", n_neighbors=0), ValueError, "`n_neighbors`"),
    (lambda: get("neurbf", freq_range=1.0), TypeError, "`freq_range`"),
    (lambda: get("neurbf", freq_range=(0.0, 1.0)), ValueError, "`freq_range`"),
    (lambda: get("neurbf").embed(torch.rand(3, 5)), ValueError, "`positions` must be (2, T)"),
    (lambda: get("neurbf").embed(torch.rand(5)), ValueError, "`positions`"),
    (lambda: get("neurbf").embed(torch.tensor([[0.1], [float("nan")]])), ValueError, "`positions` contains NaN"),
    (lambda: get("neurbf").embed([[0.1], [0.2]]), TypeError, "`positions`"),
    (lambda: get("neurbf").embed(torch.tensor([[1], [2]])), TypeError, "`positions`"),
]

@pytest.mark.parametrize("make,exc,words", BAD)
def test_bad_input(make, exc, words):
    with pytest.raises(exc) as e: make()
    assert words in str(e.value)

def test_inputs_untouched():
    p = torch.rand(2, 9); p0 = p.clone()
    get("neurbf", dim=4).embed(p)
    torch.testing.assert_close(p, p0, atol=0, rtol=0)
