"""Run the web server and one django-q2 cluster together in the foreground (what `make run` starts).

Ctrl-C stops both. qcluster sometimes ignores SIGTERM, so each child runs in its own process group and
is killed outright, group and all, when it has not stopped a few seconds after being asked.
"""

import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand

from distill.profiles import default_profile_name

GRACE_SECS = 5.0


def worker_environment(environ) -> tuple[dict, str | None]:
    """The workers' environment, and a line to say when it was chosen for the user.

    With no provider key, runs use the local model: each worker process would load its own 1.1 GB model
    and the processes would share two cores, every run slower than one at a time. So one worker process,
    unless Q_WORKERS says otherwise.
    """
    env = dict(environ)
    if "Q_WORKERS" in env or default_profile_name() != "local":
        return env, None
    env["Q_WORKERS"] = "1"
    return env, (
        "No provider key is set, so runs use the local model on the CPU: one worker process distills one "
        "run at a time (set Q_WORKERS to change this)."
    )


class Command(BaseCommand):
    help = "Run the web server and the background workers together; Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))

    def handle(self, *args, host, port, **options):
        web = [
            sys.executable, "-m", "gunicorn", "codedistiller_site.wsgi",
            "--bind", f"{host}:{port}", "--workers", "2", "--threads", "4",
            "--access-logfile", "-", "--graceful-timeout", "3",
        ]  # fmt: skip
        workers = [sys.executable, "manage.py", "qcluster"]
        worker_env, chosen = worker_environment(os.environ)
        if chosen:
            self.stdout.write(chosen)
        children = [self._start(web), self._start(workers, env=worker_env)]
        self.stdout.write(f"CodeDistiller is running at http://{host}:{port}/ (Ctrl-C stops it)")

        stopping = False

        def on_signal(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        exit_code = 0
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    self.stderr.write(
                        f"{child.args[2]} stopped with exit code {child.returncode}; stopping the rest"
                    )
                    stopping, exit_code = True, 1
            time.sleep(0.2)
        self._stop(children)
        sys.exit(exit_code)

    def _start(self, argv, env=None):
        # A process group of its own: the children's own children (gunicorn and qcluster workers) are
        # reached by one killpg, and the terminal's Ctrl-C does not reach them before we decide.
        return subprocess.Popen(argv, start_new_session=True, env=env)

    def _stop(self, children):
        self.stdout.write("Stopping the web server and the workers...")
        for child in children:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECS
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in children:
            # Always kill what is left of the group, even when the leader exited: qcluster's worker
            # processes may outlive their parent.
            self._signal(child, signal.SIGKILL)
            child.wait()

    @staticmethod
    def _signal(child, signum):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass
