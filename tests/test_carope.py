"CARoPE (arXiv:2507.23083): the encoding's claims, the fused Triton scan against the torch reference, bad input"
import math
import numpy as np
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.learned.carope import CARoPE, carope_rotate, carope_phases, phase_errors, selective_copy_batch, softplus_inverse
from posexplorer.tools.bench_carope import bench_carope

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton tests run on the GPU there; interpreted on the CPU here

def _enc(D=16, H=2, seed=0, std=0.5):
    "A CARoPE with a random W (the trained case)"
    torch.manual_seed(seed)
    enc = CARoPE(dim=D, n_heads=H)
    with torch.no_grad(): enc.proj.weight.normal_(0, std)
    return enc

def _logits(enc, q, k, x): # (B, H, T, T)
    q1, k1 = enc.transform(q, k, x=x, backend="torch")
    return torch.einsum("bmhd,bnhd->bhmn", q1, k1)

# ---- the paper's claims ---------------------------------------------------------------------------------
@pytest.mark.parametrize("P", [1, 5, 33])
def test_prepending_tokens_keeps_scores(P):
    "q_m·k_n depends on φ(m) − φ(n), the sum over the tokens between: a prefix adds the same constant to both"
    enc = _enc()
    B, T, H, D = 2, 19, 2, 16
    q, k = torch.randn(B, T, H, D, dtype=torch.float64), torch.randn(B, T, H, D, dtype=torch.float64)
    x = torch.randn(B, T, enc.context_dim, dtype=torch.float64)
    qp, kp, xp = (torch.cat([torch.randn(B, P, *t.shape[2:], dtype=t.dtype), t], 1) for t in (q, k, x))
    with torch.no_grad():
        torch.testing.assert_close(_logits(enc, qp, kp, xp)[..., P:, P:], _logits(enc, q, k, x), atol=1e-9, rtol=1e-9)
        assert not torch.allclose(enc.transform(qp, kp, x=xp)[0][:, P:], enc.transform(q, k, x=x)[0])

def test_not_relative_in_position():
    "Same offset, different tokens between: a different score (why the card does not claim relative=True)"
    enc = _enc()
    q, k, x = torch.randn(1, 12, 2, 16), torch.randn(1, 12, 2, 16), torch.randn(1, 12, enc.context_dim)
    x2 = x.clone(); x2[:, 6] += 1.0
    with torch.no_grad(): l0, l2 = _logits(enc, q, k, x), _logits(enc, q, k, x2)
    assert not torch.allclose(l0[..., 10, 3], l2[..., 10, 3]) and torch.allclose(l0[..., 5, 3], l2[..., 5, 3])

@pytest.mark.parametrize("D,base", [(8, 10000.0), (16, 500.0), (64, 10000.0)])
def test_initialisation_is_rope(D, base):
    "W = 0: f = base**(-2/d) for every token, so CARoPE is posexplorer's RoPE at positions 1..T (same logits as 0..T-1)"
    enc, rope = CARoPE(dim=D, base=base), get("rope", dim=D, base=base)
    q, k, x = torch.randn(2, 13, 2, D), torch.randn(2, 13, 2, D), torch.randn(2, 13, enc.context_dim)
    with torch.no_grad(): q1, k1 = enc.transform(q, k, x=x)
    rq, rk = rope.apply(q, k, torch.arange(1, 14), backend="torch")
    torch.testing.assert_close(q1, rq, **TOL[torch.float32]); torch.testing.assert_close(k1, rk, **TOL[torch.float32])
    r0q, r0k = rope.apply(q, k, torch.arange(13), backend="torch")
    torch.testing.assert_close(torch.einsum("bmhd,bnhd->bhmn", q1, k1), torch.einsum("bmhd,bnhd->bhmn", r0q, r0k), atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize("c", [0.3, 0.75, 0.99])
def test_constant_speed_is_rope_hf(c):
    "Outside check: constant f = c is RoPE with inv_freq c**i, i.e. base c**(-d/2): Hugging Face Llama's rotate_half rotation"
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    B, T, H, D = 2, 11, 2, 12
    q, k = torch.randn(B, T, H, D, dtype=torch.float64), torch.randn(B, T, H, D, dtype=torch.float64)
    hf_inv = 1.0 / ((c ** (-D / 2)) ** (torch.arange(0, D, 2, dtype=torch.float64) / D))  # HF's formula with that base
    fr = torch.arange(1, T + 1, dtype=torch.float64)[:, None] * hf_inv[None]
    emb = torch.cat([fr, fr], -1)  # (T, D)
    hq, hk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), emb.cos()[None], emb.sin()[None])  # (B, H, T, D)
    oq, ok = carope_rotate(q, k, torch.full((B, T, H), c, dtype=torch.float64), backend="torch")
    torch.testing.assert_close(oq, hq.transpose(1, 2), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ok, hk.transpose(1, 2), atol=1e-10, rtol=1e-10)

def test_phases_and_bounds():
    enc = _enc(D=8)
    x = torch.randn(3, 9, enc.context_dim, dtype=torch.float64)
    f, ph = enc.frequencies(x), enc.phases(x)
    assert ((f > 0) & (f < 1)).all() and ph.shape == (3, 9, 2, 4) and ph.dtype == torch.float64
    torch.testing.assert_close(ph[..., 0], torch.arange(1, 10, dtype=torch.float64)[None, :, None].expand(3, 9, 2))  # pair 0 counts tokens
    torch.testing.assert_close(ph[:, 4, :, 2], (f[:, :5] ** 2).sum(1))  # φ_i(m) = Σ_{t≤m} f^i
    assert math.isclose(torch.nn.functional.softplus(torch.tensor(softplus_inverse(3.7), dtype=torch.float64)).item(), 3.7, rel_tol=1e-12)

def test_gradients_reach_w():
    "The torch path is differentiable in W (float64 gradcheck), and the inputs are not modified"
    enc = _enc(D=6, std=0.3).double()
    q, k, x = torch.randn(1, 5, 2, 6, dtype=torch.float64), torch.randn(1, 5, 2, 6, dtype=torch.float64), torch.randn(1, 5, enc.context_dim, dtype=torch.float64)
    q0 = q.clone()
    w = enc.proj.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: (torch.func.functional_call(enc, {"proj.weight": w}, (q, k), {"x": x, "backend": "torch"})[0] * q0).sum(), (w,))
    assert torch.equal(q, q0)

# ---- kernel ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("T,block_t", [(1, 4), (17, 4), (40, 8), (40, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_torch(layout, T, block_t, dtype):
    "The fused scan (carry across T-blocks) and rotation against the reference; odd head counts, inputs untouched"
    torch.manual_seed(T)
    q, k = torch.randn(2, T, 3, 10, device=DEV).to(dtype), torch.randn(2, T, 3, 10, device=DEV).to(dtype)
    f = torch.rand(2, T, 3, device=DEV) * 0.95 + 0.02
    q0, k0 = q.clone(), k.clone()
    ref = carope_rotate(q, k, f, layout, backend="torch")
    out = carope_rotate(q, k, f, layout, backend="triton", block_t=block_t)
    for o, r in zip(out, ref): assert o.dtype == dtype; torch.testing.assert_close(o, r, **TOL[dtype])
    assert torch.equal(q, q0) and torch.equal(k, k0)

def test_triton_keys_absent_strided_and_wide():
    "k=None; a non-contiguous q (a slice of a fused qkv); R > 64 pairs (two pair blocks)"
    torch.manual_seed(3)
    qkv = torch.randn(1, 9, 3, 2, 8, device=DEV)
    q = qkv[:, :, 0]  # (1, 9, 2, 8) strided
    f = torch.rand(1, 9, 2, device=DEV) * 0.9 + 0.05
    out, none = carope_rotate(q, None, f, backend="triton", block_t=4)
    assert none is None
    torch.testing.assert_close(out, carope_rotate(q, None, f, backend="torch")[0], **TOL[torch.float32])
    q, k = torch.randn(1, 6, 1, 132, device=DEV), torch.randn(1, 6, 1, 132, device=DEV)
    f = torch.rand(1, 6, 1, device=DEV) * 0.5 + 0.5
    for o, r in zip(carope_rotate(q, k, f, backend="triton", block_t=4), carope_rotate(q, k, f, backend="torch")):
        torch.testing.assert_close(o, r, **TOL[torch.float32])

def test_encoding_triton_backend():
    enc = _enc(D=8).to(DEV)
    q, k, x = torch.randn(2, 21, 2, 8, device=DEV), torch.randn(2, 21, 2, 8, device=DEV), torch.randn(2, 21, enc.context_dim, device=DEV)
    with torch.no_grad():
        for o, r in zip(enc.transform(q, k, x=x, backend="triton"), enc.transform(q, k, x=x, backend="torch")):
            torch.testing.assert_close(o, r, **TOL[torch.float32])

def test_precision_claims():
    "At 2**16 tokens the Kahan-carry blocked scan stays at the float32 floor; the sequential float32 sum does not"
    e = phase_errors(T=2**16)
    worst = {k: v.max() for k, v in e.items()}
    assert worst["blocked + Kahan carry"] <= 2.01 * worst["float32 rounding (floor)"]
    assert worst["sequential"] > 5 * worst["blocked + Kahan carry"]

def test_bench_on_cpu():
    rows = bench_carope(shapes=((1, 64, 2, 16),), budget=0.01)
    assert [r["contender"] for r in rows] == ["torch"] and rows[0]["max_err"] == 0 and rows[0]["ms"] > 0

@pytest.mark.cuda
def test_bench_on_gpu():
    "Compiled kernel on a GPU against the reference, bf16 storage: one bf16 rounding apart at most"
    rows = bench_carope(shapes=((2, 4096, 8, 64),), budget=0.05)
    tri = next(r for r in rows if r["contender"] == "triton")
    assert tri["max_err"] < 0.05 and tri["ms"] > 0

def test_selective_copy_batch():
    tokens, mask = selective_copy_batch(5, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == mask.shape == (5, 33) and (tokens[:, 24] == 9).all() and mask[:, 25:].all() and not mask[:, :25].any()
    for row in tokens: assert torch.equal(row[:24][row[:24] > 0], row[25:])

# ---- bad input ------------------------------------------------------------------------------------------
_q, _k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
_enc8 = CARoPE(dim=8)
_x = torch.randn(1, 4, _enc8.context_dim)
BAD = [
    (lambda: _enc8.transform(_q, _k), ValueError, "`x`"),
    (lambda: _enc8.transform(_q[:, :, :1], _k[:, :, :1], x=_x), ValueError, "heads"),
    (lambda: _enc8.transform(_q[..., :6], _k[..., :6], x=_x), ValueError, "dim"),
    (lambda: _enc8.transform(_q, _k[:, :3], x=_x), ValueError, "`k`"),
    (lambda: _enc8.transform(_q, _k, x=_x[..., :5]), ValueError, "`x`"),
    (lambda: _enc8.transform(_q[0], _k[0], x=_x), ValueError, "`q`"),
    (lambda: _enc8.transform(_q, _k, torch.arange(5), x=_x), ValueError, "`positions`"),
    (lambda: _enc8.transform(_q, _k, k_positions=torch.arange(3), x=_x), ValueError, "`k_positions`"),
    (lambda: _enc8.transform(_q.long(), _k, x=_x), TypeError, "`q`"),
    (lambda: _enc8.transform(_q, _k, x=_x, backend="cuda"), ValueError, "`backend`"),
    (lambda: carope_rotate(_q, _k, torch.rand(1, 4, 2), layout="rows"), ValueError, "`layout`"),
    (lambda: carope_rotate(_q, _k, torch.rand(1, 4, 3), backend="triton"), ValueError, "`freqs`"),
    (lambda: carope_rotate(_q, _k, torch.rand(1, 4, 2), backend="triton", block_t=6), ValueError, "`block_t`"),
    (lambda: carope_rotate(torch.randn(1, 4, 2, 8, requires_grad=True), _k, torch.rand(1, 4, 2), backend="triton"), ValueError, "forward-only"),
    (lambda: CARoPE(dim=7), ValueError, "`dim`"),
    (lambda: CARoPE(dim=8, n_heads=0), ValueError, "`n_heads`"),
    (lambda: CARoPE(dim=8, base=-1.0), ValueError, "`base`"),
    (lambda: CARoPE(dim=8, d_model=True), TypeError, "`d_model`"),
    (lambda: CARoPE(dim=8, layout="rows"), ValueError, "`layout`"),
]

@pytest.mark.parametrize("fn,exc,word", BAD)
def test_bad_input(fn, exc, word):
    with pytest.raises(exc, match=word): fn()
