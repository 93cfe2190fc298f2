import re

from playwright.sync_api import expect

from reviews import services
from reviews.models import Review, ScoringForm
from tests.e2e.conftest import look
from tests.test_reviews import CODEDISTILLER, answers, make_example, shipped_forms


def test_an_expert_scores_two_items_and_the_curator_sees_the_results(page, login, expert, curator):
    shipped_forms()
    examples = [
        make_example(1, main="import numpy as np\nprint(np.mean([1, 2, 3]))\n"),
        make_example(2, judgement={"faithful": False, "accurate": True, "complete": True}),
    ]
    queue = services.queue_create(
        name="Materials batch", form=ScoringForm.objects.get(name=CODEDISTILLER), examples=examples,
        experts=[expert], created_by=curator, scores_needed=1,
    )  # fmt: skip
    login(expert, next_path="/reviews/")
    expect(page.get_by_role("heading", name="Your queues")).to_be_visible()
    look(page, "review-queues")
    page.get_by_role("button", name="Score the next example in Materials batch").click()

    for number in (1, 2):
        expect(page).to_have_url(re.compile(r"/reviews/items/\d+/$"))
        expect(page.locator(".guidelines")).to_contain_text("Read the repository's README")
        expect(page.locator(".codefile__name").first).to_have_text("main.py")
        # The judge's verdicts are already chosen: the expert only answers the rest.
        faithful = page.get_by_role("group", name="Is it faithful to the repository's core purpose?")
        expect(faithful.get_by_label("Yes" if number == 1 else "No")).to_be_checked()
        if number == 1:
            look(page, "review-scoring")
        page.get_by_role("group", name="Would it help a coding agent").get_by_label(str(3 + number)).check()
        page.get_by_role("group", name="how long would a fix take").get_by_label("under 1 hour").check()
        page.get_by_role("button", name="Submit scores").click()
        expect(page.locator(".message--success")).to_contain_text("Scored")

    expect(page).to_have_url(re.compile(r"/reviews/$"))
    expect(page.get_by_text("Nothing left for you")).to_be_visible()
    assert Review.objects.filter(expert=expert).count() == 2

    page.get_by_role("button", name="Log out").click()
    login(curator, next_path=f"/reviews/queues/{queue.pk}/")
    expect(page.get_by_role("heading", name="Materials batch")).to_be_visible()
    expect(page.get_by_text("2 of 2")).to_be_visible()
    helps = page.locator(".question-result", has_text="Would it help a coding agent")
    expect(helps.locator(".score")).to_contain_text("4.50")
    look(page, "review-queue")


def test_activity_keeps_the_hold_and_answers_survive_losing_it(page, login, expert, django_user_model):
    from datetime import timedelta

    from django.utils import timezone

    from reviews.models import ReviewItem
    from tests.conftest import make_user

    shipped_forms()
    other = make_user(django_user_model, "olga", "expert")
    queue = services.queue_create(
        name="Shared batch", form=ScoringForm.objects.get(name=CODEDISTILLER), examples=[make_example()],
        experts=[expert, other], created_by=None, scores_needed=1,
    )  # fmt: skip
    item = queue.items.get()
    page.clock.install()  # the heartbeat is throttled to once a minute: the test moves the page's clock
    login(expert, next_path="/reviews/")
    page.get_by_role("button", name="Score the next example in Shared batch").click()
    expect(page.locator(".hold")).to_contain_text("Held for you")

    # The lock is about to lapse; typing renews it.
    ReviewItem.objects.filter(pk=item.pk).update(locked_until=timezone.now() + timedelta(minutes=1))
    notes = page.get_by_role("group", name="Notes").locator("textarea")
    with page.expect_response(re.compile(r"/hold/$")):
        notes.fill("Needs a seed.")
    item.refresh_from_db()
    assert item.locked_by == expert
    assert item.locked_until > timezone.now() + timedelta(minutes=services.LOCK_MINUTES - 1)

    # The expert stays away; the lock lapses and the other expert scores the example meanwhile.
    ReviewItem.objects.filter(pk=item.pk).update(locked_until=timezone.now() - timedelta(minutes=1))
    services.item_next(queue=queue, expert=other)
    services.answer_submit(item=item, expert=other, values=answers())
    page.clock.fast_forward("01:01")
    with page.expect_response(re.compile(r"/hold/$")):
        page.get_by_role("group", name="Would it help a coding agent").get_by_label("2").check()
    expect(page.locator(".hold")).to_contain_text("other experts gave this example all the scores it needs")

    page.get_by_role("group", name="how long would a fix take").get_by_label("under 1 hour").check()
    page.get_by_role("button", name="Submit scores").click()
    expect(page.locator(".score-form .message--error")).to_contain_text("Your answers were not saved")
    expect(notes).to_have_value("Needs a seed.")
    expect(page.get_by_role("group", name="Would it help a coding agent").get_by_label("2")).to_be_checked()
    assert not Review.objects.filter(expert=expert).exists()
    page.get_by_role("button", name="Take the next example").click()
    expect(page.get_by_text("Nothing left for you in “Shared batch”")).to_be_visible()


def test_a_curator_selects_a_page_at_a_time_and_keeps_the_ticks_across_pages(
    page, login, curator, expert, monkeypatch
):
    from reviews import views
    from reviews.models import ReviewQueue

    monkeypatch.setattr(views, "PICK_PAGE_SIZE", 2)
    shipped_forms()
    examples = [make_example(n) for n in range(3)]
    login(curator, next_path="/reviews/queues/new/")
    look(page, "review-queue-new")
    page.get_by_label("Name").fill("Page by page")
    page.get_by_label("Scores per example").fill("1")
    page.get_by_label(expert.username).check()
    toggle = page.get_by_label("Select all on this page (2)")
    ticked = page.locator("[data-picked-count]")
    toggle.check()
    # The picker lists the library page's order, newest first.
    expect(page.get_by_label("Example 2")).to_be_checked()
    expect(page.get_by_label("Example 1")).to_be_checked()
    expect(ticked).to_have_text("2")
    page.get_by_label("Example 1").uncheck()
    assert toggle.evaluate("box => box.indeterminate") and not toggle.is_checked()
    page.get_by_label("Example 1").check()
    expect(toggle).to_be_checked()

    page.get_by_role("button", name="Next →").click()
    expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    expect(page.get_by_label("Name")).to_have_value("Page by page")
    expect(ticked).to_have_text("2")
    page.get_by_label("Select all on this page (1)").check()
    expect(ticked).to_have_text("3")
    page.get_by_role("button", name="Make the queue").click()

    expect(page.get_by_role("heading", name="Page by page")).to_be_visible()
    queue = ReviewQueue.objects.get()
    assert set(queue.items.values_list("example_id", flat=True)) == {e.pk for e in examples}


def _expert_on_an_item(page, login, expert):
    shipped_forms()
    services.queue_create(
        name="Drafts batch", form=ScoringForm.objects.get(name=CODEDISTILLER), examples=[make_example(1)],
        experts=[expert], created_by=None, scores_needed=1,
    )  # fmt: skip
    login(expert, next_path="/reviews/")
    page.get_by_role("button", name="Score the next example in Drafts batch").click()
    expect(page).to_have_url(re.compile(r"/reviews/items/\d+/$"))


def test_an_experts_answers_survive_leaving_the_scoring_page(page, login, expert):
    _expert_on_an_item(page, login, expert)
    faithful = page.get_by_role("group", name="Is it faithful to the repository's core purpose?")
    expect(faithful.get_by_label("Yes")).to_be_checked()  # the judge's suggestion
    faithful.get_by_label("No").check()
    page.get_by_role("group", name="Would it help a coding agent").get_by_label("2").check()
    page.get_by_role("group", name="Notes").locator("textarea").fill("Half done: the seed is missing.")
    expect(page.locator("#draft-status")).to_contain_text("Draft saved at")

    page.get_by_role("link", name="Library", exact=True).first.click()
    page.get_by_role("link", name="Reviews", exact=True).first.click()
    page.get_by_role("button", name="Score the next example in Drafts batch").click()
    faithful = page.get_by_role("group", name="Is it faithful to the repository's core purpose?")
    expect(faithful.get_by_label("No")).to_be_checked()
    expect(page.get_by_role("group", name="Would it help a coding agent").get_by_label("2")).to_be_checked()
    expect(page.get_by_role("group", name="Notes").locator("textarea")).to_have_value(
        "Half done: the seed is missing."
    )
    page.reload()
    expect(faithful.get_by_label("No")).to_be_checked()
    look(page, "review-scoring-draft")


def test_leaving_with_answers_not_yet_saved_asks_first(page, login, expert):
    _expert_on_an_item(page, login, expert)
    asked = []
    page.on("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
    page.get_by_role("group", name="Notes").locator("textarea").fill("typed just now")
    page.close(run_before_unload=True)  # before the draft's pause has passed
    page.wait_for_timeout(300)
    assert asked == ["beforeunload"]


def test_the_whole_scoring_form_is_reachable_by_scrolling_the_page_in_a_short_window(page, login, expert):
    page.set_viewport_size({"width": 1280, "height": 600})
    _expert_on_an_item(page, login, expert)
    panel = page.locator(".scoring__panel")
    assert panel.evaluate("p => p.scrollHeight <= p.clientHeight + 1"), "the panel scrolls by itself"
    submit = page.get_by_role("button", name="Submit scores")
    # Scrolling the window (not the panel) to the button brings it into view: nothing clips it.
    submit.evaluate("b => window.scrollTo(0, b.getBoundingClientRect().top + window.scrollY - 100)")
    expect(submit).to_be_in_viewport()
    expect(page.get_by_role("group", name="Notes")).to_be_in_viewport()
