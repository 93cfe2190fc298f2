import csv
import functools
import importlib
import io
import random
from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from library.models import Example
from library.services import example_approve
from reviews import services
from reviews.models import Answer, Comparison, Question, Review, ReviewItem, ScoringForm, Skip
from reviews.services import ReviewRefused
from tests.conftest import make_user
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

CODEDISTILLER = "CodeDistiller manual analysis"


def make_example(
    n: int = 1, *, source: str | None = None, profile: str = "local", **iteration_fields
) -> Example:
    run = make_run(source_url=source or f"https://github.com/example/lib{n}", profile=profile)
    make_iteration(run, 1, **iteration_fields)
    return example_approve(run=run, approved_by=None, title=f"Example {n}", summary=f"Does thing {n}.")


@pytest.fixture
def experts(django_user_model):
    return [make_user(django_user_model, name, "expert") for name in ("ann", "bob", "cid")]


@functools.cache
def _models_of_the_forms_migration():
    # The data migration names the models where they were then (the library app): its own historical
    # models, on the same tables, let it run again as it ran then.
    return MigrationLoader(None).project_state(("library", "0005_review_forms")).apps


def shipped_forms() -> None:
    """The forms the data migration makes; a transactional test (the live server's) flushes them."""
    migration = importlib.import_module("library.migrations.0005_review_forms")
    migration.add_forms(_models_of_the_forms_migration(), None)


@pytest.fixture
def form():
    shipped_forms()
    return ScoringForm.objects.get(name=CODEDISTILLER)


def make_queue(form, experts, examples, **kwargs):
    return services.queue_create(
        name="Batch 1", form=form, examples=examples, experts=experts, created_by=None, **kwargs
    )


def answers(helps=4, **overrides):
    values = {
        "runs": True, "faithful": True, "accurate": True, "complete": True, "helps_agent": helps,
        "fix_time": "no fix needed", "notes": "",
    }  # fmt: skip
    values.update(overrides)
    return values


class Clock:
    """Moves timezone.now without sleeping."""

    def __init__(self, monkeypatch):
        self.now = timezone.now()
        monkeypatch.setattr(timezone, "now", lambda: self.now)

    def advance(self, **delta):
        self.now += timedelta(**delta)


def test_the_two_forms_ship_with_their_questions():
    shipped_forms()
    cd = ScoringForm.objects.get(name=CODEDISTILLER)
    keys = list(cd.questions.values_list("key", flat=True))
    assert keys == ["runs", "faithful", "accurate", "complete", "helps_agent", "fix_time", "notes"]
    paper = ScoringForm.objects.get(name="PaperCoder author evaluation")
    method = paper.questions.get(key="method")
    assert method.kind == Question.Kind.SINGLE and method.choices == ["fully", "partly", "not implemented"]
    assert paper.questions.filter(key="easier", kind=Question.Kind.YES_NO).exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("helps_agent", 6, "from 1 to 5"),
        ("helps_agent", 0, "from 1 to 5"),
        ("helps_agent", True, "from 1 to 5"),
        ("runs", "maybe", "yes or no"),
        ("fix_time", "next year", "one of"),
        ("fix_time", None, "needs an answer"),
        ("faithful", None, "needs an answer"),
    ],
)
def test_it_refuses_an_invalid_answer_per_question_type(form, key, value, message):
    question = form.questions.get(key=key)
    with pytest.raises(ReviewRefused, match=message):
        services.answer_check(question, value)


def test_it_checks_multiple_choice_and_text_answers():
    form = ScoringForm.objects.create(name="Tiny")
    many = Question.objects.create(
        form=form, key="libs", text="Libraries", kind="multiple", choices=["a", "b", "c"]
    )
    note = Question.objects.create(form=form, key="note", text="Note", kind="text", required=False)
    assert services.answer_check(many, ["c", "a"]) == ["a", "c"]
    with pytest.raises(ReviewRefused, match="takes only"):
        services.answer_check(many, ["a", "z"])
    assert services.answer_check(note, "  fine ") == "fine" and services.answer_check(note, "") is None


def test_each_item_gets_n_scores_and_nobody_scores_an_item_twice(form, experts):
    examples = [make_example(n) for n in range(3)]
    queue = make_queue(form, experts, examples, scores_needed=2)
    scored = []
    for _round in range(4):
        for expert in experts:
            item = services.item_next(queue=queue, expert=expert)
            if item is None:
                continue
            services.answer_submit(item=item, expert=expert, values=answers())
            scored.append((item.pk, expert.pk))
    assert len(scored) == len(set(scored)) == 6
    counts = sorted(ReviewItem.objects.filter(queue=queue).with_counts().values_list("scored", flat=True))
    assert counts == [2, 2, 2]
    assert all(services.item_next(queue=queue, expert=e) is None for e in experts)
    item_id, expert_id = scored[0]
    expert = next(e for e in experts if e.pk == expert_id)
    with pytest.raises(ReviewRefused, match="already scored"):
        services.answer_submit(item=ReviewItem.objects.get(pk=item_id), expert=expert, values=answers())


def test_the_database_refuses_a_second_review_by_the_same_expert(form, experts):
    queue = make_queue(form, experts, [make_example()])
    item = queue.items.get()
    Review.objects.create(item=item, expert=experts[0])
    with pytest.raises(IntegrityError):
        Review.objects.create(item=item, expert=experts[0])


def test_a_locked_item_is_not_offered_to_another_expert_until_the_lock_expires(form, experts, monkeypatch):
    clock = Clock(monkeypatch)
    queue = make_queue(form, experts[:2], [make_example()], scores_needed=1)
    first = services.item_next(queue=queue, expert=experts[0])
    assert first.locked_by == experts[0]
    assert services.item_next(queue=queue, expert=experts[1]) is None
    assert services.item_lock(item=first, expert=experts[1]) is False
    # The same expert asking again gets the item they hold.
    assert services.item_next(queue=queue, expert=experts[0]).pk == first.pk

    clock.advance(minutes=services.LOCK_MINUTES + 1)
    second = services.item_next(queue=queue, expert=experts[1])
    assert second.pk == first.pk and second.locked_by == experts[1]
    services.answer_submit(item=second, expert=experts[1], values=answers())
    second.refresh_from_db()
    assert second.locked_by is None and second.locked_until is None
    # One score was needed and given: nothing left for the first expert either.
    assert services.item_next(queue=queue, expert=experts[0]) is None


def test_a_score_counts_after_its_lock_lapsed_while_the_item_lacks_scores(form, experts, monkeypatch):
    clock = Clock(monkeypatch)
    queue = make_queue(form, experts[:2], [make_example()], scores_needed=2)
    item = services.item_next(queue=queue, expert=experts[0])
    clock.advance(minutes=services.LOCK_MINUTES + 1)
    assert services.item_next(queue=queue, expert=experts[1]).pk == item.pk

    services.answer_submit(item=item, expert=experts[0], values=answers(helps=2))
    item.refresh_from_db()
    assert item.locked_by == experts[1], "the other expert keeps their lock"
    services.answer_submit(item=item, expert=experts[1], values=answers(helps=4))
    assert sorted(item.reviews.values_list("expert__username", flat=True)) == ["ann", "bob"]
    item.example.refresh_from_db()
    assert item.example.score == 3 and item.example.score_count == 2


def test_holding_renews_the_lock_and_never_takes_it_from_another_expert(form, experts, monkeypatch):
    clock = Clock(monkeypatch)
    queue = make_queue(form, experts[:2], [make_example()], scores_needed=1)
    item = services.item_next(queue=queue, expert=experts[0])
    clock.advance(minutes=services.LOCK_MINUTES - 5)
    hold = services.item_hold(item=item, expert=experts[0])
    assert hold.held and hold.until == clock.now + timedelta(minutes=services.LOCK_MINUTES)
    clock.advance(minutes=10)
    assert services.item_next(queue=queue, expert=experts[1]) is None, "the renewed lock still holds"

    clock.advance(minutes=services.LOCK_MINUTES)
    assert services.item_next(queue=queue, expert=experts[1]).pk == item.pk
    hold = services.item_hold(item=item, expert=experts[0])
    assert not hold.held and hold.refusal is None and hold.still_needed == 1
    item.refresh_from_db()
    assert item.locked_by == experts[1]

    services.answer_submit(item=item, expert=experts[1], values=answers())
    hold = services.item_hold(item=item, expert=experts[0])
    assert hold.filled_up and not hold.held
    with pytest.raises(ReviewRefused, match="all the scores it needs"):
        services.answer_submit(item=item, expert=experts[0], values=answers())


def test_a_skipped_item_is_not_offered_to_that_expert_again(form, experts):
    queue = make_queue(form, experts[:2], [make_example(1), make_example(2)])
    item = services.item_next(queue=queue, expert=experts[0])
    services.item_skip(item=item, expert=experts[0])
    services.item_skip(item=item, expert=experts[0])  # already skipped: no error, one row
    assert Skip.objects.filter(item=item).count() == 1
    item.refresh_from_db()
    assert item.locked_by is None
    other = services.item_next(queue=queue, expert=experts[0])
    assert other.pk != item.pk
    services.answer_submit(item=other, expert=experts[0], values=answers())
    assert services.item_next(queue=queue, expert=experts[0]) is None
    assert services.item_next(queue=queue, expert=experts[1]) is not None


def test_only_assigned_experts_take_items(form, experts):
    queue = make_queue(form, experts[:1], [make_example()], scores_needed=1)
    with pytest.raises(ReviewRefused, match="not assigned"):
        services.item_next(queue=queue, expert=experts[1])
    with pytest.raises(ReviewRefused, match="not assigned"):
        services.answer_submit(item=queue.items.get(), expert=experts[1], values=answers())


def test_a_queue_needs_examples_experts_and_a_possible_number_of_scores(form, experts):
    with pytest.raises(ReviewRefused, match="at least one example"):
        make_queue(form, experts, [])
    with pytest.raises(ReviewRefused, match="at least one expert"):
        make_queue(form, [], [make_example()])
    with pytest.raises(ReviewRefused, match="1 to 2 scores"):
        make_queue(form, experts[:2], [make_example(2)], scores_needed=3)


def test_the_judges_verdict_is_a_suggestion_and_changes_are_recorded(form, experts):
    judgement = {"faithful": True, "accurate": False, "complete": True, "passed": False}
    example = make_example(judgement=judgement)
    queue = make_queue(form, experts[:1], [example], scores_needed=1)
    item = services.item_next(queue=queue, expert=experts[0])
    review = services.answer_submit(
        item=item, expert=experts[0], values=answers(accurate=True, complete=False)
    )
    got = {
        a.question.key: (a.value, a.suggested, a.changed) for a in review.answers.select_related("question")
    }
    assert got["runs"] == (True, True, False)
    assert got["faithful"] == (True, True, False)
    assert got["accurate"] == (True, False, True)
    assert got["complete"] == (False, True, True)
    assert got["helps_agent"] == (4, None, False)


def test_scores_are_kept_in_step_on_the_example(form, experts):
    example = make_example()
    queue = make_queue(form, experts[:2], [example])
    for expert, helps in zip(experts[:2], [5, 2], strict=True):
        item = services.item_next(queue=queue, expert=expert)
        services.answer_submit(item=item, expert=expert, values=answers(helps=helps))
    example.refresh_from_db()
    assert example.score == pytest.approx(3.5) and example.score_count == 2


def test_results_give_averages_distributions_and_agreement(form, experts):
    examples = [make_example(n) for n in range(4)]
    queue = make_queue(form, experts[:2], examples)
    # Rater ann and bob on 4 items; "runs": (yes, yes), (yes, no), (no, no), (yes, yes):
    # p_o = 3/4; ann yes 3/4, bob yes 2/4: p_e = 3/4·2/4 + 1/4·2/4 = 1/2; κ = (3/4 - 1/2) / (1/2) = 0.5
    plan = {0: (True, True, 5, 5), 1: (True, False, 4, 3), 2: (False, False, 1, 2), 3: (True, True, 3, 3)}
    for index, example in enumerate(examples):
        item = queue.items.get(example=example)
        ann_runs, bob_runs, ann_helps, bob_helps = plan[index]
        services.answer_submit(item=item, expert=experts[0], values=answers(helps=ann_helps, runs=ann_runs))
        services.answer_submit(item=item, expert=experts[1], values=answers(helps=bob_helps, runs=bob_runs))
    results = services.queue_results(queue)
    by_key = {r.question.key: r for r in results["questions"]}
    assert results["done"] == results["total"] == 4
    runs = by_key["runs"]
    assert runs.agreement_name == "Cohen's κ" and runs.agreement == pytest.approx(0.5)
    assert runs.distribution == [("yes", 5), ("no", 3)]
    helps = by_key["helps_agent"]
    assert helps.mean == pytest.approx(26 / 8)
    assert helps.agreement_name.startswith("Krippendorff")
    # Interval α by hand: values 5,5,4,3,1,2,3,3 (n=8, mean 3.25); D_o = 2·(0+1+1+0) = 4;
    # Σ(v - mean)² = 3.0625·2 + 0.5625 + 0.0625·3 + 5.0625 + 1.5625 = 13.5; D_e = 2·8·13.5 / 7 = 30.857;
    # α = 1 - 4 / 30.857 = 0.8704
    assert helps.agreement == pytest.approx(1 - 4 / (2 * 8 * 13.5 / 7))
    assert by_key["fix_time"].distribution[0] == ("no fix needed", 8)


def test_three_raters_on_categories_use_fleiss_kappa(form, experts):
    examples = [make_example(n) for n in range(2)]
    queue = make_queue(form, experts, examples, scores_needed=3)
    for example, votes in zip(examples, [(True, True, True), (False, False, True)], strict=True):
        item = queue.items.get(example=example)
        for expert, runs in zip(experts, votes, strict=True):
            services.answer_submit(item=item, expert=expert, values=answers(runs=runs))
    runs = {r.question.key: r for r in services.queue_results(queue)["questions"]}["runs"]
    # Counts (yes, no): (3, 0), (1, 2). P_i = 1, (1+4-3)/6 = 1/3; P̄ = 2/3. p_yes = 4/6, p_no = 2/6;
    # P̄e = 4/9 + 1/9 = 5/9. κ = (2/3 - 5/9) / (4/9) = (1/9) / (4/9) = 0.25
    assert runs.agreement_name == "Fleiss' κ" and runs.agreement == pytest.approx(0.25)


def test_the_csv_has_one_row_per_answer_and_defuses_formulas(form, experts):
    queue = make_queue(form, experts[:1], [make_example(judgement={"faithful": False})], scores_needed=1)
    queue.name = "=HYPERLINK(1)"
    queue.save()
    item = services.item_next(queue=queue, expert=experts[0])
    services.answer_submit(item=item, expert=experts[0], values=answers(notes="@SUM(A1) +1 -1"))
    rows = list(csv.reader(io.StringIO(services.answers_csv(queue))))
    assert rows[0] == services.CSV_HEADER
    assert len(rows) == 1 + form.questions.count() == 1 + Answer.objects.count()
    by_question = {row[4]: row for row in rows[1:]}
    assert by_question["notes"][5] == "'@SUM(A1) +1 -1"
    assert all(row[0] == "'=HYPERLINK(1)" for row in rows[1:])
    assert by_question["faithful"][5:8] == ["yes", "no", "yes"]
    assert by_question["helps_agent"][5:8] == ["4", "", ""]
    assert by_question["runs"][3] == "ann"


def test_a_blind_ab_records_the_verdict_and_counts_it_per_profile(experts):
    source = "https://github.com/example/shared"
    local = make_example(1, source=source, profile="local")
    other = make_example(2, source=source, profile="modal")
    make_example(3)  # a different source: never paired
    left, right = services.ab_next(expert=experts[0], rng=random.Random(1))
    assert {left.pk, right.pk} == {local.pk, other.pk}
    winner = "left" if left.pk == other.pk else "right"
    comparison = services.ab_submit(
        expert=experts[0], left=left, right=right, picked=winner, reason="Clearer."
    )
    assert comparison.first == local and comparison.second == other
    assert comparison.choice == Comparison.Choice.SECOND and comparison.shown_left == left
    assert services.ab_next(expert=experts[0]) is None
    with pytest.raises(ReviewRefused, match="already compared"):
        services.ab_submit(expert=experts[0], left=left, right=right, picked="tie", reason="x")
    services.ab_submit(expert=experts[1], left=local, right=other, picked="tie", reason="Same.")
    rows = {row["arm"]: row for row in services.ab_results()}
    assert (rows["modal"]["wins"], rows["modal"]["losses"], rows["modal"]["ties"]) == (1, 0, 1)
    assert (rows["local"]["wins"], rows["local"]["losses"], rows["local"]["ties"]) == (0, 1, 1)
    with pytest.raises(ReviewRefused, match="not a pair"):
        services.ab_submit(
            expert=experts[2],
            left=local,
            right=Example.objects.get(title="Example 3"),
            picked="tie",
            reason="x",
        )
    with pytest.raises(ReviewRefused, match="Say why"):
        services.ab_submit(expert=experts[2], left=local, right=other, picked="left", reason=" ")
