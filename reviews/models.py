"""Expert review: scoring forms as data, review queues and their items, answers, blind A/B comparisons.

The tables keep the names they had when these models lived in the library app (`library_*`): the move to
this app changed Django's state only (library migration 0007, reviews migration 0001), not the database.

A form is a list of questions; admins write forms in the admin. A queue asks its experts to score a set
of examples on one form, `scores_needed` times each. An item is one example in one queue; while an
expert works on it, it is locked to them until `locked_until`.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class ScoringForm(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Shown beside the form while an expert scores.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "library_scoringform"
        ordering = ["name"]

    def __str__(self):
        return self.name


class Question(models.Model):
    class Kind(models.TextChoices):
        RATING = "rating", "Rating 1–5"
        YES_NO = "yes_no", "Yes or no"
        SINGLE = "single", "One choice"
        MULTIPLE = "multiple", "Several choices"
        TEXT = "text", "Free text"

    class Suggestion(models.TextChoices):
        """Which verdict of the automatic judge pre-fills the question (a yes/no question)."""

        NONE = "", "No suggestion"
        RUNS = "runs", "Runs (measured)"
        FAITHFUL = "faithful", "Faithful (judge)"
        ACCURATE = "accurate", "Accurate (judge)"
        COMPLETE = "complete", "Complete (judge)"

    form = models.ForeignKey(ScoringForm, on_delete=models.CASCADE, related_name="questions")
    order = models.PositiveIntegerField(default=0)
    key = models.SlugField(max_length=60, help_text="Column name in the CSV export.")
    text = models.CharField(max_length=500)
    help_text = models.TextField(blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    required = models.BooleanField(default=True)
    choices = models.JSONField(default=list, blank=True, help_text='For choice questions: ["a", "b", ...]')
    suggest_from = models.CharField(max_length=20, choices=Suggestion.choices, blank=True, default="")

    class Meta:
        db_table = "library_question"
        ordering = ["form", "order", "id"]
        constraints = [models.UniqueConstraint(fields=["form", "key"], name="unique_question_key_per_form")]

    def __str__(self):
        return self.text

    def clean(self):
        # The admin's check: a choice question needs its choices, as a list of distinct strings.
        choices = self.choices or []
        if self.kind in (self.Kind.SINGLE, self.Kind.MULTIPLE):
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) for c in choices)
            ):
                raise ValidationError({"choices": 'A choice question needs two or more choices: ["a", "b"].'})
            if len(set(choices)) != len(choices):
                raise ValidationError({"choices": "Each choice must be different."})
        elif choices:
            raise ValidationError({"choices": "Only choice questions have choices."})

    @property
    def is_categorical(self) -> bool:
        return self.kind in (self.Kind.YES_NO, self.Kind.SINGLE)


class ReviewQueue(models.Model):
    name = models.CharField(max_length=200)
    form = models.ForeignKey(ScoringForm, on_delete=models.PROTECT, related_name="queues")
    scores_needed = models.PositiveSmallIntegerField(default=2)
    experts = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="review_queues")
    # The library query the examples were picked with, if any ({"q": ..., filters...}): kept for the record.
    saved_search = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "library_reviewqueue"
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return self.name


class ReviewItemQuerySet(models.QuerySet):
    def with_counts(self):
        return self.annotate(scored=models.Count("reviews", distinct=True))


class ReviewItem(models.Model):
    queue = models.ForeignKey(ReviewQueue, on_delete=models.CASCADE, related_name="items")
    example = models.ForeignKey("library.Example", on_delete=models.CASCADE, related_name="review_items")
    locked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    locked_until = models.DateTimeField(null=True, blank=True)

    objects = ReviewItemQuerySet.as_manager()

    class Meta:
        db_table = "library_reviewitem"
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["queue", "example"], name="unique_example_per_queue")]

    def __str__(self):
        return f"{self.queue} · {self.example_id}"


class Review(models.Model):
    """One expert's scoring of one item: the answers hang from it."""

    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="reviews")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reviews")
    submitted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "library_review"
        ordering = ["submitted_at", "id"]
        constraints = [models.UniqueConstraint(fields=["item", "expert"], name="one_review_per_expert_item")]


class ScoreDraft(models.Model):
    """An expert's answers to an item while they type, kept until they submit: leaving the page (the
    library, the next example, a reload) lost them, and the judge's suggestions came back instead.

    `data` holds the form's fields as posted ({"q_helps_agent": ["4"], ...}): what the page shows again,
    checked only when the answers are submitted.
    """

    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="drafts")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    data = models.JSONField(default=dict)
    saved_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "expert"], name="one_draft_per_expert_and_item")
        ]


class Answer(models.Model):
    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="answers")
    question = models.ForeignKey(Question, on_delete=models.CASCADE, related_name="answers")
    # int (rating), bool (yes/no), str (one choice, text), list[str] (several choices), None (unanswered).
    value = models.JSONField(null=True)
    suggested = models.JSONField(null=True)  # the judge's suggestion shown to the expert, if any
    changed = models.BooleanField(default=False)  # a suggestion was shown and the expert answered otherwise

    class Meta:
        db_table = "library_answer"
        ordering = ["review", "question__order", "question_id"]
        constraints = [models.UniqueConstraint(fields=["review", "question"], name="one_answer_per_question")]


class Skip(models.Model):
    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="skips")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    skipped_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "library_skip"
        constraints = [models.UniqueConstraint(fields=["item", "expert"], name="one_skip_per_expert_item")]


class Comparison(models.Model):
    """A blind A/B verdict on two examples of one source; `first` is the lower id of the pair."""

    class Choice(models.TextChoices):
        FIRST = "first", "First"
        SECOND = "second", "Second"
        TIE = "tie", "Tie"

    first = models.ForeignKey("library.Example", on_delete=models.CASCADE, related_name="+")
    second = models.ForeignKey("library.Example", on_delete=models.CASCADE, related_name="+")
    shown_left = models.ForeignKey("library.Example", on_delete=models.CASCADE, related_name="+")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="comparisons")
    choice = models.CharField(max_length=10, choices=Choice.choices)
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "library_comparison"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["expert", "first", "second"], name="one_comparison_per_expert_pair"
            ),
            models.CheckConstraint(
                condition=models.Q(first__lt=models.F("second")), name="comparison_pair_ordered"
            ),
        ]
