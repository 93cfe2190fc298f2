"""Runs, their iterations, their steps and every LLM call they made.

A run is a small state machine (see `Run.Status`); `distill.services` is the only code that moves it.
"""

from collections import defaultdict

from django.conf import settings
from django.db import models
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

# How an example runs outside our sandbox, in a fresh virtual environment: its requirements.txt names the
# repository itself and the lock of the environment it was proven in (distill/pipeline/environment.py).
HOW_TO_RUN = ("pip install -r requirements.txt", "python main.py")
# A repository that could not be fetched (no network, gone) ended in an error before anything was
# distilled: it says nothing of how well distilling works, so the success rate leaves it out. Its fetch
# made nothing: no commit, no title (`services.resume_status` goes on from the fetch for the same reason).
NOT_FETCHED_FIELDS = {"status": "error", "kind": "repository", "commit_sha": "", "source_title": ""}
NOT_FETCHED = Q(**NOT_FETCHED_FIELDS)


class RunQuerySet(models.QuerySet):
    def active(self):
        return self.exclude(status__in=Run.FINISHED)

    def finished(self):
        return self.filter(status__in=Run.FINISHED)

    def for_source(self, url: str):
        return self.filter(source_url=url)

    def in_progress_for(self, url: str) -> "Run | None":
        """The active run of a source, if any: a source has one active run at a time (distill.services)."""
        return self.active().for_source(url).first()

    def stale(self, *, claimed_before, unclaimed_before):
        """Active runs whose worker stopped sending heartbeats (it died), or that nobody picked up."""
        claimed = ~Q(lease="") & Q(heartbeat_at__lt=claimed_before)
        unclaimed = Q(lease="") & (Q(heartbeat_at__lt=unclaimed_before) | Q(heartbeat_at__isnull=True))
        return self.active().filter(claimed | unclaimed)

    def search(self, q: str):
        """Runs whose source URL or title contains q (the runs list's search box)."""
        q = (q or "").strip()
        if not q:
            return self
        return self.filter(Q(source_url__icontains=q) | Q(source_title__icontains=q))

    def with_status(self, status: str):
        """One status, or the groups "active" and "finished"; anything else leaves the runs as they are."""
        if status == "active":
            return self.active()
        if status == "finished":
            return self.finished()
        if status in Run.Status.values:
            return self.filter(status=status)
        return self

    def for_list(self):
        """What a row of the runs list shows, without the large text fields."""
        return self.select_related("submitted_by").defer(
            "status_message",
            "error_information",
            "repository_description",
            "lease",
            "environment",
            "api_digest",
        )

    def summary(self) -> dict:
        """Counts per group of statuses, in one query; `success_rate` is of finished runs (None if none),
        apart from the cancelled ones and those that could not be fetched (`not_fetched`)."""
        active = [s for s in Run.Status.values if s not in Run.FINISHED and s != Run.Status.QUEUED]
        ended = Q(status__in=(Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.ERROR))
        counts = self.order_by().aggregate(
            total=Count("id"),
            queued=Count("id", filter=Q(status=Run.Status.QUEUED)),
            running=Count("id", filter=Q(status__in=active)),
            succeeded=Count("id", filter=Q(status=Run.Status.SUCCEEDED)),
            failed=Count("id", filter=Q(status__in=(Run.Status.FAILED, Run.Status.ERROR)) & ~NOT_FETCHED),
            not_fetched=Count("id", filter=NOT_FETCHED),
            # How far the success chart reaches: the furthest iteration a run that counts got to.
            furthest=Max("iteration_count", filter=ended & ~NOT_FETCHED),
            cancelled=Count("id", filter=Q(status=Run.Status.CANCELLED)),
        )
        ended = counts["succeeded"] + counts["failed"]  # a cancelled run says nothing about quality
        counts["success_rate"] = counts["succeeded"] / ended if ended else None
        return counts

    def succeeded_at_iteration(self) -> dict[int, int]:
        """{iteration number: runs that succeeded there}; a run succeeds at its last iteration."""
        rows = (
            self.filter(status=Run.Status.SUCCEEDED)
            .order_by()
            .values("iteration_count")
            .annotate(runs=Count("id"))
        )
        return {row["iteration_count"]: row["runs"] for row in rows}


class Run(models.Model):
    class Kind(models.TextChoices):
        REPOSITORY = "repository", "Repository"
        PAPER = "paper", "Paper"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        FETCHING = "fetching", "Fetching"
        SURVEYING = "surveying", "Surveying"
        PREPARING = "preparing", "Preparing environment"
        GENERATING = "generating", "Generating"
        EXECUTING = "executing", "Executing"
        JUDGING = "judging", "Judging"
        FIXING = "fixing", "Fixing"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.ERROR, Status.CANCELLED)
    # A paper's run goes through the same statuses (one state machine), but three of them do a paper's
    # work (distill.pipeline.paper_steps): people are shown what happens, the code keeps the status.
    PAPER_STATUS_LABELS = {
        Status.FETCHING: "Reading",
        Status.SURVEYING: "Planning",
        Status.GENERATING: "Analysing and coding",
    }

    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.REPOSITORY)
    source_url = models.CharField(max_length=2000, db_index=True)
    profile = models.CharField(max_length=100)
    # The profile as it was when the run started, overrides applied: a later edit of the profile file
    # must not change what an old run says it used.
    config = models.JSONField(default=dict)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    status_message = models.TextField(blank=True)
    error_information = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)

    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # The claim on the run's current step: a worker sets `lease` with a conditional UPDATE and renews
    # `heartbeat_at` while it works; a sweeper re-enqueues runs whose heartbeat went stale.
    lease = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    # What fetch and survey found.
    commit_sha = models.CharField(max_length=64, blank=True)
    source_title = models.CharField(max_length=500, blank=True)
    repository_description = models.TextField(blank=True)
    # The prepared environment (distill.pipeline.environment): status (ready, partial, failed), reason,
    # imports that worked and failed, the lock (pip freeze), the install log, times, the attempts (and
    # which asked the model), and the requirement line that names the repository outside our sandbox.
    # Null until the step ran, and for papers, which have no repository to install.
    environment = models.JSONField(null=True, blank=True)
    # The API digest the survey read from the source (distill.pipeline.digest), as the prompts show it,
    # and why the file rating was skipped ("" when it was not): both shown on the run page.
    api_digest = models.TextField(blank=True)
    rating_skipped = models.TextField(blank=True)

    iteration_count = models.PositiveIntegerField(default=0)
    # Totals kept in step with LLMCall rows, so lists need no aggregate per row.
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"Run {self.pk} ({self.source_url})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def not_fetched(self) -> bool:
        """Ended in an error before its source was fetched (see NOT_FETCHED)."""
        return all(getattr(self, field) == value for field, value in NOT_FETCHED_FIELDS.items())

    @property
    def status_label(self) -> str:
        return self.label_of_status(self.status)

    def label_of_status(self, status: str) -> str:
        """What a status means for this run's kind: "Planning" for a paper, "Surveying" for a repository."""
        if self.kind == self.Kind.PAPER and status in self.PAPER_STATUS_LABELS:
            return self.PAPER_STATUS_LABELS[status]
        return self.Status(status).label

    @property
    def max_iterations(self) -> int:
        return int(self.config.get("max_debug_iterations", 8))

    @property
    def output_dir(self):
        return settings.DATA_DIR / "runs" / str(self.pk)

    @property
    def duration_secs(self) -> float | None:
        """From the first step to the end, or to now while it runs."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def uses_local_model(self) -> bool:
        """The small offline model: fine for trying the product, limited in quality."""
        models_used = (self.config.get("model_code", ""), self.config.get("model_fast", ""))
        return any(str(name).startswith("local/") for name in models_used)


class RunStepQuerySet(models.QuerySet):
    def runtimes(self, *, labelled: bool = False) -> dict[str, float]:
        """Seconds per step name; `labelled`, per name as people read it ("plan the code" in a paper's
        run). Iterates this QuerySet, so one already evaluated costs no query."""
        runtimes = defaultdict(float)
        for step in self:
            if step.duration_secs is not None:
                runtimes[step.label.lower() if labelled else step.name] += step.duration_secs
        return dict(runtimes)


class RunStep(models.Model):
    """One step of a run's timeline (fetch, survey, prepare, generate, execute, judge, fix)."""

    class Name(models.TextChoices):
        FETCH = "fetch", "Fetch"
        SURVEY = "survey", "Survey"
        PREPARE = "prepare", "Prepare environment"
        GENERATE = "generate", "Generate"
        EXECUTE = "execute", "Execute"
        JUDGE = "judge", "Judge"
        FIX = "fix", "Fix"

    # The steps of a paper's run that do a paper's work (see Run.PAPER_STATUS_LABELS).
    PAPER_LABELS = {
        Name.FETCH: "Read the paper",
        Name.SURVEY: "Plan the code",
        Name.GENERATE: "Analyse and code",
    }

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        INTERRUPTED = "interrupted", "Interrupted"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=20, choices=Name.choices)
    iteration = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.RUNNING)
    message = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RunStepQuerySet.as_manager()

    class Meta:
        ordering = ["started_at", "id"]

    @property
    def duration_secs(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def mark(self, iteration: "Iteration | None") -> tuple[str, str]:
        """(class, words) of the step's mark on the timeline: what came of it, not only whether it ended.

        An execution whose program failed, or was stopped by a cancel, did its step's work: its outcome is
        "done", yet a green mark there read as a program that worked.
        """
        if self.outcome == self.Outcome.DONE and iteration is not None:
            measured, judgement = iteration.measured or {}, iteration.judgement or {}
            if self.name == self.Name.EXECUTE and (iteration.sandbox or {}).get("cancelled"):
                return "cancelled", "cancelled"
            if self.name == self.Name.EXECUTE and measured and not measured.get("passed"):
                return "failed", "program failed"
            if self.name == self.Name.JUDGE and judgement and not judgement.get("passed"):
                return "failed", "did not pass"
        if self.outcome in (self.Outcome.DONE, self.Outcome.RUNNING):
            return self.outcome, ""
        return self.outcome, self.get_outcome_display().lower()

    @property
    def label(self) -> str:
        """The step's name as the run's timeline shows it; `run.steps.all()` gives each step its run."""
        if self.run.kind == Run.Kind.PAPER and self.name in self.PAPER_LABELS:
            return self.PAPER_LABELS[self.name]
        return self.get_name_display()


class FileRating(models.Model):
    """The fast model's rating of one candidate file of a repository, and whether it was selected."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="file_ratings")
    path = models.CharField(max_length=1000)
    tokens = models.PositiveIntegerField(default=0)
    rating = models.PositiveSmallIntegerField(null=True, blank=True)  # 0-10; null when the rating failed
    reason = models.TextField(blank=True)
    error = models.TextField(blank=True)
    selected = models.BooleanField(default=False)
    selected_tokens = models.PositiveIntegerField(default=0)  # its size in the prompt, after truncation
    # The selected text as the prompts see it (truncated), so that generating and fixing need no clone.
    excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["-selected", "-rating", "path"]
        constraints = [models.UniqueConstraint(fields=["run", "path"], name="unique_rating_per_file")]


class UsageSnippet(models.Model):
    """A snippet of how the repository's authors use their code, harvested by the survey
    (distill.pipeline.usage); the best few go verbatim into the generate prompt."""

    class Kind(models.TextChoices):
        README = "readme", "README"
        DOCS = "docs", "Docs"
        EXAMPLE = "example", "Example script"
        DOCTEST = "doctest", "Doctest"
        NOTEBOOK = "notebook", "Notebook"
        TEST = "test", "Test"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="usage_snippets")
    source = models.CharField(max_length=1000)  # the file, relative to the clone
    line = models.PositiveIntegerField(default=1)  # where it starts; a notebook's cell number
    kind = models.CharField(max_length=20, choices=Kind.choices)
    code = models.TextField()
    tokens = models.PositiveIntegerField(default=0)
    score = models.FloatField(default=0)
    names = models.JSONField(default=list)  # the repository's functions, classes and members it uses
    undefined = models.JSONField(default=list)  # names it uses and never defines
    needs = models.JSONField(default=list)  # data files it reads, URLs it fetches
    in_prompt = models.BooleanField(default=False)

    class Meta:
        ordering = ["-in_prompt", "-score", "id"]

    @property
    def where(self) -> str:
        return f"cell {self.line}" if self.kind == self.Kind.NOTEBOOK else f"line {self.line}"


class IterationQuerySet(models.QuerySet):
    def last_succeeded(self) -> "Iteration | None":
        """The final successful iteration: what a curator approves unless they choose another."""
        return self.filter(succeeded=True).order_by("-number").first()

    def offered(self) -> "Iteration | None":
        """The iteration an approval offers first: the last successful one, else the last that passed the
        measurement (it ran, wrote results and used the repository; only the judge objected)."""
        return self.last_succeeded() or self.filter(measured__passed=True).order_by("-number").first()


class Iteration(models.Model):
    """One version of the example program and what happened when it ran."""

    class State(models.TextChoices):
        WRITTEN = "written", "Written"
        RUNNING = "running", "Running"
        RAN = "ran", "Ran"
        JUDGED = "judged", "Judged"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="iterations")
    number = models.PositiveIntegerField()  # 1-based
    state = models.CharField(max_length=20, choices=State.choices, default=State.WRITTEN)
    created_at = models.DateTimeField(default=timezone.now)

    # The program: {"main.py": ..., "requirements.txt": ..., "runscript.sh": ...} plus any extra files.
    files = models.JSONField(default=dict)
    metadata = models.JSONField(default=dict)
    change_log = models.TextField(blank=True)  # what this version changed, in the model's words

    # Execution.
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    timed_out = models.BooleanField(default=False)
    duration_secs = models.FloatField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    install_log = models.TextField(blank=True)
    # What the sandbox reported beyond the exit code: install_secs, env_reused, out_of_memory, cancelled,
    # failure (its own one-line reason, e.g. "install failed").
    sandbox = models.JSONField(default=dict)
    log = models.JSONField(null=True, blank=True)  # the program's log.json
    results = models.JSONField(null=True, blank=True)  # the program's results.json
    saved_files = models.JSONField(default=list)  # [{"name": ..., "size": ...}] under to_save/

    # Verdicts: measured first, then the LLM judge's; both kept.
    measured = models.JSONField(null=True, blank=True)
    # What the sandbox recorded of the repository's code while the program ran (distill.pipeline.proof):
    # verdict, reasons, modules, functions, lines per file. Null when nothing was recorded (a paper's run,
    # or an iteration from before recording). The figures are columns too, for a library to sort and facet.
    proof = models.JSONField(null=True, blank=True)
    repo_modules_imported = models.PositiveIntegerField(null=True, blank=True)
    repo_functions_executed = models.PositiveIntegerField(null=True, blank=True)
    repo_lines_executed = models.PositiveIntegerField(null=True, blank=True)
    repo_share_covered = models.FloatField(null=True, blank=True)  # 0-1, of the packages' executable lines
    judgement = models.JSONField(null=True, blank=True)
    succeeded = models.BooleanField(null=True, blank=True)

    objects = IterationQuerySet.as_manager()

    class Meta:
        ordering = ["run", "number"]
        constraints = [models.UniqueConstraint(fields=["run", "number"], name="unique_iteration_number")]

    def __str__(self):
        return f"Run {self.run_id} iteration {self.number}"

    @property
    def code(self) -> str:
        return self.files.get("main.py", "")

    @property
    def output_dir(self):
        return self.run.output_dir / f"iteration_{self.number}"

    # The verdicts of distill.pipeline.proof, in words.
    PROOF_LABELS = {
        "proven": "uses the repository",
        "unused": "does not use the repository",
        "unproven": "unproven",
    }

    @property
    def proof_label(self) -> str:
        """The proof's verdict in words, or "" when nothing was recorded."""
        return self.PROOF_LABELS.get((self.proof or {}).get("verdict"), "")


# The pipeline's order, for the tables of cost and time per stage (the run page, report.html): a
# repository's steps and model stages, a paper's among them. By name, report.html read "code, execute, fix,
# generate, judge, survey".
STAGES = ["purpose", "fetch", "read the paper", "survey", "rate", "prepare environment", "environment",
          "plan the code", "condense", "plan", "architecture", "diagrams", "logic", "config", "generate", "analyse and code", "analysis", "code", "entry", "execute", "judge", "fix",
          "evaluate"]  # fmt: skip


def in_pipeline_order(stages) -> list[str]:
    """The stages in the order the pipeline runs them; any unknown ones after, by name."""
    return sorted(stages, key=lambda stage: (STAGES.index(stage) if stage in STAGES else len(STAGES), stage))


class LLMCallQuerySet(models.QuerySet):
    def stage_totals(self) -> dict[str, dict]:
        """{stage: {"stage", "cost", "tokens_in", "tokens_out", "calls"}}, in one query."""
        rows = self.values("stage").annotate(
            cost=Sum("cost_usd"), tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"), calls=Count("id")
        )
        return {row["stage"]: row for row in rows}


class LLMCall(models.Model):
    """Every LLM call: saved before the call is made, completed after. The audit log and the cost ledger."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        OK = "ok", "OK"
        ERROR = "error", "Error"
        REFUSED = "refused", "Refused"  # not made: it would pass the run's cost or token cap

    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="llm_calls")
    iteration = models.PositiveIntegerField(null=True, blank=True)
    stage = models.CharField(max_length=40)
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempt = models.PositiveSmallIntegerField(default=1)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt = models.JSONField(default=list)  # the messages sent
    reply = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = LLMCallQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]


class Paper(models.Model):
    """The paper a run of kind "paper" distils, and what planning made of it (PaperCoder's artefacts).

    A table of its own, so that lists of runs never load a paper's text.
    """

    class Source(models.TextChoices):
        PDF = "pdf", "PDF upload"
        MARKDOWN = "markdown", "Markdown"
        TEXT = "text", "Plain text"
        ARXIV = "arxiv", "arXiv"

    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="paper")
    source = models.CharField(max_length=20, choices=Source.choices)
    title = models.CharField(max_length=500, blank=True)
    authors = models.CharField(max_length=1000, blank=True)
    url = models.CharField(max_length=2000, blank=True)  # where people can read it (arXiv, DOI); may be ""
    filename = models.CharField(max_length=255, blank=True)
    pages = models.PositiveIntegerField(null=True, blank=True)
    text = models.TextField()  # Markdown, headings as `#` lines
    sections = models.JSONField(default=list)  # [{"title", "level", "page"?}]
    # Each planning stage's validated reply, then the analyses and the code per file, saved as each is
    # made so that a resumed step goes on where it stopped (distill.pipeline.paper_steps).
    plan = models.JSONField(default=dict)
    # PaperCoder's reference-free evaluation of the final code: samples of per-file critiques and a 1-5 score.
    evaluation = models.JSONField(null=True, blank=True)

    def __str__(self):
        return self.title or f"Paper of run {self.run_id}"

    @property
    def task_order(self) -> list[str]:
        return list(self.plan.get("task_order", []))
