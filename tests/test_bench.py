"""The benchmark harness: every contender available here is checked against our output, then timed; the CLI saves JSON and CSV.

`torch.compile` costs 15-25 s on a 2-core CPU the first time (loading inductor, building C++), a few seconds per
case after that, so the compiled contender is timed on one tiny case only."""
import importlib.util, json, math, shutil
import pytest
import torch
from posexplorer.tools import bench
from posexplorer.core import rotate, angles, inv_freq
from posexplorer.kernels import apply_rotary
from posexplorer.tools.cli import main

TINY = bench.Shape("tiny", 1, 16, 2, 1, 16)
PARTIAL = bench.Shape("tiny odd partial", 1, 7, 2, 1, 16, R=4)
HAS_HF = importlib.util.find_spec("transformers") is not None
CAN_COMPILE = torch.cuda.is_available() or bool(shutil.which("g++") or shutil.which("c++"))

def _sane(res, contenders):
    "Every row matched our output, has finite positive timings and bandwidths; each contender timed fwd and fwd+bwd"
    assert {(r["contender"], r["mode"]) for r in res} == {(c, m) for c in contenders for m in ("fwd", "fwd+bwd")}
    for r in res:
        assert r["matched"] and math.isfinite(r["max_err"]) and r["max_err"] <= bench.TOL[getattr(torch, r["dtype"])]["atol"] * 2
        assert math.isfinite(r["ms"]) and r["ms"] > 0 and r["gbps"] > 0 and r["copy_pct"] > 0
        assert r["gbps"] == pytest.approx(bench.bytes_moved(bench.Shape(r["shape"], r["B"], r["T"], r["Hq"], r["Hk"], r["D"], r["R"]),
                                                           getattr(torch, r["dtype"]), r["mode"] == "fwd+bwd") / r["ms"] / 1e6)

@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_run_quick_torch_and_hf():
    res = bench.run(quick=True, shapes=[TINY, PARTIAL], dtypes=[torch.float32, torch.bfloat16], contenders=["torch", "hf"], progress=False)
    _sane(res, ["torch", "hf"])
    assert len(res) == 2 * 2 * 2 * 2 and not res.skipped
    assert all(r["vs_hf"] > 0 and math.isfinite(r["vs_hf"]) for r in res)  # the ratio to Hugging Face's path
    assert all(r["vs_hf"] == 1.0 for r in res if r["contender"] == "hf")
    text = bench.table(res)
    assert "posexplorer torch" in text and "HF transformers" in text and "speedup vs HF apply path" in text
    assert "| tiny odd partial | bfloat16 |" in res.to_markdown()

@pytest.mark.skipif(not CAN_COMPILE, reason="torch.compile on a CPU needs a C++ compiler")
def test_run_compiled():
    res = bench.run(quick=True, shapes=[TINY], dtypes=[torch.float32], contenders=["torch", "compiled"], progress=False)
    _sane(res, ["torch", "compiled"])
    assert not res.skipped

def test_run_triton():
    "Our kernel: on a GPU for real, on a CPU in Triton's interpreter (only when asked for by name: far too slow to time)"
    if not (torch.cuda.is_available() or bench.kernels.INTERPRET): pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    res = bench.run(quick=True, shapes=[PARTIAL], dtypes=[torch.float32], contenders=["triton"], progress=False)
    _sane(res, ["triton"])

def test_unavailable_contenders_say_why():
    res = bench.run(quick=True, shapes=[TINY], dtypes=[torch.float32], contenders=["liger", "flash_attn"], progress=False, device="cpu")
    ran = {r["contender"] for r in res}
    assert ran | {s["contender"] for s in res.skipped} == {"liger", "flash_attn"}
    assert all(s["reason"] for s in res.skipped) and all(f"not timed: {bench.CONTENDERS[s['contender']][0]}" in bench.table(res) for s in res.skipped)

def test_wrong_kernel_is_not_timed(monkeypatch):
    "A contender whose output differs from ours is reported as skipped, never timed"
    def bad(c): return lambda q, k: (q * 1.0, k * 1.0)  # forgets to rotate
    monkeypatch.setitem(bench.CONTENDERS, "bad", ("bad", bad))
    res = bench.run(quick=True, shapes=[TINY], dtypes=[torch.float32], contenders=["bad"], progress=False)
    assert not res and res.skipped[0]["contender"] == "bad" and "wrong q" in res.skipped[0]["reason"]

def test_bad_contender_name():
    with pytest.raises(ValueError, match="unknown `contenders`"): bench.run(quick=True, contenders=["nope"])

@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_cli_bench_quick(tmp_path, capsys):
    js, cs = tmp_path / "bench.json", tmp_path / "bench.csv"
    assert main(["bench", "--quick", "--contenders", "torch,hf", "--dtypes", "fp32", "--no-progress", "--json", str(js), "--csv", str(cs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: ") and "posexplorer torch" in out and "HF transformers" in out and "speedup vs HF apply path" in out
    data = json.loads(js.read_text())
    assert data["device"] and data["torch"] == torch.__version__
    assert {r["contender"] for r in data["rows"]} == {"torch", "hf"} and all(r["matched"] and r["ms"] > 0 for r in data["rows"])
    assert cs.read_text().splitlines()[0].startswith("shape,B,T,Hq,Hk,D,R,dtype,contender")
    assert len(cs.read_text().splitlines()) == len(data["rows"]) + 1

def test_cli_needs_a_subcommand(capsys):
    with pytest.raises(SystemExit) as e: main([])
    assert e.value.code == 2 and "bench" in capsys.readouterr().err

class _InPlaceRope(torch.autograd.Function):
    "Correct rotary, but like Liger its backward writes dq, dk into the grad buffers it is handed"
    @staticmethod
    def forward(ctx, q, k, a):
        ctx.save_for_backward(a)
        return rotate(q, a), rotate(k, a)
    @staticmethod
    def backward(ctx, gq, gk):
        a, = ctx.saved_tensors
        return gq.copy_(rotate(gq, -a)), gk.copy_(rotate(gk, -a)), None

def _in_place(c): return lambda q, k: _InPlaceRope.apply(q, k, angles(c.positions, c.inv_freq))

@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_grad_mutating_contender_spoils_no_other(monkeypatch):
    "A contender that rotates its incoming grads in place (Liger) must not make the next one (HF) look wrong (issue 16)"
    c = bench.Case(TINY, torch.float32, "cpu"); q, k = c.inputs(); gq = torch.randn_like(q); g0 = gq.clone()
    q.requires_grad_(True); torch.autograd.grad(_in_place(c)(q, k)[0], q, gq)
    assert not torch.equal(gq, g0)  # the stand-in really does spoil a shared grad
    monkeypatch.setitem(bench.CONTENDERS, "in_place", ("in place", _in_place))
    res = bench.run(quick=True, shapes=[TINY, PARTIAL], dtypes=[torch.float32], contenders=["in_place", "hf"], progress=False, device="cpu")
    assert not res.skipped, res.skipped  # before the fix: "wrong dq" for hf
    _sane(res, ["in_place", "hf"])

@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_hf_autograd_grads_match_ours():
    "Our kernel's dq, dk equal transformers' autograd through `apply_rotary_pos_emb` with `LlamaRotaryEmbedding`'s cos/sin (fp32, CPU)"
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    B, T, Hq, Hk, D = 2, 13, 3, 1, 16
    cfg = LlamaConfig(hidden_size=Hq * D, num_attention_heads=Hq, num_key_value_heads=Hk, head_dim=D, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(B, T, Hq, D, generator=g), torch.randn(B, T, Hk, D, generator=g)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    pos = torch.arange(T)
    cos, sin = LlamaRotaryEmbedding(cfg)(q, pos[None])  # (1, T, D)
    backends = ["torch"] + (["triton"] if bench.kernels.INTERPRET or torch.cuda.is_available() else [])
    hq, hk = q.clone().requires_grad_(), k.clone().requires_grad_()
    hf = torch.autograd.grad(apply_rotary_pos_emb(hq, hk, cos, sin, unsqueeze_dim=2), (hq, hk), (gq, gk))
    for be in backends:
        oq, ok = q.clone().requires_grad_(), k.clone().requires_grad_()
        ours = torch.autograd.grad(apply_rotary(oq, ok, angles(pos, inv_freq(D, 10000.0)), backend=be), (oq, ok), (gq.clone(), gk.clone()))
        for a, b in zip(ours, hf): torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)

@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_kernel_and_layer_modes_side_by_side():
    "Kernel mode (cos/sin built once) and layer mode in one run; ratios to ours per prep mode; graphs n/a on a CPU"
    res = bench.run(quick=True, shapes=[PARTIAL], dtypes=[torch.float32], contenders=["torch", "hf", "torch_k", "hf_k"], progress=False, device="cpu")
    _sane(res, ["torch", "hf", "torch_k", "hf_k"])
    assert {r["prep"] for r in res if r["contender"].endswith("_k")} == {"kernel"} and {r["prep"] for r in res if r["contender"] in ("torch", "hf")} == {"layer"}
    assert all(r["ours_x"] == 1.0 for r in res if r["contender"] in ("torch", "torch_k"))
    ours = {(r["prep"], r["mode"]): r["ms"] for r in res if r["contender"] in ("torch", "torch_k")}
    assert all(r["ours_x"] == pytest.approx(r["ms"] / ours[r["prep"], r["mode"]]) for r in res)
    fwd = [r for r in res if r["mode"] == "fwd"]
    assert all(math.isnan(r["graph_ms"]) and r["graph_error"] == "n/a on CPU" for r in fwd)
    assert "n/a" in bench.table(res) and "ours faster" in bench.table(res)

def test_kernel_mode_builds_tables_once(monkeypatch):
    "The kernel-mode call computes no angles: `angles` is called while building, never while timing"
    c = bench.Case(TINY, torch.float32, "cpu"); fn = bench._torch_k(c); q, k = c.inputs()
    monkeypatch.setattr(bench, "angles", lambda *a: pytest.fail("angles computed inside the timed call"))
    fn(q, k)

def test_bad_mode():
    with pytest.raises(ValueError, match="`mode`"): bench.run(quick=True, mode="fast")

@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_cli_mode_kernel(tmp_path, capsys):
    js = tmp_path / "b.json"
    assert main(["bench", "--quick", "--mode", "kernel", "--contenders", "torch_k,hf_k", "--dtypes", "fp32", "--no-progress", "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert {r["prep"] for r in rows} == {"kernel"} and all(r["ours_x"] > 0 for r in rows)
    assert all(r["graph_ms"] is None for r in rows if r["mode"] == "fwd")  # NaN -> null: no graphs on a CPU
