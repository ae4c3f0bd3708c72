"""LongRoPE (`posexplorer.encodings.context.longrope`): parity with Hugging Face's `_compute_longrope_parameters` and Phi-3's rotary
module (its short/long switch) for Phi-3-mini-128k-instruct's published lists (as copied into a torchtune fork, see
the notebook) and synthetic lists; the attention-factor rules; the switch itself; the kernel; bad factor lists."""
import logging, math
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, get, inv_freq
from posexplorer.ops.attention import attention_logits
from posexplorer.encodings.context.longrope import LongRoPE, PHI3_MINI_128K, longrope_attention_factor

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _quiet_transformers():
    "Hugging Face warns that Phi-3 configs should set `factor`; that is what Phi-3 ships, and not what these tests check"
    logging.getLogger("transformers").setLevel(logging.ERROR)

def _phi3_config(head_dim=96, short=None, long=None, original=4096, max_len=131072, partial=None, **rope):
    tf = pytest.importorskip("transformers")
    n = int(head_dim * (partial or 1.0)) // 2
    rs = dict(type="longrope", short_factor=short or [1.0] * n, long_factor=long or [1.0] * n, **rope)
    return tf.Phi3Config(hidden_size=2 * head_dim, num_attention_heads=2, num_key_value_heads=2, original_max_position_embeddings=original,
                         max_position_embeddings=max_len, rope_scaling=rs, **({"partial_rotary_factor": partial} if partial else {}))

def _hf(cfg, seq_len=None):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    return ROPE_INIT_FUNCTIONS["longrope"](cfg, None, seq_len=seq_len)

PHI3 = get("longrope", **PHI3_MINI_128K)
SYN_SHORT = [1.0 + 0.05 * i for i in range(32)]
SYN_LONG = [1.0 + i ** 1.5 / 4 for i in range(32)]

# ---- Hugging Face parity --------------------------------------------------------------------------------
def test_phi3_mini_128k_frequencies_and_scale():
    cfg = _phi3_config(short=PHI3_MINI_128K["short_factor"], long=PHI3_MINI_128K["long_factor"])
    short, scale = _hf(cfg)
    long, _ = _hf(cfg, seq_len=4097)
    at_l0, _ = _hf(cfg, seq_len=4096)
    assert PHI3.inv_freq.dtype == PHI3.long_inv_freq.dtype == torch.float64
    torch.testing.assert_close(PHI3.inv_freq.float(), short, rtol=1e-6, atol=0)  # HF computes in float32: a few ulp off
    torch.testing.assert_close(PHI3.long_inv_freq.float(), long, rtol=1e-6, atol=0)
    torch.testing.assert_close(at_l0, short, rtol=0, atol=0)  # L = L₀ is still short
    assert math.isclose(PHI3.attention_scale, scale, rel_tol=1e-12) and round(scale, 4) == 1.1902

def test_phi3_rotary_module_switches_where_we_do():
    "Phi-3's rotary module run forward on T positions, in this order: short, long, and back to short"
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
    rot = Phi3RotaryEmbedding(_phi3_config(short=PHI3_MINI_128K["short_factor"], long=PHI3_MINI_128K["long_factor"]))
    for T in (1, 100, 4096, 4097, 8192, 100):
        cos, sin = rot(torch.zeros(1), torch.arange(T)[None])
        a = PHI3.angles(torch.arange(T))
        assert torch.equal(a, angles(torch.arange(T), PHI3.long_inv_freq if T > 4096 else PHI3.inv_freq))
        atol = max(2e-5, T * 2.4e-7)  # float32 angles up to T rad, with θ_i one float32 ulp from Hugging Face's
        torch.testing.assert_close(cos[0], torch.cat([a.cos(), a.cos()], -1) * PHI3.attention_scale, rtol=0, atol=atol)
        torch.testing.assert_close(sin[0], torch.cat([a.sin(), a.sin()], -1) * PHI3.attention_scale, rtol=0, atol=atol)

@pytest.mark.parametrize("head_dim,partial,original,max_len,rope", [
    (64, None, 4096, 131072, {}),
    (64, None, 2048, 2048 * 16, dict(factor=8.0)),  # an explicit factor sets the attention factor only
    (64, None, 4096, 131072, dict(attention_factor=1.1)),
    (64, None, 4096, 2048, {}),  # max < original: s = 0.5, attention factor 1
    (128, 0.5, 8192, 65536, {}),  # partial rotary: 32 pairs
    (64, None, 16, 64, {}),
])
def test_synthetic_lists_match_hugging_face(head_dim, partial, original, max_len, rope):
    cfg = _phi3_config(head_dim, SYN_SHORT, SYN_LONG, original, max_len, partial, **rope)
    short, scale = _hf(cfg); long, _ = _hf(cfg, seq_len=original + 1)
    ours = get("longrope", dim=head_dim, short_factor=SYN_SHORT, long_factor=SYN_LONG, original_max_position_embeddings=original,
               max_position_embeddings=max_len, **rope, **({"partial_rotary_factor": partial} if partial else {}))
    torch.testing.assert_close(ours.inv_freq.float(), short, rtol=1e-6, atol=0); torch.testing.assert_close(ours.long_inv_freq.float(), long, rtol=1e-6, atol=0)
    assert math.isclose(ours.attention_scale, scale, rel_tol=1e-12)

# ---- the attention factor -------------------------------------------------------------------------------
def test_attention_factor_rules():
    assert longrope_attention_factor(32, 4096) == math.sqrt(1 + math.log(32) / math.log(4096))
    assert longrope_attention_factor(1.0, 4096) == longrope_attention_factor(0.25, 4096) == 1.0  # s <= 1: no scaling
    assert get("longrope").s == 4.0 and get("longrope", original_max_position_embeddings=1000).s == 4.0  # max defaults to 4 L₀
    assert get("longrope", max_position_embeddings=1024).attention_scale == 1.0
    assert get("longrope", factor=0.5).attention_scale == 1.0  # Hugging Face warns for a factor below 1, then uses 1
    assert get("longrope", factor=2.0, max_position_embeddings=1 << 20).attention_scale == longrope_attention_factor(2.0, 4096)
    assert get("longrope", factor=2.0, attention_factor=0.9).attention_scale == 0.9

# ---- the switch -----------------------------------------------------------------------------------------
def test_switch_reads_the_largest_position_of_the_batch():
    enc = get("longrope", dim=64, short_factor=SYN_SHORT, long_factor=SYN_LONG, original_max_position_embeddings=16)
    assert not enc.uses_long_factors(torch.arange(16)) and enc.uses_long_factors(torch.arange(17))
    assert enc.uses_long_factors(torch.tensor([0.0, 15.5]))  # float positions: 15.5 + 1 > 16, as Hugging Face compares
    batch = torch.stack([torch.arange(10), torch.arange(10) + 10])  # max 19
    torch.testing.assert_close(enc.angles(batch)[0], angles(torch.arange(10), enc.long_inv_freq))
    assert enc.angles(batch, dtype=torch.float64).dtype == torch.float64

def test_relative_within_a_regime_not_across():
    enc = get("longrope", dim=64, short_factor=SYN_SHORT, long_factor=SYN_LONG, original_max_position_embeddings=64)
    q, k = torch.randn(2, 1, 10, 2, 64)
    def logits(start):
        p = torch.arange(start, start + 10)
        return attention_logits(q, k, enc, q_positions=p, k_positions=p, backend="torch")
    torch.testing.assert_close(logits(0), logits(40), atol=1e-4, rtol=1e-4)  # max 49 < 64: short
    torch.testing.assert_close(logits(100), logits(500), atol=1e-3, rtol=1e-3)  # long
    assert not torch.allclose(logits(0), logits(60), atol=0.05)  # 69 > 64: the other list
    assert get("longrope").card.properties == {"relative": False}

# ---- kernel ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [13, 37])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_matches_torch_in_both_regimes(T, layout):
    enc = get("longrope", dim=20, partial_rotary_factor=0.8, short_factor=SYN_SHORT[:8], long_factor=SYN_LONG[:8], original_max_position_embeddings=16)
    assert enc.rotary_dim == 16  # 4 of the 20 features pass through
    q, k = torch.randn(2, T, 3, 20, device=DEV), torch.randn(2, T, 1, 20, device=DEV)
    t, r = enc.apply(q, k, layout=layout, backend="triton"), enc.apply(q, k, layout=layout, backend="torch")
    torch.testing.assert_close(t[0], r[0], **TOL[torch.float32]); torch.testing.assert_close(t[1], r[1], **TOL[torch.float32])

# ---- precision at large positions -----------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # positions where a float32 θ_i or a float32 angle would be off by radians

def rotate_reference(q, positions, theta, scale=1.0):
    "Float64 reference, half layout: pair i turned by m·θ_i reduced mod 2π, times `scale`; features past 2R pass through"
    R, x = len(theta), q.double()
    a = torch.remainder(positions.double()[:, None] * theta, 2 * math.pi)[None, :, None]  # (1, T, 1, R)
    x1, x2 = x[..., :R], x[..., R:2 * R]
    return torch.cat([(x1 * a.cos() - x2 * a.sin()) * scale, (x2 * a.cos() + x1 * a.sin()) * scale, x[..., 2 * R:]], -1)

def test_far_positions_match_float64_reference():
    "Phi-3-mini-128k past L₀: θ_i / long_factor[i] and √(1 + ln 32 / ln 4096) in float64; float32 apply at m up to 2³¹ − 1 to rounding"
    theta = 10000.0 ** (-torch.arange(0, 96, 2, dtype=torch.float64) / 96) / torch.tensor(PHI3_MINI_128K["long_factor"], dtype=torch.float64)
    q = torch.randn(1, len(FAR), 3, 96)
    ref = rotate_reference(q, FAR, theta, math.sqrt(1 + math.log(32) / math.log(4096)))
    torch.testing.assert_close(PHI3.apply(q, None, FAR, backend="torch")[0].double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(PHI3.angles(FAR, torch.float64), FAR.double()[:, None] * theta, rtol=1e-14, atol=0)  # float64 throughout

def test_head_dim_must_match():
    "Partial rotary is asked for (partial_rotary_factor), never inferred from a wider head"
    q = torch.randn(1, 5, 2, 100)
    with pytest.raises(ValueError, match="head dim"): PHI3.apply(q, q.clone())

# ---- bad input ------------------------------------------------------------------------------------------
BAD = [
    (dict(dim=96, short_factor=[1.0] * 47), ValueError, "short_factor", "48"),
    (dict(dim=96, long_factor=[1.0] * 96), ValueError, "long_factor", "48"),
    (dict(dim=128, partial_rotary_factor=0.5, long_factor=[1.0] * 64), ValueError, "long_factor", "32"),
    (dict(dim=4, short_factor=[]), ValueError, "short_factor", "2"),
    (dict(dim=4, short_factor="1.0,1.0"), TypeError, "short_factor", "list of numbers"),
    (dict(dim=4, long_factor=3.0), TypeError, "long_factor", "list of numbers"),
    (dict(dim=4, long_factor=[1.0, None]), TypeError, "long_factor", "list of numbers"),
    (dict(dim=4, short_factor=[1.0, 0.0]), ValueError, "short_factor", "> 0"),
    (dict(dim=4, long_factor=[1.0, float("inf")]), ValueError, "long_factor", "finite"),
    (dict(factor=0.0), ValueError, "factor", "> 0"),
    (dict(factor=-2.0), ValueError, "factor", "> 0"),
    (dict(original_max_position_embeddings=0), ValueError, "original_max_position_embeddings", ">= 1"),
    (dict(max_position_embeddings=131072.0), TypeError, "max_position_embeddings", "int"),
    (dict(attention_factor=-1.0), ValueError, "attention_factor", "> 0"),
]

@pytest.mark.parametrize("kw,exc,name,word", BAD)
def test_bad_input(kw, exc, name, word):
    with pytest.raises(exc) as e: get("longrope", **kw)
    assert f"`{name}`" in str(e.value) and word in str(e.value), str(e.value)

def test_factor_lists_accept_tuples_and_tensors():
    a = get("longrope", dim=8, short_factor=(1.0, 2.0, 3.0, 4.0))
    b = get("longrope", dim=8, short_factor=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(a.inv_freq, b.inv_freq)
    torch.testing.assert_close(a.inv_freq.double(), inv_freq(8, dtype=torch.float64) / torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), rtol=1e-7, atol=0)
    assert isinstance(a, LongRoPE)

# ---- the evolutionary search (LongRoPE §3.2, Algorithm 1; microsoft/LongRoPE evolution/algorithms/dim_mono.py) ---
from posexplorer.encodings.context.longrope import (longrope_search, longrope_search_angles, pi_ntk_seeds, mutate, crossover,
                                                    Individual, N_HAT_CANDIDATES)

_TARGET = torch.linspace(1, 6, 8, dtype=torch.float64) ** 1.3  # a known optimum: non-decreasing, within [1, 1.25 s]
def _toy_fitness(lam, n_hat): return float(((lam.log() - _TARGET.log()) ** 2).mean()) + 0.01 * abs(n_hat - 8)
_SMALL = dict(population=16, parents=8, mutations=8, crossovers=8, iterations=25)

def test_search_improves_monotonically_and_finds_the_optimum():
    calls = []
    def fit(lam, n): calls.append((lam.clone(), n)); return _toy_fitness(lam, n)
    r = longrope_search(fit, 16, 8.0, seed=0, **_SMALL)
    assert len(r.history) == 25 and all(b <= a for a, b in zip(r.history, r.history[1:]))  # elitism: the best never gets worse
    assert r.history[-1] < r.history[0] / 5 and r.n_hat == 8 and math.isclose(r.fitness, _toy_fitness(r.factors, r.n_hat))
    assert (r.factors.log() - _TARGET.log()).abs().max() < 0.25
    assert len({(tuple(l.tolist()), n) for l, n in calls}) == len(calls)  # each individual evaluated once
    for lam, n in calls:  # every candidate respects the constraints: λ non-decreasing, 1 ≤ λ ≤ 1.25 s, n̂ a paper candidate
        assert bool((lam.diff() >= 0).all()) and lam.min() >= 1.0 and lam.max() <= 10.0 + 1e-9 and n in N_HAT_CANDIDATES

def test_search_is_seeded():
    a, b = (longrope_search(_toy_fitness, 16, 8.0, seed=3, **_SMALL) for _ in range(2))
    c = longrope_search(_toy_fitness, 16, 8.0, seed=4, **_SMALL)
    assert torch.equal(a.factors, b.factors) and a.n_hat == b.n_hat and a.history == b.history
    assert a.history != c.history

def test_search_starts_from_the_seeds():
    "Generation 0 holds PI and NTK-aware scaling: with a fitness that prefers PI, the first best is PI itself"
    r = longrope_search(lambda lam, n: float((lam - 8.0).abs().sum()) + n, 16, 8.0, seed=0, population=4, parents=2, mutations=2, crossovers=2, iterations=1)
    assert torch.equal(r.factors, torch.full((8,), 8.0, dtype=torch.float64)) and r.n_hat == 0 and r.fitness == 0.0
    ntk = pi_ntk_seeds(16, 8.0)["NTK"]  # NTK-aware: θ_i / λ_i = (b s^{d/(d-2)})^{-2i/d}
    torch.testing.assert_close(inv_freq(16, 10000.0 * 8.0 ** (16 / 14)).double(), inv_freq(16).double() / ntk, rtol=1e-6, atol=0)

def test_mutation_and_crossover_keep_the_constraint():
    g = torch.Generator().manual_seed(0)
    par = Individual(pi_ntk_seeds(20, 6.0)["NTK"], 0)
    for _ in range(100):
        c = mutate(par, g, 0.5, 0.01, 7.5, N_HAT_CANDIDATES)
        assert bool((c.factors.diff() >= 0).all()) and 1.0 <= c.factors.min() and c.factors.max() <= 7.5 and c.n_hat in N_HAT_CANDIDATES
    x = crossover(Individual(torch.full((10,), 6.0, dtype=torch.float64), 4), par, g)
    assert bool((x.factors.diff() >= 0).all()) and x.n_hat in (0, 4)
    assert all(v in (6.0, w) for v, w in zip(x.factors.tolist(), par.factors.tolist()))

def test_search_angles_keep_the_first_n_hat_tokens():
    theta = inv_freq(16).double()
    a = longrope_search_angles(torch.arange(9), theta, [2.0] * 8, n_hat=3)
    torch.testing.assert_close(a[:3], torch.arange(3.0, dtype=torch.float64)[:, None] * theta, rtol=0, atol=0)
    torch.testing.assert_close(a[3:], torch.arange(3.0, 9, dtype=torch.float64)[:, None] * theta / 2, rtol=0, atol=0)

@pytest.mark.parametrize("kw,exc,word", [
    (dict(fitness=3), TypeError, "fitness"), (dict(p=1.5), ValueError, "`p`"), (dict(iterations=0), ValueError, "iterations"),
    (dict(seeds={"bad": [1.0, 2.0]}), ValueError, "seeds"), (dict(target_factor=-1.0), ValueError, "target_factor")])
def test_search_bad_input(kw, exc, word):
    args = dict(fitness=_toy_fitness, dim=16, target_factor=8.0, **_SMALL) | kw
    with pytest.raises(exc, match=word): longrope_search(**args)

def test_search_progress_wraps_the_generations():
    "`progress` is the caller's bar (tqdm.auto.tqdm in the notebook): called once with the generations; encodings never import tqdm"
    seen = []
    def bar(it, desc): seen.append(desc); return it
    r = longrope_search(_toy_fitness, 16, 8.0, seed=0, progress=bar, **(_SMALL | dict(iterations=3)))
    assert seen == ["LongRoPE search"] and len(r.history) == 3
