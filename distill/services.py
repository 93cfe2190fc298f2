"""State changes of runs. The only code that moves a run from one status to the next.

    queued → fetching → surveying → preparing → generating → executing → judging
           → (fixing → executing → judging)* → succeeded | failed | error | cancelled

A paper's run has no repository to prepare an environment for, and goes from surveying to generating.

`run_advance` does exactly one step: it claims the run with a conditional UPDATE (so two workers never
advance one run at once), does the step, saves its results, moves the status on and enqueues the next
step when the transaction commits. A killed worker loses at most the step in flight: the sweeper clears
claims whose heartbeat went stale and enqueues the run again, and every step is idempotent.
"""

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from hashlib import sha256
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from distill import llm
from distill.models import Iteration, Paper, Run, RunStep
from distill.pipeline import environment, paper_steps, papers, program, repository, sources
from distill.profiles import Profile
from distill.sandbox import SandboxUnavailable, get_sandbox, kill_leftovers

logger = logging.getLogger(__name__)

S = Run.Status
HEARTBEAT_SECS = 10

# What each status does, and the step it shows on the timeline.
STEP_OF_STATUS = {
    S.QUEUED: RunStep.Name.FETCH,
    S.FETCHING: RunStep.Name.FETCH,
    S.SURVEYING: RunStep.Name.SURVEY,
    S.PREPARING: RunStep.Name.PREPARE,
    S.GENERATING: RunStep.Name.GENERATE,
    S.EXECUTING: RunStep.Name.EXECUTE,
    S.JUDGING: RunStep.Name.JUDGE,
    S.FIXING: RunStep.Name.FIX,
}
STATUS_OF_STEP = {
    RunStep.Name.FETCH: S.FETCHING,
    RunStep.Name.SURVEY: S.SURVEYING,
    RunStep.Name.PREPARE: S.PREPARING,
    RunStep.Name.GENERATE: S.GENERATING,
    RunStep.Name.EXECUTE: S.EXECUTING,
    RunStep.Name.JUDGE: S.JUDGING,
    RunStep.Name.FIX: S.FIXING,
}


# What differs by kind of run: how the source is read and the first version written, and the prompts
# (the names each defines: distill.pipeline.program.Kind). The loop after it is distill.pipeline.program.
KINDS: dict[str, program.Kind] = {Run.Kind.REPOSITORY: repository, Run.Kind.PAPER: paper_steps}


class RunRefused(Exception):
    """A submission or action that cannot be done; the message says why, for the person who asked.
    `running`: the source's active run, when that is why."""

    def __init__(self, message: str, *, running: Run | None = None):
        super().__init__(message)
        self.running = running


# Submit -----------------------------------------------------------------------------------------------


def run_submit(
    *, source: str, profile_name: str, profile: Profile, submitted_by=None, enqueue: bool = True
) -> Run:
    try:
        normalised = sources.check_source(
            source.strip(),
            allowed_hosts=settings.DISTILL_ALLOWED_HOSTS,
            allow_local=settings.DISTILL_ALLOW_LOCAL_SOURCES,
        )
    except sources.SourceRefused as exc:
        raise RunRefused(str(exc)) from None
    _check_one_active_run(normalised, f"{normalised} already has a run in progress")
    _check_sandbox(profile)
    with transaction.atomic():
        run = Run.objects.create(
            source_url=normalised,
            profile=profile_name,
            config=profile.model_dump(),
            submitted_by=submitted_by,
            heartbeat_at=timezone.now(),
        )
        if enqueue:
            transaction.on_commit(lambda: _enqueue(run.pk))
    return run


def _check_one_active_run(source: str, refusal: str) -> None:
    """A source has one active run at a time: a second would spend as much again on the same answer."""
    running = Run.objects.in_progress_for(source)
    if running:
        raise RunRefused(f"{refusal}: run {running.pk}.", running=running)


def _check_sandbox(profile: Profile) -> None:
    """A profile whose sandbox cannot run here is refused at once, before a run is made."""
    if profile.sandbox != "local":
        try:
            get_sandbox(profile.sandbox, profile.model_dump().get("modal"))
        except SandboxUnavailable as exc:
            raise RunRefused(str(exc)) from None


def run_submit_paper(
    *, paper: papers.PaperText, profile_name: str, profile: Profile, submitted_by=None, enqueue: bool = True
) -> Run:
    """A run of a paper that was read at submission (distill.pipeline.papers): the run and its paper, or nothing."""
    source = (
        paper.url
        or f"paper:{slugify(paper.title)[:60] or 'untitled'}-{sha256(paper.text.encode()).hexdigest()[:10]}"
    )
    _check_one_active_run(source, "This paper already has a run in progress")
    _check_sandbox(profile)
    with transaction.atomic():
        run = Run.objects.create(
            kind=Run.Kind.PAPER,
            source_url=source,
            source_title=paper.title[:500],
            profile=profile_name,
            config=profile.model_dump(),
            submitted_by=submitted_by,
            heartbeat_at=timezone.now(),
        )
        Paper.objects.create(
            run=run, source=paper.source, title=paper.title[:500], authors=paper.authors[:1000], url=paper.url,
            filename=paper.filename[:255], pages=paper.pages, text=paper.text, sections=paper.sections,
        )  # fmt: skip
        if enqueue:
            transaction.on_commit(lambda: _enqueue(run.pk))
    return run


def run_submit_many(
    *,
    sources: list[str | papers.PaperText],
    profile_name: str,
    profile: Profile,
    submitted_by=None,
    enqueue: bool = True,
) -> list[Run]:
    """Runs of several sources (repositories given as text, papers as read), all of them or none: one
    refused source, or two of the same, starts nothing."""
    options = {
        "profile_name": profile_name,
        "profile": profile,
        "submitted_by": submitted_by,
        "enqueue": enqueue,
    }
    runs: list[Run] = []
    with transaction.atomic():
        for source in sources:
            try:
                if isinstance(source, papers.PaperText):
                    runs.append(run_submit_paper(paper=source, **options))
                else:
                    runs.append(run_submit(source=source, **options))
            except RunRefused as exc:
                if exc.running in runs:  # that run is this batch's own, and is not made either
                    raise RunRefused(f"{exc.running.source_url} is given twice.") from None
                raise
    return runs


def paper_reading(run: Run) -> dict | None:
    """How much of each of a paper's sections the planner read (its page shows this where a repository's
    shows file ratings); None when the run has no paper."""
    paper = Paper.objects.filter(run=run).first()
    return paper_steps.sections_read(run, paper) if paper else None


# Advance ----------------------------------------------------------------------------------------------


def run_advance(*, run_id: int, enqueue_next: bool = True) -> bool:
    """Do one step of the run. Returns False when there was nothing to do (finished, or claimed)."""
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = (
        Run.objects.filter(pk=run_id, lease="")
        .exclude(status__in=Run.FINISHED)
        .update(lease=token, heartbeat_at=now)
    )
    if claimed != 1:
        return False
    run = Run.objects.get(pk=run_id)
    if run.cancel_requested:
        _finish(run, token, S.CANCELLED, "Cancelled by a curator.")
        return False

    if run.status == S.QUEUED:
        Run.objects.filter(pk=run.pk).update(status=S.FETCHING, started_at=now)
        run.status = S.FETCHING
    step_name = STEP_OF_STATUS[run.status]
    latest = run.iterations.order_by("-number").first()
    step = RunStep.objects.create(
        run=run,
        name=step_name,
        iteration=latest.number
        if latest and step_name not in ("fetch", "survey", "prepare", "generate")
        else None,
    )
    with _Heartbeat(run.pk, token):
        try:
            next_status, message = _do_step(run, latest)
        except Exception as exc:  # every failure ends in a status and a message, never a crashed worker
            next_status, message = _classify_failure(run, exc)
            step.outcome, step.message = RunStep.Outcome.FAILED, message
        else:
            step.outcome = RunStep.Outcome.DONE
    step.finished_at = timezone.now()
    step.save(update_fields=["outcome", "message", "finished_at"])

    run.refresh_from_db()
    if run.cancel_requested and next_status not in Run.FINISHED:
        next_status, message = S.CANCELLED, "Cancelled by a curator."
    if next_status in Run.FINISHED:
        _finish(run, token, next_status, message)
        return True
    updated = Run.objects.filter(pk=run.pk, lease=token).update(
        status=next_status, status_message=message, lease="", heartbeat_at=timezone.now()
    )
    _write_outputs(run.pk)
    if updated and enqueue_next:
        transaction.on_commit(lambda: _enqueue(run.pk))
    return bool(updated)


def _do_step(run: Run, latest: Iteration | None) -> tuple[str, str]:
    """Does the step of the run's status; returns the next status and a message for people.

    The one state machine of both kinds of run: only reading the source and writing the first version
    are the kind's own (KINDS); executing, judging and fixing are the program loop they share.
    """
    kind = KINDS[run.kind]
    status = run.status
    should_cancel = partial(_cancel_requested, run.pk)
    try:
        if status == S.FETCHING:
            return S.SURVEYING, kind.read_source(run)
        if status == S.SURVEYING:
            message = kind.survey_source(run, should_cancel=should_cancel)
            # A repository's environment is prepared and proven before any program is written for it.
            return (S.PREPARING if environment.pending(run) else S.GENERATING), message
        if status == S.PREPARING:
            # One attempt a step: a second (a rule's, or the model's) is the next step, on the timeline.
            done, message = environment.prepare(run, repository.clone_dir(run), should_cancel=should_cancel)
            return (S.GENERATING if done else S.PREPARING), message
        if status == S.GENERATING:
            first = kind.write_first_version(run, should_cancel=should_cancel)
            return S.EXECUTING, f"Wrote iteration 1: {len(first.files)} files."
    except program.Cancelled:
        # What was made so far is saved: a retry goes on from there.
        return S.CANCELLED, "Cancelled by a curator between two calls of the code model."
    if status == S.EXECUTING:
        if latest.state in (Iteration.State.WRITTEN, Iteration.State.RUNNING):
            program.execute(run, latest, repository=kind.repository_of(run), should_cancel=should_cancel)
            latest.refresh_from_db()
        if (latest.sandbox or {}).get("cancelled"):
            return S.CANCELLED, "Cancelled by a curator while the program ran."
        return S.JUDGING, f"Iteration {latest.number} exited with code {latest.exit_code}."
    if status == S.JUDGING:
        if program.judge(run, latest, prompt=kind.judge_prompt):
            next_status, message = S.SUCCEEDED, f"Iteration {latest.number} ran and passed the judge."
        elif latest.number >= run.max_iterations:
            next_status, message = S.FAILED, f"No iteration passed within the limit of {run.max_iterations}."
        else:
            return S.FIXING, f"Iteration {latest.number} did not pass; fixing it."
        return next_status, message + _conclusion(kind, run, latest)
    if status == S.FIXING:
        iteration = program.fix(run, latest, prompt=kind.fix_prompt)
        return S.EXECUTING, f"Wrote iteration {iteration.number}."
    raise AssertionError(f"no step for status {status}")


def _conclusion(kind: program.Kind, run: Run, final: Iteration) -> str:
    """What the kind adds to the last message (a paper's quality score). It informs; it must never change
    how the run ends."""
    try:
        return kind.conclude(run, final)
    except Exception:
        logger.exception("run %s: the conclusion failed", run.pk)
        return ""


def _classify_failure(run: Run, exc: Exception) -> tuple[str, str]:
    if isinstance(exc, sources.SourceUnreachable):
        return S.ERROR, _unreachable_message(run.source_url)
    if isinstance(exc, sources.SourceRefused):
        return S.ERROR, f"The source was refused: {exc}"
    if isinstance(exc, program.JudgeUnheeded):
        return S.FAILED, str(exc)
    if isinstance(exc, program.StepFailed):
        return S.ERROR, str(exc)[:1].upper() + str(exc)[1:]
    if isinstance(exc, environment.EnvironmentFailed):
        return S.FAILED, str(exc)[:1].upper() + str(exc)[1:]
    if isinstance(exc, llm.BudgetExceeded):
        return S.FAILED, f"Stopped before a call that would pass the run's cap: {exc}"
    if isinstance(exc, llm.LLMUnavailable):
        return S.ERROR, f"The model provider kept failing: {exc}. Retry the run later."
    if isinstance(exc, llm.LLMRefused):
        return S.ERROR, f"The model call was refused: {exc}"
    if isinstance(exc, SandboxUnavailable):
        return S.ERROR, f"The sandbox is not available: {exc}"
    logger.exception("run %s: unexpected error in status %s", run.pk, run.status)
    return S.ERROR, f"Internal error ({type(exc).__name__}: {exc}). The step can be retried."


def _unreachable_message(source: str) -> str:
    """What happened and what to do, when the network (not the source) stopped a fetch."""
    host = urlsplit(source).hostname or source
    then = "retry"
    if settings.DISTILL_ALLOW_LOCAL_SOURCES:
        then += ", or submit a local copy of the repository (a folder on this machine)"
    return f"Could not reach {host}: the repository could not be cloned. Check the network, then {then}."


def _finish(run: Run, token: str, status: str, message: str) -> None:
    Run.objects.filter(pk=run.pk, lease=token).update(
        status=status, status_message=message, lease="", heartbeat_at=timezone.now(), finished_at=timezone.now(),
        error_information=message if status == S.ERROR else "",
    )  # fmt: skip
    environment.release(run)
    _write_outputs(run.pk)


def _cancel_requested(run_id: int) -> bool:
    return Run.objects.filter(pk=run_id, cancel_requested=True).exists()


def _write_outputs(run_id: int) -> None:
    from distill.pipeline import report

    try:
        report.write_outputs(Run.objects.get(pk=run_id))
    except Exception:  # the output folder is a copy for people; never let it break the run itself
        logger.exception("run %s: could not write the output folder", run_id)


class _Heartbeat:
    """Renews the claim's heartbeat from a thread while a long step (an LLM call, a program) runs."""

    def __init__(self, run_id: int, token: str):
        self.run_id, self.token = run_id, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-run-{run_id}")

    def __enter__(self):
        if connection.vendor != "sqlite" or not connection.in_atomic_block:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self):
        try:
            while not self._stop.wait(HEARTBEAT_SECS):
                Run.objects.filter(pk=self.run_id, lease=self.token).update(heartbeat_at=timezone.now())
        finally:
            connection.close()


def _enqueue(run_id: int) -> None:
    from django_q.tasks import async_task

    async_task("distill.tasks.advance_run", run_id, task_name=f"advance-run-{run_id}", group="runs")


# Cancel, retry, sweep ---------------------------------------------------------------------------------


def run_cancel(*, run: Run) -> Run:
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            raise RunRefused(f"Run {run.pk} has already finished ({run.status_label.lower()}).")
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
        # Nobody is working on it: cancel at once. Otherwise the worker stops at its next check.
        if not run.lease:
            Run.objects.filter(pk=run.pk, lease="").update(
                status=S.CANCELLED, status_message="Cancelled by a curator.", finished_at=timezone.now()
            )
    run.refresh_from_db()
    return run


def sweep_stale_runs(*, stale_after: timedelta | None = None) -> list[int]:
    """Re-enqueue active runs whose worker stopped beating (killed), or whose task was lost.

    A claimed run is stale once its heartbeat is older than `stale_after`. An unclaimed one may simply
    be waiting behind a backlog, and the ORM broker hands out an unacknowledged task again by itself, so
    it is re-enqueued only after DISTILL_LOST_TASK_SECS: re-enqueuing it sooner would start a second
    chain of tasks for the run (harmless, the claim holds, but wasteful).
    """
    if stale_after is None:
        stale_after = timedelta(seconds=settings.DISTILL_STALE_SECS)
    now = timezone.now()
    candidates = Run.objects.stale(
        claimed_before=now - stale_after,
        unclaimed_before=now - max(stale_after, timedelta(seconds=settings.DISTILL_LOST_TASK_SECS)),
    )
    revived = []
    for run in candidates.only("pk", "lease", "heartbeat_at"):
        # Clear the claim only if it is still the stale one we saw.
        cleared = Run.objects.filter(pk=run.pk, lease=run.lease, heartbeat_at=run.heartbeat_at).update(
            lease="", heartbeat_at=now
        )
        if not cleared:
            continue
        if run.lease:
            RunStep.objects.filter(run_id=run.pk, outcome=RunStep.Outcome.RUNNING).update(
                outcome=RunStep.Outcome.INTERRUPTED, finished_at=now, message="The worker stopped; resumed."
            )
            # What its sandbox left on this machine goes before the run goes on (the next execution of
            # the run, wherever it runs, kills what is left on its own machine too).
            kill_leftovers(program.env_dir(run))
        revived.append(run.pk)
        transaction.on_commit(lambda pk=run.pk: _enqueue(pk))
    return revived


def run_until_finished(*, run_id: int, on_step: Callable[[Run], None] | None = None) -> Run:
    """Advance a run in this process until it ends (the `distill` command, and tests)."""
    while True:
        run = Run.objects.get(pk=run_id)
        if run.is_finished:
            return run
        if not run_advance(run_id=run_id, enqueue_next=False):
            run.refresh_from_db()
            if not run.is_finished:
                raise RunRefused(f"Run {run_id} is being advanced by another worker.")
        if on_step:
            on_step(Run.objects.get(pk=run_id))


def resume_status(run: Run) -> str | None:
    """Where a stopped run would go on from, derived from what it has already made."""
    kind = KINDS[run.kind]
    if not kind.is_read(run):
        return S.FETCHING
    if not kind.is_surveyed(run):
        return S.SURVEYING
    latest = run.iterations.order_by("-number").first()
    if latest is None:
        # A repository's first program is written for its prepared environment (a run from before the
        # step has iterations, and goes on where it was).
        return S.PREPARING if environment.pending(run) else S.GENERATING
    if latest.state in (Iteration.State.WRITTEN, Iteration.State.RUNNING) or (latest.sandbox or {}).get(
        "cancelled"
    ):
        return S.EXECUTING
    if latest.state == Iteration.State.RAN:
        return S.JUDGING
    if latest.succeeded or latest.number >= run.max_iterations:
        return None
    return S.FIXING


def run_retry(*, run: Run) -> Run:
    """Go on from the step that failed (or was cancelled), keeping everything made before it."""
    # Asked before the transaction, which must not wait on the network: retrying a fetch while the host
    # is still out of reach would only add a second failed fetch to the timeline.
    stopped = run.status in (S.FAILED, S.ERROR, S.CANCELLED)
    if stopped and resume_status(run) == S.FETCHING and not sources.host_reachable(run.source_url):
        raise RunRefused(f"Not retried. {_unreachable_message(run.source_url)}")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.status not in (S.FAILED, S.ERROR, S.CANCELLED):
            raise RunRefused(
                f"Run {run.pk} is {run.status_label.lower()}; only a stopped run can be retried."
            )
        status = resume_status(run)
        if status is None:
            raise RunRefused(
                f"Run {run.pk} has used all {run.max_iterations} iterations; run it again, with more iterations."
            )
        if status == S.PREPARING and (run.environment or {}).get("done"):
            # It failed after every attempt: a retry starts over (a commit's built environments are kept).
            Run.objects.filter(pk=run.pk).update(environment=None)
        if status == S.EXECUTING:
            # A cancelled or interrupted program is run again from the start.
            run.iterations.filter(number=run.iteration_count).update(
                state=Iteration.State.WRITTEN, sandbox={}
            )
        Run.objects.filter(pk=run.pk).update(
            status=status, status_message="Retrying.", error_information="", cancel_requested=False,
            finished_at=None, lease="", heartbeat_at=timezone.now(),
        )  # fmt: skip
        transaction.on_commit(lambda: _enqueue(run.pk))
    run.refresh_from_db()
    return run


def run_rerun(*, run: Run, profile_name: str, profile: Profile, submitted_by=None) -> Run:
    """A new run of the same source, e.g. with another profile; the old run stays as it is."""
    if run.kind == Run.Kind.PAPER:
        paper = paper_steps.paper_text_of(run)
        return run_submit_paper(
            paper=paper, profile_name=profile_name, profile=profile, submitted_by=submitted_by
        )
    return run_submit(
        source=run.source_url, profile_name=profile_name, profile=profile, submitted_by=submitted_by
    )
