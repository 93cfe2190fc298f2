"""The local sandbox, with real bubblewrap and real processes; no database."""

import json
import socket
import time
import uuid
from pathlib import Path
from textwrap import dedent

import pytest

from distill.sandbox import ExecutionRequest, ExecutionResult, Limits, SandboxUnavailable, get_sandbox

REQUIREMENTS = "# nothing to install\n"
RUNSCRIPT = "pip install -r requirements.txt\n"
SITE_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox():
    return get_sandbox("local")


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory):
    """One Python environment for the module: creating a venv takes seconds."""
    return tmp_path_factory.mktemp("env")


def execute(
    sandbox,
    main: str,
    job_dir: Path,
    env_dir: Path,
    *,
    files=None,
    on_output=None,
    should_cancel=None,
    **limits,
) -> ExecutionResult:
    request = ExecutionRequest(
        files={
            "main.py": dedent(main),
            "requirements.txt": REQUIREMENTS,
            "runscript.sh": RUNSCRIPT,
            **(files or {}),
        },
        job_dir=job_dir,
        env_dir=env_dir,
        limits=Limits(**{"wall_secs": 30, **limits}),
    )
    return sandbox.execute(request, on_output=on_output, should_cancel=should_cancel)


@pytest.fixture
def run(sandbox, shared_env, data_dir):
    """Runs main.py in a job folder under DATA_DIR, the way the app lays out its runs."""

    def run(main: str, **kwargs) -> ExecutionResult:
        return execute(sandbox, main, data_dir / "runs" / "1" / "job", shared_env, **kwargs)

    return run


def host_processes_with(marker: str) -> list[int]:
    """Processes on the host whose command line holds marker, waiting a moment for ones that are dying."""
    deadline = time.monotonic() + 2
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_it_runs_a_program_and_keeps_its_output_and_files(run, data_dir):
    result = run(
        """
        import json, sys
        print("hello from the sandbox")
        print("a warning", file=sys.stderr)
        json.dump({"accuracy": 0.9}, open("results.json", "w"))
        open("to_save/model.txt", "w").write("weights")
        """
    )

    assert result.exit_code == 0, result
    assert result.failure == ""
    assert result.stdout == "hello from the sandbox\n"
    assert result.stderr == "a warning\n"
    job_dir = data_dir / "runs" / "1" / "job"
    assert json.loads((job_dir / "results.json").read_text()) == {"accuracy": 0.9}
    assert (job_dir / "to_save" / "model.txt").read_text() == "weights"
    assert (job_dir / "runscript.sh").read_text() == RUNSCRIPT


def test_it_reports_a_non_zero_exit_code(run):
    result = run("import sys; print('bad'); sys.exit(3)")

    assert result.exit_code == 3
    assert result.failure == ""
    assert not (result.timed_out or result.cancelled or result.out_of_memory)


def test_it_streams_output_while_the_program_runs(run):
    chunks = []
    result = run(
        """
        import time
        print("first")
        time.sleep(1.5)
        print("second")
        """,
        on_output=lambda stream, text: chunks.append((time.monotonic(), stream, text)),
    )
    finished = time.monotonic()

    assert result.exit_code == 0
    first_at, stream, text = chunks[0]
    assert (stream, text[:5]) == ("stdout", "first")
    assert finished - first_at > 1
    assert "".join(text for _, _, text in chunks) == "first\nsecond\n"


def test_it_cannot_read_the_sites_files(run, data_dir):
    secret = data_dir / "secret_key"
    secret.write_text("the-site-secret")
    paths = [str(SITE_ROOT / "manage.py"), "/root", str(secret), "/etc/shadow", "/work", "/home"]
    assert Path(paths[0]).exists()

    result = run(
        f"""
        import json, os
        readable = []
        for path in {paths!r}:
            try:
                readable.append(os.listdir(path) if os.path.isdir(path) else open(path).read())
            except OSError:
                pass
        print(json.dumps({{"readable": readable, "root": sorted(os.listdir("/"))}}))
        """
    )

    seen = json.loads(result.stdout)
    assert seen["readable"] == []
    assert set(seen["root"]) <= {
        "bin",
        "cache",
        "dev",
        "env",
        "etc",
        "job",
        "lib",
        "lib64",
        "proc",
        "sandbox",
        "sbin",
        "tmp",
        "usr",
    }
    assert "the-site-secret" not in result.stdout + result.stderr


def test_it_cannot_write_outside_the_job_folder(run):
    marker = f"sandbox-{uuid.uuid4().hex}"
    result = run(
        f"""
        import json
        written = []
        for path in ["/usr/x", "/etc/x", "/env/x", "/sandbox/run.sh", "/x", "/tmp/{marker}", "/job/ok"]:
            try:
                open(path, "w").write("x")
                written.append(path)
            except OSError:
                pass
        print(json.dumps(written))
        """
    )

    assert json.loads(result.stdout) == [f"/tmp/{marker}", "/job/ok"]
    assert not Path("/tmp", marker).exists(), "its /tmp is private"


def test_it_sees_none_of_the_apps_environment(run, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "secret-key-value-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-value-456")
    monkeypatch.setenv("DATABASE_URL", "postgres://user:pw@db/x")

    result = run(
        """
        import os
        print(sorted(os.environ.items()))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(pid, open(f"/proc/{pid}/environ", "rb").read())
                except OSError as error:
                    print(pid, error)
        """
    )

    assert result.exit_code == 0, result.stderr
    for value in ["secret-key-value-123", "sk-openai-value-456", "postgres://", "PYENV", "/root"]:
        assert value not in result.stdout


def test_it_has_no_capabilities_and_is_not_root(run):
    result = run(
        """
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(os.getuid(), status["CapEff"].strip(), status["CapPrm"].strip(), status["NoNewPrivs"].strip())
        """
    )

    uid, effective, permitted, no_new_privs = result.stdout.split()
    assert uid != "0"
    assert int(effective, 16) == 0
    assert int(permitted, 16) == 0
    assert no_new_privs == "1"


def test_it_stops_a_program_at_its_memory_limit(run):
    result = run("block = bytearray(600 * 1024 * 1024)\nprint('allocated')", memory_mb=300)

    assert result.out_of_memory
    assert result.exit_code != 0
    assert "allocated" not in result.stdout
    assert result.failure == "out of memory (limit 300 MB)"


def test_it_stops_a_program_at_its_cpu_limit(run):
    result = run("while True: pass", cpu_secs=1)

    assert result.duration_secs < 5
    assert result.failure == "CPU time limit exceeded (1 s)"
    assert not result.timed_out


def test_it_stops_a_program_at_its_wall_clock_limit_with_everything_it_started(run):
    marker = f"{time.time_ns() % 10**9}.25"
    started = time.monotonic()
    result = run(
        f"""
        import subprocess, time
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        print("sleeping", flush=True)
        time.sleep(3600)
        """,
        wall_secs=2,
    )

    assert time.monotonic() - started < 6
    assert result.timed_out
    assert result.exit_code is None
    assert result.failure == "timed out after 2 s"
    assert result.stdout == "sleeping\n"
    assert host_processes_with(marker) == []


def test_it_kills_what_a_program_leaves_running_when_it_ends(run):
    marker = f"{time.time_ns() % 10**9}.5"
    result = run(f"import subprocess; subprocess.Popen(['sleep', '{marker}'], start_new_session=True)")

    assert result.exit_code == 0
    assert host_processes_with(marker) == []


def test_it_bounds_a_fork_loop(run):
    result = run(
        """
        import os, time
        children = 0
        try:
            for _ in range(2000):
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
        except BlockingIOError:
            pass
        print(children)
        """,
        max_procs=40,
    )

    assert result.exit_code == 0, result.stderr
    assert 0 < int(result.stdout) < 40


def test_it_kills_a_cancelled_program_quickly(run):
    marker = f"{time.time_ns() % 10**9}.75"
    started = time.monotonic()
    cancel_at = started + 1
    result = run(
        f"""
        import subprocess, time
        subprocess.Popen(["sleep", "{marker}"])
        time.sleep(3600)
        """,
        should_cancel=lambda: time.monotonic() > cancel_at,
    )

    assert time.monotonic() - started < 4
    assert result.cancelled
    assert result.exit_code is None
    assert result.failure == "cancelled"
    assert host_processes_with(marker) == []


def test_it_has_no_network_while_the_program_runs(run):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        main = f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
                print("connected")
            except OSError as error:
                print("no network:", error)
            """
        offline = run(main)
        online = run(main, network_run=True)

    assert offline.stdout.startswith("no network"), offline.stdout
    assert online.stdout == "connected\n", "the same program reaches the host when the network is on"


def test_it_reuses_the_environment_until_the_requirements_change(sandbox, tmp_path):
    main = "print('ok')"

    first = execute(sandbox, main, tmp_path / "job1", tmp_path / "env")
    second = execute(sandbox, main, tmp_path / "job2", tmp_path / "env")
    changed = execute(
        sandbox, main, tmp_path / "job3", tmp_path / "env", files={"requirements.txt": "# other\n"}
    )

    assert (first.env_reused, second.env_reused, changed.env_reused) == (False, True, False)
    assert first.install_secs > 0
    assert second.install_secs == 0
    assert [first.stdout, second.stdout, changed.stdout] == ["ok\n"] * 3


def test_a_failing_install_is_reported_and_the_program_not_run(sandbox, tmp_path):
    files = {"runscript.sh": "echo 'no such package' >&2\nexit 3\n"}
    main = "open('ran', 'w').write('yes')"

    result = execute(sandbox, main, tmp_path / "job", tmp_path / "env", files=files)
    again = execute(sandbox, main, tmp_path / "job2", tmp_path / "env", files=files)

    assert result.failure == "install failed: exit code 3: no such package"
    assert result.exit_code == 3
    assert "no such package" in result.install_log
    assert not (tmp_path / "job" / "ran").exists()
    assert not again.env_reused, "a failed environment is not marked ready"


@pytest.mark.parametrize("name", ["../escape.py", "/etc/passwd", "a/../../b", ""])
def test_it_rejects_file_names_that_leave_the_job_folder(run, name):
    with pytest.raises(ValueError):
        run("print(1)", files={name: "x"})


def test_unknown_backends_are_unavailable():
    with pytest.raises(SandboxUnavailable, match="unknown sandbox backend"):
        get_sandbox("docker")
    with pytest.raises(SandboxUnavailable, match="modal"):
        get_sandbox("modal")


def test_it_is_unavailable_without_bubblewrap(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        get_sandbox("local")


def test_its_output_is_capped_at_the_end(run):
    result = run("import sys; sys.stdout.write('x' * 3_000_000 + 'end')")

    assert result.exit_code == 0
    assert result.stdout.startswith("[... ")
    assert result.stdout.endswith("xend")
    assert len(result.stdout) < 2_100_000


def test_its_output_is_decoded_with_replacement(run):
    result = run("import sys; sys.stdout.buffer.write(b'caf\\xc3\\xa9 \\xff')")

    assert result.stdout == "café \ufffd"


def test_it_reads_the_repository_read_only(sandbox, shared_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "lib.py").write_text("VALUE = 42\n")
    request = ExecutionRequest(
        files={
            "main.py": "import sys; sys.path.insert(0, '/repo'); import lib; print(lib.VALUE); open('/repo/x', 'w')",
            "requirements.txt": REQUIREMENTS,
            "runscript.sh": RUNSCRIPT,
        },
        job_dir=tmp_path / "job",
        env_dir=shared_env,
        repo_dir=repo,
        limits=Limits(wall_secs=30),
    )

    result = sandbox.execute(request)

    assert result.stdout == "42\n"
    assert "Read-only file system" in result.stderr
    assert not (repo / "x").exists()
