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

from distill import llm
from distill.models import FileRating, Iteration, Run
from distill.pipeline import parsing, program, prompts, sources, survey
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

    by_path = {f.path: f for f in found.files}
    already = set(run.file_ratings.values_list("path", flat=True))
    todo = [f for f in _by_priority(found.files) if f.path not in already][
        : config.get("max_rated_files", 200)
    ]
    batch_size = config.get("rating_batch_size", 8)
    # Each file is shown to the rater only up to this size: ratings need the gist, not all of it.
    excerpt_tokens = max(
        200,
        min(
            config.get("max_tokens_per_file", 12000), config.get("context_tokens", 128000) // (batch_size + 3)
        ),
    )
    for start in range(0, len(todo), batch_size):
        _rate_batch(run, todo[start : start + batch_size], excerpt_tokens)

    ratings = list(run.file_ratings.all())
    chosen = survey.select_files(
        [(r.path, r.tokens, r.rating) for r in ratings],
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
    return f"Rated {run.file_ratings.count()} files; selected {selected}."


def is_surveyed(run: Run) -> bool:
    return bool(run.repository_description) and run.file_ratings.exists()


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
    prompt = prompts.render(
        "generate",
        title=run.source_title or run.source_url,
        purpose=run.repository_description,
        files=_selected_files_text(run),
        format=prompts.render("program_format", changes_section=""),
        **program.rules(run, repository_of(run)),
    )
    written = program.ask_for_program(run, stage="generate", prompt=prompt, iteration=1)
    return program.save_iteration(run, 1, written, change_log=written.change_log or "First version.")


def fix_prompt(run: Run, previous: Iteration) -> str:
    return prompts.render(
        "fix",
        title=run.source_title or run.source_url,
        purpose=run.repository_description,
        files=_selected_files_text(run, share=0.5),
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


def _selected_files_text(run: Run, share: float = 1.0) -> str:
    budget = int(run.config.get("file_budget_tokens", 60000) * share)
    parts, used = [], 0
    for rating in run.file_ratings.filter(selected=True).order_by("-rating", "path"):
        if used + rating.selected_tokens > budget and parts:
            break
        parts.append(f"--- FILE: {rating.path} ---\n{rating.excerpt}")
        used += rating.selected_tokens
    return "\n\n".join(parts) or "(no file was selected)"
