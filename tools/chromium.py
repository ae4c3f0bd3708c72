"""Debian's Chromium under Playwright, the one way this project opens a browser (tests and figure snapshots).

Never `playwright install`: it downloads a browser. `make chromium` installs Debian's package."""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

def launch(playwright):
    "A headless Debian Chromium from a started Playwright"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
