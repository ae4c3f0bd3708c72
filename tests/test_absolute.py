"""Absolute encodings and NoPE (`posexplorer.encodings.classics.absolute`): the sinusoidal table against an independent float64 closed form
and Hugging Face's tables, the learned table's interface and limits, NoPE through attention, and bad input."""
import math
import pytest
import torch
import torch.nn.functional as F
from posexplorer.core import get
from posexplorer.encodings.classics.absolute import LearnedAbsolute, NoPE, Sinusoidal, sinusoidal_table
from posexplorer.ops.attention import attend, attention_logits

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- sinusoidal -----------------------------------------------------------------------------------------
def _closed_form(positions, dim, base=10000.0):
    "Vaswani et al. §3.5 written out entry by entry in Python floats (float64): sin at 2i, cos at 2i + 1"
    return torch.tensor([[math.sin(p / base ** (2 * (j // 2) / dim)) if j % 2 == 0 else math.cos(p / base ** (2 * (j // 2) / dim))
                          for j in range(dim)] for p in positions], dtype=torch.float64)

@pytest.mark.parametrize("dim,base", [(2, 10000.0), (16, 10000.0), (30, 500.0), (512, 10000.0)])
def test_sinusoidal_closed_form(dim, base):
    pos = [0, 1, 2, 17, 999, 4097, 100_000]
    enc = get("sinusoidal", dim=dim, base=base)
    torch.testing.assert_close(enc.embed(torch.tensor(pos)).double(), _closed_form(pos, dim, base), atol=1e-7, rtol=0)  # float32 rounding only
    torch.testing.assert_close(sinusoidal_table(torch.tensor(pos), dim, base, torch.float64), _closed_form(pos, dim, base), atol=1e-10, rtol=0)

def test_sinusoidal_fractional_and_batched_positions():
    pos = torch.tensor([[0.5, 3.25], [7.0, 1e4 + 0.5]], dtype=torch.float64)
    out = get("sinusoidal", dim=8).embed(pos)
    assert out.shape == (2, 2, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out.double().view(4, 8), _closed_form(pos.flatten().tolist(), 8), atol=1e-7, rtol=0)

@pytest.mark.parametrize("n_pos,dim", [(300, 64), (77, 10), (33, 768)])
def test_sinusoidal_matches_hf_xlm(n_pos, dim):
    "XLM / DistilBERT / FlauBERT's create_sinusoidal_embeddings: Vaswani's interleaved table"
    pytest.importorskip("transformers")
    from transformers.models.xlm.modeling_xlm import create_sinusoidal_embeddings
    hf = create_sinusoidal_embeddings(n_pos, dim, torch.empty(n_pos, dim))
    torch.testing.assert_close(get("sinusoidal", dim=dim).embed(torch.arange(n_pos)), hf, atol=1e-6, rtol=0)

def test_sinusoidal_matches_hf_marian_up_to_permutation():
    "Marian concatenates all sines then all cosines: our table with the features permuted"
    pytest.importorskip("transformers")
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
    n_pos, dim = 50, 16
    hf = MarianSinusoidalPositionalEmbedding(n_pos, dim).create_weight()
    ours = get("sinusoidal", dim=dim).embed(torch.arange(n_pos))
    torch.testing.assert_close(torch.cat([ours[:, 0::2], ours[:, 1::2]], -1), hf, atol=1e-6, rtol=0)

def test_sinusoidal_logits_not_translation_invariant():
    "The card's claim is about PE·PE; logits with token content change under a shift (as the xPos paper's table says)"
    q, k, p = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8), torch.arange(10)
    enc = get("sinusoidal", dim=16)
    assert not torch.allclose(attention_logits(q, k, enc, q_positions=p, k_positions=p), attention_logits(q, k, enc, q_positions=p + 50, k_positions=p + 50), atol=1e-2)

# ---- learned --------------------------------------------------------------------------------------------
def test_learned_init_matches_hf_convention():
    "GPT-2 and BERT initialise their position tables from N(0, initializer_range²), initializer_range = 0.02"
    pytest.importorskip("transformers")
    from transformers import BertConfig, GPT2Config
    assert GPT2Config().initializer_range == BertConfig().initializer_range == LearnedAbsolute().initializer_range == 0.02
    w = get("learned", dim=256, max_positions=4096, seed=3).weight
    assert abs(w.mean().item()) < 3e-4 and abs(w.std().item() - 0.02) < 3e-4
    assert torch.equal(w, get("learned", dim=256, max_positions=4096, seed=3).weight)

def test_learned_from_gpt2_table():
    "A GPT-2 model's `wpe` table wrapped with from_weight gives GPT-2's position embeddings"
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_positions=40, n_embd=16, n_layer=1, n_head=2, vocab_size=10))
    enc = LearnedAbsolute.from_weight(model.wpe.weight.detach())
    pos = torch.tensor([0, 3, 39, 17])
    torch.testing.assert_close(enc.embed(pos), model.wpe(pos))
    assert enc.max_positions == 40 and enc.dim == 16
    with pytest.raises(ValueError, match="`positions`"): enc.embed(torch.tensor([40]))

def test_learned_through_attention():
    "attention adds rows of the table to q and k: the result equals adding them by hand"
    enc = get("learned", dim=12, max_positions=30)
    q, k = torch.randn(1, 9, 3, 4), torch.randn(1, 9, 3, 4)
    pe = enc.weight[:9].view(9, 3, 4)
    torch.testing.assert_close(attention_logits(q, k, enc), attention_logits(q + pe, k + pe))

# ---- NoPE -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"dim": 8}, {"n_heads": 3}, {"dim": 64, "n_heads": 12}])
def test_nope_equals_no_encoding(params):
    enc = get("nope", **params)
    assert isinstance(enc, NoPE) and enc.family == "none"
    q, k, v = torch.randn(2, 11, 4, 8), torch.randn(2, 13, 2, 8), torch.randn(2, 13, 2, 8)
    for causal in (True, False):
        assert torch.equal(attention_logits(q, k, enc, causal=causal), attention_logits(q, k, None, causal=causal))
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(2, 1), v.transpose(1, 2).repeat_interleave(2, 1),
                                         attn_mask=torch.ones(11, 13, dtype=torch.bool).tril(2))
    torch.testing.assert_close(attend(q, k, v, enc), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize("name", ["nope", "sinusoidal", "learned"])
def test_attend_triton_matches_torch(name):
    "The shared Triton attention kernel (tables added to q and k first) against the torch reference"
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs on CUDA tensors, or interpreted on CPU tensors (conftest)
    enc = get(name) if name == "nope" else get(name, dim=128)
    if isinstance(enc, torch.nn.Module): enc = enc.to(dev)  # "learned": its position table must sit beside q, k, v
    q, k, v = (torch.randn(2, 37, 2, 64, device=dev) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, enc, backend="triton"), attend(q, k, v, enc, backend="torch"), atol=1e-5, rtol=1e-5)

def test_nope_causal_mask_counts_positions():
    "Equal scores under a causal mask: query i weighs i + 1 keys equally, so a first-token marker reads 1/(i + 1)"
    T = 23
    z, v = torch.zeros(1, T, 1, 4), torch.zeros(1, T, 1, 4)
    v[0, 0, 0, 0] = 1.0
    torch.testing.assert_close(attend(z, z, v, get("nope"))[0, :, 0, 0], 1 / torch.arange(1.0, T + 1))

# ---- bad input ------------------------------------------------------------------------------------------
CASES = [  # (id, call, exception, the argument its message must name)
    ("odd sinusoidal dim", lambda: get("sinusoidal", dim=7), ValueError, "dim"),
    ("float sinusoidal dim", lambda: get("sinusoidal", dim=8.0), TypeError, "dim"),
    ("zero sinusoidal base", lambda: get("sinusoidal", base=0.0), ValueError, "base"),
    ("string sinusoidal base", lambda: get("sinusoidal", base="1e4"), TypeError, "base"),
    ("nan positions", lambda: get("sinusoidal", dim=8).embed(torch.tensor([0.0, float("nan")])), ValueError, "positions"),
    ("empty positions", lambda: get("sinusoidal", dim=8).embed(torch.arange(0)), ValueError, "positions"),
    ("3-D positions", lambda: get("sinusoidal", dim=8).embed(torch.zeros(2, 2, 2)), ValueError, "positions"),
    ("complex positions", lambda: get("sinusoidal", dim=8).embed(torch.arange(3) * 1j), TypeError, "positions"),
    ("list positions", lambda: get("sinusoidal", dim=8).embed([0, 1]), TypeError, "positions"),
    ("half-precision table", lambda: sinusoidal_table(torch.arange(3), 8, dtype=torch.float16), TypeError, "dtype"),
    ("learned past the table", lambda: get("learned", max_positions=16).embed(torch.arange(17)), ValueError, "positions"),
    ("learned negative position", lambda: get("learned").embed(torch.tensor([-1, 0])), ValueError, "positions"),
    ("learned float positions", lambda: get("learned").embed(torch.arange(3.0)), TypeError, "positions"),
    ("learned empty positions", lambda: get("learned").embed(torch.arange(0)), ValueError, "positions"),
    ("learned zero dim", lambda: get("learned", dim=0), ValueError, "dim"),
    ("learned zero max_positions", lambda: get("learned", max_positions=0), ValueError, "max_positions"),
    ("learned float seed", lambda: get("learned", seed=1.5), TypeError, "seed"),
    ("learned negative initializer_range", lambda: get("learned", initializer_range=-0.02), ValueError, "initializer_range"),
    ("from_weight 1-D", lambda: LearnedAbsolute.from_weight(torch.zeros(5)), ValueError, "weight"),
    ("from_weight not a tensor", lambda: LearnedAbsolute.from_weight([[0.0]]), TypeError, "weight"),
    ("nope unknown parameter", lambda: get("nope", base=10000.0), TypeError, "base"),
    ("additive dim not H*D", lambda: attention_logits(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), get("sinusoidal", dim=8)), ValueError, "encoding"),
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc) as info: call()
    assert arg in str(info.value), f"message does not name `{arg}`: {info.value}"
