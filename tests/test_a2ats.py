"""A2ATS windowed RoPE (`posexplorer.encodings.inference.a2ats`): exactness at distance r and inside the window, independence of the key's
position outside it, the seeded k-means and query-aware codebook, the authors' defaults (w = 64, r = 2048, 8 sinks) and their
decoding-step key selection (junhuihe-hjh/A2ATS, vqkey/models/llama_masked.py, `llama_attention_forward`, written again here), and bad input."""
import math
import pytest
import torch
from posexplorer.core import get
from posexplorer.encodings.classics.rope import RoPE
from posexplorer.encodings.inference.a2ats import WRoPE, retrieval_mask, rotate_rows, kmeans, query_aware_kmeans, score_error, synthetic_queries, vq_scores
from posexplorer.figures.a2ats import score_scatter

def _qk(Tq, Tk, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(Tq, D, generator=g, dtype=torch.float64), torch.randn(Tk, D, generator=g, dtype=torch.float64)

@pytest.mark.parametrize("dim,window,r", [(8, 4, 4), (32, 16, 40), (64, 64, 64), (30, 1, 0), (128, 7, 300)])
def test_exact_at_distance_r_with_unquantized_keys(dim, window, r):
    enc = get("wrope", dim=dim, window=window, r=r, sinks=0)
    q, k = _qk(5, 701, dim)
    qp, kp = torch.tensor([700, 650, 400, 333, 699]), torch.arange(701)
    ap, ex = enc.approx_scores(q, k, qp, kp), enc.exact_scores(q, k, qp, kp)
    delta = qp[:, None] - kp[None]
    torch.testing.assert_close(ap[delta == r], ex[delta == r], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ap[delta.abs() < window], ex[delta.abs() < window], atol=0, rtol=0)

def test_far_scores_do_not_depend_on_key_position():
    enc = get("wrope", dim=32, window=8, r=8, sinks=0)
    q, k = _qk(1, 50, 32)
    a = enc.approx_scores(q, k, torch.tensor([1000]), torch.arange(50))  # all 950+ tokens back
    b = enc.approx_scores(q, k, torch.tensor([1000]), torch.randint(0, 900, (50,)))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

def test_exact_scores_are_ropes():
    "Outside reference: the RoPE score written with complex numbers (RoFormer §3.2), Re Σ q_i conj(k_i) e^{i(m−n)θ_i}"
    enc = get("wrope", dim=16)
    q, k = _qk(1, 1, 16)
    m, n = 37, 5
    theta = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    qc, kc = torch.complex(q[0, :8], q[0, 8:]), torch.complex(k[0, :8], k[0, 8:])  # half layout: pair i = (i, i + 8)
    ref = (qc * kc.conj() * torch.exp(1j * (m - n) * theta)).real.sum()
    torch.testing.assert_close(enc.exact_scores(q, k, torch.tensor([m]), torch.tensor([n]))[0, 0], ref)

def test_registered_as_rope_subclass():
    enc = get("wrope", dim=32, window=16, r=20)
    assert isinstance(enc, WRoPE) and isinstance(enc, RoPE) and enc.family == "rotary" and enc.card.arxiv == "2502.12665"
    assert torch.equal(enc.angles(torch.arange(7)), get("rope", dim=32).angles(torch.arange(7)))

def test_kmeans_seeded_and_decreasing():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c1, z1 = kmeans(x, 16, seed=3)
    c2, z2 = kmeans(x, 16, seed=3)
    assert torch.equal(c1, c2) and torch.equal(z1, z2) and z1.max() < 16
    c0, z0 = kmeans(x, 16, iters=0, seed=3)
    assert ((x - c1[z1]) ** 2).sum() < ((x - c0[z0]) ** 2).sum()
    exact = kmeans(x[:16], 16)  # as many codes as points: zero error
    assert torch.allclose(exact[0][exact[1]], x[:16])

def test_query_aware_beats_plain_on_score_error():
    keys = torch.randn(1024, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q = synthetic_queries(400, 32)
    e_plain = score_error(q[200:], keys, *kmeans(keys, 32))
    e_aware = score_error(q[200:], keys, *query_aware_kmeans(keys, q[:200], 32))
    assert e_aware < 0.85 * e_plain

def test_vq_scores_window_exact_far_lookup():
    enc = get("wrope", dim=16, window=8, r=8, sinks=0)
    q, k = _qk(1, 100, 16)
    c, codes = kmeans(k, 10)
    qp, kp = torch.tensor([99]), torch.arange(100)
    v = vq_scores(enc, q, k, qp, kp, c, codes)
    torch.testing.assert_close(v[0, -8:], enc.exact_scores(q, k, qp, kp)[0, -8:])
    torch.testing.assert_close(v[0, :-8], enc.approx_scores(q, c[codes], qp, kp)[0, :-8])

def test_figure():
    f = score_scatter(dim=16, T=100, window=8, r=8)
    assert len(f.data) == 3 and f.layout.title.text.endswith("?")
    assert len(f.data[2].x) == 8 and list(f.data[2].x) == list(f.data[2].y)  # the sink trace: 8 keys, exact

# ---- the authors' settings: defaults, sinks and the keys attended ------------------------------------------------------
def test_defaults_are_the_authors():
    "vqkey/models/llama.py and llama_masked.py, LLM.__init__: wrope_local_window=64, wrope_relative_pos=2048, attention_sink=8"
    enc = get("wrope")
    assert (enc.window, enc.r, enc.sinks) == (64, 2048, 8)

def test_sinks_are_exact_and_absolute():
    enc, bare = get("wrope", dim=16, window=4, r=30, sinks=5), get("wrope", dim=16, window=4, r=30, sinks=0)
    q, k = _qk(2, 60, 16)
    qp, kp = torch.tensor([59, 40]), torch.arange(60)
    a, b, ex = enc.approx_scores(q, k, qp, kp), bare.approx_scores(q, k, qp, kp), enc.exact_scores(q, k, qp, kp)
    torch.testing.assert_close(a[:, :5], ex[:, :5], atol=0, rtol=0)
    torch.testing.assert_close(a[:, 5:], b[:, 5:], atol=0, rtol=0)
    assert not torch.allclose(b[:, :5], ex[:, :5])  # without sinks the first keys are approximated
    c, codes = kmeans(k, 6)
    v = vq_scores(enc, q, k, qp, kp, c, codes)
    torch.testing.assert_close(v[:, :5], ex[:, :5], atol=0, rtol=0)  # never replaced by a centroid

def authors_decode_mask(approx_codebook, seq_len, window, sink, n_top):
    "llama_masked.py, one decoding step (q_len = 1): -inf on the window and the sinks, top-k of the rest, then window and sinks added"
    wrope_mask = ((seq_len - 1) - torch.arange(seq_len))[None] < window
    sink_mask = torch.zeros(1, seq_len, dtype=torch.bool); sink_mask[:, :sink] = True
    a = torch.where(wrope_mask, float("-inf"), approx_codebook)
    a = torch.where(sink_mask, float("-inf"), a)
    m = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, a.topk(n_top, dim=-1).indices, True)
    return torch.where(sink_mask, True, torch.where(wrope_mask, True, m))

@pytest.mark.parametrize("T,window,sinks,n_top", [(300, 64, 8, 20), (97, 5, 0, 9), (129, 16, 3, 1)])
def test_retrieval_matches_authors(T, window, sinks, n_top):
    "Their approximate score of every key is <R_r q, codebook[code]>; the keys they attend equal ours"
    enc = get("wrope", dim=32, window=window, r=2048, sinks=sinks)
    q, k = _qk(1, T, 32, seed=T)
    c, codes = kmeans(k, 12)
    qp, kp = torch.tensor([T - 1]), torch.arange(T)
    theirs = authors_decode_mask(rotate_rows(enc, q, torch.tensor([2048])) @ c[codes].T, T, window, sinks, n_top)
    ours = retrieval_mask(enc, vq_scores(enc, q, k, qp, kp, c, codes), qp, kp, n_top)
    assert torch.equal(ours, theirs) and int(ours.sum()) == min(T, window + sinks + n_top)

# ---- precision at large positions ------------------------------------------------------------------------------
FAR = torch.tensor([2 ** 20, 2 ** 24, 2 ** 31 - 1])  # where a float32 θ_i or a float32 angle would be off by radians

def test_far_positions_match_float64_reference():
    "Scores at positions up to 2³¹ − 1: the float32 path is right to float32 rounding against RoPE written out in float64"
    enc, theta = get("wrope", dim=32, window=4, r=8), 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    q, k = torch.randn(3, 32), torch.randn(3, 32)
    def rot(x, m):  # (T, D) float64, half layout, angles m·θ_i mod 2π
        a, x = torch.remainder(m.double()[:, None] * theta, 2 * math.pi), x.double()
        return torch.cat([x[:, :16] * a.cos() - x[:, 16:] * a.sin(), x[:, 16:] * a.cos() + x[:, :16] * a.sin()], -1)
    torch.testing.assert_close(enc.exact_scores(q, k, FAR, FAR - 3).double(), rot(q, FAR) @ rot(k, FAR - 3).T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.apply(q[None, :, None], None, FAR, backend="torch")[0][0, :, 0].double(), rot(q, FAR), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="head dim"): enc.exact_scores(torch.randn(3, 40), torch.randn(3, 40), FAR, FAR)

@pytest.mark.parametrize("kw,exc", [(dict(window=0), ValueError), (dict(r=-1), ValueError), (dict(window=2.5), TypeError), (dict(dim=7), ValueError),
                                    (dict(sinks=-1), ValueError), (dict(sinks=1.5), TypeError)])
def test_bad_construction(kw, exc):
    with pytest.raises(exc): get("wrope", **{"dim": 16, **kw})

def test_bad_input():
    enc = get("wrope", dim=16)
    q, k = _qk(2, 5, 16)
    with pytest.raises(ValueError, match="q_positions"): enc.approx_scores(q, k, torch.arange(3), torch.arange(5))
    with pytest.raises(ValueError, match="same D"): enc.exact_scores(q, k[:, :8], torch.arange(2), torch.arange(5))
    with pytest.raises(TypeError, match="`q`"): enc.exact_scores(q.tolist(), k, torch.arange(2), torch.arange(5))
    with pytest.raises(ValueError, match="n_codes"): kmeans(k, 10)
    with pytest.raises(ValueError, match="n_codes"): kmeans(k, 0)
    with pytest.raises(TypeError, match="k_positions"): enc.approx_scores(q, k, torch.arange(2), list(range(5)))
    with pytest.raises(ValueError, match="n_retrieved"): retrieval_mask(enc, torch.zeros(2, 5), torch.arange(2), torch.arange(5), -1)
    with pytest.raises(ValueError, match="approx"): retrieval_mask(enc, torch.zeros(2, 4), torch.arange(2), torch.arange(5), 1)
