"""xPos (`posexplorer.encodings.classics.xpos`): against torchscale's `XPOS` (written again from its source) and lucidrains'
rotary-embedding-torch (in its centring convention), the references' interleaved pairing as the default, an independent
float64 closed form, the shared kernel's backends and dtypes, gradients, and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, get, inv_freq, rotate
from posexplorer.encodings.classics.xpos import XPos, xpos_zeta, xpos_max_position, _scale_pairs
from posexplorer.ops.rotary import apply_rotary
from posexplorer.ops.attention import attend, attention_logits

BACKENDS = ["torch", "triton"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs on CUDA tensors, or interpreted on CPU tensors (conftest)

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _centre(enc, c, layout="interleaved"):
    "ζ_i^(−c/B) per feature: lucidrains' queries are ours times this, its keys ours divided by it"
    s = enc.scales(torch.tensor([-c]))[0]
    return s.repeat_interleave(2) if layout == "interleaved" else torch.cat([s, s])

# ---- lucidrains' rotary-embedding-torch ----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,D,B", [(33, 32, 64.0), (8, 16, 512.0), (101, 64, 16.0)])
def test_matches_lucidrains_full_sequence(backend, T, D, B):
    "rotate_queries_and_keys: interleaved pairs, (B, H, T, D) tensors, scale centred at ⌊T/2⌋"
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    q, k = torch.randn(2, 3, T, D), torch.randn(2, 3, T, D)
    lq, lk = RotaryEmbedding(D, use_xpos=True, xpos_scale_base=B).rotate_queries_and_keys(q, k)
    enc = get("xpos", dim=D, scale_base=B)
    oq, ok = (t.cpu() for t in enc.apply(q.transpose(1, 2).to(DEV), k.transpose(1, 2).to(DEV), layout="interleaved", backend=backend))
    c = _centre(enc, T // 2)
    def close(a, b): torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6 * b.abs().max().item())  # both in float32; theirs rounds angles and ζ^p in float32
    close(oq.transpose(1, 2) * c, lq); close(ok.transpose(1, 2) / c, lk)
    theirs = lq @ lk.transpose(-1, -2)
    torch.testing.assert_close(torch.einsum("bqhd,bkhd->bhqk", oq, ok), theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())  # centring cancels

def test_lucidrains_cached_keys_centres_q_and_k_differently():
    """rotate_queries_with_cached_keys centres the queries' scale on Tq//2 and the keys' on Tk//2: exactly ours times those
    constants, so its logits differ from the full sequence's by ζ_i^((Tk//2 − Tq//2)/B) per pair; ours equal them."""
    RotaryEmbedding = pytest.importorskip("rotary_embedding_torch").RotaryEmbedding
    Tk, Tq, D, B = 20, 3, 16, 8.0
    q, k = torch.randn(1, 2, Tk, D), torch.randn(1, 2, Tk, D)
    cq, ck = RotaryEmbedding(D, use_xpos=True, xpos_scale_base=B).rotate_queries_with_cached_keys(q[:, :, -Tq:], k)
    enc = get("xpos", dim=D, scale_base=B)
    oq, ok = enc.apply(q[:, :, -Tq:].transpose(1, 2), k.transpose(1, 2), torch.arange(Tk - Tq, Tk), layout="interleaved", k_positions=torch.arange(Tk))
    torch.testing.assert_close(oq.transpose(1, 2) * _centre(enc, Tq // 2), cq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ok.transpose(1, 2) / _centre(enc, Tk // 2), ck, rtol=1e-5, atol=1e-5)
    fq, fk = enc.apply(q.transpose(1, 2), k.transpose(1, 2), layout="interleaved")
    full = torch.einsum("bqhd,bkhd->bhqk", fq, fk)[:, :, -Tq:]
    torch.testing.assert_close(torch.einsum("bqhd,bkhd->bhqk", oq, ok), full, rtol=1e-5, atol=1e-4)  # ours: a cache changes nothing
    assert not torch.allclose(cq @ ck.transpose(-1, -2), full, rtol=1e-2, atol=1e-2)  # theirs: it does

# ---- torchscale's XPOS ----------------------------------------------------------------------------------
def torchscale_xpos(x, offset=0, downscale=False, scale_base=512):
    """microsoft/torchscale, torchscale/component/xpos_relative_position.py, `XPOS.forward` (with `fixed_pos_embedding`,
    `rotate_every_two`, `duplicate_interleave`), written again in float64: x is (N, T, D); the scale's positions are centred
    on -(T + offset) // 2, the rotation's run 0..T+offset-1 and the last T rows are kept; `downscale` (the keys) inverts the scale"""
    T, D = x.shape[1], x.shape[2]
    zeta = (torch.arange(0, D, 2, dtype=torch.float64) + 0.4 * D) / (1.4 * D)
    min_pos = -(T + offset) // 2
    scale = zeta ** (torch.arange(min_pos, T + offset + min_pos, dtype=torch.float64) / scale_base)[:, None]  # (T + offset, D/2)
    ang = torch.arange(T + offset, dtype=torch.float64)[:, None] / 10000 ** (torch.arange(D // 2, dtype=torch.float64) / (D // 2))
    sin, cos, scale = ang.sin()[-T:], ang.cos()[-T:], scale[-T:]
    if downscale: scale = 1 / scale
    sin, cos = ((t * scale).repeat_interleave(2, -1) for t in (sin, cos))  # duplicate_interleave
    every_two = torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
    return x * cos + every_two * sin

@pytest.mark.parametrize("T,D,B", [(33, 32, 64.0), (16, 64, 512.0), (7, 8, 4.0)])
def test_logits_match_torchscale(T, D, B):
    """torchscale's MultiheadAttention: k = xpos(k, offset=0, downscale=True), q = xpos(q, offset=offset); our default
    layout gives its logits, for the full sequence and for one decoding step against the cache (offset = T − 1)"""
    q, k = torch.randn(6, T, D, dtype=torch.float64), torch.randn(6, T, D, dtype=torch.float64)
    theirs = torchscale_xpos(q, scale_base=B) @ torchscale_xpos(k, downscale=True, scale_base=B).transpose(-1, -2)
    enc = get("xpos", dim=D, scale_base=B)
    oq, ok = enc.apply(q.float()[:, :, None], k.float()[:, :, None])  # float32, the default layout
    ours = torch.einsum("nqd,nkd->nqk", oq[:, :, 0].double(), ok[:, :, 0].double())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-6 * theirs.abs().max().item())
    step = torchscale_xpos(q[:, -1:], offset=T - 1, scale_base=B) @ torchscale_xpos(k, downscale=True, scale_base=B).transpose(-1, -2)
    sq, sk = enc.apply(q[:, -1:, None], k[:, :, None], torch.tensor([T - 1]), k_positions=torch.arange(T))
    torch.testing.assert_close(torch.einsum("nqd,nkd->nqk", sq[:, :, 0], sk[:, :, 0]), step, rtol=1e-5, atol=1e-6 * step.abs().max().item())
    hq, hk = enc.apply(q[:, :, None], k[:, :, None], layout="half")  # the NeoX pairing: other logits
    half = torch.einsum("nqd,nkd->nqk", hq[:, :, 0], hk[:, :, 0])
    assert (half - theirs).norm() > 0.3 * theirs.norm()

def test_default_layout_is_the_references():
    "apply, attention_logits and attend all use the interleaved pairing unless told otherwise"
    enc = get("xpos", dim=16, scale_base=32.0)
    q, k = torch.randn(1, 9, 2, 16), torch.randn(1, 9, 2, 16)
    for a, b in zip(enc.apply(q, k), enc.apply(q, k, layout="interleaved")): assert torch.equal(a, b)
    tq, tk = (torchscale_xpos(x[0].transpose(0, 1).double(), downscale=d, scale_base=32.0) for x, d in ((q, False), (k, True)))
    want = (tq @ tk.transpose(-1, -2) / 4.0)[None]  # (1, H, T, T), scaled by 1/√16
    got = attention_logits(q, k, enc, causal=False, backend="torch").double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())

# ---- an independent closed form -------------------------------------------------------------------------
@pytest.mark.parametrize("D,B,gamma,base", [(8, 4.0, 0.4, 10000.0), (32, 512.0, 0.4, 10000.0), (20, 64.0, 1.0, 500.0)])
def test_closed_form_float64(D, B, gamma, base):
    "Pair i = (x_2i, x_2i+1) as x_2i + i·x_2i+1 (the default, interleaved), times e^{i n θ_i} ζ_i^{n/B} (queries) or e^{i m θ_i} ζ_i^{−m/B} (keys)"
    R, T = D // 2, 13
    pos = torch.arange(T) * 3 + 5
    q = torch.randn(1, T, 1, D, dtype=torch.float64)
    theta = torch.tensor([base ** (-2 * i / D) for i in range(R)], dtype=torch.float64)
    zeta = torch.tensor([(i / R + gamma) / (1 + gamma) for i in range(R)], dtype=torch.float64)
    enc = get("xpos", dim=D, scale_base=B, gamma=gamma, base=base)
    for sign, out in ((1, enc.apply(q, None, pos)[0]), (-1, enc.apply(q, q, pos)[1])):
        zc = torch.complex(q[0, :, 0, 0::2], q[0, :, 0, 1::2]) * torch.exp(1j * pos[:, None] * theta) * zeta ** (sign * pos[:, None] / B)
        ref = torch.stack([zc.real, zc.imag], -1).flatten(-2)
        torch.testing.assert_close(out[0, :, 0], ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())  # float32 angles (up to p·2⁻²⁴ rad)

def test_zeta_values():
    z = xpos_zeta(8)
    torch.testing.assert_close(z, torch.tensor([0.4, 0.65, 0.9, 1.15], dtype=torch.float64) / 1.4)
    assert xpos_zeta(8, gamma=1.0)[0] == 0.5

# ---- kernel, dtypes, batches, gradients -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_backends_and_dtypes(dtype, layout):
    "Triton (interpreted on a CPU) and torch agree, and low precision stays within its tolerance of float32"
    enc = get("xpos", dim=16, scale_base=32.0)
    q, k = torch.randn(2, 37, 3, 16, device=DEV), torch.randn(2, 37, 1, 16, device=DEV)  # head dim = dim: xPos has no partial rotary
    q0, k0 = q.to(dtype), k.to(dtype)
    ref = enc.apply(q0.float(), k0.float(), layout=layout, backend="torch")
    for backend in BACKENDS:
        out = enc.apply(q0, k0, layout=layout, backend=backend)
        assert out[0].dtype == dtype and torch.equal(q0, q.to(dtype))  # inputs untouched
        for o, r in zip(out, ref): torch.testing.assert_close(o.float(), r, **{k_: 2 * v for k_, v in TOL[dtype].items()})

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_pass_through_with_an_explicit_narrower_table(layout):
    "Partial rotary only where asked for explicitly: the shared kernel with xPos's 8-pair table on 20 features, then the 8 pairs' factors"
    enc = get("xpos", dim=16, scale_base=32.0)
    q = torch.randn(2, 11, 3, 20)
    p = torch.arange(11)
    rq = apply_rotary(q, None, enc.angles(p, torch.float64), layout=layout, backend="torch")[0]
    out = _scale_pairs(rq, enc.scales(p, torch.float64), layout, False)
    assert torch.equal(out[..., 16:], q[..., 16:])  # pass-through features: neither rotated nor scaled
    torch.testing.assert_close(out[..., :16], enc.apply(q[..., :16], None, p, layout=layout, backend="torch")[0], **TOL[torch.float32])

def test_per_batch_positions_and_cache():
    "(B, T) positions, and keys at other positions than the queries (decoding against a cache)"
    enc = get("xpos", dim=8, scale_base=16.0)
    q, k = torch.randn(1, 4, 2, 8).expand(2, -1, -1, -1), torch.randn(1, 9, 2, 8).expand(2, -1, -1, -1)  # the same tokens in both rows
    qp, kp = torch.stack([torch.arange(5, 9), torch.arange(105, 109)]), torch.stack([torch.arange(9), torch.arange(100, 109)])
    oq, ok = enc.apply(q, k, qp, k_positions=kp, layout="half")
    for b in range(2):
        rq = rotate(q[b:b + 1], enc.angles(qp[b])) * torch.cat([enc.scales(qp[b])] * 2, -1)[None, :, None]
        rk = rotate(k[b:b + 1], enc.angles(kp[b])) * torch.cat([enc.scales(-kp[b])] * 2, -1)[None, :, None]
        torch.testing.assert_close(oq[b:b + 1], rq, **TOL[torch.float32]); torch.testing.assert_close(ok[b:b + 1], rk, **TOL[torch.float32])
    torch.testing.assert_close(torch.einsum("bqhd,bkhd->bhqk", oq, ok)[0], torch.einsum("bqhd,bkhd->bhqk", oq, ok)[1], atol=1e-3, rtol=1e-3)  # same offsets

@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    "Gradients through the kernel's closed-form backward and the scale equal autograd through the plain torch formula"
    enc = get("xpos", dim=16, scale_base=8.0)
    q, k = torch.randn(1, 21, 2, 16, device=DEV, requires_grad=True), torch.randn(1, 21, 1, 16, device=DEV, requires_grad=True)
    gq, gk = torch.randn(1, 21, 2, 16, device=DEV), torch.randn(1, 21, 1, 16, device=DEV)
    oq, ok = enc.apply(q, k, backend=backend, layout="half")
    dq, dk = torch.autograd.grad((oq * gq).sum() + (ok * gk).sum(), (q, k))
    p = torch.arange(21, device=DEV)
    def ref(x, sign):
        s = torch.cat([enc.scales(sign * p)] * 2, -1)[None, :, None]
        c, sn = enc.angles(p).cos()[None, :, None], enc.angles(p).sin()[None, :, None]
        x1, x2 = x[..., :8], x[..., 8:16]
        return torch.cat([x1 * c - x2 * sn, x2 * c + x1 * sn], -1) * s
    rq, rk = torch.autograd.grad((ref(q, 1) * gq).sum() + (ref(k, -1) * gk).sum(), (q, k))
    torch.testing.assert_close(dq, rq, **TOL[torch.float32]); torch.testing.assert_close(dk, rk, **TOL[torch.float32])

def test_inplace_and_relative_through_attention():
    enc = get("xpos", dim=32)
    q, k = torch.randn(1, 15, 2, 32), torch.randn(1, 15, 2, 32)
    ref = enc.apply(q, k)
    q2, k2 = q.clone(), k.clone()
    out = enc.apply(q2, k2, inplace=True)
    assert out[0] is q2 and out[1] is k2 and torch.equal(q2, ref[0]) and torch.equal(k2, ref[1])
    p = torch.arange(15)
    torch.testing.assert_close(attention_logits(q, k, enc, q_positions=p, k_positions=p),
                               attention_logits(q, k, enc, q_positions=p + 3000, k_positions=p + 3000), atol=2e-3, rtol=1e-3)

@pytest.mark.parametrize("Tq,Tk", [(37, 37), (5, 70), (1, 33)])  # prefill, chunked prefill, decoding
def test_attend_triton_matches_torch(Tq, Tk):
    "The shared Triton attention kernel (after xPos is applied to q and k) against the torch reference"
    enc = get("xpos", dim=64, scale_base=64.0)
    q, k, v = torch.randn(1, Tq, 4, 64, device=DEV), torch.randn(1, Tk, 2, 64, device=DEV), torch.randn(1, Tk, 2, 64, device=DEV)
    torch.testing.assert_close(attend(q, k, v, enc, backend="triton"), attend(q, k, v, enc, backend="torch"), atol=1e-5, rtol=1e-5)

def test_rope_limit():
    "As scale_base grows xPos becomes RoPE"
    x = torch.randn(1, 9, 2, 16)
    for lay in ("half", "interleaved"):
        for a, b in zip(get("xpos", dim=16, scale_base=1e12).apply(x, x, layout=lay), get("rope", dim=16).apply(x, x, layout=lay)): torch.testing.assert_close(a, b)

# ---- bad input ------------------------------------------------------------------------------------------
x = torch.randn(1, 7, 2, 8)
CASES = [  # (id, call, exception, the argument its message must name)
    ("odd dim", lambda: get("xpos", dim=7), ValueError, "dim"),
    ("zero base", lambda: get("xpos", base=0.0), ValueError, "base"),
    ("zero scale_base", lambda: get("xpos", scale_base=0.0), ValueError, "scale_base"),
    ("nan scale_base", lambda: get("xpos", scale_base=float("nan")), ValueError, "scale_base"),
    ("string scale_base", lambda: get("xpos", scale_base="512"), TypeError, "scale_base"),
    ("zero gamma", lambda: get("xpos", gamma=0.0), ValueError, "gamma"),
    ("negative gamma", lambda: get("xpos", gamma=-0.4), ValueError, "gamma"),
    ("zeta of odd dim", lambda: xpos_zeta(5), ValueError, "dim"),
    ("positions of another length", lambda: get("xpos", dim=8).apply(x, x, torch.arange(5)), ValueError, "positions"),
    ("k_positions of another length", lambda: get("xpos", dim=8).apply(x, torch.randn(1, 9, 2, 8), torch.arange(7), k_positions=torch.arange(5)), ValueError, "k_positions"),
    ("keys of another length, no k_positions", lambda: get("xpos", dim=8).apply(x, torch.randn(1, 9, 2, 8)), ValueError, "positions"),
    ("scalar positions", lambda: get("xpos", dim=8).apply(x, x, torch.tensor(3)), ValueError, "positions"),
    ("nan positions", lambda: get("xpos", dim=8).apply(x, x, torch.tensor([0.0, 1, 2, 3, 4, 5, float("nan")])), ValueError, "positions"),
    ("3-D q", lambda: get("xpos", dim=8).apply(torch.randn(7, 2, 8), None), ValueError, "q"),
    ("q not a tensor", lambda: get("xpos", dim=8).apply(x.tolist(), None), TypeError, "q"),
    ("integer q", lambda: get("xpos", dim=8).apply(x.long(), None), TypeError, "q"),
    ("head dim narrower than dim", lambda: get("xpos", dim=16).apply(x, x), ValueError, "head dim"),
    ("head dim wider than dim", lambda: get("xpos", dim=4).apply(x, x), ValueError, "head dim"),
    ("keys of another head dim", lambda: get("xpos", dim=8).apply(x, torch.randn(1, 7, 2, 10)), ValueError, "head dim"),
    ("positions past float32's range", lambda: get("xpos", dim=8).apply(x, x, torch.arange(7) + 2 ** 31), ValueError, "positions"),
    ("k_positions past float32's range", lambda: get("xpos", dim=8).apply(x, x, torch.arange(7), k_positions=torch.arange(7) - 40_000), ValueError, "k_positions"),
    ("positions past float64's range", lambda: get("xpos", dim=8).apply(x.double(), None, torch.arange(7) + 300_000), ValueError, "positions"),
    ("inf positions", lambda: get("xpos", dim=8).apply(x, x, torch.tensor([0.0, 1, 2, 3, 4, 5, math.inf])), ValueError, "positions"),
    ("scales past float32's range", lambda: get("xpos", dim=8).scales(torch.tensor([40_000])), ValueError, "positions"),
    ("unknown layout", lambda: get("xpos", dim=8).apply(x, x, layout="neox"), ValueError, "layout"),
    ("unknown backend", lambda: get("xpos", dim=8).apply(x, x, backend="cuda"), ValueError, "backend"),
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc) as info: call()
    assert arg in str(info.value), f"message does not name `{arg}`: {info.value}"

# ---- range: the factors ζ_i^(±n/B) must stay normal numbers of the activation dtype --------------------------
@pytest.mark.parametrize("dtype,bound", [(torch.float16, 3966), (torch.bfloat16, 35694), (torch.float32, 35694), (torch.float64, 289519)])
def test_max_position_defaults(dtype, bound):
    "B = 512, γ = 0.4: B·min(ln max, −ln tiny)/ln(1/ζ_0); for float32 −ln tiny = 87.3 binds before ln max = 88.7"
    enc = get("xpos", dim=128)
    fi = torch.finfo(dtype)
    assert math.floor(enc.max_position(dtype)) == bound == math.floor(512 * min(math.log(fi.max), -math.log(fi.tiny)) / math.log(1.4 / 0.4))
    assert enc.max_position(dtype) == xpos_max_position(xpos_zeta(128), 512.0, dtype)
    assert get("xpos", dim=128, scale_base=1024.0).max_position(dtype) == pytest.approx(2 * enc.max_position(dtype))

def test_out_of_range_message_says_what_to_do():
    enc = get("xpos", dim=64)
    x = torch.randn(1, 3, 1, 64)
    with pytest.raises(ValueError) as info: enc.apply(x, x, torch.tensor([0, 1, 2]) + 2 ** 31)
    msg = str(info.value)
    assert all(w in msg for w in ("`positions`", "|n| = 35694", "torch.float32", "scale_base=512", "ζ_0=0.2857", "n − m", "min_pos = -(length + offset) // 2")), msg

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign", [1, -1])
def test_just_inside_the_bound_is_finite_and_right(dtype, sign):
    """At |n| = ⌊max_position⌋ the query's factor is barely normal and the key's near 1/tiny: q, k in [−1, 1] give finite
    logits equal to the float64 closed form (which depends on n − m only), while one step further is refused"""
    D, T = 32, 9
    enc = get("xpos", dim=D)
    n0 = sign * math.floor(enc.max_position(dtype))
    pos = n0 - sign * torch.arange(T)  # every |position| <= the bound, the largest at the edge
    g = torch.Generator().manual_seed(1)
    q, k = (torch.rand(2, 1, T, 2, D, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    oq, ok = enc.apply(q, k, pos, backend="torch")
    assert torch.isfinite(oq).all() and torch.isfinite(ok).all()
    got = torch.einsum("bqhd,bkhd->bhqk", oq.double(), ok.double())
    R, rel = D // 2, pos[:, None] - pos[None, :]  # (T, T) n − m
    th, z = inv_freq(D), xpos_zeta(D)
    qc, kc = torch.complex(q[..., 0::2].double(), q[..., 1::2].double()), torch.complex(k[..., 0::2].double(), k[..., 1::2].double())  # (1, T, H, R), interleaved pairs (the default)
    w = torch.exp(1j * rel[..., None] * th) * z ** (rel[..., None] / 512)  # (T, T, R) per-pair factor of the logit
    ref = torch.einsum("bqhr,bkhr,qkr->bhqk", qc, kc.conj(), w.to(torch.complex128)).real
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)  # float32: q, k, factors rounded once each
    torch.testing.assert_close(got[..., rel >= 0], ref[..., rel >= 0], **tol)  # the causal part: factors at most 1 in n − m
    with pytest.raises(ValueError, match="positions"): enc.apply(q, k, pos + sign, backend="torch")

def test_shifted_positions_give_the_same_logits_in_range():
    "The way out the message names: far positions refused in float32, the same ones shifted towards 0 (torchscale's centring) work"
    enc = get("xpos", dim=32)
    q, k = torch.randn(2, 1, 20, 2, 32, dtype=torch.float64)
    far = torch.arange(20) + 100_000
    with pytest.raises(ValueError, match="positions"): enc.apply(q.float(), k.float(), far)
    min_pos = -(20 + 0) // 2  # torchscale: length 20, offset 0
    near = far - far[0] + min_pos
    l32 = torch.einsum("bqhd,bkhd->bhqk", *enc.apply(q.float(), k.float(), near)).double()
    l64 = torch.einsum("bqhd,bkhd->bhqk", *enc.apply(q, k, far))  # float64 holds 100 000
    causal = torch.ones(20, 20, dtype=torch.bool).tril()
    torch.testing.assert_close(l32[..., causal], l64[..., causal], rtol=1e-4, atol=1e-4)
