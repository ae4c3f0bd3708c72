"The attention benchmark (`posexplorer bench --attention`) runs, checks every contender and says why others did not run."
import json
import math
import pytest
import torch
from posexplorer.tools import bench_attention as ba
from posexplorer.tools.cli import main

def test_quick_run_checks_and_times():
    res = ba.run(quick=True, contenders=["sdpa", "reference"], progress=False)
    assert {(r["contender"], r["bias"]) for r in res} == {(c, b) for c in ("sdpa", "reference") for b in ba.ENCODINGS}
    assert all(r["ms"] > 0 and r["tflops"] > 0 and r["max_err"] < 1e-4 for r in res)
    assert all(r["vs_sdpa"] == 1.0 for r in res if r["contender"] == "sdpa")
    assert "SDPA" in ba.table(res) and "rope" in ba.table(res)

def test_kernel_checked_in_the_interpreter():
    "The fused row, the rotate-then-kernel row and the no-encoding row all run (and are checked) for rope; unfused refuses a bias"
    res = ba.run(quick=True, contenders=["triton", "unfused", "plain"], biases=("alibi", "t5", "rope"), device="cpu", progress=False)
    got = {(r["contender"], r["bias"]) for r in res}
    assert got == {(c, b) for c in ("triton", "plain") for b in ("alibi", "t5", "rope")} | {("unfused", "rope")}
    assert all(r["max_err"] < 1e-4 for r in res)
    assert [s["reason"] for s in res.skipped] == ["rotary encodings only"] * 2
    assert all(r["vs_plain"] > 0 for r in res) and all(r["vs_plain"] == 1.0 for r in res if r["contender"] == "plain")

def test_causal_tflops_count_half_the_logits():
    s = ba.AttnShape("t", 2, 128, 4, 2, 64)
    assert s.flops(False) == 4 * 2 * 4 * 128 * 128 * 64 and s.flops(True) == s.flops(False) / 2

def test_ratios():
    rows = ba._ratios([dict(contender="triton", ms=1.0), dict(contender="sdpa", ms=2.0), dict(contender="plain", ms=0.5)])
    assert rows[0]["vs_sdpa"] == 2.0 and rows[0]["vs_plain"] == 2.0 and math.isnan(rows[0]["vs_flex"])

def test_flex_peer_says_why_not_for_rotary():
    with pytest.raises(Exception, match="no hook to rotate|no FlexAttention"): ba._flex(None, True, torch.zeros(1, 4, 1, 16), torch.zeros(4, 8))

def test_materialized_bias_matches_the_encoding():
    from posexplorer.core import get
    enc = get("alibi", n_heads=2)
    m = ba._materialized(enc, 5, True, "cpu", torch.float32)
    assert m.shape == (1, 2, 5, 5) and torch.isinf(m[0, :, 0, 1:]).all() and m[0, 1, 4, 0] == -4 * enc.slopes[1]

def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="unknown `biases` \\['nope'\\]"): ba.run(quick=True, biases=("nope",), progress=False)

def test_cli(tmp_path, capsys):
    js = tmp_path / "a.json"
    assert main(["bench", "--attention", "--quick", "--contenders", "sdpa,reference", "--no-progress", "--json", str(js)]) == 0
    assert "SDPA" in capsys.readouterr().out and json.loads(js.read_text())["rows"]
    with pytest.raises(SystemExit) as e: main(["bench", "--attention", "--quick", "--contenders", "nope", "--no-progress"])
    assert e.value.code == 2 and "argument --contenders: unknown `contenders` ['nope']" in capsys.readouterr().err
