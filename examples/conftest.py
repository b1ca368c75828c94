"""Fixtures shared by the examples' browser tests (examples/test_browser.py,
examples/spa/test_browser.py): headless Debian Chromium driven by Playwright
for Python, and browser contexts that stand for devices.

EXAMPLE_CHROMIUM names the browser (default /usr/bin/chromium, Debian's
`chromium`: Playwright's own browser download is not used). If it is missing
or cannot start, the tests that use these fixtures are skipped with the reason.
"""

import os

import pytest

CHROMIUM = os.environ.get("EXAMPLE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`): browser tests skipped")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 - any launch failure means "cannot start"
            reason = (str(e).strip().splitlines() or ["?"])[0]
            pytest.skip(f"Chromium at {CHROMIUM} cannot start, browser tests skipped: {reason}")
        yield b
        b.close()


@pytest.fixture
def device(browser):
    """new device(label): a browser context of its own (its own cookie jar),
    with a recognisable user agent for the devices page."""
    contexts = []

    def make(label):
        ctx = browser.new_context(user_agent=f"example-test {label}")
        ctx.set_default_timeout(10_000)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()
