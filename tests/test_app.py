"""The explorer app (`posexplorer serve`, nbs/tools/app.ipynb).

Fast tests build `app()` and the config box without a server. The browser test starts `posexplorer serve` in a
subprocess on a free 127.0.0.1 port, opens it in Debian's Chromium through Playwright (tools/chromium.py), picks a
second and third encoding, moves a slider, pastes a valid and an invalid config.json, and checks that the figure
changed, that no console error was logged and that no request left 127.0.0.1. The page is saved to
test-artifacts/app.png.
"""
import json, shutil, socket, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlsplit

import panel as pn
import pytest

from posexplorer.tools import app as A

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from chromium import CHROMIUM, launch  # the one way this project opens Chromium
ARTIFACTS = ROOT / "test-artifacts"

LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
         "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


def test_app_builds():
    a = A.app()
    assert isinstance(a, pn.Row)
    tabs = a[1]
    assert [t for t in tabs._names] == list(A.TABS) + ["HF config"]


def test_every_tab_draws_or_explains():
    s = dict(dim=64, base=10000.0, factor=2.0, context=1024, extended=4096)
    encs = {n: A.build(n, s) for n in ("rope", "llama3", "t5")}
    for tab in A.TABS: assert A.figure(tab, encs, s).data, tab
    assert A.figure("wavelength", {"t5": encs["t5"]}, s).layout.annotations  # bias only: a message, not an exception


def test_params_only_numeric_fields():
    assert A.params_for("yarn", dict(dim=64, base=5e5, factor=8, context=2048)) == dict(
        dim=64, base=5e5, factor=8.0, original_max_position_embeddings=2048)
    assert A.params_for("t5", dict(dim=64, base=5e5)) == {}
    assert set(A.numeric_fields("hope")) >= {"dim", "base"} and "training_strides" not in A.numeric_fields("hope")


@pytest.mark.parametrize("text, kind", [
    (json.dumps(LLAMA), "success"),
    ("{not json", "danger"),
    (json.dumps(LLAMA | {"rope_scaling": {**LLAMA["rope_scaling"], "rope_type": "warp"}}), "danger"),
    ("[1, 2]", "danger"),
    ("", "info"),
])
def test_config_box(text, kind):
    v = A.config_view(text)
    first = v[0] if isinstance(v, pn.Column) else v
    assert isinstance(first, pn.pane.Alert) and first.alert_type == kind


# ---------------------------------------------------------------- the browser test

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _local(url: str) -> bool:
    u = urlsplit(url)
    return u.scheme in ("data", "blob", "about") or u.hostname == "127.0.0.1"


@pytest.fixture(scope="module")
def server():
    "`posexplorer serve --port <free>` in a subprocess; its URL"
    port = _free_port()
    log = (ARTIFACTS / "app-server.log"); ARTIFACTS.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from posexplorer.tools.cli import main; sys.exit(main())", "serve", "--port", str(port)],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/app"
    try:
        for _ in range(240):  # wait for the port to open; the first page then builds the app (a few seconds)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
            except OSError:
                if proc.poll() is not None: break
                time.sleep(0.25)
        else: pytest.fail("the app server did not start: " + log.read_text())
        if proc.poll() is not None: pytest.fail("the app server exited: " + log.read_text())
        yield url
    finally:
        proc.terminate(); proc.wait(10)


def _traces(page) -> str:
    "The trace names, sizes and first x and y values of the visible plotly figure"
    return page.locator(".js-plotly-plot").evaluate_all("""ds => { const d = ds.find(d => d.checkVisibility({visibilityProperty: true, opacityProperty: true}) && d.data);
        return d ? JSON.stringify(d.data.map(t => [t.name, (t.x || []).length, (t.y || []).length, Array.from(t.x || []).slice(0, 8), Array.from(t.y || []).slice(0, 8), Array.from(t.base || []).slice(0, 8)])) : null; }""")  # panel's shadow DOM: a locator pierces it


def _wait_change(page, old: str, *words, timeout=20.0) -> str:
    "Wait for the visible figure to differ from `old` and to name every word of `words`"
    t0 = time.time()
    while time.time() - t0 < timeout:
        new = _traces(page)
        if new is not None and new != old and all(w in new for w in words): return new
        page.wait_for_timeout(100)
    raise AssertionError("the figure did not change")


@pytest.mark.browser
def test_app_in_chromium(server):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} not found: run `make chromium` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright
    errors, requests = [], []
    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server + "?names=%5B%22rope%22%5D", wait_until="networkidle", timeout=60_000)
        page.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        before = _traces(page)
        assert before and "rope" in before

        choice = page.locator(".choices__input--cloned").first  # the MultiChoice's search box: pick two more encodings
        for name in ("yarn", "llama3"):
            choice.click(); page.locator(f'.choices__item--choice[data-value="{name}"]').first.click()
            page.locator(f'.choices__item--selectable[data-value="{name}"]').first.wait_for(timeout=10_000)  # picked
        after_pick = _wait_change(page, before, "yarn", "llama3")
        assert "yarn" in after_pick and "llama3" in after_pick

        slider = page.locator(".noUi-handle").first  # dim d: one step left with the keyboard
        slider.focus(); [page.keyboard.press("ArrowLeft") for _ in range(4)]
        after_slide = _wait_change(page, after_pick)
        page.wait_for_function("() => location.href.includes('dim=96')", timeout=20_000)  # the URL keeps the state, once the app has synced it

        page.locator(".bk-tab", has_text="allocation").first.click()  # the open tab is in the URL too
        page.wait_for_function("() => location.href.includes('tab=4')", timeout=20_000)
        alloc = _wait_change(page, after_slide)  # the allocation strip replaced the wavelength figure
        page.get_by_text("yarn parameters").first.click()  # each encoding's own parameters, from its signature
        own = page.locator("input[placeholder='default'] >> visible=true").first  # yarn's partial_rotary_factor
        own.wait_for(timeout=10_000)
        own.fill("0.5"); own.press("Enter")
        _wait_change(page, alloc)  # half of yarn's pairs no longer rotate
        page.wait_for_function("() => location.href.includes('params=') && location.href.includes('partial_rotary_factor')", timeout=20_000)

        page.locator(".bk-tab", has_text="HF config").first.click()
        box = page.locator("textarea").first
        box.fill(json.dumps(LLAMA)); box.blur()
        page.wait_for_selector(".alert-success", timeout=20_000)
        box.fill("{not json"); box.blur()
        page.wait_for_selector(".alert-danger", timeout=20_000)
        page.get_by_text("Cannot read this config").first.wait_for(timeout=10_000)  # an alert, not a traceback

        page.locator(".bk-tab", has_text="wavelength").first.click()
        page.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle")
        view = _wait_change(page, None)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        shared = browser.new_page(viewport={"width": 1400, "height": 1000})  # the URL keeps the view: open it afresh
        shared.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        shared.on("request", lambda r: requests.append(r.url))
        shared.goto(page.url, wait_until="networkidle", timeout=60_000)
        shared.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        assert _wait_change(shared, None) == view  # same encodings, widgets, own parameters and tab
        browser.close()
    assert not errors, "\n".join(errors)
    off = sorted({u for u in requests if not _local(u)})
    assert not off, f"requests left 127.0.0.1: {off}"
