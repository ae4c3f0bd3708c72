"""The peers our parity tests compare against are the versions pinned in requirements.lock, so a test that pins a
peer's behaviour holds for exactly that release (pytest's header prints them). Upgrade on purpose: `make lock`."""
from importlib.metadata import version
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PEERS = ("transformers", "rotary-embedding-torch", "torch", "triton", "nbdev", "panel", "plotly", "playwright")


def locked() -> dict:
    "package -> version pinned in requirements.lock"
    pins = [l.split("==") for l in LOCK.read_text().splitlines() if "==" in l and not l.startswith("#")]
    return {name.lower().replace("_", "-"): v.strip() for name, v in pins}


@pytest.mark.parametrize("peer", PEERS)
def test_peer_is_the_locked_release(peer):
    import torch
    if peer in ("torch", "triton") and torch.cuda.is_available(): pytest.skip("a GPU machine brings its own torch and triton build")
    pinned = locked()[peer]
    installed = version(peer).split("+")[0]  # torch's local build tag (+cpu) is not part of the pin
    assert installed == pinned, f"{peer} {installed} is installed but requirements.lock pins {pinned}: run `make setup`, or `make lock` to upgrade"
