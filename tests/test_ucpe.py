"""UCPE (`posexplorer.encodings.learned.ucpe`): against the logic of chengzhag/UCPE (re-written here, not imported: `world_to_ray_mats` in
src/camera_control.py, and `_prepare_apply_fns` / `_apply_tiled_projmat` / `_rope_apply_coeffs` in thirdparty/prope/torch.py,
GTA branch, per-ray matrices, features [D/2 | D/4 | D/4], (B, H, T, D) layout) and against torch's
scaled_dot_product_attention; invariance of logits and outputs to one global rigid motion; dtypes, batches, backends,
the Triton kernel against the torch reference (interpreted on a CPU), inputs untouched, gradients, bad input."""
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.learned.ucpe import (UCPE, world_to_ray, pinhole_directions, ray_positions, camera_pose, two_cameras, random_rigid,
                              ray_frames, invert_se3, _launch_ucpe)
from posexplorer.figures.ucpe import ray_frame_figure, ray_logit_map
from posexplorer.ops.attention import attention_logits, attend

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _cams(G=None):
    c2w = torch.stack([camera_pose(), camera_pose(math.radians(-30), (1.0, 0.0, 0.0)), camera_pose(0.4, (-0.5, 0.2, 1.0))])
    return c2w if G is None else G @ c2w

# ---- outside: the repo's ray frames ------------------------------------------------------------------------
def _repo_world_to_ray(c2w, d_cam):
    "world_to_ray_mats, re-written with numpy: z = R d, x = normalize(R[:, 1] × z), y = z × x; world->local [Rᵀ | −Rᵀ c]"
    R, c = c2w[:3, :3], c2w[:3, 3]
    out = []
    for d in d_cam:
        z = R @ d; z = z / np.linalg.norm(z)
        x = np.cross(R[:, 1], z); x = x / np.linalg.norm(x)
        y = np.cross(z, x); y = y / np.linalg.norm(y)
        L = np.stack([x, y, z], 1)  # local -> world, columns
        M = np.eye(4); M[:3, :3] = L.T; M[:3, 3] = -L.T @ c
        out.append(M)
    return np.stack(out)

@pytest.mark.parametrize("cam", range(3))
def test_ray_frames_match_repo_recipe(cam):
    c2w, d = _cams()[cam], pinhole_directions(3, 5, 75.0)
    torch.testing.assert_close(world_to_ray(c2w, d), torch.as_tensor(_repo_world_to_ray(c2w.numpy(), d.numpy())), **TOL[torch.float64])

# ---- outside: the repo's PRoPE/GTA maps and SDPA --------------------------------------------------------------
def _repo_maps(x, P, cols, rows, base, kind):
    "x (B, H, T, D); P (T, 4, 4) world->ray; the repo's block-diagonal maps: 'q' (Pᵀ), 'kv' (P⁻¹), 'o' (P, inverse RoPE)"
    D = x.shape[-1]
    M = {"q": P.transpose(-1, -2), "kv": invert_se3(P), "o": P}[kind]
    a = torch.einsum("tij,bhtpj->bhtpi", M, x[..., : D // 2].reshape(*x.shape[:3], D // 8, 4)).reshape(*x.shape[:3], D // 2)
    n = D // 8
    freqs = base ** (-torch.arange(n, dtype=torch.float64) / n)
    outs = [a]
    for pos, sl in ((cols, slice(D // 2, 3 * D // 4)), (rows, slice(3 * D // 4, D))):
        ang = pos.double()[:, None] * freqs  # (T, n)
        cos, sin = ang.cos(), ang.sin()
        xi, yi = x[..., sl][..., :n], x[..., sl][..., n:]
        outs.append(torch.cat([cos * xi + sin * yi, -sin * xi + cos * yi] if kind != "o" else [cos * xi - sin * yi, sin * xi + cos * yi], -1))
    return torch.cat(outs, -1)

@pytest.mark.parametrize("D,counts", [(8, [5, 4]), (32, [9, 7, 3]), (64, [4, 4, 4])])
def test_maps_match_repo_logic_and_sdpa(D, counts):
    enc = get("ucpe", dim=D)
    pos = ray_positions(_cams()[: len(counts)], counts).double()
    T = pos.shape[-1]
    q, k, v = (torch.randn(2, T, 3, D, dtype=torch.float64) for _ in range(3))  # (B, T, H, D)
    P, patch = ray_frames(pos)
    def theirs(x, kind): return _repo_maps(x.transpose(1, 2), P[0], patch[0, 0], patch[1, 0], 100.0, kind).transpose(1, 2)
    q1, k1 = enc.transform(q, k, pos)
    torch.testing.assert_close(q1, theirs(q, "q"), **TOL[torch.float64])
    torch.testing.assert_close(k1, theirs(k, "kv"), **TOL[torch.float64])
    torch.testing.assert_close(enc.transform_v(v, pos), theirs(v, "kv"), **TOL[torch.float64])
    torch.testing.assert_close(enc.transform_out(v, pos), theirs(v, "o"), **TOL[torch.float64])
    # the whole attention, the repo's way: o = M_q · SDPA(M_qᵀ q, M_k⁻¹ k, M_k⁻¹ v)
    o = F.scaled_dot_product_attention(theirs(q, "q").transpose(1, 2), theirs(k, "kv").transpose(1, 2), theirs(v, "kv").transpose(1, 2))
    ref = theirs(o.transpose(1, 2), "o")
    torch.testing.assert_close(attend(q, k, v, enc, causal=False, backend="torch", positions=pos), ref, atol=1e-6, rtol=1e-6)  # logits in float32

# ---- the stated invariance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-9)])
def test_invariant_to_global_rigid_motion(seed, dtype, tol):
    "Logits and attend's output unchanged when every camera moves by the same rigid motion G"
    enc, counts = get("ucpe", dim=24), [6, 5, 4]
    G = random_rigid(seed)
    p0, p1 = (ray_positions(c, counts, dtype=dtype) for c in (_cams(), _cams(G)))  # frames built in float64, rounded once
    assert (p0 - p1).abs().max() > 0.1
    q, k, v = (torch.randn(2, 15, 2, 24, dtype=dtype) for _ in range(3))
    qa, ka = enc.transform(q, k, p0); qb, kb = enc.transform(q, k, p1)
    torch.testing.assert_close(torch.einsum("bqhd,bkhd->bhqk", qb, kb), torch.einsum("bqhd,bkhd->bhqk", qa, ka), atol=tol, rtol=tol)
    L0 = attention_logits(q, k, enc, q_positions=p0, k_positions=p0, causal=False, backend="torch")
    L1 = attention_logits(q, k, enc, q_positions=p1, k_positions=p1, causal=False, backend="torch")
    torch.testing.assert_close(L1, L0, atol=2e-4, rtol=2e-4)  # attention_logits works in float32
    o0, o1 = (attend(q, k, v, enc, causal=True, backend="torch", positions=p) for p in (p0, p1))
    torch.testing.assert_close(o1, o0, atol=2e-4, rtol=2e-4)

def test_moving_one_camera_changes_logits():
    enc, counts = get("ucpe", dim=16), [6, 6]
    c2w = _cams()[:2]
    p0, p1 = ray_positions(c2w, counts), ray_positions(torch.stack([c2w[0], random_rigid(5) @ c2w[1]]), counts)
    q, k = torch.randn(1, 12, 1, 16), torch.randn(1, 12, 1, 16)
    L0, L1 = (attention_logits(q, k, enc, q_positions=p, k_positions=p, causal=False) for p in (p0, p1))
    assert (L1[..., :6, 6:] - L0[..., :6, 6:]).abs().max() > 1e-2  # across cameras: changed
    torch.testing.assert_close(L1[..., :6, :6], L0[..., :6, :6], atol=1e-5, rtol=1e-5)  # within camera 0: not

def test_output_map_undoes_value_map():
    enc = get("ucpe", dim=16)
    pos = two_cameras(11)
    v = torch.randn(2, 11, 2, 16)
    torch.testing.assert_close(enc.transform_out(enc.transform_v(v, pos), pos), v, atol=1e-5, rtol=1e-5)

# ---- dtypes, batches, backends, gradients --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtype_kept_and_inputs_untouched(dtype):
    enc = get("ucpe", dim=16)
    q, k = torch.randn(2, 9, 2, 16).to(dtype), torch.randn(2, 9, 1, 16).to(dtype)
    q0, k0 = q.clone(), k.clone()
    q1, k1 = enc.transform(q, k)
    assert q1.dtype == dtype and k1.dtype == dtype and q1.shape == q.shape and k1.shape == k.shape
    assert torch.equal(q, q0) and torch.equal(k, k0)
    ref = enc.transform(q.float(), k.float())[0]
    torch.testing.assert_close(q1.float(), ref, **{**TOL[dtype if dtype != torch.float64 else torch.float32], "atol": TOL[dtype if dtype != torch.float64 else torch.float32]["atol"] * 8})

def test_batched_positions_and_separate_key_positions():
    enc = get("ucpe", dim=8)
    pa, pb = two_cameras(7), ray_positions(_cams(random_rigid(2))[:2], [4, 3])
    q, k = torch.randn(2, 7, 1, 8), torch.randn(2, 7, 1, 8)
    qb, kb = enc.transform(q, k, torch.stack([pa, pb], 1))  # (14, B=2, T)
    torch.testing.assert_close(qb[0], enc.transform(q[:1], None, pa)[0][0]); torch.testing.assert_close(qb[1], enc.transform(q[1:], None, pb)[0][0])
    qs, ks = enc.transform(q, k, pa, k_positions=pb)
    torch.testing.assert_close(qs, enc.transform(q, None, pa)[0]); torch.testing.assert_close(ks, enc.transform_v(k, pb))

# ---- the Triton kernel (interpreted on a CPU) --------------------------------------------------------------
DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.mark.parametrize("D,T,Hq,Hk", [(8, 1, 1, 1), (24, 7, 2, 2), (40, 9, 3, 1), (16, 13, 4, 2)])
def test_kernel_matches_torch_all_maps(D, T, Hq, Hk):
    enc = get("ucpe", dim=D)
    pos = enc.default_positions(T, DEV)
    q, k, o = torch.randn(2, T, Hq, D, device=DEV), torch.randn(2, T, Hk, D, device=DEV), torch.randn(2, T, Hq, D, device=DEV)
    q0 = q.clone()
    for a, b in zip(enc.transform(q, k, pos, backend="triton"), enc.transform(q, k, pos, backend="torch")):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    torch.testing.assert_close(enc.transform_out(o, pos, backend="triton"), enc.transform_out(o, pos, backend="torch"), **TOL[torch.float32])
    assert torch.equal(q, q0)

def test_kernel_batched_positions_strides_and_half_precision():
    enc = get("ucpe", dim=16)
    p = torch.stack([ray_positions(_cams()[:2], [5, 4]), ray_positions(_cams(random_rigid(1))[1:], [6, 3])], 1).to(DEV)  # (14, 2, 9)
    big = torch.randn(2, 9, 3, 32, device=DEV)
    q = big[..., 8:24]  # a strided view: heads 32 apart, last dim contiguous
    torch.testing.assert_close(enc.transform(q, None, p, backend="triton")[0], enc.transform(q, None, p, backend="torch")[0], **TOL[torch.float32])
    for dt in (torch.bfloat16, torch.float16):
        a, b = enc.transform(q.to(dt), None, p, backend="triton")[0], enc.transform(q.to(dt), None, p, backend="torch")[0]
        assert a.dtype == dt
        torch.testing.assert_close(a.float(), b.float(), **TOL[dt])
    q64 = q.double()  # the kernel computes in float32: backend="triton" refuses float64, "auto" takes the torch path
    with pytest.raises(ValueError, match="float64"): enc.transform(q64, None, p, backend="triton")
    assert torch.equal(enc.transform(q64, None, p, backend="auto")[0], enc.transform(q64, None, p, backend="torch")[0])

def test_kernel_gradient_and_attend():
    enc, T = get("ucpe", dim=16), 11
    pos = enc.default_positions(T, DEV)
    w = torch.randn(1, T, 2, 16, device=DEV)
    grads = []
    for be in ("torch", "triton"):
        x = torch.randn(1, T, 2, 16, device=DEV, generator=torch.Generator(DEV).manual_seed(2)).requires_grad_()
        ((enc.transform_v(x, pos, backend=be) + enc.transform_out(x, pos, backend=be)) * w).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], **TOL[torch.float32])
    q, k, v = (torch.randn(2, T, 2, 16, device=DEV) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, enc, backend="triton"), attend(q, k, v, enc, backend="torch"), **TOL[torch.float32])

def test_bench_runs():
    from posexplorer.tools.bench_ucpe import bench_ucpe
    rows = bench_ucpe(T=32, H=2, D=16, budget=0.02)
    assert rows[0]["backend"] == "torch" and rows[0]["ms"] > 0

def test_gradients_finite():
    enc = get("ucpe", dim=16)
    q, k, v = (torch.randn(1, 9, 2, 16, requires_grad=True) for _ in range(3))
    attend(q, k, v, enc, backend="torch").square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))

def test_figures():
    assert len(ray_frame_figure(two_cameras(8)).data) == 5
    fig = ray_logit_map(dim=8)
    assert len(fig.data) == 3 and np.allclose(np.asarray(fig.data[0].z), np.asarray(fig.data[2].z), atol=1e-4)

# ---- bad input ---------------------------------------------------------------------------------------------
_q = torch.randn(1, 4, 1, 8)
_p = two_cameras(4)
_notrot = _p.clone(); _notrot[0] *= 2
BAD = [
    (lambda: get("ucpe", dim=12), ValueError, "`dim`"),
    (lambda: get("ucpe", dim=7), ValueError, "`dim`"),
    (lambda: get("ucpe", base=-1.0), ValueError, "`base`"),
    (lambda: get("ucpe", dim=8).transform(torch.randn(1, 4, 1, 16), None), ValueError, "`q`"),
    (lambda: get("ucpe", dim=8).transform(_q.long(), None), TypeError, "`q`"),
    (lambda: get("ucpe", dim=8).transform(_q, None, _p[:12]), ValueError, "`positions`"),
    (lambda: get("ucpe", dim=8).transform(_q, None, two_cameras(5)), ValueError, "`positions`"),
    (lambda: get("ucpe", dim=8).transform(_q, None, _notrot), ValueError, "`positions`"),
    (lambda: get("ucpe", dim=8).transform(_q, None, _p * float("nan")), ValueError, "`positions`"),
    (lambda: get("ucpe", dim=8).transform(_q, None, backend="cuda"), ValueError, "`backend`"),
    (lambda: get("ucpe", dim=8).transform_v(_q, _p[:, :3]), ValueError, "`positions`"),
    (lambda: world_to_ray(torch.eye(3), torch.ones(3)), ValueError, "`c2w`"),
    (lambda: _launch_ucpe(torch.randn(1, 4, 1, 12), torch.eye(4).expand(1, 4, 4, 4), torch.zeros(2, 1, 4), torch.ones(1), True), ValueError, "multiple of 8"),
    (lambda: _launch_ucpe(torch.randn(1, 4, 1, 8), torch.eye(4).expand(1, 3, 4, 4), torch.zeros(2, 1, 4), torch.ones(1), True), ValueError, "`M`"),
    (lambda: _launch_ucpe(torch.randn(1, 4, 1, 8), torch.eye(4).expand(1, 4, 4, 4), torch.zeros(3, 1, 4), torch.ones(1), True), ValueError, "`patch`"),
    (lambda: world_to_ray(torch.eye(4), torch.ones(2)), ValueError, "`directions`"),
    (lambda: pinhole_directions(2, 2, fov=180.0), ValueError, "`fov`"),
    (lambda: ray_positions(_cams(), [3, 3]), ValueError, "`counts`"),
    (lambda: two_cameras(0), ValueError, "`T`"),
]

@pytest.mark.parametrize("call,exc,msg", BAD)
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg): call()

# ---- training: a learned ray matching survives a global rigid motion ---------------------------------------
def test_training_ray_match_is_rigid_invariant():
    "UCPE on one learned q, k: the loss falls, and after one rigid motion of every rig the logits (so the answers) are unchanged"
    from posexplorer.tools.train_ucpe import ray_rigs, rig_tokens, train_ray_match, ray_match_logits
    rigs = ray_rigs(24, seed=5)
    pos, rays, tgt = rig_tokens(rigs, n=9)
    pos2, rays2, tgt2 = rig_tokens(rigs, n=9, motion=random_rigid(7))
    assert torch.equal(tgt, tgt2)
    params, losses = train_ray_match("ucpe", pos, rays, tgt, n=9, steps=80, progress=False)
    assert losses[-1] < 0.5 * losses[0]
    L, L2 = ray_match_logits("ucpe", params, pos, rays, 9), ray_match_logits("ucpe", params, pos2, rays2, 9)
    torch.testing.assert_close(L2, L, atol=1e-8, rtol=0)
    assert (L.argmax(-1) == tgt).double().mean() > 0.6
    pa, _ = train_ray_match("absolute", pos, rays, tgt, n=9, steps=80, progress=False)  # the contrast sees the world frame
    assert (ray_match_logits("absolute", pa, pos2, rays2, 9) - ray_match_logits("absolute", pa, pos, rays, 9)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="kind"): train_ray_match("rope", pos, rays, tgt, n=9)
