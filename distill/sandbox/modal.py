"""The Modal backend: each phase of an execution runs in a `modal.Sandbox` in Modal's cloud.

The same two phases as the local backend, in two sandboxes so that each has its own network setting:

- install: a sandbox from the base image (Debian slim, Python 3.12, git, wget, curl) with the network
  on; the iteration's files are written with `sb.filesystem`, the runscript installs the dependencies
  into a venv at /env, and the sandbox's filesystem is snapshotted into an image;
- run: a sandbox from that image, with the network as the profile says, runs `python main.py` in /job;
  results.json, log.json and to_save/ come back into `request.job_dir` as one tar archive.

Both phases run the local backend's run.sh, and a recorded run loads the same recorder (audit.py) as
`sitecustomize`: the record that proves the program used the repository is made, signed and checked
exactly as locally. Only its two channels differ, as Modal offers no file descriptors of the host:

- the recorder's configuration, with its signing key, goes in on the stdin of the run's `sb.exec`, which
  phase.sh moves to a descriptor for the recorder before main.py starts; the recorder reads it to its end
  and closes it, as it does the local pipe. So the key is never in the environment, on a command line or
  in a file. A file written with `sb.filesystem` and removed by the recorder would be gone too, but it
  would sit on the sandbox's disk (and in a snapshot) until then, and stay there if the recorder failed
  to start; stdin is a pipe that only this process has and that holds the key only until it is read.
  (Tested with a stand-in for Modal; what Modal's own agent keeps of a process's stdin is not known.)
- the signed lines go to a file in the sandbox, read back after the program ends (locally a pipe read
  as they come). The program, root in its sandbox, can remove, cut or add to that file, but cannot
  write a line that verifies without the key: what it does to the file can make the verdict unproven,
  never proven. A timed-out or cancelled program brings no record back, and is unproven too.

What no channel can give, in Modal as locally: the install phase runs the model's runscript, which could
plant code (a .pth file, a changed /env/bin/python) that runs before the recorder and reads its key. The
recorder guards against a program that bypasses it by accident or shortcut, not against one built to.

The snapshot's image id is kept in the run's env_dir, keyed like the local venvs (requirements.txt and
runscript.sh), so the later iterations of a run that keep their dependencies skip the install phase.
env_dir goes when the run finishes, and so does the reuse: the images expire on Modal after two days.

Every sandbox is terminated in a `finally`, on success, failure, timeout and cancel; its own Modal
timeout (the phase's limit plus a margin) also ends it if this worker dies first. Output streams live
from `sb.exec` through `on_output`. A timed-out or cancelled program brings nothing back: the sandbox
is terminated at once and only the output already streamed is kept.

All Modal calls go through `ModalClient` and `ModalBox`: the tests replace them with a fake.
`import modal` (slow: about a second) happens only on the first execution in a process.
"""

import json
import logging
import os
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .base import (
    AUDIT_PY,
    RECORD_CAP,
    RECORDER_PATH,
    RUN_SH,
    CancelCheck,
    Emitter,
    ExecutionRequest,
    ExecutionResult,
    OutputCallback,
    Phase,
    SandboxUnavailable,
    Tail,
    cap_saved_files,
    checked_files,
    env_hash,
    install_failure,
    kept_record,
    out_of_memory,
    read_chunks,
    run_failure,
)

logger = logging.getLogger(__name__)

CREDENTIALS = ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")
POLL_SECS = 0.5
READER_GRACE_SECS = 5
# Added to each phase's limit for the sandbox's own lifetime: our deadline acts first; Modal's ends a
# sandbox whose worker died before it could terminate it.
LIFETIME_MARGIN_SECS = 120
SNAPSHOT_TTL_SECS = 2 * 24 * 3600
MAX_OUTPUT_ARCHIVE_BYTES = 200 * 1024 * 1024
REPO_ARCHIVE = "/tmp/repo.tar.gz"
OUTPUT_ARCHIVE = "/tmp/outputs.tar.gz"
PHASE_SCRIPT = "/sandbox/phase.sh"
RUN_SCRIPT = "/sandbox/run.sh"
RECORD_READ_SECS = 60

# Runs inside the sandbox as `phase.sh prepare|install|run|pack|record`; install and run are run.sh's.
PHASE_SH = r"""#!/bin/bash
set -u
case "${1:-}" in
prepare)
  # A fresh /job for this iteration: a snapshot may hold the files of the one that installed it. The
  # recorder's folder and record belong to the host, whatever the install phase left there.
  rm -rf /job /sandbox/record /sandbox/record.log && mkdir -p /job/to_save /repo || exit
  if [ -f /tmp/repo.tar.gz ]; then
    tar -xzf /tmp/repo.tar.gz -C /repo && rm -f /tmp/repo.tar.gz && chmod -R a-w /repo || exit
  fi
  ;;
install)
  exec bash /sandbox/run.sh install
  ;;
run)
  # The program's stdin is empty, as locally. For a record, stdin holds the recorder's configuration
  # (the host closes it after writing): it moves to descriptor 3, and the record is appended to on 4,
  # so that lines a program writes there stay in it, and fail their check, rather than being overwritten.
  if [ -n "${DISTILL_RECORD:-}" ]; then
    exec 3<&0 </dev/null 4>>/sandbox/record.log || exit
    export DISTILL_RECORD=3,4
  else
    exec </dev/null
  fi
  exec bash /sandbox/run.sh run
  ;;
record)
  # Only a regular file, and no more than asked: the program may have put anything in its place.
  if [ -f /sandbox/record.log ] && [ ! -L /sandbox/record.log ]; then
    exec timeout "$3" head -c "$2" /sandbox/record.log
  fi
  echo "no record" >&2
  exit 1
  ;;
pack)
  cd /job || exit
  names=()
  for name in results.json log.json to_save; do
    if [ -e "$name" ] && [ ! -L "$name" ]; then names+=("$name"); fi
  done
  if [ ${#names[@]} -eq 0 ]; then
    tar -czf /tmp/outputs.tar.gz -T /dev/null || exit
  else
    tar -czf /tmp/outputs.tar.gz "${names[@]}" || exit
  fi
  stat -c %s /tmp/outputs.tar.gz
  ;;
*)
  echo "usage: phase.sh prepare|install|run|pack|record" >&2
  exit 2
  ;;
esac
"""

ENVIRONMENT = {
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "MPLBACKEND": "Agg",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
}


@dataclass
class ModalOptions:
    """A profile's `modal` section; see distill/profiles/__init__.py."""

    cpu: float = 2.0
    memory_mb: int | None = None  # None: the profile's memory_mb
    python_version: str = "3.12"
    apt_packages: list[str] = field(default_factory=lambda: ["git", "wget", "curl"])
    app_name: str = "codedistiller"


def credentials_missing() -> list[str]:
    return [name for name in CREDENTIALS if not os.environ.get(name)]


# The few Modal calls, behind a small client --------------------------------------------------------------


class ModalProcess:
    """A command started with `sb.exec`: text streams to iterate, and its exit code."""

    def __init__(self, process) -> None:
        self._process = process

    @property
    def stdout(self) -> Iterable[str]:
        return self._process.stdout

    @property
    def stderr(self) -> Iterable[str]:
        return self._process.stderr

    def wait(self) -> int:
        return self._process.wait()


class ModalBox:
    """One running `modal.Sandbox`."""

    def __init__(self, sandbox) -> None:
        self._sandbox = sandbox

    @property
    def id(self) -> str:
        return self._sandbox.object_id

    def write_file(self, remote_path: str, data: bytes) -> None:
        self._sandbox.filesystem.write_bytes(data, remote_path)

    def upload(self, local_path: Path, remote_path: str) -> None:
        self._sandbox.filesystem.copy_from_local(local_path, remote_path)

    def download(self, remote_path: str, local_path: Path) -> None:
        self._sandbox.filesystem.copy_to_local(remote_path, local_path)

    def exec(self, *argv: str, workdir: str, env: dict[str, str], stdin: bytes | None = None) -> ModalProcess:
        """Starts argv; stdin, when given, is written whole and closed before this returns."""
        process = self._sandbox.exec(*argv, workdir=workdir, env=env, text=True)
        if stdin is not None:
            process.stdin.write(stdin)
            process.stdin.write_eof()
            process.stdin.drain()
        return ModalProcess(process)

    def snapshot(self) -> str:
        """The id of an image of the sandbox's whole filesystem."""
        return self._sandbox.snapshot_filesystem(ttl=SNAPSHOT_TTL_SECS).object_id

    def terminate(self) -> None:
        self._sandbox.terminate()


class ModalClient:
    """Creates sandboxes in this process's Modal app, looked up once and kept."""

    _lock = threading.Lock()
    _apps: dict[str, object] = {}
    _images: dict[tuple, object] = {}

    def __init__(self, options: ModalOptions) -> None:
        self.options = options

    def create(self, *, image_id: str | None, cpu: float, memory_mb: int, timeout_secs: int, network: bool):
        import modal

        image = modal.Image.from_id(image_id) if image_id else self._base_image(modal)
        sandbox = modal.Sandbox.create(
            app=self._app(modal),
            image=image,
            cpu=cpu,
            memory=(memory_mb, memory_mb),  # request and hard limit: the program dies at the limit
            timeout=timeout_secs,
            workdir="/",
            block_network=not network,
        )
        return ModalBox(sandbox)

    def _app(self, modal):
        name = self.options.app_name
        with self._lock:
            if name not in self._apps:
                self._apps[name] = modal.App.lookup(name, create_if_missing=True)
            return self._apps[name]

    def _base_image(self, modal):
        key = (self.options.python_version, tuple(self.options.apt_packages))
        with self._lock:
            if key not in self._images:
                image = modal.Image.debian_slim(python_version=self.options.python_version)
                if self.options.apt_packages:
                    image = image.apt_install(*self.options.apt_packages)
                self._images[key] = image
            return self._images[key]


# The backend ------------------------------------------------------------------------------------------


class ModalSandbox:
    """Executes requests in Modal sandboxes; `on_output` and `should_cancel` as in LocalSandbox."""

    def __init__(self, options: ModalOptions | None = None, *, client=None) -> None:
        missing = credentials_missing()
        if missing and client is None:
            raise SandboxUnavailable(
                f"the modal sandbox needs Modal credentials: set {' and '.join(missing)} "
                "(from modal.com, Settings → API tokens), or use a profile with the local sandbox"
            )
        self.options = options or ModalOptions()
        self.client = client or ModalClient(self.options)

    def execute(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> ExecutionResult:
        files = checked_files(request.files)
        limits = request.limits
        memory_mb = self.options.memory_mb or limits.memory_mb
        request.job_dir.mkdir(parents=True, exist_ok=True)
        (request.job_dir / "to_save").mkdir(exist_ok=True)
        emit = Emitter(on_output)
        stopped: list = []

        def stop(box) -> None:  # once per sandbox: a timeout stops it early, the finally again
            if not any(box is done for done in stopped):
                stopped.append(box)
                self._terminate(box)

        cache = request.env_dir / "modal"
        cache.mkdir(parents=True, exist_ok=True)
        image_file = cache / f"{env_hash(request, files)}.image"
        image_id = image_file.read_text().strip() if image_file.is_file() else ""
        env_reused = bool(image_id)
        install = None
        if not env_reused:
            box = self._create(None, limits.install_secs, memory_mb, network=limits.network_install)
            try:
                self._prepare(box, files, request.repo_dir)
                install = self._phase(
                    box, "install", limits.install_secs, emit=emit, should_cancel=should_cancel, stop=stop
                )
                failure = install_failure(install, limits.install_secs)
                if failure:
                    return ExecutionResult.failed_install(install, failure)
                image_id = self._call("snapshot the installed environment", box.snapshot)
                image_file.write_text(image_id)
            finally:
                stop(box)

        try:
            box = self._create(image_id, limits.wall_secs, memory_mb, network=limits.network_run)
        except SandboxUnavailable:
            if not env_reused:
                raise
            # The snapshot expired or was deleted on Modal: install again, once.
            logger.warning("modal: snapshot %s is gone; installing again", image_id)
            image_file.unlink(missing_ok=True)
            return self.execute(request, on_output=on_output, should_cancel=should_cancel)
        recording = request.recording
        try:
            self._prepare(box, files, None, recorder=recording is not None)
            run = self._phase(
                box,
                "run",
                limits.wall_secs,
                emit=emit,
                should_cancel=should_cancel,
                stop=stop,
                recording=recording,
            )
            copy_failure, record = "", None
            if not (run.timed_out or run.cancelled):
                if recording is not None:
                    record = self._read_record(box)
                copy_failure = self._copy_outputs(box, request.job_dir)
        finally:
            stop(box)

        run.out_of_memory = out_of_memory(run.exit_code, run.stderr)
        failure = run_failure(run, limits, memory_mb=memory_mb) or copy_failure
        notes = cap_saved_files(request.job_dir / "to_save", limits)
        return ExecutionResult.of_run(run, install, failure=failure, record=record, notes=notes)

    # Steps --------------------------------------------------------------------------------------------

    def _create(self, image_id: str | None, phase_secs: float, memory_mb: int, *, network: bool):
        return self._call(
            "create a sandbox",
            lambda: self.client.create(
                image_id=image_id,
                cpu=self.options.cpu,
                memory_mb=memory_mb,
                timeout_secs=int(phase_secs) + LIFETIME_MARGIN_SECS,
                network=network,
            ),
        )

    def _prepare(self, box, files: dict[str, str], repo_dir: Path | None, *, recorder: bool = False) -> None:
        def prepare():
            box.write_file(PHASE_SCRIPT, PHASE_SH.encode())
            box.write_file(RUN_SCRIPT, RUN_SH.read_bytes())
            if repo_dir is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    archive = Path(tmp) / "repo.tar.gz"
                    _pack_repository(repo_dir, archive)
                    box.upload(archive, REPO_ARCHIVE)
            process = box.exec("bash", PHASE_SCRIPT, "prepare", workdir="/", env=ENVIRONMENT)
            output = "".join(process.stderr)
            if process.wait() != 0:
                raise SandboxUnavailable(f"preparing the sandbox failed: {output.strip()[-300:]}")
            for name, text in files.items():
                box.write_file(f"/job/{name}", text.encode())
            if recorder:
                box.write_file(RECORDER_PATH, AUDIT_PY.read_bytes())

        self._call("write the files into the sandbox", prepare)

    def _phase(
        self,
        box,
        phase: str,
        timeout: float,
        *,
        emit: Emitter,
        should_cancel: CancelCheck | None,
        stop,
        recording: dict | None = None,
    ) -> Phase:
        merged = phase == "install"  # as locally: one install log, the program's two streams apart
        start = time.monotonic()
        env = {**ENVIRONMENT, **({"PYTHONDONTWRITEBYTECODE": "1"} if phase == "run" else {})}
        config = None
        if recording is not None:
            env["DISTILL_RECORD"] = "stdin"  # a flag for phase.sh; the key itself goes on stdin
            config = json.dumps(recording).encode()
        process = self._call(
            f"start the {phase} phase",
            lambda: box.exec("bash", PHASE_SCRIPT, phase, workdir="/job", env=env, stdin=config),
        )
        out, err = Tail(), Tail()
        readers = [
            read_chunks(process.stdout, "install" if merged else "stdout", out, emit),
            read_chunks(process.stderr, "install" if merged else "stderr", out if merged else err, emit),
        ]
        exit_code: list[int | None] = []
        failed: list[BaseException] = []
        done = threading.Event()

        def wait() -> None:
            try:
                exit_code.append(process.wait())
            except BaseException as exc:  # reported below, on the calling thread
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=wait, name=f"modal-{phase}-wait", daemon=True).start()
        timed_out = cancelled = False
        deadline = start + timeout
        while not done.wait(max(0.0, min(POLL_SECS, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                timed_out = True
            elif should_cancel is not None and should_cancel():
                cancelled = True
            if timed_out or cancelled:
                stop(box)  # ends the process and its streams
                break
        secs = time.monotonic() - start
        for reader in readers:
            reader.join(READER_GRACE_SECS)
        if failed and not (timed_out or cancelled):
            raise SandboxUnavailable(f"the {phase} phase lost its sandbox: {failed[0]}")
        return Phase(
            exit_code=None if timed_out or cancelled else exit_code[0],
            timed_out=timed_out,
            cancelled=cancelled,
            secs=secs,
            stdout=out.text(),
            stderr=err.text(),
        )

    def _read_record(self, box) -> bytes | None:
        """The recorder's signed lines, or None when they cannot be had: the run is then unproven."""
        try:
            process = box.exec(
                "bash",
                PHASE_SCRIPT,
                "record",
                str(RECORD_CAP + 1),
                str(RECORD_READ_SECS),
                workdir="/",
                env=ENVIRONMENT,
            )
            text = "".join(process.stdout)  # ASCII: hex signatures and JSON with its default escapes
            if process.wait() != 0:
                return None
        except Exception as exc:
            logger.warning("modal: could not read the record back: %s", exc)
            return None
        return kept_record(text.encode())

    def _copy_outputs(self, box, job_dir: Path) -> str:
        """Brings results.json, log.json and to_save/ back; returns "" or why they could not come."""
        try:
            process = box.exec("bash", PHASE_SCRIPT, "pack", workdir="/job", env=ENVIRONMENT)
            size = "".join(process.stdout).strip()
            errors = "".join(process.stderr).strip()
            if process.wait() != 0:
                return f"the outputs could not be packed: {errors[-300:]}"
            if not size.isdigit() or int(size) > MAX_OUTPUT_ARCHIVE_BYTES:
                return f"the outputs are larger than {MAX_OUTPUT_ARCHIVE_BYTES // 1024 // 1024} MB packed"
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "outputs.tar.gz"
                box.download(OUTPUT_ARCHIVE, archive)
                _unpack_outputs(archive, job_dir)
        except Exception as exc:  # the program ran; its exit code and streams still count
            logger.warning("modal: could not copy the outputs back: %s", exc)
            return f"the outputs could not be copied back: {exc}"
        return ""

    def _call(self, what: str, action):
        try:
            return action()
        except SandboxUnavailable:
            raise
        except Exception as exc:  # Modal raises many types (auth, quota, connection, not found)
            raise SandboxUnavailable(f"Modal: could not {what}: {type(exc).__name__}: {exc}") from exc

    def _terminate(self, box) -> None:
        try:
            box.terminate()
        except Exception:
            # Its own lifetime still ends it; never let cleanup hide the result.
            logger.exception("modal: could not terminate sandbox %s", getattr(box, "id", "?"))


def _pack_repository(repo_dir: Path, archive: Path) -> None:
    """The repository without .git, as the program sees it at /repo; links stay links."""

    def skip_git(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        return None if ".git" in parts else info

    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(repo_dir.iterdir()):
            tar.add(entry, arcname=entry.name, filter=skip_git)


def _unpack_outputs(archive: Path, job_dir: Path) -> None:
    """Regular files and folders only, inside job_dir: a program's archive is not trusted."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() or member.isdir()):
                continue
            try:
                tar.extract(member, job_dir, filter="data")
            except tarfile.FilterError as exc:
                logger.warning("modal: an output was left out: %s", exc)
