"The Triton rotary kernel against the torch reference `core.rotate` (Triton's interpreter on a CPU)."
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, inv_freq, rotate
from posexplorer.ops import rotary
from posexplorer.ops.rotary import apply_rotary, apply_rotary_positions

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DEVICE_GUARD = True  # conftest: on a CPU, a tensor built off DEV and mixed with DEV tensors fails the test

def _qk(B=2, T=217, Hq=3, Hk=1, D=24, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, Hq, D, generator=g), torch.randn(B, T, Hk, D, generator=g)
    return q.to(DEV, dtype), k.to(DEV, dtype)

def _close(a, b): torch.testing.assert_close(a.float(), b.float(), **TOL[a.dtype])

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rot_dim", [24, 16])  # full and partial rotary (D=24)
@pytest.mark.parametrize("per_batch", [False, True])
def test_forward_matches_reference(dtype, layout, rot_dim, per_batch):
    q, k = _qk(dtype=dtype)
    pos = torch.arange(217, device=DEV) if not per_batch else torch.stack([torch.arange(217), torch.arange(217) + 50]).to(DEV)
    a = angles(pos, inv_freq(rot_dim).to(DEV))
    q0, k0 = q.clone(), k.clone()
    qo, ko = apply_rotary(q, k, a, layout=layout, backend="triton")
    _close(qo, rotate(q, a, layout)); _close(ko, rotate(k, a, layout))
    assert torch.equal(q, q0) and torch.equal(k, k0)  # out of place leaves the inputs untouched
    assert torch.equal(qo[..., rot_dim:], q[..., rot_dim:])  # pass-through features are copied exactly

@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace(dtype):
    q, k = _qk(dtype=dtype, T=33)
    a = angles(torch.arange(33, device=DEV), inv_freq(16).to(DEV))
    ref_q, ref_k = rotate(q, a), rotate(k, a)
    qo, ko = apply_rotary(q, k, a, backend="triton", inplace=True)
    assert qo is q and ko is k
    _close(q, ref_q); _close(k, ref_k)

@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("scale", [1.0, 1.25])
def test_gradients_match_reference(layout, scale):
    q, k = _qk(T=41, D=20)
    a = angles(torch.arange(41, device=DEV), inv_freq(16).to(DEV))
    grads = []
    for backend in ("triton", "torch"):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        qo, ko = apply_rotary(qq, kk, a, layout=layout, backend=backend, scale=scale)
        (qo.pow(2).sum() + (ko * torch.arange(20, device=DEV)).sum()).backward()
        grads.append((qq.grad, kk.grad))
    _close(grads[0][0], grads[1][0]); _close(grads[0][1], grads[1][1])

def test_gradient_is_inverse_rotation():
    "d<g, R x>/dx = R^T g: the backward is the forward with the angles negated"
    q, k = _qk(T=19, D=16)
    a = angles(torch.arange(19, device=DEV), inv_freq(16).to(DEV))
    g = torch.randn_like(q)
    qq = q.clone().requires_grad_()
    apply_rotary(qq, None, a, backend="triton")[0].backward(g)
    _close(qq.grad, rotate(g, -a))

def test_inplace_autograd():
    q, k = _qk(T=17, D=16)
    a = angles(torch.arange(17, device=DEV), inv_freq(16).to(DEV))
    leaf = q.clone().requires_grad_()
    x = leaf * 1.0  # in place needs a non-leaf
    qo, _ = apply_rotary(x, None, a, backend="triton", inplace=True)
    qo.sum().backward()
    _close(leaf.grad, rotate(torch.ones_like(q), -a))

def test_positions_mode_with_sections():
    "Multi-axis positions with an M-RoPE-style section map; the kernel computes the angles itself"
    q, k = _qk(B=2, T=29, Hq=4, Hk=2, D=32)
    pos = torch.stack([torch.arange(29), torch.arange(29) // 3, torch.arange(29) % 3]).to(DEV)  # (3, T)
    axis = torch.tensor([0] * 4 + [1] * 6 + [2] * 6, device=DEV)
    f = inv_freq(32).to(DEV)
    a = angles(pos, f, axis_map=axis)
    for layout in ("half", "interleaved"):
        qo, ko = apply_rotary_positions(q, k, pos, f, axis, layout=layout, backend="triton")
        _close(qo, rotate(q, a, layout)); _close(ko, rotate(k, a, layout))
    bpos = torch.stack([pos, pos + 7], 1)  # (3, B, T): per-batch positions
    qo, _ = apply_rotary_positions(q, k, bpos, f, axis, backend="triton")
    _close(qo, rotate(q, angles(bpos, f, axis_map=axis)))

def test_positions_mode_1d_and_float():
    q, k = _qk(T=23, D=16)
    pos = torch.arange(23, device=DEV) * 0.37  # interpolated (fractional) positions
    f = inv_freq(16).to(DEV)
    qo, ko = apply_rotary_positions(q, k, pos, f, backend="triton")
    _close(qo, rotate(q, angles(pos, f)))

def test_float64_angles():
    "float64 angles keep large positions exact; the kernel takes cos/sin in float64 too"
    q, k = _qk(T=9, D=16)
    pos = torch.arange(9, device=DEV) + 1_000_000
    a64 = angles(pos, inv_freq(16, dtype=torch.float64).to(DEV), torch.float64)
    qo, _ = apply_rotary(q, k, a64, backend="triton")
    _close(qo, rotate(q, a64))

def test_strided_views_and_no_k():
    "q and k as views into one fused qkv buffer, and k=None"
    qkv = torch.randn(2, 31, 3, 4, 16, device=DEV)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    a = angles(torch.arange(31, device=DEV), inv_freq(16).to(DEV))
    qo, ko = apply_rotary(q, k, a, backend="triton")
    _close(qo, rotate(q, a)); _close(ko, rotate(k, a))
    qo, ko = apply_rotary(q, None, a, backend="triton")
    assert ko is None
    _close(qo, rotate(q, a))

def test_scale_multiplies_rotated_features_only():
    q, k = _qk(T=11, D=24)
    a = angles(torch.arange(11, device=DEV), inv_freq(16).to(DEV))
    qo, _ = apply_rotary(q, k, a, backend="triton", scale=2.0)
    _close(qo[..., :16], 2.0 * rotate(q, a)[..., :16]); assert torch.equal(qo[..., 16:], q[..., 16:])

def test_torch_and_triton_agree_through_encoding():
    from posexplorer.core import get
    rope = get("rope", dim=16)
    q, k = _qk(T=13, D=16)
    t = rope.apply(q, k, backend="triton"); r = rope.apply(q, k, backend="torch")
    _close(t[0], r[0]); _close(t[1], r[1])

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_headline_shape(dtype):
    "The benchmark's headline shape on a GPU: B=4, T=4096, Hq=32, Hkv=8, D=128"
    q, k = _qk(B=4, T=4096, Hq=32, Hk=8, D=128, dtype=dtype)
    a = angles(torch.arange(4096, device=DEV), inv_freq(128).to(DEV))
    qo, ko = apply_rotary(q, k, a, backend="triton")
    _close(qo, rotate(q, a)); _close(ko, rotate(k, a))

def test_learned_angles_get_gradients_on_the_torch_path():
    "Angles that require grad (learned frequencies) train through the torch path; the kernel refuses them clearly"
    q, k = _qk(T=7, D=8)
    f = inv_freq(8).to(DEV).requires_grad_()
    a = angles(torch.arange(7, device=DEV), f)
    qo, ko = apply_rotary(q, k, a, backend="torch")
    (g,) = torch.autograd.grad((qo * torch.randn_like(qo)).sum(), f)
    assert g.shape == (4,) and torch.isfinite(g).all() and g.abs().sum() > 0
    f64 = f.detach().double().requires_grad_()  # the gradient agrees with finite differences
    fn = lambda ff: apply_rotary(q.double(), None, angles(torch.arange(7, device=DEV), ff, torch.float64), backend="torch")[0].pow(3).sum()
    assert torch.autograd.gradcheck(fn, (f64,))
    with pytest.raises(ValueError, match="backend='torch'"): apply_rotary(q, k, a, backend="triton")

@pytest.mark.parametrize("tile", rotary._TILES, ids=lambda t: "x".join(map(str, t)))
def test_every_autotune_tile(tile, monkeypatch):
    "Each tile autotune may pick on a GPU gives the reference's result (run here one at a time, in the interpreter)"
    import triton
    BT, BH, w, st = tile
    monkeypatch.setattr(rotary._rotary_kernel, "configs", [triton.Config(dict(BLOCK_T=BT, BLOCK_H=BH), num_warps=w, num_stages=st)])
    q, k = _qk(B=2, T=37, Hq=5, Hk=3, D=24)  # odd T and heads: partial token and head blocks; partial rotary
    a = angles(torch.arange(37, device=DEV), inv_freq(16).to(DEV))
    for layout in ("half", "interleaved"):
        qo, ko = apply_rotary(q, k, a, layout=layout, backend="triton")
        _close(qo, rotate(q, a, layout)); _close(ko, rotate(k, a, layout))
    qi, ki = q.clone(), k.clone()
    apply_rotary(qi, ki, a, backend="triton", inplace=True)
    _close(qi, rotate(q, a)); _close(ki, rotate(k, a))

def test_many_head_blocks_and_three_axes():
    "More heads than one block holds (q and k each spread over programs), with M-RoPE positions per batch row"
    q, k = _qk(B=2, T=70, Hq=9, Hk=6, D=32)
    pos = torch.stack([torch.arange(70), torch.arange(70) // 5, torch.arange(70) % 5]).to(DEV)  # (3, T)
    bpos, axis = torch.stack([pos, pos * 2 + 3], 1), torch.tensor([0] * 4 + [1] * 6 + [2] * 6, device=DEV)  # (3, B, T), (R,)
    f = inv_freq(32).to(DEV)
    qo, ko = apply_rotary_positions(q, k, bpos.float(), f, axis, backend="triton")
    a = angles(bpos, f, axis_map=axis)
    _close(qo, rotate(q, a)); _close(ko, rotate(k, a))

def test_bad_section_map_on_the_device_gives_nan():
    "The launcher reads no device value, so an out-of-range axis built on a GPU is not refused: its pairs come out NaN, never another axis's rotation"
    q, _ = _qk(B=1, T=9, Hq=2, Hk=1, D=16)
    pos, f = torch.stack([torch.arange(9), torch.arange(9) + 1]).to(DEV), inv_freq(16).to(DEV)
    axis = torch.tensor([0, 1, 0, 1, 2, 0, 1, 0], device=DEV)  # pair 4 reads an axis that does not exist
    qo = torch.empty_like(q)
    rotary._launch(q, None, qo, None, rotary._Source(positions=pos, inv_freq=f, axis_map=axis), "half", False, 1.0)  # past the CPU-only value check
    bad = torch.zeros(16, dtype=torch.bool, device=DEV); bad[[4, 12]] = True  # pair 4: features 4 and 4 + R
    assert qo[..., bad].isnan().all() and not qo[..., ~bad].isnan().any()
    with pytest.raises(ValueError, match="axis_map"): apply_rotary_positions(q.cpu(), None, pos.cpu(), f.cpu(), axis.cpu(), backend="torch")  # on the CPU: refused

@pytest.mark.cuda
def test_launchers_never_sync():
    "No launcher reads a device value or copies to the host: every call runs under set_sync_debug_mode('error')"
    q, k = _qk(B=2, T=300, Hq=8, Hk=2, D=128, dtype=torch.bfloat16)
    f, pos = inv_freq(128).to(DEV), torch.arange(300, device=DEV)
    a, pos3 = angles(pos, f), torch.stack([pos, pos // 7, pos % 7]).float()
    axis = torch.tensor([0] * 16 + [1] * 24 + [2] * 24, device=DEV)
    g, leaf = torch.randn_like(q), q.float().requires_grad_()
    calls = [lambda: apply_rotary(q, k, a), lambda: apply_rotary(q.clone(), k.clone(), a, inplace=True),
             lambda: apply_rotary(q, None, a, layout="interleaved"), lambda: apply_rotary_positions(q, k, pos, f),
             lambda: apply_rotary_positions(q, k, pos3, f, axis), lambda: apply_rotary(leaf, None, a)[0].backward(g.float())]
    for call in calls: call()  # compile and autotune first: tuning times configs, which syncs, once per shape bucket
    torch.cuda.synchronize()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls: call()
    finally: torch.cuda.set_sync_debug_mode(mode)
    _close(apply_rotary_positions(q, k, pos3, f, axis)[0], rotate(q, angles(pos3, f, axis_map=axis)))

@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard runs where there is no GPU")
def test_device_guard_catches_a_tensor_left_on_the_host():
    "conftest's HostMix fails the GPU-only bug on a CPU: angles built without device= next to q built on DEV"
    q, k = _qk(T=5, D=8)
    with pytest.raises(AssertionError, match="without `device=`"): apply_rotary(q, k, angles(torch.arange(5), inv_freq(8)))
    apply_rotary(q, k, angles(torch.arange(5, device=DEV), inv_freq(8).to(DEV)))  # the same call, built right
