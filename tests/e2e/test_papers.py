"""A paper's plan in a real browser: the vendored mermaid draws the diagrams, and their text stays text."""

from playwright.sync_api import expect

from distill.models import Run
from tests.test_papers import LONG_PAPER, MARKDOWN_PAPER, paper_run, planned_run


def test_the_plans_diagrams_are_drawn_and_their_text_runs_no_script(page, login, reader):
    run = planned_run()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    login(reader, next_path=f"/runs/{run.pk}/")

    expect(page.get_by_role("heading", name="The paper and its plan")).to_be_visible()
    expect(page.locator('[data-testid="class-diagram"] svg')).to_be_visible()
    expect(page.locator('[data-testid="sequence-diagram"] svg')).to_be_visible()
    expect(page.locator('[data-testid="class-diagram"] svg')).to_contain_text("mean_squares")
    expect(page.locator('[data-testid="task-list"] li')).to_have_count(3)
    page.wait_for_timeout(2500)  # a poll of the live part: the drawn diagrams are kept
    expect(page.locator('[data-testid="class-diagram"] svg')).to_have_count(1)
    assert dialogs == [], "the diagram's <script> ran"


def test_a_curator_switches_to_the_paper_tab_and_submits_a_pasted_paper(page, login, curator, monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)  # queued in the broker, not run inside the request
    login(curator, next_path="/runs/new/")
    urls = page.get_by_label("Repository URLs")
    pasted = page.get_by_label("Or paste it (Markdown or plain text)")
    expect(urls).to_be_visible()
    expect(pasted).to_be_hidden()

    page.get_by_text("Paper", exact=True).click()
    expect(pasted).to_be_visible()
    expect(urls).to_be_hidden()
    pasted.fill(MARKDOWN_PAPER)
    page.get_by_role("button", name="Start distilling").click()

    run = Run.objects.get()
    expect(page).to_have_url(f"{page.url.split('/runs/')[0]}/runs/{run.pk}/")
    assert run.kind == Run.Kind.PAPER and run.paper.title == "Mean Squares for Tiny Lists"


def test_a_paper_run_shows_its_sections_where_a_repository_shows_file_ratings(page, login, reader):
    run = paper_run(LONG_PAPER, context_tokens=2000, code_max_output_tokens=1000)
    login(reader, next_path=f"/runs/{run.pk}/")

    panel = page.locator("#paper-sections")
    expect(panel.get_by_role("heading", name="The paper's sections")).to_be_visible()
    expect(page.get_by_role("heading", name="File ratings")).to_have_count(0)
    expect(panel.locator("tbody tr")).to_have_count(6)
    expect(panel.get_by_text("in part: cut here")).to_be_visible()
    # A subsection is set in from its section.
    section, subsection = (
        panel.get_by_role("cell", name=name, exact=True) for name in ("2 Experiments", "2.1 Lists")
    )
    assert subsection.bounding_box()["x"] == section.bounding_box()["x"]
    assert subsection.evaluate("cell => parseFloat(getComputedStyle(cell).paddingLeft)") > section.evaluate(
        "cell => parseFloat(getComputedStyle(cell).paddingLeft)"
    )
    page.get_by_role("link", name="6 sections").click()
    expect(page).to_have_url(f"{page.url.split('#')[0]}#paper-sections")
