"""Browser tests: Playwright drives Debian's Chromium against pytest-django's live server.

Playwright's own browser download cannot work on these machines, so the system Chromium is launched.
"""

import os
import re
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
RESULTS_DIR = Path(__file__).resolve().parents[2] / "test-results"

# Playwright's sync API runs an event loop in the test's thread; Django refuses ORM calls from a thread
# with a running loop unless told that this is deliberate. The live server itself runs in its own thread.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (make test does this)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                # The machine has no internet: background fetches would only fail, noisily.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server, request):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        RESULTS_DIR.mkdir(exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.nodeid)
        page.screenshot(path=str(RESULTS_DIR / f"{name}.png"), full_page=True)
    context.close()


@pytest.fixture
def login(page):
    from tests.conftest import PASSWORD

    def do_login(user, next_path: str = ""):
        page.goto(f"/accounts/login/{'?next=' + next_path if next_path else ''}")
        page.get_by_label("Username").fill(user.username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()

    return do_login


SHOTS_DIR = os.environ.get("E2E_SCREENSHOTS")  # a folder: the tests that call look() save their pages there


def look(page, name: str) -> None:
    """Save the page as a person sees it at 1280 px and at 390 px (a phone), when E2E_SCREENSHOTS is set.

    For looking at changed pages by eye; it asserts nothing and is a no-op otherwise.
    """
    if not SHOTS_DIR:
        return
    Path(SHOTS_DIR).mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(Path(SHOTS_DIR) / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size(size)
