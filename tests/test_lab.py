"""The length-generalization lab (posexplorer.tools.lab): task generators against brute force, training, every registered
encoding through a trial, results files (damaged ones refused), Ctrl-C, and a tiny sweep through the Ray path.
The command line's bad options are in test_cli.py."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path
from collections import Counter
from dataclasses import replace
import math
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

@pytest.mark.parametrize("name", lab.names())
def test_every_registered_encoding_runs_a_trial(name):
    "Each registered name through the lab, on a model whose head dim (8) is below every encoding's default: trained, or scored on RoPE"
    model = dict(d_model=16, n_heads=2, n_layers=1, d_ff=16, backend="torch")
    c = (TrialConfig(encoding="rope", eval_with=(name,)) if name in lab.INFERENCE_ONLY else TrialConfig(encoding=name))
    c = replace(c, task="copy", train_max=2, test_max=3, steps=1, batch_size=2, n_eval=2, model=model)
    lab.preflight([check_config(c)])
    rec = run_trial(c)
    assert set(rec["accuracy"]) == {c.encoding, *c.eval_with} and all(0 <= a <= 1 for acc in rec["accuracy"].values() for a in acc.values())
    assert all(math.isfinite(x) for x in rec["loss"])

def test_rope_alibi_harmonic_rotates_the_whole_head():
    "The lab passes the head dim, not the default 64: every feature of a 16-dim head rotates"
    enc = lab.build_encoding("rope_alibi_harmonic", d_model=32, n_heads=2)
    assert enc.rotary.dim == 16 and enc.n_heads == 2

def test_preflight_names_an_encoding_the_lab_cannot_run(monkeypatch, tmp_path):
    def boom(*a, **k): raise RuntimeError("kernel exploded\nsecond line")
    monkeypatch.setattr(lab, "attend", boom)
    monkeypatch.setattr(lab, "run_trial", lambda c: pytest.fail("a trial ran"))
    with pytest.raises(ValueError, match="the lab cannot run encoding 'alibi': RuntimeError: kernel exploded$"):
        sweep(plan("copy", ["alibi"], seeds=1, **TINY), tmp_path, workers=1, progress=False)
    assert not any(tmp_path.iterdir())

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

def test_committed_results_pass_the_checks():
    "The files the notebook reads, written by real sweeps, are whole: every record has every key and its config's key"
    files = sorted((Path(__file__).parents[1] / "nbs" / "lab_results").rglob("*.json"))
    assert files and all(load_results(p) for p in files)

_REC = None
def _record():
    global _REC
    _REC = _REC or run_trial(TrialConfig(task="copy", encoding="nope", **TINY))
    return json.loads(json.dumps(_REC))

def _without(*keys):
    r = _record()
    for k in keys: r.pop(k)
    return json.dumps({"trials": [_record(), r]})

def _wrong_key():
    r = _record(); r["key"] = "0" * 12
    return json.dumps({"trials": [r]})

DAMAGED = [  # (file contents, words in the message)
    (lambda: '{"trials": [\n  {"key": 1,}\n]}', "invalid JSON at line 2 column 13"),
    (lambda: "", "invalid JSON at line 1 column 1"),
    (lambda: '{"foo": 1}', 'no "trials" key'),
    (lambda: '[1, 2]', 'no "trials" key'),
    (lambda: '{"trials": {"a": 1}}', '"trials" is not a list'),
    (lambda: '{"trials": [3]}', "record 0 is not an object"),
    (lambda: _without("accuracy", "loss"), "record 1 is missing keys ['accuracy', 'loss']"),
    (_wrong_key, "record 0 has key '000000000000', but its config's key is"),
]

@pytest.mark.parametrize("text,words", DAMAGED)
def test_damaged_results_file_is_named_and_kept(text, words, tmp_path, capsys, monkeypatch):
    "load_results says which file and what is wrong; the CLI exits with 2 before any training and leaves the file as it was"
    text = text(); p = tmp_path / "copy.json"; p.write_text(text)
    with pytest.raises(ValueError) as e: load_results(p)
    assert str(p) in str(e.value) and words in str(e.value)
    monkeypatch.setattr(lab, "run_trial", lambda c: pytest.fail("a trial ran"))
    assert main(["lab", "run", "--quiet", "--out", str(tmp_path), "--encodings", "nope", "--seeds", "1", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(p) in err and words in err and "Traceback" not in err
    assert p.read_text() == text and sorted(x.name for x in tmp_path.iterdir()) == ["copy.json"]

def test_results_file_that_is_a_folder(tmp_path):
    (tmp_path / "copy.json").mkdir()
    with pytest.raises(ValueError, match="copy.json: cannot read it"): sweep(plan("copy", ["nope"], seeds=1, **TINY), tmp_path, workers=1, progress=False)

def test_unwritable_out_dir_refused_before_any_trial(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(lab, "run_trial", lambda c: pytest.fail("a trial ran"))
    with pytest.raises(ValueError, match="is not a folder"): sweep(plan("copy", ["nope"], seeds=1, **TINY), tmp_path / "file" / "out", workers=1, progress=False)

# ---- Ctrl-C ---------------------------------------------------------------------------------------------
LAB_RUN = ["lab", "run", "--quiet", "--task", "parity", "--encodings", "nope,rope,alibi,t5", "--seeds", "1", "--train-max", "2",
           "--test-max", "3", "--steps", "2", "--batch-size", "4", "--n-eval", "2", "--workers", "1"]

def test_second_ctrl_c_saves_finished_trials_and_exits_130(tmp_path, capsys, monkeypatch):
    "A KeyboardInterrupt inside the third trial (the second Ctrl-C, or no handler): the two finished are saved, exit 130, one line"
    real, calls = lab.run_trial, []
    def trial(c):
        calls.append(c)
        if len(calls) == 3: raise KeyboardInterrupt
        return real(c)
    monkeypatch.setattr(lab, "run_trial", trial)
    assert main(LAB_RUN + ["--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"interrupted: 2 trials finished in this run; saved 2 in {tmp_path / 'parity.json'}; rerun the same command to resume"
    saved = load_results(tmp_path / "parity.json")
    assert [r["config"]["encoding"] for r in saved] == ["nope", "rope"] and sorted(x.name for x in tmp_path.iterdir()) == ["parity.json"]
    monkeypatch.setattr(lab, "run_trial", real)  # the same command resumes: two more trials, the first two kept as they were
    assert main(LAB_RUN + ["--out", str(tmp_path)]) == 0
    again = load_results(tmp_path / "parity.json")
    assert again[:2] == saved and [r["config"]["encoding"] for r in again[2:]] == ["alibi", "t5"]

def test_first_ctrl_c_lets_the_running_trial_finish(tmp_path, capsys, monkeypatch):
    "SIGINT during the second trial: it finishes and is saved, no third one starts, exit 130; the handler is restored after"
    real, calls = lab.run_trial, []
    def trial(c):
        calls.append(c)
        if len(calls) == 2: os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)  # Ctrl-C while the trial runs
        return real(c)
    monkeypatch.setattr(lab, "run_trial", trial)
    before = signal.getsignal(signal.SIGINT)
    assert main(LAB_RUN + ["--out", str(tmp_path)]) == 130
    assert len(calls) == 2 and len(load_results(tmp_path / "parity.json")) == 2 and signal.getsignal(signal.SIGINT) == before
    err = capsys.readouterr().err
    assert "Ctrl-C: finishing the running trials" in err and "interrupted: 2 trials finished in this run; saved 2 in" in err

def test_ctrl_c_on_a_process_pool(tmp_path):
    "A terminal's Ctrl-C (SIGINT to the whole process group) on `lab run --workers 2`: the running trials finish and are saved"
    out = tmp_path / "out"
    argv = ["lab", "run", "--quiet", "--task", "parity", "--encodings", "nope,rope,alibi,t5", "--seeds", "2", "--train-max", "4",
            "--test-max", "6", "--steps", "100", "--batch-size", "8", "--n-eval", "4", "--workers", "2", "--out", str(out)]
    code = f"import sys; from posexplorer.tools.cli import main; sys.exit(main({argv!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    f, t0 = out / "parity.json", time.time()
    while not (f.exists() and load_results(f)):
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read() if proc.poll() is not None else "timed out"
        time.sleep(0.05)
    seen = len(load_results(f))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    saved = load_results(f)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert seen < len(saved) < 8, (seen, len(saved))  # the trials running at the Ctrl-C were finished, and no others began
    assert err.strip().splitlines()[-1] == f"interrupted: {len(saved)} trials finished in this run; saved {len(saved)} in {f}; rerun the same command to resume"

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
    (lambda: check_config(TrialConfig(encoding="rope", eval_with=("alibi",))), ValueError, "`eval_with` takes inference-time"),
    (lambda: check_config(TrialConfig(encoding="alibi", eval_with=("yarn",))), ValueError, "`encoding` must be 'rope'"),
    (lambda: check_config(TrialConfig(encoding="rope", eval_with="yarn")), TypeError, "`eval_with` must be a tuple"),
    (lambda: lab.canonical("rotaryy"), ValueError, "unknown encoding 'rotaryy'; did you mean 'rotary'"),
]

@pytest.mark.parametrize("call,exc,words", BAD)
def test_bad_input_table(call, exc, words):
    with pytest.raises(exc, match=words): call()

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
