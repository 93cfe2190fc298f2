"""Distill sources in the foreground, without the web pages or a worker cluster.

    python manage.py distill SOURCE... [--paper PAPER]... [--profile NAME | --config FILE] [--output DIR]
                                       [--parallel N]

A SOURCE is a repository URL, a local folder (when DISTILL_ALLOW_LOCAL_SOURCES=true), a paper (a .pdf,
.md or .markdown file; an arXiv link, `arxiv:<id>` or a bare arXiv identifier), or a .txt file of any of
these, one a line. A paper in plain text is given with --paper, since a .txt SOURCE is read as a list.
Papers are read, and every source checked, before anything starts; one refused input (a source that
already has a run in progress among them) starts nothing.
The runs are ordinary runs: they appear on the site too. Exit code 0 only if every run succeeded; a
refused input exits 2 with one line on stderr.
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
from distill.pipeline import papers
from distill.profiles import ProfileError, default_profile_name, load_profile, load_profile_file

PAPER_SUFFIXES = (".pdf", ".md", ".markdown")


class Command(BaseCommand):
    help = "Distill repositories and papers into working examples, in the foreground."

    def add_arguments(self, parser):
        parser.add_argument(
            "sources",
            nargs="*",
            metavar="SOURCE",
            help="repository URL, local folder, paper (.pdf, .md, arXiv id or link), or .txt file of them",
        )
        parser.add_argument(
            "--paper",
            action="append",
            default=[],
            dest="paper_sources",
            metavar="PAPER",
            help="a paper: PDF, Markdown or text file, or arXiv id or link (repeatable; needed for a .txt paper)",
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--profile", help="a named profile (distill/profiles/NAME.json)")
        group.add_argument("--config", help="a profile as a JSON file")
        parser.add_argument("--output", help="copy each run's output folder here")
        parser.add_argument("--parallel", type=int, default=1, help="how many runs at once (default 1)")

    def handle(self, *args, sources, paper_sources, profile, config, output, parallel, **options):
        try:
            given = self._expand(sources) + [("paper", source) for source in paper_sources]
            if not given:
                raise CommandError("no sources given")
            if config:
                chosen, name = load_profile_file(config), Path(config).stem
            else:
                name = profile or default_profile_name()
                chosen = load_profile(name)
            if parallel < 1:
                raise CommandError("--parallel must be at least 1")
            # Every paper is read before any run is made, so an unreadable one leaves nothing behind.
            read = [self._read_paper(value) if kind == "paper" else value for kind, value in given]
            runs = services.run_submit_many(sources=read, profile_name=name, profile=chosen, enqueue=False)
        except (CommandError, ProfileError, services.RunRefused, OSError) as exc:
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
                    f"[run {run.pk} {run.source_title or run.source_url}] {run.status_label.lower()}"
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
    def _expand(sources: list[str]) -> list[tuple[str, str]]:
        """(kind, source) pairs: a .txt file of sources is read, each line told apart like an argument."""
        lines = []
        for source in sources:
            if source.endswith(".txt") and Path(source).is_file():
                text = Path(source).read_text().splitlines()
                lines += [line.strip() for line in text if line.strip() and not line.lstrip().startswith("#")]
            else:
                lines.append(source)
        return [(_kind_of(line), line) for line in lines]

    @staticmethod
    def _read_paper(source: str) -> papers.PaperText:
        """The paper's text, read as the submit page reads it; a refusal names the paper and says why."""
        limits = papers.Limits.from_settings()
        try:
            link = None if Path(source).exists() else papers.arxiv_link(source)
            if link:
                paper = papers.from_arxiv(link, limits=limits)
            else:
                with open(source, "rb") as file:
                    data = file.read(limits.max_bytes + 1)
                paper = papers.from_file(data, filename=Path(source).name, limits=limits)
        except papers.PaperRefused as exc:
            raise CommandError(f"{source}: this paper cannot be used: {exc}") from None
        except OSError as exc:
            raise CommandError(f"{source}: {exc.strerror or exc}") from None
        if not paper.title:
            raise CommandError(f"{source}: no title was found in the paper")
        return paper


def _kind_of(source: str) -> str:
    """A paper file or an arXiv name is a "paper"; anything else a "repository", which run_submit checks."""
    if "://" not in source and source.lower().endswith(PAPER_SUFFIXES):
        return "paper"  # even when missing: the error then says the file is missing, not that it is no URL
    if not Path(source).is_dir() and papers.arxiv_link(source):
        return "paper"
    return "repository"
