"""Overhead of the local sandbox per execution, beyond the program's own time.

    .venv/bin/python bench/sandbox_overhead.py [--runs 10]

The program measures its own time from the start of the interpreter to its end and prints it; the
overhead is the wall time of execute() minus that. The first execution creates the environment.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.sandbox import ExecutionRequest, Limits, get_sandbox  # noqa: E402

# Clocks of two processes are not comparable through perf_counter(): the program reports the time since
# its own process started, from /proc, so that Python's start-up counts as the program's time.
MAIN = """\
import os, time
ticks = os.sysconf("SC_CLK_TCK")
started = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
uptime = float(open("/proc/uptime").read().split()[0])
print(uptime - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    sandbox = get_sandbox("local")
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "main.py": MAIN,
            "requirements.txt": "# none\n",
            "runscript.sh": "pip install -r requirements.txt\n",
        }
        overheads = []
        for i in range(args.runs + 1):
            request = ExecutionRequest(
                files=files,
                job_dir=Path(tmp, f"job{i}"),
                env_dir=Path(tmp, "env"),
                limits=Limits(wall_secs=60),
            )
            started = time.monotonic()
            result = sandbox.execute(request)
            elapsed = time.monotonic() - started
            if result.exit_code != 0:
                sys.exit(f"execution {i} failed: {result.failure or result.stderr}")
            if i == 0:
                print(
                    f"first execution (creates the environment): {elapsed:.2f} s, install {result.install_secs:.2f} s"
                )
                continue
            overheads.append(elapsed - float(result.stdout))
    print(
        f"overhead per execution with the environment reused, {args.runs} runs: "
        f"median {statistics.median(overheads) * 1000:.0f} ms, "
        f"min {min(overheads) * 1000:.0f} ms, max {max(overheads) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
