"The Triton rotary kernel against the torch reference `core.rotate` (Triton's interpreter on a CPU)."
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, inv_freq, rotate
from posexplorer.ops.rotary import apply_rotary, apply_rotary_positions

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = "cuda" if torch.cuda.is_available() else "cpu"

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
