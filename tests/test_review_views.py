import re
from datetime import timedelta

import pytest
from django.urls import reverse

from reviews import services, views
from reviews.models import Review, ReviewQueue, ScoreDraft, ScoringForm
from tests.conftest import logged_in, make_user
from tests.test_reviews import CODEDISTILLER, Clock, answers, make_example, shipped_forms

pytestmark = pytest.mark.django_db


@pytest.fixture
def form():
    shipped_forms()
    return ScoringForm.objects.get(name=CODEDISTILLER)


@pytest.fixture
def queue(form, expert, curator):
    examples = [make_example(1), make_example(2)]
    return services.queue_create(
        name="Batch", form=form, examples=examples, experts=[expert], created_by=curator, scores_needed=1
    )


def post_answers(**overrides):
    values = {
        "q_runs": "yes", "q_faithful": "yes", "q_accurate": "no", "q_complete": "yes", "q_helps_agent": "4",
        "q_fix_time": "under 1 hour", "q_notes": "Needs a seed.",
    }  # fmt: skip
    values.update(overrides)
    return values


def test_anonymous_visitors_are_sent_to_log_in(client, queue):
    for url in [reverse("reviews"), reverse("review_queue_new"), reverse("review_queue", args=[queue.pk])]:
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_only_curators_manage_queues_and_see_results(expert_client, reader_client, curator_client, queue):
    for client in (expert_client, reader_client):
        assert client.get(reverse("review_queue_new")).status_code == 403
        assert client.get(reverse("review_queue", args=[queue.pk])).status_code == 403
        assert client.get(reverse("review_queue_csv", args=[queue.pk])).status_code == 403
        assert client.get(reverse("review_ab_results")).status_code == 403
    assert curator_client.get(reverse("review_queue", args=[queue.pk])).status_code == 200


def test_only_experts_score(curator_client, reader_client, queue):
    item = queue.items.first()
    for client in (curator_client, reader_client):
        assert client.post(reverse("review_next", args=[queue.pk])).status_code == 403
        assert client.get(reverse("review_item", args=[item.pk])).status_code == 403
        assert client.post(reverse("review_item", args=[item.pk]), post_answers()).status_code == 403
        assert client.get(reverse("review_ab")).status_code == 403
    assert not Review.objects.exists()


def queue_post(form, expert, **fields):
    data = {"name": "Round 1", "form": form.pk, "scores_needed": 1, "experts": [expert.pk], "create": ""}
    data.update(fields)
    return data


def test_a_curator_makes_a_queue_from_ticked_examples(curator_client, form, expert):
    picked, _other = make_example(1), make_example(2)
    response = curator_client.post(
        reverse("review_queue_new"), queue_post(form, expert, examples=[picked.pk])
    )
    queue = ReviewQueue.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("review_queue", args=[queue.pk])
    assert list(queue.items.values_list("example_id", flat=True)) == [picked.pk]
    assert list(queue.experts.all()) == [expert] and queue.saved_search == {}


def test_a_queue_form_refuses_too_many_scores_and_no_examples(curator_client, form, expert):
    example = make_example()
    response = curator_client.post(reverse("review_queue_new"), queue_post(form, expert))
    page = response.content.decode()
    assert response.status_code == 200 and "Tick examples, or take all the examples that match" in page
    response = curator_client.post(
        reverse("review_queue_new"), queue_post(form, expert, scores_needed=2, examples=[example.pk])
    )
    page = response.content.decode()
    assert "1 to 1 scores" in page and not ReviewQueue.objects.exists()
    # Said at its field, not at the top of the form.
    assert response.context["form"].errors["scores_needed"] == [
        "Each example needs 1 to 1 scores: there are 1 experts to give them."
    ]
    assert f'value="{example.pk}" checked' in page, "the ticks survive the refusal"
    response = curator_client.post(
        reverse("review_queue_new"), queue_post(form, expert, all_matching="on", q="nothing like it")
    )
    assert "a search that finds some" in response.content.decode() and not ReviewQueue.objects.exists()


def test_the_queue_form_defaults_to_what_is_possible_and_offers_the_admin_as_an_expert(
    curator_client, form, expert, django_user_model
):
    page = curator_client.get(reverse("review_queue_new"))
    assert page.context["form"]["scores_needed"].value() == 1, "one expert: one score per example"
    admin = django_user_model.objects.create_superuser("ada", "ada@example.org", "x-long-password-1")
    form_now = curator_client.get(reverse("review_queue_new")).context["form"]
    assert form_now["scores_needed"].value() == 2
    assert {user.username for user in form_now.fields["experts"].queryset} == {
        expert.username,
        admin.username,
    }


def test_a_draft_is_kept_per_expert_and_item_and_restored_until_submitted(
    expert_client, expert, queue, django_user_model
):
    item = queue.items.order_by("pk").first()
    expert_client.post(reverse("review_next", args=[queue.pk]))
    draft_url = reverse("review_draft", args=[item.pk])
    response = expert_client.post(
        draft_url,
        {"q_accurate": "no", "q_helps_agent": "2", "q_notes": "<b>half</b> done"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200 and "Draft saved at" in response.content.decode()
    draft = ScoreDraft.objects.get(item=item, expert=expert)
    assert draft.data == {"q_accurate": ["no"], "q_helps_agent": ["2"], "q_notes": ["<b>half</b> done"]}

    page = expert_client.get(reverse("review_item", args=[item.pk])).content.decode()
    assert 'value="no" id="id_q_accurate_1" checked' in page or re.search(
        r'name="q_accurate" value="no"[^>]*checked', page
    )
    assert re.search(r'name="q_helps_agent" value="2"[^>]*checked', page)
    assert "&lt;b&gt;half&lt;/b&gt; done</textarea>" in page and "<b>half</b>" not in page

    # Another expert, or someone who may not score it, keeps no draft here.
    other = logged_in(make_user(django_user_model, "olga", "expert"))
    assert "Not saved" in other.post(draft_url, {"q_notes": "mine"}).content.decode()
    assert ScoreDraft.objects.count() == 1

    expert_client.post(reverse("review_item", args=[item.pk]), post_answers())
    assert not ScoreDraft.objects.exists(), "submitted: the draft is gone"


def test_only_experts_keep_drafts(client, curator_client, queue):
    url = reverse("review_draft", args=[queue.items.first().pk])
    assert client.post(url, {"q_notes": "x"}).status_code == 302
    assert curator_client.post(url, {"q_notes": "x"}).status_code == 403
    assert curator_client.get(url).status_code in (403, 405)
    assert not ScoreDraft.objects.exists()


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(views, "PICK_PAGE_SIZE", 2)


def test_all_that_match_the_filter_takes_every_page_and_records_the_filter(
    curator_client, form, expert, small_pages
):
    matching = [make_example(n, main=f"import graphs\nprint({n})\n") for n in range(3)]
    other = make_example(9)
    page = curator_client.get(reverse("review_queue_new"), {"q": "graphs"}).content.decode()
    assert "All the examples that match this filter, on every page: <strong>3</strong>" in page
    assert "Page 1 of 2" in page and 'value="graphs"' in page
    assert matching[0].title in page and other.title not in page
    page = curator_client.get(reverse("review_queue_new")).content.decode()
    assert "All the examples in the library, on every page: <strong>4</strong>" in page

    response = curator_client.post(
        reverse("review_queue_new"),
        queue_post(form, expert, all_matching="on", q="graphs", examples=[other.pk]),
    )
    queue = ReviewQueue.objects.get()
    assert response.status_code == 302
    assert set(queue.items.values_list("example_id", flat=True)) == {e.pk for e in matching} | {other.pk}
    assert queue.saved_search == {"q": "graphs"}


def test_the_filter_takes_the_librarys_facets(curator_client, form, expert):
    gpu = make_example(1, metadata={"description": "Big.", "example_type": "benchmark", "gpu_required": True})
    cpu = make_example(2)
    page = curator_client.get(reverse("review_queue_new"), {"type": "benchmark"}).content.decode()
    assert '<option value="benchmark" selected>benchmark (1)</option>' in page
    assert gpu.title in page and cpu.title not in page


def test_the_library_offers_curators_its_results_as_a_queue(curator_client, reader_client, form):
    make_example(1, main="import graphs\n")
    link = f"{reverse('review_queue_new')}?q=graphs&amp;example_type=demonstration"
    found = {"q": "graphs", "type": "demonstration"}
    assert link in curator_client.get(reverse("library"), found).content.decode()
    assert "Queue these for review" not in reader_client.get(reverse("library"), found).content.decode()
    page = curator_client.get(link.replace("&amp;", "&")).content.decode()
    assert "match this filter, on every page: <strong>1</strong>" in page


def test_the_filter_keeps_what_it_has_no_field_for_and_says_what_it_left_out(curator_client, form):
    make_example(1)
    params = {"tag": ["dft", "phonons"], "sort": "score", "min_score": "2", "gpu": "maybe"}
    page = curator_client.get(reverse("review_queue_new"), params).content.decode()
    # The tag select posts the first tag; the rest of a library link's filter goes on in hidden fields.
    assert '<option value="dft" selected>dft</option>' in page
    for name, value in [("tag", "phonons"), ("sort", "score"), ("min_score", "2.0")]:
        assert f'<input type="hidden" name="{name}" value="{value}">' in page
    assert "Left out: gpu must be true or false, not &#x27;maybe&#x27;." in page


def test_turning_a_page_or_filtering_keeps_what_was_typed_and_ticked(
    curator_client, form, expert, small_pages
):
    examples = [make_example(n) for n in range(5)]
    newest_first = examples[::-1]  # the picker lists the examples in the library page's order
    response = curator_client.post(
        reverse("review_queue_new"),
        {"name": "Half-typed", "form": form.pk, "scores_needed": 1, "experts": [expert.pk],
         "examples": [newest_first[0].pk, newest_first[1].pk], "at_page": "1", "page": "2"},
    )  # fmt: skip
    page = response.content.decode()
    assert response.status_code == 200 and not ReviewQueue.objects.exists()
    assert "Page 2 of 3" in page and 'value="Half-typed"' in page and "This field is required" not in page
    assert f'name="experts" value="{expert.pk}" id="id_experts_0" checked' in page
    for kept in newest_first[:2]:
        assert f'<input type="hidden" name="examples" value="{kept.pk}">' in page
    assert f'name="examples" value="{newest_first[2].pk}">' in page and "2</span> ticked" in page

    # Filtering goes back to the first page and keeps the ticks too.
    response = curator_client.post(
        reverse("review_queue_new"),
        {"name": "Half-typed", "examples": [examples[0].pk, examples[3].pk], "at_page": "2", "filter": "",
         "q": "thing 3"},
    )  # fmt: skip
    page = response.content.decode()
    # (How many match "thing 3" depends on semantic search, which approval now feeds: not asserted here.)
    assert "Page 2 of" not in page and f'value="{examples[3].pk}" checked' in page
    assert f'<input type="hidden" name="examples" value="{examples[0].pk}">' in page

    response = curator_client.post(
        reverse("review_queue_new"),
        queue_post(form, expert, examples=[examples[0].pk, examples[3].pk], q="thing 3"),
    )
    queue = ReviewQueue.objects.get()
    assert set(queue.items.values_list("example_id", flat=True)) == {examples[0].pk, examples[3].pk}


def test_an_expert_scores_the_next_item_beside_its_code_and_moves_on(expert_client, expert, queue):
    response = expert_client.post(reverse("review_next", args=[queue.pk]))
    first = queue.items.get(locked_by=expert)
    assert response["Location"] == reverse("review_item", args=[first.pk])
    page = expert_client.get(response["Location"]).content.decode()
    assert first.example.title in page and "print" in page and "Guidelines" in page
    assert "The automatic judge says <strong>yes</strong>" in page

    response = expert_client.post(reverse("review_item", args=[first.pk]), post_answers())
    second = queue.items.exclude(pk=first.pk).get()
    assert response["Location"] == reverse("review_item", args=[second.pk])
    review = Review.objects.get(item=first, expert=expert)
    got = {a.question.key: (a.value, a.changed) for a in review.answers.select_related("question")}
    assert got["accurate"] == (False, True) and got["helps_agent"] == (4, False)
    assert got["fix_time"] == ("under 1 hour", False) and got["notes"] == ("Needs a seed.", False)
    # Scoring it again is refused.
    response = expert_client.post(reverse("review_item", args=[first.pk]), post_answers())
    assert response["Location"] == reverse("reviews") and Review.objects.count() == 1


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("q_helps_agent", "6", "Rate from 1 to 5."),
        ("q_runs", "perhaps", "Answer yes or no."),
        ("q_fix_time", "next year", "next year is not one of the choices."),
        ("q_faithful", "", "This field is required."),
        ("q_fix_time", ["under 1 hour", "under 1 day"], "Pick one answer only."),
    ],
)
def test_the_scoring_form_shows_an_error_per_question_type(expert_client, expert, queue, field, value, error):
    item = services.item_next(queue=queue, expert=expert)
    response = expert_client.post(reverse("review_item", args=[item.pk]), post_answers(**{field: value}))
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not Review.objects.exists()


def test_an_item_held_by_another_expert_is_refused(django_user_model, expert, form):
    other = make_user(django_user_model, "olga", "expert")
    queue = services.queue_create(
        name="Q",
        form=form,
        examples=[make_example()],
        experts=[expert, other],
        created_by=None,
        scores_needed=2,
    )
    item = services.item_next(queue=queue, expert=other)
    response = logged_in(expert).get(reverse("review_item", args=[item.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("reviews")


@pytest.fixture
def shared(django_user_model, expert, form):
    """A queue of one example that two experts score: (queue, the other expert)."""
    other = make_user(django_user_model, "olga", "expert")

    def make(scores_needed):
        queue = services.queue_create(
            name="Q", form=form, examples=[make_example()], experts=[expert, other], created_by=None,
            scores_needed=scores_needed,
        )  # fmt: skip
        return queue, other

    return make


def lose_the_lock(expert_client, queue, other, monkeypatch):
    """The expert opens the item, stays away past their lock, and the other expert takes it over."""
    clock = Clock(monkeypatch)
    item = queue.items.get()
    assert expert_client.get(reverse("review_item", args=[item.pk])).status_code == 200
    clock.advance(minutes=services.LOCK_MINUTES + 1)
    assert services.item_next(queue=queue, expert=other).pk == item.pk
    return item


def test_a_score_posted_after_the_lock_was_taken_over_counts_while_it_is_needed(
    expert_client, expert, shared, monkeypatch
):
    queue, other = shared(2)
    item = lose_the_lock(expert_client, queue, other, monkeypatch)
    response = expert_client.post(reverse("review_item", args=[item.pk]), post_answers())
    assert response.status_code == 302 and response["Location"] == reverse("reviews")
    assert Review.objects.get(item=item).expert == expert
    item.refresh_from_db()
    assert item.locked_by == other


def test_answers_for_an_example_that_filled_up_meanwhile_are_shown_again(
    expert_client, expert, shared, monkeypatch
):
    queue, other = shared(1)
    item = lose_the_lock(expert_client, queue, other, monkeypatch)
    services.answer_submit(item=item, expert=other, values=answers())
    notes = "Seed it <script>alert(1)</script>"
    response = expert_client.post(
        reverse("review_item", args=[item.pk]), post_answers(q_helps_agent="2", q_notes=notes)
    )
    assert response.status_code == 200 and not Review.objects.filter(expert=expert).exists()
    page = response.content.decode()
    assert "Your answers were not saved; they are still below." in page
    assert "other experts gave this example all the scores it needs" in page
    assert "Take the next example" in page
    assert 'name="q_helps_agent" value="2" id="id_q_helps_agent_1" required checked' in page
    assert 'name="q_accurate" value="no" id="id_q_accurate_1" required checked' in page
    assert (
        ">\nSeed it &lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in page and "<script>alert" not in page
    )


def test_the_heartbeat_renews_the_hold_and_says_when_it_is_lost(expert_client, expert, shared, monkeypatch):
    queue, other = shared(2)
    clock = Clock(monkeypatch)
    item = services.item_next(queue=queue, expert=expert)
    url = reverse("review_hold", args=[item.pk])
    clock.advance(minutes=20)
    response = expert_client.post(url, headers={"HX-Request": "true"})
    assert response.status_code == 200 and "Held for you for" in response.content.decode()
    assert "<html" not in response.content.decode()
    item.refresh_from_db()
    assert item.locked_until == clock.now + timedelta(minutes=services.LOCK_MINUTES)

    clock.advance(minutes=services.LOCK_MINUTES + 1)
    services.item_next(queue=queue, expert=other)
    page = expert_client.post(url, headers={"HX-Request": "true"}).content.decode()
    assert "another expert has taken this example too. It still needs 2 scores" in page
    item.refresh_from_db()
    assert item.locked_by == other
    # Without htmx there is nothing to update: the scoring page is where to go.
    assert expert_client.post(url)["Location"] == reverse("review_item", args=[item.pk])


def test_only_experts_beat_the_heart(client, curator_client, queue):
    url = reverse("review_hold", args=[queue.items.first().pk])
    assert "/accounts/login/" in client.post(url, headers={"HX-Request": "true"})["Location"]
    assert curator_client.post(url, headers={"HX-Request": "true"}).status_code == 403
    assert curator_client.get(url).status_code == 405


def test_skipping_moves_on(expert_client, expert, queue):
    item = services.item_next(queue=queue, expert=expert)
    response = expert_client.post(reverse("review_skip", args=[item.pk]))
    other = queue.items.exclude(pk=item.pk).get()
    assert response["Location"] == reverse("review_item", args=[other.pk])
    assert item.skips.filter(expert=expert).exists()


def test_the_results_page_and_the_csv(curator_client, expert, queue):
    for item in queue.items.all():
        services.answer_submit(item=item, expert=expert, values=answers(notes="=cmd|' /C calc'!A0"))
    page = curator_client.get(reverse("review_queue", args=[queue.pk])).content.decode()
    assert "2 of 2" in page and "Would it help a coding agent" in page
    response = curator_client.get(reverse("review_queue_csv", args=[queue.pk]))
    assert response["Content-Type"].startswith("text/csv")
    text = response.content.decode()
    assert text.count("\n") == 1 + 2 * 7 and "'=cmd" in text


def test_the_index_lists_queues_per_role(curator_client, expert_client, reader_client, queue):
    assert "Batch" in curator_client.get(reverse("reviews")).content.decode()
    expert_page = expert_client.get(reverse("reviews")).content.decode()
    assert "Batch" in expert_page and "Score next" in expert_page
    assert "Batch" not in reader_client.get(reverse("reviews")).content.decode()


def test_blind_ab_hides_the_models_and_records_the_verdict(expert_client, curator_client, expert):
    source = "https://github.com/example/shared"
    a = make_example(1, source=source, profile="local")
    b = make_example(2, source=source, profile="frontier-secret")
    page = expert_client.get(reverse("review_ab")).content.decode()
    assert "Does thing 1." in page and "Does thing 2." in page and "frontier-secret" not in page
    response = expert_client.post(
        reverse("review_ab"),
        {"left": b.pk, "right": a.pk, "picked": "left", "reason": "It runs the real model."},
    )
    assert response.status_code == 302
    assert "No pair left" in expert_client.get(reverse("review_ab")).content.decode()
    results = curator_client.get(reverse("review_ab_results")).content.decode()
    assert "frontier-secret" in results and "100%" in results


def test_admins_write_forms_with_inline_questions(admin_client, form):
    assert admin_client.get(reverse("admin:reviews_scoringform_change", args=[form.pk])).status_code == 200
    data = {
        "name": "Quick check", "description": "", "guidelines": "Be brief.", "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "questions-TOTAL_FORMS": "2", "questions-INITIAL_FORMS": "0",
        "questions-MIN_NUM_FORMS": "0", "questions-MAX_NUM_FORMS": "1000",
        "questions-0-order": "0", "questions-0-key": "useful", "questions-0-kind": "rating",
        "questions-0-required": "on", "questions-0-text": "Useful?", "questions-0-choices": "[]",
        "questions-1-order": "1", "questions-1-key": "kind", "questions-1-kind": "single",
        "questions-1-text": "Which kind?", "questions-1-choices": '["only one"]',
    }  # fmt: skip
    response = admin_client.post(reverse("admin:reviews_scoringform_add"), data)
    assert response.status_code == 200 and "two or more choices" in response.content.decode()
    assert not ScoringForm.objects.filter(name="Quick check").exists()
    data["questions-1-choices"] = '["demo", "tutorial"]'
    response = admin_client.post(reverse("admin:reviews_scoringform_add"), data)
    assert response.status_code == 302
    created = ScoringForm.objects.get(name="Quick check")
    assert list(created.questions.values_list("key", "kind")) == [("useful", "rating"), ("kind", "single")]
