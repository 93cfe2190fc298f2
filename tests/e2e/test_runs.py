"""A curator submits a repository and watches it run, and cancels a run, in a real browser.

The work is done by a real django-q2 worker (`manage.py qcluster`) against the test database, not inline:
the test settings run tasks synchronously, which would make the submit request wait for the whole run.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from distill import services
from distill.models import Run
from distill.profiles import load_profile
from tests.e2e.conftest import look
from tests.factories import make_git_repo
from tests.replies import cassette, program, ratings, verdict
from tests.test_many_workers import database_url

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 180_000  # ms: a run builds and proves its environment in the sandbox before its first program

MINILIB = {
    "README.md": "# minilib\n\nTiny statistics for tests. `mean_squared(xs)` returns the mean of squares.\n",
    "minilib/__init__.py": "def mean_squared(xs):\n    return sum(x * x for x in xs) / len(xs)\n",
    "setup.py": "from setuptools import setup\nsetup(name='minilib', packages=['minilib'])\n",
}
SURVEY = [
    ("purpose", "minilib computes summary statistics; its entry point is minilib.mean_squared."),
    ("rate", ratings("README.md", "minilib/__init__.py", "setup.py")),
]
SLEEPER = "import time\n\nprint('sleeping now', flush=True)\ntime.sleep(300)\nopen('results.json', 'w').write('{}')\n"


@pytest.fixture
def repo(tmp_path, settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True  # the live server reads these settings
    return make_git_repo(tmp_path / "minilib", MINILIB)


@pytest.fixture
def worker(live_server, data_dir, tmp_path, monkeypatch):
    """Starts a real qcluster on the test database; yields a function that sets its replay cassette."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)  # enqueue into the ORM broker instead of running inline
    replay = tmp_path / "replay.json"
    cassette(replay, [])
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "codedistiller_site.settings",
        "DEBUG": "true",
        "DATABASE_URL": database_url(),
        "DATA_DIR": str(data_dir),
        "DISTILL_ALLOW_LOCAL_SOURCES": "true",
        "DISTILL_LLM_REPLAY": str(replay),
        "Q_WORKERS": "1",
    }
    log = (tmp_path / "qcluster.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    yield lambda entries: cassette(replay, entries)
    _stop(process)
    log.close()
    if os.environ.get("E2E_SHOW_WORKER_LOG"):
        print((tmp_path / "qcluster.log").read_text())


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def test_a_curator_submits_a_repository_and_watches_it_succeed_without_reloading(
    page, login, curator, repo, worker
):
    worker([*SURVEY, ("generate", program()), ("judge", verdict(True))])
    login(curator, next_path="/runs/new/")
    page.get_by_label("Repository URLs").fill(str(repo))
    page.get_by_role("radio", name=re.compile("^local")).check()
    page.get_by_role("button", name="Start distilling").click()

    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    page.evaluate("window.stillTheSamePage = true")  # gone if anything reloads the page
    status = page.get_by_test_id("run-status")
    expect(status).to_have_text("Succeeded", timeout=RUN_TIMEOUT)
    assert page.evaluate("window.stillTheSamePage") is True

    expect(page.get_by_role("heading", name="Iteration 1")).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("Judge")
    expect(page.locator(".timeline")).to_contain_text("Prepare environment")
    expect(page.get_by_test_id("environment-status")).to_contain_text("ready without a model")
    expect(page.get_by_role("link", name="Open report.html")).to_be_visible()
    run = Run.objects.get()
    assert run.status == Run.Status.SUCCEEDED and run.submitted_by == curator
    # The survey's section arrived by itself too: the API digest, and why no file was rated.
    expect(page.locator("#run-ratings")).to_contain_text("Files not rated: in a context of 4096 tokens")
    expect(page.locator(".timeline")).to_contain_text("Files not rated")
    page.locator(".api-digest summary").click()
    expect(page.locator(".api-digest")).to_contain_text("def mean_squared(xs): ...")

    # The list shows it too, and stops polling: nothing on it is active.
    page.get_by_role("link", name="Runs", exact=True).first.click()
    expect(page.locator("#runs-live")).to_contain_text("Succeeded")
    expect(page.locator("#runs-live")).not_to_have_attribute("hx-trigger", re.compile("."))


def test_a_curator_cancels_a_running_program_from_its_page(page, login, curator, repo, worker, tmp_path):
    worker([*SURVEY, ("generate", program(SLEEPER))])
    run = services.run_submit(
        source=str(repo), profile_name="local", profile=load_profile("local"), submitted_by=curator
    )
    login(curator, next_path=f"/runs/{run.pk}/")
    expect(page.get_by_test_id("stdout-tail")).to_contain_text("sleeping now", timeout=RUN_TIMEOUT)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    expect(page.get_by_test_id("run-status")).to_have_text("Cancelled", timeout=30_000)
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Retry from"))).to_be_visible()

    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    iteration = run.iterations.get()
    assert iteration.sandbox.get("cancelled") is True
    assert iteration.duration_secs is None or iteration.duration_secs < 120, (
        "the sleeping program was stopped"
    )

    # The stopped iteration reads as stopped: not as never run, nor as a program that failed by itself.
    card = page.locator("#iteration-1")
    expect(card).to_contain_text("stopped: run cancelled")
    expect(card).not_to_contain_text("not run yet")
    expect(card).not_to_contain_text("exited with code")
    expect(page.locator(".timeline__step", has_text="Execute")).to_have_class(re.compile("--cancelled"))
    card.get_by_role("link", name="Code and output").click()
    facts = page.locator("dl.facts").filter(has_text="Exit code")
    expect(facts).to_contain_text("stopped because the run was cancelled")
    expect(facts.locator("dt:has-text('Started') + dd")).not_to_have_text("—")
    expect(page.locator("body")).not_to_contain_text("os._exit")
    assert iteration.started_at is not None
    look(page, "iteration-cancelled")
