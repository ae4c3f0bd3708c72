"""`posexplorer.tools.hf.from_hf_config` against transformers: for configs in the style of published config.json files, the
encoding's inv_freq and attention_scale equal those of the model's own rotary embedding (its config built by the
model's config class from the same dict); the standardized parameters equal transformers' rope_parameters; bad configs
raise errors that name the problem."""
import importlib
import math
import pytest
import torch
from posexplorer.core import get, inv_freq, names
from posexplorer.tools.hf import HF_ROPE_TYPES, from_hf_config, hf_rope_parameters

tf = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

def _ramp(n, lo, hi): return [lo + (hi - lo) * i / (n - 1) for i in range(n)]

try:  # Phi-3-mini-128k's published factor lists, kept by the LongRoPE notebook
    from posexplorer.encodings.context.longrope import PHI3_MINI_128K
    PHI3_SHORT, PHI3_LONG = PHI3_MINI_128K["short_factor"], PHI3_MINI_128K["long_factor"]
except ImportError: PHI3_SHORT, PHI3_LONG = _ramp(48, 1.0, 2.5), _ramp(48, 1.0, 40.0)

# Configs written as literal dicts in the style of the published config.json files (rope-relevant keys only).
CONFIGS = {
    "llama2_7b": ("LlamaConfig", {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096,
                                  "rope_scaling": None, "rope_theta": 10000.0}, None),
    "llama31_8b": ("LlamaConfig", {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                                   "max_position_embeddings": 131072, "rope_theta": 500000.0,
                                   "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192, "rope_type": "llama3"}}, None),
    "llama32_3b": ("LlamaConfig", {"model_type": "llama", "hidden_size": 3072, "num_attention_heads": 24, "head_dim": 128,
                                   "max_position_embeddings": 131072, "rope_theta": 500000.0,
                                   "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192, "rope_type": "llama3"}}, None),
    "llama4_scout_text": ("Llama4TextConfig", {"hidden_size": 5120, "num_attention_heads": 40, "head_dim": 128, "max_position_embeddings": 10485760,
                                               "rope_theta": 500000.0, "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                                                                                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}}, None),
    "qwen25_7b_yarn": ("Qwen2Config", {"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                                       "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                                       "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}}, None),
    "deepseek_v2": ("DeepseekV2Config", {"model_type": "deepseek_v2", "hidden_size": 5120, "num_attention_heads": 128, "qk_nope_head_dim": 128,
                                         "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 163840, "rope_theta": 10000,
                                         "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                                                          "original_max_position_embeddings": 4096, "type": "yarn"}}, None),
    "deepseek_v3": ("DeepseekV3Config", {"model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128, "qk_nope_head_dim": 128,
                                         "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 163840, "rope_theta": 10000,
                                         "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                                                          "original_max_position_embeddings": 4096, "type": "yarn"}}, None),
    "deepseek_style_mscale": ("DeepseekV3Config", {"hidden_size": 2048, "num_attention_heads": 16, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                                                   "max_position_embeddings": 32768, "rope_theta": 10000,
                                                   "rope_scaling": {"factor": 8, "mscale": 1.0, "mscale_all_dim": 0.5,
                                                                    "original_max_position_embeddings": 4096, "rope_type": "yarn"}}, None),
    "yarn_attention_factor_no_truncate": ("LlamaConfig", {"hidden_size": 2048, "num_attention_heads": 32, "max_position_embeddings": 131072,
                                                          "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                                                                              "beta_slow": 1.0, "original_max_position_embeddings": 4096,
                                                                              "truncate": False, "attention_factor": 1.2}}, None),
    "phi3_mini_128k": ("Phi3Config", {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
                                      "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
                                      "rope_scaling": {"type": "longrope", "short_factor": PHI3_SHORT, "long_factor": PHI3_LONG}}, None),
    "phi3_su": ("Phi3Config", {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
                               "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
                               "rope_scaling": {"type": "su", "short_factor": _ramp(48, 1.0, 1.5), "long_factor": _ramp(48, 1.0, 20.0)}}, None),
    "phi2": ("PhiConfig", {"model_type": "phi", "hidden_size": 2560, "num_attention_heads": 32, "max_position_embeddings": 2048,
                           "partial_rotary_factor": 0.4, "rope_scaling": None, "rope_theta": 10000.0}, None),
    "gpt_neox_20b": ("GPTNeoXConfig", {"model_type": "gpt_neox", "hidden_size": 6144, "num_attention_heads": 64, "max_position_embeddings": 2048,
                                       "rotary_pct": 0.25, "rotary_emb_base": 10000}, None),
    "old_linear": ("LlamaConfig", {"model_type": "llama", "hidden_size": 5120, "num_attention_heads": 40, "max_position_embeddings": 16384,
                                   "rope_scaling": {"factor": 8.0, "type": "linear"}}, None),
    "old_dynamic": ("LlamaConfig", {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 2048,
                                    "rope_scaling": {"factor": 2.0, "type": "dynamic"}, "rope_theta": 10000.0}, None),
    "proportional_factor": ("LlamaConfig", {"hidden_size": 1024, "num_attention_heads": 8, "max_position_embeddings": 8192,
                                            "rope_parameters": {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.3, "factor": 2.0}}, None),
    "gemma4_full": ("Gemma4TextConfig", {"hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256, "global_head_dim": 512, "num_hidden_layers": 6,
                                         "max_position_embeddings": 131072,
                                         "rope_parameters": {"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
                                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}, "full_attention"),
    "gemma4_sliding": ("Gemma4TextConfig", {"hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256, "global_head_dim": 512, "num_hidden_layers": 6,
                                            "max_position_embeddings": 131072,
                                            "rope_parameters": {"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
                                                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}, "sliding_attention"),
    "lfm3_full": ("Lfm3Config", {"hidden_size": 2048, "num_attention_heads": 16, "head_dim": 128, "num_hidden_layers": 8,
                                 "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                     "full_attention": {"rope_type": "proportional", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5}}},
                  "full_attention"),
    "gemma3_global": ("Gemma3TextConfig", {"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256,
                                           "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                                           "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0}, "full_attention"),
    "gemma3_local": ("Gemma3TextConfig", {"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256,
                                          "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                                          "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0}, "sliding_attention"),
}

def _for_transformers(d):
    """The dict transformers 5 can load: Phi3Config renames type "su" to "longrope" only after standardizing, which by then
    has not filled original_max_position_embeddings for an unknown type, so its validation fails; we read "su" as longrope"""
    rs = d.get("rope_scaling")
    return dict(d, rope_scaling=dict(rs, type="longrope")) if isinstance(rs, dict) and rs.get("type") == "su" else d

def _needs(key):
    "Skip where the encoding this config maps to is not registered yet"
    cls_name, d, lt = CONFIGS[key]
    p = hf_rope_parameters(d, lt)
    name = HF_ROPE_TYPES[p["rope_type"]]
    if name not in names(): pytest.skip(f"{name!r} is not registered")
    if not hasattr(tf, cls_name): pytest.skip(f"transformers {tf.__version__} has no {cls_name}")
    return getattr(tf, cls_name), d, lt

def test_transformers_reads_su_as_longrope():
    """Holds for transformers 5.25.0 (requirements.lock): Phi3Config reads Phi-3's legacy 'su' type as longrope, with the
    factors we read. Releases before it (5.0 to 5.24) raised KeyError here, hence `_for_transformers`."""
    ours, theirs = hf_rope_parameters(CONFIGS["phi3_su"][1]), tf.Phi3Config(**CONFIGS["phi3_su"][1]).rope_parameters
    assert theirs["rope_type"] == ours["rope_type"] == "longrope"
    assert theirs["short_factor"] == ours["short_factor"] and theirs["long_factor"] == ours["long_factor"]

def _rotary_class(config_cls):
    "The model's own rotary embedding class, next to its config class (Gemma3TextConfig -> Gemma3RotaryEmbedding)"
    modeling = importlib.import_module(config_cls.__module__.replace(".configuration_", ".modeling_"))
    stem = config_cls.__name__.removesuffix("Config")
    for name in (stem + "RotaryEmbedding", stem.removesuffix("Text") + "RotaryEmbedding"):
        if hasattr(modeling, name): return getattr(modeling, name)
    raise LookupError(f"no rotary embedding class for {config_cls.__name__}")

def _hf(config_cls, d, lt):
    "inv_freq and attention_scaling of the model's rotary embedding at construction (one buffer per layer type for Gemma 3/4, LFM3)"
    rot = _rotary_class(config_cls)(config_cls(**_for_transformers(d)))
    prefix = f"{lt}_" if lt else ""
    return getattr(rot, prefix + "inv_freq"), getattr(rot, prefix + "attention_scaling")

@pytest.mark.parametrize("key", list(CONFIGS))
def test_matches_transformers(key):
    config_cls, d, lt = _needs(key)
    enc = from_hf_config(d, lt)
    hf, scale = _hf(config_cls, d, lt)
    assert enc.inv_freq.shape == hf.shape, (enc.inv_freq.shape, hf.shape)
    assert enc.inv_freq.dtype == torch.float64  # ours stay float64; HF rounds to float32 (6e-8 relative)
    torch.testing.assert_close(enc.inv_freq.float(), hf.float(), rtol=1e-6, atol=0)
    assert math.isclose(enc.attention_scale, scale, rel_tol=1e-6), (enc.attention_scale, scale)

@pytest.mark.parametrize("key", list(CONFIGS))
def test_config_object_equals_dict(key):
    "A transformers config object built from the dict gives the same encoding as the dict"
    config_cls, d, lt = _needs(key)
    a, b = from_hf_config(d, lt), from_hf_config(config_cls(**_for_transformers(d)), lt)
    assert type(a) is type(b)
    torch.testing.assert_close(a.inv_freq, b.inv_freq, rtol=0, atol=0)
    assert a.attention_scale == b.attention_scale

@pytest.mark.parametrize("key", [k for k, (_, _, lt) in CONFIGS.items() if lt is None])
def test_standardized_parameters_match(key):
    "Our standardized dict agrees with transformers' rope_parameters on every key they share"
    config_cls, d, lt = _needs(key)
    ours, theirs = hf_rope_parameters(d), config_cls(**_for_transformers(d)).rope_parameters
    for k, v in theirs.items():
        if k != "type": assert ours[k] == v, (k, ours[k], v)

def test_expected_encodings():
    "Spot checks of what each config maps to"
    enc = lambda k: from_hf_config(CONFIGS[k][1], CONFIGS[k][2])
    assert enc("llama2_7b").name == "rope" and enc("llama2_7b").rotary_dim == 128
    l31 = enc("llama31_8b")
    assert l31.name == "llama3" and (l31.base, l31.factor, l31.original_max_position_embeddings) == (500000.0, 8.0, 8192)
    assert enc("phi2").rotary_dim == 32 and enc("gpt_neox_20b").rotary_dim == 24
    assert enc("gemma4_full").name == "proportional" and enc("gemma4_full").rotary_dim == 512 and int((enc("gemma4_full").inv_freq > 0).sum()) == 64
    assert enc("gemma4_sliding").name == "rope" and enc("gemma4_sliding").rotary_dim == 256
    if "yarn" in names():
        ds = enc("deepseek_v3")
        assert ds.name == "yarn" and ds.rotary_dim == 64 and ds.factor == 40 and ds.attention_scale == 1.0
        q = enc("qwen25_7b_yarn")
        assert q.original_max_position_embeddings == 32768 and math.isclose(q.attention_scale, 0.1 * math.log(4) + 1, rel_tol=1e-9)
    if "longrope" in names():
        phi3 = enc("phi3_mini_128k")
        assert phi3.name == "longrope" and phi3.original_max_position_embeddings == 4096 and phi3.rotary_dim == 96
        assert math.isclose(phi3.attention_scale, math.sqrt(1 + math.log(32) / math.log(4096)), rel_tol=1e-9)

def test_gptj_rotary_dim():
    "GPT-J's absolute rotary_dim (64 of its 256-wide heads) becomes the rotating share; its frequencies are RoPE's over 64"
    enc = from_hf_config({"model_type": "gptj", "n_embd": 4096, "n_head": 16, "rotary_dim": 64, "n_positions": 2048})
    assert enc.rotary_dim == 64 and torch.equal(enc.inv_freq, inv_freq(64))
    from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions
    sincos = create_sinusoidal_positions(3, 64)  # (3, 64): sin of positions x inv_freq, then cos
    torch.testing.assert_close(sincos[1, :32].double(), torch.sin(enc.inv_freq), rtol=1e-6, atol=1e-7)  # theirs: float32 θ and sin

def test_longrope_long_factors_match():
    "Past the original context both switch to the long factors"
    if "longrope" not in names(): pytest.skip("'longrope' is not registered")
    config_cls, d, _ = _needs("phi3_mini_128k")
    hf_long, _ = ROPE_INIT_FUNCTIONS["longrope"](config_cls(**d), None, seq_len=4097)
    a = from_hf_config(d).angles(torch.tensor([0, 1, 4096]))  # max position + 1 > 4096: the long frequencies
    torch.testing.assert_close(a[1], hf_long.float(), rtol=1e-6, atol=0)  # float32 angles at position 1: θ_i rounded once

def test_dynamic_grows_like_transformers():
    "Dynamic NTK: at a length past max_position_embeddings, the frequencies transformers recomputes"
    if "dynamic_ntk" not in names(): pytest.skip("'dynamic_ntk' is not registered")
    config_cls, d, _ = _needs("old_dynamic")
    T = 3 * 2048  # past max_position_embeddings = 2048
    assert from_hf_config(d).original_max_position_embeddings == 2048
    hf_f, _ = ROPE_INIT_FUNCTIONS["dynamic"](config_cls(**d), None, seq_len=T)
    a = from_hf_config(d).angles(torch.arange(T))
    torch.testing.assert_close(a[1], hf_f.float(), rtol=1e-5, atol=0)

def test_qwen2_vl_mrope_sections():
    "Default frequencies with an mrope_section become our M-RoPE with those sections and transformers' inv_freq"
    if "mrope" not in names(): pytest.skip("'mrope' is not registered")
    d = {"model_type": "qwen2_vl", "hidden_size": 3584, "num_attention_heads": 28, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
         "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
    enc = from_hf_config(d)
    assert enc.name == "mrope" and tuple(enc.sections) == (16, 24, 24)
    torch.testing.assert_close(enc.inv_freq, 1.0 / 1e6 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128), rtol=1e-12, atol=0)
    torch.testing.assert_close(enc.inv_freq.float(), 1.0 / 1e6 ** (torch.arange(0, 128, 2).float() / 128), rtol=1e-6, atol=0)  # transformers' float32
    d3 = dict(d, rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True})
    assert from_hf_config(d3).name == "mrope_interleaved"

def test_multimodal_text_config():
    "A config that nests its language model under text_config (Llama 4, Gemma 3, ...) is read from there"
    d = {"model_type": "llama4", "text_config": CONFIGS["llama4_scout_text"][1], "vision_config": {"hidden_size": 1408}}
    enc = from_hf_config(d)
    assert enc.name == "llama3" and enc.factor == 16.0 and enc.low_freq_factor == enc.high_freq_factor == 1.0

FLAT = {"hidden_size": 512, "num_attention_heads": 8, "max_position_embeddings": 8192}
NESTED = CONFIGS["gemma4_full"][1]

@pytest.mark.parametrize("config,kw,exc,match", [
    (dict(FLAT, rope_scaling={"type": "ntk-by-parts"}), {}, ValueError, "supported: default, linear, dynamic, yarn, longrope, llama3, proportional"),
    (dict(FLAT, rope_scaling={"rope_type": 4}), {}, ValueError, "malformed `rope_type` 4"),
    (dict(FLAT, rope_scaling={"rope_type": ["yarn"]}), {}, ValueError, "malformed `rope_type`"),
    (dict(FLAT, rope_scaling={"rope_type": "yarn", "original_max_position_embeddings": 4096}), {}, ValueError, "'yarn' needs 'factor'"),
    (dict(FLAT, rope_scaling={"type": "linear"}), {}, ValueError, "'linear' needs 'factor'"),
    (dict(FLAT, rope_scaling={"type": "dynamic", "factor": None}), {}, ValueError, "'dynamic' needs 'factor'"),
    ({"head_dim": 64, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, {}, ValueError, "'dynamic' needs `max_position_embeddings`"),
    (dict(FLAT, rope_scaling={"rope_type": "llama3", "factor": 8.0}), {}, ValueError, "'low_freq_factor', 'high_freq_factor'"),
    (dict(FLAT, rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 32}), {}, ValueError, "'long_factor'"),
    ({"head_dim": 64, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, {}, ValueError, "original_max_position_embeddings"),
    (NESTED, {}, ValueError, r"pass `layer_type`, one of \['full_attention', 'sliding_attention'\]"),
    (NESTED, {"layer_type": "global"}, ValueError, "'global' is not in the config"),
    (dict(NESTED, rope_parameters={"full_attention": None, "sliding_attention": {"rope_type": "default"}}), {"layer_type": "full_attention"}, ValueError, "has no RoPE"),
    (FLAT, {"layer_type": "full_attention"}, ValueError, "one RoPE for all layers"),
    (dict(FLAT, rope_scaling="linear"), {}, TypeError, "must be a dict"),
    ({"rope_theta": 10000.0}, {}, ValueError, "needs `head_dim`"),
    ("config.json", {}, TypeError, "config.json dict or a transformers config"),
    (dict(FLAT, rope_scaling={"type": "linear", "factor": 0.5}), {}, ValueError, "factor"),  # the encoding's own check
])
def test_bad_configs(config, kw, exc, match):
    with pytest.raises(exc, match=match): from_hf_config(config, **kw)

# A value that is present must be valid: only an absent key (or null) takes the default. `cfg.get(k) or default` would
# read rope_theta 0 as 10000 and partial_rotary_factor 0 as 1.0, a silently different model.
YARN = {"rope_type": "yarn", "factor": 4.0}
INVALID = [(key, bad, cfg) for key, cfg in [
    ("rope_theta", lambda v: dict(FLAT, rope_theta=v)),
    ("rope_theta", lambda v: dict(FLAT, rope_scaling={"rope_type": "default", "rope_theta": v})),  # inside the rope dict
    ("rotary_emb_base", lambda v: dict(FLAT, rotary_emb_base=v)),
    ("partial_rotary_factor", lambda v: dict(FLAT, partial_rotary_factor=v)),
    ("partial_rotary_factor", lambda v: dict(FLAT, rope_parameters={"rope_type": "default", "partial_rotary_factor": v})),
    ("rotary_pct", lambda v: dict(FLAT, rotary_pct=v)),
    ("rotary_dim", lambda v: dict(FLAT, rotary_dim=v)),
    ("head_dim", lambda v: dict(FLAT, head_dim=v)),
    ("qk_rope_head_dim", lambda v: dict(FLAT, qk_rope_head_dim=v)),
    ("hidden_size", lambda v: dict(FLAT, hidden_size=v)),
    ("num_attention_heads", lambda v: dict(FLAT, num_attention_heads=v)),
    ("max_position_embeddings", lambda v: dict(FLAT, max_position_embeddings=v)),
    ("original_max_position_embeddings", lambda v: dict(FLAT, rope_scaling=dict(YARN, original_max_position_embeddings=v))),
    ("original_max_position_embeddings", lambda v: dict(FLAT, original_max_position_embeddings=v, rope_scaling=YARN)),
] for bad in (0, -2, float("nan"), float("inf"), "64", True)]

@pytest.mark.parametrize("key,bad,cfg", INVALID, ids=[f"{k}={b!r}" for k, b, _ in INVALID])
def test_present_invalid_values_name_their_key(key, bad, cfg):
    with pytest.raises(ValueError, match=f"`{key}`"): from_hf_config(cfg(bad))

@pytest.mark.parametrize("config,match", [
    (dict(FLAT, partial_rotary_factor=1.5), "`partial_rotary_factor` must give a rotating share in \\(0, 1\\]"),
    (dict(FLAT, rotary_dim=128), "`rotary_dim` must give a rotating share"),  # wider than the 64-wide head
    (dict(FLAT, head_dim=64.0), "`head_dim` must be a positive integer"),
    (dict(FLAT, rope_scaling={"rope_type": ""}), "malformed `rope_type` ''"),  # not read as "default"
    (dict(FLAT, rope_scaling={"rope_type": 0}), "malformed `rope_type` 0"),
    (dict(FLAT, rope_scaling={"type": "mrope", "mrope_section": 5}), "`mrope_section` must be a list"),
    ({"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256, "rope_theta": 1e6, "rope_local_base_freq": 0},
     "`rope_local_base_freq`"),
])
def test_other_present_invalid_values(config, match):
    lt = "sliding_attention" if "rope_local_base_freq" in config else None
    with pytest.raises(ValueError, match=match): from_hf_config(config, lt)

def test_rope_scaling_that_is_not_a_dict_is_refused():
    for bad in (0, False, "", []):
        with pytest.raises(TypeError, match="must be a dict"): from_hf_config(dict(FLAT, rope_scaling=bad))

def test_absent_or_null_keys_take_the_defaults():
    "Missing or null: θ = 10000, the whole head rotates, the head dim is hidden / heads; an empty rope dict means none"
    for cfg in (FLAT, dict(FLAT, rope_theta=None, partial_rotary_factor=None, head_dim=None, rope_scaling=None)):
        enc = from_hf_config(cfg)
        assert (enc.name, enc.base, enc.rotary_dim) == ("rope", 10000.0, 64)
    assert from_hf_config(dict(FLAT, rope_scaling={}, rope_parameters={"rope_type": "linear", "factor": 2.0})).name == "linear"
    assert from_hf_config(dict(FLAT, rope_scaling={"rope_type": None, "type": "linear", "factor": 2.0})).name == "linear"
    p = hf_rope_parameters(dict(FLAT, rope_theta=5e5, partial_rotary_factor=0.25))
    assert (p["rope_theta"], p["partial_rotary_factor"], p["head_dim"]) == (5e5, 0.25, 64)
    assert from_hf_config(dict(FLAT, partial_rotary_factor=0.25)).rotary_dim == 16

# ---- the proportional encoding registered by 26_hf ----------------------------------------------------------
@pytest.mark.parametrize("head_dim,p,theta,factor", [(512, 0.25, 1e6, 1.0), (128, 0.5, 1e6, 1.0), (80, 0.3, 1e4, 2.0), (10, 0.5, 1e4, 1.0), (64, 1.0, 1e4, 4.0)])
def test_proportional_matches_transformers(head_dim, p, theta, factor):
    "_compute_proportional_rope_parameters: the full-head exponent, zeros past floor(p * head_dim / 2), all divided by factor"
    cfg = tf.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                         rope_parameters=dict(rope_type="proportional", rope_theta=theta, partial_rotary_factor=p, factor=factor))
    hf, scale = ROPE_INIT_FUNCTIONS["proportional"](cfg, None)
    enc = get("proportional", dim=head_dim, base=theta, partial_rotary_factor=p, factor=factor)
    assert enc.rotary_dim == head_dim and int((enc.inv_freq > 0).sum()) == int(p * head_dim // 2)
    torch.testing.assert_close(enc.inv_freq.float(), hf, rtol=1e-6, atol=0)  # ours float64, HF's float32
    assert enc.attention_scale == scale == 1.0

def test_proportional_pass_through_in_each_half():
    "Frozen pairs are the last of each half (half layout): features n..D/2-1 and D/2+n..D-1 pass through"
    enc = get("proportional", dim=32, partial_rotary_factor=0.25)  # n = 4 rotating pairs of 16
    x = torch.randn(2, 7, 3, 32)
    y = enc.apply(x, None, torch.arange(7) + 11, backend="torch")[0]
    frozen = torch.cat([torch.arange(4, 16), torch.arange(20, 32)])
    assert torch.equal(y[..., frozen], x[..., frozen]) and not torch.allclose(y[..., :4], x[..., :4])

@pytest.mark.parametrize("params,exc,arg", [
    (dict(factor=0.5), ValueError, "factor"), (dict(factor=-1.0), ValueError, "factor"), (dict(factor="2"), TypeError, "factor"),
    (dict(partial_rotary_factor=0.0), ValueError, "partial_rotary_factor"), (dict(partial_rotary_factor=1.5), ValueError, "partial_rotary_factor"),
    (dict(partial_rotary_factor="0.5"), ValueError, "partial_rotary_factor"), (dict(dim=7), ValueError, "dim"), (dict(dim=8.0), TypeError, "dim"),
])
def test_proportional_bad_input(params, exc, arg):
    from posexplorer.tools.hf import ProportionalRoPE
    with pytest.raises(exc, match=arg): ProportionalRoPE(**params)

def test_every_transformers_rope_type_is_mapped_and_registered():
    "Every rope type transformers computes (ROPE_INIT_FUNCTIONS plus 'default') maps to a registered encoding"
    assert set(ROPE_INIT_FUNCTIONS) | {"default"} == set(HF_ROPE_TYPES)
    missing = [n for n in HF_ROPE_TYPES.values() if n not in names()]
    assert not missing, f"not registered: {missing}"
