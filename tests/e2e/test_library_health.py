"""A reader sees an example's health on its page and opens the check's output; a curator finds the broken
example on the library's health page and the repair action on its page."""

import re

from playwright.sync_api import expect

from library.models import ExampleCheck
from tests.e2e.conftest import look
from tests.test_library_health import USES_FACTOR, make_example
from tests.test_library_health_views import checked

S = ExampleCheck.Status


def test_the_example_page_shows_its_health_and_the_checks_output(page, login, curator, tmp_path):
    verified = make_example(tmp_path / "fine", title="Mean of squares, verified")
    checked(
        verified,
        S.PASSED,
        reason="ran with its lock and with the newest versions its requirements allow, with the approved results",
    )
    broken = make_example(tmp_path / "minilib", main=USES_FACTOR, title="Mean of squares, scaled")
    checked(broken, S.PASSED, days_ago=9)
    check = checked(
        broken, S.BROKEN, days_ago=2, reason="it fails with its lock: the program exited with code 1"
    )

    page.goto(f"/library/{verified.pk}/")
    expect(page.get_by_test_id("health")).to_contain_text(
        re.compile(r"Verified \d{4}-\d\d-\d\d: ran with its lock")
    )
    look(page, "health-example-verified")

    page.goto(f"/library/{broken.pk}/")
    line = page.get_by_test_id("health")
    expect(line).to_contain_text(
        f"Broken since {check.finished_at:%Y-%m-%d}: it fails with its lock: the program exited with code 1"
    )
    line.get_by_role("link", name="The check's output").click()
    expect(page.get_by_test_id("check-output")).to_contain_text("Traceback: <script>alert(1)</script>")
    expect(page.locator("pre script")).to_have_count(0)
    look(page, "health-check")

    login(curator, next_path="/library/")
    page.get_by_test_id("health-link").click()
    expect(page.get_by_role("heading", name="Library health")).to_be_visible()
    failing = page.get_by_test_id("failing")
    expect(failing.get_by_role("link", name="Mean of squares, scaled")).to_be_visible()
    expect(failing.get_by_role("link", name="Mean of squares, verified")).to_have_count(0)
    expect(page.locator("figure.chart svg circle")).to_have_count(3)  # three days with checks
    look(page, "health-page")

    failing.get_by_role("link", name="Mean of squares, scaled").click()
    page.get_by_text("Repair…").click()
    expect(page.get_by_role("button", name="Start the repair run")).to_be_visible()
    look(page, "health-example-broken")
