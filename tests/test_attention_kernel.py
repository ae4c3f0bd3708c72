"""The Triton attention kernel (flash-attention forward with in-kernel positional bias) against the torch reference,
under Triton's interpreter on a CPU: no bias, ALiBi slopes, an offset-indexed bias table (T5-like), URPE's
multiplicative Toeplitz term, and rotary encodings; causal and not; ragged lengths; decoding; grouped-query heads."""
import pytest
import torch
from conftest import TOL
from posexplorer.ops.attention import attend
from posexplorer.core import BiasEncoding, get

DEV = "cuda" if torch.cuda.is_available() else "cpu"

class _Slopes(BiasEncoding):
    "ALiBi-like test double: bias = -slope_h |k - q|"
    def __init__(self, n_heads): self.n_heads, self.s = n_heads, 2.0 ** (-8 * torch.arange(1, n_heads + 1) / n_heads)
    def bias(self, qp, kp): return -self.s[:, None, None] * (kp[None, :] - qp[:, None]).abs().float()
    def linear_slopes(self): return self.s

class _Table(BiasEncoding):
    "A random bias (and optional multiplicative scale) per head and clipped offset k - q"
    def __init__(self, n_heads, mult=False, clip=50):
        g = torch.Generator().manual_seed(0)
        self.n_heads, self.clip, self.mult = n_heads, clip, mult
        self.b, self.c = torch.randn(n_heads, 2 * clip + 1, generator=g), torch.rand(n_heads, 2 * clip + 1, generator=g) + 0.5
    def _at(self, t, off): return t[:, off.clamp(-self.clip, self.clip) + self.clip].to(off.device)
    def bias(self, qp, kp): return self._at(self.b, kp[None, :] - qp[:, None])
    def relative_bias(self, off): return self._at(self.b, off)
    def scale(self, qp, kp): return self._at(self.c, kp[None, :] - qp[:, None]) if self.mult else None
    def relative_scale(self, off): return self._at(self.c, off) if self.mult else None

ENCODINGS = {"none": lambda H, D: None, "slopes": lambda H, D: _Slopes(H), "table": lambda H, D: _Table(H),
             "urpe-like": lambda H, D: _Table(H, mult=True),
             "rope": lambda H, D: get("rope", dim=D, partial_rotary_factor=0.5)}  # (n_heads, head dim) -> encoding; RoPE over half of each head

def _qkv(B, Tq, Tk, Hq, Hk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g).to(DEV, dtype) for T, H in ((Tq, Hq), (Tk, Hk), (Tk, Hk))]

@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq,Tk", [(37, 37), (5, 70), (1, 33)])  # ragged prefill, chunked prefill, decoding
@pytest.mark.parametrize("D", [64, 128])
def test_kernel_matches_reference(name, causal, Tq, Tk, D):
    q, k, v = _qkv(2, Tq, Tk, 4, 2, D, torch.float32)
    enc = ENCODINGS[name](4, D)
    o = attend(q, k, v, enc, causal=causal, backend="triton")
    torch.testing.assert_close(o, attend(q, k, v, enc, causal=causal, backend="torch"), **TOL[torch.float32])

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["slopes", "urpe-like"])
def test_half_precision(dtype, name):
    q, k, v = _qkv(1, 45, 45, 2, 1, 64, dtype)
    enc = ENCODINGS[name](2, 64)
    o = attend(q, k, v, enc, backend="triton")
    assert o.dtype == dtype
    torch.testing.assert_close(o.float(), attend(q, k, v, enc, backend="torch").float(), **TOL[dtype])

def test_inputs_untouched_and_fully_masked_rows_are_finite():
    q, k, v = _qkv(1, 3, 3, 2, 2, 64, torch.float32)
    before = [t.clone() for t in (q, k, v)]
    o = attend(q, k, v, _Slopes(2), backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v))) and torch.isfinite(o).all()

@pytest.mark.parametrize("call,why", [
    (lambda q, k, v: attend(q.requires_grad_(), k, v, backend="triton"), "forward only"),
    (lambda q, k, v: attend(torch.cat([q, q], 1), k[:, :3], v[:, :3], backend="triton"), "Tq <= Tk"),
    (lambda q, k, v: attend(q, k, v, _Slopes(2), backend="triton", positions=torch.arange(q.shape[1])), "custom positions"),
])
def test_explicit_triton_says_why_it_cannot(call, why):
    q, k, v = _qkv(1, 8, 8, 2, 2, 64, torch.float32)
    with pytest.raises(ValueError, match=why): call(q, k, v)

def test_auto_falls_back_to_the_reference():
    "backend='auto' never fails where the reference works: on a CPU, and for what the kernel cannot run"
    q, k, v = _qkv(1, 8, 8, 2, 2, 64, torch.float32)
    q.requires_grad_()
    out = attend(q, k, v, _Slopes(2))
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()

@pytest.mark.cuda
@pytest.mark.parametrize("name", ["none", "slopes", "table", "urpe-like"])
def test_cuda_long(name):
    q, k, v = _qkv(2, 1000, 1000, 8, 2, 128, torch.bfloat16)
    enc = ENCODINGS[name](8, 128)
    torch.testing.assert_close(attend(q, k, v, enc, backend="triton").float(), attend(q, k, v, enc, backend="torch").float(), **TOL[torch.bfloat16])
