"""Distill sources in the foreground, without the web pages or a worker cluster.

    python manage.py distill SOURCE... [--profile NAME | --config FILE] [--output DIR] [--parallel N]

A SOURCE is a repository URL, a local folder (when DISTILL_ALLOW_LOCAL_SOURCES=true), or a .txt file of
them, one a line. The runs are ordinary runs: they appear on the site too. Exit code 0 only if every
run succeeded; a refused input exits 2 with one line on stderr.
"""

import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from distill import services
from distill.models import Run
from distill.profiles import ProfileError, default_profile_name, load_profile, load_profile_file


class Command(BaseCommand):
    help = "Distill repositories into working examples, in the foreground."

    def add_arguments(self, parser):
        parser.add_argument(
            "sources", nargs="+", metavar="SOURCE", help="repository URL, local folder, or .txt file of them"
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--profile", help="a named profile (distill/profiles/NAME.json)")
        group.add_argument("--config", help="a profile as a JSON file")
        parser.add_argument("--output", help="copy each run's output folder here")
        parser.add_argument("--parallel", type=int, default=1, help="how many runs at once (default 1)")

    def handle(self, *args, sources, profile, config, output, parallel, **options):
        try:
            urls = self._expand(sources)
            if config:
                chosen, name = load_profile_file(config), Path(config).stem
            else:
                name = profile or default_profile_name()
                chosen = load_profile(name)
            if parallel < 1:
                raise CommandError("--parallel must be at least 1")
            runs = [
                services.run_submit(source=url, profile_name=name, profile=chosen, enqueue=False)
                for url in urls
            ]
        except (ProfileError, services.RunRefused, OSError) as exc:
            # One clear line, never a traceback (the design's rule for refused input).
            self.stderr.write(f"error: {exc}")
            sys.exit(2)

        self.stdout.write(
            f"Distilling {len(runs)} source(s) with profile {name} ({chosen.model_code}, {chosen.model_fast})"
        )
        lock = threading.Lock()

        def report(run: Run):
            latest = run.iteration_count
            with lock:
                self.stdout.write(
                    f"[run {run.pk} {run.source_title or run.source_url}] {run.get_status_display().lower()}"
                    f" · iteration {latest}/{run.max_iterations} · ${run.cost_usd:.4f} · {run.status_message}"
                )

        def distill_one(run: Run) -> Run:
            try:
                finished = services.run_until_finished(run_id=run.pk, on_step=report)
            finally:
                connection.close()  # each pool thread opened its own
            if output:
                shutil.copytree(finished.output_dir, Path(output) / f"run-{finished.pk}", dirs_exist_ok=True)
            return finished

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            finished = list(pool.map(distill_one, runs))

        succeeded = sum(run.status == Run.Status.SUCCEEDED for run in finished)
        self.stdout.write(f"{succeeded} of {len(finished)} succeeded.")
        for run in finished:
            self.stdout.write(f"  run {run.pk}: {run.status} · {run.output_dir / 'report.html'}")
        if succeeded != len(finished):
            sys.exit(1)

    @staticmethod
    def _expand(sources: list[str]) -> list[str]:
        urls = []
        for source in sources:
            if source.endswith(".txt") and Path(source).is_file():
                lines = Path(source).read_text().splitlines()
                urls += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            else:
                urls.append(source)
        if not urls:
            raise CommandError("no sources given")
        return urls
