"""Benchmark survey() on a generated repository of 20,000 files.

    .venv/bin/python bench/survey.py [--files 20000] [--runs 5]

Each run is a fresh child process, so its peak resident memory (``ru_maxrss`` of the child, which includes
the interpreter and the tokenizer) is that run's alone; the wall time is that of survey() only. Runs with
the default candidate cap (2000) and with no effective cap (every .py read and tokenized).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SOURCE = '''"""Module {i}."""

import numpy as np


def step_{i}(x, dt=0.01):
    """Advance the state by one explicit Euler step."""
    return x + dt * np.sin(x) * {i}


class Model{i}:
    def __init__(self, n):
        self.state = np.zeros(n)

    def run(self, steps):
        for _ in range(steps):
            self.state = step_{i}(self.state)
        return self.state
'''


def generate(root: Path, n_files: int) -> None:
    rng = random.Random(42)
    made = 0

    def write(rel: str, data: bytes) -> None:
        nonlocal made
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        made += 1

    write("README.md", b"# Bench\n\nA generated repository.\n")
    write("setup.py", b"from setuptools import setup\nsetup(name='bench')\n")
    for i in range(n_files // 10):  # vendored: never listed
        write(f"node_modules/pkg{i % 50}/lib/f{i}.py", b"x = 1\n")
    for i in range(n_files // 20):  # binaries: skipped by name, never read
        write(f"data/run{i % 30}/blob{i}.npy", rng.randbytes(2048))
    for i in range(n_files // 20):
        write(f".git/objects/{i % 256:02x}/{i:038x}", rng.randbytes(256))
    i = 0
    while made < n_files:
        depth = rng.randint(1, 4)
        folder = "/".join(f"pkg{rng.randint(0, 9)}" for _ in range(depth))
        write(f"src/{folder}/mod{i}.py", SOURCE.format(i=i).encode())
        i += 1


def child(root: str, max_candidates: int) -> None:
    import resource
    import time

    sys.path.insert(0, str(ROOT))
    from distill.pipeline.survey import count_tokens, survey

    count_tokens("warm up the tokenizer")  # loading it is a one-off per process
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = survey(Path(root), max_candidates=max_candidates)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "secs": elapsed,
                "peak_mb": peak_kb / 1024,
                "baseline_mb": baseline_kb / 1024,
                "files": len(result.files),
                "tokens": sum(f.tokens for f in result.files),
                "total_files": result.total_files,
                "skipped": result.skipped,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        generate(root, args.files)
        print(f"generated {args.files} files under {root}")
        for cap in (2000, args.files):
            results = [
                json.loads(
                    subprocess.run(
                        [sys.executable, __file__, "--child", str(root), str(cap)],
                        check=True,
                        capture_output=True,
                        text=True,
                        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                    ).stdout
                )
                for _ in range(args.runs)
            ]
            last = results[-1]
            print(
                f"max_candidates={cap}: median {statistics.median(r['secs'] for r in results):.2f} s, "
                f"max {max(r['secs'] for r in results):.2f} s over {args.runs} runs; "
                f"peak RSS median {statistics.median(r['peak_mb'] for r in results):.0f} MB "
                f"(max {max(r['peak_mb'] for r in results):.0f} MB, "
                f"{last['baseline_mb']:.0f} MB of it before the survey: interpreter and tokenizer); "
                f"{last['files']} candidates, {last['tokens']} tokens, {last['total_files']} files seen, "
                f"skipped {last['skipped']}"
            )


if __name__ == "__main__":
    main()
