"Bad input raises a TypeError or ValueError that names the offending argument, never a silent wrong answer."
import math
import pytest
import torch
from posexplorer import core
from posexplorer.core import angles, get, inv_freq, names, rotate, wrap_angles
from posexplorer.ops.rotary import apply_rotary, apply_rotary_positions
from posexplorer.ops.attention import attend, attention_logits

x = torch.randn(1, 5, 2, 8)
a = angles(torch.arange(5), inv_freq(8))
meta = torch.empty(1, 5, 2, 8, device="meta")

CASES = [  # (id, call, exception, the argument its message must name)
    ("odd dim", lambda: inv_freq(7), ValueError, "dim"),
    ("zero dim", lambda: inv_freq(0), ValueError, "dim"),
    ("float dim", lambda: inv_freq(8.0), TypeError, "dim"),
    ("zero base", lambda: inv_freq(8, base=0), ValueError, "base"),
    ("negative base", lambda: inv_freq(8, base=-10000.0), ValueError, "base"),
    ("inf base", lambda: inv_freq(8, base=float("inf")), ValueError, "base"),
    ("string base", lambda: inv_freq(8, base="1e4"), TypeError, "base"),
    ("nan positions", lambda: angles(torch.tensor([0.0, float("nan")]), inv_freq(8)), ValueError, "positions"),
    ("inf positions", lambda: angles(torch.tensor([0.0, float("inf")]), inv_freq(8)), ValueError, "positions"),
    ("empty positions", lambda: angles(torch.arange(0), inv_freq(8)), ValueError, "positions"),
    ("complex positions", lambda: angles(torch.arange(3) * 1j, inv_freq(8)), TypeError, "positions"),
    ("3-D positions", lambda: angles(torch.zeros(2, 2, 2), inv_freq(8)), ValueError, "positions"),
    ("2-D inv_freq", lambda: angles(torch.arange(3), torch.ones(2, 2)), ValueError, "inv_freq"),
    ("half-precision angles", lambda: angles(torch.arange(3), inv_freq(8), torch.float16), TypeError, "dtype"),
    ("integer x", lambda: rotate(torch.ones(1, 5, 2, 8, dtype=torch.int64), a), TypeError, "x"),
    ("complex x", lambda: rotate(torch.ones(1, 5, 2, 8, dtype=torch.complex64), a), TypeError, "x"),
    ("3-D x", lambda: rotate(torch.ones(5, 2, 8), a), ValueError, "x"),
    ("empty x", lambda: rotate(torch.ones(1, 5, 0, 8), a), ValueError, "x"),
    ("angles wider than D/2", lambda: rotate(torch.ones(1, 5, 2, 6), a), ValueError, "angles"),
    ("angles for other T", lambda: rotate(torch.ones(1, 4, 2, 8), a), ValueError, "angles"),
    ("angles for other batch", lambda: rotate(torch.ones(2, 5, 2, 8), a.expand(3, 5, 4)), ValueError, "angles"),
    ("integer angles", lambda: rotate(x, torch.ones(5, 4, dtype=torch.int64)), TypeError, "angles"),
    ("unknown layout", lambda: rotate(x, a, layout="neox"), ValueError, "layout"),
    ("q and k on different devices", lambda: apply_rotary(x, meta, a), ValueError, "k"),
    ("k of another head dim", lambda: apply_rotary(x, torch.ones(1, 5, 2, 10), a), ValueError, "k"),
    ("k of another length", lambda: apply_rotary(x, torch.ones(1, 6, 2, 8), a), ValueError, "k"),
    ("unknown backend", lambda: apply_rotary(x, x, a, backend="cuda"), ValueError, "backend"),
    ("integer q to the kernel", lambda: apply_rotary(x.long(), x, a), TypeError, "q"),
    ("strided last dim for Triton", lambda: apply_rotary(torch.randn(1, 5, 2, 16)[..., ::2], None, a, backend="triton"), ValueError, "q"),
    ("axis_map of wrong length", lambda: apply_rotary_positions(x, x, torch.zeros(3, 5), inv_freq(8), torch.tensor([0, 1])), ValueError, "axis_map"),
    ("axis_map past the axes", lambda: apply_rotary_positions(x, x, torch.zeros(2, 5), inv_freq(8), torch.tensor([0, 1, 2, 2])), ValueError, "axis_map"),
    ("positions of another length", lambda: apply_rotary_positions(x, x, torch.arange(4), inv_freq(8)), ValueError, "positions"),
    ("unknown encoding", lambda: get("ropee"), ValueError, "rope"),  # suggests the closest name
    ("odd rope dim", lambda: get("rope", dim=7), ValueError, "dim"),
    ("non-positive rope base", lambda: get("rope", base=-1.0), ValueError, "base"),
    ("unknown parameter", lambda: get("rope", theta=5.0), TypeError, "theta"),
    ("partial rotary of an odd width", lambda: get("rope", dim=10, partial_rotary_factor=0.5), ValueError, "partial_rotary_factor"),
    ("partial rotary factor above 1", lambda: get("rope", partial_rotary_factor=1.5), ValueError, "partial_rotary_factor"),
    ("unknown family", lambda: names("rotory"), ValueError, "family"),
    ("heads not a multiple", lambda: attend(torch.ones(1, 5, 3, 8), torch.ones(1, 5, 2, 8), torch.ones(1, 5, 2, 8)), ValueError, "heads"),
    ("v of another shape", lambda: attend(x, x, torch.ones(1, 4, 2, 8)), ValueError, "v"),
    ("encoding given by name", lambda: attention_logits(x, x, "rope"), TypeError, "encoding"),
    # issue 15: each case seen silently wrong or crashing deep before
    ("rope dim 16 on head dim 32", lambda: get("rope", dim=16).apply(q32, q32), ValueError, "head dim"),
    ("every rotary: head dim mismatch", lambda: get("yarn", dim=16).apply(q32, None), ValueError, "partial_rotary_factor"),
    ("in place with k the same tensor as q", lambda: (lambda t: apply_rotary(t, t, a, inplace=True))(x.clone()), ValueError, "`k` shares memory"),
    ("in place with k a view of q", lambda: (lambda t: apply_rotary(t, t[:, :, :1], a, inplace=True))(x.clone()), ValueError, "`k` shares memory"),
    ("T5 of 2 heads on 4 (triton)", lambda: attend(q4, q4, q4, get("t5", n_heads=2), backend="triton"), ValueError, "n_heads=2"),
    ("T5 of 2 heads on 4 (torch)", lambda: attend(q4, q4, q4, get("t5", n_heads=2), backend="torch"), ValueError, "n_heads=2"),
    ("ALiBi of 8 heads on 4 (torch)", lambda: attend(q4, q4, q4, get("alibi", n_heads=8), backend="torch"), ValueError, "n_heads=8"),
    ("ALiBi of 8 heads on 4 (triton)", lambda: attend(q4, q4, q4, get("alibi", n_heads=8), backend="triton"), ValueError, "n_heads=8"),
    ("causal with Tq > Tk (torch)", lambda: attend(q4, q4[:, :4], q4[:, :4], get("rope", dim=8), backend="torch"), ValueError, "Tq <= Tk"),
    ("causal with Tq > Tk (logits)", lambda: attention_logits(q4, q4[:, :4]), ValueError, "Tq <= Tk"),
    ("causal='no'", lambda: attend(x, x, x, causal="no"), TypeError, "causal"),
    ("causal=None", lambda: attention_logits(x, x, causal=None), TypeError, "causal"),
    ("integer inv_freq dtype", lambda: inv_freq(8, dtype=torch.int64), TypeError, "dtype"),
    ("string inv_freq dtype", lambda: inv_freq(8, dtype="float32"), TypeError, "dtype"),
    ("positions on meta", lambda: get("rope", dim=8).apply(x, x, torch.arange(5, device="meta")), ValueError, "meta"),
    ("NaN inv_freq", lambda: angles(torch.arange(5), torch.tensor([1.0, float("nan")])), ValueError, "inv_freq"),
    ("NaN angles", lambda: apply_rotary(x, x, a * float("nan")), ValueError, "angles"),
    ("inf angles (triton)", lambda: apply_rotary(x, x, a * float("inf"), backend="triton"), ValueError, "angles"),
    ("NaN scale", lambda: apply_rotary(x, x, a, scale=float("nan")), ValueError, "scale"),
    ("zero scale", lambda: apply_rotary(x, x, a, scale=0.0), ValueError, "scale"),
    ("inplace='yes'", lambda: apply_rotary(x, x, a, inplace="yes"), TypeError, "inplace"),
    ("float64 on the Triton kernel", lambda: apply_rotary(x.double(), None, a, backend="triton"), ValueError, "float64"),
    ("float64 angles to wrap_angles only", lambda: wrap_angles(a), TypeError, "float64"),
]
q32 = torch.randn(1, 5, 2, 32)
q4 = torch.randn(1, 8, 4, 8)

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc) as info: call()
    assert arg in str(info.value), f"message does not name `{arg}`: {info.value}"

def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'rope'"): get("rop")

def test_table_is_large_enough(): assert len(CASES) >= 20


def _rope_f64(q, pos, D):
    "RoPE in float64 from the formula: base**(-2i/D), the float64 product reduced mod 2π, the half layout"
    f = 1.0 / 10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.remainder(pos.double()[:, None] * f, 2 * math.pi)
    c, s = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = q[..., :D // 2].double(), q[..., D // 2:].double()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

@pytest.mark.parametrize("P", [2**20, 2**24, 2**31 - 3])
@pytest.mark.parametrize("route", ["torch", "triton", "triton positions", "float64"])
def test_far_positions_right_to_float32_rounding(P, route):
    "Angles at positions up to 2**31 are right to float32 rounding (before the fix: 7e-3, 0.35 and 1.2 relative error)"
    torch.manual_seed(0)
    D, pos = 128, torch.tensor([P - 1, P, P + 1])
    enc, q = get("rope", dim=D), torch.randn(1, 3, 2, D)
    if route == "float64": got = enc.apply(q.double(), None, pos)[0]
    elif route == "triton positions": got = apply_rotary_positions(q, None, pos, enc.inv_freq, backend="triton")[0]
    else: got = enc.apply(q, None, pos, backend=route)[0]
    err = ((got.double() - _rope_f64(q, pos, D)).norm(dim=-1) / q.double().norm(dim=-1)).max().item()
    assert err < (1e-7 if route == "float64" else 3e-7), err  # float32 rounding of a unit rotation: ~6e-8 per component

def test_float64_rope_at_a_million():
    "float64 activations keep float64 frequencies: RoPE at position 10**6 was off by 2.3e-2 with float32 inv_freq"
    q = torch.randn(1, 1, 2, 128, dtype=torch.float64)
    got = get("rope", dim=128).apply(q, None, torch.tensor([10**6]))[0]
    assert (got - _rope_f64(q, torch.tensor([10**6]), 128)).abs().max() < 1e-9
