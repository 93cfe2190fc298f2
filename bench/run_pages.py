"""Benchmark the runs list and a run's page on a database of 5,000 runs and 40,000 iterations.

    .venv/bin/python bench/run_pages.py [--runs 5000] [--iterations 8] [--requests 20]

Builds a temporary SQLite database with bulk_create (steps, file ratings and LLM calls too), then asks each
page --requests times through Django's test Client as a logged-in curator and prints the median and the
worst time, and the number of queries of one request. The target is a median under 100 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=8, help="iterations per run")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    from bench import django_setup

    folder = django_setup.setup("bench-run-pages-", test_client=True)
    started = time.perf_counter()
    run_id = build(args.runs, args.iterations)
    print(
        f"built {args.runs} runs, {args.runs * args.iterations} iterations in {time.perf_counter() - started:.1f} s"
    )
    print(f"database: {Path(folder) / 'db.sqlite3'}")

    from django.contrib.auth.models import Group, User
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user = User.objects.create_user("bench-curator", password="x")
    user.groups.add(Group.objects.get(name="curator"))
    client = Client()
    client.force_login(user)
    pages = {
        "runs list": "/runs/",
        "runs list, filtered and searched": "/runs/?status=succeeded&profile=gpt-5&q=repo-1",
        "runs list, page 100": "/runs/?page=100",
        "runs list, live fragment (htmx)": ("/runs/", {"HX-Request": "true"}),
        "run page (8 iterations)": f"/runs/{run_id}/",
        "run page, live fragment (htmx)": (f"/runs/{run_id}/", {"HX-Request": "true"}),
    }
    print(f"\n{'page':40} {'median':>9} {'worst':>9} {'queries':>8}")
    for name, spec in pages.items():
        url, headers = spec if isinstance(spec, tuple) else (spec, {})
        assert client.get(url, headers=headers).status_code == 200, url  # warm caches and templates
        with CaptureQueriesContext(connection) as queries:
            client.get(url, headers=headers)
        query_count = len(queries)  # read now: reset_queries() below empties the log it reads
        times = []
        for _ in range(args.requests):
            reset_queries()
            begin = time.perf_counter()
            response = client.get(url, headers=headers)
            times.append((time.perf_counter() - begin) * 1000)
            assert response.status_code == 200
        print(f"{name:40} {statistics.median(times):7.1f}ms {max(times):7.1f}ms {query_count:8}")


def build(runs: int, iterations: int) -> int:
    """Bulk-creates the rows; returns the id of a run with every iteration, steps, ratings and calls."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from distill.models import FileRating, Iteration, LLMCall, Run, RunStep
    from distill.profiles import load_profile

    rng = random.Random(7)
    users = [User.objects.create_user(f"user{i}") for i in range(5)]
    configs = {name: load_profile(name).model_dump() for name in ("local", "gpt-5", "claude-sonnet-4.5")}
    now = timezone.now()
    statuses = ["succeeded"] * 6 + ["failed", "error", "cancelled", "executing"]
    batch = []
    for i in range(runs):
        profile = rng.choice(list(configs))
        created = now - timedelta(minutes=runs - i)
        batch.append(
            Run(
                source_url=f"https://github.com/bench/repo-{i}", source_title=f"bench/repo-{i}", profile=profile,
                config=configs[profile], status=rng.choice(statuses), submitted_by=rng.choice(users),
                created_at=created, started_at=created, finished_at=created + timedelta(minutes=20),
                iteration_count=iterations, cost_usd=Decimal(rng.randint(10, 400)) / 100,
                repository_description="A repository for the benchmark. " * 10,
            )
        )  # fmt: skip
    Run.objects.bulk_create(batch, batch_size=1000)
    ids = list(Run.objects.order_by("id").values_list("id", flat=True))
    main_py = "import json\n" + "x = 1\n" * 200
    judgement = {"faithful": True, "accurate": True, "complete": True, "issues": ["minor"], "critical_issues": [],
                 "explanation": "Fine. " * 20, "passed": True}  # fmt: skip
    measured = {"exit_ok": True, "results_ok": True, "passed": True, "reasons": []}
    rows = []
    for run_id in ids:
        for n in range(1, iterations + 1):
            rows.append(
                Iteration(
                    run_id=run_id, number=n, state="judged", files={"main.py": main_py, "requirements.txt": "numpy\n"},
                    change_log=f"Change {n}.", exit_code=0, duration_secs=3.5, stdout="out\n" * 500,
                    stderr="warn\n" * 50, measured=measured, judgement=judgement, succeeded=n == iterations,
                )
            )  # fmt: skip
        if len(rows) >= 4000:
            Iteration.objects.bulk_create(rows)
            rows = []
    Iteration.objects.bulk_create(rows)

    run_id = ids[-1]
    steps = [RunStep(run_id=run_id, name=name, outcome="done", started_at=now, finished_at=now + timedelta(seconds=5))
             for name in ("fetch", "survey", "generate")]  # fmt: skip
    for n in range(1, iterations + 1):
        for name in ("execute", "judge", "fix"):
            steps.append(RunStep(run_id=run_id, name=name, iteration=n, outcome="done", started_at=now,
                                 finished_at=now + timedelta(seconds=5)))  # fmt: skip
    RunStep.objects.bulk_create(steps)
    FileRating.objects.bulk_create(
        FileRating(
            run_id=run_id,
            path=f"pkg/module_{i}.py",
            rating=i % 11,
            reason="Relevant. " * 5,
            selected=i < 8,
            excerpt="x" * 5000,
        )  # fmt: skip
        for i in range(200)
    )
    LLMCall.objects.bulk_create(
        LLMCall(
            run_id=run_id,
            iteration=n,
            stage=stage,
            model="gpt-5",
            status="ok",
            tokens_in=9000,
            tokens_out=1500,
            cost_usd=Decimal("0.05"),
            prompt=[{"role": "user", "content": "p" * (20000 if stage == "fix" else 1000)}],
            reply="r" * 2000,
        )  # fmt: skip
        for n in range(1, iterations + 1)
        for stage in ("judge", "fix")
    )
    return run_id


if __name__ == "__main__":
    main()
