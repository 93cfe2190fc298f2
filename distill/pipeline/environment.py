"""Prepare environment: build the repository's environment in the sandbox and prove it, before any program.

Small and large models alike lost most iterations to the environment, not the science: requirements in
Markdown backticks, a runscript placeholder left in place, `/repo` on sys.path against a PyPI install.
The environment-first builders show the way: build from the repository's own metadata, verify, and only
then ask for a program. So this step, deterministically:

- copies the clone to a writable place in the sandbox (setuptools writes build/ and *.egg-info into the
  source tree, so the read-only /repo cannot be installed in place) and pip-installs it with its declared
  dependencies (dependencies.py reads them with `packaging`; nothing runs on the host). A repository
  without build metadata, or whose build fails, gets its declared dependencies and a `.pth` file that
  puts its root (or src/) on the path, so no program needs sys.path tricks;
- proves it: each top-level package of the repository is imported in the sandbox (environment_check.py,
  network off), and `pip freeze` is its lock;
- only when that is not ready, asks the code model for changes (requirements to add, a pin, an extra),
  bounded by the profile's `max_environment_repairs`; one attempt per step, so each is a line on the
  timeline and a killed worker loses only the attempt in flight.

The environment lives in the commit's env_dir under a key of (commit, extra requirements): every
iteration, retry and re-run of the commit reuses it, and a program that adds requirements gets its own,
built from the lock plus its extras. The result is stored on the run (`Run.environment`) and given to
every program prompt; the program's requirements.txt and runscript.sh are derived from it.
"""

import fcntl
import hashlib
import json
import shlex
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from packaging.utils import canonicalize_name

from distill import llm
from distill.models import Run
from distill.pipeline import dependencies, diagnosis, parsing, prompts, proof

READY, PARTIAL, FAILED = "ready", "partial", "failed"
LABELS = {READY: "ready", PARTIAL: "partly importable", FAILED: "failed"}
RANK = {READY: 2, PARTIAL: 1, FAILED: 0}
CHECK_SCRIPT = Path(__file__).with_name("environment_check.py")
MAX_NAMES = 30  # top-level names imported by the check
IMPORT_SECS = 120  # per import: a module that computes or waits at import is not the environment's fault
CHECK_MINS = 10  # the whole check, all imports and the freeze
LOG_CHARS = 100_000  # of the install log kept on the run (the end, where pip says what failed)
PROMPT_LOCK_LINES = 60
PYPI_TIMEOUT_SECS = 5
PYPI_MAX_BYTES = 20 * 1024 * 1024


class EnvironmentFailed(Exception):
    """Nothing of the repository could be imported after every attempt; the message says why."""


# Where environments live -----------------------------------------------------------------------------


def env_dir(run: Run) -> Path:
    """The commit's environments (and pip's cache), shared by every run of the commit; else the run's own."""
    if run.commit_sha:
        return settings.DATA_DIR / "envs" / f"commit-{run.commit_sha}"
    return settings.DATA_DIR / "envs" / str(run.pk)


def release(run: Run) -> None:
    """Called when a run ends: a run's own environments go (they take gigabytes); a commit's stay, cached."""
    if not run.commit_sha:
        shutil.rmtree(env_dir(run), ignore_errors=True)


def environment_key(base: str, extras: list[str]) -> str:
    return hashlib.sha256("\0".join(["env-v1", base, *sorted(extras)]).encode()).hexdigest()[:24]


@contextmanager
def _locked(folder: Path):
    """Two runs of one commit must not build the same environment folder at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "prepare.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# The step ----------------------------------------------------------------------------------------------


def prepare(run: Run, clone: Path, *, should_cancel: Callable[[], bool]) -> tuple[bool, str]:
    """One attempt at the environment. Returns (done, message): not done means another attempt follows.

    Raises EnvironmentFailed when every attempt is spent and nothing of the repository imports."""
    state = {k: v for k, v in (run.environment or {}).items() if k not in ("live", "live_attempt")}
    if state.get("done"):
        return True, summary(state)
    attempts = list(state.get("attempts", []))
    repairs = sum(1 for a in attempts if a.get("model"))
    extras, problems, proposal, model = [], [], "", False
    if attempts:
        extras = None if _rule_tried(attempts) else deterministic_repair(state, clone)
        if extras is not None:
            proposal = "missing modules: their declared lowest versions, or their distributions"
        else:
            extras, problems, proposal = _proposal(run, clone, state)
            model = True
    live = _LiveTail(run, state, number=len(attempts) + 1, should_cancel=should_cancel)
    attempt = build(run, clone, extras, should_cancel=live.should_cancel, on_output=live.on_output)
    attempt.update(number=len(attempts) + 1, model=model, proposal=proposal, problems=problems)
    attempts.append(attempt)
    if attempt.get("cancelled"):  # not an attempt: the step starts it again when the run is retried
        _save(run, state or None)
        return False, "Cancelled while the environment was being prepared."
    # The run keeps its best attempt whole (the state) and every attempt in brief.
    candidates = [attempt, state] if len(attempts) > 1 else [attempt]
    best = max(candidates, key=lambda a: (RANK.get(a["status"], 0), _imported(a), a["number"]))
    repairs += model
    out_of_repairs = repairs >= int(run.config.get("max_environment_repairs", 2))
    rule = None if _rule_tried(attempts) else deterministic_repair(best, clone)
    done = best["status"] == READY or (out_of_repairs and rule is None)
    state = {**best, "attempts": [_brief(a) for a in attempts], "done": done}
    if done and state["status"] != FAILED:
        state["repository"] = _published(run, clone, state)
    _save(run, state)
    if not done:
        then = "trying again" if rule is not None else "asking the model"
        return (
            False,
            f"Attempt {attempt['number']}: environment {LABELS[attempt['status']]}: {attempt['reason']}; {then}.",
        )
    if state["status"] == FAILED:
        raise EnvironmentFailed(f"the environment could not be prepared: {state['reason']}")
    return True, summary(state)


def pending(run: Run) -> bool:
    """A repository run whose environment is still to be prepared (or failed: a retry prepares it again)."""
    state = run.environment or {}
    return run.kind == Run.Kind.REPOSITORY and (not state.get("done") or state.get("status") == FAILED)


def usable(run: Run) -> dict | None:
    """The run's prepared environment when programs are written for it (ready, or partly importable)."""
    state = run.environment or {}
    if run.kind == Run.Kind.REPOSITORY and state.get("done") and state.get("status") in (READY, PARTIAL):
        return state
    return None


def summary(state: dict) -> str:
    imported = [i["name"] for i in state.get("imports", []) if i["ok"]]
    failed = [i["name"] for i in state.get("imports", []) if not i["ok"]]
    how = "with the model's changes" if state.get("model") else "without a model"
    how += f" (attempt {state['number']})" if state.get("number", 1) > 1 else ""
    text = f"Environment {LABELS[state['status']]} {how} in {state.get('secs', 0):.0f} s: imports {', '.join(imported) or 'nothing'}"
    return text + (f"; failed: {', '.join(failed)}." if failed else ".")


def _save(run: Run, state: dict | None) -> None:
    run.environment = state
    Run.objects.filter(pk=run.pk).update(environment=state)


class _LiveTail:
    """The attempt's output while it runs, in `Run.environment["live"]`, for the run page to show."""

    TAIL_CHARS = 8000
    FLUSH_SECS = 1.0

    def __init__(self, run: Run, state: dict, *, number: int, should_cancel: Callable[[], bool]):
        self.run_id, self.state, self.number, self._should_cancel = run.pk, state, number, should_cancel
        self.tail, self.dirty, self.flushed_at = "", False, 0.0
        self.lock = threading.Lock()

    def on_output(self, stream: str, text: str) -> None:  # from the sandbox's reader threads
        with self.lock:
            self.tail, self.dirty = (self.tail + text)[-self.TAIL_CHARS :], True

    def should_cancel(self) -> bool:
        if time.monotonic() - self.flushed_at >= self.FLUSH_SECS:
            self.flushed_at = time.monotonic()
            with self.lock:
                tail, dirty, self.dirty = self.tail, self.dirty, False
            if dirty:
                live = {**self.state, "live": tail, "live_attempt": self.number}
                Run.objects.filter(pk=self.run_id).update(environment=live)
            return self._should_cancel()
        return False


def _rule_tried(attempts: list[dict]) -> bool:
    return any(a["number"] > 1 and not a.get("model") for a in attempts)


def _imported(attempt: dict) -> int:
    return sum(1 for i in attempt.get("imports", []) if i["ok"])


def _brief(attempt: dict) -> dict:
    """An attempt as the run keeps it in its list: the best attempt's log and lock are kept once."""
    if "imports" not in attempt:
        return attempt  # already in brief
    brief = {k: v for k, v in attempt.items() if k not in ("install_log", "lock", "imports", "attempts")}
    return brief | {"imported": _imported(attempt)}


# Building and proving ----------------------------------------------------------------------------------


def build(
    run: Run,
    clone: Path,
    extras: list[str],
    *,
    should_cancel: Callable[[], bool],
    on_output: Callable[[str, str], None] | None = None,
) -> dict:
    """Build (or reuse) the environment of the clone plus `extras`, and prove it in the sandbox."""
    from distill.sandbox import ExecutionRequest, Limits, get_sandbox

    packages = proof.repository_packages(clone)
    # Packages first: past the cap, root modules are what is left out.
    names = [*sorted(packages.packages), *sorted(set(packages.modules) - set(packages.packages))][:MAX_NAMES]
    own = canonicalize_name(dependencies.distribution_name(clone) or "-")
    declared = dependencies.declared_dependencies(clone)
    replaced = {dependencies.normalized_name(line) for line in extras}
    # An extra of the repository itself ("kneed[plot]") is installed with it; others replace its pins.
    repository_extras = sorted({e for line in extras if dependencies.normalized_name(line) == own
                                for e in dependencies.parsed(line).extras})  # fmt: skip
    requirements = [line for line in extras if dependencies.normalized_name(line) != own]
    requirements += [line for line in declared if dependencies.normalized_name(line) not in replaced]
    mode = "package" if dependencies.is_installable(clone) else "path"
    key = environment_key(run.commit_sha or f"run-{run.pk}", extras)
    job = run.output_dir / "environment"
    if job.exists():
        shutil.rmtree(job)
    job.mkdir(parents=True)
    config = run.config
    request = ExecutionRequest(
        files={
            "main.py": CHECK_SCRIPT.read_text(),
            "environment_check.json": json.dumps({"names": names, "import_secs": IMPORT_SECS}),
            "requirements.txt": "".join(f"{line}\n" for line in requirements),
            "runscript.sh": install_script(
                mode=mode,
                root=path_root(clone),
                requirements=bool(requirements),
                repository_extras=repository_extras,
                fallback=True,
            ),
        },
        job_dir=job,
        env_dir=env_dir(run),
        repo_dir=clone,
        env_key=key,
        limits=Limits(
            wall_secs=CHECK_MINS * 60,
            install_secs=float(config.get("environment_install_mins", 15)) * 60,
            memory_mb=config.get("memory_mb", 4096),
            max_procs=config.get("max_procs", 256),
            network_run=False,
        ),
    )
    with _locked(env_dir(run)):
        result = get_sandbox(config.get("sandbox", "local"), config.get("modal")).execute(
            request, on_output=on_output, should_cancel=should_cancel
        )
        record = env_dir(run) / f"{key}.json"
        if result.env_reused and record.is_file():
            install_log = json.loads(record.read_text()).get("install_log", "")
        else:
            install_log = result.install_log[-LOG_CHARS:]
            if not result.install_failed:
                record.write_text(json.dumps({"install_log": install_log}))
    (job / "install_log.txt").write_text(install_log)
    attempt = {
        "key": key,
        "extras": extras,
        "mode": mode,
        "root": path_root(clone),
        "repository_extras": repository_extras,
        "install_log": install_log,
        "install_secs": round(result.install_secs, 1),
        "check_secs": round(result.duration_secs, 1),
        "secs": round(result.install_secs + result.duration_secs, 1),
        "reused": result.env_reused,
        "cancelled": result.cancelled,
        "imports": [],
        "lock": [],
        "python": "",
        "installed": None,
    }
    if result.install_failed:
        return {**attempt, "status": FAILED, "reason": result.failure}
    checked = _read_check(job)
    if checked is None:
        reason = (
            result.failure or f"the import check exited with code {result.exit_code} and wrote no results"
        )
        return {**attempt, "status": FAILED, "reason": reason}
    installed = checked["repository"][0] if checked["repository"] else None
    attempt.update(
        imports=checked["imports"],
        python=checked["python"],
        installed=installed,
        mode="package" if installed else "path",
        # The repository's own line (`kneed @ file:///tmp/source`) is not a pin: it is named otherwise.
        lock=[
            line
            for line in checked["freeze"]
            if "@ file://" not in line
            and not line.startswith("-e")
            and dependencies.normalized_name(line) != own
        ],
    )
    if not names:
        return {
            **attempt,
            "status": FAILED,
            "reason": "the repository has no top-level package or module to import",
        }
    # Its packages decide; a script at its root (run.py parsing sys.argv at import) is listed, not counted,
    # unless the repository is only such modules.
    essential = set(packages.packages) or set(packages.modules)
    counted = [i for i in attempt["imports"] if i["name"] in essential]
    ok = sum(1 for i in counted if i["ok"])
    if ok == len(counted):
        return {**attempt, "status": READY, "reason": f"all {ok} imports work"}
    failed = [i for i in counted if not i["ok"]]
    reason = "; ".join(f"import {i['name']}: {i['error']}" for i in failed[:3])
    return {**attempt, "status": PARTIAL if ok else FAILED, "reason": reason}


def _read_check(job: Path) -> dict | None:
    path = job / "results.json"
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 5 * 1024 * 1024:
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("imports"), list):
        return None
    return {
        "python": str(data.get("python", ""))[:20],
        "imports": [
            {
                "name": str(i.get("name", ""))[:100],
                "ok": bool(i.get("ok")),
                "error": str(i.get("error", ""))[:500],
                "secs": float(i.get("secs") or 0),
            }
            for i in data["imports"][:MAX_NAMES]
            if isinstance(i, dict)
        ],
        "repository": [
            {"name": str(d.get("name", ""))[:200], "version": str(d.get("version", ""))[:100]}
            for d in data.get("repository") or []
            if isinstance(d, dict)
        ],
        "freeze": [str(line)[:300] for line in (data.get("freeze") or [])[:1000]],
    }


def path_root(clone: Path) -> str:
    """Where the clone's packages are, as the sandbox sees it: /repo/src for a src layout, else /repo."""
    packages = proof.repository_packages(clone)
    folders = [*packages.packages.values(), *packages.modules.values()]
    return "/repo/src" if folders and all(f.startswith("src/") for f in folders) else "/repo"


def install_script(
    *,
    mode: str,
    root: str,
    requirements: bool,
    repository_extras: list[str],
    fallback: bool,
    skip_lines: list[str] = (),
) -> str:
    """The runscript of an environment: its requirements, then the repository from a writable copy.

    `fallback`: when the repository does not build, its requirements alone and the clone on the path."""
    # --use-pep517: without it pip 23 installs a setup.py project without a wheel the legacy way, which
    # records no direct_url.json, and the check could not tell the repository from a PyPI package.
    target = "--use-pep517 " + shlex.quote(
        "/tmp/source" + (f"[{','.join(repository_extras)}]" if repository_extras else "")
    )
    install_requirements = "pip install -r requirements.txt\n" if requirements else ""
    if skip_lines and requirements:
        # The repository's own lines name it for outside; here it is built from the clone.
        patterns = " ".join(f"-e {shlex.quote(line)}" for line in skip_lines)
        install_requirements = (
            f"grep -vxF {patterns} requirements.txt > /tmp/requirements.txt\n"
            "pip install -r /tmp/requirements.txt\n"
        )
    on_path = (
        "python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])' | "
        f'{{ read -r site; echo {shlex.quote(root)} > "$site/distill_repository.pth"; }}\n'
    )
    lines = [
        "# The repository's environment, made by CodeDistiller (distill/pipeline/environment.py).\n",
        "# setuptools writes into the source tree, so the repository is built from a writable copy of /repo.\n",
    ]
    if mode == "path":
        return "".join(
            [*lines, install_requirements, "# No build metadata: the clone goes on the path.\n", on_path]
        )
    copy = "rm -rf /tmp/source\ncp -a /repo /tmp/source\n"
    if not fallback:
        # Its dependencies are in the lock; those of an extra of its own a program asks for are not.
        deps = "" if repository_extras else "--no-deps "
        return "".join([*lines, install_requirements, copy, f"pip install {deps}{target}\n"])
    both = f"pip install -r requirements.txt {target}" if requirements else f"pip install {target}"
    return "".join([
        *lines, copy,
        f"if ! {both}; then\n",
        "  echo 'CodeDistiller: the repository did not build; its requirements alone, and the clone on the path'\n",
        *(f"  {line}" for line in (install_requirements + on_path).splitlines(keepends=True)),
        "fi\n",
    ])  # fmt: skip


# A program's files, derived from the environment -------------------------------------------------------

REPOSITORY_HEADING = "# The repository itself"
EXTRAS_HEADING = "# This program's extra requirements"


def program_files(state: dict, main: str, extras: list[str], other: dict | None = None) -> dict:
    """main.py, requirements.txt and runscript.sh of a program, as they run inside and outside our sandbox.

    requirements.txt names the repository itself (its published version, or its git commit), the
    environment's lock and the program's extras: outside, `pip install -r requirements.txt` is all it
    takes (distill.models.HOW_TO_RUN). Inside, the runscript skips the repository's line and builds it
    from the clone instead, so the program runs the very commit that was proven."""
    repository = (state.get("repository") or {}).get("requirement", "")
    # An extra of the repository itself ("kneed[plot]": a library's own advice when its plot needs
    # matplotlib) is installed with the repository from the clone, never from the index.
    own = canonicalize_name((state.get("installed") or {}).get("name") or "-")
    own_lines = [line for line in extras if _is_own_extra(line, own)]
    own_extras = {e for line in own_lines for e in dependencies.parsed(line).extras}
    extra_names = {dependencies.normalized_name(line) for line in extras}
    lock = [line for line in state.get("lock", []) if dependencies.normalized_name(line) not in extra_names]
    parts = []
    if repository:
        parts.append(f"{REPOSITORY_HEADING}\n{repository}\n")
    if lock:
        parts.append("# The prepared environment (pip freeze)\n" + "".join(f"{line}\n" for line in lock))
    if extras:
        parts.append(f"{EXTRAS_HEADING}\n" + "".join(f"{line}\n" for line in extras))
    inside = install_script(
        mode=state.get("mode", "path"),
        root=state.get("root", "/repo"),
        requirements=bool(lock or extras),
        repository_extras=sorted({*state.get("repository_extras", []), *own_extras}),
        fallback=False,
        skip_lines=[line for line in [repository, *own_lines] if line],
    )
    runscript = (
        "# Outside CodeDistiller's sandbox: pip install -r requirements.txt, then python main.py.\n"
        "if [ ! -f /sandbox/run.sh ]; then\n  exec pip install -r requirements.txt\nfi\n" + inside
    )
    return {**(other or {}), "main.py": main, "requirements.txt": "".join(parts), "runscript.sh": runscript}


def _is_own_extra(line: str, own: str) -> bool:
    """Whether a requirement line is the repository itself with extras ("kneed[plot]")."""
    requirement = dependencies.parsed(line)
    return (
        bool(requirement and requirement.extras and not requirement.url)
        and canonicalize_name(requirement.name) == own
    )


def beyond_environment(state: dict, requirements: list[str]) -> list[str]:
    """The requirements a program asks for that the prepared environment does not already satisfy.

    Models list what they import (numpy, the repository itself) out of habit; each such line would
    otherwise cost a new environment for nothing."""
    own = canonicalize_name((state.get("installed") or {}).get("name") or "-")
    locked = {}
    for line in state.get("lock", []):
        requirement = dependencies.parsed(line)
        pinned = (
            [spec.version for spec in requirement.specifier if spec.operator == "=="] if requirement else []
        )
        if pinned:
            locked[canonicalize_name(requirement.name)] = pinned[0]
    extras = []
    for line in requirements:
        requirement = dependencies.parsed(line)
        name = canonicalize_name(requirement.name) if requirement else ""
        if name == own and not requirement.url and not requirement.extras:
            continue
        version = locked.get(name)
        if requirement and version and not requirement.extras and not requirement.url:
            if requirement.specifier.contains(version, prereleases=True):
                continue
        extras.append(line)
    return extras


def program_extras(files: dict) -> list[str]:
    """The extra requirements of a derived program: the lines under its extras' heading."""
    text = files.get("requirements.txt", "")
    marker = f"{EXTRAS_HEADING}\n"
    return [line for line in text.split(marker, 1)[1].splitlines() if line.strip()] if marker in text else []


def program_env_key(state: dict, extras: list[str]) -> str | None:
    """The environment a program runs in: the prepared one, or one of its own when it adds requirements."""
    if not state.get("key"):
        return None
    return state["key"] if not extras else environment_key(state["key"], extras)


def _published(run: Run, clone: Path, state: dict) -> dict:
    """The requirement line that names the repository outside our sandbox, and whether PyPI was asked."""
    installed = state.get("installed") or {}
    name = installed.get("name") or dependencies.distribution_name(clone)
    version = installed.get("version", "")
    published = _on_pypi(name, version) if name and version else None
    if published or (published is None and name and version and not _local_source(run)):
        requirement = f"{name}=={version}"
    elif name and run.commit_sha:
        url = run.source_url
        if _local_source(run):
            # With a host: pip before 24 (Python 3.11's venv has 23) refuses `git+file:///path` as invalid.
            url = Path(run.source_url).resolve().as_uri().replace("file://", "file://localhost", 1)
        requirement = f"{name} @ git+{url}@{run.commit_sha}"
    else:
        requirement = ""
    return {"name": name, "version": version, "published": published, "requirement": requirement}


def _local_source(run: Run) -> bool:
    return not run.source_url.startswith(("https://", "http://"))


def _on_pypi(name: str, version: str) -> bool | None:
    """True or False from the package index; None when it could not be asked (offline): unchecked."""
    base = settings.DISTILL_PYPI_URL.rstrip("/")
    if not base:
        return None
    # The project's page, not the version's: some mirrors answer only the former.
    url = f"{base}/{urllib.request.quote(name)}/json"
    try:
        with urllib.request.urlopen(url, timeout=PYPI_TIMEOUT_SECS) as response:
            releases = json.loads(response.read(PYPI_MAX_BYTES)).get("releases") or {}
    except urllib.error.HTTPError as exc:
        return False if exc.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None
    return bool(releases.get(version))  # a version whose files were all deleted cannot be installed


# What programs are told --------------------------------------------------------------------------------


def prompt_facts(state: dict | None, declared: list[str]) -> str:
    """The environment as a program prompt gives it: exactly what imports, what is installed, at which versions."""
    if not state or not state.get("done") or state.get("status") not in (READY, PARTIAL):
        # One a line, as requirements.txt takes them: given in one line, a small model copied the line.
        listed = "\n".join(f"    {line}" for line in declared) or "    (none declared)"
        return (
            "  Dependencies are installed first by runscript.sh into a fresh virtual environment, with network.\n"
            "  The repository itself is available read-only at /repo; prefer installing the library from PyPI\n"
            "  (requirements.txt) when it is published there, otherwise add /repo to sys.path.\n"
            "  requirements.txt lists the packages the program needs, one requirement a line (nothing else is\n"
            f"  installed). The repository declares these dependencies:\n{listed}"
        )
    ok = [i["name"] for i in state.get("imports", []) if i["ok"]]
    failed = [f"{i['name']} ({i['error'][:160]})" for i in state.get("imports", []) if not i["ok"]]
    installed = state.get("installed") or {}
    how = (
        f"installed as {installed['name']} {installed['version']}" if installed
        else f"on the path ({state.get('root', '/repo')})"
    )  # fmt: skip
    lock = state.get("lock", [])
    listed = "\n".join(f"      {line}" for line in lock[:PROMPT_LOCK_LINES]) or "      (nothing else)"
    if len(lock) > PROMPT_LOCK_LINES:
        listed += f"\n      ... and {len(lock) - PROMPT_LOCK_LINES} more"
    lines = [
        f"- It runs in an environment prepared and proven before it (Python {state.get('python') or '3'}):",
        f"  - The repository is {how}. These imports work: {', '.join(ok) or 'none'}.",
    ]
    if failed:
        lines.append(f"  - These imports fail; do not use them: {'; '.join(failed)}.")
    lines += [
        "  - Import the repository's modules as installed packages; never add /repo or any folder to sys.path.",
        "  - Installed, at these versions (pip freeze):",
        listed,
        "  - requirements.txt and runscript.sh are made from this environment: list in requirements.txt",
        "    only packages main.py needs beyond these, one a line, or leave that file out.",
    ]
    return "\n".join(lines)


# The model's changes, when the deterministic install was not ready --------------------------------------


def deterministic_repair(state: dict, clone: Path) -> list[str] | None:
    """Extra requirements for a second try without a model, or None when there is nothing to try.

    An import that fails on a missing module is repaired by rule: a declared dependency that installed
    but no longer has that module (pwlf declares pyDOE>=0.3.8; pyDOE 1.6 renamed its module to pydoe) is
    pinned to its lowest declared version, the one the repository was written against; an undeclared
    one is added by its distribution's name. Tried once per run."""
    if state.get("status") == READY:
        return None
    declared = {
        dependencies.normalized_name(line): line for line in dependencies.declared_dependencies(clone)
    }
    own = set(proof.repository_packages(clone).names)
    extras = []
    for item in state.get("imports", []):
        match = diagnosis.NO_MODULE.search(item.get("error", ""))
        if item["ok"] or not match:
            continue
        module = match.group(1)
        top = module.split(".")[0]
        if top in own:
            continue
        distribution = dependencies.distribution_of(module)
        name = canonicalize_name(distribution)
        if name in declared:
            lowest = _lowest_version(declared[name])
            if lowest:
                extras.append(f"{dependencies.parsed(declared[name]).name}=={lowest}")
        else:
            extras.append(distribution)
    return sorted(set(extras)) or None


def _lowest_version(line: str) -> str:
    requirement = dependencies.parsed(line)
    for spec in requirement.specifier if requirement else ():
        if spec.operator in (">=", "==", "~=") and "*" not in spec.version:
            return spec.version
    return ""


def _proposal(run: Run, clone: Path, state: dict) -> tuple[list[str], list[str], str]:
    """(extras, problems, reason): the code model's changes to the requirements, cleaned and checked."""
    failed = [f"import {i['name']}: {i['error']}" for i in state.get("imports", []) if not i["ok"]]
    prompt = prompts.render(
        "environment",
        title=run.source_title or run.source_url,
        declared="\n".join(f"    {line}" for line in dependencies.declared_dependencies(clone))
        or "    (none)",
        tried="\n".join(f"    {line}" for line in state.get("extras", []))
        or "    (nothing beyond the declared ones)",
        reason=state.get("reason", ""),
        imports="\n".join(failed) or "(no import was tried)",
        install_log=diagnosis.trim_output(state.get("install_log", ""), limit=6000) or "(empty)",
    )
    messages = [{"role": "user", "content": prompt}]
    repairs = run.config.get("max_reply_repairs", 2)
    for _attempt in range(repairs + 1):
        reply = llm.complete(
            run=run,
            stage="environment",
            model=run.config["model_code"],
            messages=messages,
            max_tokens=600,
            json_mode=True,  # a JSON object is the whole reply; the local model is held to it by a grammar
        )
        try:
            change = parsing.parse_environment_change(reply.text)
        except parsing.ReplyError as exc:
            messages = [*messages, {"role": "assistant", "content": reply.text},
                        {"role": "user", "content": prompts.render("repair", error=exc)}]  # fmt: skip
            continue
        extras, problems = dependencies.clean_requirements("\n".join(change.requirements))
        return extras, problems, change.reason[:500]
    return [], ["the model's reply could not be read"], ""
