"""ComRoPE (AP, LD) and LieRE: outside checks against the authors' formulation (Longin-Yu/ComRoPE, model.py), the RoPE
reduction, the commuting check, the kernel and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, rotate, angles, inv_freq
from posexplorer.ops.attention import attend
from posexplorer.encodings.learned.comrope import (ComRoPEAP, ComRoPELD, LieRE, apply_blocks, block_rotations, spectral, schur_form, _skew,
                                 ap_from_frequencies, commutator_norm, rope_residual, grid_points, launch_block_rotary, block_rotary_torch)

# ---- the authors' formulation, re-derived from Longin-Yu/ComRoPE model.py (own code, not copied) ---------------------
# RoPESelfAttentionBase.get_rotation_matrix: lnR = Σ_a x_a A_a per block (A: (H|1, A, nb, b, b)), R = matrix_exp(lnR),
# scattered into a dense (D, D) block-diagonal matrix (kron(eye(nb), ones(b, b)) selector); forward: Q = R @ Q, K = R @ K.
# ComRoPEAPAttention.get_exponent_matrix: (freqs − freqsᵀ) expanded over axes times a mask with mask[a, j] = 1 iff j % A == a.
# ComRoPELDAttention.get_exponent_matrix: (freqs − freqsᵀ) * multiplier, multiplier (1, A, nb, 1, 1).
# LieREAttention.get_exponent_matrix: (freqs − freqsᵀ) / scale_factor, freqs (H, A, nb, b, b).
# CustomVITConfig.get_positions: patch grid (i, j) -> ((i, j) + 0.5) / n, with a cls token at (0.5, 0.5) prepended.

def _authors_exponents(kind, freqs, multiplier=None, A=2, scale_factor=1.0):
    S = freqs - freqs.transpose(-1, -2)
    if kind == "ap":
        nb = freqs.shape[2]
        mask = torch.zeros(A, nb, dtype=freqs.dtype)
        for a in range(A): mask[a, a::A] = 1.0
        return S.expand(-1, A, -1, -1, -1) * mask.view(1, A, nb, 1, 1)
    if kind == "ld": return S * multiplier
    return S / scale_factor

def _authors_dense_rotation(expo, positions): # positions (bs, len, A) -> (bs, len, H, D, D)
    nb, b = expo.shape[2], expo.shape[-1]
    lnR = (expo * positions[..., None, None, None].unsqueeze(2)).sum(3)  # (bs, len, H, nb, b, b): Σ_a x_a A_a
    R = torch.matrix_exp(lnR)
    sel = torch.kron(torch.eye(nb, dtype=torch.bool), torch.ones(b, b, dtype=torch.bool))
    dense = torch.zeros(*R.shape[:3], nb * b, nb * b, dtype=expo.dtype)
    dense[:, :, :, sel] = R.reshape(*R.shape[:3], -1)
    return dense

def _authors_positions(n):
    p = torch.stack(torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij"), -1).view(-1, 2)
    return torch.cat([torch.full((1, 2), 0.5, dtype=torch.float64), (p + 0.5) / n])  # (1 + n², 2)

@pytest.mark.parametrize("kind,cls", [("ap", ComRoPEAP), ("ld", ComRoPELD), ("liere", LieRE)])
@pytest.mark.parametrize("b", [2, 4, 8])
def test_matches_authors_dense_rotation(kind, cls, b):
    "Our transform (spectral or matrix_exp blocks) equals the authors' dense D×D route with the same parameters"
    H, D, A = 3, 16, 2
    enc = cls(dim=D, block_size=b, n_heads=H, init_std=1.0, seed=1).double()
    if kind == "ld": expo = _authors_exponents("ld", enc.weight[:, None], enc.multiplier.view(1, A, -1, 1, 1))
    else: expo = _authors_exponents(kind, enc.weight[:, None] if kind == "ap" else enc.weight, A=A)
    pos = _authors_positions(4)  # (17, 2): the cls token and a 4×4 patch grid
    q = torch.randn(2, 17, H, D, dtype=torch.float64)
    R = _authors_dense_rotation(expo, pos[None].expand(2, -1, -1))  # (2, 17, H, D, D)
    want = (R @ q[..., None])[..., 0]
    with torch.no_grad(): got, _ = enc.transform(q, None, pos.T, backend="torch")
    torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11)

def test_liere_scale_factor_is_a_reparametrisation():
    "The authors' LieRE divides freqs by scale_factor after initialising them scale_factor times larger: same generators"
    g = torch.Generator().manual_seed(0)
    W = torch.randn(1, 2, 4, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_authors_exponents("liere", W * 1e3, scale_factor=1e3), _skew(W))

# ---- RoPE reduction -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,D,A", [(1, 2, 1), (37, 16, 1), (29, 24, 2), (11, 12, 3)])
def test_ap_with_2x2_blocks_is_rope(T, D, A):
    f = inv_freq(D)
    enc = ap_from_frequencies(f, n_axes=A)
    p = grid_points(T, A)
    q = torch.randn(2, T, 3, D)
    with torch.no_grad(): got, _ = enc.transform(q, None, p, backend="torch")
    want = rotate(q, angles(p, f, axis_map=torch.arange(D // 2) % A), layout="interleaved")
    torch.testing.assert_close(got, want, **TOL[torch.float32])

def test_authors_vanilla_rope_blocks_are_rope():
    "VanillaRoPEAttention._init_exponent_matrix: block j = theta_base**j · J, axis = j // (nb / A): interleaved RoPE"
    D, A, base = 16, 2, 0.5
    n = D // A // 2
    angle_base = base ** torch.arange(n, dtype=torch.float64)
    J = torch.tensor([[0., -1.], [1., 0.]], dtype=torch.float64)
    expo = torch.zeros(1, A, D // 2, 2, 2, dtype=torch.float64)
    for a in range(A): expo[0, a, a * n:(a + 1) * n] = angle_base[:, None, None] * J
    pos = _authors_positions(3)
    q = torch.randn(1, len(pos), 1, D, dtype=torch.float64)
    want = (_authors_dense_rotation(expo, pos[None]) @ q[..., None])[..., 0]
    f = torch.cat([angle_base] * A)
    got = rotate(q, angles(pos.T, f, torch.float64, axis_map=torch.arange(D // 2) // n), layout="interleaved")
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)

# ---- commuting and the RoPE equation --------------------------------------------------------------------------------
@pytest.mark.parametrize("b", [4, 6, 8])
def test_commuting_and_rope_equation(b):
    g = torch.Generator().manual_seed(b)
    ap, ld, li = (get(n, dim=4 * b, block_size=b, init_std=0.5, n_heads=2) for n in ("comrope_ap", "comrope_ld", "liere"))
    assert commutator_norm(ap) == 0 and commutator_norm(ld) < 1e-13 and commutator_norm(li) > 1e-2
    for _ in range(3):
        x, y = torch.randn(2, generator=g) * 5, torch.randn(2, generator=g) * 5
        assert rope_residual(ap, x, y) < 1e-12 and rope_residual(ld, x, y) < 1e-12 and rope_residual(li, x, y) > 1e-4

def test_liere_with_2x2_blocks_commutes():
    li = get("liere", dim=8, block_size=2)
    assert commutator_norm(li) < 1e-14 and rope_residual(li, torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5])) < 1e-12

def test_schur_form_reconstructs():
    S = _skew(torch.randn(5, 6, 6, dtype=torch.float64))
    V, w = schur_form(S)
    torch.testing.assert_close(V.mT @ V, torch.eye(6, dtype=torch.float64).expand(5, 6, 6), atol=1e-12, rtol=0)
    Z = V.mT @ S @ V  # block diagonal with blocks ω_k J
    for k in range(3): torch.testing.assert_close(Z[:, 2 * k + 1, 2 * k], w[:, k], atol=1e-12, rtol=0)
    assert (w >= -1e-12).all()

# ---- torch paths, kernel, gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["comrope_ap", "comrope_ld", "liere"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_torch_odd_shapes(name, dtype):
    torch.manual_seed(0)
    enc = get(name, dim=18, block_size=6, n_heads=3)  # 3 blocks of 6: padded tiles in both tile dims
    q, k = torch.randn(2, 9, 3, 18).to(dtype), torch.randn(2, 9, 3, 18).to(dtype)
    q0 = q.clone()
    kp = grid_points(9) + torch.tensor([[2], [-1]])
    with torch.no_grad():
        ref = enc.transform(q, k, k_positions=kp, backend="torch")
        out = enc.transform(q, k, k_positions=kp, backend="triton")
    for a, b in zip(out, ref): torch.testing.assert_close(a, b, **TOL[dtype])
    assert torch.equal(q, q0)

def test_spectral_gradient_matches_matrix_exp():
    for name in ("comrope_ap", "comrope_ld"):
        e = get(name, dim=12, block_size=4, n_heads=2).double()
        q = torch.randn(1, 7, 2, 12, dtype=torch.float64)
        p = grid_points(7).double()
        grads = []
        for f in (lambda: block_rotary_torch(e, q, p[:, None], torch.float64), lambda: apply_blocks(q, block_rotations(e, p, torch.float64))):
            e.zero_grad(); f().cos().sum().backward()
            grads.append([t.grad.clone() for t in e.parameters()])
        for a, b in zip(*grads): torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)

def test_training_step_changes_parameters():
    e = get("comrope_ld", dim=8)
    w0 = e.weight.detach().clone()
    opt = torch.optim.SGD(e.parameters(), lr=0.1)
    q = torch.randn(1, 9, 2, 8)
    e.transform(q, q)[0].pow(3).sum().backward(); opt.step()
    assert not torch.equal(e.weight, w0)

# ---- attention, far positions --------------------------------------------------------------------------------------
def _rotate_f64(enc, x, pos): # (B, T, H, D) float64: R(x) per token by float64 matrix_exp, independent of the encoding's routes
    L = torch.einsum("at,hanij->thnij", pos.double(), enc.generators(torch.float64).detach())  # (T, Hg, nb, b, b)
    R = torch.linalg.matrix_exp(L.contiguous())
    B, T, H, D = x.shape
    return (R @ x.double().reshape(B, T, H, enc.n_blocks, enc.block_size)[..., None])[..., 0].reshape(B, T, H, D)

@pytest.mark.parametrize("name", ["comrope_ap", "comrope_ld", "liere"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n_axes,n_heads", [(1, 4), (2, 1)])
def test_attend_matches_float64_reference(name, backend, n_axes, n_heads):
    "attend() on q, k, v split from one projection (strided, as the lab's model makes them; liere's matrix_exp used to fail on them)"
    torch.manual_seed(0)
    B, T, H, D = 2, 11, 4, 16
    enc = get(name, dim=D, n_axes=n_axes, n_heads=n_heads)
    q, k, v = torch.randn(B, T, 3, H, D).unbind(2)  # (B, T, H, D) each, not contiguous
    with torch.no_grad(): out = attend(q, k, v, enc, causal=True, backend=backend)
    p = enc.default_positions(T)
    logits = torch.einsum("bqhd,bkhd->bhqk", _rotate_f64(enc, q, p), _rotate_f64(enc, k, p)) / math.sqrt(D)
    logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])

def test_attend_trains_liere_like_the_lab():
    "The lab's path: torch backend with gradients through strided q, k from one projection, n_axes=1, one generator set per head"
    enc, lin = get("liere", dim=8, n_axes=1, n_heads=2), torch.nn.Linear(16, 48)
    q, k, v = lin(torch.randn(2, 7, 16)).view(2, 7, 3, 2, 8).unbind(2)
    attend(q, k, v, enc, backend="torch").square().sum().backward()
    assert enc.weight.grad is not None and bool(enc.weight.grad.isfinite().all()) and enc.weight.grad.abs().sum() > 0

def _rotate_eig(enc, x, pos): # (B, T, H, D) float64 by eigen-decomposition with angles reduced mod 2π: no matrix_exp
    L = torch.einsum("at,hanij->thnij", pos.double(), enc.generators(torch.float64).detach())  # (T, Hg, nb, b, b)
    scale = L.flatten(-2).norm(dim=-1).clamp_min(1e-300)[..., None, None]
    lam, U = torch.linalg.eigh(1j * (L / scale))  # L = −i·U diag(λ) Uᴴ·scale, so exp(L) = U diag(e^{−iλ·scale}) Uᴴ
    phi = -lam * scale[..., 0]
    phi = phi - 2 * math.pi * torch.round(phi / (2 * math.pi))
    R = ((U * torch.exp(1j * phi)[..., None, :]) @ U.mH).real
    B, T, H, D = x.shape
    return (R @ x.double().reshape(B, T, H, enc.n_blocks, enc.block_size)[..., None])[..., 0].reshape(B, T, H, D)

@pytest.mark.parametrize("name", ["comrope_ap", "comrope_ld", "liere"])
@pytest.mark.parametrize("P", [2 ** 20, 2 ** 24, 2 ** 31 - 1])
def test_far_positions_match_float64(name, P):
    "Float32 q rotated at |x| up to 2^31 - 1 (float32 angles or float32 matrix_exp were off by 1 to NaN there) against an eigen route in float64"
    torch.manual_seed(0)
    enc = get(name, dim=16, init_std=0.1)  # max_position() > 2^31 for these generators
    assert enc.max_position() > 2 ** 31
    pos = torch.tensor([[P, -P, 3, P - 1, 0], [P, 5, -P, 1, -2]])
    q = torch.randn(1, 5, 2, 16)
    ref = _rotate_eig(enc, q, pos)
    for backend in ("torch", "triton"):
        with torch.no_grad(): got = enc.transform(q, None, pos, backend=backend)[0]
        torch.testing.assert_close(got.double(), ref, **TOL[torch.float32])  # float32 output; float64 angles err by ~|angle|·2^-52 < 1e-6
    with torch.no_grad(): got64 = enc.transform(q.double(), None, pos, backend="torch")[0]
    torch.testing.assert_close(got64, ref, atol=1e-5, rtol=0)  # float64 in: limited by |angle|·2^-52 ≈ 1e-6 for either route, not by rounding

def test_far_positions_rope_reduction():
    "AP with 2×2 blocks at RoFormer's frequencies is RoPE: at 2^31 - 1 it matches core.rotate with float64 angles reduced mod 2π"
    from posexplorer.core import wrap_angles
    f = inv_freq(16)
    enc, p = ap_from_frequencies(f), torch.tensor([0, 2 ** 20, 2 ** 24, 2 ** 31 - 1, -(2 ** 31 - 1)])
    q = torch.randn(1, 5, 3, 16)
    want = rotate(q.double(), wrap_angles(angles(p, f, torch.float64)), layout="interleaved")
    for backend in ("torch", "triton"):
        with torch.no_grad(): got = enc.transform(q, None, p, backend=backend)[0]
        torch.testing.assert_close(got.double(), want, **TOL[torch.float32])

@pytest.mark.parametrize("name", ["comrope_ap", "comrope_ld", "liere"])
def test_past_max_position_is_refused(name):
    enc = get(name, dim=16)
    lim = enc.max_position()
    assert 1e8 < lim < 1e11  # angles up to 2^32 rad at generators of norm ~1
    far = torch.tensor([[0.0, 1.01 * lim]] * enc.n_axes, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`k_positions` reach .* largest \|position\|") as e:
        enc.transform(torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16), far * 0, k_positions=far)
    assert f"{lim:.6g}" in str(e.value)
    with pytest.raises(ValueError, match="`positions` reach"): block_rotations(enc, far)
    near = far * (0.99 / 1.01)
    with torch.no_grad(): assert enc.transform(torch.randn(1, 2, 1, 16), None, near)[0].isfinite().all()

# ---- bad input ------------------------------------------------------------------------------------------------------
enc8 = get("comrope_ap", dim=8)
q8 = torch.randn(1, 4, 2, 8)
BAD = [
    (lambda: get("comrope_ap", dim=10), ValueError, "`dim`"),
    (lambda: get("liere", dim=12, block_size=3), ValueError, "`block_size`"),
    (lambda: get("comrope_ld", block_size=1), ValueError, "`block_size`"),
    (lambda: get("comrope_ap", n_heads=0), ValueError, "`n_heads`"),
    (lambda: get("comrope_ap", init_std=-1.0), ValueError, "`init_std`"),
    (lambda: get("comrope_ap", dim=8.0), TypeError, "`dim`"),
    (lambda: enc8.transform(q8, None, torch.arange(4)), ValueError, "`positions`"),
    (lambda: enc8.transform(q8, None, torch.zeros(2, 5)), ValueError, "`positions`"),
    (lambda: enc8.transform(q8, None, torch.full((2, 4), float("nan"))), ValueError, "`positions`"),
    (lambda: enc8.transform(q8, q8, k_positions=torch.zeros(3, 4)), ValueError, "`k_positions`"),
    (lambda: enc8.transform(torch.randn(1, 4, 2, 12), None), ValueError, "`q`"),
    (lambda: enc8.transform(torch.ones(1, 4, 2, 8, dtype=torch.int64), None), TypeError, "`q`"),
    (lambda: enc8.transform(q8, torch.randn(4, 2, 8)), ValueError, "`k`"),
    (lambda: get("comrope_ap", dim=8, n_heads=3).transform(q8, None), ValueError, "`n_heads`"),
    (lambda: enc8.transform(q8, None, backend="cuda"), ValueError, "`backend`"),
    (lambda: enc8.transform(q8.clone().requires_grad_(), None, backend="triton"), ValueError, "forward-only"),
    (lambda: spectral(get("liere", dim=8)), ValueError, "non-commuting"),
    (lambda: launch_block_rotary(q8), ValueError, "either `R`"),
    (lambda: launch_block_rotary(q8, R=torch.zeros(1, 4, 1, 3, 4, 4)), ValueError, "do not tile"),
]

@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input(i):
    f, exc, words = BAD[i]
    with pytest.raises(exc, match=words.replace("(", r"\(")): f()

def test_bench_comrope_routes_run_on_cpu():
    "Every route of `bench_comrope` (the authors' dense one included) runs on one device and agrees; issue 16 saw it mix CPU and CUDA"
    from posexplorer.tools import bench_comrope as bc
    if not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"): pytest.skip("Triton routes need CUDA or TRITON_INTERPRET=1")
    rows = bc.bench_comrope(shapes=((1, 5, 2, 8),), block_size=4, names=("comrope_ld", "liere"), dtype=torch.float32, budget=0.002, device="cpu")
    routes = {(r["name"], r["route"]) for r in rows}
    assert ("comrope_ld", "authors dense") in routes and ("liere", "authors dense") in routes and ("comrope_ld", "triton spectral") in routes
    assert all(r["ms"] > 0 and r["max_err"] < 1e-4 for r in rows), rows

def test_authors_dense_keeps_the_device(monkeypatch):
    "The dense D×D route builds its matrix where the rotations live (a meta-device run would fail on a CPU-made buffer)"
    from posexplorer.tools import bench_comrope as bc
    enc, x = get("comrope_ld", dim=8, block_size=4), torch.randn(1, 3, 2, 8)
    made = []
    real = torch.zeros
    monkeypatch.setattr(bc.torch, "zeros", lambda *a, **kw: made.append(kw.get("device")) or real(*a, **kw))
    bc._authors_dense(enc, x, enc.default_positions(3)[:, None].float())
    assert made and all(d is not None for d in made)
