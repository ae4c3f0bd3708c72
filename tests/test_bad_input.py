"Bad input raises a TypeError or ValueError that names the offending argument, never a silent wrong answer."
import pytest
import torch
from posexplorer import core
from posexplorer.core import angles, get, inv_freq, names, rotate
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
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc) as info: call()
    assert arg in str(info.value), f"message does not name `{arg}`: {info.value}"

def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'rope'"): get("rop")

def test_table_is_large_enough(): assert len(CASES) >= 20
