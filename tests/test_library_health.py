"""Library health checks (library/health.py): real git repositories made here, the real bubblewrap sandbox,
real pip installing from a folder of wheels inside the repository (offline), the real proof."""

from datetime import timedelta

import git
import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from library import health
from library.models import Example, ExampleCheck
from tests.factories import make_git_repo, wheel

S = ExampleCheck.Status

MINILIB = {
    "minilib/__init__.py": "def mean_squared(xs):\n    return sum(x * x for x in xs) / len(xs)\n",
    "setup.py": "from setuptools import setup\nsetup(name='minilib', version='0.1', packages=['minilib'])\n",
}
# A dependency of the example, published twice: 2.0 renamed FACTOR, as libraries do in a major version.
TINYDEP = {
    "1.0": "FACTOR = 2.0\n\n\ndef scale(x):\n    return 2.0 * x\n",
    "2.0": "SCALE_FACTOR = 2.0\n\n\ndef scale(x):\n    return 2.0 * x\n",
}
RUNSCRIPT = "pip install --no-index --find-links /repo/wheels -r requirements.txt\n"
HEAD = "import json, sys\nsys.path.insert(0, '/repo')\nimport tinydep\nfrom minilib import mean_squared\n"
WRITE = "json.dump({'value': value, 'label': 'squares'}, open('results.json', 'w'))\n"
USES_SCALE = HEAD + "value = tinydep.scale(mean_squared([1.0, 2.0, 3.0]))\n" + WRITE
USES_FACTOR = HEAD + "value = tinydep.FACTOR * mean_squared([1.0, 2.0, 3.0])\n" + WRITE
EXPECTED = 2 * 14 / 3


@pytest.fixture(autouse=True)
def local_sources(settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True


@pytest.fixture
def repository(tmp_path):
    """minilib, with the wheels of both versions of tinydep in its wheels/ folder."""
    files = dict(MINILIB)
    for version, source in TINYDEP.items():
        files[f"wheels/tinydep-{version}-py3-none-any.whl"] = wheel("tinydep", version, source)
    return make_git_repo(tmp_path / "minilib", files)


def make_example(
    source, *, main=USES_SCALE, requirements="tinydep==1.0\n", results=None, **fields
) -> Example:
    """An approved example as example_approve leaves it, of the repository at `source` (its HEAD)."""
    sha = git.Repo(source).head.commit.hexsha if (source / ".git").exists() else "f" * 40
    defaults = {
        "title": "Mean of squares",
        "summary": "minilib's mean_squared, scaled.",
        "source_url": str(source),
        "commit_sha": sha,
        "iteration_number": 1,
        "profile": "local",
        "files": {"main.py": main, "requirements.txt": requirements, "runscript.sh": RUNSCRIPT},
        "results": {"value": EXPECTED, "label": "squares"} if results is None else results,
        "version": Example.objects.filter(source_url=str(source)).count() + 1,
    }
    defaults.update(fields)
    return Example.objects.create(**defaults)


def check(example: Example) -> ExampleCheck:
    found = health.example_check(example_id=example.pk)
    assert found is not None
    found.refresh_from_db()
    return found


# Checks in the real sandbox -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db
def test_an_example_that_still_runs_both_ways_with_its_results_passes(repository):
    example = make_example(repository)
    files_before = dict(example.files)

    found = check(example)

    assert found.status == S.PASSED, (found.reason, found.output)
    assert (
        found.reason
        == "ran with its lock and with the newest versions its requirements allow, with the approved results"
    )
    locked, newest = found.variants
    assert (locked["name"], newest["name"]) == ("locked", "newest")
    assert locked["passed"] and newest["passed"]
    assert locked["proof"] == "proven", "the repository's code executed"
    assert newest["requirements"] == "tinydep\n", "the pin is loosened to any version"
    assert locked["results"] == {"value": EXPECTED, "label": "squares"}
    assert found.finished_at is not None
    example.refresh_from_db()
    assert example.files == files_before, "a check never changes the example"

    again = check(example)
    assert again.variants[0]["env_reused"], "the lock's environment is kept for the next check"
    assert not again.variants[1]["env_reused"], "the newest versions are installed afresh each time"


@pytest.mark.slow
@pytest.mark.django_db
def test_an_example_that_a_newer_version_of_its_dependency_breaks_has_drifted(repository):
    example = make_example(repository, main=USES_FACTOR)

    found = check(example)

    assert found.status == S.DRIFTED, (found.reason, found.output)
    assert found.reason.startswith("it fails with the newest versions its requirements allow: ")
    assert "exited with code 1" in found.reason
    assert found.variants[0]["passed"] and not found.variants[1]["passed"]
    assert "AttributeError: module 'tinydep' has no attribute 'FACTOR'" in found.output
    assert found.output.startswith("=== newest"), "the output shown is the failing variant's"


@pytest.mark.slow
@pytest.mark.django_db
def test_results_that_moved_past_the_tolerance_are_a_change(repository, settings):
    settings.LIBRARY_HEALTH_TOLERANCE_PPM = 10_000  # 1%
    example = make_example(repository, requirements="tinydep\n", results={"value": 9.0, "label": "other"})

    found = check(example)

    assert found.status == S.CHANGED, (found.reason, found.output)
    assert found.reason == f"results changed as approved: value: 9 → {EXPECTED:g}"
    assert len(found.variants) == 1, "without a lock it runs once, as approved"


@pytest.mark.slow
@pytest.mark.django_db
def test_requirements_that_no_longer_install_are_broken(repository):
    example = make_example(repository, requirements="tinydep==3.0\n")

    found = check(example)

    assert found.status == S.BROKEN
    assert found.reason.startswith("its requirements no longer install: ")
    assert "tinydep==3.0" in found.output
    assert len(found.variants) == 1, "a broken lock is not tried with newer versions"


# Bad cases without the sandbox ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_repository_that_disappeared_is_broken_with_that_reason(tmp_path):
    example = make_example(make_git_repo(tmp_path / "gone", MINILIB))
    import shutil

    shutil.rmtree(tmp_path / "gone")

    found = check(example)

    assert found.status == S.BROKEN
    assert found.reason.startswith("the repository is gone: ")
    assert found.variants == []


@pytest.mark.django_db
def test_a_commit_that_is_no_longer_in_the_repository_is_broken(repository):
    example = make_example(repository, commit_sha="0123456789abcdef0123456789abcdef01234567")

    found = check(example)

    assert found.status == S.BROKEN
    assert found.reason == "the repository is gone: commit 0123456789ab is no longer in the repository"


@pytest.mark.django_db
def test_an_older_commit_is_checked_out(repository):
    first = git.Repo(repository).head.commit.hexsha
    (repository / "NEWS").write_text("moved on\n")
    repo = git.Repo(repository)
    repo.index.add(["NEWS"])
    author = git.Actor("Test Author", "author@example.org")
    repo.index.commit("Later", author=author, committer=author)
    example = make_example(repository, commit_sha=first)

    clone = health.fetch_commit(example, repository.parent / "check-clone")

    assert git.Repo(clone).head.commit.hexsha == first
    assert not (clone / "NEWS").exists()


# The guard, the schedule and the back-off ----------------------------------------------------------------


@pytest.mark.django_db
def test_one_example_is_never_checked_twice_at_once(tmp_path):
    example = make_example(tmp_path / "nowhere")
    running = ExampleCheck.objects.create(example=example, status=S.RUNNING)

    assert health.example_check(example_id=example.pk) is None
    assert list(example.checks.all()) == [running]
    with pytest.raises(IntegrityError), transaction.atomic():
        ExampleCheck.objects.create(example=example, status=S.RUNNING)
    assert example not in Example.objects.due_for_check(timezone.now())


@pytest.mark.django_db
def test_the_schedule_takes_the_oldest_checks_first_within_the_hourly_budget(tmp_path, settings):
    settings.LIBRARY_HEALTH_CHECKS_PER_HOUR = 2
    settings.LIBRARY_HEALTH_INTERVAL_HOURS = 24
    now = timezone.now()
    never, old, older, recent = (make_example(tmp_path / f"r{i}", title=f"e{i}") for i in range(4))
    for example, days in ((old, 3), (older, 5), (recent, 0.5)):
        ExampleCheck.objects.create(
            example=example, status=S.PASSED, started_at=now - timedelta(days=days), finished_at=now
        )

    assert list(Example.objects.due_for_check(now)) == [never, older, old]
    with_budget = health.schedule_checks(now=now)
    assert with_budget == [never.pk, older.pk]

    ExampleCheck.objects.create(example=never, status=S.PASSED, started_at=now - timedelta(minutes=5))
    assert health.schedule_checks(now=now) == [older.pk], "one check already started this hour"


@pytest.mark.django_db
def test_a_broken_example_is_checked_again_only_after_its_back_off(tmp_path, settings):
    settings.LIBRARY_HEALTH_INTERVAL_HOURS = 1
    settings.LIBRARY_HEALTH_BROKEN_INTERVAL_HOURS = 24
    now = timezone.now()
    example = make_example(tmp_path / "r")
    ExampleCheck.objects.create(example=example, status=S.BROKEN, started_at=now - timedelta(hours=3))

    assert example not in Example.objects.due_for_check(now)
    assert example in Example.objects.due_for_check(now + timedelta(hours=22))


@pytest.mark.django_db
def test_retracted_and_older_versions_are_not_checked(tmp_path):
    old = make_example(tmp_path / "r", is_latest=False)
    retracted = make_example(tmp_path / "s", status=Example.Status.RETRACTED)

    assert list(Example.objects.due_for_check(timezone.now())) == []
    assert health.example_check(example_id=old.pk) is None
    assert health.example_check(example_id=retracted.pk) is None


@pytest.mark.django_db
def test_a_check_whose_worker_was_killed_is_swept_as_could_not_check(tmp_path, settings):
    example = make_example(tmp_path / "r")
    stale = ExampleCheck.objects.create(
        example=example, status=S.RUNNING, started_at=timezone.now() - timedelta(days=1)
    )

    health.schedule_checks()

    stale.refresh_from_db()
    assert stale.status == S.ERROR and stale.reason == "the check was interrupted (its worker stopped)"


# Parts ------------------------------------------------------------------------------------------------------


def test_the_newest_versions_loosen_pins_to_the_declared_range_and_keep_the_repository_line():
    files = {
        "requirements.txt": "# The repository itself\nminilib==0.1\n# The prepared environment (pip freeze)\n"
        "numpy==2.1.0\nrich[jupyter]==13.0 ; python_version >= '3.8'\n# This program's extra requirements\n"
        "scipy>=1.0\n",
        "main.py": "",
    }

    loose = health.newest(files, ["numpy>=1.20,<3"])

    assert loose["requirements.txt"] == (
        "# The repository itself\nminilib==0.1\n# The prepared environment (pip freeze)\nnumpy>=1.20,<3\n"
        'rich[jupyter]; python_version >= "3.8"\n# This program\'s extra requirements\nscipy>=1.0\n'
    )
    assert health.newest({"requirements.txt": "numpy>=1\n"}, []) is None, "nothing pinned: no lock"


def test_numbers_are_compared_within_the_tolerance_and_text_is_not(settings):
    settings.LIBRARY_HEALTH_TOLERANCE_PPM = 10_000
    approved = {"loss": 0.25, "scores": [1.0, 2.0], "name": "a", "ok": True, "nested": {"n": 100}}

    assert health.result_changes(approved, {**approved, "loss": 0.2501, "name": "b", "ok": False}) == []
    assert health.result_changes(approved, {"loss": 0.3, "scores": [1.0], "nested": {"n": 100}}) == [
        "loss: 0.25 → 0.3",
        "scores[1]: 2 → missing",
    ]
    assert health.result_changes(None, {"x": 1}) == []


# Repair: a run from the broken example's code, through the normal fix loop ------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_repair_run_fixes_a_broken_example_and_its_result_becomes_the_next_version(tmp_path, curator):
    from distill.models import LLMCall, Run
    from distill.profiles import load_profile
    from library.services import example_approve
    from tests.replies import BROKEN_MAIN, WORKING_MAIN, cassette, program, verdict
    from tests.test_pipeline import MINILIB as PIPELINE_MINILIB
    from tests.test_pipeline import survey_replies

    source = make_git_repo(tmp_path / "minilib", PIPELINE_MINILIB)
    files = {"main.py": BROKEN_MAIN, "requirements.txt": "# none\n", "runscript.sh": "true\n"}
    example = make_example(source, files=files, results={"mean_squared": 14 / 3})
    broken = check(example)
    assert broken.status == S.BROKEN and broken.reason.startswith("it fails as approved: "), broken.reason
    replies = [
        *survey_replies(),
        ("fix", program(WORKING_MAIN, changes="Import mean_squared.")),
        ("judge", verdict()),
    ]
    profile = load_profile(
        "local",
        {"replay": str(cassette(tmp_path / "cassette.json", replies)), "max_debug_iterations": 3,
         "max_runtime_mins": 1, "max_environment_repairs": 0},
    )  # fmt: skip

    # The workers run in this process (django-q2's sync mode): the run is done when this returns.
    run = health.example_repair(example=example, profile_name="local", profile=profile, requested_by=curator)

    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.status_message
    first, fixed = run.iterations.order_by("number")
    assert first.files == files and not first.succeeded and first.stderr == broken.output
    assert fixed.succeeded and fixed.results == {"mean_squared": pytest.approx(14 / 3)}
    stages = list(LLMCall.objects.filter(run=run).values_list("stage", flat=True))
    assert "generate" not in stages and "fix" in stages, "the first version is the example's, not the model's"
    fix_prompt = LLMCall.objects.get(run=run, stage="fix").prompt[0]["content"]
    assert "the library's check found: it fails as approved" in fix_prompt and "mean_squares" in fix_prompt

    repaired = example_approve(run=run, approved_by=curator, title=example.title, summary="Repaired.")
    assert repaired.version == example.version + 1 and repaired.is_latest
    example.refresh_from_db()
    assert not example.is_latest and example.files == files, "the broken version stays as it was approved"


@pytest.mark.django_db(transaction=True)
def test_the_hourly_task_queues_the_due_checks_and_a_worker_runs_them(tmp_path):
    from library import tasks

    example = make_example(tmp_path / "vanished")

    # django-q2's sync mode: the queued check runs in this process when the task commits.
    assert tasks.schedule_health_checks() == [example.pk]

    (found,) = example.checks.all()
    assert found.status == S.BROKEN and found.reason.startswith("the repository is gone: ")
    assert tasks.schedule_health_checks() == [], "not due again for a day"


@pytest.mark.django_db
def test_the_migration_schedules_the_task_every_hour_once():
    import importlib

    from django.apps import apps
    from django_q.models import Schedule

    migration = importlib.import_module("library.migrations.0009_health_schedule")
    Schedule.objects.filter(name="check library health").delete()  # a flushed database has none
    migration.create_schedule(apps, None)
    migration.create_schedule(apps, None)

    (schedule,) = Schedule.objects.filter(name="check library health")
    assert (schedule.func, schedule.schedule_type, schedule.repeats) == (
        "library.tasks.schedule_health_checks",
        "H",
        -1,
    )


@pytest.mark.slow
@pytest.mark.django_db
def test_a_check_that_hangs_is_stopped_by_the_sandboxs_time_limit(tmp_path):
    from distill.profiles import load_profile
    from tests.factories import make_run

    source = make_git_repo(tmp_path / "minilib", MINILIB)
    run = make_run(
        source_url=str(source), config={**load_profile("local").model_dump(), "max_runtime_mins": 0.05}
    )
    files = {
        "main.py": "import time\ntime.sleep(600)\n",
        "requirements.txt": "# none\n",
        "runscript.sh": "true\n",
    }
    example = make_example(source, files=files, run=run)

    found = check(example)

    assert found.status == S.BROKEN
    assert found.reason == "it fails as approved: the program did not finish within its time limit"
    assert found.variants[0]["timed_out"] and found.variants[0]["duration_secs"] < 60
