"""What a killed worker's sandbox left running is killed before its run goes on (issue 17 point 4)."""

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from distill import services
from distill.models import Run
from distill.pipeline import program
from distill.sandbox import kill_leftovers
from distill.sandbox.local import _host_uid
from tests.factories import make_run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs as a uid of its run only as root")


def leftover(env_dir: Path) -> subprocess.Popen:
    """A process as the run's sandbox runs its programs: as the host uid of its environment folder."""
    uid = _host_uid(env_dir)
    return subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"])


def gone(process: subprocess.Popen) -> bool:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def test_kill_leftovers_kills_what_an_environment_folders_sandbox_left(tmp_path):
    process = leftover(tmp_path / "env")
    other = leftover(tmp_path / "another-env")
    time.sleep(0.2)

    assert kill_leftovers(tmp_path / "env") == 1

    assert gone(process)
    assert other.poll() is None, "another run's sandbox is left alone"
    other.kill()
    other.wait()


@pytest.mark.django_db
def test_the_sweeper_kills_a_stale_runs_sandbox_before_resuming_it():
    run = make_run(status=Run.Status.EXECUTING)
    Run.objects.filter(pk=run.pk).update(lease="dead-worker", heartbeat_at="2020-01-01T00:00:00Z")
    process = leftover(program.env_dir(run))
    time.sleep(0.2)

    assert services.sweep_stale_runs(stale_after=timedelta(0)) == [run.pk]

    assert gone(process)


def test_the_sweeper_leaves_alone_what_a_live_execution_of_the_same_folder_runs(tmp_path):
    # The runs of one commit share its environment folder: while one executes, what runs is its own.
    from distill.sandbox.local import _execution_lock

    env = tmp_path / "env"
    env.mkdir()
    process = leftover(env)
    time.sleep(0.5)  # setpriv takes the uid as it starts: before, nothing of the folder's uid runs
    try:
        with _execution_lock(env, None) as held:
            assert held
            assert kill_leftovers(env) == 0
            assert process.poll() is None
        assert kill_leftovers(env) == 1, "once no execution holds the folder, what is left is a leftover"
        assert gone(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
