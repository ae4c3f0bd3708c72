"""Save one plotly figure of a built page as a PNG, for the README (`make readme`).

    python tools/snapshot.py _docs/classics/rope.html 0 nbs/images/rope_decay.png

Opens the page from disk in Debian's Chromium, waits for the figure's SVG and screenshots that element."""
import sys
from pathlib import Path
from playwright.sync_api import sync_playwright
sys.path.insert(0, str(Path(__file__).parent))
from chromium import launch

def snapshot(page_path: Path, index: int, out: Path, width: int = 1000):
    "Screenshot the `index`-th `.plotly-graph-div` of `page_path` into `out`"
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": width + 300, "height": 900}, device_scale_factor=1)
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        fig = page.locator(".plotly-graph-div").nth(index)
        fig.locator("svg.main-svg").first.wait_for(timeout=30_000)
        fig.scroll_into_view_if_needed()
        fig.screenshot(path=str(out))
        browser.close()

if __name__ == "__main__":
    page, index, out = sys.argv[1:4]
    snapshot(Path(page), int(index), Path(out))
