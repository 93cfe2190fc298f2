"""What differs in distilling a repository: reading it (clone, survey, file ratings), its first version
and its prompts. The program loop it shares with papers is `distill.pipeline.program`; the order and the
state changes live in `distill.services`. This module knows nothing of workers or HTTP.

Every step is idempotent: run again after a crash, it redoes or skips its own work and never touches an
earlier step's results.
"""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from distill import llm
from distill.models import FileRating, Iteration, Run
from distill.pipeline import parsing, program, prompts, proof, sources, survey, usage
from distill.pipeline.program import StepFailed

logger = logging.getLogger(__name__)

PRIORITY_FOLDERS = ("examples", "example", "demo", "demos", "tutorials", "notebooks", "docs", "scripts")
LOW_PRIORITY_FOLDERS = ("tests", "test", "testing", "benchmarks", "ci", ".github")


def clone_dir(run: Run) -> Path:
    return settings.DATA_DIR / "clones" / str(run.pk)


def repository_of(run: Run) -> program.Repository:
    """The code the program must be proven to use: the run's clone (None when it is gone)."""
    clone = clone_dir(run)
    return program.Repository(clone=clone if clone.is_dir() else None)


# Fetch ------------------------------------------------------------------------------------------------


def read_source(run: Run) -> str:
    """Clones the repository at its newest commit; returns what it fetched, for people."""
    dest = clone_dir(run)
    if dest.exists():  # a half-made clone of an interrupted fetch
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limits = sources.FetchLimits(
        clone_timeout_secs=getattr(settings, "DISTILL_CLONE_TIMEOUT_SECS", 300),
        max_repo_bytes=getattr(settings, "DISTILL_MAX_REPO_MB", 500) * 1024 * 1024,
        max_files=getattr(settings, "DISTILL_MAX_REPO_FILES", 100_000),
    )
    fetched = sources.fetch(
        run.source_url,
        dest,
        allowed_hosts=settings.DISTILL_ALLOWED_HOSTS,
        allow_local=settings.DISTILL_ALLOW_LOCAL_SOURCES,
        limits=limits,
    )
    run.commit_sha = fetched.commit_sha
    run.source_title = fetched.title
    run.save(update_fields=["commit_sha", "source_title"])
    return f"Fetched {run.source_title} at {run.commit_sha[:12] or 'a local folder'}."


def is_read(run: Run) -> bool:
    return bool(run.commit_sha or run.source_title)


# Survey -----------------------------------------------------------------------------------------------


def survey_source(run: Run, *, should_cancel: Callable[[], bool] | None = None) -> str:
    """Rates the files and selects the best within the budget; returns what it chose, for people.

    Not cut short by a cancel: the run stops after it, at the state machine's own check."""
    root = clone_dir(run)
    if not root.is_dir():
        raise StepFailed("the clone is missing; retry the run from the fetch step")
    found = survey.survey(root)
    if not found.files and found.readme is None:
        raise StepFailed("the repository holds no source files or README to learn from")
    config = run.config

    if not run.repository_description:
        run.repository_description = _purpose(run, found)
        run.save(update_fields=["repository_description"])

    usage.survey_usage(run, root, found)
    by_path = {f.path: f for f in found.files}
    run.rating_skipped = _rating_skip_reason(run, found.files)
    run.save(update_fields=["rating_skipped"])
    if run.rating_skipped:
        ordered = _by_usage(run, found.files)[: config.get("max_rated_files", 200)]
        for f in ordered:
            FileRating.objects.update_or_create(
                run=run, path=f.path, defaults={"tokens": f.tokens, "rating": None, "reason": "", "error": ""}
            )
        # Unrated, the files are taken in the order the usage and the digest point to them.
        rank_of = {f.path: len(ordered) - index for index, f in enumerate(ordered)}
    else:
        already = set(run.file_ratings.values_list("path", flat=True))
        todo = [f for f in _by_priority(found.files) if f.path not in already][
            : config.get("max_rated_files", 200)
        ]
        batch_size = config.get("rating_batch_size", 8)
        # Each file is shown to the rater only up to this size: ratings need the gist, not all of it.
        excerpt_tokens = max(
            200,
            min(
                config.get("max_tokens_per_file", 12000),
                config.get("context_tokens", 128000) // (batch_size + 3),
            ),
        )
        for start in range(0, len(todo), batch_size):
            _rate_batch(run, todo[start : start + batch_size], excerpt_tokens)

    ratings = list(run.file_ratings.all())
    chosen = survey.select_files(
        [(r.path, r.tokens, rank_of.get(r.path) if run.rating_skipped else r.rating) for r in ratings],
        budget_tokens=config.get("file_budget_tokens", 60000),
        max_tokens_per_file=config.get("max_tokens_per_file", 12000),
    )
    chosen_by_path = {c.path: c for c in chosen}
    for rating in ratings:
        choice = chosen_by_path.get(rating.path)
        rating.selected = choice is not None
        rating.selected_tokens = choice.selected_tokens if choice else 0
        source = by_path.get(rating.path)
        rating.excerpt = (
            survey.truncate_to_tokens(source.text, choice.selected_tokens) if choice and source else ""
        )
    FileRating.objects.bulk_update(ratings, ["selected", "selected_tokens", "excerpt"])
    if found.readme and not any(r.selected for r in ratings):
        # Nothing rated well enough: the README alone is still a basis for an example.
        FileRating.objects.update_or_create(
            run=run,
            path=found.readme.path,
            defaults={
                "tokens": found.readme.tokens,
                "selected": True,
                "selected_tokens": min(found.readme.tokens, config.get("max_tokens_per_file", 12000)),
                "excerpt": survey.truncate_to_tokens(
                    found.readme.text, config.get("max_tokens_per_file", 12000)
                ),
            },
        )
    selected = run.file_ratings.filter(selected=True).count()
    if run.rating_skipped:
        return f"{run.rating_skipped} Selected {selected} of {run.file_ratings.count()}."
    return f"Rated {run.file_ratings.count()} files; selected {selected}."


def is_surveyed(run: Run) -> bool:
    return bool(run.repository_description) and run.file_ratings.exists()


def _rating_skip_reason(run: Run, files) -> str:
    """Why the files are not rated, or "": rating is skipped where it would change nothing, for a CPU
    model whose every batch takes a minute or more."""
    config = run.config
    if config.get("rate_files") is not None:
        return "" if config["rate_files"] else "Files not rated: the profile says so (rate_files is false)."
    if usage.is_small_context(config) and run.api_digest:
        return (
            f"Files not rated: in a context of {config.get('context_tokens')} tokens the API digest and the "
            "authors' usage take the place of file excerpts."
        )
    if not str(config.get("model_fast", "")).startswith("local/"):
        return ""  # a provider's model rates in seconds, and a file it rates 0 is left out even if it fits
    budget = config.get("file_budget_tokens", 60000)
    files_tokens = sum(min(f.tokens, config.get("max_tokens_per_file", 12000)) for f in files)
    digest_tokens = survey.count_tokens(run.api_digest)
    if files and files_tokens + digest_tokens <= budget:
        return (
            f"Files not rated: all {len(files)} files ({files_tokens} tokens) and the API digest "
            f"({digest_tokens} tokens) fit the budget of {budget} tokens."
        )
    return ""


def _by_usage(run: Run, files) -> list:
    """Unrated files in the order a fix prompt wants them: those the prompt's usage snippets come from,
    then the repository's own package code, then the rest by priority (see _by_priority)."""
    sources = list(run.usage_snippets.filter(in_prompt=True).values_list("source", flat=True))
    first = {path: index for index, path in enumerate(dict.fromkeys(sources))}
    found = proof.repository_packages(clone_dir(run))
    own = tuple(f"{folder}/" for folder in found.packages.values()) + tuple(found.modules.values())

    def key(f):
        return first.get(f.path, len(first) + (0 if f.path.startswith(own) and f.kind == "code" else 1))

    return sorted(_by_priority(files), key=key)


def _purpose(run: Run, found) -> str:
    listed = found.files[:300]
    readme = found.readme.text if found.readme else "(no README)"
    readme = survey.truncate_to_tokens(readme, max(500, run.config.get("context_tokens", 128000) // 4))
    prompt = prompts.render(
        "purpose",
        title=run.source_title or run.source_url,
        readme=readme,
        listed=len(listed),
        total=len(found.files),
        file_list="\n".join(f"{f.path} ({f.tokens})" for f in listed),
    )
    reply = llm.complete(
        run=run,
        stage="purpose",
        model=run.config["model_code"],
        messages=[{"role": "user", "content": prompt}],
        max_tokens=600,
    )
    return parsing.prose(reply.text)


def _by_priority(files):
    def key(f):
        parts = f.path.lower().split("/")
        if parts[0] in LOW_PRIORITY_FOLDERS or any(p.startswith("test_") for p in parts):
            rank = 2
        elif parts[0] in PRIORITY_FOLDERS or len(parts) == 1:
            rank = 0
        else:
            rank = 1
        return (rank, len(parts), f.path)

    return sorted(files, key=key)


def _rate_batch(run: Run, batch, excerpt_tokens: int) -> None:
    paths = [f.path for f in batch]
    body = "\n\n".join(
        f"--- FILE: {f.path} ({f.tokens} tokens) ---\n{survey.truncate_to_tokens(f.text, excerpt_tokens)}"
        for f in batch
    )
    prompt = prompts.render("rate", purpose=run.repository_description, files=body)
    messages = [{"role": "user", "content": prompt}]
    ratings, error = {}, ""
    # Rating is an aid, not a gate: a malformed or failed reply is retried once, then those files are
    # left unrated. Only the run's budget stops the survey.
    for _attempt in range(2):
        try:
            reply = llm.complete(
                run=run,
                stage="rate",
                model=run.config["model_fast"],
                messages=messages,
                max_tokens=200 + 80 * len(batch),
                schema=parsing.ratings_schema(paths),
            )
            ratings = parsing.parse_ratings(reply.text, expected_paths=paths)
            break
        except parsing.ReplyError as exc:
            error = f"unreadable rating reply: {exc}"
            messages = [
                *messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": prompts.render("repair", error=exc)},
            ]
        except (llm.LLMUnavailable, llm.LLMRefused) as exc:
            error = f"rating call failed: {exc}"
    for f in batch:
        rating = ratings.get(f.path)
        FileRating.objects.update_or_create(
            run=run,
            path=f.path,
            defaults={
                "tokens": f.tokens,
                "rating": rating.rating if rating else None,
                "reason": rating.reason if rating else "",
                "error": "" if rating else (error or "the reply had no rating for this file"),
            },
        )


# The first version, and the prompts of the shared loop ----------------------------------------------


def write_first_version(run: Run, *, should_cancel: Callable[[], bool] | None = None) -> Iteration:
    """Iteration 1, written from the repository's purpose and its selected files (one model call)."""
    existing = run.iterations.filter(number=1).first()
    if existing:
        return existing
    if run.config.get("first_version"):
        return _given_first_version(run, run.config["first_version"])
    prompt = prompts.render(
        "generate",
        context=_context(run),
        format=program.program_format(run, changes=False),
        **program.rules(run, repository_of(run)),
    )
    written = program.ask_for_program(run, stage="generate", prompt=prompt, iteration=1)
    return program.save_iteration(run, 1, written, change_log=written.change_log or "First version.")


def _given_first_version(run: Run, given: dict) -> Iteration:
    """Iteration 1 given at submission, as it already ran: a library example to repair
    (library.health.example_repair), whose failed check is the first problem the fix loop takes on.
    No model call, and no execution: the check's output is that of this very code."""
    now = timezone.now()
    iteration = Iteration.objects.create(
        run=run, number=1, files=given["files"], metadata=given.get("metadata") or {},
        change_log=given.get("change_log", ""), state=Iteration.State.RAN, started_at=now, finished_at=now,
        exit_code=given.get("exit_code"), stdout=given.get("stdout", ""), stderr=given.get("stderr", ""),
        install_log=given.get("install_log", ""),
        measured={"exit_ok": False, "results_ok": False, "passed": False, "reasons": given.get("problems", [])},
    )  # fmt: skip
    Run.objects.filter(pk=run.pk).update(iteration_count=1)
    run.iteration_count = 1
    return iteration


def fix_prompt(run: Run, previous: Iteration) -> str:
    return prompts.render(
        "fix",
        context=_context(run),
        **program.failed_version(run, previous),
        **program.rules(run, repository_of(run)),
    )


def judge_prompt(run: Run, iteration: Iteration) -> str:
    return prompts.render(
        "judge",
        purpose=run.repository_description,
        code=iteration.code,
        evidence=program.evidence_text(iteration),
        **program.judge_output(iteration),
    )


def conclude(run: Run, iteration: Iteration) -> str:
    """A repository's run adds nothing to its last message when it ends."""
    return ""


def _context(run: Run) -> str:
    """What every program prompt of a run begins with, the same each time: a model that keeps the previous
    prompt's state (the local one; hosted ones with prompt caching) reads it once, not once per version."""
    return prompts.render(
        "context",
        title=run.source_title or run.source_url,
        purpose=run.repository_description,
        files=usage.prompt_block(run, _selected_files_text(run)),
    ).strip()


def _selected_files_text(run: Run) -> str:
    budget = int(run.config.get("file_budget_tokens", 60000))
    parts, used = [], 0
    for rating in run.file_ratings.filter(selected=True).order_by("-rating", "path"):
        if used + rating.selected_tokens > budget and parts:
            break
        parts.append(f"--- FILE: {rating.path} ---\n{rating.excerpt}")
        used += rating.selected_tokens
    return "\n\n".join(parts) or "(no file was selected)"
