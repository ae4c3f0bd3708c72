"""The Triton attention kernel (flash-attention forward with in-kernel positional bias and fused rotary) against the
torch reference, under Triton's interpreter on a CPU: no bias, ALiBi slopes, an offset-indexed bias table (T5-like),
URPE's multiplicative Toeplitz term, rotary encodings turned inside the kernel (RoPE, YaRN, M-RoPE; both layouts);
causal and not; ragged lengths; decoding; grouped-query heads. On a GPU every input is made on the device under test."""
import pytest
import torch
from conftest import TOL
from posexplorer.ops.attention import attend, attend_rotary, fusable_rotary
from posexplorer.ops.rotary import apply_rotary
from posexplorer.core import BiasEncoding, get

DEV = "cuda" if torch.cuda.is_available() else "cpu"

class _Slopes(BiasEncoding):
    "ALiBi-like test double: bias = -slope_h |k - q|; its slopes live on the device under test"
    def __init__(self, n_heads): self.n_heads, self.s = n_heads, 2.0 ** (-8 * torch.arange(1, n_heads + 1, device=DEV) / n_heads)
    def bias(self, qp, kp): return -self.s[:, None, None] * (kp[None, :] - qp[:, None]).abs().float()
    def linear_slopes(self): return self.s

class _Table(BiasEncoding):
    "A random bias (and optional multiplicative scale) per head and clipped offset k - q, tables on the device under test"
    def __init__(self, n_heads, mult=False, clip=50):
        g = torch.Generator().manual_seed(0)
        self.n_heads, self.clip, self.mult = n_heads, clip, mult
        self.b = torch.randn(n_heads, 2 * clip + 1, generator=g).to(DEV)
        self.c = (torch.rand(n_heads, 2 * clip + 1, generator=g) + 0.5).to(DEV)
    def _at(self, t, off): return t[:, off.clamp(-self.clip, self.clip) + self.clip]
    def bias(self, qp, kp): return self._at(self.b, kp[None, :] - qp[:, None])
    def relative_bias(self, off): return self._at(self.b, off)
    def scale(self, qp, kp): return self._at(self.c, kp[None, :] - qp[:, None]) if self.mult else None
    def relative_scale(self, off): return self._at(self.c, off) if self.mult else None

def _on(enc, device=DEV):
    "A registry encoding with its tensors (inv_freq, slopes, tables) moved to `device`"
    if enc is None: return None
    if isinstance(enc, torch.nn.Module): return enc.to(device)
    for name, t in list(vars(enc).items()):
        if isinstance(t, torch.Tensor): setattr(enc, name, t.to(device))
    return enc

ENCODINGS = {"none": lambda H, D: None, "slopes": lambda H, D: _Slopes(H), "table": lambda H, D: _Table(H),
             "urpe-like": lambda H, D: _Table(H, mult=True),
             "rope": lambda H, D: _on(get("rope", dim=D, partial_rotary_factor=0.5))}  # (n_heads, head dim) -> encoding; RoPE over half of each head

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

# Fused rotary: the kernel turns q and k as it loads them; it must equal rotating first (the torch rotary), then attending.
def _table(name, T, D):
    "`(angles (T, R), attention scale)` of a registered rotary encoding at positions 0..T-1 (M-RoPE: a text-video-text sequence)"
    from posexplorer.multimodal import mrope_position_ids
    enc = get(name, dim=D)
    pos = mrope_position_ids([("text", 3), ("video", (2, 3, 4)), ("text", T - 27)])[0] if name == "mrope" else torch.arange(T)
    return enc.angles(pos).to(DEV), enc.attention_scale

def _rotate_then_attend(q, k, v, a, layout, causal, scale):
    qr = apply_rotary(q, None, a[..., k.shape[1] - q.shape[1]:, :], layout, backend="torch", scale=scale)[0]
    return attend(qr, apply_rotary(k, None, a, layout, backend="torch", scale=scale)[0], v, None, causal=causal, backend="torch")

@pytest.mark.parametrize("name", ["rope", "yarn", "mrope"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("causal", [True, False])
def test_fused_rotary_matches_rotate_then_attend(name, layout, causal):
    q, k, v = _qkv(2, 37, 37, 4, 2, 32, torch.float32)  # odd length, grouped-query heads
    a, scale = _table(name, 37, 32)
    o = attend_rotary(q, k, v, a, layout, causal=causal, backend="triton", scale=scale)
    torch.testing.assert_close(o, _rotate_then_attend(q, k, v, a, layout, causal, scale), **TOL[torch.float32])

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_fused_rotary_partial_ragged_and_decoding(layout):
    "Partial rotary (R < D/2: a third dot over the pass-through features), a per-batch table, queries at the last Tq positions"
    q, k, v = _qkv(2, 5, 37, 4, 1, 48, torch.float32)
    a = torch.randn(2, 37, 12, generator=torch.Generator().manual_seed(1)).to(DEV) * 3  # (B, Tk, R), 2R = 24 < D = 48
    for qq in (q, q[:, -1:]):
        o = attend_rotary(qq, k, v, a, layout, backend="triton")
        torch.testing.assert_close(o, _rotate_then_attend(qq, k, v, a, layout, True, 1.0), **TOL[torch.float32])

@pytest.mark.parametrize("name", ["rope", "yarn", "mrope"])
def test_attend_fuses_registered_rotary(name):
    "attend finds that RoPE, YaRN (with its mscale) and M-RoPE are angle tables and fuses them; the result is the unfused one's"
    enc = _on(get(name, dim=32))
    assert fusable_rotary(enc) is enc
    q, k, v = _qkv(1, 37, 37, 4, 2, 32, torch.float32)
    o = attend(q, k, v, enc, backend="triton")
    torch.testing.assert_close(o, attend(q, k, v, enc, backend="triton", fuse_rotary=False), **TOL[torch.float32])
    torch.testing.assert_close(o, attend(q, k, v, enc, backend="torch"), **TOL[torch.float32])

def test_only_pure_rotations_fuse():
    "xPos scales q and k besides turning them, and a bias encoding with no rotation has nothing to fuse"
    assert fusable_rotary(get("xpos", dim=32)) is None and fusable_rotary(get("alibi", n_heads=4)) is None and fusable_rotary(None) is None

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_rotary_half_precision(dtype):
    "Rotated tiles are rounded to the input dtype before the dots, as a stored rotated q and k are"
    q, k, v = _qkv(1, 45, 45, 2, 1, 32, dtype)
    a, scale = _table("yarn", 45, 32)
    o = attend_rotary(q, k, v, a, "interleaved", backend="triton", scale=scale)
    assert o.dtype == dtype
    torch.testing.assert_close(o.float(), _rotate_then_attend(q, k, v, a, "interleaved", True, scale).float(), **TOL[dtype])

@pytest.mark.parametrize("bad,match", [
    (dict(angles=torch.zeros(36, 8)), "covers 36 tokens"), (dict(angles=torch.zeros(3, 37, 8)), "batch 3"),
    (dict(angles=torch.zeros(37, 9)), "1 to D/2 = 8"), (dict(angles=torch.zeros(37)), r"\(Tk, R\)"),
    (dict(layout="neox"), "layout"), (dict(scale=0.0), "`scale` must be a positive"),
    (dict(angles=torch.zeros(37, 8, device="meta")), "is on meta")])
def test_attend_rotary_refuses_bad_input(bad, match):
    q, k, v = _qkv(1, 37, 37, 2, 2, 16, torch.float32)
    kw = dict(angles=torch.zeros(37, 8, device=DEV), layout="half", scale=1.0) | bad
    with pytest.raises((ValueError, TypeError), match=match): attend_rotary(q, k, v, kw.pop("angles"), backend="triton", **kw)

def test_attend_rotary_gradients_through_the_torch_path():
    "The kernel is forward only: with gradients, backend='auto' rotates then attends in torch, whose gradients are the reference's"
    q, k, v = (t.requires_grad_() for t in _qkv(1, 9, 9, 2, 1, 16, torch.float32))
    a = torch.randn(9, 8, device=DEV)
    attend_rotary(q, k, v, a, backend="auto").square().sum().backward()
    g = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v): t.grad = None
    _rotate_then_attend(q, k, v, a, "half", True, 1.0).square().sum().backward()
    for a_, b_ in zip(g, (q.grad, k.grad, v.grad)): torch.testing.assert_close(a_, b_, **TOL[torch.float32])
    with pytest.raises(ValueError, match="forward only"): attend_rotary(q, k, v, a, backend="triton")

# Causal block skipping and autotuning
@pytest.mark.skipif(DEV == "cuda", reason="relies on the interpreter's one 32x32 tile config")
def test_causal_programs_never_load_tiles_above_the_diagonal():
    "NaN values in keys 32..63: the query block 0..31 would turn NaN if it loaded them (0 · NaN), even masked"
    from posexplorer.ops.attention import _configs
    assert [c.kwargs for c in _configs()] == [{"BLOCK_M": 32, "BLOCK_N": 32}]
    q, k, v = _qkv(1, 64, 64, 2, 2, 16, torch.float32)
    v[:, 32:] = float("nan")
    for o in (attend(q, k, v, backend="triton"), attend_rotary(q, k, v, torch.randn(64, 8), backend="triton")):
        assert torch.isfinite(o[:, :32]).all() and torch.isnan(o[:, 32:]).all()
    torch.testing.assert_close(attend(q, k, v, backend="triton")[:, :32], attend(q[:, :32], k[:, :32], v[:, :32], backend="torch"), **TOL[torch.float32])

def test_autotuned_on_lengths_dims_and_modes():
    from posexplorer.ops.attention import _attention_kernel, _configs
    assert isinstance(_attention_kernel, __import__("triton").runtime.Autotuner)
    assert {"TQ_BUCKET", "TK_BUCKET", "HEAD_DIM", "CAUSAL", "BIAS", "ROTARY"} <= set(_attention_kernel.keys)
    assert len(_configs()) == (1 if DEV == "cpu" else 12)

@pytest.mark.cuda
def test_cuda_launch_never_syncs_with_the_host():
    "After the autotuner's first run (which times configs and so syncs), launches queue work and return: no .item(), no copies back"
    q, k, v = _qkv(2, 300, 300, 8, 2, 64, torch.bfloat16)
    a = torch.randn(300, 32, device=DEV)
    alibi, t5 = _on(get("alibi", n_heads=8)), _on(get("t5", n_heads=8))  # built and moved before the check: that copy syncs
    calls = [lambda: attend(q, k, v, None, backend="triton"), lambda: attend(q, k, v, alibi, backend="triton"),
             lambda: attend(q, k, v, t5, backend="triton"), lambda: attend_rotary(q, k, v, a, backend="triton"),
             lambda: attend_rotary(q, k, v, a, "interleaved", causal=False, backend="triton")]
    for f in calls: f()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for f in calls: f()
    finally: torch.cuda.set_sync_debug_mode("default")

@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_cuda_fused_rotary_long(layout):
    q, k, v = _qkv(2, 1000, 1000, 8, 2, 128, torch.bfloat16)
    a, scale = _table("yarn", 1000, 128)
    torch.testing.assert_close(attend_rotary(q, k, v, a, layout, backend="triton", scale=scale).float(),
                               _rotate_then_attend(q, k, v, a, layout, True, scale).float(), **TOL[torch.bfloat16])

def test_autotune_prunes_tall_query_blocks():
    "Decoding (Tq = 1) keeps only 16-row query blocks; a long prefill keeps them all; nothing left: the first config"
    import triton
    from posexplorer.ops.attention import _prune
    cfg = [triton.Config({"BLOCK_M": m, "BLOCK_N": 64}) for m in (128, 64, 16)]
    assert [c.kwargs["BLOCK_M"] for c in _prune(cfg, {"TQ_BUCKET": 1})] == [16]
    assert len(_prune(cfg, {"TQ_BUCKET": 4096})) == 3 and _prune(cfg[:2], {"TQ_BUCKET": 1}) == cfg[:1]

def test_custom_positions_that_do_not_fit_are_refused_fused_or_not():
    q, k, v = _qkv(1, 5, 9, 2, 2, 16, torch.float32)
    enc = _on(get("rope", dim=16))
    for fuse in (True, False):
        with pytest.raises(ValueError, match="positions"): attend(q, k, v, enc, backend="triton", positions=torch.arange(9, device=DEV), fuse_rotary=fuse)
