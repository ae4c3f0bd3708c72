"The shared figures: every registered encoding draws, bad input names its argument, sliders are static."
import json, math
import numpy as np
import pytest
import torch
from posexplorer.core import get, names, inv_freq, BiasEncoding
from posexplorer.figures.shared import (effective_inv_freq, wavelength_plot, kl_disturbance, angle_distribution, score_vs_distance,
                             attention_map, allocation_strip, deviation_plot, figure_data, log_ticks)

class _Slopes(BiasEncoding):
    "bias(m, n) = -slope_h |n - m| (a test double, not registered)"
    name = "toy_bias"
    def __init__(self, slopes): self.slopes, self.n_heads = torch.tensor(slopes), len(slopes)
    def bias(self, qp, kp): return -self.slopes[:, None, None] * (kp[None, :] - qp[:, None]).abs().float()

rope, bias = get("rope", dim=16), _Slopes([0.5, 0.25])

@pytest.mark.parametrize("name", names("rotary"))
def test_every_rotary_encoding_draws(name):
    enc = get(name)
    R = len(effective_inv_freq(enc))
    for fig in (wavelength_plot(enc, context=512), allocation_strip(enc), score_vs_distance(enc, max_distance=32, bound=True),
                angle_distribution(enc, 64, 256, bins=16), deviation_plot(enc, length=256)):
        assert fig.layout.title.text.split("<br>")[0].endswith("?") and json.loads(fig.to_json())
    assert kl_disturbance(enc, 64, 256).shape == (R,)
    fig = attention_map(enc, T=9)  # an odd length; q and k of the head dim the encoding was built for
    assert fig.data[0].z.shape == (9, 9) and np.isfinite(np.tril(np.asarray(fig.data[0].z))).all()

def test_attention_map_partial_rotary_is_built_in():
    "Partial rotary is asked of the encoding (partial_rotary_factor), never inferred from a wider head dim"
    enc = get("rope", dim=20, partial_rotary_factor=0.8)  # 16 of 20 features rotate
    fig = attention_map(enc, T=9)
    assert fig.data[0].z.shape == (9, 9) and fig.layout.title.text.endswith("D = 20</sup>")
    with pytest.raises(ValueError, match="head dim 16"): attention_map(rope, T=9, dim=18)

@pytest.mark.parametrize("name", names("bias"))
def test_every_bias_encoding_draws(name):
    enc = get(name)
    fig = score_vs_distance(enc, max_distance=16, draws=True)  # per-head lines on request
    assert len(score_vs_distance(enc, max_distance=16).data) == 1 and len(fig.data) == enc.n_heads + 1 and attention_map(enc, T=7, dim=64).data[0].z.shape == (7, 7)

CASES = [  # (id, call, exception, the argument its message must name)
    ("bias to wavelength_plot", lambda: wavelength_plot(bias), ValueError, "encodings"),
    ("string to wavelength_plot", lambda: wavelength_plot("rope"), TypeError, "encodings"),
    ("empty list", lambda: allocation_strip([]), ValueError, "encodings"),
    ("zero context", lambda: wavelength_plot(rope, context=0), ValueError, "context"),
    ("float context", lambda: wavelength_plot(rope, context=4096.0), TypeError, "context"),
    ("bias to effective_inv_freq", lambda: effective_inv_freq(bias), ValueError, "enc"),
    ("extended below context", lambda: kl_disturbance(rope, 64, 32), ValueError, "extended"),
    ("negative context", lambda: kl_disturbance(rope, -1, 32), ValueError, "context"),
    ("one bin", lambda: kl_disturbance(rope, 8, 16, bins=1), ValueError, "bins"),
    ("bias reference", lambda: kl_disturbance(rope, 8, 16, reference=bias), ValueError, "reference"),
    ("reference of other width", lambda: angle_distribution(rope, 8, 16, reference=get("rope", dim=8)), ValueError, "reference"),
    ("unknown q", lambda: score_vs_distance(rope, q="zeros"), ValueError, "q"),
    ("q of wrong size", lambda: score_vs_distance(rope, q=torch.ones(8)), ValueError, "q"),
    ("dim below rotary dim", lambda: score_vs_distance(rope, dim=8), ValueError, "dim"),
    ("zero max_distance", lambda: score_vs_distance(rope, max_distance=0), ValueError, "max_distance"),
    ("heads past n_heads", lambda: attention_map(bias, heads=(2,)), ValueError, "heads"),
    ("empty heads", lambda: attention_map(rope, heads=()), ValueError, "heads"),
    ("attention dim too small", lambda: attention_map(rope, dim=8), ValueError, "dim"),
    ("attention dim wider than the encoding's", lambda: attention_map(rope, dim=18), ValueError, "dim"),
    ("encoding given by name", lambda: attention_map("rope"), TypeError, "encoding"),
    ("integer dtype", lambda: deviation_plot(rope, dtypes=(torch.int32,)), ValueError, "dtypes"),
    ("bias to deviation_plot", lambda: deviation_plot(bias), ValueError, "encoding"),
    ("negative distance", lambda: deviation_plot(rope, distance=-1), ValueError, "distance"),
]

@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc) as info: call()
    assert f"`{arg}`" in str(info.value), f"message does not name `{arg}`: {info.value}"

def test_sliders_are_static():
    "Every step carries its own full visibility list: the slider needs no kernel"
    fig = attention_map(bias, T=5, heads=(0, 1), dim=4)
    steps = fig.layout.sliders[0].steps
    assert [s.method for s in steps] == ["restyle"] * 2
    assert [s.args[0]["visible"] for s in steps] == [[True, False], [False, True]]
    assert '"sliders"' in fig.to_json()

def test_score_matches_roformer_closed_form():
    "q = k = 1: the score is 2 Σ_j cos(r θ_j) (RoFormer §3.4.3), at an odd distance range"
    y = np.asarray(score_vs_distance(get("rope", dim=64), max_distance=217).data[0].y)
    th = inv_freq(64, dtype=torch.float64).numpy()
    assert np.allclose(y, 2 * np.cos(np.arange(218)[:, None] * th[None]).sum(-1), atol=1e-3)

def test_inputs_untouched():
    enc = get("rope", dim=16); before = enc.inv_freq.clone()
    wavelength_plot(enc); kl_disturbance(enc, 8, 16); deviation_plot(enc, length=64)
    assert torch.equal(enc.inv_freq, before)

def test_kl_disturbance_direction():
    "Both KL directions share the histograms; a bad direction names the argument"
    from posexplorer.figures.shared import kl_disturbance
    rope, pi = get("rope", dim=16), get("linear", dim=16, factor=2.0)
    a = kl_disturbance(pi, 256, 512, reference=rope, bins=32)
    b = kl_disturbance(pi, 256, 512, reference=rope, bins=32, direction="train||extended")
    assert a.shape == b.shape == (8,) and (a >= 0).all() and (b >= 0).all() and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="`direction`"): kl_disturbance(pi, 256, 512, direction="both")

def _figures():
    "One of every shared figure, tiny"
    return [wavelength_plot({"a": rope, "b": get("rope", dim=16, base=500000.0)}, context=512), allocation_strip(rope),
            score_vs_distance(rope, max_distance=8, bound=True), angle_distribution(rope, 16, 64, bins=8),
            deviation_plot(rope, length=256), attention_map(rope, T=5)]

def _texts(fig):
    "Every title and axis title of a figure"
    lay = fig.layout
    out = [lay.title.text] + [a.text for a in lay.annotations]
    return out + [lay[k].title.text for k in lay if k.startswith(("xaxis", "yaxis")) and lay[k].title.text]

def test_real_subscripts_and_log_ticks():
    "No raw `_i`/`_j` in any title; every log axis has 3 to 12 labelled ticks"
    for fig in _figures():
        for t in _texts(fig): assert not any(s in (t or "") for s in ("_i", "_j", "_m", "_n")), t
        for k in fig.layout:
            ax = fig.layout[k] if k.startswith(("xaxis", "yaxis")) else None
            if ax is not None and ax.type == "log": assert 3 <= len(ax.tickvals) <= 12 and len(ax.ticktext) == len(ax.tickvals)
    for lo, hi in ((1, 2), (1e-7, 1e-1), (1, 1e6), (1e-20, 1e20)): assert 3 <= len(log_ticks(lo, hi)) <= 12
    with pytest.raises(ValueError, match="lo"): log_ticks(0, 1)

def test_score_vs_distance_one_curve_per_encoding():
    encs = {"rope": rope, "rope 5e5": get("rope", dim=16, base=500000.0), "bias": bias}
    assert [t.name for t in score_vs_distance(encs, q="random", max_distance=8).data] == list(encs)
    f = score_vs_distance(encs, q="random", max_distance=8, draws=True)
    assert [t.name for t in f.data if t.showlegend is not False] == list(encs) and all(t.opacity < 1 for t in f.data if t.showlegend is False)

def test_figure_data_round_trips():
    for fig in _figures():
        rows = figure_data(fig)
        assert rows and json.dumps(rows, allow_nan=False)
        for n, tr in enumerate(fig.data):
            mine = [r for r in rows if r["index"] == n]
            if tr.type == "heatmap":
                z = np.asarray(tr.z, float)
                assert all((np.isnan(z[r["row"], r["col"]]) and r["z"] is None) or z[r["row"], r["col"]] == r["z"] for r in mine)
            else:
                assert len(mine) == len(tr.y) and {r["trace"] for r in mine} == {tr.name}
                assert all(a == b or (b is None and not np.isfinite(a)) for a, b in zip(tr.y, (r["y"] for r in mine)))
    with pytest.raises(TypeError, match="fig"): figure_data([])
