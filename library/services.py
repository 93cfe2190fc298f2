"""State changes of the library: approve an iteration into an example, reject a run, retract an example,
and keep the embeddings of edited examples true to their text."""

import shutil
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from distill.models import Iteration, Paper, Run
from library import search, semantic
from library.models import Example, Rejection, Tag

# Examples embedded again inside the request that changed them (about 10 ms each); more go to a worker.
EMBED_AT_ONCE = 32


class LibraryRefused(Exception):
    """An action that cannot be done; the message says why, for the curator who asked."""


def example_approve(
    *,
    run: Run,
    approved_by,
    title: str,
    summary: str,
    tags: list[str] | None = None,
    iteration: Iteration | None = None,
    override_reason: str = "",
) -> Example:
    iteration = iteration or run.iterations.last_succeeded()
    if iteration is None:
        raise LibraryRefused(
            f"Run {run.pk} has no successful iteration; choose one and give a reason to approve it anyway."
        )
    if iteration.run_id != run.pk:
        raise LibraryRefused("That iteration belongs to another run.")
    if iteration.exit_code is None and iteration.state != Iteration.State.JUDGED:
        raise LibraryRefused(
            f"Iteration {iteration.number} never ran; only a program that ran can be approved."
        )
    if not iteration.succeeded and not override_reason.strip():
        raise LibraryRefused(
            f"Iteration {iteration.number} did not pass; approving it needs a reason that says why it is worth keeping."
        )
    if not title.strip() or not summary.strip():
        raise LibraryRefused("An example needs a title and a summary.")
    if Example.objects.filter(iteration=iteration).exists():
        raise LibraryRefused(f"Iteration {iteration.number} of run {run.pk} is already in the library.")

    metadata = iteration.metadata or {}
    with transaction.atomic():
        # Lock the lineage, so that two approvals of one source cannot take the same version number.
        versions = list(
            Example.objects.select_for_update()
            .filter(source_url=run.source_url)
            .values_list("version", flat=True)
        )
        example = Example.objects.create(
            title=title.strip(),
            summary=summary.strip(),
            source_kind=run.kind,
            source_url=run.source_url,
            source_title=run.source_title,
            commit_sha=run.commit_sha,
            run=run,
            iteration=iteration,
            iteration_number=iteration.number,
            profile=run.profile,
            model_code=run.config.get("model_code", ""),
            model_fast=run.config.get("model_fast", ""),
            cost_usd=run.cost_usd or Decimal(0),
            approved_by=approved_by,
            approved_at=timezone.now(),
            override_reason="" if iteration.succeeded else override_reason.strip(),
            version=max(versions, default=0) + 1,
            files=dict(iteration.files),
            metadata=metadata,
            description=str(metadata.get("description", "")),
            inclusion_criteria=str(metadata.get("inclusion_criteria", "")),
            exclusion_criteria=str(metadata.get("exclusion_criteria", "")),
            example_type=str(metadata.get("example_type", ""))[:100],
            gpu_required=bool(metadata.get("gpu_required", False)),
            python_version=str(metadata.get("python_version", ""))[:20],
            results=iteration.results,
            stdout=iteration.stdout[-20000:],
            measured=iteration.measured,
            judgement=iteration.judgement,
            usage=_usage(iteration),
            **_paper_fields(run),
        )
        example.tags.set(_tags(tags or []))
        _refresh_latest(run.source_url)
        example.saved_files = _copy_saved_files(iteration, example)
        example.save(update_fields=["saved_files"])
    # Embedded by a worker once this commits: approving stays fast while the site is busy, and semantic
    # search finds the example a moment later (its page says "indexing" until then).
    transaction.on_commit(lambda: _embed_later([example.pk]))
    example.refresh_from_db()
    return example


def run_reject(*, run: Run, rejected_by, reason: str) -> Rejection:
    if not reason.strip():
        raise LibraryRefused("Say why the run is rejected: the reason is kept with it.")
    if not run.is_finished:
        raise LibraryRefused(f"Run {run.pk} is still {run.status_label.lower()}; wait for it to finish.")
    return Rejection.objects.create(run=run, reason=reason.strip(), rejected_by=rejected_by)


def example_retract(*, example: Example, retracted_by, reason: str) -> Example:
    if not reason.strip():
        raise LibraryRefused("Say why the example is retracted: its page shows the reason.")
    with transaction.atomic():
        updated = Example.objects.filter(pk=example.pk, status=Example.Status.APPROVED).update(
            status=Example.Status.RETRACTED,
            retracted_reason=reason.strip(),
            retracted_by=retracted_by,
            retracted_at=timezone.now(),
        )
        if updated != 1:
            raise LibraryRefused("This example has already been retracted.")
        _refresh_latest(example.source_url)
    example.refresh_from_db()
    return example


def example_embeddings_refresh(*, example_ids) -> None:
    """The title, summary or tags of these examples changed: their embeddings no longer say what they are.

    Cleared now, in the caller's transaction, so that semantic search never ranks an example by its old text;
    computed again once that transaction commits: here when they are few, by a worker when many (a renamed
    tag can touch thousands). Without the model, cleared only.
    """
    ids = sorted(set(example_ids))
    if not ids:
        return
    search.forget_embeddings(Example.objects.filter(pk__in=ids))
    transaction.on_commit(lambda: _embed_again(ids))


def _embed_later(ids: list[int]) -> None:
    if semantic.available():
        from django_q.tasks import async_task

        async_task(
            "library.tasks.embed_examples", ids, task_name=f"embed-{len(ids)}-examples", group="library"
        )


def _embed_again(ids: list[int]) -> None:
    if not semantic.available():
        return
    if len(ids) <= EMBED_AT_ONCE:
        search.embed_missing(Example.objects.filter(pk__in=ids))
        return
    from django_q.tasks import async_task

    async_task("library.tasks.embed_examples", ids, task_name=f"embed-{len(ids)}-examples", group="library")


def _usage(iteration: Iteration) -> dict | None:
    """How much of the repository the program exercised, as the proof recorded it (None: not recorded)."""
    if not iteration.proof:
        return None
    return {
        "verdict": iteration.proof.get("verdict"),
        "repo_modules_imported": iteration.repo_modules_imported,
        "repo_functions_executed": iteration.repo_functions_executed,
        "repo_lines_executed": iteration.repo_lines_executed,
        "repo_share_covered": iteration.repo_share_covered,
    }


def _refresh_latest(source_url: str) -> None:
    """The newest approved version of a source is its latest; a retracted one hands that over."""
    Example.objects.filter(source_url=source_url).update(is_latest=False)
    newest = Example.objects.approved().filter(source_url=source_url).order_by("-version").first()
    if newest:
        Example.objects.filter(pk=newest.pk).update(is_latest=True)


def _paper_fields(run: Run) -> dict:
    """An example from a paper carries the paper's title, authors and link."""
    if run.kind != Run.Kind.PAPER:
        return {}
    paper = Paper.objects.filter(run=run).only("title", "authors", "url").first()
    if paper is None:
        return {}
    return {"paper_title": paper.title, "paper_authors": paper.authors, "paper_url": paper.url}


def _tags(names: list[str]) -> list[Tag]:
    slugs = {slugify(name)[:60] for name in names if slugify(name)}
    return [Tag.objects.get_or_create(name=slug)[0] for slug in sorted(slugs)]


def _copy_saved_files(iteration: Iteration, example: Example) -> list[dict]:
    """Copy the listed to_save files (regular files only, never links) next to the example."""
    source = (iteration.output_dir / "to_save").resolve()
    target = example.files_dir / "to_save"
    copied = []
    for saved in iteration.saved_files or []:
        path = source / saved["name"]
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if path.is_symlink() or not resolved.is_relative_to(source) or not resolved.is_file():
            continue
        destination = target / saved["name"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolved, destination, follow_symlinks=False)
        copied.append({"name": saved["name"], "size": destination.stat().st_size})
    return copied
