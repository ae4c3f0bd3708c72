"""Open every page of the built docs site (`make site` -> _docs/) in a real Chromium.

Debian's Chromium (/usr/bin/chromium, `make chromium`) is driven through Playwright's sync API; `playwright install`
is never run. The pages are served from 127.0.0.1 by `http.server` in a thread. Each page must load with status 200,
draw every plotly figure, typeset its math with the local MathJax, log no console error and raise no page error,
and make no request that leaves 127.0.0.1. Pages mirror nbs/ (`context/yarn.html`); pick some with
`-k`, e.g. `pytest tests/test_docs_browser.py -k "yarn or index"`. The RoPE page is saved to test-artifacts/rope.png.
Every page opens at 1400 px and at 400 px (phone): no table under the fixed "On this page" box, no code line clipped
(long lines wrap), the notebook list collapsed at 400 px so the content comes first; a screenshot of each page at each
width goes to test-artifacts/docs/. plotly.js is one shared file, fetched once: a second page takes it from the cache.
POSX_DOCS=/tmp/docs_try tests another build (e.g. `tools/build_site.py --out /tmp/docs_try index classics/bias`).
"""
import functools, http.server, os, re, shutil, sys, threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from chromium import CHROMIUM, launch  # the one way this project opens Chromium
DOCS = Path(os.environ.get("POSX_DOCS", ROOT / "_docs"))
ARTIFACTS = ROOT / "test-artifacts"
NO_SITE = "no built docs in _docs/: run make site first"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.html")
               if p.relative_to(DOCS).parts[0] not in ("mathjax", "images")) or [NO_SITE]

pytestmark = pytest.mark.browser


SERVED = []  # (path, status) of every response the test server sent


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
    def send_response(self, code, message=None):
        SERVED.append((self.path, code)); super().send_response(code, message)


@pytest.fixture(scope="module")
def base_url():
    "http://127.0.0.1:<free port>/ serving _docs/"
    if PAGES == [NO_SITE]: pytest.fail(NO_SITE)
    handler = functools.partial(_Quiet, directory=str(DOCS))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown(); srv.server_close()


@pytest.fixture(scope="module")
def browser():
    "One Chromium for the whole module"
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} not found: run `make chromium` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    b = launch(pw)
    yield b
    b.close(); pw.stop()


@pytest.fixture(scope="module", params=[1400, 400], ids=["1400px", "400px"])
def context(browser, request):
    "One browsing context per width, as a reader's browser: plotly.js and MathJax are fetched and compiled once"
    c = browser.new_context(viewport={"width": request.param, "height": 900})
    c.width = request.param
    yield c
    c.close()


# The layout, measured in the page: tables clear of the fixed TOC box, no code clipped, the sidebar's height
LAYOUT_JS = """() => {
  const toc = document.querySelector('.page-toc'), r = toc && toc.getBoundingClientRect();
  const tocLeft = r && r.width > 0 && getComputedStyle(toc).display !== 'none' ? r.left : Infinity;
  const under = [...document.querySelectorAll('.content table')].filter(t => t.getBoundingClientRect().right > tocLeft + 1)
    .map(t => t.innerText.slice(0, 40));
  const clipped = [...document.querySelectorAll('.content pre')].filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.innerText.split('\\n')[0].slice(0, 60));
  const nav = document.querySelector('.side-nav');
  return {under, clipped, navOpen: nav ? nav.open : null,
          sidebarHeight: document.querySelector('.sidebar').getBoundingClientRect().height};
}"""


def _expects_math(html: str) -> bool:
    "Does the page have $...$ / $$...$$ outside code, scripts and MathJax-ignored elements?"
    s = re.sub(r"<(script|pre|code|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    s = re.sub(r'<span class="tex2jax_ignore">.*?</span>', " ", s, flags=re.S)
    s = re.sub(r"<[^>]+>", " ", s)
    return re.search(r"\$[^$\s][^$]*?\$", s) is not None


def _local(url: str) -> bool:
    u = urlsplit(url)
    return u.scheme in ("data", "blob", "about") or u.hostname == "127.0.0.1"


@pytest.mark.parametrize("page_name", PAGES)
def test_page(page_name, base_url, context):
    if page_name == NO_SITE: pytest.fail(NO_SITE)
    html = (DOCS / page_name).read_text(encoding="utf-8")
    page = context.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text} ({m.location.get('url', '')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        resp = page.goto(base_url + page_name, wait_until="load", timeout=90_000)
        assert resp is not None and resp.status == 200, f"{page_name}: status {resp and resp.status}"

        n_plots = page.locator(".plotly-graph-div").count()
        assert n_plots == html.count('class="plotly-graph-div'), f"{page_name}: plotly divs missing from the DOM"
        if n_plots:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('svg.main-svg'))",
                timeout=90_000)
            assert page.locator(".plotly-graph-div svg.main-svg").count() >= n_plots

        if _expects_math(html):
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=90_000)
            page.evaluate("() => MathJax.startup.promise")
            assert page.locator("mjx-container").count() > 0, f"{page_name}: MathJax typeset no math"
            bad = page.locator("mjx-merror").all_inner_texts()
            assert not bad, f"{page_name}: TeX errors: {bad[:5]}"

        try: page.wait_for_load_state("networkidle", timeout=30_000)  # fonts and images settle before the layout check
        except Exception as e:  # a busy 2-core CI machine once kept a 400 px page "busy" for 90 s with every asset loaded;
            if "Timeout" not in type(e).__name__: raise  # failed requests are caught as errors below, so only wait
            page.wait_for_timeout(2_000)
        lay = page.evaluate(LAYOUT_JS)
        shots = ARTIFACTS / "docs"; shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{page_name[:-5].replace('/', '_')}_{context.width}px.png"))
        if page_name == "classics/rope.html" and context.width == 1400:
            page.screenshot(path=str(ARTIFACTS / "rope.png"), full_page=True)
    finally:
        page.close()

    assert not errors, f"{page_name}: " + "\n".join(errors)
    assert not lay["under"], f"{page_name} at {context.width}px: tables under the 'On this page' box: {lay['under']}"
    assert not lay["clipped"], f"{page_name} at {context.width}px: code clipped on the right: {lay['clipped']}"
    if context.width <= 900:
        assert lay["navOpen"] is False and lay["sidebarHeight"] < 120, \
            f"{page_name} at {context.width}px: the notebook list is not collapsed ({lay})"
    else:
        assert lay["navOpen"] is True, f"{page_name} at {context.width}px: the notebook list is collapsed"
    for o in ["__main__.", "output_stderr"]:
        assert o not in html, f"{page_name}: {o!r} on the page (a notebook-local type name or stderr noise)"
    off = sorted({u for u in requests if not _local(u)})
    assert not off, f"{page_name}: requests left 127.0.0.1: {off}"


def test_plotly_loaded_once(browser, base_url):
    "plotly.js (4.8 MB) is one shared file: a fresh reader opening two plotly pages downloads it once"
    plots = [p for p in PAGES if p != NO_SITE and "plotly.min.js" in (DOCS / p).read_text(encoding="utf-8")][:2]
    if len(plots) < 2: pytest.skip("fewer than two pages with plotly figures in this build")
    c = browser.new_context()
    try:
        start = len(SERVED)
        for p in plots:
            page = c.new_page(); page.goto(base_url + p, wait_until="load", timeout=30_000); page.close()
        got = [code for path, code in SERVED[start:] if path.endswith("plotly.min.js")]
        assert got.count(200) == 1, f"plotly.min.js sent {got.count(200)} times for {plots} (statuses {got})"
        tag = re.compile(r'<script defer(="")? src="[./]*plotly\.min\.js">')  # deferred: the text shows first
        assert all(tag.search((DOCS / p).read_text(encoding="utf-8")) for p in plots)
    finally:
        c.close()
