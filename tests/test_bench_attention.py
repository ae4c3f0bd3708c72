"The attention benchmark (`posexplorer bench --attention`) runs, checks every contender and says why others did not run."
import json
import pytest
import torch
from posexplorer.tools import bench_attention as ba
from posexplorer.tools.cli import main

def test_quick_run_checks_and_times():
    res = ba.run(quick=True, contenders=["sdpa", "reference"], progress=False)
    assert {(r["contender"], r["bias"]) for r in res} == {(c, b) for c in ("sdpa", "reference") for b in ba.BIASES}
    assert all(r["ms"] > 0 and r["tflops"] > 0 and r["max_err"] < 1e-4 for r in res)
    assert all(r["vs_sdpa"] == 1.0 for r in res if r["contender"] == "sdpa")
    assert "SDPA + bias" in ba.table(res)

def test_kernel_checked_in_the_interpreter():
    res = ba.run(quick=True, contenders=["triton"], biases=("alibi", "t5"), device="cpu", progress=False)
    assert {r["bias"] for r in res} == {"alibi", "t5"} and all(r["max_err"] < 1e-4 for r in res)

def test_materialized_bias_matches_the_encoding():
    from posexplorer.core import get
    enc = get("alibi", n_heads=2)
    m = ba._materialized(enc, 5, True, "cpu", torch.float32)
    assert m.shape == (1, 2, 5, 5) and torch.isinf(m[0, :, 0, 1:]).all() and m[0, 1, 4, 0] == -4 * enc.slopes[1]

def test_cli(tmp_path, capsys):
    js = tmp_path / "a.json"
    assert main(["bench", "--attention", "--quick", "--contenders", "sdpa,reference", "--no-progress", "--json", str(js)]) == 0
    assert "SDPA + bias" in capsys.readouterr().out and json.loads(js.read_text())["rows"]
    with pytest.raises(SystemExit) as e: main(["bench", "--attention", "--quick", "--contenders", "nope", "--no-progress"])
    assert e.value.code == 2 and "argument --contenders: unknown `contenders` ['nope']" in capsys.readouterr().err
