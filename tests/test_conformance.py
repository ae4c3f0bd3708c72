"""Registry-wide conformance: every registered encoding is checked against the properties of its family and the
claims on its paper card. A new notebook's encodings get these checks for free."""
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from conftest import TOL
from posexplorer.core import cards, get, names, rotate, FAMILIES
from posexplorer.attention import attention_logits

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton parity tests run compiled on a GPU, interpreted elsewhere
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROTARY, BIAS, ADDITIVE = names("rotary"), names("bias"), names("additive")
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
    q, k = torch.randn(2, T, 3, dim + 4, device=DEV), torch.randn(2, T, 1, dim + 4, device=DEV)
    t, r = enc.apply(q, k, layout=layout, backend="triton"), enc.apply(q, k, layout=layout, backend="torch")
    torch.testing.assert_close(t[0], r[0], **TOL[torch.float32]); torch.testing.assert_close(t[1], r[1], **TOL[torch.float32])

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
    from posexplorer.attention import attend
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
    e = enc.embed(torch.arange(T))
    assert e.shape == (T, dim) and torch.isfinite(e).all()
    if _claims(name).get("translation_invariant"):
        e1 = enc.embed(torch.arange(T) + shift)
        torch.testing.assert_close(e1 @ e1.T, e @ e.T, atol=1e-3, rtol=1e-3)

# ---- the registry itself --------------------------------------------------------------------------------
def test_cards_complete():
    from pathlib import Path
    nbs = Path(__file__).parents[1] / "nbs"
    assert len(cards()) == len(names()) >= 1
    for c in cards():
        assert c.title and 2015 <= c.year <= 2026 and c.family in FAMILIES, c
        assert (nbs / c.notebook).exists(), f"{c.name}: card names a missing notebook {c.notebook}"
        assert get(c.name).card is c
    assert sorted(n for f in FAMILIES for n in names(f)) == names()
    assert "| `rope` | rotary |" in cards().to_markdown()
