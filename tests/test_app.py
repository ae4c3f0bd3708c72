"""The explorer app (`posexplorer serve`, nbs/tools/app.ipynb).

Fast tests build `app()` and the config box without a server. The browser test starts `posexplorer serve` in a
subprocess on a free 127.0.0.1 port, opens it in Debian's Chromium through Playwright (tools/chromium.py), picks a
second and third encoding, moves a slider, pastes a valid and an invalid config.json, and checks that the figure
changed, that no console error was logged and that no request left 127.0.0.1. The page is saved to
test-artifacts/app.png.
"""
import html, json, shutil, socket, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlsplit

import panel as pn
import numpy as np
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
    assert isinstance(a, A.Explorer) and not a.notice and not a.warn  # a URL's refusals, and encodings that refuse: none here
    assert a.tabs == list(A.TABS) + ["HF config"] and a.plot.object.data and a.fields and set(a.fields) <= set(a.names)


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


def _settled(page, timeout=20.0) -> str:
    "The visible figure once it has stopped changing (the same for a second)"
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        now = _traces(page)
        if now is not None and now == last: return now
        last = now; page.wait_for_timeout(1000)
    raise AssertionError("the figure did not settle")


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

        choice = page.locator("select.px-add").first  # the list of the encodings not chosen: pick two more
        for name in ("yarn", "llama3"):
            choice.select_option(name)
            page.locator(f'.px-chip[data-name="{name}"]').first.wait_for(timeout=10_000)  # picked: a chip with its name
        after_pick = _wait_change(page, before, "yarn", "llama3")
        assert "yarn" in after_pick and "llama3" in after_pick

        slider = page.locator("input[name=dim]").first  # dim d: four steps left with the keyboard
        slider.focus(); [page.keyboard.press("ArrowLeft") for _ in range(4)]
        after_slide = _wait_change(page, after_pick)
        page.wait_for_function("() => location.href.includes('dim=96')", timeout=20_000)  # the URL keeps the state, once the app has synced it

        page.locator(".px-tab", has_text="allocation").first.click()  # the open tab is in the URL too
        page.wait_for_function("() => location.href.includes('tab=4')", timeout=20_000)
        alloc = _wait_change(page, after_slide)  # the allocation strip replaced the wavelength figure
        page.get_by_text("yarn parameters").first.click()  # each encoding's own parameters, from its signature
        own = page.locator("input[placeholder='default'] >> visible=true").first  # yarn's partial_rotary_factor
        own.wait_for(timeout=10_000)
        own.fill("0.5"); own.press("Enter")
        _wait_change(page, alloc)  # half of yarn's pairs no longer rotate
        page.wait_for_function("() => location.href.includes('params=') && location.href.includes('partial_rotary_factor')", timeout=20_000)

        page.locator(".px-tab", has_text="HF config").first.click()
        box = page.locator("textarea").first
        box.fill(json.dumps(LLAMA)); box.blur()
        page.wait_for_selector(".alert-success", timeout=20_000)
        page.wait_for_function("() => location.href.includes('config=')", timeout=20_000)  # the pasted config is in the URL...
        shown = None
        for i, tab in enumerate(A.TABS):  # ...and in the comparison, on every tab that draws encodings
            page.locator(".px-tab", has_text=tab).first.click()
            page.wait_for_function(f"() => location.href.includes('tab={i}')", timeout=20_000)
            name = {"position ids": (), "precision": ('"llama bfloat16"',)}.get(tab, ('"llama"',))  # precision: a line per encoding and dtype
            try: shown = _wait_change(page, shown, *name, timeout=30.0)
            except AssertionError: raise AssertionError(f"tab {tab!r}: the figure did not change or lacks {name}: {_traces(page)[:500]}")
            page.screenshot(path=str(ARTIFACTS / f"app-tab-{i}.png"))
        with page.expect_download(timeout=30_000) as dl:  # the open figure's data
            page.get_by_text("figure data (CSV)").first.click()
        assert dl.value.suggested_filename == "posexplorer-position-ids.csv" and "trace" in Path(dl.value.path()).read_text().splitlines()[0]
        page.locator(".px-tab", has_text="HF config").first.click()
        box.fill("{not json"); box.blur()
        page.wait_for_selector(".alert-danger", timeout=20_000)
        page.get_by_text("Cannot read this config").first.wait_for(timeout=10_000)  # an alert, not a traceback

        page.locator(".px-tab", has_text="allocation").first.click()  # back to a tab whose figure shows yarn's own parameter
        page.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle")
        view = _settled(page)
        assert "yarn" in view
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        shared = browser.new_page(viewport={"width": 1400, "height": 1000})  # the URL keeps the view: open it afresh
        shared.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        shared.on("request", lambda r: requests.append(r.url))
        shared.goto(page.url, wait_until="networkidle", timeout=60_000)
        shared.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        assert _settled(shared) == view  # same encodings, widgets, own parameters and tab

        bad = browser.new_page(viewport={"width": 1400, "height": 1000})  # a link with an unknown name and refused values
        bad.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        bad.on("request", lambda r: requests.append(r.url))
        bad.goto(server + '?names=%5B%22nonexistent%22%2C%22rope%22%5D&dim=-5&base=abc&factor=-1&context=1e99', wait_until="networkidle", timeout=60_000)
        bad.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        bad.get_by_text("cannot show").first.wait_for(timeout=20_000)
        notice = bad.locator(".alert-warning").evaluate_all("es => es.map(e => (e.shadowRoot || e).textContent).join(' ')")  # panel's shadow DOM
        for word in ("nonexistent", "dim=-5", "positive and even", "base=abc", "factor=-1", "context=1e99", "must be an int"):
            assert word in notice, (word, notice)
        assert "Traceback" not in bad.content() and "rope" in _settled(bad)  # the page, its known encoding drawn
        bad.screenshot(path=str(ARTIFACTS / "app-refused.png"), full_page=True)
        narrow = browser.new_page(viewport={"width": 400, "height": 900})  # a phone's width: the page loads and draws
        narrow.on("console", lambda m: errors.append(f"console.{m.type} (400 px): {m.text}") if m.type == "error" else None)
        narrow.goto(page.url, wait_until="networkidle", timeout=60_000)
        narrow.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
        narrow.screenshot(path=str(ARTIFACTS / "app-400px.png"), full_page=True)
        browser.close()
    assert not errors, "\n".join(errors)
    off = sorted({u for u in requests if not _local(u)})
    assert not off, f"requests left 127.0.0.1: {off}"


# ---------------------------------------------------------------- issue 15: no silent wrong answers

BAD_LINK = ('?names=["nonexistent","yarn"]&dim=-5&base=abc&factor=-1&context=1e99&extended=8192'
            '&params={"yarn":{"partial_rotary_factor":3,"beta_fast":16}}')


def test_link_refusals_are_shown_and_dropped():
    a = A.app(BAD_LINK)
    assert a.notice  # the page's warning, as HTML
    for key, value, reason in [("names", "nonexistent", "unknown encoding"), ("dim", "-5", "positive and even"),
                               ("base", "abc", "must be a number"), ("factor", "-1", "finite and > 0"),
                               ("context", "1e99", "must be an int"), ("yarn.partial_rotary_factor", "3", "(0, 1]")]:
        assert f"<code>{key}={value}</code>: " in a.notice and reason in html.unescape(a.notice), (key, a.notice)
    assert a.names == ["yarn"]  # the unknown name dropped; the known one kept
    assert (a.dim, a.base, a.factor, a.context) == (128, 10000.0, 4.0, 32768)  # the defaults...
    assert a.extended == 8192 and json.loads(a.params) == {"yarn": {"beta_fast": 16}}  # ...and the good values
    assert a.plot.object.data  # the page draws


def test_only_unknown_names_keep_the_defaults():
    a = A.app('?names=["nonexistent"]')
    assert "nonexistent" in a.notice and a.names == ["rope", "yarn"]
    assert not A.app('?names=["rope"]&dim=64&tab=4').notice  # a good link: no warning


def test_vet_query_uses_the_library_checks():
    w = A.VIEW
    vals, refused = A.vet_query({"dim": "63", "context": "4096.5", "tab": "-1", "dtype": "float16", "config": "{bad"}, w, 8)
    why = {k: r for k, _, r in refused}
    assert vals == {"dtype": "float16"} and "positive and even" in why["dim"] and "must be an int" in why["context"] and ">= 0" in why["tab"]
    assert "cannot read this config" in why["config"]
    assert "must be one of" in dict((k, r) for k, _, r in A.vet_query({"dtype": "int8"}, w, 8)[1])["dtype"]


def _ratios(view) -> dict:
    "label -> factor s_i per pair, from the right panel of the config box's figure"
    return {t.name: np.asarray(t.y) for t in view[2].object.data if t.xaxis == "x2"}


YARN = {"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "max_position_embeddings": 131072,
        "rope_theta": 1000000.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}


def test_config_factor_is_over_plain_rope():
    yarn = _ratios(A.config_view(json.dumps(YARN)))["yarn (this config)"]
    assert not np.allclose(yarn, 1.0) and yarn.min() == pytest.approx(1.0) and yarn.max() == pytest.approx(4.0)  # YaRN's ramp, s = 4
    llama = _ratios(A.config_view(json.dumps(LLAMA)))["llama3 (this config)"]
    assert llama.max() == pytest.approx(8.0) and llama.min() == pytest.approx(1.0)  # Llama 3.1: the slow pairs stretched by 8
    plain = _ratios(A.config_view(json.dumps(YARN | {"rope_scaling": None})))
    assert len(plain) == 2 and all(np.allclose(v, 1.0) for v in plain.values())  # plain RoPE against plain RoPE


def test_pasted_config_joins_the_comparison():
    a = A.app()
    a.tab = len(A.TABS); a.box = json.dumps(YARN)  # pasted in the HF config tab
    assert json.loads(a.config) == YARN and "alert-success" in a.config_info and "qwen2" in a.config_info
    a.tab = 0
    names = {t.name for t in a.plot.object.data}
    assert {"rope", "yarn", "qwen2"} <= names  # named after its model_type, beside the built-in encodings
    ours = {t.name: np.asarray(t.y) for t in a.plot.object.data if t.xaxis == "x2"}
    assert ours["qwen2"].max() > 1.0  # its stretch over the first encoding (plain RoPE at the shared θ and d)
    view = A.config_view(a.box)
    assert "32768" in view[0].object and any("L = 32768" in (an.text or "") for an in view[2].object.layout.annotations)  # the training length
    a.box = "{not json"
    assert a.config == "" and "qwen2" not in {t.name for t in a.plot.object.data}  # an unreadable config leaves the comparison
    a.box = json.dumps(LLAMA | {"model_type": "rope"})  # a model_type that is also a chosen name
    assert "rope (config)" in {t.name for t in a.plot.object.data}


def test_link_with_config_tidy_numbers_and_dtype():
    link = '?names=["rope"]&factor=7.499999999999999&base=10000.0&dtype=float32&tab=5&config=' + json.dumps(YARN)
    a = A.app(link)
    assert not a.notice, a.notice
    state = A._url_state(a)
    assert state["factor"] == "7.5" and state["base"] == "10000" and state["dtype"] == "float32" and json.loads(state["config"]) == YARN
    assert "config" not in A._url_state(A.app())  # no empty key
    assert A.tidy(0.1 + 0.2) == "0.3" and A.tidy(131072) == "131072" and A.tidy(["rope"]) == '["rope"]'
    names = {t.name.split(" ")[0] for t in a.plot.object.data if t.name}
    assert a.tab == 5 and {"rope", "qwen2"} <= names and "float32" in str(a.plot.object.to_plotly_json())  # precision: every encoding, in the chosen dtype


@pytest.mark.parametrize("tab", list(A.TABS))
def test_downloads_hold_the_figure_data(tab):
    s = dict(dim=32, base=10000.0, factor=2.0, context=256, extended=1024, dtype="bfloat16")
    fig = A.figure(tab, {n: A.build(n, s) for n in ("rope", "yarn")}, s)
    rows = json.loads(A.figure_json(fig))["rows"]
    lines = A.figure_csv(fig).splitlines()
    assert rows and len(lines) == len(rows) + 1  # a header, then one line per point
    assert {t.name for t in fig.data if t.name} & {r.get("trace") for r in rows}  # the trace names are in the data


def test_multi_encoding_tabs():
    s = dict(dim=32, base=10000.0, factor=2.0, context=256, extended=1024, dtype="bfloat16")
    encs = {n: A.build(n, s) for n in ("rope", "yarn", "llama3")}
    for tab in ("angles", "attention map", "precision"):
        text = str(A.figure(tab, encs, s).to_plotly_json())
        assert all(n in text for n in encs), tab  # every chosen encoding drawn, not one


def test_plain_rope_reference_matches_the_config():
    enc = A.from_hf_config(YARN)
    ref = A.plain_rope(enc)
    assert ref.name == "rope" and ref.base == enc.base and len(ref.inv_freq) == len(enc.inv_freq)


@pytest.mark.parametrize("port", ["-1", "99999", "0", "abc"])
def test_serve_refuses_bad_ports(port, monkeypatch, capsys):
    from posexplorer.tools.cli import main
    monkeypatch.setattr(A.pn, "serve", lambda *a, **k: pytest.fail("a server was started"))
    with pytest.raises(SystemExit) as e: main(["serve", "--port", port])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err and "error: argument --port: `port` must" in err.strip().splitlines()[-1]  # usage, then one line


def test_check_port():
    assert A.check_port("5006") == 5006 and A.check_port(65535) == 65535
    for bad, exc in [(0, ValueError), (65536, ValueError), (True, TypeError), (5006.0, TypeError)]:
        with pytest.raises(exc, match="port"): A.check_port(bad)


def test_live_fills_its_output_widget_without_capture(monkeypatch):
    "`_show` sets the Output widget's outputs from the kernel: no `with out:` capture, which stalls headless nbclient"
    import ipywidgets as W, plotly.io as pio
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")  # a Jupyter kernel's default (plotly picks none outside IPython)
    out, fig = W.Output(), A.explore("wavelength", "rope")
    A._show(out, fig)
    (o,), = [out.outputs]
    assert o["output_type"] == "display_data" and "application/vnd.plotly.v1+json" in o["data"] and out.msg_id == ""


def test_load_small():
    "8 page loads at once (GET + websocket + document, as a browser): all load, every session closes, the memory comes back"
    r = A.load_test(8, lifetime=2)
    assert r["ok"] == 8 and not r["errors"], r["errors"]
    assert r["all_closed"], "the server did not close the sessions of the closed pages"
    assert r["rss_after_mb"] <= r["rss_peak_mb"] + 5 and r["rss_after_mb"] < 1.2 * r["rss_before_mb"], r
