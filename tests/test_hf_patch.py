"Issue 18: `posexplorer.hf.patch` swaps an encoding into a Hugging Face model's attention, with exact parity and undo."
import pytest, torch
tf = pytest.importorskip("transformers")
from posexplorer.hf import patch, from_hf_config
from posexplorer.core import get

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ARCHS = {  # name -> (config class, model class, extra config keys)
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(num_key_value_heads=2)),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(num_key_value_heads=2)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(num_key_value_heads=2)),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(num_key_value_heads=2, head_dim=8)),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, dict(rotary_pct=0.5)),  # partial rotary: 4 of 8 features
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(num_key_value_heads=2, original_max_position_embeddings=16,
             rope_scaling=dict(rope_type="longrope", short_factor=[1.0, 1.1, 1.3, 1.7], long_factor=[1.0, 2.0, 3.0, 5.0]))),
}

def tiny(name, **kw):
    cfg_cls, model_cls, extra = ARCHS[name]
    torch.manual_seed(0)
    return model_cls(cfg_cls(**(SMALL | extra | kw))).float().eval()

def logits(m, ids):
    with torch.no_grad(): return m(ids).logits

def greedy(m, ids): return m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)

@pytest.mark.parametrize("name", list(ARCHS))
def test_parity_own_encoding(name):
    m = tiny(name)
    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(1))
    before = [logits(m, ids[:, :t]) for t in (1, 13, 40)]
    gen0 = greedy(m, ids[:1, :9])
    h = patch(m)
    for t, ref in zip((1, 13, 40), before): assert (logits(m, ids[:, :t]) - ref).abs().max() <= 1e-5
    gen1 = greedy(m, ids[:1, :9])
    h.undo()
    assert torch.equal(gen0, gen1) and gen1.shape[1] == 17

def test_decode_steps_get_their_positions():
    "A cached decode step's logits equal a full forward's last row: the cache's positions reach the encoding"
    m = tiny("llama"); h = patch(m, get("yarn", dim=8, factor=4.0, original_max_position_embeddings=16))
    ids = torch.randint(3, 100, (1, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = m(ids[:, :20], use_cache=True)
        step = m(ids[:, 20:], past_key_values=out.past_key_values).logits[:, -1]
    assert (step - logits(m, ids)[:, -1]).abs().max() <= 1e-5
    h.undo()

def test_undo_restores_exactly():
    m = tiny("llama"); sd = {k: v.clone() for k, v in m.state_dict().items()}
    mods = dict(m.named_modules()); fwd = m.model.rotary_emb.forward.__func__
    import transformers.models.llama.modeling_llama as ml; fn = ml.apply_rotary_pos_emb
    h = patch(m, get("yarn", dim=8, factor=4.0, original_max_position_embeddings=16)); h.undo()
    assert ml.apply_rotary_pos_emb is fn and m.model.rotary_emb.forward.__func__ is fwd
    assert dict(m.named_modules()) == mods and m.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    patch(m).undo()  # patchable again after undo

# transformers' own scaled RoPE: a Llama built with each rope_type against a plain Llama patched with our encoding
EQUIV = {
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
    "longrope": dict(rope_type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0], long_factor=[1.0, 3.0, 5.0, 8.0], original_max_position_embeddings=16),
    "linear": dict(rope_type="linear", factor=2.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),  # 80 tokens > max_position_embeddings=64: the NTK base grows
}

@pytest.mark.parametrize("kind", list(EQUIV))
def test_equivalence_with_transformers_rope_type(kind):
    ref = tiny("llama", rope_scaling=EQUIV[kind] | dict(rope_theta=10000.0))
    m = tiny("llama"); m.load_state_dict(ref.state_dict())
    enc = from_hf_config(ref.config)
    ids = torch.randint(3, 100, (1, 80), generator=torch.Generator().manual_seed(3))
    before = logits(m, ids)
    h = patch(m, enc)
    assert (logits(m, ids) - logits(ref, ids)).abs().max() <= 1e-5
    assert (logits(m, ids) - before).abs().max() > 1e-4  # the swap changed something: the test can fail
    h.undo()

def test_not_an_encoding_is_refused():
    with pytest.raises(TypeError, match="RotaryEncoding"): patch(tiny("llama"), torch.nn.Linear(1, 1))

def test_bad_input():
    m = tiny("llama")
    with pytest.raises(ValueError, match="rotary dim"): patch(m, get("rope", dim=16))
    h = patch(m)
    with pytest.raises(ValueError, match="patched already"): patch(m)
    h.undo()
    class Fake(torch.nn.Module): config = tf.BertConfig()
    with pytest.raises(ValueError, match="not supported"): patch(Fake())
    with pytest.raises(TypeError, match="RotaryEncoding"): patch(m, get("alibi", n_heads=4))

from posexplorer.hf import to_hf_config
from test_hf_config import CONFIGS

@pytest.mark.parametrize("key", list(CONFIGS))
def test_to_hf_config_round_trips(key):
    "from_hf_config(to_hf_config(enc)) gives the same frequencies and attention scale, for every config style of test_hf_config"
    _, d, lt = CONFIGS[key]
    enc = from_hf_config(d, lt)
    rp = to_hf_config(enc)
    back = from_hf_config({"head_dim": enc.dim, "hidden_size": 64, "num_attention_heads": 1,
                           "max_position_embeddings": d.get("max_position_embeddings", 4096), "rope_parameters": rp})
    assert type(back) is type(enc) and torch.equal(back.inv_freq, enc.inv_freq) and back.attention_scale == enc.attention_scale

def test_to_hf_config_refuses_what_transformers_cannot_express():
    with pytest.raises(ValueError, match="no transformers rope_type"): to_hf_config(get("xpos", dim=8))

def test_qwen2_vl_mrope_parity():
    "Qwen2-VL (M-RoPE sections 1/1/2 over 3 position axes): patched with its own encoding, same logits and greedy tokens"
    cfg = tf.Qwen2VLConfig(text_config=SMALL | dict(num_key_value_heads=2, bos_token_id=None, eos_token_id=2,
                           rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2], rope_theta=10000.0)),
                           vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2))
    torch.manual_seed(0); m = tf.Qwen2VLForConditionalGeneration(cfg).eval()
    ids = torch.randint(3, 100, (1, 40), generator=torch.Generator().manual_seed(4))
    before = [logits(m, ids[:, :t]) for t in (1, 13, 40)]; gen0 = greedy(m, ids[:, :9])
    h = patch(m)
    for t, ref in zip((1, 13, 40), before): assert (logits(m, ids[:, :t]) - ref).abs().max() <= 1e-5
    assert torch.equal(greedy(m, ids[:, :9]), gen0)
    h.undo()

def test_pie_shift_keys_on_a_patched_cache():
    "PIE re-rotates a patched model's cached keys: first layer's keys equal those computed at the shifted positions"
    from posexplorer.pie import shift_keys_
    m = tiny("llama"); enc = get("rope", dim=8); h = patch(m, enc)
    ids = torch.randint(3, 100, (1, 10), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(10)[None]; moved = torch.where(pos >= 5, pos + 3, pos)
    with torch.no_grad():
        cache = m(ids, position_ids=pos, use_cache=True).past_key_values
        ref = m(ids, position_ids=moved, use_cache=True).past_key_values
    keys = cache.layers[0].keys  # (B, H, T, D) in transformers' cache
    assert (keys - ref.layers[0].keys).abs().max() > 1e-3  # before the shift they differ: the test can fail
    shift_keys_(keys.transpose(1, 2), 5, 3, enc.inv_freq)  # posexplorer's layout (B, T, H, D), a view: in place
    assert (keys - ref.layers[0].keys).abs().max() <= 1e-5
    h.undo()
