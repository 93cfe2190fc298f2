import re

from playwright.sync_api import expect

from tests.conftest import PASSWORD


def test_a_curator_logs_in_and_reaches_the_runs_page(page, login, curator):
    page.goto("/")
    page.get_by_role("link", name="Log in").first.click()
    login(curator, next_path="/runs/")
    expect(page).to_have_url(re.compile(r"/runs/$"))
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="New run")).to_be_visible()


def test_a_user_without_the_curator_role_is_refused_the_submit_page(page, login, reader):
    login(reader)
    expect(page).to_have_url(re.compile(r"/runs/$"))
    expect(page.get_by_role("link", name="New run")).to_have_count(0)
    response = page.goto("/runs/new/")
    assert response.status == 403
    expect(page.get_by_role("heading", name="You can't open this page")).to_be_visible()


def test_a_wrong_password_shows_an_error(page, curator):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(curator.username)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def test_an_expert_lands_on_the_review_queues_after_logging_in(page, login, expert):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(expert.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/reviews/$"))
