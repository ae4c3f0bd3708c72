"""End-to-end update times of the explorer app in Chromium (a benchmark: it prints, it asserts nothing).

Starts `posexplorer serve` on a free 127.0.0.1 port, opens it in Debian's Chromium (tools/chromium.py) with RoPE and
YaRN at d = 128, L = 32k, and for each figure tab changes the base θ and times the wait from the change to the moment
the browser shows a different figure: server compute, the websocket transfer and plotly's drawing together.
`posexplorer.tools.app.bench_updates()` times the server's share alone.

    python tools/bench_app.py [--repeat 3]
"""
import argparse, socket, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from chromium import launch  # noqa: E402

TRACES = """ds => { const d = ds.find(d => d.checkVisibility({visibilityProperty: true, opacityProperty: true}) && d.data);
    return d ? JSON.stringify(d.data.map(t => [t.name, Array.from(t.y || t.z || []).slice(0, 8)])) : null; }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="changes per tab (the median is printed)")
    args = ap.parse_args(argv)
    from posexplorer.tools.app import TABS
    from playwright.sync_api import sync_playwright
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from posexplorer.tools.cli import main; sys.exit(main())", "serve", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try: socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
            except OSError: time.sleep(0.25)
        url = f"http://127.0.0.1:{port}/app?names=%5B%22rope%22%2C%22yarn%22%5D&dim=128&context=32768&extended=131072"
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="networkidle", timeout=60_000)
            base = page.locator("input[name=base]").first  # the shared base θ box (the page is one Explorer model)
            print(f"end-to-end update after a change of base θ (Chromium, RoPE + YaRN, d = 128, L = 32k; median of {args.repeat})")
            theta = 10000
            for i, tab in enumerate(TABS):
                page.locator(".px-tab", has_text=tab).first.click()
                page.locator(".js-plotly-plot .main-svg >> visible=true").first.wait_for(timeout=30_000)
                page.wait_for_timeout(500)
                times = []
                for _ in range(args.repeat):
                    old = page.locator(".js-plotly-plot").evaluate_all(TRACES)
                    theta += 1000
                    base.fill(str(theta)); t0 = time.perf_counter(); base.press("Enter")
                    while page.locator(".js-plotly-plot").evaluate_all(TRACES) == old and time.perf_counter() - t0 < 10:
                        page.wait_for_timeout(5)
                    times.append(1e3 * (time.perf_counter() - t0))
                    if times[-1] > 9000: break  # this figure does not depend on θ
                    page.wait_for_timeout(200)
                if min(times) > 9000: print(f"{tab:>18}:      – (the figure does not depend on θ)")
                else: print(f"{tab:>18}: {statistics.median(times):6.0f} ms")
            browser.close()
    finally:
        proc.terminate(); proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
