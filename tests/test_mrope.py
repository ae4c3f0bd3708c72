"""M-RoPE (`posexplorer.encodings.spacetime.mrope`): position ids of every scheme on hand-worked sequences, Hugging Face parity (Qwen2-VL
positions, rope deltas, cos/sin and rotated q/k; Qwen2.5-VL's temporal stride; Qwen3-VL's interleaved channels), where
Hugging Face 5.x departs from the original Qwen2-VL rule, the claims (text = RoPE, relative, layouts = a pair
permutation), the shared kernel under both section layouts, figures, and bad input."""
import math
import pytest
import torch
from conftest import TOL
from posexplorer.core import angles, get, inv_freq, rotate
from posexplorer.ops.attention import attention_logits
from posexplorer.ops.rotary import apply_rotary_positions
from posexplorer.encodings.spacetime.mrope import (qwen3vl_video, MRoPE, MRoPEInterleaved, mrope_position_ids, contiguous_axes, interleaved_axes,
                                    scaled_sections)
from posexplorer.figures.mrope import position_ids_plot, grid_attention_map
from posexplorer.encodings.spacetime.eva02at import EVA02AT

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs on CUDA tensors, or interpreted on CPU tensors (conftest)
ENCODINGS = ["mrope", "mrope_interleaved"]
MIXED = [("text", 3), ("image", (1, 2, 3)), ("text", 2), ("video", (3, 2, 4)), ("text", 2)]

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---- position ids: hand-worked values --------------------------------------------------------------------
def test_mrope_scheme_by_hand():
    "Qwen2-VL: vision block from the current start, t/h/w = start + (τ, i, j); next text at max + 1"
    pos, nxt = mrope_position_ids([("text", 2), ("video", (2, 2, 3)), ("text", 2)])
    assert pos.dtype == torch.long and nxt == 2 + 3 + 2
    assert pos.tolist() == [[0, 1] + [2] * 6 + [3] * 6 + [5, 6],
                            [0, 1] + [2, 2, 2, 3, 3, 3] * 2 + [5, 6],
                            [0, 1] + [2, 3, 4] * 4 + [5, 6]]

def test_mrope_scheme_long_video_text_after_max():
    "A video with more frames than its larger side: the original rule puts the next text after its last frame"
    pos, nxt = mrope_position_ids([("video", (5, 1, 2)), ("text", 1)])
    assert pos[0, :10].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and pos[:, 10].tolist() == [5, 5, 5] and nxt == 6

def test_qwen25_temporal_stride_truncates():
    "Qwen2.5-VL: frame τ at ⌊τ·δ⌋ with δ = tokens_per_second · second_per_grid_t; positions stay integers"
    pos, nxt = mrope_position_ids([("video", (4, 1, 1)), ("text", 1)], temporal_stride=2.5)
    assert pos[0].tolist() == [0, 2, 5, 7, 8] and pos.dtype == torch.long and nxt == 9

def test_videorope_by_hand():
    "VideoRoPE: t = s + δτ; h, w = t + offset centred with (n-1)//2; next text after the last frame's t"
    pos, nxt = mrope_position_ids([("text", 2), ("video", (2, 3, 3)), ("text", 1)], "videorope", temporal_stride=2.0)
    t0, t1 = [2.0] * 9, [4.0] * 9
    assert pos.dtype == torch.float64 and nxt == 6.0
    assert pos[0].tolist() == [0, 1] + t0 + t1 + [5]
    assert pos[1].tolist() == [0, 1] + [1, 1, 1, 2, 2, 2, 3, 3, 3] + [3, 3, 3, 4, 4, 4, 5, 5, 5] + [5]
    assert pos[2].tolist() == [0, 1] + [1, 2, 3] * 3 + [3, 4, 5] * 3 + [5]

def test_videorope_image_even_sides():
    "Even sides centre on the lower middle: (h-1)//2 = 1 for h = 4; an image's next text starts at t + 1"
    pos, nxt = mrope_position_ids([("image", (1, 4, 2)), ("text", 1)], "videorope")
    assert pos[1].tolist() == [-1, -1, 0, 0, 1, 1, 2, 2, 1] and pos[2].tolist() == [0, 1] * 4 + [1] and nxt == 2.0

@pytest.mark.parametrize("stride", [0.5, 0.75, 1.0, 1.25, 1.5, 2.0])
def test_hope_equals_videorope_with_gamma(stride):
    "HoPE's get_dynamic_rope_index is VideoRoPE's layout with the temporal factor γ in place of δ"
    h, hn = mrope_position_ids(MIXED, "hope", stride)
    v, vn = mrope_position_ids(MIXED, "videorope", stride)
    assert torch.equal(h, v) and hn == vn
    vid = h[0, 3 + 6 + 2:3 + 6 + 2 + 24]
    assert torch.allclose(vid.unique().diff(), torch.tensor(stride, dtype=torch.float64))

@pytest.mark.parametrize("scheme", ["mrope", "videorope", "hope"])
def test_text_only_is_arange(scheme):
    pos, nxt = mrope_position_ids([("text", 7)], scheme, 2.0)
    assert pos.tolist() == [list(range(7))] * 3 and nxt == 7

# ---- Hugging Face parity -----------------------------------------------------------------------------------
def _tiny_qwen2_vl(head_dim=64, sections=(8, 12, 12)):
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_vl import modeling_qwen2_vl as q2
    cfg = transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=64, hidden_size=2 * head_dim, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(sections)}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=2 * head_dim, num_heads=2, mlp_ratio=1, spatial_merge_size=2),
        image_token_id=60, video_token_id=61, vision_start_token_id=62, vision_end_token_id=63)
    return q2, q2.Qwen2VLModel(cfg).eval()

def _hf_prompt(segments, merge=2):
    "input_ids, mm_token_type_ids and grids as Qwen2-VL's processor lays them out (grids before the merge)"
    ids, grids = [], {"image": [], "video": []}
    for kind, size in segments:
        if kind == "text": ids += [5] * size; continue
        ids += [62] + [60 if kind == "image" else 61] * math.prod(size) + [63]
        grids[kind].append([size[0], merge * size[1], merge * size[2]])
    ids = torch.tensor([ids])
    types = torch.where(ids == 60, 1, torch.where(ids == 61, 2, 0))
    return ids, types, *(torch.tensor(grids[k]) if grids[k] else None for k in ("image", "video"))

def _with_markers(segments):
    "Our segments for the same prompt: <vision_start> and <vision_end> are text tokens"
    out = []
    for kind, size in segments: out += [(kind, size)] if kind == "text" else [("text", 1), (kind, size), ("text", 1)]
    return out

SEQS = [MIXED,
        [("image", (1, 3, 3)), ("video", (2, 2, 2)), ("text", 1)],
        [("text", 1), ("video", (4, 4, 5)), ("image", (1, 1, 1)), ("image", (1, 2, 5)), ("text", 3)]]

@pytest.mark.parametrize("seq", SEQS)
def test_qwen2_vl_positions_and_deltas(seq):
    "Videos with t <= max(h, w): Hugging Face 5.x and the original rule agree"
    _, model = _tiny_qwen2_vl()
    ids, types, ig, vg = _hf_prompt(seq)
    hf, deltas = model.get_rope_index(ids, types, image_grid_thw=ig, video_grid_thw=vg)
    ours, nxt = mrope_position_ids(_with_markers(seq))
    assert torch.equal(hf[:, 0], ours) and deltas.item() == nxt - ids.shape[1]

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_qwen2_vl_cos_sin_and_rotation(backend):
    "Qwen2VLRotaryEmbedding (mrope_section applied inside, transformers 5) + apply_rotary_pos_emb = MRoPE.apply"
    q2, model = _tiny_qwen2_vl()
    ids, types, ig, vg = _hf_prompt(MIXED)
    hf_pos, _ = model.get_rope_index(ids, types, image_grid_thw=ig, video_grid_thw=vg)
    T = ids.shape[1]
    cos, sin = q2.Qwen2VLRotaryEmbedding(model.config.text_config)(torch.randn(1, T, 64), hf_pos)  # (1, T, 64)
    enc = get("mrope", dim=64)
    assert enc.mrope_section == (8, 12, 12)
    ours, _ = mrope_position_ids(_with_markers(MIXED))
    a = enc.angles(ours)
    torch.testing.assert_close(cos[0], torch.cat([a.cos(), a.cos()], -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(sin[0], torch.cat([a.sin(), a.sin()], -1), atol=1e-5, rtol=0)
    q, k = torch.randn(1, T, 2, 64), torch.randn(1, T, 1, 64)
    hq, hk = q2.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    oq, ok = (t.cpu() for t in enc.apply(q.to(DEV), k.to(DEV), ours.to(DEV), backend=backend))
    torch.testing.assert_close(oq, hq, atol=1e-5, rtol=1e-5); torch.testing.assert_close(ok, hk, atol=1e-5, rtol=1e-5)

def test_hf5_text_after_long_video_differs():
    """transformers 5.x advances the start by max(h, w) after a vision block; the original get_rope_index (transformers
    4.45, and VideoRoPE's copy) by max(t, h, w). They differ once a video has more frames than its larger side."""
    _, model = _tiny_qwen2_vl()
    seq = [("text", 2), ("video", (6, 1, 2)), ("text", 3)]
    ids, types, ig, vg = _hf_prompt(seq)
    hf, deltas = model.get_rope_index(ids, types, image_grid_thw=ig, video_grid_thw=vg)
    ours, nxt = mrope_position_ids(_with_markers(seq))
    end = 2 + 1 + 12  # text, <vision_start>, the video
    assert torch.equal(hf[:, 0, :end], ours[:, :end])  # identical up to the end of the video
    assert hf[0, 0, end].item() == 3 + 2 and ours[0, end].item() == 3 + 6  # <vision_end>: start + max(h, w) vs start + t
    assert deltas.item() == nxt - ids.shape[1] - 4

def test_qwen25_vl_temporal_stride_matches_hf_inside_the_video():
    "Qwen2.5-VL's frame spacing tokens_per_second · second_per_grid_t, truncated: equal to HF up to the video's end"
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    cfg = transformers.Qwen2_5_VLConfig(vision_config=dict(spatial_merge_size=2, tokens_per_second=2),
                                        image_token_id=60, video_token_id=61, vision_start_token_id=62, vision_end_token_id=63)
    class _Rope:  # the two methods read only `self.config`; no weights needed
        get_rope_index, get_vision_position_ids = Qwen2_5_VLModel.get_rope_index, Qwen2_5_VLModel.get_vision_position_ids
        config = cfg
    seq = [("text", 2), ("video", (4, 2, 3)), ("text", 2)]
    ids, types, ig, vg = _hf_prompt(seq)
    hf, _ = _Rope().get_rope_index(ids, types, video_grid_thw=vg, second_per_grid_ts=torch.tensor([0.75]))
    ours, nxt = mrope_position_ids(_with_markers(seq), temporal_stride=2 * 0.75)
    end = 2 + 1 + 24
    assert torch.equal(hf[:, 0, :end], ours[:, :end])
    assert ours[0, 3:end:6].tolist() == [3, 4, 6, 7]  # 3 + ⌊1.5 τ⌋
    assert ours[0, end].item() == 8 and hf[0, 0, end].item() == 3 + 3  # original: max + 1; HF 5.x: start + max(h, w)

@pytest.mark.parametrize("head_dim,sections", [(128, (24, 20, 20)), (64, (12, 10, 10)), (32, (6, 5, 5))])
def test_qwen3_vl_interleaved_channels(head_dim, sections):
    "Qwen3VLTextRotaryEmbedding's interleaved recomposition picks, pair by pair, the axis our axis map names"
    pytest.importorskip("transformers")
    from transformers.models.qwen3_vl import modeling_qwen3_vl as q3
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    cfg = Qwen3VLTextConfig(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": list(sections), "mrope_interleaved": True})
    rot = q3.Qwen3VLTextRotaryEmbedding(cfg)
    enc = get("mrope_interleaved", dim=head_dim, base=5e6)
    assert enc.mrope_section == sections  # our default scaling reproduces the scaled split
    R = head_dim // 2
    _, s = rot(torch.randn(1, 3, 8), torch.eye(3, dtype=torch.long)[:, None])  # token a: one step along axis a only
    assert torch.equal(s[0, :, :R].abs().argmax(0), enc.axis_map)
    pos, _ = mrope_position_ids(MIXED)
    cos, sin = rot(torch.randn(1, pos.shape[1], 8), pos[:, None])
    a = enc.angles(pos)
    torch.testing.assert_close(cos[0, :, :R], a.cos(), atol=1e-5, rtol=0); torch.testing.assert_close(sin[0, :, R:], a.sin(), atol=1e-5, rtol=0)

# ---- the claims --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("dim", [2, 4, 6, 10, 16, 30, 64, 128])
def test_text_alone_is_rope_exactly(name, dim):
    enc, rope = get(name, dim=dim), get("rope", dim=dim)
    T = 37
    assert torch.equal(enc.angles(torch.arange(T).expand(3, T)), rope.angles(torch.arange(T)))
    assert torch.equal(enc.angles(torch.arange(T).expand(3, T), torch.float64), rope.angles(torch.arange(T), torch.float64))
    q, k = torch.randn(2, T, 3, dim), torch.randn(2, T, 1, dim)
    for got, want in zip(enc.apply(q, k, torch.arange(T).expand(3, T)), rope.apply(q, k)): assert torch.equal(got, want)

@pytest.mark.parametrize("R,sections", [(4, (2, 1, 1)), (8, (4, 2, 2)), (16, (6, 5, 5)), (64, (24, 20, 20)), (64, (22, 21, 21))])
def test_layouts_agree_up_to_a_pair_permutation(R, sections):
    "Interleaved = contiguous with the frequencies permuted (θ_π) on features permuted the same way"
    ci, cc = interleaved_axes(sections), contiguous_axes(sections)
    perm = torch.argsort(ci, stable=True)
    assert torch.equal(ci[perm], cc)
    f = inv_freq(2 * R, dtype=torch.float64)
    pos, _ = mrope_position_ids(MIXED)
    ai, ac = angles(pos, f, torch.float64, axis_map=ci), angles(pos, f[perm], torch.float64, axis_map=cc)
    assert torch.equal(ai[:, perm], ac)
    x = torch.randn(1, pos.shape[1], 2, 2 * R, dtype=torch.float64)
    feat = torch.cat([perm, perm + R])  # half layout: pair p is features p and p + R
    torch.testing.assert_close(rotate(x, ai)[..., feat], rotate(x[..., feat], ac), **TOL[torch.float64])

@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("scheme,stride", [("mrope", 1.0), ("mrope", 1.5), ("videorope", 2.0), ("hope", 0.75)])
@pytest.mark.parametrize("shift", [1, 999, -40])
def test_shifting_all_rows_leaves_scores(name, scheme, stride, shift):
    enc = get(name, dim=32)
    pos, _ = mrope_position_ids(MIXED, scheme, stride)
    q, k = torch.randn(2, 1, pos.shape[1], 2, 32, dtype=torch.float64)
    l0 = attention_logits(q, k, enc, q_positions=pos, k_positions=pos, causal=False, backend="torch")
    l1 = attention_logits(q, k, enc, q_positions=pos + shift, k_positions=pos + shift, causal=False, backend="torch")
    torch.testing.assert_close(l1, l0, atol=1e-3, rtol=1e-4)  # float32 angles

def test_vision_positions_change_scores():
    "Not a no-op: moving one vision token's h changes its scores under either layout"
    pos, _ = mrope_position_ids(MIXED)
    moved = pos.clone(); moved[1, 5] += 3
    for name in ENCODINGS:
        a, b = get(name, dim=32).angles(pos), get(name, dim=32).angles(moved)
        assert not torch.equal(a[5], b[5]) and torch.equal(a[:5], b[:5])

# ---- encodings ---------------------------------------------------------------------------------------------
def test_defaults_and_scaling_rule():
    assert get("mrope").mrope_section == (16, 24, 24) and get("mrope_interleaved").mrope_section == (24, 20, 20)
    assert isinstance(get("mrope_interleaved"), MRoPEInterleaved) and isinstance(get("mrope_interleaved"), MRoPE)
    for R in range(1, 70):
        for paper in ((16, 24, 24), (24, 20, 20)):
            t, h, w = scaled_sections(R, paper)
            assert t + h + w == R and min(t, h, w) >= 0 and h == R * paper[1] // 64 and w == R * paper[2] // 64
        get("mrope_interleaved", dim=2 * R)  # every even dim works
    enc = get("mrope", dim=128)
    assert enc.n_axes == 3 and enc.axis_names == ("t", "h", "w") and enc.axis_map.dtype == torch.long and enc.card.properties["relative"]
    assert enc.default_positions(5).shape == (3, 5)

def test_partial_rotary_sections_split_rotated_pairs():
    enc = get("mrope", dim=96, partial_rotary_factor=0.5, sections=(8, 8, 8))
    assert enc.rotary_dim == 48 and enc.axis_map.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    q = torch.randn(1, 9, 2, 96)
    out, _ = enc.apply(q, None, mrope_position_ids([("image", (1, 3, 3))])[0])
    assert torch.equal(out[..., 48:], q[..., 48:])

# ---- the shared kernel ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("dim,extra", [(16, 0), (64, 6)])
def test_kernel_matches_reference(name, layout, dim, extra):
    "Odd T, GQA, partial rotary, a batch of two sequences with different positions; forward and gradients"
    enc = get(name, dim=dim)
    p1, _ = mrope_position_ids([("text", 3), ("image", (1, 3, 5)), ("video", (2, 3, 3)), ("text", 5)])  # T = 41
    p2, _ = mrope_position_ids([("video", (3, 3, 4)), ("text", 5)], "videorope", 2.0)
    pos = torch.stack([p1, p2.long()], 1).to(DEV)  # (3, B, T)
    q = torch.randn(2, 41, 4, dim + extra, device=DEV, requires_grad=True)
    k = torch.randn(2, 41, 2, dim + extra, device=DEV, requires_grad=True)
    outs, grads = [], []
    for backend in ("triton", "torch"):
        qo, ko = apply_rotary_positions(q, k, pos, enc.inv_freq.to(DEV), enc.axis_map.to(DEV), layout=layout, backend=backend)
        outs.append((qo, ko)); grads.append(torch.autograd.grad((qo ** 2).sum() + (ko * 3).sum(), (q, k)))
    a = enc.angles(pos)  # (B, T, R)
    torch.testing.assert_close(outs[0][0], rotate(q.detach(), a, layout), **TOL[torch.float32])
    torch.testing.assert_close(outs[0][1], rotate(k.detach(), a, layout), **TOL[torch.float32])
    for g1, g2 in zip(*grads): torch.testing.assert_close(g1, g2, **TOL[torch.float32])

# ---- figures -------------------------------------------------------------------------------------------------
def test_position_ids_plot():
    fig = position_ids_plot(MIXED, ["mrope", ("videorope", 2.0)])
    assert len(fig.data) == 6 and [t.name for t in fig.data[:3]] == ["t", "h", "w"] and fig.layout.title.text.endswith("?")
    assert list(fig.data[4].y) == mrope_position_ids(MIXED, "videorope", 2.0)[0][1].tolist()
    assert len(fig.layout.shapes) == 2 * 2  # an image and a video band in each of two panels

def test_grid_attention_map():
    fig = grid_attention_map(get("mrope_interleaved", dim=32), h=5, w=7)
    z = torch.tensor(fig.data[0].z)
    assert z.shape == (5, 7) and z.argmax().item() == 2 * 7 + 3 and math.isclose(z[2, 3].item(), 2 * 16 / math.sqrt(32), rel_tol=1e-5)

# ---- bad input -------------------------------------------------------------------------------------------------
BAD = [
    (dict(segments="text"), TypeError, ["`segments`", "list"]),
    (dict(segments=[]), ValueError, ["`segments` is empty"]),
    (dict(segments=[("text",)]), TypeError, ["`segments[0]`", "(kind, size) pair"]),
    (dict(segments=[("text", 2), ("audio", 3)]), ValueError, ["`segments[1]`", "unknown kind 'audio'"]),
    (dict(segments=[("text", 0)]), ValueError, ["`segments[0]` text length `n`", ">= 1"]),
    (dict(segments=[("text", 2.0)]), TypeError, ["`segments[0]` text length `n`", "int"]),
    (dict(segments=[("image", (2, 3, 3))]), ValueError, ["`segments[0]`", "an image has t = 1"]),
    (dict(segments=[("video", (2, 3))]), TypeError, ["`segments[0]`", "(t, h, w)"]),
    (dict(segments=[("video", (2, -1, 3))]), ValueError, ["`segments[0]` size `h`", ">= 1"]),
    (dict(segments=[("video", (0, 1, 3))]), ValueError, ["`segments[0]` size `t`"]),
    (dict(segments=[("image", (1, 2, True))]), TypeError, ["`segments[0]` size `w`"]),
    (dict(segments=[("text", 2)], scheme="qwen2"), ValueError, ["`scheme`", "mrope"]),
    (dict(segments=[("text", 2)], temporal_stride=0.0), ValueError, ["`temporal_stride`"]),
    (dict(segments=[("text", 2)], temporal_stride=float("nan")), ValueError, ["`temporal_stride`"]),
    (dict(segments=[("text", 2)], temporal_stride="2"), TypeError, ["`temporal_stride`"]),
]

@pytest.mark.parametrize("kwargs,exc,words", BAD)
def test_bad_position_input(kwargs, exc, words):
    with pytest.raises(exc) as e: mrope_position_ids(**kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)

BAD_ENC = [
    (dict(name="mrope", dim=128, sections=(16, 24, 20)), ValueError, ["`sections`", "sum to the 64"]),
    (dict(name="mrope", dim=128, sections=(64, 0)), TypeError, ["`sections`", "(t, h, w)"]),
    (dict(name="mrope", dim=16, sections=(10, -1, -1)), ValueError, ["`sections`", ">= 0"]),
    (dict(name="mrope", dim=16, sections=(8.0, 0, 0)), TypeError, ["`sections`"]),
    (dict(name="mrope_interleaved", dim=128, sections=(4, 30, 30)), ValueError, ["`sections`", "h at most 21"]),
    (dict(name="mrope_interleaved", dim=16, sections=(2, 3, 3)), ValueError, ["`sections`", "w at most 2"]),
    (dict(name="mrope", dim=7), ValueError, ["`dim`"]),
]

@pytest.mark.parametrize("kwargs,exc,words", BAD_ENC)
def test_bad_encoding_params(kwargs, exc, words):
    kwargs = dict(kwargs)
    with pytest.raises(exc) as e: get(kwargs.pop("name"), **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)

def test_bad_figure_input():
    with pytest.raises(ValueError, match="`schemes` is empty"): position_ids_plot(MIXED, [])
    with pytest.raises(ValueError, match="3 position axes"): grid_attention_map(get("rope", dim=16))
    with pytest.raises(ValueError, match="`scheme`"): position_ids_plot(MIXED, ["nope"])

# ---- far positions: every rotary encoding of nbs/spacetime (but aligned_rope) and nbs/learned ----------------------------
FAR_ROTARY = ["mrope", "mrope_interleaved", "videorope", "hope", "erope", "mousi", "axial2d", "dens3r", "rpe2d", "star", "eva02at", "drope"]

def _angles_f64(enc, pos): # (T, R) float64 from the encoding's float64 frequencies, computed here: t ⊗ θ per pair's axis
    def per_axis(f, amap): return (pos.double()[amap] if amap is not None else pos.double()[None].expand(len(f), -1)).T * f.double()
    if isinstance(enc, EVA02AT):  # every pair turns by t·θᵗ + s·θˢ
        return per_axis(enc.temporal_inv_freq, torch.zeros_like(enc.spatial_axis_map)) + per_axis(enc.spatial_inv_freq, enc.spatial_axis_map)
    return per_axis(enc.inv_freq, enc.axis_map)

@pytest.mark.parametrize("name", FAR_ROTARY)
@pytest.mark.parametrize("P", [2 ** 20, 2 ** 24, 2 ** 31 - 1])
def test_far_positions_match_float64(name, P):
    "angles(positions, float64) is float64 throughout (a float32 step would be off by |angle|·6e-8: 128 rad at 2^31), and apply in float32 is right"
    enc = get(name, dim=32)
    vals = torch.tensor([P, -P, P - 1, 3, 0, -(P - 1), 7])  # (T,) exact as int64
    pos = vals if enc.n_axes == 1 else torch.stack([vals.roll(a) for a in range(enc.n_axes)])  # (A, T)
    ref = _angles_f64(enc, pos)
    a64 = enc.angles(pos, torch.float64)
    assert a64.dtype == torch.float64 and all(t.dtype == torch.float64 for t in (getattr(enc, "inv_freq", None), getattr(enc, "temporal_inv_freq", None)) if t is not None)
    torch.testing.assert_close(a64, ref, rtol=2 ** -50, atol=0)  # the same float64 products, up to the order of a sum
    g = torch.Generator().manual_seed(P % 1000)
    q, k = torch.randn(1, 7, 3, 32, generator=g, device="cpu").to(DEV), torch.randn(1, 7, 1, 32, generator=g).to(DEV)
    r64 = ref - 2 * math.pi * torch.round(ref / (2 * math.pi))  # reduced in float64: the float64 reference rotation
    want = rotate(q.double(), r64.to(DEV)), rotate(k.double(), r64.to(DEV))
    outs = [enc.apply(q, k, pos.to(DEV), backend=b) for b in ("torch", "triton")]
    if getattr(enc, "inv_freq", None) is not None:  # the kernel's positions mode: float64 products and wrap inside the kernel
        outs.append(apply_rotary_positions(q, k, pos.to(DEV), enc.inv_freq.to(DEV), None if enc.axis_map is None else enc.axis_map.to(DEV), backend="triton"))
    for out in outs:
        for o, w in zip(out, want): torch.testing.assert_close(o.double(), w, **TOL[torch.float32])

@pytest.mark.parametrize("name", FAR_ROTARY)
def test_head_dim_must_match(name):
    "Partial rotary is asked for (partial_rotary_factor), never inferred from a wider q or k"
    enc = get(name, dim=16)
    pos = enc.default_positions(5)
    with pytest.raises(ValueError, match="head dim"): enc.apply(torch.randn(1, 5, 2, 20), None, pos)
    with pytest.raises(ValueError, match="head dim"): enc.apply(torch.randn(1, 5, 2, 16), torch.randn(1, 5, 1, 12), pos)

# ---- a δ per video (issue 17) ------------------------------------------------------------------------------------
def test_per_video_stride_matches_qwen25_vl():
    "Qwen2.5-VL's `second_per_grid_ts` is one value per video: a list of strides equals HF's get_rope_index over the whole prompt"
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    cfg = transformers.Qwen2_5_VLConfig(vision_config=dict(spatial_merge_size=2, tokens_per_second=2),
                                        image_token_id=60, video_token_id=61, vision_start_token_id=62, vision_end_token_id=63)
    class _Rope:  # the two methods read only `self.config`; no weights needed
        get_rope_index, get_vision_position_ids = Qwen2_5_VLModel.get_rope_index, Qwen2_5_VLModel.get_vision_position_ids
        config = cfg
    seq = [("text", 2), ("video", (3, 2, 4)), ("text", 1), ("video", (2, 3, 3)), ("text", 2)]  # ⌊δ(t-1)⌋ < max(h, w): HF 5.x = original
    ids, types, _, vg = _hf_prompt(seq)
    hf, deltas = _Rope().get_rope_index(ids, types, video_grid_thw=vg, second_per_grid_ts=torch.tensor([0.75, 1.0]))
    ours, nxt = mrope_position_ids(_with_markers(seq), temporal_stride=[2 * 0.75, 2 * 1.0])
    assert torch.equal(hf[:, 0], ours) and deltas.item() == nxt - ids.shape[1]
    assert not torch.equal(mrope_position_ids(_with_markers(seq), temporal_stride=1.5)[0], ours)  # one δ for both is wrong

@pytest.mark.parametrize("bad,exc,words", [([1.0], ValueError, "has 1 values but `segments` holds 2 video segments"),
                                           ([1.0, 2.0, 3.0], ValueError, "has 3 values"), ([1.0, 0.0], ValueError, "`temporal_stride`"),
                                           ([1.0, "2"], TypeError, "`temporal_stride`")])
def test_per_video_stride_bad_input(bad, exc, words):
    with pytest.raises(exc, match=words): mrope_position_ids([("video", (2, 1, 1)), ("image", (1, 2, 2)), ("video", (2, 1, 1))], "hope", bad)

# ---- Qwen3-VL's timestamps (issue 17) ----------------------------------------------------------------------------
def _qwen3_vl_prompt(thw, n_ts, merge=2):
    "input_ids and mm_token_type_ids as Qwen3-VL's processor lays out one video: per frame '<t seconds>' <vision_start> pads <vision_end>"
    t, h, w = thw
    ids = [5] * 3
    for k in n_ts: ids += [9] * k + [62] + [61] * (h * w) + [63]
    ids = torch.tensor([ids + [5] * 2])
    return ids, torch.where(ids == 61, 2, 0), torch.tensor([[t, merge * h, merge * w]])

@pytest.mark.parametrize("thw,n_ts", [((3, 2, 3), [4, 4, 4]), ((2, 3, 1), [5, 6]), ((1, 2, 2), [3])])
def test_qwen3_vl_timestamps_match_hf(thw, n_ts):
    "transformers' Qwen3VLModel.get_rope_index (models/qwen3_vl/modeling_qwen3_vl.py) on a tiny config: equal ids and deltas"
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
    cfg = transformers.Qwen3VLConfig(vision_config=dict(spatial_merge_size=2), image_token_id=60, video_token_id=61,
                                     vision_start_token_id=62, vision_end_token_id=63)
    class _Rope:  # get_rope_index reads only `self.config` and get_vision_position_ids: no weights
        get_rope_index, get_vision_position_ids = Qwen3VLModel.get_rope_index, Qwen3VLModel.get_vision_position_ids
        config = cfg
    ids, types, vg = _qwen3_vl_prompt(thw, n_ts)
    hf, deltas = _Rope().get_rope_index(ids, types, video_grid_thw=vg)
    ours, nxt = mrope_position_ids([("text", 3)] + qwen3vl_video(thw, n_ts) + [("text", 2)])
    assert torch.equal(hf[:, 0], ours) and deltas.item() == nxt - ids.shape[1]

def test_qwen3_vl_timestamps_by_hand():
    "Rule read from get_rope_index: frame = its own (1, h, w) block at s; the next token at s + max(h, w); timestamps are text"
    ours, nxt = mrope_position_ids([("text", 1)] + qwen3vl_video((2, 1, 2), 2))
    assert ours.tolist() == [[0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 10, 12],
                             [0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 10, 12],
                             [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]] and nxt == 13
    assert [k for k, _ in qwen3vl_video((2, 1, 2), 2, markers=False)] == ["timestamp", "video"] * 2
    with pytest.raises(ValueError, match="`timestamp_tokens` has 1 values for 2 frames"): qwen3vl_video((2, 1, 2), [3])
    with pytest.raises(TypeError, match="`timestamp_tokens`"): qwen3vl_video((2, 1, 2), 1.5)

def test_grid_map_panels_have_own_colour_scales():
    "Issue 17: each heatmap its own colour scale, so no panel saturates on the other's range"
    fig = grid_attention_map({"mrope": get("mrope", dim=32), "mrope_interleaved": get("mrope_interleaved", dim=32)}, h=5, w=5)
    assert all(t.coloraxis is None and t.colorbar.x is not None for t in fig.data)
    assert fig.data[0].colorbar.x != fig.data[1].colorbar.x
