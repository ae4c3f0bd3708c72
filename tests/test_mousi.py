"""MouSi's position-slot compression (`posexplorer.encodings.spacetime.mousi`), a labelled reading: MouSi's code is not released, so the
outside checks are the paper's stated position counts (abstract: a SAM image's 4096 positions cut to 64, or to 1) and
Hugging Face's Llama rotary run with our position ids (the rotation is the LLM's RoPE, unchanged); the kernel backends;
bad input."""
import pytest
import torch
from conftest import TOL
from posexplorer.core import get
from posexplorer.encodings.spacetime.mousi import MouSiRoPE, mousi_position_ids

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SAM = [("text", 7), ("image", (1, 64, 64)), ("text", 5)]

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

@pytest.mark.parametrize("slots,occupied", [(None, 4096), (4096, 4096), (64, 64), (1, 1)])
def test_paper_position_counts(slots, occupied):
    "The abstract's numbers: a 64 x 64 SAM image occupies 4096 positions, or 64, or 1"
    pos, nxt = mousi_position_ids(SAM, slots)
    img = pos[7:7 + 4096]
    assert img.unique().numel() == occupied and int(img.min()) == 7 and nxt == 7 + occupied + 5
    assert torch.equal(pos[7 + 4096:], torch.arange(5) + 7 + occupied)  # text continues after the last slot
    assert (img.diff() >= 0).all()  # slots are contiguous runs in raster order

def test_slots_are_even_runs():
    pos, _ = mousi_position_ids([("image", (1, 3, 7))], 5)  # 21 tokens in 5 slots
    assert pos.tolist() == [(j * 5) // 21 for j in range(21)]
    assert torch.bincount(pos).tolist() == [5, 4, 4, 4, 4]
    vid, nxt = mousi_position_ids([("video", (2, 2, 2)), ("text", 1)], 2)
    assert vid.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2] and nxt == 3

@pytest.mark.parametrize("slots", [None, 16, 1])
def test_matches_hf_llama_rotary_with_our_positions(slots):
    "Hugging Face's LlamaRotaryEmbedding + apply_rotary_pos_emb at our position ids give our q and k"
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig
    segs = [("text", 5), ("image", (1, 8, 8)), ("text", 4)]
    pos, _ = mousi_position_ids(segs, slots)
    T = pos.numel()
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    q, k = torch.randn(1, T, 4, 64), torch.randn(1, T, 2, 64)
    cos, sin = llama.LlamaRotaryEmbedding(cfg)(q, pos[None])
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    enc = get("mousi", dim=64, slots=slots)
    oq, ok = enc.apply(q, k, enc.position_ids(segs)[0])
    torch.testing.assert_close(oq, hq, **TOL[torch.float32]); torch.testing.assert_close(ok, hk, **TOL[torch.float32])

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_torch(dtype):
    enc = get("mousi", dim=36, partial_rotary_factor=32 / 36, slots=3)  # 32 features rotate, 4 pass through
    pos = enc.position_ids([("text", 6), ("image", (1, 5, 5)), ("text", 6)])[0].to(DEV)  # 37 tokens
    q, k = torch.randn(2, 37, 3, 36, device=DEV).to(dtype), torch.randn(2, 37, 1, 36, device=DEV).to(dtype)
    t, r = enc.apply(q, k, pos, backend="triton"), enc.apply(q, k, pos, backend="torch")
    for a, b in zip(t, r): torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])
    assert torch.equal(t[0][..., 32:], q[..., 32:]) and torch.equal(r[1][..., 32:], k[..., 32:])  # pass-through

BAD = [
    (lambda: mousi_position_ids(SAM, 0), ValueError, "`slots`"),
    (lambda: mousi_position_ids(SAM, 2.5), TypeError, "`slots`"),
    (lambda: mousi_position_ids(SAM, True), TypeError, "`slots`"),
    (lambda: mousi_position_ids([], 4), ValueError, "`segments`"),
    (lambda: mousi_position_ids("text", 4), TypeError, "`segments`"),
    (lambda: mousi_position_ids([("audio", 3)], 4), ValueError, "`segments[0]`"),
    (lambda: mousi_position_ids([("image", (2, 2, 2))], 4), ValueError, "`segments[0]`"),
    (lambda: mousi_position_ids([("text", 0)], 4), ValueError, "`segments[0]`"),
    (lambda: get("mousi", slots=0), ValueError, "`slots`"),
    (lambda: get("mousi", dim=3), ValueError, "`dim`"),
]

@pytest.mark.parametrize("f,exc,word", BAD)
def test_bad_input(f, exc, word):
    with pytest.raises(exc, match=word.replace("`", "").replace("[", r"\[").replace("]", r"\]")): f()
