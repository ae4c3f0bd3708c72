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
    with pytest.raises(TypeError, match="token embeddings"): patch(m, get("sinusoidal", dim=32))  # additive: not inside attention

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

# ---- Issue 18, part 1: bias and general encodings through the model's attention; Qwen2-VL with an image ----------------
from posexplorer.hf import HF_ATTENTION_ROUTES, HF_BIAS_ATTENTION

def decode_gap(m, ids):
    "max |logits of a cached decode step - the full forward's last row|: the cache's positions (and phases) reach the encoding"
    with torch.no_grad():
        out = m(ids[:, :-1], use_cache=True)
        step = m(ids[:, -1:], past_key_values=out.past_key_values).logits[:, -1]
        return (step - m(ids).logits[:, -1]).abs().max().item()

def test_alibi_matches_a_hand_written_attention():
    "A 1-layer Llama patched with ALiBi equals eager attention written out here with the paper's slopes, no rotation, at the given ids"
    m = tiny("llama", num_hidden_layers=1); h = patch(m, get("alibi", n_heads=4))
    ids = torch.randint(3, 100, (2, 11), generator=torch.Generator().manual_seed(6))
    # ALiBi's slopes for 4 heads, 2^(-8h/4): ofirpress/attention_with_linear_biases, fairseq/models/transformer.py, get_slopes
    slopes = torch.tensor([0.25, 0.0625, 0.015625, 0.00390625])
    with torch.no_grad():
        a, x = m.model.layers[0].self_attn, m.model.embed_tokens(ids)
        y = m.model.layers[0].input_layernorm(x)
        q = a.q_proj(y).view(2, 11, 4, 8).transpose(1, 2)  # (B, H, T, D), not rotated
        k, v = (p(y).view(2, 11, 2, 8).transpose(1, 2).repeat_interleave(2, 1) for p in (a.k_proj, a.v_proj))
        i, pos = torch.arange(11), torch.tensor([0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 14])  # ids with a gap, as after an edit
        s = q @ k.transpose(2, 3) / 8 ** 0.5 - slopes[:, None, None] * (pos[:, None] - pos[None]).abs()  # (B, H, T, T)
        s = s.masked_fill(i[None] > i[:, None], float("-inf"))
        x = x + a.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 11, 32))
        x = x + m.model.layers[0].mlp(m.model.layers[0].post_attention_layernorm(x))
        ref = m.lm_head(m.model.norm(x))
        assert m.config._attn_implementation == HF_BIAS_ATTENTION
        assert (m(ids, position_ids=pos[None]).logits - ref).abs().max() <= 1e-5
    h.undo()

@pytest.mark.parametrize("name", ["alibi", "t5"])
def test_bias_generate_with_cache_equals_without(name):
    "Decode steps see their key positions: 8 greedy tokens with the KV cache equal the no-cache argmax rollout"
    m = tiny("llama"); h = patch(m, get(name, n_heads=4))
    ids = torch.randint(3, 100, (1, 9), generator=torch.Generator().manual_seed(7))
    assert torch.equal(greedy(m, ids), m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False))
    assert decode_gap(m, torch.randint(3, 100, (2, 21), generator=torch.Generator().manual_seed(8))) <= 1e-5
    h.undo()

@pytest.mark.parametrize("name", [a for a in ARCHS if a in HF_ATTENTION_ROUTES and a != "llama"])
def test_bias_in_every_routed_architecture(name):
    "ALiBi through each routed architecture's attention (Gemma 2's soft cap, GPT-NeoX's `layer_past` included): cached decode = full forward"
    m = tiny(name); ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(9))
    before = logits(m, ids)
    h = patch(m, get("alibi", n_heads=4))
    assert decode_gap(m, ids) <= 1e-5 and (logits(m, ids) - before).abs().max() > 1e-4
    h.undo()
    assert (logits(m, ids) - before).abs().max() == 0

def test_bias_undo_restores_the_attention_implementation():
    m = tiny("llama"); impl = m.config._attn_implementation_internal
    attn = m.model.layers[0].self_attn
    h = patch(m, get("t5", n_heads=4))
    assert m.config._attn_implementation == HF_BIAS_ATTENTION and attn._forward_pre_hooks
    h.undo()
    assert m.config._attn_implementation_internal == impl and not attn._forward_pre_hooks and not attn._forward_hooks

def train_step(m, enc, ids):
    "One backward pass and SGD step: the encoding's parameters are the model's, get non-zero gradients, and move"
    assert {id(p) for p in enc.parameters()} <= {id(p) for p in m.parameters()}
    before = [p.detach().clone() for p in enc.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=1.0); m.train()
    m(ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in enc.parameters())
    opt.step(); m.eval()
    assert all((p - b).abs().max() > 0 for p, b in zip(enc.parameters(), before))

def test_t5_bias_is_learned_in_the_model():
    "T5's table (one module shared by all layers, as T5 shares its first layer's) trains with the model; undo removes it"
    m = tiny("llama"); enc = get("t5", n_heads=4); h = patch(m, enc)
    train_step(m, enc, torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(10)))
    h.undo()
    assert not {id(p) for p in enc.parameters()} & {id(p) for p in m.parameters()}

GENERAL = {  # name -> (encoding kwargs, model kwargs)
    "comrope_ap": (dict(dim=8, n_axes=1, n_heads=1), {}),
    "comrope_ld": (dict(dim=8, n_axes=1), {}),
    "liere": (dict(dim=8, n_axes=1), {}),
    "carope": (dict(dim=8, n_heads=4, d_model=32), dict(num_key_value_heads=4)),  # per-head speeds: no grouped-query heads
}

def general(name):
    kw, mkw = GENERAL[name]
    enc = get(name, **kw)
    if name == "carope":  # W = 0 would make CARoPE plain RoPE: give the tokens a say in the speeds
        with torch.no_grad(): enc.proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(11))
    return tiny("llama", **mkw), enc

@pytest.mark.parametrize("name", list(GENERAL))
def test_general_generate_and_train(name):
    "q/k maps in place of the rotation: cached decode = full forward, generate with cache = without, and the maps train"
    m, enc = general(name); h = patch(m, enc)
    ids = torch.randint(3, 100, (2, 13), generator=torch.Generator().manual_seed(12))
    assert decode_gap(m, ids) <= 1e-5
    assert torch.equal(greedy(m, ids[:1, :9]), m.generate(ids[:1, :9], max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False))
    train_step(m, enc, ids)
    h.undo()
    assert "posexplorer_encoding" not in dict(m.named_modules()) and not {id(p) for p in enc.parameters()} & {id(p) for p in m.parameters()}

@pytest.mark.parametrize("name", list(GENERAL))
def test_general_keys_are_the_encodings_transform(name):
    "Layer 0's cached keys equal the encoding's own `transform` of k_proj(x) at the model's positions (x the layer's input, for CARoPE)"
    m, enc = general(name); h = patch(m, enc)
    ids = torch.randint(3, 100, (1, 10), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        cache = m(ids, use_cache=True).past_key_values
        a, x = m.model.layers[0].self_attn, m.model.layers[0].input_layernorm(m.model.embed_tokens(ids))
        q, k = a.q_proj(x).view(1, 10, 4, 8), a.k_proj(x).view(1, 10, -1, 8)  # (B, T, H, D)
        ref = enc.transform(q, k, x=x)[1] if name == "carope" else enc.transform(k, None, torch.arange(10)[None])[0]
    assert (cache.layers[0].keys.transpose(1, 2) - ref).abs().max() <= 1e-6
    h.undo()

def test_carope_refuses_a_cache_it_did_not_fill():
    "CARoPE's phases run over every earlier token: a cache filled by the unpatched model cannot be continued"
    m, enc = general("carope"); ids = torch.randint(3, 100, (1, 10), generator=torch.Generator().manual_seed(14))
    with torch.no_grad(): cache = m(ids[:, :9], use_cache=True).past_key_values
    h = patch(m, enc)
    with pytest.raises(ValueError, match="CARoPE's phases"), torch.no_grad(): m(ids[:, 9:], past_key_values=cache)
    h.undo()

def test_new_errors():
    m = tiny("llama")
    with pytest.raises(ValueError, match="n_heads=8 but the model has 4"): patch(m, get("alibi", n_heads=8))
    with pytest.raises(ValueError, match="head dim is 8"): patch(m, get("comrope_ap", dim=16, n_axes=1))
    with pytest.raises(ValueError, match="n_axes=1"): patch(m, get("comrope_ap", dim=8))  # 2 axes: an image encoding
    with pytest.raises(ValueError, match="grouped-query"): patch(m, get("carope", dim=8, n_heads=4, d_model=32))  # 2 key heads
    with pytest.raises(ValueError, match="d_model=32"): patch(tiny("llama", num_key_value_heads=4), get("carope", dim=8, n_heads=4, d_model=16))
    vl = qwen2_vl()
    with pytest.raises(ValueError, match="position_ids=None"): patch(vl, get("alibi", n_heads=4))
    with pytest.raises(ValueError, match="position_ids=None"): patch(vl, get("liere", dim=8, n_axes=1))
    assert getattr(m, "_posexplorer_patch", None) is None and m.config._attn_implementation != HF_BIAS_ATTENTION  # a refused patch changes nothing
    patch(m).undo(); patch(vl).undo()

def qwen2_vl():
    "A tiny random Qwen2-VL: M-RoPE sections 1/1/2, a 1-block vision tower with 2x2 patches merged 2x2"
    cfg = tf.Qwen2VLConfig(text_config=SMALL | dict(num_key_value_heads=2, bos_token_id=None, eos_token_id=2,
                           rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2], rope_theta=10000.0)),
                           vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=2, temporal_patch_size=1),
                           image_token_id=7, video_token_id=8, vision_start_token_id=5, vision_end_token_id=6)
    torch.manual_seed(0); return tf.Qwen2VLForConditionalGeneration(cfg).eval()

def image_prompt():
    "3 text tokens, <vision_start>, a 4x6-patch image (2x3 = 6 tokens after the merge), <vision_end>, 4 text tokens"
    g = torch.Generator().manual_seed(15)
    ids = torch.cat([torch.randint(10, 100, (1, 3), generator=g), torch.tensor([[5] + [7] * 6 + [6]]), torch.randint(10, 100, (1, 4), generator=g)], 1)
    return dict(input_ids=ids, pixel_values=torch.randn(24, 3 * 2 * 2, generator=g), image_grid_thw=torch.tensor([[1, 4, 6]]), mm_token_type_ids=(ids == 7).long())
SEGMENTS = [("text", 4), ("image", (1, 2, 3)), ("text", 5)]  # the same prompt as posexplorer segments

def test_qwen2_vl_with_an_image_parity():
    "Qwen2-VL with an image, patched with its own M-RoPE: same logits and the same 8 generated tokens (rope_deltas kept)"
    m, inp = qwen2_vl(), image_prompt()
    with torch.no_grad(): before = m(**inp).logits
    gen0 = m.generate(**inp, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert m.model.rope_deltas.item() == -3  # the image's 6 tokens take 3 positions (max(h, w) = 3): the test sees the deltas
    h = patch(m)
    with torch.no_grad(): assert (m(**inp).logits - before).abs().max() <= 1e-5
    assert torch.equal(m.generate(**inp, max_new_tokens=8, min_new_tokens=8, do_sample=False), gen0)
    h.undo()

@pytest.mark.parametrize("name", ["hope", "videorope"])
def test_qwen2_vl_with_the_encodings_own_position_ids(name):
    "HoPE / VideoRoPE in Qwen2-VL: ids from the encoding's own scheme, keys = its `apply`, generate with cache = without"
    from posexplorer.multimodal import mrope_position_ids
    m, inp, enc = qwen2_vl(), image_prompt(), get(name, dim=8)
    h = patch(m, enc)
    pos, nxt = mrope_position_ids(SEGMENTS, scheme=name)  # (3, T): the diagonal layout, the image centred on one t
    assert nxt == 10 and m.model.get_rope_index(**{k: v for k, v in inp.items() if k != "pixel_values"})[1].item() == 10 - 15
    with torch.no_grad():
        xs = {}
        hook = m.model.language_model.layers[0].self_attn.register_forward_pre_hook(lambda mod, a, kw: xs.update(x=kw["hidden_states"]), with_kwargs=True)
        cache = m(**inp, use_cache=True).past_key_values; hook.remove()
        k = m.model.language_model.layers[0].self_attn.k_proj(xs["x"]).view(1, 15, 2, 8)  # (B, T, Hk, D), before the rotation
        assert (cache.layers[0].keys.transpose(1, 2) - enc.apply(k, None, pos)[0]).abs().max() <= 1e-6
    gen = m.generate(**inp, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(gen, m.generate(**inp, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False))
    h.undo()
    assert "get_rope_index" not in vars(m.model)

@pytest.mark.parametrize("name", ["alibi", "t5"])
def test_bias_reads_the_position_ids_not_the_cache_index(name):
    "Ids with a gap (an edited prompt, PIE): the queries' come through the attention kwargs, the keys' are kept on the cache"
    m = tiny("llama"); ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(16))
    pos = torch.cat([torch.arange(5), torch.arange(9, 16)])[None]  # (1, 12): 4 positions skipped after the 5th token
    before = logits(m, ids)
    h = patch(m, get(name, n_heads=4))
    with torch.no_grad():
        full = m(ids, position_ids=pos).logits
        assert (full - m(ids).logits).abs().max() > 1e-4  # the gap changes the bias: the test can fail
        out = m(ids[:, :11], position_ids=pos[:, :11], use_cache=True)
        step = m(ids[:, 11:], position_ids=pos[:, 11:], past_key_values=out.past_key_values).logits[:, -1]
    assert (step - full[:, -1]).abs().max() <= 1e-5
    h.undo()
    assert torch.equal(logits(m, ids), before)

@pytest.mark.parametrize("name", ["alibi", "carope"])
def test_reordering_the_cache_moves_the_state_kept_on_it(name):
    "Beam search reorders the cache's rows: the key positions (bias) and running phases (CARoPE) kept on it move with them"
    m, enc = general(name) if name in GENERAL else (tiny("llama"), get(name, n_heads=4))
    h = patch(m, enc); ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(17))
    pos = torch.stack([torch.arange(9), torch.arange(9) + 5])  # rows at different positions, as with left padding
    with torch.no_grad():
        cache = m(ids[:, :8], position_ids=pos[:, :8], use_cache=True).past_key_values
        cache.reorder_cache(torch.tensor([1, 0]))  # what beam search does between steps
        step = m(ids.flip(0)[:, 8:], position_ids=pos.flip(0)[:, 8:], past_key_values=cache).logits[:, -1]
        full = m(ids.flip(0), position_ids=pos.flip(0)).logits[:, -1]
    assert (step - full).abs().max() <= 1e-5
    h.undo()

@pytest.mark.parametrize("name,arch", [("alibi", "llama"), ("t5", "llama"), ("alibi", "gemma2")])
def test_bias_after_cropping_the_cache(name, arch):
    "`cache.crop(-5)` (assisted decoding's rollback) cuts the key positions kept on the cache with the keys: decode = full forward"
    m = tiny(arch); h = patch(m, get(name, n_heads=4))
    ids = torch.randint(3, 100, (2, 20), generator=torch.Generator().manual_seed(18))
    with torch.no_grad():
        cache = tf.DynamicCache(config=m.config); cache.activate_past_recording()  # Gemma 2's sliding layers crop only so
        m(ids, cache=cache, use_cache=True)
        cache.crop(-5)  # 15 tokens left: positions 15-19 are gone with their keys
        step = m(ids[:, 15:16], cache=cache).logits[:, -1]  # a decode step at position 15
        more = m(ids[:, 16:19], cache=cache).logits  # then 3 tokens at once, as a draft's verification
        full = m(ids[:, :19]).logits
    assert cache.get_seq_length() == 19
    assert (step - full[:, 15]).abs().max() <= 1e-5 and (more - full[:, 16:]).abs().max() <= 1e-5
    h.undo()

@pytest.mark.parametrize("first", ["A", "B"])
def test_undoing_one_model_leaves_another_of_its_class_patched(first):
    "Two Llamas share `apply_rotary_pos_emb`: either undo leaves the other model as patched, and the last puts the function back"
    import transformers.models.llama.modeling_llama as ml
    fn, ids = ml.apply_rotary_pos_emb, torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(19))
    models = {"A": tiny("llama"), "B": tiny("llama")}
    with torch.no_grad(): models["B"].model.embed_tokens.weight.mul_(2)  # B is another model, not a copy of A
    plain = {k: logits(m, ids) for k, m in models.items()}
    hs = {"A": patch(models["A"], get("alibi", n_heads=4)), "B": patch(models["B"], get("yarn", dim=8, factor=4.0, original_max_position_embeddings=16))}
    patched = {k: logits(m, ids) for k, m in models.items()}
    assert all((patched[k] - plain[k]).abs().max() > 1e-4 for k in models)  # both patches change the logits: the test can fail
    other = "B" if first == "A" else "A"
    hs[first].undo()
    assert ml.apply_rotary_pos_emb is not fn  # the other model still needs the shared apply step
    assert (logits(models[other], ids) - patched[other]).abs().max() == 0 and (logits(models[first], ids) - plain[first]).abs().max() == 0
    hs[other].undo()
    assert ml.apply_rotary_pos_emb is fn and all((logits(m, ids) - plain[k]).abs().max() == 0 for k, m in models.items())

def test_qwen2_vl_undo_restores_the_rope_deltas():
    "HoPE sets its own `rope_deltas` on Qwen2-VL; undo() puts back those the model held before `patch`"
    m, inp = qwen2_vl(), image_prompt()
    m.model.rope_deltas = held = torch.tensor([[-3]])  # as a generation with the model's own M-RoPE leaves them
    h = patch(m, get("hope", dim=8))
    with torch.no_grad(): m(**inp)
    assert m.model.rope_deltas.item() == 10 - 15  # HoPE's own, while patched
    h.undo()
    assert m.model.rope_deltas is held
