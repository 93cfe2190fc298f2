"""Two worker clusters on one database share the runs and never advance one run twice at once."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_client
from django.db import connection
from django_q.conf import Conf
from django_q.models import OrmQ, Task

from distill import services
from distill.models import LLMCall, Run
from distill.profiles import load_profile
from tests.factories import make_git_repo
from tests.replies import cassette, program, verdict
from tests.test_pipeline import MINILIB, survey_replies

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
RUNS = 12  # enough for both clusters to take turns many times; each run costs the suite seconds
STEPS = ["fetch", "survey", "prepare", "generate", "execute", "judge"]
KILL_GRACE_SECS = 5


def database_url() -> str:
    """The test database as a DATABASE_URL, for processes started by a test (SQLite or PostgreSQL)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    if connection.vendor == "postgresql":
        credentials = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = quote(db["HOST"] or "localhost", safe="")
        return f"postgres://{credentials}@{host}:{db['PORT'] or 5432}/{quote(db['NAME'], safe='')}"
    raise NotImplementedError(f"no DATABASE_URL for {connection.vendor}")


def site_env(tmp_path: Path, **extra) -> dict:
    """The environment of a site process on the test database; the ORM broker unless REDIS_URL is given."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        "DJANGO_SETTINGS_MODULE": "codedistiller_site.settings",
        "DEBUG": "true",
        "DATABASE_URL": database_url(),
        "DATA_DIR": str(tmp_path / "data"),
        "DISTILL_ALLOW_LOCAL_SOURCES": "true",
        "Q_WORKERS": "2",
        "LOG_LEVEL": "INFO",
    }
    return {**env, **extra}


def start_cluster(tmp_path: Path, name: str, **extra) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{name}.log"
    env = site_env(tmp_path, **extra)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the cluster's process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECS), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the group may outlive its leader
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


NEEDS_REDIS = pytest.mark.skipif(
    not shutil.which("redis-server"), reason="redis-server is not installed (apt-get install redis-server)"
)


@pytest.fixture
def redis_url():
    """A throwaway Redis on a spare loopback port, nothing saved."""
    port = spare_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis_client.from_url(url).ping()
            break
        except redis_client.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield url
    stop(redis)


@pytest.mark.parametrize("broker", ["orm", pytest.param("redis", marks=NEEDS_REDIS)])
def test_two_clusters_complete_a_dozen_runs_exactly_once(
    broker, tmp_path, data_dir, settings, monkeypatch, request
):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    # Enqueue through the broker (the test settings run tasks in-process).
    monkeypatch.setattr(Conf, "SYNC", False)
    cluster_env = {}
    if broker == "redis":
        url = request.getfixturevalue("redis_url")
        monkeypatch.setattr(Conf, "ORM", None)  # django-q2 falls back to Redis, at Conf.REDIS
        monkeypatch.setattr(Conf, "REDIS", url)
        cluster_env["REDIS_URL"] = url
    # A source has one active run at a time: each run needs its own repository.
    repos = [make_git_repo(tmp_path / f"minilib-{i}", MINILIB) for i in range(RUNS)]
    replay = cassette(
        tmp_path / "c.json", [*survey_replies(), ("generate", program()), ("judge", verdict(True))]
    )
    # A generous time limit: under load, installing and running a program took more than a minute.
    profile = load_profile("local", {"replay": str(replay), "max_runtime_mins": 5, "max_debug_iterations": 1})
    runs = [
        services.run_submit(source=str(repo), profile_name="local", profile=profile, enqueue=True)
        for repo in repos
    ]

    if broker == "redis":  # the tasks wait in Redis, none in the database
        assert redis_client.from_url(url).llen("django_q:codedistiller:q") == RUNS
        assert not OrmQ.objects.exists()
    clusters = [start_cluster(tmp_path, f"cluster-{i}", **cluster_env) for i in range(2)]
    try:
        deadline = time.monotonic() + 300  # about 90 s on two idle cores
        while Run.objects.filter(pk__in=[r.pk for r in runs]).exclude(status__in=Run.FINISHED).exists():
            for proc, log in clusters:
                assert proc.poll() is None, f"a cluster stopped:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, _progress(runs)
            time.sleep(1)
    finally:
        for proc, _ in clusters:
            stop(proc)

    for run in Run.objects.filter(pk__in=[r.pk for r in runs]):
        last = run.iterations.last()
        why = (last.measured, last.stderr[-2000:], last.install_log[-2000:]) if last else None
        assert run.status == Run.Status.SUCCEEDED, (run.pk, run.status, run.status_message, why)
        steps = list(run.steps.order_by("started_at", "id"))
        assert [s.name for s in steps] == STEPS, (run.pk, [s.name for s in steps])
        assert all(s.outcome == "done" for s in steps)
        for earlier, later in zip(steps, steps[1:], strict=False):
            assert earlier.finished_at <= later.started_at, (
                f"run {run.pk}: {earlier.name} and {later.name} overlap"
            )
        assert run.iterations.count() == 1
        stages = Counter(LLMCall.objects.filter(run=run).values_list("stage", flat=True))
        # No "rate": in the local profile's small context the API digest stands in for file excerpts.
        assert stages == {"purpose": 1, "generate": 1, "judge": 1}, (run.pk, stages)
        assert not run.lease

    # Both clusters took part: each logs the tasks it processed.
    processed = [log.read_text().count("advance-run-") for _, log in clusters]
    assert all(count > 0 for count in processed), processed


def _progress(runs) -> str:
    counts = Counter(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True))
    return f"the runs did not finish in time: {dict(counts)}"


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@NEEDS_REDIS
def test_a_task_goes_through_redis_to_a_cluster(tmp_path, redis_url):
    cluster = None
    try:
        enqueued = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django_q.tasks import async_task; print(async_task('math.floor', 2.5, task_name='via-redis'))"],
            cwd=ROOT, env=site_env(tmp_path, REDIS_URL=redis_url), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
        task_id = enqueued.stdout.strip().splitlines()[-1]
        # The task waits in Redis, not in the database, until a cluster takes it.
        assert redis_client.from_url(redis_url).llen("django_q:codedistiller:q") == 1
        assert not OrmQ.objects.exists()

        cluster, log = start_cluster(tmp_path, "redis-cluster", REDIS_URL=redis_url)
        deadline = time.monotonic() + 60
        while not Task.objects.filter(id=task_id).exists():
            assert cluster.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the task never ran:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        if cluster is not None:
            stop(cluster)

    task = Task.objects.get(id=task_id)
    assert task.success and task.result == 2 and task.name == "via-redis"
