"""What a sandbox is asked to run and what it reports back; no framework, so it is testable alone."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# Both backends run these inside their sandbox: the phases of a program (install, run) and the recorder of
# which repository code the program runs, which the run phase loads as `sitecustomize`.
RUN_SH = Path(__file__).with_name("run.sh")
AUDIT_PY = Path(__file__).with_name("audit.py")
RECORDER_PATH = "/sandbox/record/sitecustomize.py"  # where audit.py goes; run.sh puts its folder on the path
RECORD_CAP = 32 * 1024 * 1024  # bytes of record kept; past it the record is incomplete and proves nothing


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here; the message names what is missing."""


@dataclass
class Limits:
    wall_secs: float  # wall-clock limit for the program run (main.py)
    install_secs: float = 900  # wall-clock limit for the install phase
    memory_mb: int = 4096  # address space per process: numpy/openblas reserve a lot of virtual memory
    max_procs: int = 256  # processes and threads together
    cpu_secs: int | None = None  # CPU seconds per process
    network_install: bool = True
    network_run: bool = False


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

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failure

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
        )


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


OutputCallback = Callable[[str, str], None]
CancelCheck = Callable[[], bool]


class Sandbox(Protocol):
    def execute(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> ExecutionResult: ...
