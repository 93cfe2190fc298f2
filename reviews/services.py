"""State changes and figures of expert review: queues, the next item and its lock, answers, skips,
scores kept in step on the example, results with agreement, the CSV of answers, and blind A/B.
"""

from __future__ import annotations

import csv
import io
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from library.models import Example
from reviews import agreement
from reviews.models import (
    Answer,
    Comparison,
    Question,
    Review,
    ReviewItem,
    ReviewQueue,
    ScoreDraft,
    ScoringForm,
    Skip,
)

LOCK_MINUTES = 30
RATINGS = (1, 2, 3, 4, 5)


class ReviewRefused(Exception):
    """An action that cannot be done; the message says why, and `field` which of a form's fields it is
    about (None: the form as a whole)."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


# Answers ----------------------------------------------------------------------------------------------


def answer_check(question: Question, value):
    """The value if it is a valid answer to the question, else ReviewRefused saying why."""
    kind = Question.Kind
    empty = value is None or value == "" or value == []
    if empty:
        if question.required:
            raise ReviewRefused(f"“{question.text}” needs an answer.")
        return None
    if question.kind == kind.RATING:
        if isinstance(value, bool) or not isinstance(value, int) or value not in RATINGS:
            raise ReviewRefused(f"“{question.text}” is rated from 1 to 5.")
    elif question.kind == kind.YES_NO:
        if not isinstance(value, bool):
            raise ReviewRefused(f"“{question.text}” is answered yes or no.")
    elif question.kind == kind.SINGLE:
        if not isinstance(value, str) or value not in question.choices:
            raise ReviewRefused(f"“{question.text}” takes one of: {', '.join(question.choices)}.")
    elif question.kind == kind.MULTIPLE:
        if not isinstance(value, list) or not all(v in question.choices for v in value):
            raise ReviewRefused(f"“{question.text}” takes only: {', '.join(question.choices)}.")
        value = [choice for choice in question.choices if choice in value]
    elif question.kind == kind.TEXT:
        if not isinstance(value, str):
            raise ReviewRefused(f"“{question.text}” takes text.")
        value = value.strip()
    return value


def suggestion(question: Question, example: Example):
    """The automatic verdict that pre-fills a yes/no question, or None when there is none."""
    source = question.suggest_from
    if not source or question.kind != Question.Kind.YES_NO:
        return None
    if source == Question.Suggestion.RUNS:
        measured = example.measured or {}
        verdict = measured.get("passed", measured.get("exit_ok"))
    else:
        verdict = (example.judgement or {}).get(source)
    return verdict if isinstance(verdict, bool) else None


# Queues and items -------------------------------------------------------------------------------------


def queue_create(
    *,
    name: str,
    form: ScoringForm,
    examples,
    experts,
    created_by,
    scores_needed: int = 2,
    saved_search: dict | None = None,
) -> ReviewQueue:
    examples, experts = list(examples), list(experts)
    if not name.strip():
        raise ReviewRefused("A queue needs a name.")
    if not examples:
        raise ReviewRefused("Pick at least one example (or a search that finds some).")
    if not experts:
        raise ReviewRefused("Assign at least one expert.")
    if not 1 <= scores_needed <= len(experts):
        raise ReviewRefused(
            f"Each example needs 1 to {len(experts)} scores: there are {len(experts)} experts to give them.",
            field="scores_needed",
        )
    with transaction.atomic():
        queue = ReviewQueue.objects.create(
            name=name.strip(),
            form=form,
            scores_needed=scores_needed,
            created_by=created_by,
            saved_search=saved_search or {},
        )
        queue.experts.set(experts)
        ReviewItem.objects.bulk_create(
            [ReviewItem(queue=queue, example=example) for example in dict.fromkeys(examples)]
        )
    return queue


def open_items(queue: ReviewQueue, expert):
    """Items this expert may take: still short of scores, not scored or skipped by them."""
    return (
        queue.items.with_counts()
        .filter(scored__lt=queue.scores_needed)
        .exclude(reviews__expert=expert)
        .exclude(skips__expert=expert)
    )


def item_next(*, queue: ReviewQueue, expert) -> ReviewItem | None:
    """Lock and return the next item for the expert; the one they already hold comes first."""
    if not queue.experts.filter(pk=expert.pk).exists():
        raise ReviewRefused("You are not assigned to this queue.")
    now = timezone.now()
    free = Q(locked_by=None) | Q(locked_until__lt=now) | Q(locked_by=expert)
    held = open_items(queue, expert).filter(locked_by=expert, locked_until__gte=now).first()
    candidates = [held] if held else open_items(queue, expert).filter(free).order_by("scored", "id")[:50]
    for item in candidates:
        if item_lock(item=item, expert=expert, now=now):
            item.refresh_from_db()
            return item
    return None


def item_lock(*, item: ReviewItem, expert, now=None) -> bool:
    """Take (or renew) the item's lock; a conditional UPDATE, so two experts never both hold it."""
    now = now or timezone.now()
    free = Q(locked_by=None) | Q(locked_until__lt=now) | Q(locked_by=expert)
    updated = ReviewItem.objects.filter(free, pk=item.pk).update(
        locked_by=expert, locked_until=now + timedelta(minutes=LOCK_MINUTES)
    )
    return updated == 1


ALL_SCORED = "This example has all the scores it needs."


def item_may_score(*, item: ReviewItem, expert) -> str | None:
    """Why the expert may not score this item now, or None when they may."""
    if not item.queue.experts.filter(pk=expert.pk).exists():
        return "You are not assigned to this queue."
    if item.reviews.filter(expert=expert).exists():
        return "You have already scored this example in this queue."
    if item.reviews.count() >= item.queue.scores_needed:
        return ALL_SCORED
    return None


@dataclass(frozen=True)
class Hold:
    """What the scoring page tells the expert about their hold on the item."""

    held: bool  # the lock is theirs, until `until`
    until: datetime | None = None
    refusal: str | None = None  # why they may no longer score it at all
    still_needed: int = 0  # scores the item still lacks

    @property
    def filled_up(self) -> bool:
        return self.refusal == ALL_SCORED


def item_hold(*, item: ReviewItem, expert) -> Hold:
    """Take or renew the expert's lock while they work on the item, and say where they stand.

    Called when the scoring page opens and again while the expert is active on it, so that a lock only
    lapses LOCK_MINUTES after they stop. A lock another expert took after this one lapsed is not taken
    back: answer_submit still accepts this expert's score while the item lacks scores.
    """
    refusal = item_may_score(item=item, expert=expert)
    if refusal:
        return Hold(held=False, refusal=refusal)
    still_needed = item.queue.scores_needed - item.reviews.count()
    if not item_lock(item=item, expert=expert):
        return Hold(held=False, still_needed=still_needed)
    item.refresh_from_db(fields=["locked_by", "locked_until"])
    return Hold(held=True, until=item.locked_until, still_needed=still_needed)


def answer_submit(*, item: ReviewItem, expert, values: dict[str, object]) -> Review:
    """Record the expert's answers (question key -> value) to the item and keep the example's score."""
    refusal = item_may_score(item=item, expert=expert)
    if refusal:
        raise ReviewRefused(refusal)
    questions = list(item.queue.form.questions.all())
    unknown = set(values) - {q.key for q in questions}
    if unknown:
        raise ReviewRefused(f"Unknown questions: {', '.join(sorted(unknown))}.")
    cleaned = {q.key: answer_check(q, values.get(q.key)) for q in questions}
    now = timezone.now()
    with transaction.atomic():
        # Row lock (Postgres; SQLite serialises writers anyway), then the count again: two experts
        # submitting the last score at once cannot both pass it.
        ReviewItem.objects.select_for_update().filter(pk=item.pk).first()
        if item.reviews.count() >= item.queue.scores_needed:
            raise ReviewRefused(ALL_SCORED)
        # The lock is not checked here. It decides who is *offered* an item, so that two experts do not
        # start the same work; once an expert has done the work, refusing it because their lock lapsed
        # and another expert took the item would throw the work away. The queue's cap of scores, counted
        # under the row lock above, is the real limit: while the item lacks scores, a second concurrent
        # score is as good as the first. If this one fills the last place, the lock holder's page says so
        # at its next heartbeat (item_hold), and their typed answers stay on their page.
        try:
            with transaction.atomic():
                review = Review.objects.create(item=item, expert=expert, submitted_at=now)
        except IntegrityError:
            raise ReviewRefused("You have already scored this example in this queue.") from None
        answers = []
        for question in questions:
            suggested = suggestion(question, item.example)
            value = cleaned[question.key]
            answers.append(
                Answer(
                    review=review,
                    question=question,
                    value=value,
                    suggested=suggested,
                    changed=suggested is not None and value != suggested,
                )
            )
        Answer.objects.bulk_create(answers)
        ScoreDraft.objects.filter(item=item, expert=expert).delete()  # submitted: nothing left to restore
        ReviewItem.objects.filter(pk=item.pk, locked_by=expert).update(locked_by=None, locked_until=None)
        example_score_refresh(example_id=item.example_id)
    return review


def draft_save(*, item: ReviewItem, expert, data: dict[str, list[str]]) -> ScoreDraft:
    """Keep what the expert has typed so far on the item (the scoring form's fields, as posted)."""
    refusal = item_may_score(item=item, expert=expert)
    if refusal:
        raise ReviewRefused(refusal)
    draft, _created = ScoreDraft.objects.update_or_create(
        item=item, expert=expert, defaults={"data": data, "saved_at": timezone.now()}
    )
    return draft


def item_skip(*, item: ReviewItem, expert) -> None:
    """The expert passes on the item: it is not offered to them again, and its lock is released."""
    if not item.queue.experts.filter(pk=expert.pk).exists():
        raise ReviewRefused("You are not assigned to this queue.")
    with transaction.atomic():
        Skip.objects.get_or_create(item=item, expert=expert)
        ReviewItem.objects.filter(pk=item.pk, locked_by=expert).update(locked_by=None, locked_until=None)


def example_score_refresh(*, example_id: int) -> None:
    """Example.score: the mean over reviews of each review's mean rating; score_count: those reviews."""
    per_review = defaultdict(list)
    ratings = Answer.objects.filter(
        review__item__example_id=example_id, question__kind=Question.Kind.RATING, value__isnull=False
    ).values_list("review_id", "value")
    for review_id, value in ratings:
        if isinstance(value, int):
            per_review[review_id].append(value)
    means = [statistics.fmean(values) for values in per_review.values()]
    Example.objects.filter(pk=example_id).update(
        score=round(statistics.fmean(means), 3) if means else None, score_count=len(means)
    )


# Results ----------------------------------------------------------------------------------------------


@dataclass
class QuestionResult:
    question: Question
    answered: int = 0
    mean: float | None = None
    distribution: list[tuple[str, int]] = field(default_factory=list)
    agreement: float | None = None
    agreement_name: str = ""
    agreement_items: int = 0
    changed: int = 0
    suggested: int = 0
    texts: list[tuple[str, str]] = field(default_factory=list)


def _label(question: Question, value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value)
    return "" if value is None else str(value)


def _categories(question: Question) -> list:
    if question.kind == Question.Kind.RATING:
        return list(RATINGS)
    if question.kind == Question.Kind.YES_NO:
        return [True, False]
    return list(question.choices)


def question_results(question: Question, answers: list[Answer], needed: int) -> QuestionResult:
    """Averages, distribution and agreement for one question over the answers given to it.

    Agreement counts only items with at least `needed` scores: ratings by Krippendorff's interval alpha;
    categories by Cohen's kappa when the same two experts scored every such item, else Fleiss' kappa on
    the first `needed` answers of each.
    """
    result = QuestionResult(question=question)
    given = [a for a in answers if a.value not in (None, "", [])]
    result.answered = len(given)
    result.suggested = sum(1 for a in answers if a.suggested is not None)
    result.changed = sum(1 for a in answers if a.changed)
    if question.kind == Question.Kind.TEXT:
        result.texts = [(a.review.item.example.title, a.value) for a in given]
        return result
    counts: Counter = Counter()
    for a in given:
        for value in a.value if isinstance(a.value, list) else [a.value]:
            counts[value] += 1
    result.distribution = [(_label(question, c), counts[c]) for c in _categories(question)]
    if question.kind == Question.Kind.RATING and given:
        result.mean = statistics.fmean(a.value for a in given)

    by_item: dict[int, list[Answer]] = defaultdict(list)
    for a in sorted(given, key=lambda a: (a.review.submitted_at, a.review_id)):
        by_item[a.review.item_id].append(a)
    complete = [item_answers for item_answers in by_item.values() if len(item_answers) >= max(needed, 2)]
    result.agreement_items = len(complete)
    if not complete:
        return result
    if question.kind == Question.Kind.RATING:
        result.agreement_name = "Krippendorff's α (interval)"
        result.agreement = agreement.krippendorff_alpha([[a.value for a in item] for item in complete])
    elif question.is_categorical:
        raters = {frozenset(a.review.expert_id for a in item[:2]) for item in complete}
        if needed <= 2 and len(raters) == 1:
            result.agreement_name = "Cohen's κ"
            first_two = [sorted(item[:2], key=lambda a: a.review.expert_id) for item in complete]
            result.agreement = agreement.cohen_kappa([(a.value, b.value) for a, b in first_two])
        else:
            result.agreement_name = "Fleiss' κ"
            units = [[a.value for a in item[: max(needed, 2)]] for item in complete]
            result.agreement = agreement.fleiss_kappa(agreement.category_counts(units, _categories(question)))
    return result


def _answers(queue: ReviewQueue):
    return list(
        Answer.objects.filter(review__item__queue=queue)
        .select_related("review__item__example", "review__expert", "question")
        .order_by("review__submitted_at", "review_id", "question__order", "question_id")
    )


def queue_results(queue: ReviewQueue) -> dict:
    answers = _answers(queue)
    by_question: dict[int, list[Answer]] = defaultdict(list)
    by_example: dict[int, list[Answer]] = defaultdict(list)
    for a in answers:
        by_question[a.question_id].append(a)
        by_example[a.review.item.example_id].append(a)
    questions = list(queue.form.questions.all())
    items = list(queue.items.with_counts().select_related("example").order_by("id"))
    rows = []
    for item in items:
        item_answers = by_example.get(item.example_id, [])
        cells = []
        for q in questions:
            mine = [a for a in item_answers if a.question_id == q.pk and a.value not in (None, "", [])]
            if q.kind == Question.Kind.RATING and mine:
                cells.append(f"{statistics.fmean(a.value for a in mine):.1f}")
            elif q.kind == Question.Kind.TEXT:
                cells.append(f"{len(mine)} note{'s' if len(mine) != 1 else ''}" if mine else "")
            else:
                cells.append(" / ".join(_label(q, a.value) for a in mine))
        rows.append({"item": item, "cells": cells})
    return {
        "questions": [question_results(q, by_question.get(q.pk, []), queue.scores_needed) for q in questions],
        "rows": rows,
        "done": sum(1 for item in items if item.scored >= queue.scores_needed),
        "total": len(items),
        "reviews": Review.objects.filter(item__queue=queue).count(),
    }


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    """A spreadsheet opens a cell that starts with =, +, - or @ as a formula: an apostrophe stops it."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


CSV_HEADER = [
    "queue", "example_id", "example", "expert", "question", "value", "suggested", "changed_from_suggestion",
    "time",
]  # fmt: skip


def answers_csv(queue: ReviewQueue) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for a in _answers(queue):
        writer.writerow(
            _cell(v)
            for v in [
                queue.name,
                a.review.item.example_id,
                a.review.item.example.title,
                a.review.expert.get_username(),
                a.question.key,
                _label(a.question, a.value),
                _label(a.question, a.suggested),
                "yes" if a.changed else ("no" if a.suggested is not None else ""),
                a.review.submitted_at.isoformat(),
            ]
        )
    return out.getvalue()


# Blind A/B --------------------------------------------------------------------------------------------


def _arms(first: Example, second: Example) -> tuple[str, str]:
    """What an A/B compares: the profiles, or the code models when the profiles are the same."""
    if first.profile != second.profile:
        return first.profile or "no profile", second.profile or "no profile"
    return first.model_code or "unknown model", second.model_code or "unknown model"


def ab_pairs():
    """Every pair of approved examples of one source made by different profiles or models, (low id, high id)."""
    by_source: dict[str, list[Example]] = defaultdict(list)
    for example in (
        Example.objects.approved().only("id", "source_url", "profile", "model_code").order_by("id")
    ):
        by_source[example.source_url].append(example)
    for examples in by_source.values():
        for a, b in combinations(examples, 2):
            if (a.profile, a.model_code) != (b.profile, b.model_code):
                yield a.pk, b.pk


def ab_next(*, expert, rng: random.Random | None = None) -> tuple[Example, Example] | None:
    """A pair the expert has not compared yet, in random order (left, right)."""
    done = set(Comparison.objects.filter(expert=expert).values_list("first_id", "second_id"))
    open_pairs = [pair for pair in ab_pairs() if pair not in done]
    if not open_pairs:
        return None
    rng = rng or random.SystemRandom()
    pair = list(rng.choice(open_pairs))
    rng.shuffle(pair)
    examples = Example.objects.in_bulk(pair)
    return examples[pair[0]], examples[pair[1]]


def ab_submit(*, expert, left: Example, right: Example, picked: str, reason: str) -> Comparison:
    """picked: "left", "right" or "tie", as the expert saw the pair."""
    if picked not in ("left", "right", "tie"):
        raise ReviewRefused("Pick the better example, or a tie.")
    if not reason.strip():
        raise ReviewRefused("Say why: the reason is what makes the verdict useful.")
    first, second = sorted([left, right], key=lambda e: e.pk)
    if (first.pk, second.pk) not in set(ab_pairs()):
        raise ReviewRefused("These two examples are not a pair of one source made two ways.")
    if picked == "tie":
        choice = Comparison.Choice.TIE
    else:
        winner = left if picked == "left" else right
        choice = Comparison.Choice.FIRST if winner.pk == first.pk else Comparison.Choice.SECOND
    try:
        with transaction.atomic():
            return Comparison.objects.create(
                first=first,
                second=second,
                shown_left=left,
                expert=expert,
                choice=choice,
                reason=reason.strip(),
            )
    except IntegrityError:
        raise ReviewRefused("You have already compared these two examples.") from None


def ab_results() -> list[dict]:
    """Wins, losses and ties per profile (or model), best win rate first."""
    table: dict[str, Counter] = defaultdict(Counter)
    for c in Comparison.objects.select_related("first", "second"):
        a, b = _arms(c.first, c.second)
        if c.choice == Comparison.Choice.TIE:
            table[a]["ties"] += 1
            table[b]["ties"] += 1
        else:
            winner, loser = (a, b) if c.choice == Comparison.Choice.FIRST else (b, a)
            table[winner]["wins"] += 1
            table[loser]["losses"] += 1
    rows = []
    for arm, counts in table.items():
        total = counts["wins"] + counts["losses"] + counts["ties"]
        rows.append({
            "arm": arm, "wins": counts["wins"], "losses": counts["losses"], "ties": counts["ties"],
            "total": total, "win_rate": (counts["wins"] + counts["ties"] / 2) / total if total else 0,
        })  # fmt: skip
    return sorted(rows, key=lambda row: (-row["win_rate"], row["arm"]))
