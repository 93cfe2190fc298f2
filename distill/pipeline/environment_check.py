"""The proof of a prepared environment. Runs inside the sandbox as the environment step's main.py, never
in the app: the standard library only, with the environment's Python.

Imports each of the repository's top-level names in a child process of its own (an import that hangs,
exits or crashes the interpreter spoils only its own line), finds which installed distribution is the
repository (pip records the folder it was installed from in direct_url.json), and takes the lock with
`pip freeze`. Writes it all to results.json, which the host reads (environment.py).
"""

import json
import subprocess
import sys
import time
from importlib import metadata

SOURCE = "file:///tmp/source"  # where the install phase copies the clone to build it (environment.py)


def last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def check_import(name: str, timeout: float) -> dict:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=timeout
        )
        error = "" if done.returncode == 0 else last_line(done.stderr) or f"exit code {done.returncode}"
    except subprocess.TimeoutExpired:
        error = f"the import did not finish within {timeout:g} s"
    return {"name": name, "ok": not error, "error": error[:500], "secs": round(time.monotonic() - started, 2)}


def repository_distributions() -> list[dict]:
    found = []
    for dist in metadata.distributions():
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if str(direct.get("url", "")).startswith(SOURCE):
            found.append({"name": dist.metadata["Name"], "version": dist.version})
    return found


def main() -> None:
    with open("environment_check.json") as f:
        config = json.load(f)
    imports = []
    for name in config["names"]:
        result = check_import(name, config["import_secs"])
        imports.append(result)
        print(f"import {name}: {'ok' if result['ok'] else result['error']} ({result['secs']} s)", flush=True)
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True
    )
    results = {
        "python": sys.version.split()[0],
        "imports": imports,
        "repository": repository_distributions(),
        "freeze": freeze.stdout.splitlines(),
        "freeze_error": last_line(freeze.stderr) if freeze.returncode else "",
    }
    with open("results.json", "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
