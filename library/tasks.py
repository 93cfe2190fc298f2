"""Thin django-q2 tasks: they take ids and call the library's services."""

from library import health, search
from library.models import Example


def embed_examples(example_ids: list[int]) -> int:
    """Embed those of the examples that have no embedding (an edit cleared it); idempotent."""
    return search.embed_missing(Example.objects.filter(pk__in=example_ids))


def schedule_health_checks() -> list[int]:
    return health.schedule_checks()


def check_example(example_id: int) -> str | None:
    check = health.example_check(example_id=example_id)
    return check.status if check else None
