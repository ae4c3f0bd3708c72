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


# ---- the "left on the CPU" guard ----------------------------------------------------------------------------------
# A test that runs on the device under test (a module's `DEV`: "cuda" on a GPU machine, "cpu" here) must build every
# input there: q, k, v, angles, positions, biases. A tensor built without `device=` stays on the CPU, which a CPU run
# cannot notice and a GPU run fails on (issue 16: ~60 failures, the first a bias left on the CPU). So a module that
# sets `DEVICE_GUARD = True` runs each test under `HostMix` when there is no GPU: tensors made by a factory with no
# `device` (and results computed from such tensors only) are *host*; tensors made with `device=`, moved with `.to(...)`
# or `.cuda()`, or computed from one of those are *device*. A torch call that takes both (beyond 0-dim scalars, which
# CUDA accepts, and the moves and copies themselves) fails with the function's name: the GPU's error, on the CPU.
# Use it where every test runs on DEV (tests/test_kernels.py): a test that builds CPU-only work on purpose
# (encodings passing `device=positions.device` on the CPU) reads as a device tensor there, so mixed CPU-only modules
# such as test_conformance.py get false alarms. Limits: parameters of an `nn.Module` are not tracked (move the module), and `torch.testing.assert_close` compares
# devices without a torch call, so a host reference there is not caught.
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_FACTORIES = {torch.randn, torch.rand, torch.randint, torch.randperm, torch.arange, torch.zeros, torch.ones, torch.full,
              torch.empty, torch.tensor, torch.linspace, torch.logspace, torch.eye, torch.as_tensor}
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu, torch.Tensor.copy_, torch.Tensor.__getitem__,
          torch.Tensor.__setitem__}

def _moved_to(func, args, kwargs):
    "The tag a move gives its result: 'device' for .to(device)/.cuda(), 'host' for .cpu(), None for a dtype-only .to"
    if func is torch.Tensor.cuda: return "device"
    if func is torch.Tensor.cpu: return "host"
    rest = list(args[1:]) + [kwargs.get("device")]
    if any(isinstance(a, (str, torch.device)) for a in rest): return "device"
    return next((getattr(a, "_dut", None) for a in rest if isinstance(a, torch.Tensor)), None)

class HostMix(TorchFunctionMode):
    "Tag tensors host or device (see above) and refuse a torch call that mixes the two"
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FACTORIES: tag = "device" if kwargs.get("device") is not None else "host"
        elif func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            tag = _moved_to(func, args, kwargs) or getattr(args[0], "_dut", None)
            if out is args[0] and tag != getattr(out, "_dut", None): out = out.view_as(out)  # a no-op move on the CPU: a new handle
        else:
            ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter)]
            tags = {getattr(t, "_dut", None) for t in ins if t.ndim > 0}
            if {"host", "device"} <= tags and func not in _MOVES:
                raise AssertionError(f"`{getattr(func, '__qualname__', func)}` mixes a tensor made without `device=` with tensors on the device "
                                     "under test: on a GPU this call fails. Make it with device=DEV, or move it with .to(DEV).")
            tag = "device" if "device" in tags else ("host" if "host" in tags else None)
        if tag is not None:
            ids = {id(t) for t in tree_leaves((args, kwargs))}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and id(t) not in ids: t._dut = tag  # an input returned (in place) keeps its own tag
        return out

@pytest.fixture(autouse=True)
def _device_guard(request):
    "`HostMix` around each test of a module with `DEVICE_GUARD = True`, on machines without a GPU (a GPU finds these bugs itself)"
    if torch.cuda.is_available() or not getattr(request.module, "DEVICE_GUARD", False): yield; return
    with HostMix(): yield
