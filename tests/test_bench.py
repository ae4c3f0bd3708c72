"""The benchmark harness: every contender available here is checked against our output, then timed; the CLI saves JSON and CSV.

`torch.compile` costs 15-25 s on a 2-core CPU the first time (loading inductor, building C++), a few seconds per
case after that, so the compiled contender is timed on one tiny case only."""
import importlib.util, json, math, shutil
import pytest
import torch
from posexplorer.tools import bench
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
