"""Distill three small real repositories with the `local` profile (the offline model on the CPU).

    .venv/bin/python bench/local_model.py [--iterations 3] [--runtime-mins 5] [--packages kneed==0.8.5 ...]

Each repository is made from a PyPI source distribution of a small scientific Python package (`pip
download --no-binary :all:`), unpacked and committed into a temporary git repository, then distilled by
the real engine (real local model, real bubblewrap sandbox) in this process. Prints per repository:
success, iterations, LLM calls, tokens in and out, wall time, the time spent in the model, and the model's
speed: prompt tokens/s (reading) and reply tokens/s (writing); then the environment step's figures:
whether the environment was ready without a model, with the model's changes, or not at all, its time,
and how many iterations failed on installing or on importing the repository. Needs
requirements-local.txt installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PACKAGES = ["kneed==0.8.5", "pwlf==2.2.1", "findiff==0.10.2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", nargs="+", default=PACKAGES, help="pinned PyPI packages with an sdist")
    parser.add_argument("--iterations", type=int, default=3, help="max_debug_iterations per run")
    parser.add_argument("--runtime-mins", type=float, default=5, help="max_runtime_mins of each program run")
    args = parser.parse_args()

    from bench import django_setup

    folder = django_setup.setup("bench-local-model-", env={"DISTILL_ALLOW_LOCAL_SOURCES": "true"})
    from distill import local_model, services
    from distill.models import Run
    from distill.profiles import load_profile

    local_model.require_installed()  # one clear line now, not three failed runs later
    started = time.monotonic()
    local_model.get_model()
    print(f"model loaded in {time.monotonic() - started:.1f} s ({local_model.N_THREADS} threads)", flush=True)

    generations: list[local_model.Generation] = []
    real_generate = local_model.generate

    def counted_generate(*a, **k):
        result = real_generate(*a, **k)
        generations.append(result)
        return result

    local_model.generate = counted_generate

    rows = []
    for package in args.packages:
        repo = make_repository(package, folder / "repos")
        profile = load_profile(
            "local", {"max_debug_iterations": args.iterations, "max_runtime_mins": args.runtime_mins}
        )
        run = services.run_submit(source=str(repo), profile_name="local", profile=profile, enqueue=False)
        print(f"[{package}] run {run.pk} started", flush=True)
        generations.clear()
        started = time.monotonic()

        def progress(run: Run, package=package, started=started):
            print(
                f"[{package}] {time.monotonic() - started:7.0f} s  {run.get_status_display().lower():<10}"
                f" {run.status_message}",
                flush=True,
            )

        run = services.run_until_finished(run_id=run.pk, on_step=progress)
        rows.append(summary(package, run, time.monotonic() - started, list(generations)))
        print(f"[{package}] done: {rows[-1]}", flush=True)  # kept even if a later repository is cut short

    print()
    header = (
        f"{'repository':<18} {'status':<10} {'ok':<4} {'iter':>4} {'calls':>5} {'tok in':>7} {'tok out':>7}"
        f" {'wall s':>7} {'model s':>7} {'read t/s':>8} {'write t/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['package']:<18} {row['status']:<10} {'yes' if row['success'] else 'no':<4}"
            f" {row['iterations']:>4} {row['calls']:>5} {row['tokens_in']:>7} {row['tokens_out']:>7}"
            f" {row['wall']:>7.0f} {row['model_secs']:>7.0f} {row['read_tps']:>8.1f} {row['write_tps']:>9.1f}"
        )
    print()
    header = f"{'repository':<18} {'environment':<14} {'env s':>6} {'install fails':>13} {'import fails':>12}  outcome"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['package']:<18} {row['environment']:<14} {row['env_secs']:>6.0f} {row['install_failures']:>13}"
            f" {row['import_failures']:>12}  {row['status']}"
        )
    for row in rows:
        if row["message"]:
            print(f"{row['package']}: {row['message']}")
    print(f"\nruns and their output folders: {folder}")


def make_repository(package: str, parent: Path) -> Path:
    """The package's sdist from PyPI, unpacked and committed as a local git repository."""
    downloads = parent / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, package, "-d", downloads], check=True)
    name = package.split("==")[0].lower().replace("-", "_")
    # Most sdists are .tar.gz; older ones (filterpy's) are .zip.
    (archive,) = [
        p
        for p in [*downloads.glob("*.tar.gz"), *downloads.glob("*.zip")]
        if p.name.lower().replace("-", "_").startswith(name)
    ]
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(parent)
        repo = parent / archive.name.removesuffix(".zip")
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(parent, filter="data")
        repo = parent / archive.name.removesuffix(".tar.gz")
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", f"{package} from its PyPI sdist"], check=True)
    return repo


def environment_figures(run) -> dict:
    """How the environment step went, and the iterations that failed on the environment after it."""
    from distill.pipeline import proof, repository

    state = run.environment or {}
    if state.get("done") and state.get("status") == "ready":
        how = "with a model" if any(a.get("model") for a in state.get("attempts", [])) else "without model"
    else:
        how = f"not ready ({state.get('status', 'not run')})"
    clone = repository.clone_dir(run)
    names = proof.repository_packages(clone).names if clone.is_dir() else []
    iterations = list(run.iterations.exclude(measured=None))
    return {
        "environment": how,
        "env_secs": sum(a.get("secs", 0) for a in state.get("attempts", [])),
        "install_failures": sum(1 for it in iterations if it.measured.get("install_failed")),
        "import_failures": sum(
            1 for it in iterations if any(f"No module named '{name}" in it.stderr for name in names)
        ),
    }


def summary(package: str, run, wall: float, generations) -> dict:
    prompt_secs = sum(g.prompt_seconds for g in generations)
    read = sum(g.prompt_read for g in generations)
    reply_secs = sum(g.seconds - g.prompt_seconds for g in generations)
    return {
        "package": package,
        "status": run.status,
        "success": run.status == "succeeded",
        "iterations": run.iteration_count,
        "calls": len(generations),
        "tokens_in": run.tokens_in,
        "tokens_out": run.tokens_out,
        "wall": wall,
        "model_secs": sum(g.seconds for g in generations),
        "read_tps": read / prompt_secs if prompt_secs else 0.0,
        "write_tps": sum(g.completion_tokens for g in generations) / reply_secs if reply_secs else 0.0,
        "message": run.status_message if run.status != "succeeded" else "",
        **environment_figures(run),
    }


if __name__ == "__main__":
    main()
