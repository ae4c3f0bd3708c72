"""The `posexplorer` command line refuses bad input before any work: a usage error that names the option, exit status 2,
one message and never a traceback, nothing run and nothing written. `{tmp}` in an argv is a fresh folder holding one
plain file, `file`."""
import pytest
import torch
from posexplorer.tools import bench, bench_attention, cli, lab
from posexplorer.tools.cli import main

NO_CUDA = not torch.cuda.is_available()
BAD = [  # (argv, exit status, words the message must contain)
    ([], 2, "the following arguments are required: command"),
    (["bogus"], 2, "argument command: invalid choice: 'bogus'"),
    # bench: the device, checked as it is parsed (also for --attention)
    (["bench", "--device", "tpu"], 2, "argument --device: device 'tpu' is not one the benchmarks run on: cpu, cuda or cuda:N"),
    (["bench", "--device", ""], 2, "argument --device: device '' is not one"),
    (["bench", "--attention", "--device", "tpu"], 2, "argument --device: device 'tpu'"),
    pytest.param(["bench", "--device", "cuda"], 2, "argument --device: device 'cuda': CUDA is not available on this machine",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    pytest.param(["bench", "--attention", "--device", "cuda:0"], 2, "argument --device: device 'cuda:0': CUDA is not available",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    (["bench", "--device", "cuda:99"], 2, "argument --device: device 'cuda:99'"),
    # bench: outputs, opened before any timing
    (["bench", "--json", "{tmp}/no/such/b.json"], 2, "argument --json: {tmp}/no/such/b.json: the folder {tmp}/no/such does not exist"),
    (["bench", "--csv", "{tmp}/file/b.csv"], 2, "argument --csv: {tmp}/file/b.csv: {tmp}/file is not a folder"),
    (["bench", "--json", "{tmp}"], 2, "argument --json: {tmp} is a folder"),
    (["bench", "--json", ""], 2, "argument --json: empty path"),
    (["bench", "--attention", "--json", "{tmp}/no/such/a.json"], 2, "argument --json"),
    (["bench", "--json", "{tmp}/b.json", "--csv", "{tmp}/b.json"], 2, "argument --csv: {tmp}/b.json is also the --json file"),
    # bench: lists and flags
    (["bench", "--contenders", "torch,tritonn"], 2, "argument --contenders: unknown `contenders` ['tritonn']"),
    (["bench", "--contenders", " , "], 2, "argument --contenders: expected a comma-separated list"),
    (["bench", "--attention", "--contenders", "hf"], 2, "argument --contenders: unknown `contenders` ['hf']; known: ['triton', 'unfused'"),
    (["bench", "--dtypes", "fp8"], 2, "argument --dtypes: unknown 'fp8'; choose from fp32,fp16,bf16"),
    (["bench", "--dtypes", ""], 2, "argument --dtypes: expected a comma-separated list"),
    (["bench", "--quick", "--full"], 2, "argument --full: not allowed with argument --quick"),
    (["bench", "--attention", "--dtypes", "fp32"], 2, "argument --dtypes: not an option of --attention"),
    (["bench", "--attention", "--full"], 2, "argument --full: not an option of --attention"),
    (["bench", "--steps", "3"], 2, "unrecognized arguments: --steps 3"),
    # lab
    (["lab"], 2, "the following arguments are required: run"),
    (["lab", "run", "--steps", "-1"], 2, "argument --steps: must be >= 1, got -1"),
    (["lab", "run", "--steps", "0"], 2, "argument --steps: must be >= 1, got 0"),
    (["lab", "run", "--steps", "1e3"], 2, "argument --steps: must be an integer, got '1e3'"),
    (["lab", "run", "--seeds", "0"], 2, "argument --seeds: must be >= 1"),
    (["lab", "run", "--workers", "0"], 2, "argument --workers: must be >= 1"),
    (["lab", "run", "--batch-size", "-2"], 2, "argument --batch-size: must be >= 1"),
    (["lab", "run", "--n-eval", "0"], 2, "argument --n-eval: must be >= 1"),
    (["lab", "run", "--train-max", "0"], 2, "argument --train-max: must be >= 1"),
    (["lab", "run", "--test-max", "-3"], 2, "argument --test-max: must be >= 1, got -3"),
    (["lab", "run", "--train-max", "8", "--test-max", "4"], 2, "argument --test-max: 4 is below --train-max 8"),
    (["lab", "run", "--test-max", "7"], 2, "argument --test-max: 7 is below --train-max 8"),
    (["lab", "run", "--encodings", ""], 2, "argument --encodings: expected a comma-separated list, got ''"),
    (["lab", "run", "--encodings", ",,"], 2, "argument --encodings: expected a comma-separated list"),
    (["lab", "run", "--encodings", "nope,rotaryy"], 2, "argument --encodings: unknown encoding 'rotaryy'; did you mean 'rotary'?"),
    (["lab", "run", "--encodings", "flux_capacitor"], 2, "argument --encodings: unknown encoding 'flux_capacitor'"),
    (["lab", "run", "--task", ""], 2, "argument --task: expected a comma-separated list"),
    (["lab", "run", "--task", "copy,cpy"], 2, "argument --task: unknown `task` 'cpy'; known: copy, reverse, sort, addition, parity"),
    (["lab", "run", "--engine", "spark"], 2, "argument --engine: invalid choice: 'spark'"),
    (["lab", "run", "--address", "head-without-port"], 2, "argument --address: `--address` must be 'auto', 'host:port'"),
    (["lab", "run", "--out", "{tmp}/file/results"], 2, "argument --out: {tmp}/file/results: {tmp}/file is not a folder"),
    (["lab", "run", "--out", "/proc/posexplorer/results"], 2, "argument --out: /proc/posexplorer/results: cannot write in /proc"),
    (["lab", "run", "--out", ""], 2, "argument --out: empty path"),
    (["lab", "run", "--quiet", "--out", "{tmp}", "--seeds", "1", "--encodings", "nope", "--address", "127.0.0.1:1"], 2,
     "no Ray cluster answers at '127.0.0.1:1'"),  # fails fast, no retry loop
    # help is not an error
    (["bench", "--help"], 0, "--device"),
    (["lab", "run", "--help"], 0, "--encodings"),
]

@pytest.fixture
def nothing_runs(monkeypatch):
    "Any benchmark or trial that starts fails the test"
    for mod, name in ((bench, "run"), (bench_attention, "run"), (lab, "run_trial"), (lab, "preflight")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("work started"))

@pytest.mark.parametrize("argv,status,words", BAD)
def test_bad_input_is_a_usage_error(argv, status, words, tmp_path, capsys, nothing_runs):
    if "127.0.0.1:1" in argv: pytest.importorskip("ray", reason="without Ray the message says to install it")
    (tmp_path / "file").write_text("x")
    fill = lambda s: s.replace("{tmp}", str(tmp_path))
    try: got = main([fill(a) for a in argv])
    except SystemExit as e: got = e.code
    out, err = capsys.readouterr()
    text = out if status == 0 else err
    assert got == status and fill(words) in text and "Traceback" not in err, (got, err)
    if status: assert not out and err.rstrip().splitlines()[-1].startswith("posexplorer") and fill(words) in err.rstrip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written

def test_writable_file_leaves_no_trace(tmp_path):
    "Checking a new output creates and removes it; an existing one keeps its contents"
    assert cli.writable_file(str(tmp_path / "new.json")) == str(tmp_path / "new.json") and not any(tmp_path.iterdir())
    (tmp_path / "old.json").write_text("kept")
    cli.writable_file(str(tmp_path / "old.json"))
    assert (tmp_path / "old.json").read_text() == "kept"

def test_writable_dir_creates_nothing(tmp_path):
    assert cli.writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and not any(tmp_path.iterdir())

def test_bench_library_refuses_bad_devices_and_empty_lists():
    for call, words in [(lambda: bench.run(quick=True, device="tpu"), "device 'tpu'"),
                        (lambda: bench.run(quick=True, contenders=[]), "`contenders` is empty"),
                        (lambda: bench.run(quick=True, dtypes=[]), "`dtypes` is empty"),
                        (lambda: bench_attention.run(quick=True, device="tpu"), "device 'tpu'"),
                        (lambda: bench_attention.run(quick=True, biases=("alibii",)), "unknown `biases` ['alibii']")]:
        with pytest.raises(ValueError, match=None) as e: call()
        assert words in str(e.value)
