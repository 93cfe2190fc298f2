"""Library health: approved examples are run again on a schedule, so the library knows which still work.

Every hour (`schedule_checks`, a django-q2 schedule made by migration 0009) the approved latest versions
whose check is due (`ExampleQuerySet.due_for_check`: oldest check first) are queued, at most
LIBRARY_HEALTH_CHECKS_PER_HOUR an hour. A check (`example_check`):

- claims the example by making its running `ExampleCheck` row; a unique constraint on running checks makes
  a second claim fail in the database, so one example is never checked twice at once;
- fetches the repository again at the example's commit (gone, or the commit gone: broken);
- runs the example in the sandbox as a run's iteration runs (`distill.pipeline.program`'s measurement and
  the proof that the repository's code executed), with its lock, and, when it has one, once more with
  the newest versions its requirements allow;
- compares the results with the approved ones (LIBRARY_HEALTH_TOLERANCE_PPM).

    broken    it fails with its lock (or its repository, or its requirements, are gone)
    drifted   it passes with its lock and fails with the newest allowed versions
    changed   it passes, but numbers of its results moved past the tolerance
    passed    it passes both ways, with the approved results

A check writes only its own row: the approved example is never changed. The sandbox's limits stop a check
that hangs; a failure on our side (the network, the sandbox) is recorded as "could not check", and the
example waits LIBRARY_HEALTH_BROKEN_INTERVAL_HOURS like a broken one: nothing is retried in a loop.
"""

import logging
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from distill.models import Iteration
from distill.pipeline import dependencies, environment, program, proof, sources
from distill.profiles import default_profile_name, load_profile
from distill.sandbox import ExecutionRequest, Limits, get_sandbox
from distill.sandbox.base import checked_files, env_hash
from library.models import Example, ExampleCheck

logger = logging.getLogger(__name__)

S = ExampleCheck.Status
OUTPUT_CHARS = 20_000  # of each stream kept on the check: the end, where errors are
MAX_NUMBERS = 1000  # numbers of results.json compared
ABSOLUTE_TOLERANCE = 1e-9


# The schedule -----------------------------------------------------------------------------------------


def schedule_checks(*, now: datetime | None = None) -> list[int]:
    """Queue the checks due now, within the hour's budget; returns the examples' ids. Run every hour."""
    now = now or timezone.now()
    sweep_stale_checks(now=now)
    started = ExampleCheck.objects.filter(started_at__gt=now - timedelta(hours=1)).count()
    budget = max(0, settings.LIBRARY_HEALTH_CHECKS_PER_HOUR - started)
    ids = list(Example.objects.due_for_check(now).values_list("pk", flat=True)[:budget])
    for example_id in ids:
        transaction.on_commit(lambda pk=example_id: _enqueue(pk))
    return ids


def sweep_stale_checks(*, now: datetime | None = None) -> int:
    """Running checks older than their task may live: their worker was killed. They end as "could not check"."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.LIBRARY_HEALTH_CHECK_TIMEOUT_SECS + 60)
    return ExampleCheck.objects.filter(status=S.RUNNING, started_at__lt=stale_before).update(
        status=S.ERROR, reason="the check was interrupted (its worker stopped)", finished_at=now
    )


def _enqueue(example_id: int) -> None:
    from django_q.tasks import async_task

    # Longer than a run's step may take: a check is two installs and two runs. The broker may hand the task
    # out again before it ends (Q_CLUSTER's retry); the running check's claim turns that one away.
    async_task(
        "library.tasks.check_example", example_id, task_name=f"check-example-{example_id}", group="health",
        timeout=settings.LIBRARY_HEALTH_CHECK_TIMEOUT_SECS,
    )  # fmt: skip


# One check --------------------------------------------------------------------------------------------


def example_check(*, example_id: int) -> ExampleCheck | None:
    """Check one example now; None when it is already being checked (or gone from the library)."""
    example = Example.objects.listed().filter(pk=example_id).first()
    if example is None:
        return None
    try:
        with transaction.atomic():
            check = ExampleCheck.objects.create(example=example, status=S.RUNNING)
    except IntegrityError:
        return None  # the database's guard: another check of this example is running
    workdir = settings.DATA_DIR / "health" / str(check.pk)
    try:
        status, reason, variants = _check(example, workdir)
    except Exception as exc:  # our side failed: no verdict on the example, and the worker goes on
        logger.exception("check %s of example %s failed", check.pk, example.pk)
        status, reason, variants = S.ERROR, f"the check failed on our side: {type(exc).__name__}: {exc}", []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    failing = next((v for v in variants if not v["passed"]), variants[0] if variants else None)
    check.status = status
    check.reason = one_line(reason)
    check.variants = [{k: v for k, v in variant.items() if k != "output"} for variant in variants]
    check.output = failing["output"] if failing else reason
    check.finished_at = timezone.now()
    check.save(update_fields=["status", "reason", "variants", "output", "finished_at"])
    return check


def _check(example: Example, workdir) -> tuple[str, str, list[dict]]:
    """(status, reason, variants) of one check of the example."""
    config = check_config(example)
    clone = None
    if example.source_kind == Example.SourceKind.REPOSITORY:
        try:
            clone = fetch_commit(example, workdir / "clone")
        except sources.SourceUnreachable as exc:
            return S.ERROR, f"the repository could not be reached: {exc}", []
        except sources.SourceRefused as exc:
            return S.BROKEN, f"the repository is gone: {exc}", []
    repository = program.Repository(clone=clone) if clone is not None else None
    env_dir = settings.DATA_DIR / "envs" / "health" / f"example-{example.pk}"
    locked = run_variant("locked", example, example.files, repository, config, env_dir, workdir)
    variants = [locked]
    newest_files = newest(example.files, repository.declared if repository else [])
    if newest_files is not None and locked["passed"]:
        variants.append(
            run_variant("newest", example, newest_files, repository, config, env_dir, workdir, fresh=True)
        )
    return verdict(variants), _reason(variants), variants


def verdict(variants: list[dict]) -> str:
    locked = variants[0]
    if not locked["passed"]:
        return S.BROKEN
    if any(not v["passed"] for v in variants):
        return S.DRIFTED
    if any(v["changes"] for v in variants):
        return S.CHANGED
    return S.PASSED


def _reason(variants: list[dict]) -> str:
    locked = variants[0]
    with_lock = "with its lock" if len(variants) > 1 or locked["pinned"] else "as approved"
    if not locked["passed"]:
        if locked["install_failed"]:
            return f"its requirements no longer install: {_first(locked['reasons'])}"
        return f"it fails {with_lock}: {_first(locked['reasons'])}"
    for variant in variants[1:]:
        if not variant["passed"]:
            if variant["install_failed"]:
                return (
                    f"the newest versions its requirements allow do not install: {_first(variant['reasons'])}"
                )
            return f"it fails with the newest versions its requirements allow: {_first(variant['reasons'])}"
    for variant in variants:
        if variant["changes"]:
            more = f" (and {len(variant['changes']) - 1} more)" if len(variant["changes"]) > 1 else ""
            how = with_lock if variant["name"] == "locked" else "with the newest allowed versions"
            return f"results changed {how}: {variant['changes'][0]}{more}"
    how = " and with the newest versions its requirements allow" if len(variants) > 1 else ""
    return f"ran {with_lock}{how}, with the approved results"


def _first(reasons: list[str]) -> str:
    return reasons[0] if reasons else "no reason recorded"


def one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def check_config(example: Example) -> dict:
    """The limits the example ran under: its run's profile, else its profile's, else the default's."""
    if example.run_id and example.run and example.run.config:
        return example.run.config
    names = [example.profile, default_profile_name()]
    for name in names:
        try:
            return load_profile(name).model_dump()
        except Exception:
            continue
    return load_profile("local").model_dump()


def fetch_commit(example: Example, dest):
    """A fresh clone of the example's repository at its commit (sources.SourceRefused when gone)."""
    limits = sources.FetchLimits(
        clone_timeout_secs=settings.DISTILL_CLONE_TIMEOUT_SECS,
        max_repo_bytes=settings.DISTILL_MAX_REPO_MB * 1024 * 1024,
        max_files=settings.DISTILL_MAX_REPO_FILES,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    sources.fetch(
        example.source_url,
        dest,
        allowed_hosts=settings.DISTILL_ALLOWED_HOSTS,
        allow_local=settings.DISTILL_ALLOW_LOCAL_SOURCES,
        limits=limits,
    )
    if example.commit_sha:
        local = not example.source_url.startswith("https://")
        sources.checkout_commit(dest, example.commit_sha, local=local, limits=limits)
    return dest


# Running a variant: the measurement and the proof of a run's iteration ----------------------------------


def run_variant(
    name: str,
    example: Example,
    files: dict,
    repository,
    config: dict,
    env_dir,
    workdir,
    *,
    fresh: bool = False,
) -> dict:
    """One execution of the example's files in the sandbox, measured and proven as an iteration is.

    `fresh`: its environment is made again each time (the newest versions change; the lock's do not, and
    its environment is kept for the next check)."""
    job = workdir / name
    job.mkdir(parents=True)
    packages = repository.packages if repository is not None else proof.Packages()
    clone = repository.clone if repository is not None else None
    recording = proof.recording_config(packages) if repository is not None else None
    # Both variants and the clone fit in the check's task time (LIBRARY_HEALTH_CHECK_TIMEOUT_SECS).
    budget = (settings.LIBRARY_HEALTH_CHECK_TIMEOUT_SECS - settings.DISTILL_CLONE_TIMEOUT_SECS - 120) / 2
    install_secs = min(float(config.get("environment_install_mins", 15)) * 60, budget / 2)
    request = ExecutionRequest(
        files=files,
        job_dir=job,
        env_dir=env_dir,
        repo_dir=clone,
        recording=recording,
        limits=Limits(
            wall_secs=min(float(config.get("max_runtime_mins", 45)) * 60, budget - install_secs),
            install_secs=install_secs,
            network_run=bool(config.get("network_run", False)),
            **{limit: config[limit] for limit in program.SANDBOX_LIMITS if limit in config},
        ),
    )
    try:
        result = get_sandbox(config.get("sandbox", "local"), config.get("modal")).execute(request)
    finally:
        if fresh:
            _forget_environment(request)
    program._remove_links(job)
    # The run's own measurement (exit 0 within the limit, a valid results.json), then its proof that the
    # repository's code executed, on an iteration that is never saved.
    results, measured = program._measure(result, job)
    probe = Iteration(measured=measured)
    recorded = recording is not None and not result.cancelled
    program._prove(
        probe, proof.verify(result.record, recording["key"], packages, clone) if recorded else None
    )
    measured = probe.measured
    changes = result_changes(example.results, results) if measured["passed"] else []
    return {
        "name": name,
        "passed": bool(measured["passed"]),
        "pinned": name == "newest" or newest(files, []) is not None,
        "reasons": measured.get("reasons", []) + measured.get("critical", []),
        "install_failed": bool(result.install_failed),
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "proof": measured.get("proof"),
        "duration_secs": round(result.duration_secs, 1),
        "install_secs": round(result.install_secs, 1),
        "env_reused": result.env_reused,
        "requirements": files.get("requirements.txt", ""),
        "results": results if isinstance(results, dict | list) else None,
        "changes": changes,
        "output": _output(name, result),
    }


def _forget_environment(request: ExecutionRequest) -> None:
    key = env_hash(request, checked_files(request.files))
    for path in (request.env_dir / "venvs" / key, request.env_dir / "venvs" / f"{key}.ready"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _output(name: str, result) -> str:
    parts = [(f"{name}: install log", result.install_log), (f"{name}: stdout", result.stdout),
             (f"{name}: stderr", result.stderr)]  # fmt: skip
    return "\n".join(f"=== {title} ===\n{text[-OUTPUT_CHARS:]}" for title, text in parts if text.strip())


# The newest versions a lock's requirements allow -----------------------------------------------------------


def newest(files: dict, declared: list[str]) -> dict | None:
    """The files with each pinned requirement (`name==1.2`) loosened to what the repository declares for it
    (`name>=1.0`), or to any version; None when nothing is pinned (the example has no lock).

    The repository's own line (under environment.REPOSITORY_HEADING) stays: the runscript builds the
    repository from the clone in its place, and finds it by that exact line."""
    text = files.get("requirements.txt", "")
    by_name = {dependencies.normalized_name(line): line for line in declared}
    lines, pinned, own = [], False, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == environment.REPOSITORY_HEADING:
            own = ""
        elif own == "" and stripped and not stripped.startswith("#"):
            own = stripped
            lines.append(line)
            continue
        requirement = (
            dependencies.parsed(stripped) if stripped and not stripped.startswith(("#", "-")) else None
        )
        if (
            requirement is None
            or requirement.url
            or not any(s.operator == "==" for s in requirement.specifier)
        ):
            lines.append(line)
            continue
        pinned = True
        loose = by_name.get(dependencies.normalized_name(stripped))
        if loose is None:
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            loose = requirement.name + extras + (f"; {requirement.marker}" if requirement.marker else "")
        lines.append(loose)
    if not pinned:
        return None
    return {**files, "requirements.txt": "".join(f"{line}\n" for line in lines)}


# Results against the approved ones ----------------------------------------------------------------------


def result_changes(approved, found) -> list[str]:
    """The numbers of the approved results.json that are missing from `found` or moved past the tolerance,
    one line each (`loss: 0.25 → 0.31`). Text and booleans are not compared: they name, they do not measure."""
    if approved is None:
        return []
    tolerance = settings.LIBRARY_HEALTH_TOLERANCE_PPM / 1_000_000
    now = dict(_numbers(found))
    changes = []
    for path, value in _numbers(approved):
        if path not in now:
            changes.append(f"{path}: {value:g} → missing")
            continue
        new = now[path]
        if math.isnan(value) and math.isnan(new):
            continue
        if not math.isclose(value, new, rel_tol=tolerance, abs_tol=ABSOLUTE_TOLERANCE):
            changes.append(f"{path}: {value:g} → {new:g}")
    return changes


def _numbers(value, path: str = ""):
    """(path, number) of every number in a JSON value, depth first, at most MAX_NUMBERS."""
    stack, count = [(path, value)], 0
    while stack and count < MAX_NUMBERS:
        where, item = stack.pop(0)
        if isinstance(item, bool):
            continue
        if isinstance(item, int | float):
            count += 1
            yield where or "(the value)", float(item)
        elif isinstance(item, dict):
            stack[0:0] = [(f"{where}.{key}" if where else str(key), v) for key, v in item.items()]
        elif isinstance(item, list):
            stack[0:0] = [(f"{where}[{i}]", v) for i, v in enumerate(item)]


# What people see ------------------------------------------------------------------------------------------


@dataclass
class Health:
    """An example's health as its page says it: its newest verdict, since when it has been so."""

    status: str | None  # an ExampleCheck status, None before any verdict
    last: ExampleCheck | None  # the newest verdict
    since: datetime | None  # the first of the newest run of verdicts of that status
    running: bool  # a check is running now

    @property
    def label(self) -> str:
        return S(self.status).label if self.status else "Not checked yet"


def health_of(example: Example) -> Health:
    checks = list(
        example.checks.verdicts().only("pk", "status", "reason", "started_at", "finished_at", "repair_run")[
            :50
        ]
    )
    running = example.checks.filter(status=S.RUNNING).exists()
    if not checks:
        return Health(status=None, last=None, since=None, running=running)
    last = checks[0]
    since = last.finished_at
    for check in checks[1:]:
        if check.status != last.status:
            break
        since = check.finished_at
    return Health(status=last.status, last=last, since=since, running=running)


# Repair -------------------------------------------------------------------------------------------------

FAILED = (S.BROKEN, S.DRIFTED, S.CHANGED)


def example_repair(*, example: Example, profile_name: str, profile, requested_by):
    """A run that starts from the example's code, with its failed check's output as the first problem to fix
    (the normal fix loop, with the curator's profile). Its successful result is approved as the example's
    next version, with the diff against this one on the approval page."""
    from distill import services as runs
    from library.services import LibraryRefused

    check = example.checks.verdicts().first()
    if check is None or check.status not in FAILED:
        raise LibraryRefused("Only an example whose last check failed can be repaired.")
    if example.source_kind != Example.SourceKind.REPOSITORY:
        raise LibraryRefused("Only an example of a repository can be repaired; a paper's is distilled again.")
    if check.repair_run_id and not check.repair_run.is_finished:
        raise LibraryRefused(f"This example is already being repaired: run {check.repair_run_id}.")
    failing = next(
        (v for v in check.variants if not v.get("passed")), check.variants[0] if check.variants else {}
    )
    given = {
        "example": example.pk,
        "check": check.pk,
        "files": dict(example.files),
        "metadata": example.metadata,
        "change_log": f"Example {example.pk} (version {example.version}) as approved; its check of "
        f"{check.finished_at:%Y-%m-%d} found: {check.reason}",
        "exit_code": failing.get("exit_code"),
        "stderr": check.output,
        "problems": [f"the library's check found: {check.reason}", *failing.get("reasons", []),
                     *(f"a result changed: {change}" for change in failing.get("changes", []))],
    }  # fmt: skip
    with transaction.atomic():
        try:
            run = runs.run_submit(
                source=example.source_url,
                profile_name=profile_name,
                profile=profile,
                submitted_by=requested_by,
            )
        except runs.RunRefused as exc:
            raise LibraryRefused(str(exc)) from None
        run.config = {**run.config, "first_version": given}
        run.save(update_fields=["config"])
        ExampleCheck.objects.filter(pk=check.pk).update(repair_run=run)
    return run


def repaired_example(run) -> Example | None:
    """The example a repair run started from (None for any other run)."""
    given = (run.config or {}).get("first_version") or {}
    return Example.objects.filter(pk=given.get("example")).first() if given.get("example") else None


def health_by_day(*, days: int = 30, now: datetime | None = None) -> list[tuple[str, int, int]]:
    """(day, checks that verified their example, checks with a verdict) for each of the last `days` days."""
    from django.db.models import Count, Q
    from django.db.models.functions import TruncDate

    now = now or timezone.now()
    rows = (
        ExampleCheck.objects.verdicts()
        .filter(finished_at__gte=now - timedelta(days=days))
        .annotate(day=TruncDate("finished_at"))
        .values("day")
        .annotate(good=Count("pk", filter=Q(status=S.PASSED)), total=Count("pk"))
        .order_by("day")
    )
    return [(row["day"].strftime("%m-%d"), row["good"], row["total"]) for row in rows]
