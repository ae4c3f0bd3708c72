"""ALiBi and T5 bias (posexplorer.encodings.classics.bias) against outside references: Hugging Face's BLOOM slopes and T5 buckets and
bias, flash-attention's documented ALiBi formula, tables computed by hand; plus bad input."""
import math
import numpy as np
import pytest
import torch
from conftest import DEVICES
from posexplorer.core import get
from posexplorer.ops.attention import attend, attention_logits, attention_probs
from posexplorer.encodings.classics.bias import ALiBi, T5Bias, alibi_slopes, t5_bucket

bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
t5_mod = pytest.importorskip("transformers.models.t5.modeling_t5")
from transformers import T5Config

# ---- ALiBi slopes ---------------------------------------------------------------------------------------
def test_slopes_8_heads_exact():
    assert torch.equal(alibi_slopes(8), torch.tensor([2.0 ** -h for h in range(1, 9)]))

HAND = {  # the paper's rule for powers of two, the official code's for the rest, written out
    1: [2 ** -8],
    2: [2 ** -4, 2 ** -8],
    3: [2 ** -4, 2 ** -8, 2 ** -2],  # c = 2, then the 4-head slope 2^-2 from between
    6: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3],
    12: [2 ** -h for h in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5],
}

@pytest.mark.parametrize("H", sorted(HAND))
def test_slopes_by_hand(H):
    torch.testing.assert_close(alibi_slopes(H, torch.float64), torch.tensor(HAND[H], dtype=torch.float64), rtol=1e-15, atol=0)

@pytest.mark.parametrize("H", range(1, 65))
def test_slopes_match_bloom(H):
    "BLOOM raises a float32 base to integer powers; ours are rounded once from float64: equal to ~1e-6"
    hf = bloom.build_alibi_tensor(torch.ones(1, 2), H, torch.float32)[:, 0, 1]  # (H,) slope * key position 1
    torch.testing.assert_close(alibi_slopes(H), hf, rtol=1e-6, atol=0)
    assert torch.equal(alibi_slopes(H), alibi_slopes(H, torch.float64).float())

def test_alibi_probs_match_bloom_causal():
    "BLOOM adds slope * j to every row; under a causal mask the softmax is the same as with -slope * (i - j)"
    H, T = 12, 29
    q, k = torch.randn(2, 1, T, H, 16, generator=torch.Generator().manual_seed(1))
    rows = bloom.build_alibi_tensor(torch.ones(1, T), H, torch.float32).view(1, H, 1, T)
    ref = (attention_logits(q, k) + rows).softmax(-1)
    torch.testing.assert_close(attention_probs(q, k, get("alibi", n_heads=H)), ref, rtol=1e-5, atol=1e-6)

@pytest.mark.parametrize("Tq,Tk", [(7, 7), (5, 12), (1, 9)])
def test_alibi_matches_flash_attention_formula(Tq, Tk):
    "flash-attention's alibi_slopes: a bias of -slope * |i + Tk - Tq - j| for query i and key j, without a causal mask"
    enc = get("alibi", n_heads=6)
    q, k = torch.randn(1, Tq, 6, 8), torch.randn(1, Tk, 6, 8)
    i, j = torch.arange(Tq)[:, None], torch.arange(Tk)[None, :]
    want = attention_logits(q, k, causal=False) - enc.slopes[:, None, None] * (i + Tk - Tq - j).abs().float()
    torch.testing.assert_close(attention_logits(q, k, enc, causal=False), want)

def test_alibi_kernel_forms_agree_with_bias():
    enc = ALiBi(n_heads=5)
    qp, kp = torch.tensor([3, 9, 10]), torch.arange(-4, 14)
    b = enc.bias(qp, kp)
    assert torch.equal(b, -enc.linear_slopes()[:, None, None] * (kp[None, :] - qp[:, None]).abs().float())
    assert torch.equal(enc.relative_bias(kp[None, :] - qp[:, None]), b)
    assert torch.equal(enc.relative_bias(torch.arange(-3, 4)), enc.relative_bias(torch.arange(-3, 4).flip(0)).flip(-1))

# ---- T5 buckets -----------------------------------------------------------------------------------------
SETTINGS = [(bi, B, M) for bi in (True, False) for B, M in [(32, 128), (8, 20), (16, 64), (64, 256), (128, 500), (32, 1000)]]

@pytest.mark.parametrize("bidirectional,num_buckets,max_distance", SETTINGS)
def test_buckets_match_hf(bidirectional, num_buckets, max_distance):
    r = torch.arange(-1000, 1001)
    hf = t5_mod.T5Attention._relative_position_bucket(r, bidirectional, num_buckets, max_distance)
    assert torch.equal(t5_bucket(r, bidirectional, num_buckets, max_distance), hf)
    assert torch.equal(t5_bucket(r.view(3, 23, 29), bidirectional, num_buckets, max_distance), hf.view(3, 23, 29))  # any shape

HAND_BUCKETS = {  # from the formula by hand, defaults (32 buckets, max_distance 128)
    True: {0: 0, -1: 1, 1: 17, -7: 7, 7: 23, -8: 8, 8: 24, -11: 8, -12: 9, -15: 9, -16: 10, -22: 10, -23: 11, -32: 12,
           -45: 12, -46: 13, -64: 14, -90: 14, -91: 15, -128: 15, -1000: 15, 91: 31, 1000: 31},
    False: {5: 0, 1: 0, 0: 0, -1: 1, -15: 15, -16: 16, -18: 16, -19: 17, -32: 21, -64: 26, -112: 30, -113: 31, -128: 31, -10 ** 6: 31},
}

@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_by_hand(bidirectional):
    table = HAND_BUCKETS[bidirectional]
    assert t5_bucket(torch.tensor(list(table)), bidirectional).tolist() == list(table.values())
    assert t5_bucket(torch.tensor(list(table), dtype=torch.int32), bidirectional).dtype == torch.int64

# ---- T5 bias --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("Tq,Tk,past", [(37, 37, 0), (1, 200, 199), (8, 150, 142)])
def test_t5_bias_matches_hf_compute_bias(is_decoder, Tq, Tk, past):
    cfg = T5Config(d_model=64, d_kv=16, num_heads=6, is_decoder=is_decoder, relative_attention_num_buckets=32, relative_attention_max_distance=128)
    torch.manual_seed(0)
    layer = t5_mod.T5Attention(cfg, has_relative_attention_bias=True)
    torch.nn.init.normal_(layer.relative_attention_bias.weight)
    enc = T5Bias.from_hf(layer)
    assert (enc.n_heads, enc.num_buckets, enc.max_distance, enc.bidirectional) == (6, 32, 128, not is_decoder)
    hf = layer.compute_bias(Tq, Tk, past_seen_tokens=past)[0]  # (H, Tq, Tk)
    assert torch.equal(enc.bias(torch.arange(Tq) + past, torch.arange(Tk)), hf)

def test_t5_from_hf_needs_the_table():
    layer = t5_mod.T5Attention(T5Config(d_model=64, d_kv=16, num_heads=2), has_relative_attention_bias=False)
    with pytest.raises(ValueError, match="relative_attention_bias"): T5Bias.from_hf(layer)

def test_t5_table_gradient_counts_pairs():
    "The bias is a gather from the table: d(sum of bias)/d table[h, b] = the number of (q, k) pairs in bucket b"
    enc = T5Bias(n_heads=3, bidirectional=True)
    enc.table.requires_grad_(True)
    p = torch.arange(300)
    enc.bias(p, p).sum().backward()
    counts = torch.bincount(t5_bucket(p[None, :] - p[:, None], True).flatten(), minlength=32).float()
    assert torch.equal(enc.table.grad, counts.expand(3, -1))

def test_inputs_untouched_and_seeded():
    qp, kp = torch.arange(10), torch.arange(3, 17)
    qc, kc = qp.clone(), kp.clone()
    for enc in (ALiBi(4), T5Bias(4)): enc.bias(qp, kp)
    assert torch.equal(qp, qc) and torch.equal(kp, kc)
    assert torch.equal(T5Bias(4, seed=3).table, T5Bias(4, seed=3).table) and not torch.equal(T5Bias(4, seed=3).table, T5Bias(4, seed=4).table)
    assert T5Bias(2, init_std=0.5).table.abs().max() < T5Bias(2).table.abs().max()

@pytest.mark.parametrize("device", DEVICES)
def test_device_follows_positions(device):
    p = torch.arange(11, device=device)
    for enc in (ALiBi(3), T5Bias(3)):
        b = enc.bias(p, p)
        assert b.device.type == device and b.shape == (3, 11, 11)
        assert torch.equal(b.cpu(), enc.bias(p.cpu(), p.cpu()))

@pytest.mark.parametrize("name,params", [("alibi", {}), ("t5", {}), ("t5", {"bidirectional": True})])
def test_attention_kernel_uses_the_compact_forms(name, params):
    "The attention kernel reads linear_slopes() or relative_bias(offsets); it must equal the torch reference"
    enc = get(name, n_heads=4, **params)
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 23, 4, 16, generator=g), torch.randn(1, 23, 2, 16, generator=g), torch.randn(1, 23, 2, 16, generator=g)
    for causal in (True, False):
        torch.testing.assert_close(attend(q, k, v, enc, causal=causal, backend="triton"), attend(q, k, v, enc, causal=causal, backend="torch"), atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize("H", [np.int64(8), np.int32(12), np.uint8(5), np.int64(1)])
def test_alibi_accepts_numpy_integers(H):
    "A head count read from a numpy array or a config is any `numbers.Integral`: the same slopes as the Python int"
    assert torch.equal(alibi_slopes(H), alibi_slopes(int(H))) and torch.equal(alibi_slopes(H, torch.float64), alibi_slopes(int(H), torch.float64))
    assert torch.equal(get("alibi", n_heads=H).slopes, alibi_slopes(int(H)))

# ---- bad input ------------------------------------------------------------------------------------------
r = torch.arange(-5, 6)
p = torch.arange(4)
CASES = [  # (id, call, exception, the argument its message must name)
    ("zero heads", lambda: alibi_slopes(0), ValueError, "n_heads"),
    ("negative heads", lambda: alibi_slopes(-8), ValueError, "n_heads"),
    ("float heads", lambda: alibi_slopes(8.0), TypeError, "n_heads"),
    ("bool heads", lambda: alibi_slopes(True), TypeError, "n_heads"),
    ("string heads", lambda: alibi_slopes("8"), TypeError, "n_heads"),
    ("numpy float heads", lambda: alibi_slopes(np.float64(8.0)), TypeError, "n_heads"),
    ("numpy bool heads", lambda: alibi_slopes(np.bool_(True)), TypeError, "n_heads"),
    ("numpy zero heads", lambda: alibi_slopes(np.int64(0)), ValueError, "n_heads"),
    ("half-precision slopes", lambda: alibi_slopes(8, torch.float16), TypeError, "dtype"),
    ("alibi zero heads", lambda: get("alibi", n_heads=0), ValueError, "n_heads"),
    ("alibi float heads", lambda: get("alibi", n_heads=2.5), TypeError, "n_heads"),
    ("alibi unknown parameter", lambda: get("alibi", slopes=[0.5]), TypeError, "slopes"),
    ("alibi 2-D positions", lambda: ALiBi().bias(torch.zeros(2, 3), p), ValueError, "q_positions"),
    ("alibi empty positions", lambda: ALiBi().bias(p, torch.arange(0)), ValueError, "k_positions"),
    ("alibi nan positions", lambda: ALiBi().bias(torch.tensor([0.0, math.nan]), p), ValueError, "q_positions"),
    ("alibi list positions", lambda: ALiBi().bias([0, 1], p), TypeError, "q_positions"),
    ("alibi complex offsets", lambda: ALiBi().relative_bias(r * 1j), TypeError, "offsets"),
    ("alibi bool offsets", lambda: ALiBi().relative_bias(r > 0), TypeError, "offsets"),
    ("float offsets to buckets", lambda: t5_bucket(r.float()), TypeError, "relative_position"),
    ("list offsets to buckets", lambda: t5_bucket([1, 2]), TypeError, "relative_position"),
    ("odd buckets, bidirectional", lambda: t5_bucket(r, True, 31), ValueError, "num_buckets"),
    ("too few buckets, bidirectional", lambda: t5_bucket(r, True, 2), ValueError, "num_buckets"),
    ("too few buckets, decoder", lambda: t5_bucket(r, False, 1), ValueError, "num_buckets"),
    ("float buckets", lambda: t5_bucket(r, True, 32.0), TypeError, "num_buckets"),
    ("max_distance inside the exact buckets", lambda: t5_bucket(r, True, 32, 8), ValueError, "max_distance"),
    ("max_distance inside the exact buckets, decoder", lambda: t5_bucket(r, False, 32, 16), ValueError, "max_distance"),
    ("zero max_distance", lambda: t5_bucket(r, True, 32, 0), ValueError, "max_distance"),
    ("float max_distance", lambda: t5_bucket(r, True, 32, 128.0), TypeError, "max_distance"),
    ("bidirectional not a bool", lambda: t5_bucket(r, "yes"), TypeError, "bidirectional"),
    ("t5 zero heads", lambda: get("t5", n_heads=0), ValueError, "n_heads"),
    ("t5 odd buckets, bidirectional", lambda: get("t5", num_buckets=31, bidirectional=True), ValueError, "num_buckets"),
    ("t5 max_distance too small", lambda: get("t5", max_distance=16), ValueError, "max_distance"),
    ("t5 negative seed", lambda: get("t5", seed=-1), ValueError, "seed"),
    ("t5 float seed", lambda: get("t5", seed=1.5), TypeError, "seed"),
    ("t5 zero init_std", lambda: get("t5", init_std=0.0), ValueError, "init_std"),
    ("t5 bidirectional as int", lambda: get("t5", bidirectional=1), TypeError, "bidirectional"),
    ("t5 float positions", lambda: T5Bias().bias(p.float(), p), TypeError, "q_positions"),
    ("t5 float offsets", lambda: T5Bias().relative_bias(r.float()), TypeError, "offsets"),
    ("t5 list offsets", lambda: T5Bias().relative_bias([0, 1]), TypeError, "offsets"),
    ("t5 2-D key positions", lambda: T5Bias().bias(p, p.view(2, 2)), ValueError, "k_positions"),
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc) as info: call()
    assert f"`{arg}`" in str(info.value) or arg in str(info.value), f"message does not name `{arg}`: {info.value}"
