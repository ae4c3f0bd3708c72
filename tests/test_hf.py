"""Checks from outside the project: Hugging Face transformers' rotary code for the same config gives the same numbers."""
import pytest
import torch
from posexplorer.core import angles, get, inv_freq
from posexplorer.ops.rotary import apply_rotary

tf = pytest.importorskip("transformers")
from transformers import LlamaConfig, GPTNeoXConfig, GPTJConfig
from transformers.models.llama import modeling_llama as llama
from transformers.models.gpt_neox import modeling_gpt_neox as neox
from transformers.models.gptj import modeling_gptj as gptj

BACKENDS = ["torch", "triton"]

@pytest.mark.parametrize("theta,head_dim", [(10000.0, 64), (500000.0, 128), (1e6, 96)])
def test_llama_inv_freq(theta, head_dim):
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": theta})
    hf = llama.LlamaRotaryEmbedding(cfg).inv_freq
    ours = get("rope", dim=head_dim, base=theta).inv_freq  # float64; HF keeps float32, computed with a float32 pow
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), hf, rtol=2e-6, atol=0)  # a few float32 ulps: HF's pow and division round in float32
    torch.testing.assert_close(hf.double(), ours, rtol=2e-6, atol=0)

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_llama_apply(backend, dtype):
    "Llama's cos/sin build plus apply_rotary_pos_emb, in our (B, T, H, D) layout via unsqueeze_dim=2"
    B, T, Hq, Hk, D = 2, 37, 4, 2, 32
    cfg = LlamaConfig(hidden_size=D * Hq, num_attention_heads=Hq, num_key_value_heads=Hk, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    q, k = torch.randn(B, T, Hq, D, dtype=dtype), torch.randn(B, T, Hk, D, dtype=dtype)
    pos = torch.arange(T)[None].expand(B, T) + torch.tensor([[0], [100]])  # per-batch offsets
    rot = llama.LlamaRotaryEmbedding(cfg)
    cos, sin = rot(q, pos)
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    if backend == "triton" and dtype == torch.float64: pytest.skip("float64 activations are a torch-path feature")
    hf_angles = pos[..., None].float() * rot.inv_freq  # (B, T, R) HF's angles: its float32 inv_freq times positions, rounded in float32
    oq, ok = apply_rotary(q, k, hf_angles, backend=backend)  # the same angles: only the rotation's arithmetic differs
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(oq, hq, **tol); torch.testing.assert_close(ok, hk, **tol)
    # Our angles are exact (float64 θ, float64 product); HF's carry its float32 roundings (pow, division: θ_i off by up to
    # 6.7e-8 relative here; then the product p·θ_i, 2⁻²⁴): within p·θ_i·2⁻²², and not within 2⁻²⁶ (they are not ours)
    ours = get("rope", dim=D).angles(pos, torch.float64)
    err = (ours - hf_angles.double()).abs()
    assert (err <= ours.abs() * 2 ** -22).all() and not (err <= ours.abs() * 2 ** -26).all()
    ref = apply_rotary(q.double(), k.double(), ours, backend="torch")  # float64 all through
    torch.testing.assert_close(get("rope", dim=D).apply(q, k, pos, backend=backend), tuple(r.to(dtype) for r in ref), **tol)

@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_neox_partial_rotary(backend):
    "GPT-NeoX rotates only the first rotary_pct of each head (half layout within those features)"
    B, T, H, D = 1, 29, 4, 32
    cfg = GPTNeoXConfig(hidden_size=H * D, num_attention_heads=H, rotary_pct=0.25, rope_theta=10000.0)
    rot = neox.GPTNeoXRotaryEmbedding(cfg)
    assert rot.inv_freq.shape == (4,)  # 0.25 * 32 = 8 features rotate
    q, k = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    cos, sin = rot(q, torch.arange(T)[None])
    hq, hk = neox.apply_rotary_pos_emb(q, k, cos, sin)  # (B, H, T, D)
    oq, ok = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), get("rope", dim=D, partial_rotary_factor=0.25).angles(torch.arange(T)), backend=backend)
    torch.testing.assert_close(oq.transpose(1, 2), hq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ok.transpose(1, 2), hk, atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize("backend", BACKENDS)
def test_gptj_interleaved_partial(backend):
    "GPT-J pairs features (2i, 2i+1) (rotate_every_two) over its first rotary_dim features"
    B, T, H, D, rd = 2, 23, 2, 16, 8
    x = torch.randn(B, T, H, D)
    sincos = gptj.create_sinusoidal_positions(64, rd)[torch.arange(T)]  # (T, rd): sin then cos
    sin, cos = sincos[None, :, : rd // 2].expand(B, T, -1), sincos[None, :, rd // 2:].expand(B, T, -1)
    ref = torch.cat([gptj.apply_rotary_pos_emb(x[..., :rd], sin, cos), x[..., rd:]], -1)
    out, _ = apply_rotary(x, None, angles(torch.arange(T), inv_freq(rd)), layout="interleaved", backend=backend)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
