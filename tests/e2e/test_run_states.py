"""The run and iteration pages say what state a run is in: its first action, its timeline, its live parts.

Runs here are rows as the pipeline leaves them (tests/factories.py); the pages are read in a real Chromium.
"""

import re
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from distill import services
from distill.models import LLMCall, Run, RunStep
from distill.pipeline.diagnosis import diagnose
from distill.profiles import load_profile
from library import services as library_services
from tests.e2e.conftest import look
from tests.factories import make_git_repo, make_iteration, make_run

FAILED_MEASURE = {
    "exit_ok": False,
    "results_ok": False,
    "passed": False,
    "reasons": ["the program exited with code 1"],
}


def _failed_run(**fields):
    run = make_run(status=Run.Status.FAILED, finished_at=timezone.now(), **fields)
    make_iteration(run, 1, exit_code=1, measured=FAILED_MEASURE, judgement=None, succeeded=False)
    RunStep.objects.create(run=run, name="execute", iteration=1, outcome="done", finished_at=timezone.now())
    return run


def _first_action(page):
    return page.locator(".actions .button").first


def test_a_failed_run_leads_with_retry_and_marks_its_failed_execution(page, login, curator):
    run = _failed_run()
    login(curator, next_path=f"/runs/{run.pk}/")

    expect(_first_action(page)).to_have_text(re.compile("^Retry from the"))
    expect(page.get_by_role("link", name="Approve into the library…")).to_have_count(0)
    # Approving stays possible, behind its own words (the approve page asks for the reason).
    expect(page.get_by_role("link", name="Approve a failed iteration…")).to_be_visible()
    execute = page.locator(".timeline__step", has_text="Execute")
    expect(execute).to_have_class(re.compile("timeline__step--failed"))
    expect(execute).to_contain_text("program failed")
    look(page, "run-failed")


def test_a_cancelled_execution_is_marked_cancelled_not_done(page, login, curator):
    run = make_run(status=Run.Status.CANCELLED, finished_at=timezone.now())
    make_iteration(
        run, 1, exit_code=None, state="ran", sandbox={"cancelled": True}, judgement=None, succeeded=None,
        measured={"cancelled": True, "exit_ok": False, "results_ok": False, "passed": False,
                  "reasons": ["the program was stopped while it ran: the run was cancelled"]},
    )  # fmt: skip
    RunStep.objects.create(run=run, name="execute", iteration=1, outcome="done", finished_at=timezone.now())
    login(curator, next_path=f"/runs/{run.pk}/")

    execute = page.locator(".timeline__step", has_text="Execute")
    expect(execute).to_have_class(re.compile("timeline__step--cancelled"))
    expect(page.locator("#iteration-1")).to_contain_text("stopped: run cancelled")
    expect(page.locator("#iteration-1")).not_to_contain_text("not run yet")
    expect(_first_action(page)).to_have_text(re.compile("^Retry from the"))


def test_a_passed_run_leads_with_approve_until_it_is_rejected(page, login, curator):
    run = make_run(status=Run.Status.SUCCEEDED, finished_at=timezone.now())
    make_iteration(run, 1)
    RunStep.objects.create(run=run, name="execute", iteration=1, outcome="done", finished_at=timezone.now())
    login(curator, next_path=f"/runs/{run.pk}/")

    expect(_first_action(page)).to_have_text("Approve into the library…")
    expect(page.locator(".timeline__step", has_text="Execute")).to_have_class(
        re.compile("timeline__step--done")
    )

    library_services.run_reject(run=run, rejected_by=curator, reason="Not what the repository is for.")
    page.reload()
    expect(page.get_by_role("link", name="Approve into the library…")).to_have_count(0)
    expect(page.get_by_role("link", name="Approve an iteration…")).to_have_class(
        re.compile("button--secondary")
    )


@pytest.fixture
def queue_only(monkeypatch, settings):
    """Submissions are queued and nothing works on them: the test moves the run itself."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True


def test_the_live_page_shows_the_final_state_of_everything_without_a_reload(
    page, login, curator, queue_only, tmp_path
):
    repo = make_git_repo(tmp_path / "minilib", {"README.md": "# minilib\n"})
    login(curator, next_path="/runs/new/")
    page.get_by_label("Repository URLs").fill(str(repo))
    page.get_by_role("radio", name=re.compile("^local")).check()
    page.get_by_role("button", name="Start distilling").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    page.evaluate("window.stillTheSamePage = true")
    run = Run.objects.get()
    expect(page.locator(".messages")).to_contain_text(f"Run {run.pk} was submitted.")

    # A worker takes it: the badge and the timeline change together, and the flash has had its moment.
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FIXING, started_at=now, lease="w")
    RunStep.objects.create(run=run, name="fix", iteration=1, started_at=now)
    call = LLMCall.objects.create(run=run, iteration=1, stage="fix", model="local/coder", status="pending")
    status = page.get_by_test_id("run-status")
    expect(status).to_have_text("Fixing")
    expect(page.locator(".messages")).to_have_count(0)
    expect(page.locator(f"#call-{call.pk}-pending")).to_contain_text("0 → 0 tokens")

    LLMCall.objects.filter(pk=call.pk).update(
        status="ok", tokens_in=1200, tokens_out=340, cost_usd=Decimal("0")
    )
    RunStep.objects.filter(run=run).update(outcome="failed", finished_at=timezone.now(), message="It broke.")
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.ERROR, lease="", finished_at=timezone.now(), status_message="It broke."
    )
    expect(status).to_have_text("Error")
    expect(page.locator(f"#call-{call.pk}")).to_contain_text("1200 → 340 tokens")
    expect(page.locator("#call-" + str(call.pk))).to_contain_text("OK")
    expect(page.locator("#run-live")).not_to_have_attribute("hx-get", re.compile("."))
    assert page.evaluate("window.stillTheSamePage") is True
    look(page, "run-live-ended")


TRACEBACK = """\
Traceback (most recent call last):
  File "/job/main.py", line 4, in <module>
    import numpy as np
ModuleNotFoundError: No module named 'numpy'
"""
MAIN = 'import json\nimport sys\n\nimport numpy as np\n\nsys.path.insert(0, "/repo")\nfrom kneed import KneeLocator\n'


def test_the_likely_cause_named_first_is_the_line_that_failed_first(page, login, curator):
    run = _failed_run()
    found = diagnose(
        output=TRACEBACK, install_log="", packages={"kneed": "kneed"}, declared=[], main_source=MAIN,
        imported=set(),
    )  # fmt: skip
    iteration = run.iterations.get()
    iteration.files["main.py"], iteration.stderr = MAIN, TRACEBACK
    iteration.measured = {**FAILED_MEASURE, "diagnosis": found}
    iteration.save()
    login(curator, next_path=f"/runs/{run.pk}/iterations/1/")

    causes = page.locator("ul.reasons--bad").first.locator("li")
    expect(causes.first).to_have_text("the module 'numpy' is not installed: add 'numpy' to requirements.txt")
    expect(page.get_by_text("could not be imported")).to_have_count(0)
    look(page, "iteration-likely-cause")


def test_a_source_whose_host_cannot_be_reached_says_so_and_stays_out_of_the_success_rate(
    page, login, curator, settings
):
    # A name that never resolves (RFC 2606): a real clone fails as it does on a machine with no network.
    settings.DISTILL_ALLOWED_HOSTS = [*settings.DISTILL_ALLOWED_HOSTS, "forge.invalid"]
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    run = services.run_submit(
        source="https://forge.invalid/lab/minilib", profile_name="local", profile=load_profile("local"),
        submitted_by=curator, enqueue=False,
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)
    assert run.status == Run.Status.ERROR
    done = make_run(status=Run.Status.SUCCEEDED)
    make_iteration(done, 1)
    login(curator, next_path=f"/runs/{run.pk}/")

    alert = page.locator(".status-line")
    expect(alert).to_contain_text("Could not reach forge.invalid")
    expect(alert).to_contain_text("Check the network, then retry, or submit a local copy")
    expect(page.locator("body")).not_to_contain_text("refused")
    expect(page.locator("#iterations-h + p")).to_have_text(
        "No iteration: the source could not be fetched, so nothing was distilled."
    )
    look(page, "run-not-fetched")

    page.get_by_role("button", name="Retry from the fetching step").click()
    expect(page.locator(".messages")).to_contain_text("Not retried. Could not reach forge.invalid")
    expect(page.locator(".timeline__step")).to_have_count(1)  # no second failed fetch

    page.get_by_role("link", name="Runs", exact=True).first.click()
    expect(page.locator("#runs-summary")).to_contain_text("100%")
    expect(page.get_by_test_id("not-fetched")).to_contain_text("1 could not be fetched")
    look(page, "runs-list")
