"""The Modal backend, against a fake of our own client (Modal cannot be reached here), and the real
service in the tests marked `modal` when MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are set."""

import codecs
import glob
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import types
from pathlib import Path

import pytest

from distill import services
from distill.pipeline import proof
from distill.profiles import ProfileError, load_profile
from distill.sandbox import ExecutionRequest, Limits, SandboxUnavailable, get_sandbox
from distill.sandbox.base import AUDIT_PY, RECORDER_PATH
from distill.sandbox.modal import PHASE_SCRIPT, ModalClient, ModalOptions, ModalSandbox
from tests import test_proof
from tests.factories import make_git_repo
from tests.test_proof import USES_CLONE, WRITE_RESULTS, record_run

FILES = {
    "main.py": "print('hello')\n",
    "requirements.txt": "numpy\n",
    "runscript.sh": "pip install -r requirements.txt\n",
    "data/input.csv": "a,b\n1,2\n",
}


# The fake: it keeps files by absolute path and runs scripted phases ----------------------------------


class FakeProcess:
    """Runs on its own (a thread writes the chunks over time, then exits); a terminated sandbox ends it
    at once. Reading its streams is optional, as with a real process."""

    def __init__(self, box, stdout=(), stderr=(), exit_code=0, secs_per_chunk=0.0, forever=False):
        self.box, self.exit_code = box, exit_code
        self.finished = threading.Event()
        self.finished_at = None
        self._queues = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.stdout, self.stderr = self._stream("stdout"), self._stream("stderr")
        chunks = [("stdout", c) for c in stdout] + [("stderr", c) for c in stderr]
        threading.Thread(target=self._run, args=(chunks, secs_per_chunk, forever), daemon=True).start()

    def _run(self, chunks, secs_per_chunk, forever):
        for name, chunk in chunks:
            if self.box.terminated.wait(secs_per_chunk):
                break
            self._queues[name].put(chunk)
        if forever:
            self.box.terminated.wait()
        else:
            self.finished_at = time.monotonic()
            self.finished.set()
        for q in self._queues.values():
            q.put(None)

    def _stream(self, name):
        while (chunk := self._queues[name].get()) is not None:
            yield chunk

    def wait(self):
        while not (self.finished.wait(0.01) or self.box.terminated.is_set()):
            pass
        if not self.finished.is_set():
            raise RuntimeError("Sandbox terminated")  # as Modal's client may do
        return self.exit_code


class FakeBox:
    def __init__(self, modal, image_id, **create_args):
        self.modal, self.image_id, self.create_args = modal, image_id, create_args
        self.files: dict[str, bytes] = dict(modal.images[image_id]) if image_id else {}
        self.execs: list[tuple] = []
        self.processes: list[FakeProcess] = []
        self.terminations = 0
        self.terminated = threading.Event()

    def write_file(self, remote_path, data):
        assert remote_path.startswith("/")
        self.files[remote_path] = bytes(data)

    def upload(self, local_path, remote_path):
        self.files[remote_path] = Path(local_path).read_bytes()

    def download(self, remote_path, local_path):
        Path(local_path).write_bytes(self.files[remote_path])

    def exec(self, *argv, workdir, env, stdin=None):
        assert argv[:2] == ("bash", PHASE_SCRIPT) and PHASE_SCRIPT in self.files
        assert not self.terminated.is_set(), "exec in a terminated sandbox"
        phase = argv[2]
        self.execs.append((phase, workdir, env))
        if phase == "prepare":
            self._prepare()
            process = FakeProcess(self)
        elif phase == "pack":
            process = FakeProcess(self, stdout=[f"{self._pack()}\n"])
        else:
            process = self.modal.phases[phase](self)
        self.processes.append(process)
        return process

    def _prepare(self):
        self.files = {k: v for k, v in self.files.items() if not k.startswith("/job/")}
        archive = self.files.pop("/tmp/repo.tar.gz", None)
        if archive:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        self.files[f"/repo/{member.name}"] = tar.extractfile(member).read()

    def _pack(self):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path, data in self.files.items():
                name = path.removeprefix("/job/")
                if name in ("results.json", "log.json") or name.startswith("to_save/"):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            for extra in self.modal.extra_members:
                tar.addfile(extra)
        self.files["/tmp/outputs.tar.gz"] = buffer.getvalue()
        return len(buffer.getvalue())

    def snapshot(self):
        image_id = f"im-{len(self.modal.images) + 1}"
        self.modal.images[image_id] = dict(self.files)
        return image_id

    def terminate(self):
        self.terminations += 1
        self.terminated.set()


def installs(box, exit_code=0):
    box.files["/env/bin/python"] = b"#!"
    return FakeProcess(box, stdout=["Collecting numpy\n"], stderr=["a warning\n"], exit_code=exit_code)


def works(box):
    assert box.files["/job/main.py"] == FILES["main.py"].encode() and "/env/bin/python" in box.files
    box.files["/job/results.json"] = json.dumps({"answer": 42}).encode()
    box.files["/job/log.json"] = b'["started", "done"]'
    box.files["/job/to_save/plots/figure.txt"] = b"a figure"
    return FakeProcess(box, stdout=["step 1\n", "step 2\n"], stderr=["note\n"], secs_per_chunk=0.2)


class FakeModal:
    """Stands in for ModalClient: creates FakeBoxes and remembers them."""

    def __init__(self):
        self.boxes: list[FakeBox] = []
        self.images: dict[str, dict] = {}
        self.phases = {"install": installs, "run": works}
        self.extra_members: list[tarfile.TarInfo] = []
        self.fail_create = None

    def create(self, *, image_id, **args):
        if self.fail_create:
            raise self.fail_create
        box = FakeBox(self, image_id, **args)
        self.boxes.append(box)
        return box


@pytest.fixture
def fake():
    return FakeModal()


def execute(fake, tmp_path, *, files=FILES, repo=None, options=None, **kwargs):
    limits = kwargs.pop("limits", Limits(wall_secs=30, memory_mb=2048))
    request = ExecutionRequest(
        files=files, job_dir=tmp_path / "job", env_dir=tmp_path / "env", repo_dir=repo, limits=limits
    )
    return ModalSandbox(options, client=fake).execute(request, **kwargs)


# Behaviour ---------------------------------------------------------------------------------------------


def test_it_installs_runs_and_brings_the_outputs_back(fake, tmp_path):
    seen = []
    result = execute(
        fake, tmp_path, on_output=lambda stream, text: seen.append((stream, text, time.monotonic()))
    )

    assert result.ok and result.exit_code == 0 and not result.failure
    assert result.stdout == "step 1\nstep 2\n" and result.stderr == "note\n"
    assert "Collecting numpy" in result.install_log and "a warning" in result.install_log
    assert not result.env_reused and result.install_secs > 0
    job = tmp_path / "job"
    assert json.loads((job / "results.json").read_text()) == {"answer": 42}
    assert json.loads((job / "log.json").read_text()) == ["started", "done"]
    assert (job / "to_save" / "plots" / "figure.txt").read_text() == "a figure"

    install_box, run_box = fake.boxes
    assert install_box.create_args["network"] is True and run_box.create_args["network"] is False
    assert run_box.image_id == "im-1", "the run starts from the snapshot of the installed environment"
    for name, text in FILES.items():
        assert install_box.files[f"/job/{name}"] == text.encode()
    assert [phase for phase, *_ in install_box.execs] == ["prepare", "install"]
    assert [phase for phase, *_ in run_box.execs] == ["prepare", "run", "pack"]
    assert all(workdir == "/job" for phase, workdir, _ in run_box.execs if phase != "prepare")
    assert install_box.terminations == 1 and run_box.terminations == 1


def test_output_streams_while_the_program_runs(fake, tmp_path):
    seen = []
    execute(fake, tmp_path, on_output=lambda stream, text: seen.append((stream, text, time.monotonic())))

    streamed = [(stream, text) for stream, text, _ in seen]
    assert ("install", "Collecting numpy\n") in streamed and ("install", "a warning\n") in streamed
    assert [text for stream, text in streamed if stream == "stdout"] == ["step 1\n", "step 2\n"]
    first_stdout = next(at for stream, _, at in seen if stream == "stdout")
    program = fake.boxes[1].processes[-2]  # the run, before the pack
    assert first_stdout < program.finished_at - 0.1, "the first line arrived before the program ended"


def test_resources_and_lifetime_come_from_the_profile(fake, tmp_path):
    execute(fake, tmp_path, options=ModalOptions(cpu=4.0, memory_mb=8192), limits=Limits(wall_secs=600))

    install_box, run_box = fake.boxes
    assert run_box.create_args["cpu"] == 4.0 and run_box.create_args["memory_mb"] == 8192
    assert run_box.create_args["timeout_secs"] == 600 + 120
    assert install_box.create_args["timeout_secs"] == 900 + 120


def test_the_environment_is_reused_within_a_run(fake, tmp_path):
    execute(fake, tmp_path)
    changed = {**FILES, "main.py": "print('second version')\n"}
    fake.phases["run"] = lambda box: FakeProcess(box, stdout=[box.files["/job/main.py"].decode()])
    result = execute(fake, tmp_path, files=changed)

    assert result.env_reused and result.install_secs == 0 and result.install_log == ""
    assert len(fake.boxes) == 3, "no second install sandbox"
    assert fake.boxes[2].image_id == "im-1"
    assert result.stdout == "print('second version')\n", "the new files, not the snapshot's"


def test_an_expired_snapshot_is_installed_again(fake, tmp_path):
    execute(fake, tmp_path)
    del fake.images["im-1"]
    real_create = fake.create

    def create(*, image_id, **args):
        if image_id and image_id not in fake.images:
            raise LookupError(f"Image {image_id} not found")
        return real_create(image_id=image_id, **args)

    fake.create = create
    result = execute(fake, tmp_path)

    assert result.ok and not result.env_reused
    install_box, run_box = fake.boxes[2:]
    assert install_box.image_id is None and run_box.image_id in fake.images


def test_new_requirements_install_again(fake, tmp_path):
    execute(fake, tmp_path)
    result = execute(fake, tmp_path, files={**FILES, "requirements.txt": "scipy\n"})

    assert not result.env_reused
    assert len(fake.boxes) == 4


def test_the_repository_is_uploaded_without_git(fake, tmp_path):
    repo = make_git_repo(tmp_path / "lib", {"lib/__init__.py": "X = 1\n", "README.md": "# lib\n"})
    execute(fake, tmp_path, repo=repo)

    install_box, run_box = fake.boxes
    assert install_box.files["/repo/lib/__init__.py"] == b"X = 1\n"
    assert not any(path.startswith("/repo/.git") for path in install_box.files)
    assert "/repo/README.md" in run_box.files, "the snapshot carries the repository to the run"


def test_a_failed_install_stops_before_the_run_and_terminates(fake, tmp_path):
    fake.phases["install"] = lambda box: installs(box, exit_code=1)
    result = execute(fake, tmp_path)

    assert not result.ok and result.exit_code == 1
    assert result.failure.startswith("install failed: exit code 1")
    (box,) = fake.boxes
    assert box.terminations == 1
    assert not list((tmp_path / "env" / "modal").glob("*.image")), "a failed install is never reused"


def test_a_failing_program_still_brings_its_outputs_and_terminates(fake, tmp_path):
    def fails(box):
        box.files["/job/log.json"] = b'["crashed"]'
        return FakeProcess(box, stderr=["Traceback ...\nValueError: no\n"], exit_code=3)

    fake.phases["run"] = fails
    result = execute(fake, tmp_path)

    assert result.exit_code == 3 and not result.ok and "ValueError" in result.stderr
    assert json.loads((tmp_path / "job" / "log.json").read_text()) == ["crashed"]
    assert [box.terminations for box in fake.boxes] == [1, 1]


def test_a_program_out_of_memory_is_reported(fake, tmp_path):
    fake.phases["run"] = lambda box: FakeProcess(box, stderr=["MemoryError\n"], exit_code=1)
    result = execute(fake, tmp_path)

    assert result.out_of_memory and result.failure == "out of memory (limit 2048 MB)"


def test_a_timeout_terminates_the_sandbox(fake, tmp_path):
    fake.phases["run"] = lambda box: FakeProcess(box, stdout=["working\n"], forever=True)
    start = time.monotonic()
    result = execute(fake, tmp_path, limits=Limits(wall_secs=0.5))

    assert time.monotonic() - start < 5
    assert result.timed_out and result.exit_code is None and result.failure == "timed out after 0.5 s"
    assert result.stdout == "working\n"
    run_box = fake.boxes[1]
    assert run_box.terminations == 1
    assert "pack" not in [phase for phase, *_ in run_box.execs]


def test_a_timed_out_install_terminates_too(fake, tmp_path):
    fake.phases["install"] = lambda box: FakeProcess(box, forever=True)
    result = execute(fake, tmp_path, limits=Limits(wall_secs=30, install_secs=0.3))

    assert result.timed_out and result.failure == "install timed out after 0.3 s"
    assert [box.terminations for box in fake.boxes] == [1]


def test_cancel_terminates_the_sandbox(fake, tmp_path):
    fake.phases["run"] = lambda box: FakeProcess(box, stdout=["started\n"], forever=True)
    started = threading.Event()
    result = execute(
        fake,
        tmp_path,
        on_output=lambda stream, text: stream == "stdout" and started.set(),
        should_cancel=started.is_set,
    )

    assert result.cancelled and result.failure == "cancelled" and result.exit_code is None
    assert [box.terminations for box in fake.boxes] == [1, 1]


def test_a_sandbox_that_cannot_be_created_is_unavailable(fake, tmp_path):
    fake.fail_create = ConnectionError("no route to api.modal.com")
    with pytest.raises(SandboxUnavailable, match="could not create a sandbox: ConnectionError"):
        execute(fake, tmp_path)


def test_an_error_while_writing_files_still_terminates(fake, tmp_path, monkeypatch):
    def broken(self, remote_path, data):
        raise OSError("connection reset")

    monkeypatch.setattr(FakeBox, "write_file", broken)
    with pytest.raises(SandboxUnavailable, match="could not write the files"):
        execute(fake, tmp_path)
    assert [box.terminations for box in fake.boxes] == [1]


def test_links_and_paths_out_of_the_job_folder_are_not_copied_back(fake, tmp_path):
    link = tarfile.TarInfo("to_save/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    escape = tarfile.TarInfo("../escaped.txt")
    fake.extra_members = [link, escape]
    result = execute(fake, tmp_path)

    job = tmp_path / "job"
    assert result.ok
    assert not (job / "to_save" / "passwd").exists() and not (tmp_path / "escaped.txt").exists()
    assert (job / "results.json").is_file(), "the safe outputs still came back"


def test_invalid_file_names_are_refused_before_anything_starts(fake, tmp_path):
    with pytest.raises(ValueError, match="invalid file name"):
        execute(fake, tmp_path, files={**FILES, "../evil.py": ""})
    assert fake.boxes == []


# The proof of use: a fake that runs its commands, so that run.sh and the recorder really run -----------


def python_prefix(version: str) -> Path | None:
    """Where a Python of that version lives on this machine (on the PATH or installed by pyenv), or None."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [
        shutil.which(f"python{version}"),
        *sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}")),
    ]
    for candidate in filter(None, candidates):
        found = subprocess.run(
            [candidate, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True
        )
        if found.returncode == 0:
            return Path(found.stdout.strip())
    return None


# Modal's default image has Python 3.12 first on the PATH (in /usr/local/bin); without one here, the system's.
IMAGE_PYTHON = python_prefix("3.12")
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class ContainerProcess:
    """A command running in a ContainerBox: text streams as Modal gives them (chunks as they come)."""

    def __init__(self, box, popen):
        self.box, self.popen = box, popen
        self.stdout, self.stderr = self._text(popen.stdout), self._text(popen.stderr)

    @staticmethod
    def _text(pipe):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := pipe.read1(65536):
            yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)

    def wait(self):
        code = self.popen.wait()
        if self.box.terminated.is_set():
            raise RuntimeError("Sandbox terminated")
        return code


class ContainerBox:
    """A Modal sandbox played by bubblewrap: a folder of this machine is its root filesystem, with this
    machine's /usr and /etc read-only in it, and its processes run as root in their own pid namespace."""

    def __init__(self, modal, image_id, **create_args):
        self.modal, self.image_id, self.create_args = modal, image_id, create_args
        self.root = modal.folder / f"box-{len(modal.boxes) + 1}"
        if image_id:
            shutil.copytree(modal.images[image_id], self.root, symlinks=True)
        else:
            (self.root / "tmp").mkdir(parents=True)
            for name in SYSTEM_LINKS:
                if Path("/", name).is_symlink():
                    (self.root / name).symlink_to(os.readlink(Path("/", name)))
        self.execs: list[tuple] = []
        self.popens: list[subprocess.Popen] = []
        self.terminated = threading.Event()

    def path(self, remote_path):
        assert remote_path.startswith("/")
        return self.root / remote_path.lstrip("/")

    def write_file(self, remote_path, data):
        self.path(remote_path).parent.mkdir(parents=True, exist_ok=True)
        self.path(remote_path).write_bytes(data)

    def upload(self, local_path, remote_path):
        self.write_file(remote_path, Path(local_path).read_bytes())

    def download(self, remote_path, local_path):
        shutil.copyfile(self.path(remote_path), local_path)

    def exec(self, *argv, workdir, env, stdin=None):
        assert not self.terminated.is_set(), "exec in a terminated sandbox"
        self.execs.append((argv, workdir, env, stdin))
        bwrap = [
            "bwrap",
            "--bind",
            str(self.root),
            "/",
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind",
            "/etc",
            "/etc",
        ]
        for name in SYSTEM_LINKS:
            if Path("/", name).is_dir() and not Path("/", name).is_symlink():
                bwrap += ["--ro-bind", f"/{name}", f"/{name}"]
        path = "/usr/local/bin:/usr/bin:/bin"
        if IMAGE_PYTHON is not None:
            bwrap += ["--ro-bind", str(IMAGE_PYTHON), str(IMAGE_PYTHON)]
            path = f"{IMAGE_PYTHON}/bin:{path}"
        if not self.create_args["network"]:
            bwrap.append("--unshare-net")
        bwrap += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-pid",
            "--die-with-parent",
            "--chdir",
            workdir,
        ]
        bwrap += ["--clearenv", "--setenv", "PATH", path]
        for name, value in env.items():
            bwrap += ["--setenv", name, value]
        popen = subprocess.Popen(
            [*bwrap, "--", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.popens.append(popen)
        if stdin is not None:  # as ModalBox: written whole and closed; otherwise left open, as Modal does
            popen.stdin.write(stdin)
            popen.stdin.close()
        return ContainerProcess(self, popen)

    def snapshot(self):
        image_id = f"im-{len(self.modal.images) + 1}"
        self.modal.images[image_id] = self.modal.folder / image_id
        shutil.copytree(self.root, self.modal.images[image_id], symlinks=True)
        return image_id

    def terminate(self):
        self.terminated.set()
        for popen in self.popens:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait()
            popen.stdin.close()


class Container(FakeModal):
    """Stands in for ModalClient with ContainerBoxes; one per module, so the first install is reused."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def create(self, *, image_id, **args):
        box = ContainerBox(self, image_id, **args)
        self.boxes.append(box)
        return box


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    return Container(tmp_path_factory.mktemp("modal"))


# The local sandbox's proof tests' repository (minilib) and environments folder, for the same programs.
clone, envs = test_proof.clone, test_proof.envs


def recorded_run(container, clone, envs, tmp_path, main, **kwargs):
    return record_run(ModalSandbox(client=container), clone, envs, tmp_path, main, **kwargs)


def fresh_config(clone):
    return proof.recording_config(proof.repository_packages(clone))


def messages(record):
    return [json.loads(line.partition(b" ")[2]) for line in record.splitlines()]


@pytest.mark.slow
def test_a_modal_run_that_uses_the_repository_is_proven(container, clone, envs, tmp_path):
    config = fresh_config(clone)
    result, evidence = recorded_run(
        container, clone, envs, tmp_path, USES_CLONE + WRITE_RESULTS, recording=config
    )

    assert result.ok, (result.failure, result.install_log, result.stderr)
    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert {m[0] for m in evidence["modules"]} == {"minilib", "minilib.core"}
    assert evidence["functions"] == [["minilib/core.py", "mean_squared", 4]]
    assert 0 < evidence["share_covered"] < 1
    assert json.loads((tmp_path / "job" / "results.json").read_text()) == {"mean_squared": 14 / 3}
    argv, _, env, stdin = container.boxes[-1].execs[1]
    assert argv[2] == "run" and json.loads(stdin) == config, "the configuration goes in on the run's stdin"
    assert config["key"] not in json.dumps(env)
    if IMAGE_PYTHON is not None:  # the recorder ran on the Python of Modal's default image
        assert messages(result.record)[0]["start"]["python"].startswith("3.12.")


@pytest.mark.slow
def test_a_modal_run_that_does_not_use_the_repository_is_unused(container, clone, envs, tmp_path):
    main = "value = 4.666666666666667\nprint('mean squared:', value)\n" + WRITE_RESULTS

    result, evidence = recorded_run(container, clone, envs, tmp_path, main)

    assert result.ok and result.record
    assert evidence["verdict"] == proof.UNUSED
    assert "does not use the repository" in evidence["reasons"][0]


@pytest.mark.slow
def test_an_altered_modal_record_is_rejected(container, clone, envs, tmp_path):
    config = fresh_config(clone)
    result, evidence = recorded_run(
        container, clone, envs, tmp_path, USES_CLONE + WRITE_RESULTS, recording=config
    )
    assert evidence["verdict"] == proof.PROVEN
    packages = proof.repository_packages(clone)
    signed_call = next(line for line in result.record.splitlines() if b'"mean_squared"' in line)
    altered = result.record.replace(signed_call, signed_call.replace(b'"mean_squared"', b'"unused"'))

    evidence = proof.verify(altered, config["key"], packages, clone)
    other_key = proof.verify(result.record, fresh_config(clone)["key"], packages, clone)

    assert evidence["verdict"] == proof.UNPROVEN and "tampered" in evidence["reasons"][0]
    assert other_key["verdict"] == proof.UNPROVEN


RECORD = "/sandbox/record.log"
FORGE = f"""
import json
forged = {{"items": [["m", "minilib.core", "repo:minilib/core.py", "source"],
                    ["f", "repo:minilib/core.py", "mean_squared", 4, "function"]], "pid": 2, "main": True}}
with open({RECORD!r}, "a") as record:
    for payload in ({{**forged, "seq": 1}}, {{"end": {{"problems": []}}, "pid": 2, "main": True, "seq": 2}}):
        record.write("0" * 64 + " " + json.dumps(payload) + "\\n")
"""
SPOILED = {
    "forged lines appended": FORGE,
    "record removed": f"import os\nos.remove({RECORD!r})\n",
    "record cut short": f"import os\nos.truncate({RECORD!r}, 0)\n",
    "record replaced by a pipe": f"import os\nos.remove({RECORD!r})\nos.mkfifo({RECORD!r})\n",
    "exit hooks skipped": "import os\nos._exit(0)\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("spoil", SPOILED.values(), ids=SPOILED.keys())
def test_a_program_that_spoils_its_modal_record_is_unproven(container, clone, envs, tmp_path, spoil):
    main = USES_CLONE + WRITE_RESULTS + spoil

    result, evidence = recorded_run(container, clone, envs, tmp_path, main)

    assert result.exit_code == 0, result.stderr
    assert evidence["verdict"] == proof.UNPROVEN, evidence


@pytest.mark.slow
def test_the_key_reaches_only_the_recorder_in_modal(container, clone, envs, tmp_path):
    main = """
        import glob, os, sys
        seen = sys.stdin.read() + repr(dict(os.environ))
        for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/fd/*'):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                seen += os.read(fd, 65536).decode('latin-1')
            except OSError:
                pass
        for folder in ('/sandbox', '/tmp', '/job', '/repo'):  # /env was made before the key existed
            for path in glob.glob(folder + '/**', recursive=True):
                if os.path.isfile(path) and not os.path.islink(path):
                    seen += open(path, 'rb').read().decode('latin-1')
        print(seen)
    """

    config = fresh_config(clone)
    result, evidence = recorded_run(container, clone, envs, tmp_path, main, recording=config)

    assert result.exit_code == 0, result.stderr
    assert "PYTHONDONTWRITEBYTECODE" in result.stdout and "mean_squared" in result.stdout, "it did read"
    assert config["key"] not in result.stdout
    assert evidence["verdict"] == proof.UNUSED, "and the recorder had its key: it signed its record"


@pytest.mark.slow
def test_a_modal_run_without_recording_has_no_recorder_and_no_record(container, clone, envs, tmp_path):
    main = "import os, sys\nprint(os.environ.get('PYTHONPATH'), repr(sys.stdin.read()))\n"

    result, _ = recorded_run(container, clone, envs, tmp_path, main, recording=False)

    assert result.ok and result.record is None
    assert result.stdout == "None ''\n", "no recorder on the path, and an empty stdin"
    box = container.boxes[-1]
    assert not box.path(RECORDER_PATH).exists()
    assert [argv[2] for argv, *_ in box.execs] == ["prepare", "run", "pack"]


@pytest.mark.slow
def test_a_timed_out_modal_run_brings_no_record(container, clone, envs, tmp_path):
    main = USES_CLONE + "import time\ntime.sleep(60)\n"

    result, evidence = recorded_run(container, clone, envs, tmp_path, main, wall_secs=2)

    assert result.timed_out and result.record is None
    assert evidence["verdict"] == proof.UNPROVEN


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_the_recorder_runs_on_the_pythons_of_modal_images(version, tmp_path):
    prefix = python_prefix(version)
    if prefix is None:
        pytest.skip(f"no Python {version} on this machine")
    repo = make_git_repo(tmp_path / "repo", {"lib.py": "def f():\n    return 1\n"})
    (tmp_path / "record").mkdir()
    shutil.copyfile(AUDIT_PY, tmp_path / "record" / "sitecustomize.py")
    packages = proof.repository_packages(repo)
    config = fresh_config(repo)
    config_read, config_write = os.pipe()
    os.write(config_write, json.dumps({**config, "root": str(repo)}).encode())
    os.close(config_write)
    record_read, record_write = os.pipe()
    main = f"import sys\nsys.path.insert(0, {str(repo)!r})\nimport lib\nlib.f()\n"
    subprocess.run(
        [prefix / "bin" / f"python{version}", "-c", main],
        env={"PYTHONPATH": str(tmp_path / "record"), "DISTILL_RECORD": f"{config_read},{record_write}"},
        pass_fds=(config_read, record_write),
        check=True,
        timeout=60,
    )
    os.close(config_read)
    os.close(record_write)
    with open(record_read, "rb") as pipe:
        record = pipe.read()

    evidence = proof.verify(record, config["key"], packages, repo)
    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert messages(record)[0]["start"]["python"].startswith(f"{version}.")


# Credentials, profiles, the app --------------------------------------------------------------------------


@pytest.fixture
def no_credentials(monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)


def test_without_credentials_it_is_refused_at_once(no_credentials, monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-only-the-id")
    start = time.monotonic()
    with pytest.raises(SandboxUnavailable, match="set MODAL_TOKEN_SECRET"):
        get_sandbox("modal")
    assert time.monotonic() - start < 1


@pytest.mark.django_db
def test_a_modal_profile_without_credentials_is_refused_at_submit(no_credentials, settings, tmp_path):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    profile = load_profile("claude-sonnet-4.5-modal")
    start = time.monotonic()
    with pytest.raises(services.RunRefused, match="MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"):
        services.run_submit(source=str(tmp_path), profile_name="claude-sonnet-4.5-modal", profile=profile)
    assert time.monotonic() - start < 1
    from distill.models import Run

    assert not Run.objects.exists()


def test_with_credentials_get_sandbox_makes_a_modal_backend_without_importing_modal(monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    monkeypatch.delitem(sys.modules, "modal", raising=False)
    sandbox = get_sandbox("modal", {"cpu": 1.5, "app_name": "other"})

    assert isinstance(sandbox, ModalSandbox) and sandbox.options.cpu == 1.5
    assert "modal" not in sys.modules, "import modal waits for the first execution"


def test_the_modal_section_of_a_profile_is_checked():
    profile = load_profile("claude-sonnet-4.5-modal")
    assert profile.sandbox == "modal" and profile.modal.cpu > 0
    with pytest.raises(ProfileError, match="modal.cpu"):
        load_profile("claude-sonnet-4.5-modal", {"modal": {"cpu": -1}})
    with pytest.raises(ProfileError, match="modal.gpu"):
        load_profile("claude-sonnet-4.5-modal", {"modal": {"gpu": "A100"}})
    with pytest.raises(ProfileError, match="sandbox"):
        load_profile("local", {"sandbox": "docker"})


def test_the_client_looks_the_app_up_once_per_process(monkeypatch):
    calls = {"lookup": 0, "create": []}

    class Image:
        def __init__(self, desc):
            self.desc = desc

        @staticmethod
        def debian_slim(python_version):
            return Image(f"debian-slim-{python_version}")

        @staticmethod
        def from_id(image_id):
            return Image(image_id)

        def apt_install(self, *packages):
            return Image(f"{self.desc}+{','.join(packages)}")

    class App:
        @staticmethod
        def lookup(name, create_if_missing):
            calls["lookup"] += 1
            return f"app:{name}:{create_if_missing}"

    class Sandbox:
        object_id = "sb-1"

        @staticmethod
        def create(**kwargs):
            calls["create"].append(kwargs)
            return Sandbox()

    monkeypatch.setitem(sys.modules, "modal", types.SimpleNamespace(Image=Image, App=App, Sandbox=Sandbox))
    monkeypatch.setattr(ModalClient, "_apps", {})
    monkeypatch.setattr(ModalClient, "_images", {})
    client = ModalClient(ModalOptions(app_name="cd-test"))
    client.create(image_id=None, cpu=2.0, memory_mb=1024, timeout_secs=300, network=True)
    box = ModalClient(ModalOptions(app_name="cd-test")).create(
        image_id="im-9", cpu=2.0, memory_mb=1024, timeout_secs=300, network=False
    )

    assert calls["lookup"] == 1
    first, second = calls["create"]
    assert first["app"] == "app:cd-test:True" and first["image"].desc == "debian-slim-3.12+git,wget,curl"
    assert first["memory"] == (1024, 1024) and first["cpu"] == 2.0 and first["timeout"] == 300
    assert first["block_network"] is False and second["block_network"] is True
    assert second["image"].desc == "im-9"
    assert box.id == "sb-1"


# The real service ----------------------------------------------------------------------------------------

needs_modal = pytest.mark.skipif(
    not (os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")),
    reason="MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set",
)


@pytest.mark.modal
@pytest.mark.slow
@needs_modal
def test_a_real_modal_sandbox_runs_a_program(tmp_path):
    files = {
        "main.py": "import json\nprint('hi from modal', flush=True)\njson.dump({'ok': 1}, open('results.json', 'w'))\n"
        "open('to_save/out.txt', 'w').write('saved')\n",
        "requirements.txt": "",
        "runscript.sh": "pip install -q -r requirements.txt\n",
    }
    seen = []
    request = ExecutionRequest(
        files=files, job_dir=tmp_path / "job", env_dir=tmp_path / "env", limits=Limits(wall_secs=120)
    )
    result = get_sandbox("modal", {"cpu": 1.0, "app_name": "codedistiller-tests"}).execute(
        request, on_output=lambda stream, text: seen.append(stream)
    )

    assert result.ok, (result.failure, result.install_log, result.stderr)
    assert "hi from modal" in result.stdout and "stdout" in seen
    assert json.loads((tmp_path / "job" / "results.json").read_text()) == {"ok": 1}
    assert (tmp_path / "job" / "to_save" / "out.txt").read_text() == "saved"


@pytest.mark.modal
@pytest.mark.slow
@needs_modal
def test_a_real_modal_sandbox_times_out(tmp_path):
    files = {"main.py": "import time\ntime.sleep(600)\n", "requirements.txt": "", "runscript.sh": "true\n"}
    request = ExecutionRequest(
        files=files, job_dir=tmp_path / "job", env_dir=tmp_path / "env", limits=Limits(wall_secs=5)
    )
    result = get_sandbox("modal", {"cpu": 0.5, "app_name": "codedistiller-tests"}).execute(request)

    assert result.timed_out and result.exit_code is None


@pytest.mark.modal
@pytest.mark.slow
@needs_modal
def test_a_real_modal_sandbox_records_the_proof(clone, envs, tmp_path):
    sandbox = get_sandbox("modal", {"cpu": 1.0, "app_name": "codedistiller-tests"})

    result, evidence = record_run(sandbox, clone, envs, tmp_path, USES_CLONE + WRITE_RESULTS, env="modal")

    assert result.ok, (result.failure, result.install_log, result.stderr)
    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert evidence["functions"] == [["minilib/core.py", "mean_squared", 4]]
