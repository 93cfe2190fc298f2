"""Thin django-q2 tasks: they take ids and call services."""

from distill import services


def advance_run(run_id: int) -> bool:
    return services.run_advance(run_id=run_id)


def sweep_stale_runs() -> list[int]:
    return services.sweep_stale_runs()
