"""What a sandbox is asked to run and what it reports back, and what both backends share in doing it
(checking the files, reading output, building the result, keeping saved files in bounds); no framework,
so it is testable alone."""

import codecs
import hashlib
import logging
import os
import re
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

logger = logging.getLogger(__name__)

# Both backends run these inside their sandbox: the phases of a program (install, run) and the recorder of
# which repository code the program runs, which the run phase loads as `sitecustomize`.
RUN_SH = Path(__file__).with_name("run.sh")
AUDIT_PY = Path(__file__).with_name("audit.py")
RECORDER_PATH = "/sandbox/record/sitecustomize.py"  # where audit.py goes; run.sh puts its folder on the path
RECORD_CAP = 32 * 1024 * 1024  # bytes of record kept; past it the record is incomplete and proves nothing
REQUIRED_FILES = ("main.py", "requirements.txt", "runscript.sh")
OUTPUT_CAP = 2_000_000  # characters kept per stream: the end, where errors are
OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory", re.I)
FILE_TOO_LARGE = re.compile(r"\[Errno 27\] File too large|File size limit exceeded")
MB = 1024 * 1024


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here; the message names what is missing."""


@dataclass
class Limits:
    wall_secs: float  # wall-clock limit for the program run (main.py)
    install_secs: float = 900  # wall-clock limit for the install phase
    # Memory of the whole sandbox where a cgroup can be made (distill/sandbox/cgroup.py), its tmpfs
    # folders included; also the address space of each process, where numpy/openblas reserve a lot.
    memory_mb: int = 4096
    max_procs: int = 256  # processes and threads together
    cpu_secs: int | None = None  # CPU seconds: of each process, and of the whole sandbox with a cgroup
    network_install: bool = True
    network_run: bool = False
    disk_mb: int = 4096  # the job folder: what the program writes, to_save/ among it; also the largest file
    env_disk_mb: int = 16384  # the run's environment folder: its venvs and the download cache
    shm_mb: int = 256  # /dev/shm, in memory (inside memory_mb with a cgroup)
    max_saved_files: int = 500  # files of to_save/ kept; past either bound the rest are left out
    max_saved_mb: int = 512


@dataclass
class ExecutionRequest:
    files: dict[str, str]  # at least main.py, requirements.txt, runscript.sh; relative paths
    job_dir: Path  # the only writable host folder the program sees; outputs land here
    env_dir: Path  # caches Python environments across the iterations of one run
    repo_dir: Path | None = None  # the cloned repository, read-only at /repo
    limits: Limits = field(default_factory=lambda: Limits(wall_secs=3600))
    # Record which of the repository's code the program runs (distill/sandbox/audit.py): the recorder's
    # configuration, {"key": hex, "packages": [...], "modules": [...]}; None records nothing. The key must
    # reach the recorder through a file descriptor or a file the program cannot read, never the environment.
    recording: dict | None = None
    # Names the environment in env_dir that the install phase makes and later requests reuse; None keys it
    # by requirements.txt and runscript.sh. The environment step (distill/pipeline/environment.py) keys it
    # by (commit, extra requirements), so programs reuse the environment it proved whatever their files say.
    env_key: str | None = None


@dataclass
class ExecutionResult:
    exit_code: int | None  # None when killed before exiting
    timed_out: bool
    cancelled: bool
    out_of_memory: bool  # best effort: MemoryError or an allocation failure at the memory limit
    duration_secs: float  # the run phase
    install_secs: float  # the install phase; 0 when the environment was reused
    env_reused: bool
    stdout: str
    stderr: str
    install_log: str
    failure: str  # "" or a one-line reason from the sandbox itself
    record: bytes | None = None  # the recorder's signed lines, when recording was asked for and done
    install_failed: bool = False  # the install phase failed (timed out, cancelled): main.py never ran
    cpu_secs: float | None = None  # CPU time of the run phase's processes together, when a cgroup counted it
    notes: list[str] = field(
        default_factory=list
    )  # what the curator should know: files left out, weaker limits

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failure

    @classmethod
    def of_run(
        cls, run: "Phase", install: "Phase | None", *, failure: str, record: bytes | None = None, notes=()
    ) -> "ExecutionResult":
        """The result of an execution whose program ran; `failure` from `run_failure` (or the backend's)."""
        return cls(
            exit_code=run.exit_code,
            timed_out=run.timed_out,
            cancelled=run.cancelled,
            out_of_memory=run.out_of_memory,
            duration_secs=run.secs,
            install_secs=install.secs if install else 0.0,
            env_reused=install is None,
            stdout=run.stdout,
            stderr=run.stderr,
            install_log=install.stdout if install else "",
            failure=failure,
            record=record,
            cpu_secs=run.cpu_secs,
            notes=list(dict.fromkeys([*(install.notes if install else []), *run.notes, *notes])),
        )

    @classmethod
    def cancelled_while_waiting(cls) -> "ExecutionResult":
        """Cancelled before it started, while another execution of its environment folder ran."""
        return cls(
            exit_code=None, timed_out=False, cancelled=True, out_of_memory=False, duration_secs=0.0,
            install_secs=0.0, env_reused=False, stdout="", stderr="", install_log="",
            failure="cancelled while waiting for another execution of the same environment",
        )  # fmt: skip

    @classmethod
    def failed_install(cls, install, failure: str) -> "ExecutionResult":
        """The result when the install phase failed and main.py was never run. `install` is a backend's
        phase record: exit_code, timed_out, cancelled, secs, stdout."""
        return cls(
            exit_code=install.exit_code,
            timed_out=install.timed_out,
            cancelled=install.cancelled,
            out_of_memory=False,
            duration_secs=0.0,
            install_secs=install.secs,
            env_reused=False,
            stdout="",
            stderr="",
            install_log=install.stdout,
            failure=failure,
            install_failed=True,
            notes=list(install.notes),
        )


@dataclass
class Phase:
    """One phase (install or run) as a backend saw it."""

    exit_code: int | None
    timed_out: bool
    cancelled: bool
    secs: float
    stdout: str
    stderr: str
    record: bytes | None = None
    out_of_memory: bool = False  # a cgroup counted an out-of-memory kill, or the output says so
    cpu_secs: float | None = None
    failure: str = ""  # a limit the backend enforced itself (disk), or its own tools failing
    notes: list[str] = field(default_factory=list)


def out_of_memory(exit_code: int | None, stderr: str) -> bool:
    """Best effort from the output alone: MemoryError or an allocation failure at the memory limit."""
    return exit_code not in (0, None) and bool(OUT_OF_MEMORY.search(stderr[-5000:]))


def run_failure(run: Phase, limits: Limits, *, memory_mb: int | None = None) -> str:
    """One line on why the run phase failed in the sandbox's terms, or "" (an exit code alone is not one)."""
    if run.cancelled:
        return "cancelled"
    if run.timed_out:
        return f"timed out after {limits.wall_secs:g} s"
    if run.out_of_memory:
        return f"out of memory (limit {memory_mb or limits.memory_mb} MB)"
    if run.failure:
        return run.failure
    if run.exit_code not in (0, None) and (
        run.exit_code == 128 + signal.SIGXFSZ or FILE_TOO_LARGE.search(run.stderr[-5000:])
    ):
        return f"disk limit exceeded: a file passed {limits.disk_mb} MB"
    if limits.cpu_secs is not None and run.exit_code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return f"CPU time limit exceeded ({limits.cpu_secs} s)"
    return ""


def install_failure(install, limit_secs: float, *, tool_error: str = "") -> str:
    """One line on why an install phase failed, or "" when it did not."""
    if install.cancelled:
        return "cancelled during the install"
    if install.timed_out:
        return f"install timed out after {limit_secs:g} s"
    if install.exit_code != 0:
        if tool_error:
            return tool_error
        last = next((line for line in reversed(install.stdout.splitlines()) if line.strip()), "")
        return f"install failed: exit code {install.exit_code}" + (f": {last.strip()[:200]}" if last else "")
    return ""


def kept_record(record: bytes) -> bytes | None:
    """The record as the host hands it on: a record past RECORD_CAP was cut, and is no record at all."""
    return record if len(record) <= RECORD_CAP else None


def checked_files(files: dict[str, str]) -> dict[str, str]:
    """The iteration's files, refused when one is missing or a name leaves the job folder."""
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


def env_hash(request: ExecutionRequest, files: dict[str, str]) -> str:
    """The key of an installed environment: the request's env_key, else what the install phase reads."""
    if request.env_key is not None:
        if not re.fullmatch(r"[0-9a-f]{8,64}", request.env_key):
            raise ValueError(f"invalid environment key {request.env_key!r}")
        return request.env_key
    key = "\0".join(["v1", files["requirements.txt"], files["runscript.sh"]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cap_saved_files(folder: Path, limits: Limits) -> list[str]:
    """Removes the files of to_save/ past max_saved_files or max_saved_mb (in name order, as listed) and
    links; returns the note for the page when some were left out. Folders left empty go too."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    kept = size = left_out = 0
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_dir():
            file_size = path.lstat().st_size
            if path.is_file() and not path.is_symlink() and kept < limits.max_saved_files:
                if size + file_size <= limits.max_saved_mb * MB:
                    kept, size = kept + 1, size + file_size
                    continue
            path.unlink()
            left_out += 1
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
    if not left_out:
        return []
    return [
        f"{left_out} saved file{'s' if left_out != 1 else ''} {'were' if left_out != 1 else 'was'} left out: "
        f"past {limits.max_saved_files} files or {limits.max_saved_mb} MB"
    ]


OutputCallback = Callable[[str, str], None]
CancelCheck = Callable[[], bool]


class Emitter:
    """Hands output to the caller's on_output one call at a time; a failing callback never stops a run."""

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


class Tail:
    """Keeps the last OUTPUT_CAP characters of a stream and how many were dropped."""

    def __init__(self) -> None:
        self.chunks: deque[str] = deque()
        self.size = 0
        self.dropped = 0
        self.lock = threading.Lock()  # two readers may share one tail (an install log of both streams)

    def add(self, text: str) -> None:
        with self.lock:
            self.chunks.append(text)
            self.size += len(text)
            while self.size - len(self.chunks[0]) >= OUTPUT_CAP:
                self.size -= len(first := self.chunks.popleft())
                self.dropped += len(first)

    def text(self) -> str:
        with self.lock:
            whole = "".join(self.chunks)
            dropped = self.dropped + max(0, len(whole) - OUTPUT_CAP)
        whole = whole[-OUTPUT_CAP:]
        return f"[... {dropped} characters trimmed ...]\n{whole}" if dropped else whole


def read_chunks(chunks, stream: str, tail: Tail, emit: Emitter, *, on_end=None) -> threading.Thread:
    """A reader thread: each text chunk goes to the tail and to on_output; `on_end` runs when it stops."""

    def read() -> None:
        try:
            for text in chunks:
                if text:
                    tail.add(text)
                    emit(stream, text)
        except Exception as exc:  # a stream that ends with an error (a terminated Modal sandbox) just ends
            logger.debug("sandbox: %s stream ended: %s", stream, exc)
        finally:
            if on_end is not None:
                on_end()

    thread = threading.Thread(target=read, name=f"sandbox-{stream}", daemon=True)
    thread.start()
    return thread


def decoded(fd: int):
    """The text read from a file descriptor until its end, decoded as UTF-8 with replacement."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(fd, 65536):
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


class Sandbox(Protocol):
    def execute(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> ExecutionResult: ...
