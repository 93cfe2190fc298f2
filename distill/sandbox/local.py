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

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath

from .base import (
    AUDIT_PY,
    MB,
    RECORD_CAP,
    RECORDER_PATH,
    RUN_SH,
    CancelCheck,
    Emitter,
    ExecutionRequest,
    ExecutionResult,
    Limits,
    OutputCallback,
    Phase,
    SandboxUnavailable,
    Tail,
    cap_saved_files,
    checked_files,
    decoded,
    env_hash,
    install_failure,
    kept_record,
    out_of_memory,
    read_chunks,
    run_failure,
)
from .cgroup import SandboxCgroup, kill_until_gone, log_unavailable

logger = logging.getLogger(__name__)

POLL_SECS = 0.5
KILL_GRACE_SECS = 5
NETWORK_SETUP_SECS = 20
NS_GET_USERNS = 0xB701  # linux/nsfs.h
WATCHDOG_PY = Path(__file__).with_name("watchdog.py")

# What the program sees as its uid; the host uid behind it differs per run (see _host_uid).
INNER_UID = 1000
PASSWD = f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{INNER_UID}:{INNER_UID}:sandbox:/tmp:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = f"root:x:0:\nsandbox:x:{INNER_UID}:\nnogroup:x:65534:\n"
# slirp4netns's own resolver (10.0.2.3) forwards to the host's: the host's resolv.conf may name a private
# or loopback address, which the sandbox's network does not reach.
RESOLV_CONF = "nameserver 10.0.2.3\n"
# Where a sandbox with network may not go: the private, shared, link-local (cloud metadata) and
# benchmarking ranges, as well as the host's own addresses and networks (added per phase).
BLOCKED_NETWORKS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
)
SLIRP_NETWORK = ipaddress.ip_network("10.0.2.0/24")  # slirp4netns's own: its gateway and resolver

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
TOOL_ERROR = re.compile(r"^(bwrap|setpriv|prlimit): ")


class LocalSandbox:
    """Executes requests with bubblewrap.

    `on_output(stream, text)` is called from background reader threads, one call at a time, as output
    arrives: stream is "stdout" or "stderr" for the program and "install" for the install phase
    (its stdout and stderr together). An exception in it is logged and the run goes on.
    `should_cancel()` is called from the thread that called execute(), about every 0.5 s.

    One execution at a time per env_dir: two concurrent installs of the same environment would
    write into the same folder, and each execution first kills what an earlier one of that env_dir left.
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
        request.env_dir.mkdir(parents=True, exist_ok=True)
        with _execution_lock(request.env_dir, should_cancel) as held:
            if not held:
                return ExecutionResult.cancelled_while_waiting()
            for pause in (*SET_UP_RETRY_PAUSES, None):
                result, failure = self._attempt(request, on_output=on_output, should_cancel=should_cancel)
                if not failure or pause is None:
                    break
                # Seen on a loaded machine, and more often with two test processes: the sandbox's first
                # process was gone (SIGKILL, or bubblewrap's own "loopback: Failed RTM_NEWADDR") before its
                # network was set up, and nothing of the program ran. Not the program's failure: again,
                # after a pause that lets the dead one's namespaces go, longer each time.
                logger.warning("sandbox: %s; setting it up again in %.0f s", failure, pause)
                time.sleep(pause)
            if isinstance(result, subprocess.SubprocessError):
                raise result
            return result

    def _attempt(
        self, request: ExecutionRequest, *, on_output, should_cancel
    ) -> tuple[ExecutionResult | subprocess.SubprocessError, str]:
        """(the result, or Popen's error, and why it failed before anything of the program ran: "" when it
        did not)."""
        try:
            result = self._execute(request, on_output=on_output, should_cancel=should_cancel)
        except subprocess.SubprocessError as exc:
            if type(exc) is not subprocess.SubprocessError:  # a timeout or a failed command: not this
                raise
            # "Exception occurred in preexec_fn": the child could not join its cgroup (seen right after a
            # worker running this environment was killed), so bubblewrap never started.
            return exc, f"sandbox error: {exc}"
        return result, result.failure if _killed_while_set_up(result) else ""

    def _execute(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputCallback | None,
        should_cancel: CancelCheck | None,
    ) -> ExecutionResult:
        files = checked_files(request.files)
        limits = request.limits
        uid = _host_uid(request.env_dir) if self.as_root else None
        network = _Network.needed(limits)

        job_dir = request.job_dir
        job_dir.mkdir(parents=True, exist_ok=True)
        _write_files(job_dir, files)
        _make_folder(job_dir, "to_save")
        key = env_hash(request, files)
        venvs = request.env_dir / "venvs"
        venv, ready = venvs / key, venvs / f"{key}.ready"
        cache = request.env_dir / "cache"
        venvs.mkdir(parents=True, exist_ok=True)
        cache.mkdir(exist_ok=True)
        if uid is not None:
            _chown_tree(job_dir, uid)
            if cache.stat().st_uid != uid:
                _chown_tree(cache, uid)
        kill_leftovers(request.env_dir)

        emit = Emitter(on_output)
        mounts = [
            ("--bind", job_dir, "/job"),
            ("--bind", cache, "/cache"),
            ("--ro-bind", RUN_SH, "/sandbox/run.sh"),
        ]
        if request.repo_dir is not None:
            mounts.append(("--ro-bind", request.repo_dir, "/repo"))
        phase = _PhaseRunner(self, request, uid=uid, emit=emit, should_cancel=should_cancel)

        install = None
        if not ready.exists():
            # A half-made environment from an install that failed or was killed is never reused.
            shutil.rmtree(venv, ignore_errors=True)
            venv.mkdir()
            if uid is not None:
                os.chown(venv, uid, uid)
            install = phase.run(
                "install",
                [*mounts, ("--bind", venv, "/env")],
                network=network if limits.network_install else None,
                timeout=limits.install_secs,
            )
            failure = install_failure(
                install, limits.install_secs, tool_error=install.failure or _tool_error(install.stdout)
            )
            if failure:
                return ExecutionResult.failed_install(install, failure)
            ready.touch()

        # Read-only in the run phase, so a program cannot spoil the environment for the next iteration.
        run_mounts = [*mounts, ("--ro-bind", venv, "/env")]
        if request.recording is not None:
            run_mounts.append(("--ro-bind", AUDIT_PY, RECORDER_PATH))
        run = phase.run(
            "run",
            run_mounts,
            network=network if limits.network_run else None,
            timeout=limits.wall_secs,
            recording=request.recording,
        )
        run.out_of_memory = run.out_of_memory or out_of_memory(run.exit_code, run.stderr)
        failure = run_failure(run, limits) or (_tool_error(run.stderr) if run.exit_code else "")
        notes = cap_saved_files(job_dir / "to_save", limits)
        return ExecutionResult.of_run(run, install, failure=failure, record=run.record, notes=notes)

    def argv(
        self,
        phase: str,
        mounts: list[tuple[str, Path, str]],
        *,
        uid: int | None,
        network: bool,
        limits: Limits,
        fds: dict[str, int],
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

        # The largest file: the job folder's limit in the run; in the install, the environment's too.
        file_mb = limits.disk_mb if phase == "run" else max(limits.disk_mb, limits.env_disk_mb)
        argv += [
            self.prlimit,
            f"--as={limits.memory_mb * MB}",
            f"--nproc={limits.max_procs}",
            f"--fsize={file_mb * MB}",
            "--core=0",
        ]
        # Only the program's CPU time is limited: pip compiling a large package may well need more.
        if limits.cpu_secs is not None and phase == "run":
            argv.append(
                f"--cpu={limits.cpu_secs}:{limits.cpu_secs + 1}"
            )  # SIGXCPU first, SIGKILL a second later
        argv.append("--")

        # Never --share-net: the host's network namespace holds its loopback (the site, its database).
        # With network, the namespace gets a user-mode stack (_Network) once bwrap reports its pid.
        argv += [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        argv += ["--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        argv += ["--uid", str(INNER_UID), "--gid", str(INNER_UID)]
        if network:
            argv += ["--info-fd", str(fds["info"]), "--block-fd", str(fds["block"])]
        for name in SYSTEM_DIRS:
            host = Path("/", name)
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{name}"]
        for name in ETC_ENTRIES:
            if not (network and name == "resolv.conf"):
                argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        argv += ["--ro-bind-data", str(fds["passwd"]), "/etc/passwd"]
        argv += ["--ro-bind-data", str(fds["group"]), "/etc/group"]
        if network:
            argv += ["--ro-bind-data", str(fds["resolv"]), "/etc/resolv.conf"]
        # /dev is a tmpfs of half the host's memory: read-only, with a small /dev/shm of its own.
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.shm_mb * MB), "--tmpfs", "/dev/shm"]
        argv += ["--remount-ro", "/dev"]
        # tmpfs lives in the host's memory: counted in the cgroup's limit, and capped at it without one.
        argv += ["--size", str(limits.memory_mb * MB), "--tmpfs", "/tmp"]
        for (option, _, target), source in zip(mounts, sources, strict=True):
            argv += [option, source, target]
        # bwrap's own root, which holds the mount points (/etc among them), is writable unless told.
        argv += ["--remount-ro", "/", "--chdir", "/job", "--clearenv"]
        for name, value in {**_sandbox_environment(phase), **(extra_env or {})}.items():
            argv += ["--setenv", name, value]
        argv += ["/bin/bash", "/sandbox/run.sh", phase]
        return argv


class _PhaseRunner:
    """Runs the phases of one execution: each in its own cgroup, watched for time, disk and cancel."""

    def __init__(self, sandbox: LocalSandbox, request: ExecutionRequest, *, uid, emit, should_cancel):
        self.sandbox = sandbox
        self.request = request
        self.limits = request.limits
        self.uid = uid
        self.emit = emit
        self.should_cancel = should_cancel

    def run(
        self,
        phase: str,
        mounts: list[tuple[str, Path, str]],
        *,
        network: "_Network | None",
        timeout: float,
        recording: dict | None = None,
    ) -> Phase:
        limits = self.limits
        notes = []
        group = SandboxCgroup.make(
            _group_name(self.request.env_dir), memory_bytes=limits.memory_mb * MB, max_procs=limits.max_procs
        )
        if not isinstance(group, SandboxCgroup):
            log_unavailable(group)
            notes.append(f"memory and processes were limited per process only (no cgroup: {group})")
            group = None
        fds = {"passwd": _data_fd(PASSWD), "group": _data_fd(GROUP)}
        parent_ends: list[int] = []
        if network is not None:
            fds["resolv"] = _data_fd(RESOLV_CONF)
            info_read, fds["info"] = os.pipe()
            fds["block"], block_write = os.pipe()
            parent_ends += [info_read, block_write]
        # The recorder's key travels in a pipe that the recorder drains and closes before main.py starts;
        # its record comes back through another pipe, read here, so the program finds no file to edit.
        extra_env = {}
        if recording is not None:
            record_read, fds["record"] = os.pipe()
            fds["config"] = _data_fd(json.dumps(recording))
            parent_ends.append(record_read)
            extra_env["DISTILL_RECORD"] = f"{fds['config']},{fds['record']}"
        argv = self.sandbox.argv(
            phase,
            mounts,
            uid=self.uid,
            network=network is not None,
            limits=limits,
            fds=fds,
            extra_env=extra_env,
        )
        merged = phase == "install"
        start = time.monotonic()
        watchdog = _watchdog(self.uid, group)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                # bwrap copies its own environment into the sandbox's pid 1, readable in /proc/1/environ.
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                pass_fds=tuple(fds.values()),
                start_new_session=True,
                preexec_fn=group.attacher() if group is not None else None,
            )
        except BaseException:
            for fd in parent_ends:
                os.close(fd)
            _end_watchdog(watchdog)
            if group is not None:
                group.remove()
            raise
        finally:
            for fd in fds.values():
                os.close(fd)

        out, err = Tail(), Tail()
        readers = [
            read_chunks(decoded(proc.stdout.fileno()), "install" if merged else "stdout", out, self.emit)
        ]
        if not merged:
            readers.append(read_chunks(decoded(proc.stderr.fileno()), "stderr", err, self.emit))
        record = bytearray()
        if recording is not None:
            readers.append(_record_reader(record_read, record))

        failure = ""
        if network is not None:
            failure = network.start(proc, info_read, block_write, uid=self.uid)
            if failure:
                _kill_group(proc.pid)
        set_up_failed = bool(failure)
        disk = _DiskWatch(self.request, limits)
        timed_out = cancelled = False
        deadline = start + timeout
        while not failure:
            try:
                proc.wait(timeout=max(0.0, min(POLL_SECS, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                timed_out = True
            elif self.should_cancel is not None and self.should_cancel():
                cancelled = True
            else:
                failure = disk.check() or _cpu_exceeded(group, limits, phase)
            if timed_out or cancelled or failure:
                break
        # Killing bwrap ends its pid namespace and all in it; the cgroup catches any process that left it.
        _kill_group(proc.pid)
        proc.wait()
        secs = time.monotonic() - start
        oom = cpu = None
        if group is not None:
            group.kill()
            oom, cpu = group.oom_killed(), group.cpu_secs()
        _end_watchdog(watchdog)
        if group is not None:
            group.remove()
        if network is not None:
            network.stop()
        for reader in readers:
            reader.join(KILL_GRACE_SECS)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if not (timed_out or cancelled or failure):
            failure = disk.check(final=True)
        if set_up_failed:
            # Why the sandbox's first process was gone, when bubblewrap said (the cause of the flake of
            # NETWORK_SETUP_FAILURES is not known yet): nothing of the program ran, so this is all its own.
            said = " ".join(f"{err.text()} {out.text()}".split())
            if said:
                failure = f"{failure} (bubblewrap said: {said[-300:]})"
        stopped = timed_out or cancelled
        return Phase(
            exit_code=None if stopped else proc.returncode,
            timed_out=timed_out,
            cancelled=cancelled,
            secs=secs,
            stdout=out.text(),
            stderr=err.text(),
            record=kept_record(bytes(record)) if recording is not None else None,
            out_of_memory=bool(oom),
            cpu_secs=cpu,
            failure=failure,
            notes=notes,
        )


class _Network:
    """A user-mode network stack (slirp4netns) for a sandbox's own network namespace: outbound traffic
    leaves through the host's sockets, as the app's would, but the host's loopback, its own addresses and
    networks, and the private ranges are unreachable, so that a runscript cannot reach the site, its
    database or anything else on the host's side."""

    def __init__(self, slirp: str, nsenter: str, ip: str) -> None:
        self.slirp, self.nsenter, self.ip = slirp, nsenter, ip
        self.process: subprocess.Popen | None = None
        self.exit_write: int | None = None

    @classmethod
    def needed(cls, limits: Limits) -> "_Network | None":
        if not (limits.network_install or limits.network_run):
            return None
        tools = [shutil.which(name) for name in ("slirp4netns", "nsenter", "ip")]
        if not all(tools):
            raise SandboxUnavailable(
                "the sandbox's network needs slirp4netns, nsenter and ip: "
                "apt-get install slirp4netns util-linux iproute2"
            )
        return cls(*tools)

    def start(self, proc: subprocess.Popen, info_read: int, block_write: int, *, uid: int | None) -> str:
        """Gives the sandbox its network, then lets it go on; "" or why it could not."""
        try:
            pid = _child_pid(info_read, proc)
            netns = f"/proc/{pid}/ns/net"
            userns_fd = None if uid is not None else _owning_userns(netns)
            try:
                failure = self._start_slirp(netns, userns_fd)
                if failure:
                    return f"sandbox error: slirp4netns did not start: {failure}"
                blocked = "".join(f"route add unreachable {net}\n" for net in _blocked_networks())
                enter = [self.nsenter, f"--net={netns}"]
                if userns_fd is not None:
                    enter += [f"--user=/proc/self/fd/{userns_fd}", "--preserve-credentials"]
                routes = subprocess.run(
                    [*enter, self.ip, "-batch", "-"],
                    input=blocked,
                    capture_output=True,
                    text=True,
                    timeout=10,
                    pass_fds=() if userns_fd is None else (userns_fd,),
                )
            finally:
                if userns_fd is not None:
                    os.close(userns_fd)
            if routes.returncode != 0:
                return f"sandbox error: could not close the private networks: {routes.stderr.strip()[:300]}"
            os.write(block_write, b"1")
            return ""
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return f"sandbox error: the network could not be set up: {exc}"
        finally:
            os.close(info_read)
            os.close(block_write)

    def _start_slirp(self, netns: str, userns_fd: int | None) -> str:
        """ "" once slirp4netns serves the sandbox's namespace, or its error."""
        ready_read, ready_write = os.pipe()
        exit_read, self.exit_write = os.pipe()
        # By path, not by pid: given a pid, slirp4netns joins that process's user namespace, which is
        # the nested one of --disable-userns once bwrap has made it, and which owns nothing of the network.
        argv = [self.slirp, "--configure", "--mtu=65520", "--disable-host-loopback", "--netns-type=path"]
        if userns_fd is not None:  # the app's own uid needs the namespace's owner to reach it; root does not
            argv.append(f"--userns-path=/proc/self/fd/{userns_fd}")
        argv += [f"--ready-fd={ready_write}", f"--exit-fd={exit_read}", netns, "tap0"]
        passed = (ready_write, exit_read) + (() if userns_fd is None else (userns_fd,))
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                start_new_session=True,
            )
        finally:
            os.close(ready_write)
            os.close(exit_read)
        try:
            ready = select.select([ready_read], [], [], NETWORK_SETUP_SECS)[0] and os.read(ready_read, 1)
        finally:
            os.close(ready_read)
        if ready:
            return ""
        failure = self._stderr()
        self.stop()
        return failure

    def stop(self) -> None:
        if self.exit_write is not None:
            os.close(self.exit_write)  # slirp4netns ends when this closes, and so if the worker dies
            self.exit_write = None
        if self.process is not None:
            try:
                self.process.wait(KILL_GRACE_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process.stderr.close()
            self.process = None

    def _stderr(self) -> str:
        if self.process is None:
            return "not started"
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        return self.process.stderr.read().decode(errors="replace").strip()[:300]


def _owning_userns(netns: str) -> int:
    """A descriptor of the user namespace that owns the network namespace (ioctl NS_GET_USERNS)."""
    fd = os.open(netns, os.O_RDONLY)
    try:
        return fcntl.ioctl(fd, NS_GET_USERNS)
    finally:
        os.close(fd)


def _child_pid(info_read: int, proc: subprocess.Popen) -> int:
    """The host pid of the sandbox's first process, from bwrap's --info-fd (which stays open: the root
    bwrap above holds it too, so read until the JSON is whole)."""
    data = b""
    deadline = time.monotonic() + NETWORK_SETUP_SECS
    while time.monotonic() < deadline:
        if select.select([info_read], [], [], POLL_SECS)[0]:
            chunk = os.read(info_read, 4096)
            if not chunk:
                break
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except ValueError:
                continue
        elif proc.poll() is not None:
            break
    raise ValueError("bubblewrap did not report its process")


def _blocked_networks() -> list[str]:
    """BLOCKED_NETWORKS and the host's own IPv4 addresses and networks, but never slirp4netns's own."""
    blocked = {ipaddress.ip_network(net) for net in BLOCKED_NETWORKS}
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10)
    for address in re.findall(r"\binet (\S+)", shown.stdout):
        interface = ipaddress.ip_interface(address)
        if not interface.ip.is_loopback:
            blocked |= {interface.network, ipaddress.ip_network(interface.ip)}
    # A route of its own for slirp's network keeps its gateway and resolver reachable inside a blocked range.
    return [str(net) for net in sorted(blocked) if not net.overlaps(SLIRP_NETWORK) or net.prefixlen < 24]


class _DiskWatch:
    """Sizes of the job and environment folders against their limits, measured as often as is cheap:
    walking a large environment takes a while, so the pause between walks grows with it."""

    def __init__(self, request: ExecutionRequest, limits: Limits) -> None:
        self.folders = [
            ("the job folder", request.job_dir, limits.disk_mb),
            ("the environment folder", request.env_dir, limits.env_disk_mb),
        ]
        self.next_at = 0.0

    def check(self, *, final: bool = False) -> str:
        now = time.monotonic()
        if now < self.next_at and not final:
            return ""
        for label, folder, limit_mb in self.folders:
            if _disk_usage(folder) > limit_mb * MB:
                return f"disk limit exceeded: {label} passed {limit_mb} MB"
        self.next_at = now + max(1.0, 20 * (time.monotonic() - now))
        return ""


def _disk_usage(folder: Path) -> int:
    """Bytes the folder takes on disk, without following links; files that vanish meanwhile count 0."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            info = entry.stat(follow_symlinks=False)
                            total += max(info.st_size if entry.is_file(follow_symlinks=False) else 0,
                                         info.st_blocks * 512)  # fmt: skip
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def _cpu_exceeded(group: SandboxCgroup | None, limits: Limits, phase: str) -> str:
    # RLIMIT_CPU is per process: a program that forks gets it once per child. The cgroup counts them all.
    if group is None or limits.cpu_secs is None or phase != "run":
        return ""
    used = group.cpu_secs()
    return (
        f"CPU time limit exceeded ({limits.cpu_secs} s)"
        if used is not None and used > limits.cpu_secs
        else ""
    )


def _watchdog(uid: int | None, group: SandboxCgroup | None) -> subprocess.Popen:
    """The process that kills the phase's processes (by host uid, and by cgroup) when this worker closes
    its stdin or dies. In a session of its own: a signal to the worker's process group spares it."""
    procs = [str(folder / "cgroup.procs") for folder in group.folders.values()] if group is not None else []
    return subprocess.Popen(
        [sys.executable, str(WATCHDOG_PY), str(uid if uid is not None else -1), *procs],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _end_watchdog(watchdog: subprocess.Popen) -> None:
    # Waited for: the next phase runs as the same uid, and must not be killed by this phase's watchdog.
    watchdog.stdin.close()
    watchdog.wait()


# _Network.start's failures: each happens before the sandbox's process is let go, so nothing of the
# program ran. Seen under load (several test sessions and a benchmark on 2 cores): "nsenter: cannot open
# /proc/N/ns/net", the namespace gone between slirp4netns's start and the routes.
# bubblewrap's own errors ("bwrap: loopback: Failed RTM_NEWADDR", seen once right after such a failure)
# come before it runs anything too.
NETWORK_SETUP_FAILURES = (
    "sandbox error: bwrap: ",
    "sandbox error: slirp4netns did not start:",
    "sandbox error: could not close the private networks:",
    "sandbox error: the network could not be set up:",
)


SET_UP_RETRY_PAUSES = (1.0, 3.0)  # seconds before the second and the third set-up


def _killed_while_set_up(result: ExecutionResult) -> bool:
    if result.cancelled or not result.failure.startswith("sandbox error:"):
        return False
    return result.failure.startswith(NETWORK_SETUP_FAILURES) or (
        result.exit_code == -signal.SIGKILL and not result.duration_secs
    )


LOCK_POLL_SECS = 0.5


@contextlib.contextmanager
def _execution_lock(env_dir: Path, should_cancel: CancelCheck | None, *, wait: bool = True):
    """One execution at a time per environment folder, across processes; yields whether it is held.

    The runs of one commit share its folder (distill/pipeline/environment.py), and with it the host uid
    and cgroup that say which processes are an execution's: only while this lock is held is whatever
    runs under them a leftover of a killed worker, safe to kill. A dead worker's lock goes with it (the
    sandbox's own processes do not inherit the descriptor). Waiting polls `should_cancel`.
    """
    with open(env_dir / "execute.lock", "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (should_cancel is not None and should_cancel()):
                    yield False
                    return
                time.sleep(LOCK_POLL_SECS)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kill_leftovers_unless_busy(env_dir: Path) -> int:
    """kill_leftovers, unless an execution for env_dir is running now (then there is nothing left over:
    what runs is that execution's)."""
    if not env_dir.is_dir():  # no execution can hold it
        return kill_leftovers(env_dir)
    with _execution_lock(env_dir, None, wait=False) as held:
        return kill_leftovers(env_dir) if held else 0


def kill_leftovers(env_dir: Path) -> int:
    """Kills whatever an earlier execution for env_dir left running (its worker was killed before it
    could); returns how many processes there were. Its cgroup, and when running as root its host uid,
    belong to that env_dir alone. Call it holding the execution lock (execute does)."""
    killed = 0
    group = SandboxCgroup.existing(_group_name(env_dir))
    if group is not None:
        killed += group.kill()
        group.remove()
    if os.geteuid() == 0:
        killed += _kill_uid(_host_uid(env_dir))
    if killed:
        logger.warning("sandbox: killed %d processes left from an earlier execution in %s", killed, env_dir)
    return killed


def _kill_uid(uid: int) -> int:
    def find() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                # A zombie is dead already: only its parent's wait removes it.
                if entry.name.isdigit() and entry.stat().st_uid == uid and not _is_zombie(entry):
                    pids.append(int(entry.name))
            except OSError:
                pass
        return pids

    return kill_until_gone(find)


def _is_zombie(proc_entry: Path) -> bool:
    return (proc_entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _group_name(env_dir: Path) -> str:
    return hashlib.sha256(str(env_dir.resolve()).encode()).hexdigest()[:16]


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


def _tool_error(output: str) -> str:
    """The sandbox's own tools failing (bwrap cannot create namespaces, ...) rather than the program."""
    first = output.lstrip().split("\n", 1)[0]
    return f"sandbox error: {first[:300]}" if TOOL_ERROR.match(first) else ""
