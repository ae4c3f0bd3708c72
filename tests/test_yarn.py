"""YaRN (`posexplorer.encodings.context.yarn`): parity with Hugging Face's `_compute_yarn_parameters` over plain, Qwen2.5-style,
DeepSeek-style, gpt-oss-style (truncate False) and partial-rotary configs; the paper's temperature at s = 2, 4, 8, 16;
the ramp's regions for LLaMA 2; the temperature on the logits; the kernel; bad input."""
import logging, math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, inv_freq
from posexplorer.ops.attention import attention_logits
from posexplorer.encodings.context.yarn import YaRN, correction_dim, correction_range, yarn_mscale, yarn_ramp

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _quiet_transformers():
    "Hugging Face logs warnings about config consistency; they are not what these tests check"
    logging.getLogger("transformers").setLevel(logging.ERROR)

def _hf(dim, params, partial=None):
    "Hugging Face's (inv_freq, attention_scaling) for rope_type 'yarn' with these rope_parameters"
    tf = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    L = int((params.get("factor") or 1) * params["original_max_position_embeddings"])
    rp = dict(rope_type="yarn", **params, **({"partial_rotary_factor": partial} if partial else {}))
    cfg = tf.LlamaConfig(hidden_size=2 * dim, num_attention_heads=2, head_dim=dim, max_position_embeddings=L, rope_parameters=rp)
    return ROPE_INIT_FUNCTIONS["yarn"](cfg, None)

def _ours(dim, params, partial=None):
    kw = dict(params); base = kw.pop("rope_theta")
    return get("yarn", dim=dim, base=base, **kw, **({"partial_rotary_factor": partial} if partial else {}))

# ---- Hugging Face parity --------------------------------------------------------------------------------
PLAIN = [(dict(rope_theta=10000.0, factor=s, original_max_position_embeddings=4096), 128) for s in (2.0, 4.0, 8.0, 16.0)]
QWEN = [(dict(rope_theta=1e6, factor=s, original_max_position_embeddings=32768), 128) for s in (2.0, 4.0, 8.0, 16.0)]
DEEPSEEK = [  # qk_rope_head_dim 64, factor 40, L₀ 4096; V2: 0.707/0.707, V3: 1.0/1.0; a mixed pair; one key alone (ignored)
    (dict(rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707), 64),
    (dict(rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0), 64),
    (dict(rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=0.707), 64),
    (dict(rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=0.707), 64),
]
OTHER = [
    (dict(rope_theta=150000.0, factor=32.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0, truncate=False), 64),  # gpt-oss
    (dict(rope_theta=10000.0, factor=16.0, original_max_position_embeddings=4096, truncate=False), 128),
    (dict(rope_theta=10000.0, factor=8.0, original_max_position_embeddings=2048, beta_fast=64.0, beta_slow=2.0), 96),
    (dict(rope_theta=500000.0, factor=4.0, original_max_position_embeddings=8192, attention_factor=1.25), 128),
    (dict(rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16, beta_fast=8.0, beta_slow=0.5), 16),  # ramp clipped at dim - 1
    (dict(rope_theta=10000.0, factor=1.0, original_max_position_embeddings=4096), 32),
]

@pytest.mark.parametrize("params,dim", PLAIN + QWEN + DEEPSEEK + OTHER)
def test_matches_hugging_face(params, dim):
    hf, hf_scale = _hf(dim, params)
    ours = _ours(dim, params)
    assert ours.inv_freq.dtype == torch.float64 and ours.inv_freq.shape == hf.shape
    torch.testing.assert_close(ours.inv_freq.float(), hf, rtol=1e-6, atol=0)  # ours: float64; theirs: float32 throughout, a few ulp (6e-8 each) off
    assert math.isclose(ours.attention_scale, hf_scale, rel_tol=1e-12)

@pytest.mark.parametrize("partial", [0.5, 0.25])
def test_partial_rotary_matches_hugging_face(partial):
    params = dict(rope_theta=10000.0, factor=8.0, original_max_position_embeddings=4096)
    hf, hf_scale = _hf(128, params, partial)
    ours = _ours(128, params, partial)
    assert ours.rotary_dim == int(128 * partial)
    torch.testing.assert_close(ours.inv_freq.float(), hf, rtol=1e-6, atol=0)  # HF computes in float32: a few ulp off

def test_rotary_embedding_forward_matches_hugging_face():
    "cos and sin of LlamaRotaryEmbedding (attention_scaling included) against ours past the original length"
    tf = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    rp = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=512)
    cfg = tf.LlamaConfig(hidden_size=128, num_attention_heads=2, max_position_embeddings=2048, rope_parameters=rp)
    pos = torch.arange(0, 2048, 7)[None]
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1), pos)  # (1, T, 64)
    ours = get("yarn", dim=64, factor=4.0, original_max_position_embeddings=512)
    a = ours.angles(pos[0])  # (T, 32)
    torch.testing.assert_close(cos[0], torch.cat([a.cos(), a.cos()], -1) * ours.attention_scale, rtol=1e-4, atol=2e-4)  # float32 angles up to 2048 rad
    torch.testing.assert_close(sin[0], torch.cat([a.sin(), a.sin()], -1) * ours.attention_scale, rtol=1e-4, atol=2e-4)

# ---- the paper's numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize("s,expected", [(2, 1.0693), (4, 1.1386), (8, 1.2079), (16, 1.2773)])
def test_temperature_matches_the_paper(s, expected):
    "√(1/t) = 0.1 ln s + 1 (YaRN, for LLaMA): the rotary scale, to 4 decimals"
    value = 0.1 * math.log(s) + 1
    assert round(value, 4) == expected
    assert math.isclose(get("yarn", factor=float(s)).attention_scale, value, rel_tol=1e-15)
    assert math.isclose(yarn_mscale(s), value, rel_tol=1e-15)

def test_temperature_multiplies_the_logits_by_one_over_t():
    q, k = torch.randn(2, 2, 31, 3, 32)
    scaled = attention_logits(q, k, get("yarn", dim=32, factor=8.0), backend="torch")
    plain = attention_logits(q, k, get("yarn", dim=32, factor=8.0, attention_factor=1.0), backend="torch")
    torch.testing.assert_close(scaled, plain * yarn_mscale(8.0) ** 2, rtol=1e-5, atol=1e-5)

def test_llama2_regions():
    "d = 128, θ = 10000, L₀ = 4096, β = 32/1: pairs 0–20 kept, 21–45 blended, 46–63 divided by s"
    assert correction_range(32, 1, 128, 10000.0, 4096) == (20, 46)
    g = get("yarn", dim=128, factor=16.0).gamma
    assert g[:21].eq(1).all() and g[46:].eq(0).all() and ((g[21:46] > 0) & (g[21:46] < 1)).all()
    f = inv_freq(128, dtype=torch.float64)
    torch.testing.assert_close(get("yarn", dim=128, factor=16.0).inv_freq.double(), (1 - g) * f / 16 + g * f, rtol=1e-7, atol=0)

def test_correction_dim_inverts_the_wavelength():
    for r in (0.5, 1.0, 32.0, 100.0):
        i = correction_dim(r, 64, 500000.0, 8192)
        assert math.isclose(8192 / (2 * math.pi * 500000.0 ** (2 * i / 64)), r, rel_tol=1e-12)

def test_untruncated_ramp_is_linear_in_log_turns():
    f = inv_freq(128, dtype=torch.float64)
    r = 4096 * f / (2 * math.pi)
    ramp = yarn_ramp(*correction_range(32, 1, 128, 10000.0, 4096, truncate=False), 64)
    torch.testing.assert_close(1 - ramp, (r.log() / math.log(32)).clamp(0, 1), rtol=0, atol=1e-12)
    assert yarn_ramp(3, 3, 6).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # zero-width ramp: the code's +0.001 guard

# ---- kernel ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch_with_scale(layout):
    enc = get("yarn", dim=40, partial_rotary_factor=0.8, factor=8.0, original_max_position_embeddings=32)  # 32 of 40 features rotate
    assert enc.rotary_dim == 32
    q, k = torch.randn(2, 53, 3, 40, device=DEV), torch.randn(2, 53, 1, 40, device=DEV)
    t, r = enc.apply(q, k, layout=layout, backend="triton"), enc.apply(q, k, layout=layout, backend="torch")
    torch.testing.assert_close(t[0], r[0], **TOL[torch.float32]); torch.testing.assert_close(t[1], r[1], **TOL[torch.float32])
    torch.testing.assert_close(r[0][..., 32:], q[..., 32:])  # pass-through features are not scaled
    torch.testing.assert_close(r[0][..., :32].norm(dim=-1), q[..., :32].norm(dim=-1) * enc.attention_scale, rtol=1e-5, atol=1e-5)

# ---- precision at large positions -----------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # positions where a float32 θ_i or a float32 angle would be off by radians

def rotate_reference(q, positions, theta, scale=1.0):
    "Float64 reference, half layout: pair i turned by m·θ_i reduced mod 2π, times `scale`; features past 2R pass through"
    R, x = len(theta), q.double()
    a = torch.remainder(positions.double()[:, None] * theta, 2 * math.pi)[None, :, None]  # (1, T, 1, R)
    x1, x2 = x[..., :R], x[..., R:2 * R]
    return torch.cat([(x1 * a.cos() - x2 * a.sin()) * scale, (x2 * a.cos() + x1 * a.sin()) * scale, x[..., 2 * R:]], -1)

def test_far_positions_match_float64_reference():
    "θ'_i from the reference code's rule, written out in float64: enc.apply in float32 at m up to 2³¹ − 1 is right to float32 rounding"
    d, b, s, L0 = 64, 10000.0, 16.0, 4096
    theta = b ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    i_of = lambda turns: d * math.log(L0 / (turns * 2 * math.pi)) / (2 * math.log(b))  # pair index making `turns` turns within L₀
    low, high = max(math.floor(i_of(32.0)), 0), min(math.ceil(i_of(1.0)), d - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # 0: kept, 1: divided by s
    ref_theta = theta * (1 - ramp) + theta / s * ramp
    enc = get("yarn", dim=d, factor=s, original_max_position_embeddings=L0)
    q = torch.randn(1, len(FAR), 3, d)
    out = enc.apply(q, None, FAR, backend="torch")[0]
    torch.testing.assert_close(out.double(), rotate_reference(q, FAR, ref_theta, 0.1 * math.log(s) + 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(enc.angles(FAR, torch.float64), FAR.double()[:, None] * ref_theta, rtol=1e-14, atol=0)  # float64 throughout

def test_head_dim_must_match():
    "Partial rotary is asked for with partial_rotary_factor, never inferred from a wider head"
    q = torch.randn(1, 5, 2, 36)
    with pytest.raises(ValueError, match="head dim"): get("yarn", dim=32).apply(q, q.clone())

# ---- bad input ------------------------------------------------------------------------------------------
BAD = [
    (dict(factor=0.5), ValueError, "factor"),
    (dict(factor=0.0), ValueError, "factor"),
    (dict(factor="4"), TypeError, "factor"),
    (dict(original_max_position_embeddings=0), ValueError, "original_max_position_embeddings"),
    (dict(original_max_position_embeddings=4096.0), TypeError, "original_max_position_embeddings"),
    (dict(beta_fast=1.0, beta_slow=1.0), ValueError, "beta_fast"),
    (dict(beta_fast=0.5), ValueError, "beta_fast"),
    (dict(beta_slow=0.0), ValueError, "beta_slow"),
    (dict(beta_fast=None), TypeError, "beta_fast"),
    (dict(mscale=-0.7), ValueError, "mscale"),
    (dict(mscale=float("inf")), ValueError, "mscale"),
    (dict(mscale_all_dim=float("nan")), ValueError, "mscale_all_dim"),
    (dict(attention_factor=0.0), ValueError, "attention_factor"),
    (dict(truncate="no"), TypeError, "truncate"),
    (dict(dim=7), ValueError, "dim"),
    (dict(dim=64, partial_rotary_factor=1.5), ValueError, "partial_rotary_factor"),
]

@pytest.mark.parametrize("kw,exc,word", BAD)
def test_bad_input(kw, exc, word):
    with pytest.raises(exc, match=f"`{word}`"): get("yarn", **kw)

def test_defaults():
    enc = YaRN()
    assert (enc.dim, enc.factor, enc.original_max_position_embeddings, enc.beta_fast, enc.beta_slow, enc.truncate) == (128, 4.0, 4096, 32.0, 1.0, True)
    assert enc.mscale is None and enc.mscale_all_dim is None and enc.attention_factor is None
    assert get("yarn").card.properties == {"relative": True}
    assert get("yarn", factor=8.0, mscale=0, mscale_all_dim=0).attention_scale == yarn_mscale(8.0)  # 0 means unset, as in Hugging Face

# ---- dynamic YaRN against the authors' module ---------------------------------------------------------------------------
class AuthorsDynamicYaRN:
    """jquesnelle/yarn, scaled_rope/LlamaDynamicYaRNScaledRotaryEmbedding.py, `LlamaDynamicYaRNScaledRotaryEmbedding`, written
    again in float32 as theirs computes: RoPE (or YaRN at max_position_embeddings / original with `finetuned`) up to the
    cached length; a longer sequence L recomputes `yarn(L / original_max_position_embeddings)`; cos and sin times mscale"""
    def __init__(self, dim, max_position_embeddings, original_max_position_embeddings, base=10000, beta_fast=32, beta_slow=1, finetuned=False):
        self.dim, self.base, self.orig, self.bf, self.bs = dim, base, original_max_position_embeddings, beta_fast, beta_slow
        if finetuned: self.yarn(max_position_embeddings / original_max_position_embeddings)
        else: self.inv_freq, self.mscale = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), 1.0
        self.cached = max_position_embeddings
    def yarn(self, scale):
        pos_freqs = self.base ** (torch.arange(0, self.dim, 2).float() / self.dim)
        corr = lambda rot: (self.dim * math.log(self.orig / (rot * 2 * math.pi))) / (2 * math.log(self.base))  # find_correction_dim
        low, high = max(math.floor(corr(self.bf)), 0), min(math.ceil(corr(self.bs)), self.dim - 1)
        if low == high: high += 0.001
        mask = 1 - torch.clamp((torch.arange(self.dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        self.inv_freq = (1.0 / (scale * pos_freqs)) * (1 - mask) + (1.0 / pos_freqs) * mask
        self.mscale = 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0
    def forward(self, seq_len):  # (cos, sin), each (seq_len, dim): cat((freqs, freqs)), as rotate_half pairs them
        if seq_len > self.cached: self.cached = seq_len; self.yarn(seq_len / self.orig)
        emb = torch.cat([torch.outer(torch.arange(self.cached, dtype=torch.float32), self.inv_freq)] * 2, -1)
        return (emb.cos() * self.mscale)[:seq_len], (emb.sin() * self.mscale)[:seq_len]

@pytest.mark.parametrize("finetuned,lengths", [(False, [100, 256, 257, 700, 2000]), (True, [300, 1024, 1025, 3000])])
def test_dynamic_yarn_matches_the_authors(finetuned, lengths):
    "One fresh module per length (a pure function of L); a model fine-tuned to L' = 4 L₀ is `factor=4`"
    D, L0 = 64, 256
    enc = get("dynamic_yarn", dim=D, original_max_position_embeddings=L0, factor=4.0 if finetuned else 1.0)
    for L in lengths:
        cos, sin = AuthorsDynamicYaRN(D, 4 * L0 if finetuned else L0, L0, finetuned=finetuned).forward(L)
        x = torch.randn(1, L, 1, D, dtype=torch.float64)
        theirs = x[0, :, 0] * cos.double() + torch.cat([-x[0, :, 0, D // 2:], x[0, :, 0, :D // 2]], -1) * sin.double()  # rotate_half
        ours = enc.apply(x, None, backend="torch")[0][0, :, 0]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-4 * L / 1000 + 1e-5)  # theirs: float32 angles m·θ (m up to L)
        s = max(4.0 if finetuned else 1.0, L / L0)
        assert math.isclose(enc.at_length(L).attention_scale, 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0)
        theirs_f = AuthorsDynamicYaRN(D, 4 * L0 if finetuned else L0, L0, finetuned=finetuned); theirs_f.forward(L)
        torch.testing.assert_close(enc.at_length(L).inv_freq.float(), theirs_f.inv_freq, rtol=1e-6, atol=0)

def test_dynamic_yarn_is_static_yarn_at_each_length_and_not_relative():
    enc = get("dynamic_yarn", dim=32, original_max_position_embeddings=64)
    assert enc.factor_at(64) == 1.0 and enc.factor_at(640) == 10.0 and not enc.card.properties["relative"]
    q, k = torch.randn(2, 1, 20, 2, 32)
    p = torch.arange(20)
    same = lambda a, b: torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    same(attention_logits(q, k, enc, q_positions=p + 10, k_positions=p + 10), attention_logits(q, k, enc, q_positions=p, k_positions=p))  # L ≤ L₀
    far = attention_logits(q, k, enc, q_positions=p + 500, k_positions=p + 500, backend="torch")
    same(far, attention_logits(q, k, get("yarn", dim=32, original_max_position_embeddings=64, factor=520 / 64), q_positions=p + 500, k_positions=p + 500, backend="torch"))
    assert (far - attention_logits(q, k, enc, q_positions=p, k_positions=p, backend="torch")).abs().nan_to_num().max() > 1e-2

def test_dynamic_yarn_bad_input():
    with pytest.raises(ValueError, match="factor"): get("dynamic_yarn", factor=0.5)
    enc, x = get("dynamic_yarn", dim=8), torch.randn(1, 3, 1, 8)
    with pytest.raises(ValueError, match="k_positions"): enc.apply(x, x, torch.arange(3), k_positions=torch.tensor([0.0, float("nan"), 2.0]))
    with pytest.raises(TypeError, match="positions"): enc.apply(x, x, [0, 1, 2])
