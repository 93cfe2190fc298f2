"""Library health checks (library/health.py): the time of one check, with the example's locked environment
cached from an earlier check and with a fresh one, and how many checks an hour the default settings allow.

    .venv/bin/python bench/library_health.py [--runs 3]

The example is the tests' (tests/test_library_health.py): a small repository with its dependency's wheels
inside it, installed offline, so the figures are the check's own cost (clone, sandbox, pip, proof) and
not the network's. A real example that installs numpy or torch spends minutes more in pip when fresh.
"""

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.django_setup import setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder = setup("bench-health-", env={"DISTILL_ALLOW_LOCAL_SOURCES": "true"})
    from django.conf import settings

    from library import health
    from tests.factories import make_git_repo
    from tests.test_library_health import MINILIB, TINYDEP, make_example, wheel

    files = dict(MINILIB)
    for version, source in TINYDEP.items():
        files[f"wheels/tinydep-{version}-py3-none-any.whl"] = wheel("tinydep", version, source)
    example = make_example(make_git_repo(folder / "minilib", files))
    envs = settings.DATA_DIR / "envs" / "health" / f"example-{example.pk}"

    def timed_check() -> tuple[float, dict]:
        started = time.monotonic()
        check = health.example_check(example_id=example.pk)
        elapsed = time.monotonic() - started
        if check.status != "passed":
            sys.exit(f"the check did not pass: {check.reason}\n{check.output[-2000:]}")
        return elapsed, {v["name"]: v for v in check.variants}

    fresh, cached = [], []
    for _ in range(args.runs):
        shutil.rmtree(envs, ignore_errors=True)  # no environment and no pip cache: as a first check
        elapsed, variants = timed_check()
        assert not variants["locked"]["env_reused"]
        fresh.append(elapsed)
        elapsed, variants = timed_check()
        assert variants["locked"]["env_reused"]
        cached.append(elapsed)
    workers = settings.Q_CLUSTER["workers"]
    per_hour = settings.LIBRARY_HEALTH_CHECKS_PER_HOUR
    capacity = workers * 3600 / statistics.median(cached)
    print(f"one check, both variants (locked, newest), median of {args.runs}:")
    print(f"  fresh environment (first check of an example): {statistics.median(fresh):.1f} s  {_all(fresh)}")
    print(
        f"  locked environment cached (every later check): {statistics.median(cached):.1f} s  {_all(cached)}"
    )
    print("  (the newest versions' environment is made fresh in both: they change)")
    print(f"checks an hour: the default settings start {per_hour} (LIBRARY_HEALTH_CHECKS_PER_HOUR);")
    print(f"  {workers} workers (Q_WORKERS) could run {capacity:.0f} an hour of this example when cached;")
    print(
        f"  at {per_hour} an hour, each of {per_hour * settings.LIBRARY_HEALTH_INTERVAL_HOURS} examples is "
        f"checked once per LIBRARY_HEALTH_INTERVAL_HOURS ({settings.LIBRARY_HEALTH_INTERVAL_HOURS} h)"
    )
    shutil.rmtree(folder, ignore_errors=True)


def _all(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in values) + ")"


if __name__ == "__main__":
    main()
