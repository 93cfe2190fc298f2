"""The local backend: each phase of an execution is one bubblewrap sandbox on this machine.

Inside the sandbox the program sees a read-only system (/usr and a few files of /etc), its job folder
at /job (the working directory), the Python environment at /env, a cache at /cache, the repository
read-only at /repo, a private /tmp, and nothing else of the host: no /root, /work, /home, /run or
DATA_DIR, no host processes, and no variable of the app's environment.

When the app runs as root, the sandbox runs as an unprivileged host uid, because the kernel does not
enforce RLIMIT_NPROC for root. An unprivileged bwrap cannot reach folders under a parent it may not
search (pytest's /tmp/pytest-of-root is 0700), so a first, root bwrap, which only creates a mount
namespace, mounts those folders under a staging folder it can reach; then it drops to that uid, sets
the limits, and starts the real, unprivileged sandbox with its user namespace.
"""

import codecs
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .base import (
    AUDIT_PY,
    RECORD_CAP,
    RECORDER_PATH,
    RUN_SH,
    CancelCheck,
    ExecutionRequest,
    ExecutionResult,
    Limits,
    OutputCallback,
    SandboxUnavailable,
    install_failure,
    kept_record,
)

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("main.py", "requirements.txt", "runscript.sh")
OUTPUT_CAP = 2_000_000  # characters kept per stream: the end, where errors are
POLL_SECS = 0.5
KILL_GRACE_SECS = 5

# What the program sees as its uid; the host uid behind it differs per run (see _host_uid).
INNER_UID = 1000
PASSWD = f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{INNER_UID}:{INNER_UID}:sandbox:/tmp:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = f"root:x:0:\nsandbox:x:{INNER_UID}:\nnogroup:x:65534:\n"

# The part of /etc that name resolution, TLS, pip, the dynamic linker and time zones need. The rest
# (passwd, shadow, the app's own config, ssh and database client settings) stays out.
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "debian_version",
    "fonts",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "networks",
    "nsswitch.conf",
    "os-release",
    "pip.conf",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
    "xdg/pip",
)
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Variables that configure pip or point at the system's CA bundle are the only ones taken from the
# app's environment; they hold no secrets of the app.
PASSED_VARIABLES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")
CERT_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

STAGE = "/tmp/sandbox-stage"  # in the root bwrap's own tmpfs, never the host's /tmp
OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory", re.I)
TOOL_ERROR = re.compile(r"^(bwrap|setpriv|prlimit): ")


@dataclass
class _Phase:
    exit_code: int | None
    timed_out: bool
    cancelled: bool
    secs: float
    stdout: str
    stderr: str
    record: bytes | None = None


class LocalSandbox:
    """Executes requests with bubblewrap.

    `on_output(stream, text)` is called from background reader threads, one call at a time, as output
    arrives: stream is "stdout" or "stderr" for the program and "install" for the install phase
    (its stdout and stderr together). An exception in it is logged and the run goes on.
    `should_cancel()` is called from the thread that called execute(), about every 0.5 s.

    One execution at a time per env_dir: two concurrent installs of the same environment would
    write into the same folder.
    """

    def __init__(self) -> None:
        self.bwrap = shutil.which("bwrap")
        if not self.bwrap:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        self.as_root = os.geteuid() == 0
        self.setpriv = shutil.which("setpriv")
        self.prlimit = shutil.which("prlimit")
        if not (self.setpriv and self.prlimit):
            raise SandboxUnavailable("setpriv and prlimit are missing: apt-get install util-linux")

    def execute(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> ExecutionResult:
        files = _checked_files(request.files)
        limits = request.limits
        uid = _host_uid(request.env_dir) if self.as_root else None

        job_dir = request.job_dir
        job_dir.mkdir(parents=True, exist_ok=True)
        _write_files(job_dir, files)
        _make_folder(job_dir, "to_save")
        env_hash = _env_key(request) or _env_hash(files)
        venvs = request.env_dir / "venvs"
        venv, ready = venvs / env_hash, venvs / f"{env_hash}.ready"
        cache = request.env_dir / "cache"
        venvs.mkdir(parents=True, exist_ok=True)
        cache.mkdir(exist_ok=True)
        if uid is not None:
            _chown_tree(job_dir, uid)
            if cache.stat().st_uid != uid:
                _chown_tree(cache, uid)

        emit = _Emitter(on_output)
        mounts = [
            ("--bind", job_dir, "/job"),
            ("--bind", cache, "/cache"),
            ("--ro-bind", RUN_SH, "/sandbox/run.sh"),
        ]
        if request.repo_dir is not None:
            mounts.append(("--ro-bind", request.repo_dir, "/repo"))

        env_reused = ready.exists()
        install = None
        if not env_reused:
            # A half-made environment from an install that failed or was killed is never reused.
            shutil.rmtree(venv, ignore_errors=True)
            venv.mkdir()
            if uid is not None:
                os.chown(venv, uid, uid)
            install = self._run_phase(
                "install",
                [*mounts, ("--bind", venv, "/env")],
                uid=uid,
                network=limits.network_install,
                timeout=limits.install_secs,
                limits=limits,
                emit=emit,
                should_cancel=should_cancel,
            )
            failure = install_failure(install, limits.install_secs, tool_error=_tool_error(install.stdout))
            if failure:
                return ExecutionResult.failed_install(install, failure)
            ready.touch()

        # Read-only in the run phase, so a program cannot spoil the environment for the next iteration.
        run_mounts = [*mounts, ("--ro-bind", venv, "/env")]
        if request.recording is not None:
            run_mounts.append(("--ro-bind", AUDIT_PY, RECORDER_PATH))
        run = self._run_phase(
            "run",
            run_mounts,
            uid=uid,
            network=limits.network_run,
            timeout=limits.wall_secs,
            limits=limits,
            emit=emit,
            should_cancel=should_cancel,
            recording=request.recording,
        )
        out_of_memory = run.exit_code not in (0, None) and bool(OUT_OF_MEMORY.search(run.stderr[-5000:]))
        return ExecutionResult(
            exit_code=run.exit_code,
            timed_out=run.timed_out,
            cancelled=run.cancelled,
            out_of_memory=out_of_memory,
            duration_secs=run.secs,
            install_secs=install.secs if install else 0.0,
            env_reused=env_reused,
            stdout=run.stdout,
            stderr=run.stderr,
            install_log=install.stdout if install else "",
            failure=_run_failure(run, limits, out_of_memory),
            record=run.record,
        )

    def _run_phase(
        self,
        phase: str,
        mounts: list[tuple[str, Path, str]],
        *,
        uid: int | None,
        network: bool,
        timeout: float,
        limits: Limits,
        emit: "_Emitter",
        should_cancel: CancelCheck | None,
        recording: dict | None = None,
    ) -> _Phase:
        passwd_fd, group_fd = _data_fd(PASSWD), _data_fd(GROUP)
        # The recorder's key travels in a pipe that the recorder drains and closes before main.py starts;
        # its record comes back through another pipe, read here, so the program finds no file to edit.
        record_fds, extra_env = (), {}
        if recording is not None:
            record_read, record_write = os.pipe()
            config_fd = _data_fd(json.dumps(recording))
            record_fds = (config_fd, record_write)
            extra_env["DISTILL_RECORD"] = f"{config_fd},{record_write}"
        argv = self._argv(
            phase,
            mounts,
            uid=uid,
            network=network,
            limits=limits,
            fds=(passwd_fd, group_fd),
            extra_env=extra_env,
        )
        merged = phase == "install"
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                # bwrap copies its own environment into the sandbox's pid 1, readable in /proc/1/environ.
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                pass_fds=(passwd_fd, group_fd, *record_fds),
                start_new_session=True,
            )
        except BaseException:
            if recording is not None:
                os.close(record_read)
            raise
        finally:
            for fd in (passwd_fd, group_fd, *record_fds):
                os.close(fd)

        out, err = _Tail(), _Tail()
        readers = [_reader(proc.stdout, "install" if merged else "stdout", out, emit)]
        if not merged:
            readers.append(_reader(proc.stderr, "stderr", err, emit))
        record = bytearray()
        if recording is not None:
            readers.append(_record_reader(record_read, record))

        timed_out = cancelled = False
        deadline = start + timeout
        while True:
            try:
                proc.wait(timeout=max(0.0, min(POLL_SECS, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                timed_out = True
            elif should_cancel is not None and should_cancel():
                cancelled = True
            if timed_out or cancelled:
                # Killing bwrap is enough for the whole tree: --die-with-parent chains down to the
                # sandbox's pid 1, and the kernel kills every process of a pid namespace whose init dies.
                _kill_group(proc.pid)
                proc.wait()
                break
        secs = time.monotonic() - start
        for reader in readers:
            reader.join(KILL_GRACE_SECS)
        return _Phase(
            exit_code=None if timed_out or cancelled else proc.returncode,
            timed_out=timed_out,
            cancelled=cancelled,
            secs=secs,
            stdout=out.text(),
            stderr=err.text(),
            record=kept_record(bytes(record)) if recording is not None else None,
        )

    def _argv(
        self,
        phase: str,
        mounts: list[tuple[str, Path, str]],
        *,
        uid: int | None,
        network: bool,
        limits: Limits,
        fds: tuple[int, int],
        extra_env: dict[str, str] | None = None,
    ) -> list[str]:
        argv: list[str] = []
        sources = [str(source) for _, source, _ in mounts]
        if uid is not None:
            argv += [self.bwrap, "--dev-bind", "/", "/", "--tmpfs", "/tmp", "--perms", "0755", "--dir", STAGE]
            for i, (option, source, _) in enumerate(mounts):
                sources[i] = f"{STAGE}/{i}"
                argv += [option, str(source), sources[i]]
            argv += [
                "--die-with-parent",
                "--",
                self.setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
            ]

        argv += [
            self.prlimit,
            f"--as={limits.memory_mb * 1024 * 1024}",
            f"--nproc={limits.max_procs}",
            "--core=0",
        ]
        # Only the program's CPU time is limited: pip compiling a large package may well need more.
        if limits.cpu_secs is not None and phase == "run":
            argv.append(
                f"--cpu={limits.cpu_secs}:{limits.cpu_secs + 1}"
            )  # SIGXCPU first, SIGKILL a second later
        argv.append("--")

        argv += [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        if network:
            argv.append("--share-net")
        argv += ["--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        argv += ["--uid", str(INNER_UID), "--gid", str(INNER_UID)]
        for name in SYSTEM_DIRS:
            host = Path("/", name)
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{name}"]
        for name in ETC_ENTRIES:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        argv += ["--ro-bind-data", str(fds[0]), "/etc/passwd", "--ro-bind-data", str(fds[1]), "/etc/group"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        # tmpfs lives in the host's memory, outside RLIMIT_AS: cap it at the memory limit.
        argv += ["--size", str(limits.memory_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        for (option, _, target), source in zip(mounts, sources, strict=True):
            argv += [option, source, target]
        # bwrap's own root, which holds the mount points (/etc among them), is writable unless told.
        argv += ["--remount-ro", "/", "--chdir", "/job", "--clearenv"]
        for name, value in {**_sandbox_environment(phase), **(extra_env or {})}.items():
            argv += ["--setenv", name, value]
        argv += ["/bin/bash", "/sandbox/run.sh", phase]
        return argv


def _sandbox_environment(phase: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "XDG_CACHE_HOME": "/cache",
        "PIP_CACHE_DIR": "/cache/pip",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    if phase == "run":
        # /env is read-only then, and __pycache__ folders would litter the job folder.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in PASSED_VARIABLES:
        if os.environ.get(name):
            env[name] = os.environ[name]
    for name in CERT_VARIABLES:
        if os.environ.get(name, "").startswith(("/etc/ssl/", "/usr/")):
            env[name] = os.environ[name]
    return env


def _host_uid(env_dir: Path) -> int:
    # RLIMIT_NPROC counts the processes of a uid across the machine: one uid per run (per env_dir)
    # keeps concurrent runs from eating into each other's limit. The range is above any real user's.
    digest = hashlib.sha256(str(env_dir.resolve()).encode()).digest()
    return 200_000 + int.from_bytes(digest[:4], "big") % 800_000


def _env_hash(files: dict[str, str]) -> str:
    key = "\0".join(["v1", files["requirements.txt"], files["runscript.sh"]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _env_key(request: ExecutionRequest) -> str | None:
    if request.env_key is not None and not re.fullmatch(r"[0-9a-f]{8,64}", request.env_key):
        raise ValueError(f"invalid environment key {request.env_key!r}")
    return request.env_key


def _checked_files(files: dict[str, str]) -> dict[str, str]:
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ValueError(f"missing files: {', '.join(missing)}")
    checked = {}
    for name, text in files.items():
        path = PurePosixPath(name)
        if not name or "\0" in name or path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"invalid file name {name!r}")
        checked[str(path)] = text
    return checked


def _write_files(job_dir: Path, files: dict[str, str]) -> None:
    """Writes the files as the app's user without following links a previous program may have left."""
    for name, text in files.items():
        *folders, base = PurePosixPath(name).parts
        folder = _make_folder(job_dir, *folders)
        fd = os.open(folder / base, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)


def _make_folder(job_dir: Path, *parts: str) -> Path:
    path = job_dir
    for part in parts:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ValueError(f"{path.relative_to(job_dir)} is not a folder in the job folder")
        path.mkdir(exist_ok=True)
    return path


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid, follow_symlinks=False)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)


def _data_fd(text: str) -> int:
    """A pipe holding text, for bwrap's --ro-bind-data: no temporary file to clean up."""
    read, write = os.pipe()
    os.write(write, text.encode())
    os.close(write)
    return read


def _record_reader(fd: int, record: bytearray) -> threading.Thread:
    def read() -> None:
        try:
            while chunk := os.read(fd, 65536):
                if len(record) <= RECORD_CAP:  # past the cap, drain so the program never blocks on it
                    record.extend(chunk)
        finally:
            os.close(fd)

    thread = threading.Thread(target=read, name="sandbox-record", daemon=True)
    thread.start()
    return thread


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_failure(run: _Phase, limits: Limits, out_of_memory: bool) -> str:
    if run.cancelled:
        return "cancelled"
    if run.timed_out:
        return f"timed out after {limits.wall_secs:g} s"
    if out_of_memory:
        return f"out of memory (limit {limits.memory_mb} MB)"
    if limits.cpu_secs is not None and run.exit_code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return f"CPU time limit exceeded ({limits.cpu_secs} s)"
    if run.exit_code != 0:
        return _tool_error(run.stderr)
    return ""


def _tool_error(output: str) -> str:
    """The sandbox's own tools failing (bwrap cannot create namespaces, ...) rather than the program."""
    first = output.lstrip().split("\n", 1)[0]
    return f"sandbox error: {first[:300]}" if TOOL_ERROR.match(first) else ""


class _Emitter:
    def __init__(self, callback: OutputCallback | None) -> None:
        self.callback = callback
        self.lock = threading.Lock()

    def __call__(self, stream: str, text: str) -> None:
        if self.callback is None:
            return
        with self.lock:
            try:
                self.callback(stream, text)
            except Exception:
                logger.exception("on_output failed; the sandbox keeps reading")


class _Tail:
    """Keeps the last OUTPUT_CAP characters of a stream and how many were dropped."""

    def __init__(self) -> None:
        self.chunks: deque[str] = deque()
        self.size = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)
        while self.size - len(self.chunks[0]) >= OUTPUT_CAP:
            self.size -= len(first := self.chunks.popleft())
            self.dropped += len(first)

    def text(self) -> str:
        whole = "".join(self.chunks)
        dropped = self.dropped + max(0, len(whole) - OUTPUT_CAP)
        whole = whole[-OUTPUT_CAP:]
        return f"[... {dropped} characters trimmed ...]\n{whole}" if dropped else whole


def _reader(pipe, stream: str, tail: _Tail, emit: _Emitter) -> threading.Thread:
    def read() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = pipe.fileno()
        try:
            while chunk := os.read(fd, 65536):
                if text := decoder.decode(chunk):
                    tail.add(text)
                    emit(stream, text)
            if text := decoder.decode(b"", final=True):
                tail.add(text)
                emit(stream, text)
        finally:
            pipe.close()

    thread = threading.Thread(target=read, name=f"sandbox-{stream}", daemon=True)
    thread.start()
    return thread
