"""DRoPE (`posexplorer.encodings.learned.drope`): the heading pairs against lucidrains' rotary-embedding-torch (`freqs_for="constant"`),
the split rule for every even d, dependence on ψ_n − ψ_m only, exact 2π periodicity (and RoPE's lack of it), invariance
to turning every heading, the shared kernel's backends with the axis map, gradients, inputs untouched, bad input.
No code of the authors was found; the checks follow the paper's description (arXiv:2503.15029)."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import get, rotate, inv_freq
from posexplorer.encodings.learned.drope import DRoPE, drope_frequencies, agent_positions
from posexplorer.figures.drope import heading_score_plot, _heading_scores
from posexplorer.ops.rotary import apply_rotary_positions
from posexplorer.ops.attention import attention_logits

DEV = "cuda" if torch.cuda.is_available() else "cpu"

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- outside: lucidrains' rotary-embedding-torch ----------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n,T", [(2, 5), (6, 17), (16, 3)])
def test_heading_pairs_match_lucidrains_constant_freqs(backend, n, T):
    "RotaryEmbedding(2n, freqs_for='constant', num_freqs=n) fed the headings = DRoPE with only heading pairs, interleaved"
    re = pytest.importorskip("rotary_embedding_torch")
    pos = agent_positions(T)
    table = re.RotaryEmbedding(2 * n, freqs_for="constant", num_freqs=n)(pos[2])  # (T, 2n)
    x = torch.randn(2, 3, T, 2 * n)  # (B, H, T, D)
    theirs = re.apply_rotary_emb(table, x)
    enc = get("drope", dim=2 * n, heading_pairs=n)
    ours = enc.apply(x.transpose(1, 2).contiguous().to(DEV), None, pos.to(DEV), layout="interleaved", backend=backend)[0]
    torch.testing.assert_close(ours.cpu().transpose(1, 2), theirs, **TOL[torch.float32])

# ---- the split ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", range(2, 34, 2))
def test_split_rule_every_even_dim(d):
    "ψ gets ⌈R/2⌉ pairs at frequency exactly 1; x gets ⌈(R − R_ψ)/2⌉, y the rest, with axial RoPE frequencies"
    f, amap = drope_frequencies(d)
    R = d // 2; n_psi = (R + 1) // 2; n_x = (R - n_psi + 1) // 2
    assert amap.tolist() == [0] * n_x + [1] * (R - n_psi - n_x) + [2] * n_psi
    assert f.dtype == torch.float64 and bool((f[amap == 2] == 1.0).all())
    if R - n_psi: torch.testing.assert_close(f[amap == 0][: (amap == 1).sum()], f[amap == 1])
    assert get("drope", dim=d).rotary_dim == d

def test_xy_frequencies_known_values():
    "d = 16, base 100: 4 (x, y) pairs, θ = 100^(−4j/8) = (1, 0.1) on each axis"
    f, amap = drope_frequencies(16, 100.0)
    torch.testing.assert_close(f, torch.tensor([1.0, 0.1, 1.0, 0.1, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))

# ---- properties ----------------------------------------------------------------------------------------------
def _logits(enc, q, k, p): return attention_logits(q, k, enc, q_positions=p, k_positions=p, causal=False, backend="torch")

@pytest.mark.parametrize("d,T", [(2, 7), (6, 13), (32, 21)])
def test_depends_only_on_offsets_and_heading_difference(d, T):
    enc = get("drope", dim=d)
    q, k = torch.randn(1, T, 2, d), torch.randn(1, T, 2, d)
    p = agent_positions(T)
    L0 = _logits(enc, q, k, p)
    for delta in ([2.5, -1.0, 0.0], [0.0, 0.0, 0.9], [-30.0, 12.0, -2.2]):  # translate, turn every heading, both
        torch.testing.assert_close(_logits(enc, q, k, p + torch.tensor(delta)[:, None]), L0, atol=1e-4, rtol=1e-4)

def test_exact_two_pi_periodicity_and_rope_contrast():
    "Each heading moved by its own multiple of 2π: DRoPE unchanged, RoPE's non-integer frequencies are not"
    T, d = 15, 16
    enc = get("drope", dim=d)
    q, k = torch.randn(1, T, 2, d, dtype=torch.float64), torch.randn(1, T, 2, d, dtype=torch.float64)
    p = agent_positions(T).double()
    wrap = p.clone(); wrap[2] += 2 * math.pi * torch.randint(-5, 6, (T,)).double()
    a0, a1 = enc.angles(p, torch.float64), enc.angles(wrap, torch.float64)
    def scores(a): return torch.einsum("bqhd,bkhd->bhqk", rotate(q, a), rotate(k, a))
    torch.testing.assert_close(scores(a1), scores(a0), atol=1e-9, rtol=1e-9)  # float64: exact up to rounding of 2π·m
    rope_f = inv_freq(2 * int((enc.axis_map == 2).sum()), 10000.0, torch.float64)
    f = enc.inv_freq.double().clone(); f[enc.axis_map == 2] = rope_f
    from posexplorer.core import angles
    b0, b1 = angles(p, f, torch.float64, enc.axis_map), angles(wrap, f, torch.float64, enc.axis_map)
    assert (scores(b1) - scores(b0)).abs().max() > 0.1

def test_heading_score_is_one_cosine():
    "Identical frequency-1 pairs: the score over Δψ is a·cos Δψ + b·sin Δψ with a + ib = Σ conj(q_j) k_j"
    enc = get("drope", dim=12, heading_pairs=6)
    q, k = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    dpsi = torch.linspace(-7, 7, 101, dtype=torch.float64)
    s = torch.as_tensor(_heading_scores(enc, q, k, dpsi))
    zq, zk = torch.complex(q[:6], q[6:]), torch.complex(k[:6], k[6:])  # half layout: pair j = (j, j + 6)
    c = (zq.conj() * zk).sum()
    torch.testing.assert_close(s, c.real * dpsi.cos() - c.imag * dpsi.sin(), atol=1e-10, rtol=1e-10)

def test_scene_rotation_is_not_a_symmetry():
    "A limit: turning (x, y) and ψ together changes the scores (the (x, y) part is axial RoPE)"
    enc, T = get("drope", dim=16), 9
    q, k = torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16)
    p = agent_positions(T) * torch.tensor([[3.0], [3.0], [1.0]])
    c, s = math.cos(0.8), math.sin(0.8)
    r = torch.stack([c * p[0] - s * p[1], s * p[0] + c * p[1], p[2] + 0.8])
    assert (_logits(enc, q, k, r) - _logits(enc, q, k, p)).abs().max() > 1e-2

# ---- kernel ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("d,T,extra", [(10, 19, 0), (32, 7, 6)])
def test_shared_kernel_matches_torch_with_axis_map(layout, d, T, extra):
    "The kernel's positions mode vs `enc.apply` (torch); a head `extra` features wider is the raw kernel's explicit partial rotary"
    enc = get("drope", dim=d)  # DRoPE has no partial rotary: its `apply` takes head dim d only
    q, k = torch.randn(2, T, 4, d + extra, device=DEV), torch.randn(2, T, 2, d + extra, device=DEV)
    q0, k0 = q.clone(), k.clone()
    pos = agent_positions(T, device=DEV)
    t = apply_rotary_positions(q, k, pos, enc.inv_freq.to(DEV), enc.axis_map.to(DEV), layout=layout, backend="triton")
    r = enc.apply(q[..., :d].contiguous(), k[..., :d].contiguous(), pos, layout=layout, backend="torch")
    torch.testing.assert_close(t[0][..., :d], r[0], **TOL[torch.float32]); torch.testing.assert_close(t[1][..., :d], r[1], **TOL[torch.float32])
    assert torch.equal(q, q0) and torch.equal(k, k0)  # inputs untouched
    assert torch.equal(t[0][..., d:], q[..., d:]) and torch.equal(t[1][..., d:], k[..., d:])  # features past the rotary dim pass through

def test_gradients_through_both_backends():
    enc, T = get("drope", dim=12), 11
    pos = agent_positions(T, device=DEV)
    grads = []
    for backend in ("torch", "triton"):
        q = torch.randn(1, T, 2, 12, device=DEV, generator=torch.Generator(DEV).manual_seed(3)).requires_grad_()
        enc.apply(q, None, pos, backend=backend)[0].square().mul(torch.arange(12., device=DEV)).sum().backward()
        grads.append(q.grad)
    torch.testing.assert_close(grads[1], grads[0], **TOL[torch.float32])

def test_heading_score_plot():
    fig = heading_score_plot({"DRoPE": get("drope", dim=8, heading_pairs=4)}, turns=1.0)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 401

# ---- bad input -----------------------------------------------------------------------------------------
BAD = [
    (lambda: get("drope", dim=7), ValueError, "`dim`"),
    (lambda: get("drope", dim="8"), TypeError, "`dim`"),
    (lambda: get("drope", dim=8, heading_pairs=5), ValueError, "`heading_pairs`"),
    (lambda: get("drope", dim=8, heading_pairs=-1), ValueError, "`heading_pairs`"),
    (lambda: get("drope", dim=8, heading_pairs=1.5), TypeError, "`heading_pairs`"),
    (lambda: get("drope", base=0.0), ValueError, "`base`"),
    (lambda: get("drope", dim=8).angles(torch.zeros(2, 5)), ValueError, "`positions`"),
    (lambda: get("drope", dim=8).angles(torch.full((3, 4), float("nan"))), ValueError, "`positions`"),
    (lambda: get("drope", dim=8).apply(torch.randn(1, 4, 1, 10), None, agent_positions(4)), ValueError, "head dim"),  # no partial rotary
    (lambda: agent_positions(0), ValueError, "`T`"),
    (lambda: agent_positions(4, spacing=-1.0), ValueError, "`spacing`"),
    (lambda: heading_score_plot({"x": get("drope")}, turns=0), ValueError, "`turns`"),
]

@pytest.mark.parametrize("call,exc,msg", BAD)
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg): call()

# ---- training: the learned heading preference survives ψ → ψ + 2πm -----------------------------------------
def test_training_heading_match_is_periodic():
    "One learned q, k (d = 8): the loss falls; DRoPE's accuracy on headings moved by multiples of 2π equals its train accuracy"
    from posexplorer.tools.train_drope import heading_task, train_heading_match, heading_match_accuracy, heading_match_logits
    psi, tgt = heading_task(n_scenes=96, seed=2)
    psi_wr = psi + 2 * math.pi * torch.randint(-3, 4, psi.shape, generator=torch.Generator().manual_seed(3)).double()
    enc = get("drope", dim=8, heading_pairs=4)
    q, k, losses = train_heading_match(enc, psi, tgt, steps=80, progress=False)
    assert losses[-1] < 0.3 * losses[0]
    acc = heading_match_accuracy(enc, q, k, psi, tgt)
    assert acc > 0.9 and heading_match_accuracy(enc, q, k, psi_wr, tgt) == acc
    torch.testing.assert_close(heading_match_logits(enc, q, k, psi_wr), heading_match_logits(enc, q, k, psi), atol=1e-9, rtol=0)
    contrast = get("drope", dim=8, heading_pairs=4); contrast.inv_freq = inv_freq(8, 100.0)  # RoPE's θ_i on the heading
    qc, kc, _ = train_heading_match(contrast, psi, tgt, steps=80, progress=False)
    assert (heading_match_logits(contrast, qc, kc, psi_wr) - heading_match_logits(contrast, qc, kc, psi)).abs().max() > 1e-2
