"""`make run` starts the web server and a worker cluster together; Ctrl-C must leave nothing behind."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds the marker (our children and theirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_the_web_server_and_every_worker(tmp_path):
    marker = f"serve-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "DEBUG": "true", "DATA_DIR": str(tmp_path), "SERVE_TEST_MARKER": marker}
    env["DJANGO_SETTINGS_MODULE"] = "codedistiller_site.settings"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the web server did not answer within 60 s"
                assert serve.poll() is None, serve.stdout.read().decode()
                time.sleep(0.5)
        # The cluster is up too: qcluster and its worker processes carry the marker.
        deadline = time.monotonic() + 30
        while len(processes_with(marker)) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(processes_with(marker)) >= 4, "expected serve, gunicorn and qcluster processes"

        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=30) == 0
        deadline = time.monotonic() + 5
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with(marker) == []
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        if serve.poll() is None:
            serve.kill()


@pytest.mark.parametrize(
    "environ, workers, said",
    [
        ({}, "1", True),  # no provider key: the local model, one run at a time
        ({"Q_WORKERS": "3"}, "3", False),  # the user's choice stands
        ({"ANTHROPIC_API_KEY": "sk-test"}, None, False),  # a provider: the settings' default
        ({"DISTILL_DEFAULT_PROFILE": "gpt-5"}, None, False),
    ],
)
def test_the_local_model_gets_one_worker_process_unless_told_otherwise(monkeypatch, environ, workers, said):
    from distill.management.commands.serve import worker_environment

    for name in ("Q_WORKERS", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DISTILL_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    env, line = worker_environment(os.environ)

    assert env.get("Q_WORKERS") == workers
    assert (line is not None) == said
    if said:
        assert "local model" in line and "Q_WORKERS" in line
