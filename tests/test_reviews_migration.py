"""The review models moved from the library app to the reviews app in Django's state only: a database that
holds reviews in the old layout keeps every row, readable through the new models."""

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from library.models import Example
from reviews import services
from reviews.models import Answer, Comparison, Question, Review, ReviewItem, ReviewQueue, ScoringForm, Skip

LAST_OLD_LAYOUT = ("library", "0006_example_json_fields_blank")


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)  # a new one each time: it reads what is applied when made
    executor.migrate(targets)
    return executor


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor cannot run inside the test's transaction
def test_a_database_with_reviews_in_the_library_app_keeps_them_in_the_reviews_app():
    queue_type = ContentType.objects.get_by_natural_key("reviews", "reviewqueue")
    permission = Permission.objects.get(content_type=queue_type, codename="add_reviewqueue")
    try:
        old = migrate([LAST_OLD_LAYOUT, ("reviews", None)]).loader.project_state([LAST_OLD_LAYOUT]).apps
        with pytest.raises(LookupError):
            old.get_model("reviews", "ReviewQueue")
        # In the old layout the content type is the library's, as on a database that never had the app.
        assert ContentType.objects.get(app_label="library", model="reviewqueue").pk == queue_type.pk
        user = old.get_model("auth", "User").objects.create(username="olga")
        OldExample = old.get_model("library", "Example")
        first, second = (
            OldExample.objects.create(
                title=f"Example {n}",
                summary="S.",
                source_url="https://github.com/lab/repo",
                version=n,
                is_latest=n == 2,
                iteration_number=1,
            )  # fmt: skip
            for n in (1, 2)
        )
        form = old.get_model("library", "ScoringForm").objects.create(name="Old form")
        question = old.get_model("library", "Question").objects.create(
            form=form, key="helps", text="Does it help?", kind="rating"
        )
        queue = old.get_model("library", "ReviewQueue").objects.create(
            name="Old queue", form=form, scores_needed=1, created_by=user, saved_search={"q": "spectra"}
        )
        queue.experts.add(user)
        item = old.get_model("library", "ReviewItem").objects.create(
            queue=queue, example=first, locked_by=user
        )
        review = old.get_model("library", "Review").objects.create(item=item, expert=user)
        old.get_model("library", "Answer").objects.create(review=review, question=question, value=4)
        old.get_model("library", "Skip").objects.create(item=item, expert=user)
        old.get_model("library", "Comparison").objects.create(
            first=first, second=second, shown_left=second, expert=user, choice="second", reason="Clearer."
        )
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    executor = MigrationExecutor(connection)
    assert not executor.migration_plan(executor.loader.graph.leaf_nodes()), "every migration is applied"

    moved = ReviewQueue.objects.get()
    assert (moved.pk, moved.name, moved.saved_search) == (queue.pk, "Old queue", {"q": "spectra"})
    assert list(moved.experts.values_list("username", flat=True)) == ["olga"]
    assert moved.form == ScoringForm.objects.get(name="Old form")
    assert Question.objects.get(pk=question.pk).form_id == form.pk
    moved_item = ReviewItem.objects.select_related("example", "locked_by").get()
    assert moved_item.example.title == "Example 1" and moved_item.locked_by.username == "olga"
    assert list(Example.objects.get(pk=first.pk).review_items.all()) == [moved_item]
    assert Review.objects.get().item == moved_item and Skip.objects.get().item == moved_item
    assert Answer.objects.get().value == 4
    comparison = Comparison.objects.get()
    assert (comparison.first_id, comparison.second_id, comparison.choice) == (first.pk, second.pk, "second")

    # The services work on the moved rows, and the example's score is kept from them.
    services.example_score_refresh(example_id=first.pk)
    assert Example.objects.values_list("score", "score_count").get(pk=first.pk) == (4.0, 1)
    # The content type moved back to the reviews app: permissions given on it stay attached.
    assert ContentType.objects.get(app_label="reviews", model="reviewqueue").pk == queue_type.pk
    assert Permission.objects.get(pk=permission.pk).content_type_id == queue_type.pk
