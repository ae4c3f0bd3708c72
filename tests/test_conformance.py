"""Registry-wide conformance: every registered encoding is checked against the properties of its family and the
claims on its paper card. A new notebook's encodings get these checks for free."""
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from conftest import TOL
from posexplorer.core import cards, get, names, rotate, FAMILIES
from posexplorer.ops.attention import attention_logits, attend

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton parity tests run compiled on a GPU, interpreted elsewhere
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROTARY, BIAS, ADDITIVE, GENERAL = names("rotary"), names("bias"), names("additive"), names("general")
dims = st.integers(1, 16).map(lambda r: 2 * r)  # even rotary dims 2..32
lengths = st.integers(1, 40)

def _claims(name): return get_card(name).properties

def get_card(name): return next(c for c in cards() if c.name == name)

def _perm(D, R):
    "Feature permutation taking the half layout to the interleaved one: half i -> 2i, half i+R -> 2i+1"
    p = torch.arange(D)
    p[:2 * R] = torch.stack([torch.arange(R), torch.arange(R) + R], -1).flatten()
    return p

# ---- rotary ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROTARY)
@SETTINGS
@given(dim=dims, T=lengths, B=st.integers(1, 2), H=st.integers(1, 3), extra=st.sampled_from([0, 2, 6]))
def test_rotary_norm_layout_and_pass_through(name, dim, T, B, H, extra):
    enc = get(name, dim=dim)
    a = enc.angles(enc.default_positions(T))
    R = a.shape[-1]
    x = torch.randn(B, T, H, 2 * R + extra, dtype=torch.float64)
    y = rotate(x, a)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), **TOL[torch.float32])  # a rotation keeps norms
    assert torch.equal(y[..., 2 * R:], x[..., 2 * R:])  # partial rotary: the rest pass through
    p = _perm(2 * R + extra, R)  # half and interleaved agree up to a fixed permutation of the features
    torch.testing.assert_close(rotate(x[..., p], a, "interleaved"), y[..., p], **TOL[torch.float32])
    torch.testing.assert_close(rotate(y, -a), x, **TOL[torch.float32])  # the inverse is the conjugate

@pytest.mark.parametrize("name", [n for n in ROTARY if _claims(n).get("relative")])
@SETTINGS
@given(dim=dims, T=st.integers(2, 30), shift=st.integers(-500, 5000))
def test_rotary_relative_where_claimed(name, dim, T, shift):
    "Logits depend only on n - m: shifting every position by the same amount changes nothing"
    enc = get(name, dim=dim)
    q, k = torch.randn(1, T, 2, dim), torch.randn(1, T, 2, dim)
    p = enc.default_positions(T)
    l0 = attention_logits(q, k, enc, q_positions=p, k_positions=p, backend="torch")
    l1 = attention_logits(q, k, enc, q_positions=p + shift, k_positions=p + shift, backend="torch")
    torch.testing.assert_close(l1, l0, atol=2e-3, rtol=1e-3)  # float32 angles of positions up to ~5000

@pytest.mark.parametrize("name", ROTARY)
@SETTINGS
@given(dim=dims, T=lengths, shift=st.integers(0, 100_000))
def test_rotary_float32_matches_float64_angles(name, dim, T, shift):
    enc = get(name, dim=dim)
    pos = enc.default_positions(T) + shift
    a32, a64 = enc.angles(pos), enc.angles(pos, dtype=torch.float64)
    assert a32.dtype == torch.float32 and a64.dtype == torch.float64
    torch.testing.assert_close(a32.double(), a64, rtol=1e-6, atol=1e-6)

@pytest.mark.parametrize("name", ROTARY)
@settings(max_examples=4, deadline=None)
@given(dim=dims, T=st.integers(1, 70), layout=st.sampled_from(["half", "interleaved"]))
def test_rotary_torch_triton_parity(name, dim, T, layout):
    enc = get(name, dim=dim)
    q, k = torch.randn(2, T, 3, dim, device=DEV), torch.randn(2, T, 1, dim, device=DEV)  # the head dim it was built for
    t, r = enc.apply(q, k, layout=layout, backend="triton"), enc.apply(q, k, layout=layout, backend="torch")
    torch.testing.assert_close(t[0], r[0], **TOL[torch.float32]); torch.testing.assert_close(t[1], r[1], **TOL[torch.float32])

@pytest.mark.parametrize("name", ROTARY)
def test_rotary_refuses_another_head_dim(name):
    "Partial rotary is asked for, never inferred: q or k wider or narrower than the encoding's dim is refused, naming the head dim"
    enc = get(name, dim=8)
    x = torch.randn(1, 3, 1, 8)
    enc.apply(x, x)  # its own head dim works
    for D in (6, 10):
        with pytest.raises(ValueError, match="head dim"): enc.apply(torch.randn(1, 3, 1, D), None)
        with pytest.raises(ValueError, match="head dim"): enc.apply(x, torch.randn(1, 3, 1, D))

# ---- bias -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BIAS)
@SETTINGS
@given(H=st.integers(1, 12), Tq=lengths, Tk=lengths, shift=st.integers(0, 1000))
def test_bias_shape_and_translation(name, H, Tq, Tk, shift):
    enc = get(name, n_heads=H)
    qp, kp = torch.arange(Tq), torch.arange(Tk)
    b = enc.bias(qp, kp)
    assert b.shape == (H, Tq, Tk) and torch.isfinite(b).all()
    if _claims(name).get("translation_invariant"): torch.testing.assert_close(enc.bias(qp + shift, kp + shift), b)

@pytest.mark.parametrize("name", BIAS)
@SETTINGS
@given(H=st.integers(1, 12), Tq=lengths, Tk=lengths)
def test_bias_kernel_forms_agree(name, H, Tq, Tk):
    "The forms an attention kernel uses (slopes, functions of k - q) must equal `bias` and `scale`"
    enc = get(name, n_heads=H)
    qp, kp = torch.arange(Tq) + 3, torch.arange(Tk)
    off = kp[None, :] - qp[:, None]  # (Tq, Tk) offsets k - q
    b, c = enc.bias(qp, kp), enc.scale(qp, kp)
    s = enc.linear_slopes()
    if s is not None: torch.testing.assert_close(b, -s.float()[:, None, None] * off.abs().float(), **TOL[torch.float32])
    rb = enc.relative_bias(off.flatten())
    if rb is not None: torch.testing.assert_close(rb.reshape(H, Tq, Tk).to(b), b)
    if c is not None:
        assert c.shape == (H, Tq, Tk) and torch.isfinite(c).all()
        rs = enc.relative_scale(off.flatten())
        if rs is not None: torch.testing.assert_close(rs.reshape(H, Tq, Tk).to(c), c)

@pytest.mark.parametrize("name", BIAS)
@pytest.mark.parametrize("causal", [True, False])
def test_bias_attention_kernel_parity(name, causal):
    "Every bias encoding the Triton attention can run gives the reference's output (Triton's interpreter on a CPU)"
    from posexplorer.ops.attention import attend
    enc = get(name, n_heads=3)
    q, k, v = (torch.randn(1, 29, 3, 64, device=DEV) for _ in range(3))
    ref = attend(q, k, v, enc, causal=causal, backend="torch")
    try: out = attend(q, k, v, enc, causal=causal, backend="triton")
    except ValueError as e:
        assert "cannot run" in str(e); pytest.skip(f"{name}: no kernel form ({e})")
    torch.testing.assert_close(out, ref, **TOL[torch.float32])

# ---- additive -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ADDITIVE)
@SETTINGS
@given(dim=dims, T=lengths, shift=st.integers(0, 1000))
def test_additive_shape_and_translation(name, dim, T, shift):
    enc = get(name, dim=dim)
    p = enc.default_positions(T)  # (T,) token positions, or (A, T) coordinates
    assert p.shape[-1] == T and (p.ndim == 1 or p.shape[0] == enc.n_axes)
    with torch.no_grad(): e = enc.embed(p)
    assert e.shape == (T, dim) and torch.isfinite(e).all()
    if _claims(name).get("translation_invariant"):
        with torch.no_grad(): e1 = enc.embed(p + shift)
        torch.testing.assert_close(e1 @ e1.T, e @ e.T, atol=1e-3, rtol=1e-3)

# ---- general (per-token linear maps: ComRoPE, LieRE, CARoPE, UCPE) -----------------------------------------
def _general(name, r, T, B=1, H=2, dtype=torch.float32, dev="cpu"):
    "An encoding of head dim `r` times its block size, with q, k, v and (where it reads them) hidden states x, all on `dev`"
    enc = get(name, dim=r * get(name).dim_multiple)
    if isinstance(enc, torch.nn.Module): enc = enc.to(dev)  # learned weights live where the activations do
    D = r * enc.dim_multiple
    q, k, v = (torch.randn(B, T, H, D, dtype=dtype, device=dev) for _ in range(3))
    x = None if enc.context_dim is None else torch.randn(B, T, enc.context_dim, dtype=dtype, device=dev)
    return enc, q, k, v, x

@pytest.mark.parametrize("name", GENERAL)
@SETTINGS
@given(r=st.integers(1, 4), T=lengths, B=st.integers(1, 2))
def test_general_shape_dtype_and_norm(name, r, T, B):
    enc, q, k, v, x = _general(name, r, T, B)
    with torch.no_grad():
        q1, k1 = enc.transform(q, k, enc.default_positions(T), x=x, backend="torch")
        assert q1.shape == q.shape and k1.shape == k.shape and q1.dtype == q.dtype and torch.isfinite(q1).all()
        if _claims(name).get("orthogonal"):  # a rotation keeps the norm of every head vector
            torch.testing.assert_close(q1.norm(dim=-1), q.norm(dim=-1), **TOL[torch.float32])
            torch.testing.assert_close(k1.norm(dim=-1), k.norm(dim=-1), **TOL[torch.float32])
        q64, k64 = enc.transform(q.double(), k.double(), enc.default_positions(T), x=None if x is None else x.double(), backend="torch")
        assert q64.dtype == torch.float64
        torch.testing.assert_close(q64.float(), q1, atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize("name", [n for n in GENERAL if _claims(n).get("relative")])
@SETTINGS
@given(r=st.integers(1, 4), T=st.integers(2, 30), shift=st.integers(-50, 500))
def test_general_relative_where_claimed(name, r, T, shift):
    "Logits depend only on the offset: shifting every position (on every axis) by one constant changes nothing"
    enc, q, k, v, x = _general(name, r, T)
    p = enc.default_positions(T)
    with torch.no_grad():
        l0 = attention_logits(q, k, enc, q_positions=p, k_positions=p, backend="torch", x=x)
        l1 = attention_logits(q, k, enc, q_positions=p + shift, k_positions=p + shift, backend="torch", x=x)
    torch.testing.assert_close(l1, l0, atol=2e-3, rtol=1e-3)

@pytest.mark.parametrize("name", GENERAL)
@settings(max_examples=3, deadline=None)
@given(r=st.integers(1, 3), T=st.integers(1, 40))
def test_general_torch_triton_parity(name, r, T):
    "Every general encoding's kernel gives its torch reference's q and k (Triton's interpreter on a CPU)"
    enc, q, k, v, x = _general(name, r, T, B=2, dev=DEV)
    p = enc.default_positions(T, device=DEV)
    with torch.no_grad():
        ref = enc.transform(q, k, p, x=x, backend="torch")
        out = enc.transform(q, k, p, x=x, backend="triton")
    torch.testing.assert_close(out[0], ref[0], **TOL[torch.float32]); torch.testing.assert_close(out[1], ref[1], **TOL[torch.float32])

@pytest.mark.parametrize("name", GENERAL)
def test_general_attention_and_gradients(name):
    "attend runs any general encoding (v and the output moved where the encoding says), and learned weights get gradients"
    enc, q, k, v, x = _general(name, 2, 9, dev=DEV)  # the Triton attention below runs on DEV
    ref = attend(q, k, v, enc, backend="torch", x=x)
    assert ref.shape == q.shape and torch.isfinite(ref).all()
    if x is None:  # the Triton attention on the transformed q, k, v (interpreted on a CPU)
        with torch.no_grad(): torch.testing.assert_close(attend(q, k, v, enc, backend="triton", x=x), ref, **TOL[torch.float32])
    params = [p for p in getattr(enc, "parameters", lambda: [])() if p.requires_grad]
    if params:
        ref.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)

# ---- the registry itself --------------------------------------------------------------------------------
def test_cards_complete():
    from pathlib import Path
    nbs = Path(__file__).parents[1] / "nbs"
    assert len(cards()) == len(names()) >= 1
    for c in cards():
        assert c.title and 2015 <= c.year <= 2026 and c.family in FAMILIES, c
        assert (nbs / c.notebook).exists(), f"{c.name}: card names a missing notebook {c.notebook}"
        assert get(c.name).card == c  # the catalog's card (read without importing) is the one `@register` records
    assert sorted(n for f in FAMILIES for n in names(f)) == names()
    assert "| `rope` | rotary |" in cards().to_markdown()
