"""The environment step alone, without any model, on small real repositories.

    .venv/bin/python bench/environment.py [--packages kneed==0.8.5 ...] [--twice]

Each repository is made from a PyPI source distribution (bench/local_model.py's make_repository), fetched
by the engine and prepared in the real bubblewrap sandbox (distill/pipeline/environment.py) with
`max_environment_repairs` 0, so no model is asked. Prints per repository: the status, whether the
repository was installed or put on the path, the imports, the install and check times, the lock's size
and the requirement line that names the repository outside the sandbox. `--twice` prepares a second run
of the same commit, which must reuse the cached environment.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.local_model import PACKAGES, make_repository  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", nargs="+", default=PACKAGES, help="pinned PyPI packages with an sdist")
    parser.add_argument("--twice", action="store_true", help="prepare a second run of each commit")
    args = parser.parse_args()

    from bench import django_setup

    folder = django_setup.setup("bench-environment-", env={"DISTILL_ALLOW_LOCAL_SOURCES": "true"})
    from distill import services
    from distill.pipeline import environment, repository
    from distill.profiles import load_profile

    rows = []
    for package in args.packages:
        repo = make_repository(package, folder / "repos")
        for attempt in range(2 if args.twice else 1):
            profile = load_profile("local", {"max_environment_repairs": 0})
            run = services.run_submit(source=str(repo), profile_name="local", profile=profile, enqueue=False)
            repository.read_source(run)
            started = time.monotonic()
            done = False
            while not done:  # one attempt a call, as the run's steps do
                try:
                    done, message = environment.prepare(
                        run, repository.clone_dir(run), should_cancel=lambda: False
                    )
                except environment.EnvironmentFailed as exc:
                    done, message = True, str(exc)
                print(f"[{package}] {message}", flush=True)
            state = run.environment or {}
            # Ended, so that the next attempt on the same source is not refused as a second active run.
            run.__class__.objects.filter(pk=run.pk).update(status=run.Status.CANCELLED)
            row = {
                "package": package + (" (again)" if attempt else ""),
                "status": state.get("status", "-"),
                "how": (
                    f"installed {state['installed']['name']} {state['installed']['version']}"
                    if state.get("installed")
                    else f"on the path {state.get('root', '')}"
                ),
                "imports": ", ".join(
                    f"{i['name']}{'' if i['ok'] else ' (failed)'}" for i in state.get("imports", [])
                ),
                "install": state.get("install_secs", 0.0),
                "check": state.get("check_secs", 0.0),
                "wall": time.monotonic() - started,
                "reused": state.get("reused", False),
                "attempts": len(state.get("attempts", [])),
                "model": any(a.get("model") for a in state.get("attempts", [])),
                "lock": len(state.get("lock", [])),
                "requirement": (state.get("repository") or {}).get("requirement", ""),
                "published": (state.get("repository") or {}).get("published"),
                "reason": state.get("reason", ""),
            }
            rows.append(row)
            print(f"[{package}] {row}", flush=True)

    print()
    header = (
        f"{'repository':<26} {'status':<8} {'tries':>5} {'model':<5} {'install s':>9} {'check s':>7} {'wall s':>6}"
        f" {'reused':<6} {'lock':>4}  how"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['package']:<26} {row['status']:<8} {row['attempts']:>5} {'yes' if row['model'] else 'no':<5}"
            f" {row['install']:>9.1f} {row['check']:>7.1f}"
            f" {row['wall']:>6.1f} {'yes' if row['reused'] else 'no':<6} {row['lock']:>4}  {row['how']}"
        )
    for row in rows:
        checked = {True: "published", False: "not published", None: "unchecked"}[row["published"]]
        print(
            f"{row['package']}: imports {row['imports']}; outside: {row['requirement']} ({checked}); {row['reason']}"
        )
    print(f"\nruns and their folders: {folder}")


if __name__ == "__main__":
    main()
