"""Overhead of recording which of the repository's code a program runs (distill/sandbox/audit.py).

    .venv/bin/python bench/proof_overhead.py [--runs 7]

Runs CPU-bound programs in the real local sandbox against a small pure-Python "repository", with and
without the recorder, alternately, and prints the medians of the program's own time, measured inside the
program from its interpreter's start to its end, so the recorder's start-up and its compiling of the
repository's modules count: CPU time (the figure to read on a shared, loaded machine) and wall time. Pure Python is the worst case: the probes cost a few nanoseconds per call of a repository
function, and work done in compiled code (numpy) pays nothing.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.pipeline import proof  # noqa: E402
from distill.sandbox import ExecutionRequest, Limits, get_sandbox  # noqa: E402

# A repository of small numerical routines: many short calls, loops and a recursion.
LIBRARY = '''\
"""Tiny numerics."""


def square(x):
    return x * x


def mean_squared(xs):
    return sum(square(x) for x in xs) / len(xs)


def integrate(f, a, b, n):
    h = (b - a) / n
    total = 0.5 * (f(a) + f(b))
    for i in range(1, n):
        total += f(a + i * h)
    return total * h


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def sieve(n):
    flags = [True] * (n + 1)
    flags[0] = flags[1] = False
    for i in range(2, int(n**0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = [False] * len(flags[i * i :: i])
    return sum(flags)


class Particle:
    def __init__(self, x, v):
        self.x, self.v = x, v

    def step(self, dt):
        self.v -= self.x * dt
        self.x += self.v * dt


def simulate(n, steps):
    particles = [Particle(i / n, 0.0) for i in range(n)]
    for _ in range(steps):
        for p in particles:
            p.step(0.01)
    return sum(p.x for p in particles)
'''

PROGRAMS = {
    # Most of the time in the repository's code, with a call per element: the probes' worst case.
    "calls": "minilib.mean_squared(range(3_000_000)); minilib.integrate(minilib.square, 0.0, 1.0, 3_000_000); minilib.fib(27)",
    # Loops and method calls, as a simulation does.
    "simulation": "minilib.simulate(2_000, 800); minilib.sieve(5_000_000)",
}
# From the interpreter's start to the end: start-up, imports (the recorder compiles the repository's
# modules) and the work. process_time() counts from the process's start; the wall time comes from /proc,
# in clock ticks.
MAIN = """\
import json, os, sys, time
sys.path.insert(0, "/repo")
import minilib
{work}
ticks = os.sysconf("SC_CLK_TCK")
started = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
uptime = float(open("/proc/uptime").read().split()[0])
json.dump({{"cpu": time.process_time(), "wall": uptime - started}}, open("results.json", "w"))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sandbox = get_sandbox("local")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp, "repo")
        (repo / "minilib").mkdir(parents=True)
        (repo / "minilib" / "__init__.py").write_text(LIBRARY)
        packages = proof.repository_packages(repo)
        for name, work in PROGRAMS.items():
            times: dict[bool, list[dict]] = {False: [], True: []}
            for i in range(args.runs + 1):  # the first pair warms the environment and the page cache
                for recording in (False, True):
                    config = proof.recording_config(packages) if recording else None
                    job = Path(tmp, f"job-{name}-{i}-{recording}")
                    result = sandbox.execute(
                        ExecutionRequest(
                            files={
                                "main.py": MAIN.format(work=work),
                                "requirements.txt": "# none\n",
                                "runscript.sh": "true\n",
                            },
                            job_dir=job,
                            env_dir=Path(tmp, "env"),
                            repo_dir=repo,
                            limits=Limits(wall_secs=300),
                            recording=config,
                        )
                    )
                    assert result.exit_code == 0, result.stderr
                    if recording:
                        verdict = proof.verify(result.record, config["key"], packages, repo)["verdict"]
                        assert verdict == proof.PROVEN, verdict
                    if i:
                        times[recording].append(json.loads((job / "results.json").read_text()))
            for clock in ("cpu", "wall"):
                without = statistics.median(t[clock] for t in times[False])
                with_ = statistics.median(t[clock] for t in times[True])
                print(
                    f"{name:>10} {clock:>4}: median of {args.runs} runs: {without:.3f} s without recording, "
                    f"{with_:.3f} s with it: {100 * (with_ / without - 1):+.1f}%"
                )


if __name__ == "__main__":
    main()
