"""Builders of recorded LLM replies (cassette entries) for the pipeline's tests."""

import json
from pathlib import Path

METADATA = {
    "description": "Computes summary statistics with minilib.",
    "inclusion_criteria": "Use when you need minilib's statistics.",
    "exclusion_criteria": "Not for large data.",
    "example_type": "demonstration",
    "compute_needs": "cpu, under 1 minute",
    "gpu_required": False,
    "api_keys_needed": [],
    "python_version": "3.11",
}

WORKING_MAIN = """\
import json
import sys

sys.path.insert(0, "/repo")
from minilib import mean_squared

log = ["computing"]
value = mean_squared([1.0, 2.0, 3.0])
print("mean squared:", value)
with open("results.json", "w") as f:
    json.dump({"mean_squared": value}, f)
with open("log.json", "w") as f:
    json.dump(log + ["done"], f)
"""

# Prints and saves what minilib would compute, without running it: a plausible fake.
FAKE_MAIN = """\
import json

print("mean squared:", 4.666666666666667)
with open("results.json", "w") as f:
    json.dump({"mean_squared": 4.666666666666667}, f)
"""

BROKEN_MAIN = """\
import json
import sys

sys.path.insert(0, "/repo")
from minilib import mean_squares  # wrong name: the first version fails

value = mean_squares([1.0])
with open("results.json", "w") as f:
    json.dump({"mean_squared": value}, f)
"""


def program(
    main: str = WORKING_MAIN,
    *,
    changes: str | None = None,
    requirements: str = "",
    runscript: str = "pip install -q -r requirements.txt\n",
    metadata: dict | None = None,
) -> str:
    """A code model's reply in the sectioned format the prompts ask for."""
    parts = [
        "Here is the example.",
        "=== FILE: main.py ===", main,
        "=== FILE: requirements.txt ===", requirements,
        "=== FILE: runscript.sh ===", runscript,
        "=== METADATA ===", json.dumps(metadata or METADATA),
    ]  # fmt: skip
    if changes is not None:
        parts += ["=== CHANGES ===", changes]
    parts.append("=== END ===")
    return "\n".join(parts)


def verdict(passed: bool = True, **extra) -> str:
    data = {
        "faithful": passed, "accurate": passed, "complete": passed,
        "issues": [], "critical_issues": [] if passed else ["it does not compute anything"],
        "explanation": "Uses minilib.mean_squared on a tiny input." if passed else "Not a real computation.",
    }  # fmt: skip
    data.update(extra)
    return "```json\n" + json.dumps(data) + "\n```"


def ratings(*paths: str, rating: int = 8) -> str:
    return json.dumps([{"path": p, "rating": rating, "reason": "core code"} for p in paths])


def cassette(path: Path, entries: list) -> Path:
    """entries: (stage, reply) pairs, or dicts for errors and figures."""
    replies = [e if isinstance(e, dict) else {"stage": e[0], "reply": e[1]} for e in entries]
    path.write_text(json.dumps({"replies": replies}))
    return path
