"""One cgroup per local sandbox: memory and processes limited for the sandbox as a whole, its CPU time
counted, and everything in it killed at once.

Per-process limits are no cap on a program that forks (RLIMIT_AS × 256 processes), and a process that
leaves the sandbox's process tree is still in its cgroup. Both kinds of hierarchy are used, whichever has
the controllers: cgroup v2 (unified) where the worker's own cgroup may delegate memory and pids to a child,
else the v1 memory and pids controllers (and cpuacct for the CPU time). The group is named after the
run's environment folder, of which one execution runs at a time, so that the next execution of a run
finds and kills what a killed worker left in it.

Where no cgroup can be made (no controllers mounted, not delegated, no rights), `SandboxCgroup.make`
returns the reason instead, and the sandbox keeps its per-process limits and says so (`log_unavailable`).
"""

import errno
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "codedistiller-"
KILL_ROUNDS = 50  # a fork racing the kill needs another round; pids.max bounds how many it can make


@functools.cache
def _layout() -> tuple[dict[str, Path], str]:
    """({controller: the worker's own cgroup folder for it, "v2": the unified one}, why none) from
    /proc/self/mountinfo and /proc/self/cgroup."""
    own: dict[str, str] = {}  # hierarchy key ("" for v2, else its controllers) -> own path
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    folders: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        root, mount_point, fstype, options = fields[3], fields[4], fields[dash + 1], fields[dash + 3]
        if fstype == "cgroup2" and "" in own:
            folders["v2"] = _inside(Path(mount_point), root, own[""])
        elif fstype == "cgroup":
            names = [o for o in options.split(",") if o in ("memory", "pids", "cpuacct")]
            for key, path in own.items():
                if names and set(names) <= set(key.split(",")):
                    for name in names:
                        folders[name] = _inside(Path(mount_point), root, path)
    return folders, "" if folders else "no cgroup hierarchy is mounted"


def _inside(mount_point: Path, mount_root: str, own: str) -> Path:
    # A mount may show only part of the hierarchy (a container's): the worker's path is relative to it.
    relative = os.path.relpath(own, mount_root) if own.startswith(mount_root) else "."
    return (mount_point / relative).resolve() if relative != "." else mount_point


_logged: set[str] = set()


def log_unavailable(reason: str) -> None:
    """Says once per process, per reason, that the sandbox runs with per-process limits only."""
    if reason not in _logged:
        _logged.add(reason)
        logger.warning(
            "sandbox: no cgroup can be made (%s): memory and processes are limited per process", reason
        )


class SandboxCgroup:
    """The folders of one sandbox's cgroup: one in v2, one per controller in v1."""

    def __init__(self, folders: dict[str, Path], version: int) -> None:
        self.folders = folders  # controller ("memory", "pids", "cpuacct"; "all" in v2) -> folder
        self.version = version

    @classmethod
    def existing(cls, name: str) -> "SandboxCgroup | None":
        """The cgroup of that name left from an earlier execution, if any."""
        folders, _ = _layout()
        if "v2" in folders and (folders["v2"] / (PREFIX + name)).is_dir():
            return cls({"all": folders["v2"] / (PREFIX + name)}, 2)
        found = {c: folders[c] / (PREFIX + name) for c in ("memory", "pids", "cpuacct") if c in folders}
        found = {c: path for c, path in found.items() if path.is_dir()}
        return cls(found, 1) if found else None

    @classmethod
    def make(cls, name: str, *, memory_bytes: int, max_procs: int) -> "SandboxCgroup | str":
        """A fresh cgroup with these limits, or the reason there can be none here."""
        folders, reason = _layout()
        if reason:
            return reason
        reasons = []
        if "v2" in folders:
            made = cls._make_v2(folders["v2"], PREFIX + name, memory_bytes, max_procs)
            if isinstance(made, cls):
                return made
            reasons.append(f"cgroup v2: {made}")
        if "memory" in folders and "pids" in folders:
            made = cls._make_v1(folders, PREFIX + name, memory_bytes, max_procs)
            if isinstance(made, cls):
                return made
            reasons.append(f"cgroup v1: {made}")
        else:
            reasons.append("cgroup v1: the memory and pids controllers are not both mounted")
        return "; ".join(reasons)

    @classmethod
    def _make_v2(cls, parent: Path, name: str, memory_bytes: int, max_procs: int) -> "SandboxCgroup | str":
        try:
            available = (parent / "cgroup.controllers").read_text().split()
            if not {"memory", "pids"} <= set(available):
                return "the memory and pids controllers are not available to the worker's cgroup"
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if not {"memory", "pids"} <= set(enabled):
                # Refused (EBUSY) when the worker's own cgroup holds processes and is not the root.
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
            folder = parent / name
            folder.mkdir()
        except OSError as exc:
            return f"{exc.strerror or exc} ({parent})"
        group = cls({"all": folder}, 2)
        try:
            (folder / "memory.max").write_text(str(memory_bytes))
            if (folder / "memory.swap.max").exists():
                (folder / "memory.swap.max").write_text("0")
            (folder / "pids.max").write_text(str(max_procs))
        except OSError as exc:
            group.remove()
            return f"{exc.strerror or exc} ({folder})"
        return group

    @classmethod
    def _make_v1(cls, folders: dict[str, Path], name: str, memory_bytes: int, max_procs: int):
        made: dict[str, Path] = {}
        group = cls(made, 1)
        try:
            for controller in ("memory", "pids", "cpuacct"):
                if controller in folders:
                    (folders[controller] / name).mkdir()
                    made[controller] = folders[controller] / name
            memory = made["memory"]
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (made["pids"] / "pids.max").write_text(str(max_procs))
        except OSError as exc:
            group.remove()
            return f"{exc.strerror or exc} ({exc.filename or ''})"
        return group

    def _file(self, controller: str, name: str) -> Path | None:
        folder = self.folders.get("all" if self.version == 2 else controller)
        return folder / name if folder is not None else None

    def attacher(self):
        """A function that moves the calling process into the cgroup, for the child between fork and exec.

        The paths are made here, in the parent: in the child, while other threads of the worker may hold
        locks, it runs bare system calls only (os.open, os.write, os.close)."""
        procs = [os.fsencode(folder / "cgroup.procs") for folder in self.folders.values()]

        def attach() -> None:
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)

        return attach

    def pids(self) -> list[int]:
        found: set[int] = set()
        for folder in self.folders.values():
            try:
                found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the sandbox at the memory limit."""
        path = self._file("memory", "memory.events" if self.version == 2 else "memory.oom_control")
        try:
            fields = dict(line.split() for line in path.read_text().splitlines() if line.strip())
        except (OSError, ValueError, AttributeError):
            return False
        if "oom_kill" in fields:
            return int(fields["oom_kill"]) > 0
        # Kernels before 4.13 count no kills in v1: the limit was hit, and the program failed.
        failcnt = self._file("memory", "memory.failcnt")
        try:
            return int(failcnt.read_text()) > 0
        except (OSError, ValueError, AttributeError):
            return False

    def cpu_secs(self) -> float | None:
        try:
            if self.version == 2:
                stat = dict(line.split() for line in self._file("all", "cpu.stat").read_text().splitlines())
                return int(stat["usage_usec"]) / 1e6
            usage = self._file("cpuacct", "cpuacct.usage")
            return int(usage.read_text()) / 1e9 if usage is not None else None
        except (OSError, ValueError, KeyError):
            return None

    def kill(self) -> int:
        """Kills every process in the cgroup; returns how many there were at first."""
        kill_file = self._file("all", "cgroup.kill") if self.version == 2 else None
        if kill_file is not None and kill_file.exists():
            return kill_until_gone(self.pids, kill_all=lambda: kill_file.write_text("1"))
        return kill_until_gone(self.pids)

    def remove(self) -> None:
        """Kills what is left and removes the folders; a folder still busy is left for the next time."""
        self.kill()
        for folder in self.folders.values():
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        logger.warning("sandbox: could not remove cgroup %s: %s", folder, exc)
                        break
                    time.sleep(0.02)


def kill_until_gone(find: Callable[[], list[int]], *, kill_all: Callable[[], object] | None = None) -> int:
    """SIGKILLs what `find` lists (or calls `kill_all`) until it lists nothing: a process may fork while
    the others die. Returns how many there were at first."""
    first = None
    for _ in range(KILL_ROUNDS):
        pids = find()
        if first is None:
            first = len(pids)
        if not pids:
            break
        if kill_all is not None:
            kill_all()
        else:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
    return first or 0
