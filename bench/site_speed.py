"""Server time of the curator's and the expert's pages on a site of 1,000 runs and 1,000 examples.

    .venv/bin/python bench/site_speed.py [--runs 1000] [--examples 1000] [--requests 7] [--busy N]

Builds a temporary SQLite database (the runs of bench/run_pages.py, the examples of bench/library_search.py),
then asks each page --requests times through Django's test Client and prints the median and the worst
server time against issue 18's targets: every page under 300 ms; a library search under 150 ms, the
first search of a new phrase included (each request here searches a phrase never searched before);
approving an example under 300 ms; submitting a paper under 500 ms. Every approval approves another run,
every paper is another paper.

--busy N starts N processes that keep a core each busy for the whole measurement: a stand-in for a
local-model run in progress (the model keeps the CPU busy; this does not load the model itself).
Embeddings are left to the approve service and the search as they are; the semantic model is loaded
first, as each web process does when it starts (wsgi.py), and the first search after that is shown apart.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGE_TARGET_MS, SEARCH_TARGET_MS, APPROVE_TARGET_MS, PAPER_TARGET_MS = 300, 150, 300, 500
PAPER = """# Mean squares of a sample {n}

## Abstract

We compute the mean of the squares of a sample, a measure of its spread about zero, and show how it
relates to the variance. Method: square each value, sum, divide by the count.

## Method

Let x be a sample of n values. The mean square is the sum of x_i squared divided by n.
"""


def burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=7)
    parser.add_argument("--busy", type=int, default=0, help="processes that keep a core busy meanwhile")
    args = parser.parse_args()

    from bench import django_setup

    django_setup.setup("bench-site-speed-", test_client=True)
    from django.contrib.auth.models import Group, User
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    from bench import library_search, run_pages
    from codedistiller_site import startup
    from distill.models import Run
    from library import semantic
    from library.models import Example, Tag

    started = time.perf_counter()
    run_id = run_pages.build(args.runs, 4)
    library_search.build(args.examples, random.Random(42), Example, Tag)
    print(f"built {args.runs} runs and {args.examples} examples in {time.perf_counter() - started:.1f} s")

    curator = User.objects.create_user("bench-curator", password="x")
    curator.groups.add(Group.objects.get(name="curator"), Group.objects.get(name="expert"))
    client = Client()
    client.force_login(curator)
    example_id = Example.objects.order_by("pk").values_list("pk", flat=True).first()
    rng = random.Random(3)
    words = library_search.TOPICS

    def new_phrase(_i: int) -> str:
        return " ".join(rng.sample(words, 2)) + f" {rng.choice(library_search.VOCABULARY)}"

    approvable = list(Run.objects.filter(status="succeeded").order_by("-pk").values_list("pk", flat=True))

    def approve(i: int):
        run = approvable[i]
        return client.post(
            f"/library/approve/{run}/",
            {"iteration": 4, "title": f"Bench example {run}", "summary": "For the bench."},
        )

    def submit_paper(i: int):
        upload = SimpleUploadedFile(f"paper-{i}.md", PAPER.format(n=i).encode(), content_type="text/markdown")
        return client.post("/runs/new/", {"kind": "paper", "paper_file": upload, "profile": "local"})

    measures = [
        ("home", PAGE_TARGET_MS, lambda i: client.get("/")),
        ("runs list", PAGE_TARGET_MS, lambda i: client.get("/runs/")),
        ("runs list, live fragment", PAGE_TARGET_MS, lambda i: client.get("/runs/", headers={"HX-Request": "true"})),
        ("run page", PAGE_TARGET_MS, lambda i: client.get(f"/runs/{run_id}/")),
        ("run page, live fragment", PAGE_TARGET_MS,
         lambda i: client.get(f"/runs/{run_id}/", headers={"HX-Request": "true"})),
        ("iteration page", PAGE_TARGET_MS, lambda i: client.get(f"/runs/{run_id}/iterations/2/")),
        ("diff page", PAGE_TARGET_MS, lambda i: client.get(f"/runs/{run_id}/diff/?a=1&b=2")),
        ("submit page", PAGE_TARGET_MS, lambda i: client.get("/runs/new/")),
        ("approve page", PAGE_TARGET_MS, lambda i: client.get(f"/library/approve/{approvable[-1]}/")),
        ("library", PAGE_TARGET_MS, lambda i: client.get("/library/")),
        ("example page", PAGE_TARGET_MS, lambda i: client.get(f"/library/{example_id}/")),
        ("reviews", PAGE_TARGET_MS, lambda i: client.get("/reviews/")),
        ("library search, a new phrase each time", SEARCH_TARGET_MS,
         lambda i: client.get("/library/", {"q": new_phrase(i)})),
        ("approve an example (POST)", APPROVE_TARGET_MS, approve),
        ("submit a paper (POST, Markdown)", PAPER_TARGET_MS, submit_paper),
    ]  # fmt: skip

    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.busy)]
    for process in burners:
        process.start()
    try:
        # As a web process does when it starts (codedistiller_site/wsgi.py), waiting for the model here.
        startup.warm_up()
        warming = semantic.warm_in_background()
        if warming is not None:
            warming.join()
        first = time.perf_counter()
        client.get("/library/", {"q": "first search of this process"})
        took = (time.perf_counter() - first) * 1000
        print(f"first search of this process, after the start's warm-up: {took:.0f} ms")
        print(f"\n{'':44} {'median':>8} {'worst':>8} {'target':>8}")
        for name, target, ask in measures:
            if name.startswith("approve an") or name.startswith("submit a"):
                ask(args.requests)  # a warm-up of its own kind, on its own row
            times = []
            for i in range(args.requests):
                begin = time.perf_counter()
                response = ask(i)
                times.append((time.perf_counter() - begin) * 1000)
                assert response.status_code in (200, 302), (name, response.status_code)
            median = statistics.median(times)
            mark = "ok" if median < target else "SLOW"
            print(f"{name:44} {median:6.0f}ms {max(times):6.0f}ms {target:6}ms {mark}")
    finally:
        stop.set()
        for process in burners:
            process.join(timeout=5)
    print(f"\n{args.busy} busy process(es) meanwhile; {multiprocessing.cpu_count()} cores.")


if __name__ == "__main__":
    main()
