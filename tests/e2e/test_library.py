"""A curator approves an iteration from its run's page, finds the example by search, and downloads its ZIP."""

import re
import subprocess
import sys
import zipfile

from playwright.sync_api import expect

from library.models import Example
from tests.factories import make_iteration, make_run
from tests.test_export import PAPER_FILES, make_example

CODE = "def quokka_census(sightings):\n    return sum(sightings)\n\nprint('<b>quokkas</b>', quokka_census([3, 4]))\n"


def test_a_curator_approves_from_the_run_page_finds_the_example_and_downloads_it(
    page, login, curator, tmp_path
):
    run = make_run(source_url="https://github.com/lab/quokka", source_title="lab/quokka")
    make_iteration(run, 1, succeeded=False)
    make_iteration(run, 2, main=CODE, metadata={"description": "Counts quokkas from sightings."})

    login(curator, next_path=f"/runs/{run.pk}/")
    page.get_by_role("link", name="Approve an iteration…").click()
    expect(page.get_by_role("heading", name="Approve into the library")).to_be_visible()
    expect(page.get_by_role("radio", name=re.compile("Iteration 2"))).to_be_checked()
    expect(page.get_by_label("Summary")).to_have_value("Counts quokkas from sightings.")
    page.get_by_label("Title").fill("Counting quokkas")
    page.get_by_label("Tags").fill("ecology, marsupials")
    page.get_by_role("button", name="Approve").click()

    expect(page.get_by_role("heading", name="Counting quokkas")).to_be_visible()
    example = Example.objects.get()
    assert (example.iteration_number, example.approved_by) == (2, curator)
    expect(page.get_by_role("link", name="run " + str(run.pk))).to_be_visible()

    page.goto("/library/")
    page.get_by_role("searchbox").fill("quokka census")
    page.get_by_role("button", name="Search").click()
    result = page.get_by_test_id("result").first
    expect(result.get_by_role("link", name="Counting quokkas")).to_be_visible()
    expect(result.locator("mark").first).to_have_text(re.compile("quokka", re.I))
    # The code's markup is shown as text, never made into elements.
    expect(result.locator("b")).to_have_count(0)
    result.get_by_role("link", name="Counting quokkas").click()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download ZIP").click()
    path = tmp_path / "example.zip"
    download_info.value.save_as(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        main = next(name for name in names if name.endswith("/main.py"))
        assert archive.read(main).decode() == CODE


def test_a_curator_downloads_a_multi_file_example_as_a_codeblock_that_runs_alone(
    page, login, curator, tmp_path
):
    make_example(curator, "squares", title="Squares from a paper", files=PAPER_FILES)
    login(curator, next_path="/library/")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="codeblocks").click()
    path = tmp_path / "codeblocks.zip"
    download_info.value.save_as(path)
    with zipfile.ZipFile(path) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(".py")]
        block = archive.read(name).decode()
    # Alone in a folder, as CodeScientist's loader holds it: every file main.py needs comes with it.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "block.py").write_text(block)
    done = subprocess.run(
        [sys.executable, "block.py"], cwd=tmp_path / "run", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "total 14\n"
