import re

from playwright.sync_api import expect

from tests.e2e.conftest import look
from tests.factories import make_iteration, make_run

FIRST = (
    "import json\n\n\ndef mean(values):\n    return sum(values) / len(values)\n\n\nprint(mean([1, 2, 3]))\n"
)
SECOND = (
    "import json\n\n\ndef mean(values):\n    if not values:\n        return 0.0\n    return sum(values) / len(values)\n"
    "\n\nresult = mean([1, 2, 3])\njson.dump({'mean': result}, open('results.json', 'w'))\n"
)


def test_a_reader_opens_the_diff_with_the_previous_iteration_and_switches_to_side_by_side(
    page, login, reader
):
    run = make_run()
    make_iteration(run, 1, main=FIRST)
    make_iteration(run, 2, main=SECOND)
    login(reader, next_path=f"/runs/{run.pk}/iterations/2/")
    expect(page.get_by_role("heading", name="Iteration 2")).to_be_visible()

    page.get_by_role("link", name="Diff with previous").click()
    expect(page).to_have_url(re.compile(rf"/runs/{run.pk}/diff/\?a=1&b=2$"))
    expect(page.get_by_role("heading", name="Iteration 1 → 2")).to_be_visible()
    unified = page.locator("table.diff--unified")
    expect(unified.locator("tr.diff--del")).to_have_count(1)
    expect(unified.locator("tr.diff--del")).to_contain_text("print(mean([1, 2, 3]))")
    expect(unified.locator("tr.diff--add")).to_have_count(4)
    expect(unified.locator("tr.diff--add").first).to_contain_text("if not values:")

    page.get_by_role("link", name="Side by side").click()
    expect(page).to_have_url(re.compile(r"view=split"))
    split = page.locator("table.diff--split")
    expect(split).to_be_visible()
    expect(page.locator("table.diff--unified")).to_be_hidden()
    expect(split.locator("td.diff__text.diff--del")).to_contain_text("print(mean([1, 2, 3]))")
    expect(split.locator("td.diff__text.diff--add")).to_have_count(4)
    expect(page.get_by_role("link", name="Side by side")).to_have_attribute("aria-current", "true")


def test_a_line_anchor_highlights_its_line(page, login, reader):
    run = make_run()
    make_iteration(run, 1, main=FIRST)
    login(reader, next_path=f"/runs/{run.pk}/iterations/1/")
    page.get_by_role("link", name="5", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"#main\.py-L5$"))
    line = page.locator('[id="main.py-L5"]')
    background = line.locator("td.code__text").evaluate("cell => getComputedStyle(cell).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")


def test_on_a_phone_the_side_by_side_diff_reads_unified_and_fits_the_screen(page, login, reader):
    run = make_run()
    make_iteration(run, 1, main=FIRST)
    make_iteration(run, 2, main=SECOND)
    page.set_viewport_size({"width": 390, "height": 844})
    login(reader, next_path=f"/runs/{run.pk}/")
    page.goto(f"/runs/{run.pk}/diff/?a=1&b=2&view=split")

    expect(page.locator("table.diff--split")).to_be_hidden()
    expect(page.locator("table.diff--unified")).to_be_visible()
    expect(page.get_by_text("Side by side needs a wider window; shown unified.")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    look(page, "diff-split")


def test_on_a_phone_the_runs_list_keeps_names_whole(page, login, reader):
    make_run(source_title="example/minilib", source_url="https://github.com/example/minilib")
    page.set_viewport_size({"width": 390, "height": 844})
    login(reader, next_path="/runs/")

    name = page.locator(".runs-table__source a")
    line_height = float(name.evaluate("a => parseFloat(getComputedStyle(a).lineHeight)"))
    assert name.bounding_box()["height"] < 1.5 * line_height, "the name wraps inside a word"
