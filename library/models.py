"""The example library: approved iterations copied out of their runs, with their provenance.

An example is a copy, not a link: the run may be deleted or re-run, the example stays as approved.
Approving a newer run of the same source makes a new version of the same lineage (`source_url`); the
newest approved version is the one shown by default.
"""

import re
from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Exists, F, OuterRef, Q, Subquery
from django.utils import timezone

from distill.models import HOW_TO_RUN

# Expert scores run from 1 to 5 (the review forms); a band is a facet of the library.
SCORE_BANDS = {
    "4+": ("4 and above", Q(score__gte=4)),
    "3-4": ("3 to 4", Q(score__gte=3, score__lt=4)),
    "under-3": ("below 3", Q(score__lt=3)),
    "unscored": ("not scored yet", Q(score__isnull=True)),
}
# pip's rule: a `#` at the start of a line or after whitespace begins a comment (`pkg @ url#egg=x` keeps its #).
REQUIREMENT_COMMENT = re.compile(r"(^|\s)#.*$")
# Characters that may follow a distribution name in a requirement line: anything but more of the name.
NAME_END = r"([^A-Za-z0-9._-]|$)"

# How much of the repository's code the program exercised (`usage.repo_share_covered`, 0-1).
USAGE_BANDS = {
    "half": ("half or more", Q(usage__repo_share_covered__gte=0.5)),
    "tenth": ("10% to 50%", Q(usage__repo_share_covered__gte=0.1, usage__repo_share_covered__lt=0.5)),
    "little": ("under 10%", Q(usage__repo_share_covered__lt=0.1)),
}


class Tag(models.Model):
    name = models.SlugField(max_length=60, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class ExampleQuerySet(models.QuerySet):
    def approved(self):
        """In the library: approved and not retracted."""
        return self.filter(status=Example.Status.APPROVED)

    def latest_versions(self):
        return self.filter(is_latest=True)

    def listed(self):
        """What browsing, search and the API show by default: the newest approved version of each source."""
        return self.approved().latest_versions()

    def versions_of(self, source_url: str):
        return self.filter(source_url=source_url).order_by("-version")

    def matching(self, filters):
        """The examples that match `filters` (a `library.filters.LibraryFilters`), in its order.

        The filters are defined in library/filters.py, once for the page, the export, the API and the queues.
        """
        return filters.matching(self)

    def requiring(self, name: str):
        """Examples whose requirements.txt names the distribution `name`, spelled in any of the ways pip
        treats as the same (case, and runs of `-`, `_`, `.`: PEP 503): `scikit_learn` finds scikit-learn."""
        parts = [re.escape(part) for part in re.split(r"[-_.]+", name.lower()) if part]
        pattern = r"(^|\n)\s*" + "[-_.]+".join(parts) + NAME_END
        return self.filter(**{"files__requirements.txt__iregex": pattern})

    def score_band(self, band: str):
        return self.filter(SCORE_BANDS[band][1]) if band in SCORE_BANDS else self

    def usage_band(self, band: str):
        return self.filter(USAGE_BANDS[band][1]) if band in USAGE_BANDS else self

    def health_band(self, band: str):
        return self.filter(HEALTH_BANDS[band][1]) if band in HEALTH_BANDS else self

    def with_health(self):
        """Each example with `health` (the status of its latest verdict, None before any) and `checked_at`
        (when that check finished): one query for a whole page, as the API and the MCP server list them."""
        latest = ExampleCheck.objects.verdicts().filter(example=OuterRef("pk")).order_by("-pk")
        return self.annotate(
            health=Subquery(latest.values("status")[:1]),
            checked_at=Subquery(latest.values("finished_at")[:1]),
        )

    def due_for_check(self, now):
        """Approved latest versions whose check is due, the longest unchecked first (never checked: first of
        all). Due: no check running, and the last one started LIBRARY_HEALTH_INTERVAL_HOURS ago; for one
        that ended broken or could not check, LIBRARY_HEALTH_BROKEN_INTERVAL_HOURS ago (never sooner: what
        broke an example rarely mends within hours, and a check is not retried in a loop)."""
        checks = ExampleCheck.objects.filter(example=OuterRef("pk")).order_by("-pk")
        # A running check matches neither: its example is never queued twice.
        soon = (ExampleCheck.Status.BROKEN, ExampleCheck.Status.ERROR)
        settled = (ExampleCheck.Status.PASSED, ExampleCheck.Status.CHANGED, ExampleCheck.Status.DRIFTED)
        interval = timedelta(hours=settings.LIBRARY_HEALTH_INTERVAL_HOURS)
        broken_interval = timedelta(hours=settings.LIBRARY_HEALTH_BROKEN_INTERVAL_HOURS)
        return (
            self.listed()
            .annotate(
                last_check_status=Subquery(checks.values("status")[:1]),
                last_check_started=Subquery(checks.values("started_at")[:1]),
            )
            .filter(
                Q(last_check_started__isnull=True)
                | Q(last_check_status__in=soon, last_check_started__lte=now - broken_interval)
                | Q(last_check_status__in=settled, last_check_started__lte=now - interval)
            )
            .order_by(F("last_check_started").asc(nulls_first=True), "pk")
        )

    def best_scored_first(self):
        """The library page's "Best scored" order (the unscored last), which its export keeps too."""
        return self.order_by(F("score").desc(nulls_last=True), "-score_count", "-approved_at", "-pk")


class Example(models.Model):
    class Status(models.TextChoices):
        APPROVED = "approved", "Approved"
        RETRACTED = "retracted", "Retracted"

    class SourceKind(models.TextChoices):
        REPOSITORY = "repository", "Repository"
        PAPER = "paper", "Paper"

    title = models.CharField(max_length=300)
    summary = models.TextField()
    tags = models.ManyToManyField(Tag, blank=True, related_name="examples")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.APPROVED, db_index=True)

    # Provenance.
    source_kind = models.CharField(max_length=20, choices=SourceKind.choices, default=SourceKind.REPOSITORY)
    source_url = models.CharField(max_length=2000, db_index=True)
    source_title = models.CharField(max_length=500, blank=True)
    commit_sha = models.CharField(max_length=64, blank=True)
    paper_title = models.CharField(max_length=500, blank=True)
    paper_authors = models.CharField(max_length=1000, blank=True)
    paper_url = models.CharField(max_length=2000, blank=True)
    run = models.ForeignKey(
        "distill.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="examples"
    )
    iteration = models.ForeignKey(
        "distill.Iteration", null=True, blank=True, on_delete=models.SET_NULL, related_name="examples"
    )
    iteration_number = models.PositiveIntegerField()
    profile = models.CharField(max_length=100, blank=True)
    model_code = models.CharField(max_length=200, blank=True)
    model_fast = models.CharField(max_length=200, blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="approved_examples"
    )
    approved_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Set when a curator approved an iteration that did not pass: why it is worth keeping anyway.
    override_reason = models.TextField(blank=True)

    # Versions of one source.
    version = models.PositiveIntegerField(default=1)
    is_latest = models.BooleanField(default=True, db_index=True)

    # Retraction: the example leaves search and the API; its page says so.
    retracted_reason = models.TextField(blank=True)
    retracted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    retracted_at = models.DateTimeField(null=True, blank=True)

    # The example itself, copied from the iteration.
    # name -> text: main.py, requirements.txt, runscript.sh, ... The JSON fields are blank=True: the admin must
    # be able to save an example whose dict or list is empty.
    files = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    inclusion_criteria = models.TextField(blank=True)
    exclusion_criteria = models.TextField(blank=True)
    example_type = models.CharField(max_length=100, blank=True, db_index=True)
    language = models.CharField(max_length=40, default="python", db_index=True)
    gpu_required = models.BooleanField(default=False, db_index=True)
    python_version = models.CharField(max_length=20, blank=True)
    results = models.JSONField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    saved_files = models.JSONField(default=list, blank=True)  # [{"name", "size"}], copied under `files_dir`
    measured = models.JSONField(null=True, blank=True)
    judgement = models.JSONField(null=True, blank=True)
    usage = models.JSONField(null=True, blank=True)  # how much of the repository the program exercised

    # Kept in step by the reviews app (reviews.services.example_score_refresh): the mean expert score, for
    # sorting and facets.
    score = models.FloatField(null=True, blank=True, db_index=True)
    score_count = models.PositiveIntegerField(default=0)

    # all-MiniLM-L6-v2's unit vector of `semantic_text` (384 float32), for semantic search; computed when the
    # example is approved (or by `manage.py embed_examples`), cleared and computed again when its title,
    # summary or tags change (services.example_embeddings_refresh).
    embedding = models.BinaryField(null=True, blank=True, editable=False)

    objects = ExampleQuerySet.as_manager()

    class Meta:
        ordering = ["-approved_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["source_url", "version"], name="unique_version_per_source"),
        ]

    def __str__(self):
        return f"{self.title} (v{self.version})"

    @property
    def is_retracted(self) -> bool:
        return self.status == self.Status.RETRACTED

    @property
    def files_dir(self):
        return settings.DATA_DIR / "library" / str(self.pk)

    @property
    def semantic_text(self) -> str:
        """What the embedding represents: the example's meaning in words (code is left to full text)."""
        tags = ", ".join(tag.name for tag in self.tags.all())
        return f"{self.title}. {tags}. {self.summary}" if tags else f"{self.title}. {self.summary}"

    @property
    def how_to_run(self) -> list[str]:
        """The two commands that run it in a fresh virtual environment, outside our sandbox."""
        return list(HOW_TO_RUN) if "main.py" in self.files and "requirements.txt" in self.files else []

    @property
    def requirements(self) -> list[str]:
        """The lines of requirements.txt without comments, whole-line or inline (`numpy  # arrays`)."""
        lines = (
            REQUIREMENT_COMMENT.sub("", line).strip()
            for line in self.files.get("requirements.txt", "").splitlines()
        )
        return [line for line in lines if line]


class ExampleCheckQuerySet(models.QuerySet):
    def verdicts(self):
        """Finished checks that say something of the example (not running, not "could not check")."""
        return self.filter(status__in=ExampleCheck.VERDICTS)

    def latest_verdicts(self):
        """Each example's newest verdict (ids grow with time: a newer check has a larger id)."""
        newer = ExampleCheck.objects.verdicts().filter(example=OuterRef("example"), pk__gt=OuterRef("pk"))
        return self.verdicts().exclude(Exists(newer))


class ExampleCheck(models.Model):
    """One scheduled check of an approved example (library/health.py): the example run again in the sandbox,
    with its lock and with the newest versions its requirements allow, measured as a run is, its results
    compared with the approved ones. The example itself is never changed by a check."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        PASSED = "passed", "Verified"
        CHANGED = "changed", "Results changed"  # runs, but its numbers moved past the tolerance
        DRIFTED = "drifted", "Drifted"  # runs with its lock, fails with the newest allowed versions
        BROKEN = "broken", "Broken"  # fails with its lock too, or its repository or requirements are gone
        ERROR = "error", "Could not check"  # our side failed (the network, the sandbox): no verdict

    VERDICTS = (Status.PASSED, Status.CHANGED, Status.DRIFTED, Status.BROKEN)

    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="checks")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING, db_index=True)
    reason = models.CharField(max_length=500, blank=True)  # one line, for the example page
    # One entry per variant ("locked", "newest"): passed, reasons, exit code, times, results, differences.
    variants = models.JSONField(default=list, blank=True)
    output = models.TextField(blank=True)  # the failing (else the first) variant's install log and output
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The run a curator started to repair the example from this check's failure.
    repair_run = models.ForeignKey(
        "distill.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="repaired_checks"
    )

    objects = ExampleCheckQuerySet.as_manager()

    class Meta:
        ordering = ["-pk"]
        constraints = [
            # The guard against two checks of one example at once: a second running row cannot be made.
            models.UniqueConstraint(
                fields=["example"], condition=Q(status="running"), name="one_running_check_per_example"
            ),
        ]

    def __str__(self):
        return f"check {self.pk} of example {self.example_id}: {self.status}"

    @property
    def is_verdict(self) -> bool:
        return self.status in self.VERDICTS


# The library's health facet: the status of each example's newest verdict.
HEALTH_LABELS = {
    "passed": "verified",
    "changed": "results changed",
    "drifted": "drifted",
    "broken": "broken",
    "unchecked": "not checked yet",
}


class _HealthBands(Mapping):
    """{band: (label, Q)} as SCORE_BANDS, but each Q built when asked: its subqueries need the models ready."""

    def __getitem__(self, band: str):
        latest = ExampleCheck.objects.latest_verdicts()
        if band == "unchecked":
            return HEALTH_LABELS[band], ~Q(pk__in=latest.values("example_id"))
        return HEALTH_LABELS[band], Q(pk__in=latest.filter(status=band).values("example_id"))

    def __iter__(self):
        return iter(HEALTH_LABELS)

    def __len__(self):
        return len(HEALTH_LABELS)


HEALTH_BANDS = _HealthBands()


class Rejection(models.Model):
    """A curator's decision that a run's result does not belong in the library, and why."""

    run = models.ForeignKey("distill.Run", on_delete=models.CASCADE, related_name="rejections")
    reason = models.TextField()
    rejected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    rejected_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-rejected_at"]


class ApiToken(models.Model):
    """A key for the JSON API, for agents of deployments whose library is not public.

    Only the key's sha256 is kept: the key itself is shown once, when it is made
    (`manage.py api_token create USER`), and a leaked database does not leak working keys.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. the agent that uses it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters of the key, enough to tell tokens apart in the admin; not enough to use one.
    prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
