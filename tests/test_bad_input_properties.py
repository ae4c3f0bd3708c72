"""Bad and borderline input, drawn by hypothesis over the whole registry and the public functions.

Every call ends in one of two ways: a clear error (a ValueError or TypeError raised by posexplorer's own code, whose
message names the argument), or a result checked against an independent float64 computation. A deep crash (an error
from inside torch or the standard library) or a wrong result fails the test. Set BAD_INPUT_EXAMPLES to draw more
examples; the outcome counts are written to $BAD_INPUT_COUNTS (a JSON file) when it is set.
"""
import collections, dataclasses, json, math, os, traceback
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
import posexplorer
from posexplorer.core import Encoding, RotaryEncoding, angles, get, inv_freq, names, rotate, wrap_angles, encoding_class
from posexplorer.ops.attention import attend, attention_logits
from posexplorer.ops.rotary import apply_rotary, apply_rotary_positions

PKG = os.path.dirname(posexplorer.__file__)
OUTCOMES = collections.Counter()
SETTINGS = settings(max_examples=int(os.environ.get("BAD_INPUT_EXAMPLES", "8")), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate] if os.environ.get("BAD_INPUT_COUNTS") else list(Phase))  # counting: no shrinking
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-9, torch.float32: 4e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative to max |x|


def teardown_module():
    if os.environ.get("BAD_INPUT_COUNTS"):
        path = os.environ["BAD_INPUT_COUNTS"]
        old = collections.Counter(json.load(open(path))) if os.path.exists(path) else collections.Counter()
        json.dump(dict(old + OUTCOMES), open(path, "w"))


def clear_error(call, *args):
    "`call()` must raise a ValueError or TypeError from a `raise` in posexplorer's code, naming one of `args`"
    try: call()
    except (ValueError, TypeError) as e:
        site = traceback.extract_tb(e.__traceback__)[-1]
        if not (site.filename.startswith(PKG) and "raise" in (site.line or "")):
            OUTCOMES["deep crash"] += 1
            raise AssertionError(f"{type(e).__name__} from {site.filename}:{site.lineno}, not a posexplorer check: {e}") from e
        if not any(a in str(e) for a in args):
            OUTCOMES["unclear error"] += 1
            raise AssertionError(f"the message does not name {args}: {e}") from e
        OUTCOMES["clear error"] += 1
        return
    except Exception as e:
        OUTCOMES["deep crash"] += 1
        raise AssertionError(f"{type(e).__name__} instead of a clear error naming {args}: {e}") from e
    OUTCOMES["silent result"] += 1
    raise AssertionError(f"no error: the bad {args} was accepted")


def checked(got, want, scale, dtype, angle=0.0):
    "A result, compared with its float64 reference; float64 results far out also carry the float64 rounding of the angle"
    err = (got.double() - want).abs().max().item() / max(scale, 1e-30)
    tol = TOL[dtype] + 4 * abs(angle) * 2.0**-52
    if not err <= tol:
        OUTCOMES["silent wrong result"] += 1
        raise AssertionError(f"wrong result: max error {err:.3g} of max |x| (tolerance {tol:g} for {dtype})")
    OUTCOMES["checked result"] += 1


# ---- every rotary encoding, through `apply` --------------------------------------------------------------------
ROTARY = [n for n in names() if encoding_class(n).has_angles]

def small(name):
    "The encoding at the smallest head dim it accepts among 16, 32, 64 (its default otherwise)"
    for d in (16, 32, 64):
        try: return get(name, dim=d)
        except (TypeError, ValueError): pass
    return get(name)

ENC = {n: small(n) for n in ROTARY}

def positions_for(enc, draw, T, B):
    "Valid positions: the default, huge or negative integers up to 2**31, fractions, per-batch rows"
    kind = draw(st.sampled_from(["default", "ints", "huge", "floats", "batched"]))
    A = enc.n_axes
    if kind == "default": return None
    if kind == "floats": p = torch.tensor(draw(st.lists(st.floats(-1e4, 1e4), min_size=T, max_size=T)), dtype=torch.float64)
    else:
        hi = 2**31 - 1 if kind == "huge" else 5000
        p = torch.tensor(draw(st.lists(st.integers(-hi - 1 if kind == "huge" else 0, hi), min_size=T, max_size=T)))
    if kind == "batched": p = torch.stack([p, p.flip(0)])[:B]
    return p if A == 1 else p.expand(A, *p.shape)

def reference(enc, q, positions, layout):
    "float64: the encoding's own angle formula, reduced with torch.remainder, and the rotation written out"
    T = q.shape[1]
    p = enc.default_positions(T) if positions is None else positions
    a = torch.remainder(enc.angles(p, torch.float64), 2 * math.pi)
    a = a if a.ndim == 3 else a[None]
    c, s = a.cos()[:, :, None] * enc.attention_scale, a.sin()[:, :, None] * enc.attention_scale
    R, x = a.shape[-1], q.double().clone()
    i1, i2 = (torch.arange(R), torch.arange(R) + R) if layout == "half" else (torch.arange(0, 2 * R, 2), torch.arange(1, 2 * R, 2))
    x1, x2 = x[..., i1], x[..., i2]
    x[..., i1], x[..., i2] = x1 * c - x2 * s, x2 * c + x1 * s
    return x

@pytest.mark.parametrize("name", ROTARY)
@SETTINGS
@given(data=st.data())
def test_rotary_valid_input_is_right(name, data):
    "Any valid input gives the float64 answer (or, past an encoding's own range, a clear error naming `positions`)"
    enc, draw = ENC[name], data.draw
    B, T, Hk = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 2))
    Hq, dtype = Hk * draw(st.integers(1, 2)), draw(st.sampled_from(DTYPES))
    layout, inplace = draw(st.sampled_from(["half", "interleaved"])), draw(st.booleans())
    backend = draw(st.sampled_from(["torch", "triton"] if dtype != torch.float64 else ["torch"]))
    positions = positions_for(enc, draw, T, B)
    q = torch.randn(B, T, Hq, enc.dim).to(dtype)
    k = torch.randn(B, T, Hk, enc.dim).to(dtype) if draw(st.booleans()) else None
    q0, k0 = q.clone(), None if k is None else k.clone()
    try: qo, ko = enc.apply(q, k, positions, layout=layout, backend=backend, inplace=inplace)
    except ValueError as e:
        if positions is not None and "positions" in str(e) and type(enc).apply is not RotaryEncoding.apply:  # xPos: scales overflow
            OUTCOMES["clear error"] += 1; return
        raise
    if type(enc).apply is not RotaryEncoding.apply:  # its own apply (xPos's scales): against its float64 self
        want_q, want_k = enc.apply(q0.double(), None if k0 is None else k0.double(), positions, layout=layout, backend="torch")
    else: want_q, want_k = reference(enc, q0, positions, layout), (None if k0 is None else reference(enc, k0, positions, layout))
    far = enc.angles(enc.default_positions(T) if positions is None else positions, torch.float64).abs().max().item()
    checked(qo, want_q, want_q.abs().max().item(), dtype, far)
    if k is not None: checked(ko, want_k, want_k.abs().max().item(), dtype, far)
    assert qo.dtype == dtype and (qo.data_ptr() == q.data_ptr()) == inplace

BAD_ROTARY = {  # corruption -> (a function of (enc, q, k, positions) giving the call's arguments, the names the message may use)
    "head dim": (lambda e, q, k, p: (q[..., :-2].contiguous(), k[..., :-2].contiguous(), p, {}), ("head dim",)),
    "integer q": (lambda e, q, k, p: (q.long(), k, p, {}), ("`q`",)),
    "complex q": (lambda e, q, k, p: (q.to(torch.complex64), k, p, {}), ("`q`",)),
    "3-D q": (lambda e, q, k, p: (q[0], k, p, {}), ("`q`", "positions")),
    "list q": (lambda e, q, k, p: (q.tolist(), k, p, {}), ("`q`",)),
    "k on meta": (lambda e, q, k, p: (q, k.to("meta"), p, {}), ("`k`",)),
    "k of other length": (lambda e, q, k, p: (q, torch.cat([k, k], 1), p, {}), ("`k`", "k_positions")),
    "nan positions": (lambda e, q, k, p: (q, k, p.double().index_fill(-1, torch.tensor([0]), float("nan")), {}), ("positions",)),
    "inf positions": (lambda e, q, k, p: (q, k, p.double().index_fill(-1, torch.tensor([0]), -float("inf")), {}), ("positions",)),
    "positions too long": (lambda e, q, k, p: (q, k, torch.cat([p, p[..., :1]], -1), {}), ("positions",)),
    "positions of 4 dims": (lambda e, q, k, p: (q, k, p.reshape(1, 1, 1, *p.shape), {}), ("positions",)),
    "positions on meta": (lambda e, q, k, p: (q, k, p.to("meta"), {}), ("positions",)),
    "complex positions": (lambda e, q, k, p: (q, k, p * 1j, {}), ("positions",)),
    "bool positions": (lambda e, q, k, p: (q, k, p > 0, {}), ("positions",)),
    "positions as a list": (lambda e, q, k, p: (q, k, p.tolist(), {}), ("positions",)),
    "positions batch 3": (lambda e, q, k, p: (q, k, p.unsqueeze(-2).expand(*p.shape[:-1], 3, p.shape[-1]), {}), ("positions",)),
    "unknown layout": (lambda e, q, k, p: (q, k, p, dict(layout="neox")), ("layout",)),
    "unknown backend": (lambda e, q, k, p: (q, k, p, dict(backend="cuda")), ("backend",)),
    "inplace not a bool": (lambda e, q, k, p: (q, k, p, dict(inplace="yes")), ("inplace",)),
    "k is q, in place": (lambda e, q, k, p: (q, q, p, dict(inplace=True)), ("`k`",)),
    "k a view of q, in place": (lambda e, q, k, p: (q, q[:, :, :1], p, dict(inplace=True)), ("`k`",)),
}

@pytest.mark.parametrize("name", ROTARY)
@pytest.mark.parametrize("bad", list(BAD_ROTARY))
def test_rotary_bad_input_is_refused(name, bad):
    enc = ENC[name]
    make, args = BAD_ROTARY[bad]
    B, T = 2, 4
    q, k = torch.randn(B, T, 2, enc.dim), torch.randn(B, T, 2, enc.dim)
    q_, k_, p_, kw = make(enc, q, k, enc.default_positions(T).clone())
    clear_error(lambda: enc.apply(q_, k_, p_, **kw), *args)


# ---- the public functions -----------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.none(),
                    st.booleans(), st.just(np.int64(8)), st.just(np.float32(2.0)), st.just([8]))

@SETTINGS
@given(dim=NUMBERS, base=NUMBERS, dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bfloat16, "float32", None]))
def test_inv_freq(dim, base, dtype):
    "Any dim, base and dtype: a clear error naming the bad one, or base**(-2i/dim) to float64 rounding"
    ok_dim = isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0 and dim % 2 == 0
    ok_base = isinstance(base, (int, float, np.floating, np.integer)) and not isinstance(base, bool) and math.isfinite(base) and base > 0
    ok_dtype = dtype in (torch.float32, torch.float64)
    if not ok_dim: return clear_error(lambda: inv_freq(dim, base, dtype), "dim")
    if not ok_base: return clear_error(lambda: inv_freq(dim, base, dtype), "base")
    if not ok_dtype: return clear_error(lambda: inv_freq(dim, base, dtype), "dtype")
    f = inv_freq(dim, base, dtype)
    want = torch.tensor([float(base) ** (-2 * i / dim) for i in range(dim // 2)], dtype=torch.float64)
    checked(f, want, 1.0, dtype)

@SETTINGS
@given(p=st.lists(st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(-1e6, 1e6)), min_size=1, max_size=6),
       dim=st.sampled_from([2, 8, 64, 128]), base=st.sampled_from([10.0, 1e4, 5e5]), dtype=st.sampled_from(DTYPES[:2]),
       layout=st.sampled_from(["half", "interleaved"]), backend=st.sampled_from(["torch", "triton"]))
def test_apply_rotary_positions_far_out(p, dim, base, dtype, layout, backend):
    "The kernel's positions mode at any position up to 2**31: right to float32 rounding on both backends"
    if dtype == torch.float64: backend = "torch"
    pos = torch.tensor(p, dtype=torch.float64 if any(isinstance(x, float) for x in p) else torch.int64)
    f = inv_freq(dim, base)
    q = torch.randn(1, len(p), 2, dim + 2, dtype=dtype)  # 2 pass-through features: an explicit partial rotary
    got = apply_rotary_positions(q, None, pos, f, layout=layout, backend=backend)[0]
    a = torch.remainder(pos.double()[:, None] * f, 2 * math.pi)  # exact: float64 product of float64 values, then reduced
    want = q.double().clone()
    i1, i2 = (torch.arange(dim // 2), torch.arange(dim // 2) + dim // 2) if layout == "half" else (torch.arange(0, dim, 2), torch.arange(1, dim, 2))
    c, s = a.cos()[None, :, None], a.sin()[None, :, None]
    want[..., i1], want[..., i2] = q.double()[..., i1] * c - q.double()[..., i2] * s, q.double()[..., i2] * c + q.double()[..., i1] * s
    checked(got, want, q.abs().max().item(), dtype, pos.double().abs().max().item() * f.max().item())

@SETTINGS
@given(shape=st.sampled_from([(5,), (2, 5), (5, 1), (2, 2, 5), ()]), dtype=st.sampled_from([torch.int64, torch.float32, torch.bool, torch.complex64]),
       bad=st.sampled_from([None, "nan", "inf", "meta"]), fdtype=st.sampled_from([torch.float32, torch.float64, torch.int64, "f"]))
def test_angles(shape, dtype, bad, fdtype):
    "Positions of any shape, dtype and value, and any angle dtype"
    p = torch.zeros(shape, dtype=dtype) if dtype != torch.complex64 else torch.zeros(shape, dtype=dtype)
    if bad in ("nan", "inf") and p.is_floating_point() and p.numel(): p = p.clone(); p.view(-1)[0] = float(bad)
    if bad == "meta": p = p.to("meta")
    call = lambda: angles(p, inv_freq(8), fdtype)
    if fdtype not in (torch.float32, torch.float64): return clear_error(call, "dtype")
    if dtype in (torch.bool, torch.complex64) or len(shape) not in (1, 2) or bad == "meta" or (bad and dtype == torch.float32):
        return clear_error(call, "positions")
    a = call()
    checked(a, p.double()[..., None] * inv_freq(8), 1.0, fdtype)

@SETTINGS
@given(H=st.integers(1, 4), n_heads=st.integers(1, 4), Tq=st.integers(1, 4), Tk=st.integers(1, 4), name=st.sampled_from(["alibi", "t5", "urpe"]),
       causal=st.sampled_from([True, False, "no", 1, None]), backend=st.sampled_from(["torch", "triton"]))
def test_attend_bias_heads_and_lengths(H, n_heads, Tq, Tk, name, causal, backend):
    "Bias encodings: mismatched heads, causal not a bool, causal with Tq > Tk are refused; the rest is right"
    enc = get(name, n_heads=n_heads)
    q, k, v = torch.randn(1, Tq, H, 8), torch.randn(1, Tk, H, 8), torch.randn(1, Tk, H, 8)
    call = lambda: attend(q, k, v, enc, causal=causal, backend=backend)
    if not isinstance(causal, bool): return clear_error(call, "causal")
    if causal and Tq > Tk: return clear_error(call, "Tq")
    if n_heads != H: return clear_error(call, "n_heads")
    o = call()
    # float64, written out: softmax(q k^T / sqrt(D) + bias) (times URPE's scale) @ v, queries the last Tq positions
    kp = torch.arange(Tk); qp = kp[Tk - Tq:] if Tq <= Tk else torch.arange(Tq)
    logits = torch.einsum("qhd,khd->hqk", q[0].double(), k[0].double()) / math.sqrt(8) + enc.logit_bias(qp, kp).double()
    if causal: logits = logits.masked_fill(kp[None, None, :] > qp[None, :, None] + 0 * Tk, float("-inf"))
    pr = logits.softmax(-1)
    c = enc.prob_scale(qp, kp)
    if c is not None: pr = pr * c.double()
    checked(o[0], torch.einsum("hqk,khd->qhd", pr, v[0].double()), v.abs().max().item(), torch.float32)


# ---- every encoding's parameters ----------------------------------------------------------------------------
def fields():
    "(name, field, kind) for every numeric dataclass field of every registered encoding"
    out = []
    for n in names():
        cls = encoding_class(n)
        if not dataclasses.is_dataclass(cls): continue
        for f in dataclasses.fields(cls):
            default = getattr(get(n), f.name, None)
            if isinstance(default, bool) or not isinstance(default, (int, float)): continue
            out.append((n, f.name, "int" if isinstance(default, int) else "float"))
    return out

FIELDS = fields()

@pytest.mark.parametrize("name,field,kind", FIELDS, ids=[f"{n}.{f}" for n, f, _ in FIELDS])
@pytest.mark.parametrize("bad", ["a string", "nan", "a list"])
def test_parameters_of_the_wrong_type_or_nan(name, field, kind, bad):
    "A string, a list or NaN for a numeric hyperparameter is refused, naming it"
    value = {"a string": "8", "nan": float("nan"), "a list": [8]}[bad]
    if bad == "nan" and kind == "int": value = 8.5  # a fraction for an int field
    clear_error(lambda: get(name, **{field: value}), field)


# ---- every encoding, through attention ----------------------------------------------------------------------
def attention_inputs(enc, B, T, dtype):
    "q, k, v (and hidden states x) of a shape the encoding accepts"
    fam, H = enc.family, getattr(enc, "n_heads", None) or 2
    if fam == "additive": H, D = 1, enc.dim  # identity projections: H * D is the embedding width
    elif fam == "bias": D = enc.rotary.dim if enc.rotary is not None else 8
    else: D = getattr(enc, "dim", None) or 8
    q, k, v = (torch.randn(B, T, H, D).to(dtype) for _ in range(3))
    x = torch.randn(B, T, enc.context_dim).to(dtype) if getattr(enc, "context_dim", None) else None
    return q, k, v, x

def attention_reference(enc, q, k, v, x, causal):
    "float64, written out from the encoding's hooks: softmax(q'k'^T/sqrt(D) + bias) (times a scale) @ v', decoded"
    T, D = q.shape[1], q.shape[-1]
    p = enc.default_positions(T)
    d = lambda t: None if t is None else t.double()
    enc64 = enc  # learned encodings keep their own (float32) weights
    qe, ke = enc64.encode_qk(d(q), d(k), p, p, x=d(x), backend="torch")
    logits = torch.einsum("bqhd,bkhd->bhqk", qe.double(), ke.double().repeat_interleave(q.shape[2] // k.shape[2], 2)) / math.sqrt(D)
    b = enc64.logit_bias(p, p)
    if b is not None: logits = logits + b.double()
    if causal: logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    pr = logits.softmax(-1)
    c = enc64.prob_scale(p, p)
    if c is not None: pr = pr * c.double()
    o = torch.einsum("bhqk,bkhd->bqhd", pr, enc64.encode_v(d(v), p).double())
    out = enc64.decode_out(o, p)
    return out

@pytest.mark.parametrize("name", [n for n in names() if not encoding_class(n).acts_on_embeddings or True])
@SETTINGS
@given(B=st.integers(1, 2), T=st.integers(1, 5), causal=st.booleans(), backend=st.sampled_from(["torch", "triton"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_attend_every_encoding_is_right(name, B, T, causal, backend, dtype):
    "Every registered encoding through `attend`, on both backends, against its float64 hooks written out"
    if dtype == torch.float64: backend = "torch"
    enc = small(name) if encoding_class(name).has_angles else get(name)
    q, k, v, x = attention_inputs(enc, B, T, dtype)
    if q.shape[-1] > 256: backend = "torch"  # the Triton kernel refuses head dims past 256, naming them (tested in test_bad_input)
    with torch.no_grad():
        o = attend(q, k, v, enc, causal=causal, backend=backend, x=x)
        want = attention_reference(enc, q, k, v, x, causal)
    assert o.shape == q.shape and o.dtype == dtype
    checked(o, want, v.abs().max().item() * max(1.0, want.abs().max().item() / max(v.abs().max().item(), 1e-30)), dtype,
            enc.angles(enc.default_positions(T), torch.float64).abs().max().item() if enc.has_angles else 0.0)
