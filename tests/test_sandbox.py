"""The local sandbox, with real bubblewrap and real processes; no database."""

import json
import os
import socket
import subprocess
import sys
import threading
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


def host_processes_with(marker: str, wait: float = 2) -> list[int]:
    """Processes on the host whose command line holds marker, waiting a moment for ones that are dying."""
    deadline = time.monotonic() + wait
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


def test_it_has_no_network_while_the_program_runs_and_never_the_hosts_loopback(run):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        main = f"""
            import json, socket
            seen = {{}}
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
                seen["loopback"] = "connected"
            except OSError as error:
                seen["loopback"] = str(error)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect(("1.1.1.1", 53))  # a route lookup: nothing is sent
                    seen["outbound"] = "routed"
                except OSError as error:
                    seen["outbound"] = str(error)
            print(json.dumps(seen))
            """
        offline = json.loads(run(main).stdout)
        online = json.loads(run(main, network_run=True).stdout)

    assert offline["outbound"] == "[Errno 101] Network is unreachable"
    assert online["outbound"] == "routed", "with the network on, the program has a way out"
    assert "connected" not in (offline["loopback"], online["loopback"])


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


# Escapes that once held (issue 17): each test shows the escape and fails without its fix. -------------


def test_its_memory_limit_holds_for_the_whole_sandbox_not_each_process(run):
    # Three children of 200 MB each fit a per-process limit of 300 MB; together they do not.
    result = run(
        """
        import os, select, sys
        ready_read, ready_write = os.pipe()
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                block = b"x" * (200 * 1024 * 1024)
                os.write(ready_write, b"1")
                select.select([], [], [], 30)
                os._exit(0)
            children.append(pid)
        held = b""
        while len(held) < 3:
            if not select.select([ready_read], [], [], 0.2)[0]:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid and os.WIFSIGNALED(status):
                    print("a child was killed", flush=True)
                    sys.exit(1)
                continue
            held += os.read(ready_read, 3)
        print("all held", flush=True)
        """,
        memory_mb=300,
    )

    assert "all held" not in result.stdout
    assert result.out_of_memory, (result.stdout, result.stderr, result.failure)
    assert result.failure == "out of memory (limit 300 MB)"


def test_it_stops_a_program_that_fills_its_folder(run, data_dir):
    # Each file is under the size of one file allowed; together they pass the folder's limit.
    result = run(
        """
        import time
        for n in range(8):
            with open(f"to_save/part{n}", "wb") as f:
                f.write(b"x" * (20 * 1024 * 1024))
            time.sleep(1)  # the watchdog looks every so often: on a loaded machine 0.3 s was too little
        time.sleep(30)
        """,
        disk_mb=50,
    )

    assert result.failure == "disk limit exceeded: the job folder passed 50 MB"
    assert not result.timed_out
    assert result.duration_secs < 15
    job_dir = data_dir / "runs" / "1" / "job"
    assert sum(f.stat().st_size for f in job_dir.rglob("*") if f.is_file()) < 120 * 1024 * 1024


def test_it_stops_a_file_larger_than_the_folder_allows(run):
    result = run("open('to_save/big', 'wb').write(b'x' * (80 * 1024 * 1024))", disk_mb=50)

    assert result.exit_code != 0
    assert "disk limit exceeded" in result.failure


def test_it_stops_a_program_that_fills_the_environment_cache(run):
    result = run(
        """
        import time
        for n in range(8):
            open(f"/cache/junk{n}", "wb").write(b"x" * (20 * 1024 * 1024))
        time.sleep(30)
        """,
        env_disk_mb=50,
    )

    assert result.failure == "disk limit exceeded: the environment folder passed 50 MB"


def test_its_dev_is_read_only_and_its_shared_memory_small(run):
    result = run(
        """
        import json
        written = 0
        try:
            with open("/dev/shm/fill", "wb") as f:
                for _ in range(200):
                    f.write(b"x" * (1024 * 1024))
                    f.flush()
                    written += 1
        except OSError:
            pass
        dev = []
        for path in ["/dev/fill-me", "/dev/null"]:
            try:
                open(path, "w").write("x")
                dev.append(path)
            except OSError:
                pass
        print(json.dumps({"shm_mb": written, "dev": dev}))
        """,
        shm_mb=16,
    )

    seen = json.loads(result.stdout)
    assert seen["shm_mb"] <= 16
    assert seen["dev"] == ["/dev/null"]


def test_it_keeps_saved_files_within_their_count_and_size(run, data_dir):
    result = run(
        """
        for n in range(12):
            open(f"to_save/f{n:02}.txt", "w").write("x" * 1000)
        """,
        max_saved_files=5,
    )

    saved = sorted(p.name for p in (data_dir / "runs" / "1" / "job" / "to_save").iterdir())
    assert saved == [f"f{n:02}.txt" for n in range(5)]
    assert result.notes == ["7 saved files were left out: past 5 files or 512 MB"]


def install_probe(sandbox, env_dir: Path, job_dir: Path, probe: str) -> dict:
    """Runs probe (Python) as the runscript of an install phase and returns what it printed as JSON."""
    result = execute(
        sandbox,
        "print('ran')",
        job_dir,
        env_dir,
        files={"runscript.sh": "python3 probe.py\n", "probe.py": dedent(probe)},
    )
    assert result.stdout == "ran\n", (result.install_log, result.failure)
    return json.loads(result.install_log.strip().splitlines()[-1])


def own_address() -> str:
    """This machine's first address that is not loopback: connecting to it never leaves the machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a route lookup only: UDP connect sends nothing
        return probe.getsockname()[0]


def test_the_install_phase_reaches_neither_the_hosts_loopback_nor_private_addresses(sandbox, tmp_path):
    host = own_address()
    with socket.create_server(("127.0.0.1", 0)) as loopback, socket.create_server((host, 0)) as private:
        ports = {"127.0.0.1": loopback.getsockname()[1], host: private.getsockname()[1]}
        seen = install_probe(
            sandbox,
            tmp_path / "env",
            tmp_path / "job",
            f"""
            import json, socket
            seen = {{"tcp": {{}}, "route": {{}}}}
            for address, port in {ports!r}.items():
                try:
                    socket.create_connection((address, port), timeout=3).close()
                    seen["tcp"][address] = "connected"
                except OSError as error:
                    seen["tcp"][address] = str(error)
            # A route lookup sends nothing: the private ranges must have none, the internet one.
            for address in ["10.1.2.3", "172.16.1.2", "192.168.1.2", "169.254.169.254", "1.1.1.1"]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    try:
                        probe.connect((address, 53))
                        seen["route"][address] = "routed"
                    except OSError as error:
                        seen["route"][address] = str(error)
            print(json.dumps(seen))
            """,
        )

    assert "connected" not in seen["tcp"].values(), seen
    assert seen["route"].pop("1.1.1.1") == "routed", "the install phase keeps its way to package indexes"
    assert "routed" not in seen["route"].values(), seen


def test_the_sandbox_dies_with_its_worker(shared_env, tmp_path):
    marker = f"{time.time_ns() % 10**9}.125"
    worker_py = tmp_path / "worker.py"
    # The marker goes in through the environment, so that only the program's own process shows it.
    worker_py.write_text(
        dedent(
            f"""
            import os, sys
            from pathlib import Path
            sys.path.insert(0, {str(SITE_ROOT)!r})
            from distill.sandbox import ExecutionRequest, Limits, get_sandbox
            main = f"import subprocess, time; subprocess.Popen(['sleep', '{{os.environ['MARKER']}}']); time.sleep(3600)"
            get_sandbox("local").execute(ExecutionRequest(
                files={{"main.py": main, "requirements.txt": {REQUIREMENTS!r}, "runscript.sh": {RUNSCRIPT!r}}},
                job_dir=Path({str(tmp_path / "job")!r}),
                env_dir=Path({str(shared_env)!r}),
                limits=Limits(wall_secs=120),
            ))
            """
        )
    )
    worker = subprocess.Popen([sys.executable, str(worker_py)], env={**os.environ, "MARKER": marker})
    try:
        deadline = time.monotonic() + 60
        while not host_processes_with(marker, wait=0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert host_processes_with(marker, wait=0), "the program started"
    finally:
        worker.kill()
        worker.wait()
    time.sleep(5)

    assert host_processes_with(marker, wait=0) == []


def test_two_executions_of_one_environment_folder_take_turns_and_neither_kills_the_other(sandbox, tmp_path):
    # The runs of one commit share its environment folder, and with it what marks an execution's
    # processes: the second must neither kill the first as a leftover nor run beside it.
    env = tmp_path / "env"
    main = """
        import time
        started = time.time()
        time.sleep(3)
        print(f"{started} {time.time()}")
    """
    results = {}

    def one(name):
        results[name] = execute(sandbox, main, tmp_path / name, env)

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=120)
    assert all(results[name].exit_code == 0 for name in ("a", "b")), results
    spans = sorted(tuple(map(float, results[name].stdout.split())) for name in ("a", "b"))
    assert spans[0][1] <= spans[1][0], f"the two programs ran at once: {spans}"


def test_an_execution_waiting_for_its_environment_folder_can_be_cancelled(sandbox, tmp_path):
    from distill.sandbox.local import _execution_lock

    env = tmp_path / "env"
    env.mkdir()
    with _execution_lock(env, None) as held:
        assert held
        started = time.monotonic()
        result = execute(sandbox, "print('never')", tmp_path / "job", env, should_cancel=lambda: True)
    assert result.cancelled and result.exit_code is None and "waiting" in result.failure
    assert time.monotonic() - started < 5


def test_a_network_that_could_not_be_set_up_is_set_up_once_more_before_anything_ran(
    sandbox, tmp_path, monkeypatch
):
    # Seen under load: the sandbox's namespace was gone between slirp4netns's start and the routes
    # ("nsenter: cannot open /proc/N/ns/net"). Nothing of the program had run: it is set up again.
    from distill.sandbox import local

    real_start, failures = local._Network.start, []

    def start_failing_once(self, proc, info_read, block_write, *, uid):
        if not failures:
            failures.append(proc.pid)
            os.close(info_read)
            os.close(block_write)
            return "sandbox error: could not close the private networks: nsenter: cannot open /proc/1/ns/net"
        return real_start(self, proc, info_read, block_write, uid=uid)

    monkeypatch.setattr(local._Network, "start", start_failing_once)

    # An environment of its own: the network is set up for an install, and the module's is installed.
    result = execute(sandbox, "print('ran once')\n", tmp_path / "job", tmp_path / "env")

    assert failures, "the first network set-up failed"
    assert result.failure == "" and result.exit_code == 0, (len(failures), result)
    assert result.stdout.count("ran once") == 1


def test_a_network_that_never_comes_up_is_tried_three_times_then_said(sandbox, tmp_path, monkeypatch):
    from distill.sandbox import local

    tries = []

    def start_failing(self, proc, info_read, block_write, *, uid):
        tries.append(proc.pid)
        os.close(info_read)
        os.close(block_write)
        return "sandbox error: could not close the private networks: nsenter: cannot open /proc/1/ns/net"

    monkeypatch.setattr(local._Network, "start", start_failing)
    monkeypatch.setattr(local, "SET_UP_RETRY_PAUSES", (0.0, 0.0))

    result = execute(sandbox, "print('never')\n", tmp_path / "job", tmp_path / "env")

    assert len(tries) == 3
    assert result.failure.startswith("sandbox error: could not close the private networks"), result
    assert "never" not in result.stdout


def test_a_sandbox_whose_network_could_not_be_set_up_says_what_bubblewrap_said(
    sandbox, tmp_path, monkeypatch
):
    # The set-up flake's cause is not known: bubblewrap's own words, when it has any, are in the failure.
    from distill.sandbox import local

    real_argv = local.LocalSandbox.argv

    def argv_bubblewrap_refuses(self, *args, **kwargs):
        argv = real_argv(self, *args, **kwargs)
        inner = argv.index("--unshare-all")
        return [*argv[:inner], "--no-such-option", *argv[inner:]]

    monkeypatch.setattr(local.LocalSandbox, "argv", argv_bubblewrap_refuses)
    monkeypatch.setattr(local, "SET_UP_RETRY_PAUSES", (0.0, 0.0))

    result = execute(sandbox, "print('never')\n", tmp_path / "job", tmp_path / "env")

    assert result.failure.startswith(
        "sandbox error: the network could not be set up: bubblewrap did not report"
    )
    assert result.failure.endswith("(bubblewrap said: bwrap: Unknown option --no-such-option)"), (
        result.failure
    )
    assert "never" not in result.stdout


def test_a_sandbox_that_could_not_join_its_cgroup_is_started_once_more(sandbox, tmp_path, monkeypatch):
    # Seen once after a worker running the same environment was killed: the child could not join the
    # cgroup, and Popen raised "Exception occurred in preexec_fn" before bubblewrap started.
    from distill.sandbox import cgroup

    real_attacher, calls = cgroup.SandboxCgroup.attacher, []

    def attacher_failing_once(self):
        calls.append(1)
        if len(calls) == 1:
            return lambda: os.open("/nonexistent/cgroup.procs", os.O_WRONLY)
        return real_attacher(self)

    monkeypatch.setattr(cgroup.SandboxCgroup, "attacher", attacher_failing_once)

    result = execute(sandbox, "print('ran once')\n", tmp_path / "job", tmp_path / "env")

    if not calls:
        pytest.skip("no cgroup on this machine: nothing joins one")
    assert result.failure == "" and result.exit_code == 0, result
    assert result.stdout.count("ran once") == 1
