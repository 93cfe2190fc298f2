"""Kills a local sandbox phase's processes, and removes its cgroup, once the worker lets go of this process's stdin: when the
phase ends, or when the worker dies (killed, out of memory). Run as its own process, by path, so that it
imports nothing of the app: `python watchdog.py UID [CGROUP_PROCS_FILE...]` (UID -1: none).

The chain of parent-death signals (`--die-with-parent`, `setpriv --pdeathsig`) breaks at bubblewrap's
own outer process, which clears it: a sandbox once outlived its killed worker. This does not rely on it.
"""

import os
import signal
import sys
import time


def _alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead already
    except (OSError, IndexError):
        return False


def _pids(uid: int, procs_files: list[str]) -> set[int]:
    found = set()
    for path in procs_files:
        try:
            with open(path) as procs:
                found.update(procs.read().split())
        except OSError:
            pass
    if uid >= 0:
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                    found.add(entry)
            except OSError:
                pass
    return {int(pid) for pid in found if _alive(pid)} - {os.getpid()}


def main() -> None:
    uid, procs_files = int(sys.argv[1]), sys.argv[2:]
    while os.read(0, 1):  # returns b"" when the worker closes its end or dies
        pass
    for _ in range(100):  # a fork racing the kill needs another round
        pids = _pids(uid, procs_files)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    for path in procs_files:  # the empty cgroup goes too, when the worker is not there to remove it
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass


if __name__ == "__main__":
    main()
