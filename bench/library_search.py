"""Benchmark library search on 10,000 generated examples: indexing, full-text and hybrid search.

    .venv/bin/python bench/library_search.py [--examples 10000] [--queries 40] [--skip-embeddings]

Builds a temporary SQLite database, inserts the examples with bulk_create (the FTS5 triggers index each
row as it is inserted), computes their embeddings (when the semantic model is installed), then runs
--queries searches of one to three words, each full text only and hybrid (full text fused with semantic),
and asks the library page for some of them. Targets: full text under 50 ms median, hybrid under 150 ms,
indexing 10,000 examples under 2 minutes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = (
    "phonon band structure dispersion silicon crystal lattice diffraction rietveld refinement graph neural network "
    "formation energy molecular dynamics lennard jones velocity verlet density functional theory perovskite "
    "relaxation magnetism spin hamiltonian monte carlo ising model superconductivity electron transport "
    "thermal conductivity elastic constants defect vacancy diffusion battery cathode electrolyte catalysis "
    "adsorption surface slab polymer melt rheology microstructure phase field grain boundary fracture "
    "spectroscopy raman infrared absorption band gap exciton photovoltaic quantum dot nanoparticle"
).split()
FILLER = "computes plots fits trains predicts estimates simulates compares reports loads the a of with from for".split()
IDENTIFIERS = (
    "energy forces positions lattice kpoints bands model loss optimizer structure atoms spectrum".split()
)


SYLLABLES = "ka lo mi ne ru ta vo zi pe so da fu gi he ja ko".split()
# A vocabulary of 5,000 words whose frequencies follow Zipf's law, as words in real text do; the science words
# above are its most frequent ones, so queries of them match many examples (the hard case).
VOCABULARY = (
    TOPICS
    + sorted({"".join(random.Random(i).choices(SYLLABLES, k=3 + i % 3)) for i in range(6000)} - set(TOPICS))[
        : 5000 - len(TOPICS)
    ]
)
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCABULARY))]


def sentence(rng: random.Random, words: int) -> str:
    drawn = rng.choices(VOCABULARY, weights=WEIGHTS, k=words)
    return " ".join(word if rng.random() < 0.7 else rng.choice(FILLER) for word in drawn)


def code(rng: random.Random, lines: int) -> str:
    out = ["import numpy as np", "import json", ""]
    for i in range(lines):
        a, b = rng.choice(IDENTIFIERS), rng.choice(TOPICS)
        out.append(f"{a}_{b}_{i} = np.linspace(0, {rng.randint(1, 99)}, {rng.randint(10, 500)})  # {b}")
    out.append("json.dump({'ok': True}, open('results.json', 'w'))")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument(
        "--embed-sample",
        type=int,
        default=0,
        help="embed only this many examples for real and time them; the rest get random unit vectors (the "
        "search costs the same whatever the vectors hold). 0: embed all",
    )
    parser.add_argument("--skip-embeddings", action="store_true")
    args = parser.parse_args()

    from bench import django_setup

    django_setup.setup("bench-library-", test_client=True)
    from django.test import Client

    from library import search, semantic
    from library.models import Example, Tag

    rng = random.Random(42)
    started = time.perf_counter()
    build(args.examples, rng, Example, Tag)
    index_secs = time.perf_counter() - started
    print(f"full-text indexing: {args.examples} examples inserted and indexed in {index_secs:.1f} s")

    use_semantic = semantic.available() and not args.skip_embeddings
    if use_semantic:
        sample = args.embed_sample or args.examples
        started = time.perf_counter()
        done = search.embed_missing(Example.objects.order_by("pk"), limit=sample)
        embed_secs = time.perf_counter() - started
        each = embed_secs / max(done, 1)
        print(f"embeddings: {done} examples in {embed_secs:.1f} s ({each * 1000:.1f} ms each)")
        if done < args.examples:
            fake_embeddings(Example)
            print(f"  the other {args.examples - done} got random unit vectors (--embed-sample)")
        print(f"indexing in all (full text + embeddings): {index_secs + each * args.examples:.1f} s")
    else:
        print("embeddings: skipped (semantic model not installed or --skip-embeddings)")

    # Half the queries are of the most frequent (science) words, half of words drawn by frequency.
    queries = [
        " ".join(
            rng.choice(TOPICS) if i % 2 else rng.choices(VOCABULARY, weights=WEIGHTS)[0]
            for _ in range(rng.randint(1, 3))
        )
        for i in range(args.queries)
    ]
    listed = Example.objects.listed()
    search.ranked_ids(queries[0], within=listed, use_semantic=use_semantic)  # warm the vector cache

    def timed(fn) -> list[float]:
        times = []
        for q in queries:
            t = time.perf_counter()
            fn(q)
            times.append((time.perf_counter() - t) * 1000)
        return times

    def full_text(q):
        ids = search.ranked_ids(q, within=listed, use_semantic=False)
        search.snippets(q, ids[:20])

    def hybrid(q):
        ids = search.ranked_ids(q, within=listed, use_semantic=True)
        search.snippets(q, ids[:20])

    report("full text (ranked ids + 20 snippets)", timed(full_text))
    if use_semantic:
        report("hybrid (full text + semantic, fused, + 20 snippets)", timed(hybrid))
    client = Client()
    report(
        "library page /library/?q= (facets, counts, page of 20)",
        timed(lambda q: client.get("/library/", {"q": q})),
    )


def report(label: str, times: list[float]) -> None:
    times = sorted(times)
    p95 = times[int(len(times) * 0.95) - 1]
    print(f"{label}: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, worst {times[-1]:.1f} ms")


def fake_embeddings(Example) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    todo = list(Example.objects.filter(embedding__isnull=True).values_list("pk", flat=True))
    vectors = rng.standard_normal((len(todo), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    Example.objects.bulk_update(
        [Example(pk=pk, embedding=vector.tobytes()) for pk, vector in zip(todo, vectors, strict=True)],
        ["embedding"],
        batch_size=500,
    )


def build(count: int, rng: random.Random, Example, Tag) -> None:
    from django.db import transaction

    tags = [Tag.objects.create(name=name) for name in sorted(set(rng.sample(TOPICS, 30)))]
    through = Example.tags.through
    batch = 500
    with transaction.atomic():
        for start in range(0, count, batch):
            examples = []
            for i in range(start, min(start + batch, count)):
                examples.append(
                    Example(
                        title=sentence(rng, rng.randint(5, 9)).capitalize(),
                        summary=sentence(rng, rng.randint(20, 35)).capitalize() + ".",
                        description=sentence(rng, rng.randint(15, 30)),
                        source_url=f"https://github.com/lab{i % 800}/repo{i}",
                        source_title=f"lab{i % 800}/repo{i}",
                        iteration_number=1,
                        files={
                            "main.py": code(rng, rng.randint(20, 60)),
                            "requirements.txt": "numpy==2.1.0\n",
                            "runscript.sh": "python main.py\n",
                        },
                        example_type=rng.choice(["demonstration", "tutorial", "benchmark"]),
                        gpu_required=rng.random() < 0.15,
                        model_code=rng.choice(["claude-sonnet-4.5", "gpt-5", "local/qwen2.5-coder"]),
                        score=rng.choice([None, None, rng.uniform(1, 5)]),
                    )
                )
            created = Example.objects.bulk_create(examples)
            through.objects.bulk_create(
                through(example_id=example.pk, tag_id=tag.pk)
                for example in created
                for tag in rng.sample(tags, rng.randint(0, 3))
            )


if __name__ == "__main__":
    main()
