"Shared test setup: the Triton interpreter on machines without a GPU, per-dtype tolerances."
import os
import torch
if not torch.cuda.is_available():  # must happen before posexplorer.ops.rotary is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
import pytest

# One table of tolerances per storage dtype (Liger-Kernel style). bf16 has 8 bits of mantissa: two results
# rounded once each from fp32 values that differ in the last fp32 bits can land one bf16 ulp apart.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3.2e-2, rtol=1.6e-2),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available(): item.add_marker(skip)


def pytest_report_header(config):
    "The peer releases the parity tests hold for (pinned in requirements.lock, checked by tests/test_lock.py)"
    from importlib.metadata import PackageNotFoundError, version
    def v(p):
        try: return version(p)
        except PackageNotFoundError: return "not installed"
    return "peers: " + ", ".join(f"{p} {v(p)}" for p in ("transformers", "rotary-embedding-torch", "torch", "triton"))
