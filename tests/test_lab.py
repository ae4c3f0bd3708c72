"""The length-generalization lab (posexplorer.tools.lab): task generators against brute force, training, results files,
the CLI's bad-input errors, and a tiny sweep through the Ray path."""
import json, random
from collections import Counter
import pytest
import torch
from posexplorer.tools import lab
from posexplorer.tools.lab import (EOS, PAD, PLUS, SEP, TASKS, TinyLM, TrialConfig, VOCAB, check_config, load_results,
                             make_batch, make_example, plan, run_trial, save_results, seq_len, sweep, train)
from posexplorer.tools.cli import main

TINY = dict(train_max=2, test_max=3, steps=2, batch_size=4, n_eval=2)

# ---- tasks: each answer checked by an independent brute-force rule ---------------------------------------
def _number(digits): return sum(d * 10 ** i for i, d in enumerate(digits))  # least significant digit first

def _brute(task, prompt, answer):
    if task == "copy": return answer == prompt
    if task == "reverse": return all(answer[i] == prompt[len(prompt) - 1 - i] for i in range(len(prompt))) and len(answer) == len(prompt)
    if task == "sort": return Counter(answer) == Counter(prompt) and all(x <= y for x, y in zip(answer, answer[1:]))
    if task == "parity":
        odd = False
        for b in prompt: odd = odd != (b == 1)
        return set(prompt) <= {0, 1} and answer == [int(odd)]
    i = prompt.index(PLUS); a, b = prompt[:i], prompt[i + 1:]
    return len(a) == len(b) and len(answer) == len(a) + 1 and _number(answer) == _number(a) + _number(b)

@pytest.mark.parametrize("task", TASKS)
def test_generators_against_brute_force(task):
    rng = random.Random(0)
    for n in range(1, 13):
        for _ in range(20):
            p, a = make_example(task, n, rng)
            assert _brute(task, p, a), (task, p, a)
            assert all(0 <= t <= 9 for t in a) and len(p) + len(a) + 2 == seq_len(task, n)
            assert len(p) == (2 * n + 1 if task == "addition" else n)

def test_addition_carries_reach_the_last_digit():
    "999 + 001 (least significant first: 9,9,9 and 1,0,0) = 1000 -> 0,0,0,1"
    assert _brute("addition", [9, 9, 9, PLUS, 1, 0, 0], [0, 0, 0, 1]) and not _brute("addition", [9, 9, 9, PLUS, 1, 0, 0], [0, 0, 0, 0])

def test_batch_layout_and_mask():
    tok, mask = make_batch("reverse", [1, 4], random.Random(1))
    assert tok.shape == (2, 10) and tok[0, 1] == SEP and tok[0, 3] == EOS and (tok[0, 4:] == PAD).all()
    assert mask.sum(1).tolist() == [2, 5]  # answer tokens + EOS
    assert tok[1, 5:9].tolist() == tok[1, :4].flip(0).tolist()

# ---- model and training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nope", "rope", "alibi", "t5", "sinusoidal", "learned", "hope", "carope", "comrope_ap"])
def test_every_family_plugs_in(name):
    if name not in lab.names(): pytest.skip(f"{name!r} is not registered in this checkout")
    torch.manual_seed(0)
    lm = TinyLM(name)
    lm(torch.randint(0, VOCAB, (2, 9))).logsumexp(-1).mean().backward()
    grads = [p.grad for p in lm.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

def test_twenty_steps_lower_the_loss():
    torch.manual_seed(0)
    c = TrialConfig(task="copy", encoding="rope", steps=20, batch_size=16, train_max=4)
    losses = train(TinyLM("rope"), check_config(c), progress=False)
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < losses[0] - 0.2, losses

@pytest.mark.parametrize("name, attr", [("t5", "table"), ("learned", "weight")])
def test_learned_tables_train_with_the_model(name, attr):
    "T5's bias table and the learned APE table are nn.Parameters of nn.Module encodings: the model's own, and training moves them"
    lm = TinyLM(name)
    table = getattr(lm.encoding, attr)
    assert isinstance(lm.encoding, torch.nn.Module) and isinstance(table, torch.nn.Parameter) and any(p is table for p in lm.parameters())
    t0 = table.detach().clone()
    train(lm, check_config(TrialConfig(task="copy", encoding=name, steps=3, batch_size=4)), progress=False)
    assert getattr(lm.encoding, attr) is table and not torch.equal(t0, table.detach())

# ---- results --------------------------------------------------------------------------------------------
def test_results_round_trip_through_json(tmp_path):
    rec = run_trial(TrialConfig(task="copy", encoding="rope", eval_with=("yarn",), seed=1, **TINY))
    assert set(rec["accuracy"]) == {"rope", "yarn"} and set(rec["accuracy"]["rope"]) == {"1", "2", "3"}
    assert rec["wall_s"] > 0 and "platform" in rec["machine"] and len(rec["attention_distance"]["test"]) == seq_len("copy", 3) - 1
    save_results(tmp_path / "copy.json", [rec])
    back = load_results(tmp_path / "copy.json")[0]
    assert back == rec and json.loads(json.dumps(back)) == rec
    assert TrialConfig(**back["config"]).key() == rec["key"]

def test_sweep_resumes(tmp_path):
    configs = plan("parity", ["nope"], seeds=1, **TINY)
    first = sweep(configs, tmp_path, workers=1, progress=False)["parity"]
    again = sweep(configs, tmp_path, workers=1, progress=False)["parity"]
    assert len(first) == 1 and again == load_results(tmp_path / "parity.json") and again[0]["wall_s"] == first[0]["wall_s"]

def test_plan_rides_inference_encodings_on_rope():
    ps = plan(["copy", "sort"], ["nope", "yarn", "APE"], seeds=2)
    assert len(ps) == 2 * 2 * 3 and {p.encoding for p in ps} == {"nope", "rope", "sinusoidal"}
    assert all(p.eval_with == (("yarn",) if p.encoding == "rope" else ()) for p in ps)

# ---- bad input ------------------------------------------------------------------------------------------
BAD = [  # (call, exception, words in the message)
    (lambda: make_example("copy", 0, random.Random(0)), ValueError, "`n`"),
    (lambda: make_example("cpy", 3, random.Random(0)), ValueError, "unknown `task`"),
    (lambda: check_config(TrialConfig(train_max=8, test_max=4)), ValueError, "`test_max`"),
    (lambda: check_config(TrialConfig(steps=0)), ValueError, "`steps`"),
    (lambda: check_config(TrialConfig(encoding="yarn")), ValueError, "eval_with"),
    (lambda: plan("copy", ["ropee"], 1), ValueError, "did you mean"),
    (lambda: plan("copy", [], 1), ValueError, "`encodings`"),
    (lambda: sweep([], engine="spark"), ValueError, "`engine`"),
]

@pytest.mark.parametrize("call,exc,words", BAD)
def test_bad_input_table(call, exc, words):
    with pytest.raises(exc, match=words): call()

@pytest.mark.parametrize("argv,words", [
    (["--task", "cpy"], "unknown `task`"),
    (["--encodings", "nope,rotaryy"], "unknown encoding"),
    (["--train-max", "0"], "--train-max must be positive"),
    (["--test-max", "-3"], "`test_max`"),
    (["--seeds", "0"], "`seeds`"),
    (["--steps", "-1"], "`steps`"),
    (["--address", "127.0.0.1:1", "--seeds", "1", "--encodings", "nope"], "no Ray cluster answers"),  # fails fast, no retry loop
    (["--address", "head-without-port", "--seeds", "1", "--encodings", "nope"], "`--address`"),
])
def test_cli_bad_input_exits_cleanly(argv, words, capsys, tmp_path):
    assert main(["lab", "run", "--quiet", "--out", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not any(tmp_path.iterdir())

# ---- scale out ------------------------------------------------------------------------------------------
def test_ray_path_tiny_sweep(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install ray); the Ray path is not tested without it")
    try: ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # a local Ray node; `sweep` uses it
    except Exception as e: pytest.skip(f"Ray is installed but could not start a local node here: {e}")
    try:
        res = sweep(plan("copy", ["nope", "rope", "yarn"], seeds=1, **TINY), tmp_path, workers=1, engine="ray", progress=False)
    finally: ray.shutdown()
    recs = load_results(tmp_path / "copy.json")
    assert len(recs) == 2 and {r["config"]["encoding"] for r in recs} == {"nope", "rope"} and res["copy"] == recs
    assert "yarn" in next(r for r in recs if r["config"]["encoding"] == "rope")["accuracy"]
