"""DPRoPE (Wu et al., EMNLP 2024, arXiv 2410.01490) checked from outside the project: the authors' selection logic
(1180301012/DPRoPE, DPRope.py, DPRopeClass) re-implemented here independently, the paper's Table 3, Hugging Face's
PI frequencies, and bad input."""
import math
import pytest
import torch
import torch.nn.functional as F
from posexplorer.core import FrequencyRotary, get, inv_freq
from posexplorer.encodings.context.dprope import DPRoPE, COUNT_EPS, pair_histograms
from posexplorer.encodings.context.dprope import distribution_disturbance

pytestmark = pytest.mark.filterwarnings("ignore:reduction:UserWarning")  # F.kl_div(reduction='mean'), as the authors call it

# ---- the authors' logic, written again ---------------------------------------------------------------------------------
def code_inv_freq(theta, d, dtype=torch.float32):
    "DPRopeClass._get_inv_freq: float32 throughout, as the authors; `dtype=torch.float64` runs the same steps in float64"
    return 1 / (theta ** (torch.arange(0, d, 2, dtype=dtype) / d))

def code_distribution(f, T, b):
    "DPRopeClass._get_rotation_angles: angles mod 2π in the dtype of f (the code's: float32), floor into b intervals, counts start at float16's tiny, / T"
    a = (f[:, None] * torch.arange(T)[None]) % (torch.pi * 2)  # (d/2, T)
    counts = torch.full((len(f), b), torch.finfo(torch.float16).tiny, dtype=f.dtype)
    return counts.scatter_add_(1, torch.floor((b / (torch.pi * 2)) * a).long(), torch.ones_like(a)) / T

def code_similarity(orig, scaled):
    "DPRopeClass._compute_distribution_similarity: F.kl_div(scaled.log(), orig, 'mean') per pair = KL(orig || scaled) / b"
    return torch.stack([F.kl_div(scaled[i].log(), orig[i], reduction="mean") for i in range(len(orig))])

def code_dprope(theta=10000, L=4096, d=128, s=4, b=360, target=None, dtype=torch.float32):
    "DPRopeClass.get_dprope_inv_freq: (interpolated mask, inv_freq, similarities (2, d/2)) with argmin over [extrap, interp]"
    f, target = code_inv_freq(theta, d, dtype), target or L * s
    orig = code_distribution(f, L, b)
    sims = torch.stack([code_similarity(orig, code_distribution(g, target, b)) for g in (f, f / s)])
    interp = sims.argmin(0) == 1
    return interp, torch.where(interp, f / s, f), sims

def code_table3(freqs, s, L=4096, d=128, b=360):
    "Table 3's 𝒟 (×10⁻³): mean over pairs of KL(P_L || P_L') summed over bins, with the code's histograms"
    orig = code_distribution(code_inv_freq(10000, d), L, b)
    return 1e3 * (b * code_similarity(orig, code_distribution(freqs, s * L, b))).mean().item()

# ---- Hugging Face's frequencies -------------------------------------------------------------------------------------------
tf = pytest.importorskip("transformers")
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

def hf_inv_freq(rope_type, s):
    "LLaMA-2-7B's rotary frequencies under Hugging Face's `linear` (PI) or `yarn` with factor s"
    params = dict(rope_type=rope_type, rope_theta=10000.0, factor=float(s))
    if rope_type == "yarn": params["original_max_position_embeddings"] = 4096
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=4096 * s, rope_parameters=params)
    return ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")[0]

class Freqs(FrequencyRotary):
    "A rotary encoding with given frequencies, to measure outside frequencies with our function"
    def __init__(self, f): self.inv_freq = f

# ---- the choice ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,L,s,b", [(16, 256, 2, 360), (32, 512, 4, 360), (64, 2048, 3, 180), (128, 4096, 2, 90),
                                     (128, 4096, 2, 360), (128, 4096, 4, 360), (128, 4096, 6, 360), (128, 4096, 8, 360), (128, 4096, 4, 720)])
def test_choice_matches_the_authors_code(d, L, s, b):
    "The authors' rule (KL direction, smoothing, argmin, ties) run on our float64 θ_i and float64 angles: the same choice, the same θ̂_i bit for bit"
    interp, code_f, _ = code_dprope(L=L, d=d, s=s, b=b, dtype=torch.float64)
    enc = get("dprope", dim=d, factor=float(s), original_max_position_embeddings=L, bins=b)
    assert torch.equal(enc.interpolated, interp) and torch.equal(enc.inv_freq, code_f)

@pytest.mark.parametrize("s,b", [(2, 90), (2, 360), (4, 360), (6, 360), (8, 360), (4, 720)])
def test_choice_differs_from_the_code_only_on_near_ties(s, b):
    """The authors' float32 code: its θ_i are off by up to 2⁻²⁴ of themselves and its products m·θ_i by up to m·2⁻²⁴ rad (1.5e-3 rad at
    m = 24576, a tenth of a 1° bin), which moves positions across bin edges. Only pairs that both measures decide by < 3e-4 nats flip."""
    interp, _, sims = code_dprope(s=s, b=b)
    enc = get("dprope", dim=128, factor=float(s), bins=b)
    gap = (enc.disturbance_extrapolation - enc.disturbance_interpolation).abs()
    code_gap = b * (sims[0] - sims[1]).abs()  # the code's F.kl_div 'mean' is KL / b
    differ = enc.interpolated != interp
    assert differ.sum() <= 4 and (gap[differ] < 3e-4).all() and (code_gap[differ] < 3e-4).all()

@pytest.mark.parametrize("s,L,d", [(2.5, 1000, 32), (1.5, 4096, 128)])
def test_fractional_factor_uses_ceil_of_sL(s, L, d):
    "The code needs an int target length (torch.repeat); with target = ceil(sL) it agrees with ours"
    enc = get("dprope", dim=d, factor=s, original_max_position_embeddings=L)
    assert enc.extended_length == math.ceil(s * L)
    assert torch.equal(enc.interpolated, code_dprope(L=L, d=d, s=s, target=math.ceil(s * L), dtype=torch.float64)[0])

@pytest.mark.parametrize("s", [2, 4])
def test_inv_freq_is_hf_rope_or_hf_linear(s):
    "Extrapolated pairs keep Hugging Face's LLaMA-2 frequencies, interpolated ones get Hugging Face's `linear` (PI) ones"
    enc, pi = get("dprope", dim=128, factor=float(s)), hf_inv_freq("linear", s)
    torch.testing.assert_close(enc.inv_freq.float(), torch.where(enc.interpolated, pi, pi * s), rtol=1e-6, atol=0)  # HF's float32 θ_i
    assert enc.attention_scale == 1.0  # no temperature, in the paper or the code
    assert int(enc.interpolated.sum()) == {2: 46, 4: 42}[s]  # the float32 code: 47 at s = 2; pair 3 is a tie (5e-7 nats ours, 2e-5 the code's)

def test_threshold_moves_the_choice():
    rope, big, low = get("rope", dim=64), get("dprope", dim=64, factor=2.0, threshold=10.0), get("dprope", dim=64, factor=2.0, threshold=-10.0)
    assert not big.interpolated.any() and torch.equal(big.inv_freq, rope.inv_freq)
    assert low.interpolated.all() and torch.equal(low.inv_freq, rope.inv_freq / 2)
    t0 = get("dprope", dim=64, factor=2.0)
    t = get("dprope", dim=64, factor=2.0, threshold=1e-3)
    assert (t.interpolated <= t0.interpolated).all() and t.interpolated.sum() < t0.interpolated.sum()

def test_factor_one_and_partial_rotary():
    assert isinstance(get("dprope", dim=32), DPRoPE) and not get("dprope", dim=32, factor=1.0).interpolated.any()
    part, full = get("dprope", dim=80, partial_rotary_factor=0.4, factor=2.0), get("dprope", dim=32, factor=2.0)
    assert part.rotary_dim == 32 and torch.equal(part.interpolated, full.interpolated) and torch.equal(part.inv_freq, full.inv_freq)

def test_slow_pairs_interpolated_and_never_worse_than_pi():
    for s in (2.0, 3.0, 8.0):
        enc = get("dprope", dim=128, factor=s)
        slow = 2 * math.pi / inv_freq(128, dtype=torch.float64) > 4096  # pairs that never complete a turn within L
        assert enc.interpolated[slow].all()
        mine = torch.minimum(enc.disturbance_extrapolation, enc.disturbance_interpolation)
        assert torch.equal(torch.where(enc.interpolated, enc.disturbance_interpolation, enc.disturbance_extrapolation), mine)
        assert (mine <= enc.disturbance_interpolation).all()  # PI's disturbance, pair by pair

# ---- the paper's Table 3 ------------------------------------------------------------------------------------------------
TABLE3 = {2: dict(PI=24.08, YaRN=25.55, DPRoPE=6.71), 4: dict(PI=33.67, YaRN=35.44, DPRoPE=22.92)}  # ×10⁻³

@pytest.mark.parametrize("s", [2, 4])
def test_table3_with_the_authors_histograms(s):
    "The authors' estimator on Hugging Face's PI and YaRN and on the code's own choice reproduces Table 3"
    got = dict(PI=code_table3(hf_inv_freq("linear", s), s), YaRN=code_table3(hf_inv_freq("yarn", s), s),
               DPRoPE=code_table3(code_dprope(s=s)[1], s))
    assert abs(got["PI"] - TABLE3[s]["PI"]) < 0.01 and abs(got["DPRoPE"] - TABLE3[s]["DPRoPE"]) < 0.015, got
    assert abs(got["YaRN"] / TABLE3[s]["YaRN"] - 1) < 3e-3, got  # the paper's YaRN setup is not given in full

@pytest.mark.parametrize("s", [2, 4])
def test_table3_with_our_measure(s):
    "distribution_disturbance on the same frequencies: within 0.3% of Table 3, and the claimed 72% / 32% reduction"
    rope = get("rope", dim=128)
    def D(f): return 1e3 * distribution_disturbance(Freqs(f), 4096, 4096 * s, reference=rope).mean().item()
    got = dict(PI=D(hf_inv_freq("linear", s)), YaRN=D(hf_inv_freq("yarn", s)), DPRoPE=D(get("dprope", dim=128, factor=float(s)).inv_freq))
    for m, v in got.items(): assert abs(v / TABLE3[s][m] - 1) < 3e-3, (m, v)
    assert round(1 - got["DPRoPE"] / min(got["PI"], got["YaRN"]), 2) == {2: 0.72, 4: 0.32}[s]

def test_direction_printed_in_eq8_does_not_give_table3():
    "KL(P_L' || P_L), eq. (8) as printed, is about five times Table 3's value for PI at 8k whatever ε in [1e-8, 1e-6]"
    rope, pi = get("rope", dim=128), Freqs(hf_inv_freq("linear", 2))
    for eps in (1e-8, 1e-7, 1e-6):
        train, ext = pair_histograms(rope.inv_freq, 4096), pair_histograms(pi.inv_freq, 8192)
        p, q = (ext + eps) / (1 + 360 * eps), (train + eps) / (1 + 360 * eps)
        assert 1e3 * (p * (p / q).log()).sum(-1).mean() > 4 * TABLE3[2]["PI"]

# ---- precision at large positions ------------------------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # positions where a float32 θ_i or a float32 angle would be off by radians

def test_far_positions_match_float64_reference():
    "θ̂_i = b^(−2i/d), or that / s where interpolated, in float64: float32 apply at m up to 2³¹ − 1 right to float32 rounding"
    enc = get("dprope", dim=64, factor=4.0, original_max_position_embeddings=1024)
    theta = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    theta = torch.where(enc.interpolated, theta / 4, theta)
    q = torch.randn(1, len(FAR), 3, 64)
    a, x = torch.remainder(FAR.double()[:, None] * theta, 2 * math.pi)[None, :, None], q.double()  # (1, T, 1, R), half layout
    ref = torch.cat([x[..., :32] * a.cos() - x[..., 32:] * a.sin(), x[..., 32:] * a.cos() + x[..., :32] * a.sin()], -1)
    torch.testing.assert_close(enc.apply(q, None, FAR, backend="torch")[0].double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(enc.angles(FAR, torch.float64), FAR.double()[:, None] * theta, rtol=1e-15, atol=0)  # float64 throughout
    with pytest.raises(ValueError, match="head dim"): enc.apply(torch.randn(1, 3, 2, 80), None)  # partial rotary is asked for

# ---- histograms ---------------------------------------------------------------------------------------------------------
def test_pair_histograms():
    f = inv_freq(16)
    h = pair_histograms(f, 1000, 90)
    assert h.shape == (8, 90) and torch.allclose(h.sum(-1), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(h, code_distribution(f, 1000, 90) - torch.finfo(torch.float16).tiny / 1000, rtol=0, atol=1e-15)  # same θ, float64: the same bins
    code = code_distribution(f.float(), 1000, 90) - torch.finfo(torch.float16).tiny / 1000  # the authors' float32
    torch.testing.assert_close(h, code.double(), atol=2e-3, rtol=0)  # float32 binning moves a few positions across edges
    assert COUNT_EPS == torch.finfo(torch.float16).tiny

# ---- bad input ----------------------------------------------------------------------------------------------------------
BAD = [  # (params, exception, the argument its message must name)
    (dict(factor=0.5), ValueError, "factor"),
    (dict(factor=0.0), ValueError, "factor"),
    (dict(factor=float("inf")), ValueError, "factor"),
    (dict(factor=float("nan")), ValueError, "factor"),
    (dict(factor="2"), TypeError, "factor"),
    (dict(factor=True), TypeError, "factor"),
    (dict(original_max_position_embeddings=0), ValueError, "original_max_position_embeddings"),
    (dict(original_max_position_embeddings=4096.0), TypeError, "original_max_position_embeddings"),
    (dict(bins=1), ValueError, "bins"),
    (dict(bins=360.0), TypeError, "bins"),
    (dict(threshold=float("nan")), ValueError, "threshold"),
    (dict(threshold=float("inf")), ValueError, "threshold"),
    (dict(threshold="0"), TypeError, "threshold"),
    (dict(dim=7), ValueError, "dim"),
    (dict(partial_rotary_factor=0.0), ValueError, "partial_rotary_factor"),
]

@pytest.mark.parametrize("params,exc,arg", BAD, ids=[f"{next(iter(p))}={list(p.values())[0]!r}" for p, _, _ in BAD])
def test_bad_input(params, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"): get("dprope", **{"dim": 16, **params})

@pytest.mark.parametrize("call,exc,arg", [(lambda: pair_histograms(inv_freq(8), 0), ValueError, "length"),
                                          (lambda: pair_histograms(inv_freq(8), 16.0), TypeError, "length"),
                                          (lambda: pair_histograms(inv_freq(8), 16, bins=1), ValueError, "bins"),
                                          (lambda: distribution_disturbance(get("rope", dim=8), 64, 32), ValueError, "extended")])
def test_bad_input_to_the_measures(call, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"): call()
