"""The program loop that repository and paper runs share: ask for a program (and repair a malformed reply),
save it as an iteration, execute it in the sandbox, measure, prove, judge, fix.

A kind of run (`repository.py`, `paper_steps.py`) brings only its prompts and, for a repository, the code
the program must be proven to use (`Repository`); the order of the steps and the state changes live in
`distill.services`. Each step is a small function of its own, so that a step can be put between two.

Every step is idempotent: run again after a crash, it redoes or skips its own work and never touches an
earlier step's results.
"""

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Protocol

from django.utils import timezone

from distill import llm
from distill.models import Iteration, Run
from distill.pipeline import dependencies, diagnosis, environment, parsing, preflight, prompts, proof
from distill.pipeline.live import LiveOutput
from distill.sandbox import ExecutionRequest, Limits, get_sandbox

logger = logging.getLogger(__name__)

RESULTS_MAX_BYTES = 2 * 1024 * 1024


class StepFailed(Exception):
    """A step could not do its work for a reason the curator should read (permanent for this run)."""


class ReplyUnusable(StepFailed):
    """The model's reply was still malformed after its repairs; `error` is the last problem found."""

    def __init__(self, message: str, error: Exception):
        super().__init__(message)
        self.error = error


class JudgeUnheeded(Exception):
    """The program passed the measurement, and the fixer could not act on the judge's objection (its reply
    stayed unusable, often the same program again): the run fails with the judge's reason, not in error,
    and that iteration is the one offered for approval."""


class Cancelled(Exception):
    """A curator cancelled between two model calls; what was made so far is saved, and a retry goes on."""


def stop_if_cancelled(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled


class Kind(Protocol):
    """What a kind of run brings to the loop: `distill.pipeline.repository` and `paper_steps` each define
    these. `distill.services` calls them in the order of the run's statuses; the rest is this module's."""

    def read_source(self, run: Run) -> str: ...  # fetching; returns what it did, for people

    def is_read(self, run: Run) -> bool: ...

    def survey_source(self, run: Run, *, should_cancel: Callable[[], bool]) -> str: ...

    def is_surveyed(self, run: Run) -> bool: ...

    def write_first_version(self, run: Run, *, should_cancel: Callable[[], bool]) -> Iteration: ...

    def repository_of(self, run: Run) -> "Repository | None": ...  # what the program must be proven to use

    def judge_prompt(self, run: Run, iteration: Iteration) -> str: ...

    def fix_prompt(self, run: Run, previous: Iteration) -> str: ...

    def conclude(self, run: Run, iteration: Iteration) -> str: ...  # added to the run's last message


# The profile's fields that are the sandbox's Limits of the same name (their defaults are the profile's).
SANDBOX_LIMITS = (
    "memory_mb",
    "max_procs",
    "disk_mb",
    "env_disk_mb",
    "shm_mb",
    "max_saved_files",
    "max_saved_mb",
)


env_dir = environment.env_dir  # where the sandbox keeps the programs' environments (the commit's, cached)


@dataclass
class Repository:
    """The repository a program must be proven to use. `clone` is None when the clone is gone: nothing
    can then be proven used, and the program cannot pass. A paper's run has no repository at all."""

    clone: Path | None

    @cached_property
    def packages(self) -> proof.Packages:
        return proof.repository_packages(self.clone) if self.clone is not None else proof.Packages()

    @cached_property
    def declared(self) -> list[str]:
        return dependencies.declared_dependencies(self.clone) if self.clone is not None else []


def rules(run: Run, repository: Repository | None) -> dict:
    """The limits a program is written for, as the generate and fix prompts state them."""
    declared = repository.declared if repository is not None else []
    return {
        "runtime_mins": run.config.get("max_runtime_mins", 45),
        "memory_mb": run.config.get("memory_mb", 4096),
        "network": "with network access" if run.config.get("network_run") else "without network access",
        "environment": environment.prompt_facts(run.environment, declared),
    }


def program_format(run: Run, *, changes: bool) -> str:
    """The reply format of the run's program prompts (a prepared environment asks for less)."""
    return reply_format(prepared=environment.usable(run) is not None, changes=changes)


def reply_format(*, prepared: bool, changes: bool) -> str:
    """The reply format: with a prepared environment, main.py and only the extra requirements it needs."""
    if prepared:
        requirements = (
            "=== FILE: requirements.txt ===\n"
            "<only packages main.py needs beyond the prepared environment, one a line; leave it out if none>\n"
        )
    else:
        requirements = (
            "=== FILE: requirements.txt ===\n<one pip requirement a line, pinned where it matters>\n"
            "=== FILE: runscript.sh ===\n"
            "<bash commands that install the dependencies only, e.g. pip install -r requirements.txt>\n"
        )
    return prompts.render(
        "program_format",
        requirements_section=requirements,
        changes_section="=== CHANGES ===\n<what this version changes, and why>\n" if changes else "",
    )


# Ask --------------------------------------------------------------------------------------------------


def ask(
    run: Run,
    *,
    stage: str,
    messages: list[dict],
    parse,
    max_tokens: int,
    iteration: int | None = None,
    schema: dict | None = None,
    continue_cut: bool = False,
):
    """(parsed value, reply text) of the code model. A malformed reply is sent back for repair a bounded
    number of times, then the step fails with the last problem found. `schema` (a JSON reply's schema)
    holds the models that take one to it (llm.complete). With `continue_cut`, a reply cut by the token
    limit is continued (continued_if_cut) before it is judged."""
    repairs = run.config.get("max_reply_repairs", 2)
    error = None
    for attempt in range(repairs + 1):
        reply = llm.complete(
            run=run, stage=stage, model=run.config["model_code"], messages=messages, iteration=iteration,
            max_tokens=max_tokens, schema=schema,
        )  # fmt: skip
        text = reply.text
        if continue_cut:
            text = continued_if_cut(run, stage=stage, messages=messages, reply=reply, parse=parse,
                                    max_tokens=max_tokens, iteration=iteration)  # fmt: skip
        try:
            return parse(text), text
        except parsing.ReplyError as exc:
            logger.info("run %s: %s reply unusable (attempt %s): %s", run.pk, stage, attempt + 1, exc)
            error = exc
            messages = [
                *messages,
                {"role": "assistant", "content": text},
                {"role": "user", "content": prompts.render("repair", error=exc)},
            ]
    raise ReplyUnusable(
        f"the code model's {stage} reply could not be used after {repairs + 1} tries: {error}", error
    )


MAX_CONTINUATIONS = 2


def continued_if_cut(
    run: Run, *, stage: str, messages: list[dict], reply, parse, max_tokens: int, iteration: int | None
) -> str:
    """A reply that the token limit cut (it used all of max_tokens and does not parse), continued where it
    stopped, a bounded number of times: a small model's plan often needs a little more than one reply's
    room, and asking again from the start would be cut at the same place. The continuation is not held to
    the reply's schema: it is the rest of a JSON text, not a whole one."""
    text = reply.text
    for _ in range(MAX_CONTINUATIONS):
        if reply.tokens_out < max_tokens:
            break
        try:
            parse(text)
            break
        except parsing.ReplyError:
            pass
        logger.info(
            "run %s: the %s reply was cut at %s tokens; continuing it", run.pk, stage, reply.tokens_out
        )
        reply = llm.complete(
            run=run, stage=stage, model=run.config["model_code"], iteration=iteration, max_tokens=max_tokens,
            messages=[*messages, {"role": "assistant", "content": text},
                      {"role": "user", "content": prompts.render("continue")}],
        )  # fmt: skip
        text = joined(text, reply.text)
    return text


def joined(start: str, rest: str) -> str:
    """A cut reply and its continuation. A model that began again from the top (the same opening) wrote
    a whole new reply: that one is kept. A fence that opens the continuation is not part of the reply."""
    opening = start.strip()[:20]
    if opening and rest.strip().startswith(opening):
        return rest
    if rest.lstrip().startswith("```") and not start.rstrip().endswith("```"):
        rest = rest.lstrip().split("\n", 1)[1] if "\n" in rest.lstrip() else ""
        rest = rest.rstrip().removesuffix("```").rstrip()
    return start + rest


def ask_for_program(run: Run, *, stage: str, prompt: str, iteration: int, parse=None) -> parsing.Program:
    """A whole program (files, metadata, change log) in the sectioned format of program_format.txt.

    A program whose only problems are those the check before running found (preflight.CannotRun: an
    undefined name, no results.json; not a file that does not compile), still there after the model's
    repairs, runs as it is, said in its change log. Seen on a paper: three replies in a row called an
    undefined `load_config()` and the run ended in error before anything ran; run, it fails with a
    traceback the fix loop reads, in a fix prompt that asks for the root cause first, which a small model
    answers better than a repeated repair.
    """
    try:
        program, _ = ask(
            run,
            stage=stage,
            messages=[{"role": "user", "content": prompt}],
            parse=parse or partial(parse_program, run, require_change_log=False),
            max_tokens=run.config.get("code_max_output_tokens", 16000),
            iteration=iteration,
        )
    except ReplyUnusable as exc:
        if not (isinstance(exc.error, preflight.CannotRun) and exc.error.runnable):
            raise
        program = exc.error.program
        tries = run.config.get("max_reply_repairs", 2) + 1
        problems = str(exc.error).removeprefix(preflight.CANNOT_RUN)
        note = f"{RUN_AS_IT_IS}{problems} (still so after {tries} replies): the run shows what it causes."
        program = program.model_copy(update={"change_log": f"{program.change_log}\n{note}".strip()})
    return program


# The notes CodeDistiller adds to a change log (preflight.check, ask_for_program, parse_program). A model
# that copies the last change log into its own copies them too (seen on kneed: iteration 3's said what the
# check had done to iteration 2), and they would tell of the new version what was done to the last one.
RUN_AS_IT_IS = "Run as it is, although "
HARNESS_NOTE = re.compile(
    rf"^(?:{re.escape(preflight.BEFORE_RUNNING)}|{re.escape(RUN_AS_IT_IS)}|Added .+ to requirements\.txt: "
    r"|Unpinned .+ in requirements\.txt: ).*\n?",
    re.M,
)


def parse_program(
    run: Run,
    text: str,
    *,
    require_change_log: bool,
    keep: dict | None = None,
    metadata_default: dict | None = None,
    add_requirements: list[str] = (),
    unpin: dict[str, list[str] | None] | None = None,
    json_defaults: bool = False,
) -> parsing.Program:
    """A reply's program with its requirement lines cleaned and checked. With a prepared environment only
    main.py is asked for: requirements.txt (the lock plus the extras) and runscript.sh are derived, so
    that both always parse and install."""
    prepared = environment.usable(run)
    program = parsing.parse_program(
        text,
        require_change_log=require_change_log,
        required_files=("main.py",) if prepared else parsing.REQUIRED_FILES,
        metadata_default=metadata_default,
    )
    copied = HARNESS_NOTE.sub("", program.change_log).strip()
    if copied != program.change_log:
        program = program.model_copy(update={"change_log": copied})
    requirements, problems = dependencies.clean_requirements(program.files.get("requirements.txt", ""))
    written = {dependencies.normalized_name(line) for line in requirements}
    added = [line for line in add_requirements if dependencies.normalized_name(line) not in written]
    requirements += added
    notes = (
        [f"Added {', '.join(added)} to requirements.txt: the last version could not import it."]
        if added
        else []
    )
    requirements, unpinned = dependencies.unpinned(requirements, unpin or {})
    if unpinned:
        notes.append(f"Unpinned {'; '.join(unpinned)} in requirements.txt: the last install failed on it.")
    if notes:
        change_log = "\n".join([program.change_log, *notes]).strip()
        program = program.model_copy(update={"change_log": change_log})
    files = dict(program.files)
    if prepared:
        other = {
            name: text for name, text in files.items() if name not in ("requirements.txt", "runscript.sh")
        }
        extras = environment.beyond_environment(prepared, requirements)
        files = environment.program_files(prepared, files["main.py"], extras, other)
    else:
        files["requirements.txt"] = "".join(f"{line}\n" for line in requirements)
    if keep:
        # Models leave out files they did not change even when told to give every file (a paper's
        # program has many): those are kept as they were.
        files = {**keep, **files}
    # A program that cannot pass by construction (a syntax error, an undefined name, no results.json) is
    # sent back as a repair of the reply, without spending a sandbox run.
    return preflight.check(
        program.model_copy(update={"files": files, "requirement_problems": problems}),
        known=preflight.known_imports(_installed_modules(prepared, requirements), run.api_digest),
        json_defaults=json_defaults,
    )


def _installed_modules(prepared: dict | None, requirements: list[str]) -> set[str]:
    """The top-level modules a program's environment installs: the prepared environment's lock and the
    repository's packages it imports, and the program's own requirements."""
    lines = [*(prepared or {}).get("lock", []), *requirements]
    modules = {
        module for line in lines for module in dependencies.modules_of(dependencies.normalized_name(line))
    }
    imported = (prepared or {}).get("imports", [])
    return modules | {item["name"].split(".")[0] for item in imported if item.get("ok")}


def save_iteration(run: Run, number: int, program: parsing.Program, *, change_log: str) -> Iteration:
    iteration = Iteration.objects.create(
        run=run,
        number=number,
        files=program.files,
        metadata=program.metadata.model_dump(),
        change_log=change_log,
        # Shown with the iteration and named to the fixer when the program fails.
        sandbox={"requirement_problems": program.requirement_problems}
        if program.requirement_problems
        else {},
    )
    Run.objects.filter(pk=run.pk).update(iteration_count=number)
    run.iteration_count = number
    return iteration


# Fix --------------------------------------------------------------------------------------------------


def fix(run: Run, previous: Iteration, *, prompt: Callable[[Run, Iteration], str]) -> Iteration:
    """The next version of a program that did not pass, written from `prompt(run, previous)`."""
    number = previous.number + 1
    existing = run.iterations.filter(number=number).first()
    if existing:
        return existing

    # A module the last version could not import is installed whatever the model writes: told to add
    # matplotlib to requirements.txt (kneed's plot needs it), the 1.5B model sent main.py back unchanged.
    missing = (previous.measured or {}).get("missing_requirements", [])
    # A pin pip could not install is taken off whatever the model writes: told that corner==0.4.1 does
    # not exist, the 1.5B model wrote corner==0.4.0.
    unpin = (previous.measured or {}).get("unavailable_versions", {})
    json_defaults = bool(diagnosis.NOT_JSON.search(previous.stderr or ""))

    same = "the files are the same as the version that failed; change them to remove the root cause"

    def parse(text: str) -> parsing.Program:
        try:
            program = parse_program(
                run,
                text,
                require_change_log=True,
                keep=previous.files,
                metadata_default=previous.metadata or None,
                add_requirements=missing,
                unpin=unpin,
                json_defaults=json_defaults,
            )
        except preflight.CannotRun as exc:
            if _same_program(exc.program.files, previous.files):
                # Not a program to run as it is (ask_for_program): it is the one that failed.
                raise parsing.ReplyError(f"{same}; and {exc}") from exc
            raise
        if _same_program(program.files, previous.files):
            # Running it again would fail again, and spend an iteration on nothing.
            raise parsing.ReplyError(same)
        return program

    try:
        program = ask_for_program(
            run, stage="fix", prompt=prompt(run, previous), iteration=number, parse=parse
        )
    except ReplyUnusable as exc:
        if not (previous.measured or {}).get("passed"):
            raise
        judgement = previous.judgement or {}
        objection = "; ".join(judgement.get("critical_issues") or judgement.get("issues") or []) or (
            judgement.get("explanation") or "no reason given"
        )
        raise JudgeUnheeded(
            f"Iteration {previous.number} passed the measurement, but the judge did not accept it "
            f"({objection}) and the fix could not act on that: {exc.error}"
        ) from exc
    return save_iteration(run, number, program, change_log=program.change_log)


def failed_version(run: Run, previous: Iteration) -> dict:
    """What a fix prompt (fix.txt, paper_fix.txt) shows of the version that failed, and the format."""
    change_log = "\n".join(
        f"Iteration {it.number}: {it.change_log}" for it in run.iterations.filter(number__lte=previous.number)
    )
    return {
        "iteration": previous.number,
        "current": program_text(written_files(run, previous.files)),
        "change_log": change_log or "(none)",
        "problems": "\n".join(f"- {p}" for p in problems_of(previous)) or "- (none recorded)",
        "exit_code": previous.exit_code if previous.exit_code is not None else "none (it was stopped)",
        "stdout": diagnosis.trim_output(previous.stdout),
        "stderr": diagnosis.trim_output(diagnosis.without_recorder_frames(previous.stderr)),
        "install_log": diagnosis.trim_output(previous.install_log, limit=2000) or "(environment reused)",
        "format": program_format(run, changes=True),
    }


def problems_of(iteration: Iteration) -> list[str]:
    """What the fixer must address: a root cause read from the output, the measured failures, then the
    judge's critical issues."""
    measured = iteration.measured or {}
    problems = [
        f"likely root cause, found in its output: {finding}" for finding in measured.get("diagnosis", [])
    ]
    problems += [f"critical: {reason}" for reason in measured.get("critical", [])]
    problems += measured.get("reasons", [])
    problems += [f"flag: {flag}" for flag in measured.get("flags", [])]
    judgement = iteration.judgement or {}
    problems += [f"critical: {issue}" for issue in judgement.get("critical_issues", [])]
    problems += judgement.get("issues", [])
    for name in ("faithful", "accurate", "complete"):
        if judgement.get(name) is False:
            problems.append(f"the judge found it not {name}: {judgement.get('explanation', '')}".strip())
    return problems


def written_files(run: Run, files: dict) -> dict:
    """The files as the model wrote them: with a prepared environment, main.py (and any module) and only
    its extra requirements, not the derived lock and runscript, which it must not copy or change."""
    if environment.usable(run) is None:
        return files
    written = {name: text for name, text in files.items() if name not in ("requirements.txt", "runscript.sh")}
    extras = environment.program_extras(files)
    if extras:
        written["requirements.txt"] = "".join(f"{line}\n" for line in extras)
    return written


def program_text(files: dict) -> str:
    return "\n".join(f"=== FILE: {name} ===\n{content.rstrip()}" for name, content in files.items())


def _same_program(files: dict, previous: dict) -> bool:
    def normal(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return files.keys() == previous.keys() and all(normal(files[n]) == normal(previous[n]) for n in files)


# Execute, measure, prove ------------------------------------------------------------------------------


def execute(
    run: Run, iteration: Iteration, *, repository: Repository | None, should_cancel: Callable[[], bool]
) -> None:
    """Runs the iteration in the sandbox and saves what it did, measured and, given a repository, proven."""
    job = iteration.output_dir
    if job.exists():  # a half-run of an interrupted execution: start clean
        shutil.rmtree(job)
    job.mkdir(parents=True)
    config = run.config
    packages = repository.packages if repository is not None else proof.Packages()
    clone = repository.clone if repository is not None else None
    recording = proof.recording_config(packages) if repository is not None else None
    prepared = environment.usable(run)
    requirement_problems = (iteration.sandbox or {}).get("requirement_problems", [])
    request = ExecutionRequest(
        files=iteration.files,
        job_dir=job,
        env_dir=env_dir(run),
        repo_dir=clone,
        recording=recording,
        # Programs reuse the environment the prepare step proved, whatever their files say.
        env_key=environment.program_env_key(prepared, environment.program_extras(iteration.files))
        if prepared
        else None,
        limits=Limits(
            wall_secs=float(config.get("max_runtime_mins", 45)) * 60,
            network_run=bool(config.get("network_run", False)),
            **{name: config[name] for name in SANDBOX_LIMITS if name in config},
        ),
    )
    # Kept on the instance too: the save() below writes every field, and wrote "not started" back.
    iteration.started_at = timezone.now()
    Iteration.objects.filter(pk=iteration.pk).update(
        state=Iteration.State.RUNNING,
        started_at=iteration.started_at,
        stdout="",
        stderr="",
        install_log="",
        exit_code=None,
    )
    live = LiveOutput(iteration_id=iteration.pk, should_cancel=should_cancel)
    result = get_sandbox(config.get("sandbox", "local"), config.get("modal")).execute(
        request, on_output=live.on_output, should_cancel=live.should_cancel
    )
    live.close()
    _remove_links(job)

    iteration.state = Iteration.State.RAN
    iteration.finished_at = timezone.now()
    iteration.exit_code = result.exit_code
    iteration.timed_out = result.timed_out
    iteration.duration_secs = result.duration_secs
    iteration.stdout = result.stdout
    iteration.stderr = result.stderr
    iteration.install_log = result.install_log
    iteration.sandbox = {
        "install_secs": result.install_secs,
        "env_reused": result.env_reused,
        "out_of_memory": result.out_of_memory,
        "cancelled": result.cancelled,
        "failure": result.failure,
        "cpu_secs": result.cpu_secs,
        "memory_mb": request.limits.memory_mb,
        "notes": result.notes,
        **({"requirement_problems": requirement_problems} if requirement_problems else {}),
    }
    iteration.log, _ = _read_json(job / "log.json")
    iteration.results, iteration.measured = _measure(result, job)
    # A program stopped by a cancel says nothing of itself: no proof of its record, no likely cause.
    recorded = recording and not result.cancelled
    _prove(iteration, proof.verify(result.record, recording["key"], packages, clone) if recorded else None)
    if not iteration.measured["passed"] and not result.cancelled:
        named = [f"requirements.txt: {problem}" for problem in requirement_problems]
        findings, missing = _diagnose(run, iteration, result, repository, prepared=bool(prepared))
        iteration.measured["diagnosis"] = named + findings
        if missing:
            # What the fix adds to requirements.txt whatever the model writes (fix).
            iteration.measured["missing_requirements"] = missing
        unavailable = diagnosis.unavailable_versions(result.install_log)
        if unavailable:
            # The pins the fix takes off whatever the model writes (fix).
            iteration.measured["unavailable_versions"] = unavailable
    flag = proof.literal_results(iteration.results, iteration.files.get("main.py", ""))
    if flag:
        iteration.measured["flags"] = [flag["message"]]
    iteration.saved_files = _saved_files(job / "to_save")
    iteration.save()
    for name, text in (
        ("stdout.txt", result.stdout),
        ("stderr.txt", result.stderr),
        ("install_log.txt", result.install_log),
    ):
        (job / name).write_text(text)


def _diagnose(
    run: Run, iteration: Iteration, result, repository: Repository | None, *, prepared: bool
) -> tuple[list[str], list[str]]:
    """The likely cause of a failed iteration (distill/pipeline/diagnosis.py), and the requirements that
    would install the modules it could not import."""
    evidence = iteration.proof or {}
    unused = evidence.get("verdict") == proof.UNUSED
    packages = repository.packages if repository is not None else proof.Packages()
    output = result.stderr + "\n" + result.stdout[-20000:]
    own = {**packages.packages, **packages.modules}
    declared = repository.declared if repository is not None else []
    findings = diagnosis.diagnose(
        output=output,
        install_log=result.install_log,
        packages=own,
        declared=declared,
        main_source=iteration.files.get("main.py", ""),
        imported={m[0].split(".")[0] for m in evidence.get("modules", [])} if unused else None,
        out_of_memory_mb=iteration.sandbox.get("memory_mb") if result.out_of_memory else None,
        prepared=prepared,
        paper=run.kind == Run.Kind.PAPER,
        api_digest=run.api_digest,
    )
    # A module of the program's own (a paper's model.py, left out) is never a package to install.
    written = {name.split("/")[0].removesuffix(".py"): name for name in iteration.files}
    return findings, diagnosis.missing_requirements(output, {**own, **written}, declared)


def _remove_links(job: Path) -> None:
    """Delete every symlink and special file the program left in its folder.

    The worker reads and writes this folder with the app's rights after the program ended; a link left
    there (`to_save -> /`, `stdout.txt -> ~/.ssh/authorized_keys`) would otherwise turn those reads and
    writes onto the host. Programs have no reason to leave links among their outputs.
    """
    for folder, dirs, files in os.walk(job, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                path.unlink()


def _read_json(path: Path):
    """(value, problem): the parsed JSON file, or None and why not."""
    if not path.is_file() or path.is_symlink():
        return None, f"{path.name} was not written"
    if path.stat().st_size > RESULTS_MAX_BYTES:
        return None, f"{path.name} is larger than {RESULTS_MAX_BYTES // 1024 // 1024} MB"
    try:
        return json.loads(path.read_text(errors="replace")), ""
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON ({exc})"


def _measure(result, job: Path):
    """The measured verdict: exit 0 within the limit and a valid results.json (the proof comes after)."""
    reasons = []
    results, problem = _read_json(job / "results.json")
    if result.cancelled:
        # Its exit code, results and record are those of a program that was stopped, not of one that failed.
        stopped = "during the install" if result.install_failed else "while it ran"
        reasons.append(f"the program was stopped {stopped}: the run was cancelled")
        return results, {"install_failed": result.install_failed, "cancelled": True, "exit_ok": False,
                         "results_ok": False, "passed": False, "reasons": reasons}  # fmt: skip
    if result.failure and not result.timed_out:
        reasons.append(result.failure)
    if result.timed_out:
        reasons.append("the program did not finish within its time limit")
    elif result.out_of_memory:
        reasons.append("the program ran out of memory")
    elif result.exit_code != 0:
        reasons.append(f"the program exited with code {result.exit_code}")
    if problem:
        reasons.append(problem)
    elif not isinstance(results, dict) or not results:
        reasons.append("results.json must hold a non-empty JSON object")
    exit_ok = result.exit_code == 0 and not result.timed_out and not result.cancelled
    results_ok = isinstance(results, dict) and bool(results)
    return results, {
        # The program never started: what it did not do (results, a record) follows from that.
        "install_failed": result.install_failed,
        "exit_ok": exit_ok,
        "results_ok": results_ok,
        "passed": exit_ok and results_ok,
        "reasons": reasons,
    }


def _prove(iteration: Iteration, evidence: dict | None) -> None:
    """Adds the proof to the measured verdict: without it, a run that exits 0 with results is not a pass."""
    iteration.proof = evidence
    if evidence is None:  # nothing to prove: a paper's run has no repository
        iteration.repo_modules_imported = iteration.repo_functions_executed = None
        iteration.repo_lines_executed = iteration.repo_share_covered = None
        return
    measured = iteration.measured
    measured["proof"] = evidence["verdict"]
    measured["uses_repository"] = evidence["verdict"] == proof.PROVEN
    if evidence["verdict"] == proof.UNUSED and not measured["exit_ok"]:
        # It failed before it got to the repository's code (often at an import): that failure is the
        # cause to fix. Listed as critical, "does not use the repository" sent fixers after the wrong one.
        measured["reasons"] = [*measured["reasons"], *(f"{r} before it failed" for r in evidence["reasons"])]
    elif evidence["verdict"] == proof.UNUSED:
        measured["critical"] = evidence["reasons"]
    elif evidence["verdict"] == proof.UNPROVEN and not measured.get("install_failed"):
        measured["reasons"] = [*measured["reasons"], *(f"unproven: {r}" for r in evidence["reasons"])]
    measured["passed"] = bool(measured["passed"] and measured["uses_repository"])
    iteration.repo_modules_imported = len(evidence["modules"])
    iteration.repo_functions_executed = evidence["functions_executed"]
    iteration.repo_lines_executed = evidence["lines_executed"]
    iteration.repo_share_covered = evidence["share_covered"]


def _saved_files(folder: Path) -> list[dict]:
    if not folder.is_dir():
        return []
    saved = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            saved.append({"name": path.relative_to(folder).as_posix(), "size": path.stat().st_size})
    return saved[:500]


# Judge ------------------------------------------------------------------------------------------------


def judge(run: Run, iteration: Iteration, *, prompt: Callable[[Run, Iteration], str]) -> bool:
    """Measured first; only a program that passed the measurement is put before the LLM judge, asked
    with `prompt(run, iteration)`."""
    if iteration.state == Iteration.State.JUDGED:
        return bool(iteration.succeeded)
    measured = iteration.measured or {"passed": False, "reasons": ["the program did not run"]}
    judgement = _llm_judgement(run, iteration, prompt(run, iteration)) if measured.get("passed") else None
    iteration.judgement = judgement
    iteration.succeeded = bool(measured.get("passed") and judgement and judgement.get("passed"))
    iteration.state = Iteration.State.JUDGED
    iteration.save(update_fields=["judgement", "succeeded", "state"])
    return iteration.succeeded


def _llm_judgement(run: Run, iteration: Iteration, prompt: str) -> dict:
    try:
        verdict, _ = ask(
            run,
            stage="judge",
            messages=[{"role": "user", "content": prompt}],
            parse=parsing.parse_judgement,
            max_tokens=1200,
            iteration=iteration.number,
            schema=parsing.JUDGEMENT_SCHEMA,
        )
    except ReplyUnusable as exc:
        # An unreadable verdict is not a pass, and not a crash: the fixer sees why.
        return {
            "faithful": False,
            "accurate": False,
            "complete": False,
            "issues": [],
            "critical_issues": [f"the judge's reply could not be read: {exc.error}"],
            "explanation": "",
            "passed": False,
            "unreadable": True,
        }
    return {**verdict.model_dump(), "passed": verdict.passed}


def judge_output(iteration: Iteration) -> dict:
    """What a judge prompt (judge.txt, paper_judge.txt) shows of the run: exit code, time, output, results."""
    return {
        "exit_code": iteration.exit_code,
        "duration": f"{iteration.duration_secs or 0:.1f}",
        "stdout": diagnosis.trim_output(iteration.stdout),
        "stderr": diagnosis.trim_output(iteration.stderr),
        "results": json.dumps(iteration.results, indent=1)[: diagnosis.PROMPT_OUTPUT_CHARS],
    }


def evidence_text(iteration: Iteration) -> str:
    """What the recorder saw, for the judge: measured facts it should weigh, not take on trust."""
    evidence = iteration.proof
    lines = []
    if evidence is None:
        lines.append("No record was made of which code ran.")
    else:
        names = sorted({module[0] for module in evidence.get("modules", [])})
        functions = ", ".join(f"{f[1]} ({f[0]})" for f in evidence.get("functions", [])[:15])
        share = evidence.get("share_covered")
        lines.append(
            f"It imported {len(names)} of the repository's modules ({', '.join(names[:15]) or 'none'}) and ran "
            f"{evidence.get('functions_executed', 0)} of its functions ({functions or 'none'}), at least "
            f"{evidence.get('lines_executed', 0)} lines"
            + (f", {share:.0%} of its code." if share is not None else ".")
        )
    lines += [f"Flag: {flag}" for flag in (iteration.measured or {}).get("flags", [])]
    return "\n".join(lines)
