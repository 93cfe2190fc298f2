"""The steps of distilling a repository. Each does one step of a run and saves what it made.

Every step is idempotent: run again after a crash, it redoes or skips its own work and never touches an
earlier step's results. The order and the state changes live in `distill.services`; this module knows
nothing of workers or HTTP.
"""

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from distill import llm
from distill.models import FileRating, Iteration, Run
from distill.pipeline import dependencies, diagnosis, parsing, prompts, proof, sources, survey
from distill.pipeline.live import LiveOutput

logger = logging.getLogger(__name__)

RESULTS_MAX_BYTES = 2 * 1024 * 1024
PROMPT_OUTPUT_CHARS = 6000  # of stdout/stderr shown to the judge and the fixer
PRIORITY_FOLDERS = ("examples", "example", "demo", "demos", "tutorials", "notebooks", "docs", "scripts")
LOW_PRIORITY_FOLDERS = ("tests", "test", "testing", "benchmarks", "ci", ".github")


class StepFailed(Exception):
    """A step could not do its work for a reason the curator should read (permanent for this run)."""


def clone_dir(run: Run) -> Path:
    return settings.DATA_DIR / "clones" / str(run.pk)


def env_dir(run: Run) -> Path:
    return settings.DATA_DIR / "envs" / str(run.pk)


# Fetch ------------------------------------------------------------------------------------------------


def fetch(run: Run) -> None:
    dest = clone_dir(run)
    if dest.exists():  # a half-made clone of an interrupted fetch
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limits = sources.FetchLimits(
        clone_timeout_secs=getattr(settings, "DISTILL_CLONE_TIMEOUT_SECS", 300),
        max_repo_bytes=getattr(settings, "DISTILL_MAX_REPO_MB", 500) * 1024 * 1024,
        max_files=getattr(settings, "DISTILL_MAX_REPO_FILES", 100_000),
    )
    fetched = sources.fetch(
        run.source_url,
        dest,
        allowed_hosts=settings.DISTILL_ALLOWED_HOSTS,
        allow_local=settings.DISTILL_ALLOW_LOCAL_SOURCES,
        limits=limits,
    )
    run.commit_sha = fetched.commit_sha
    run.source_title = fetched.title
    run.save(update_fields=["commit_sha", "source_title"])


# Survey -----------------------------------------------------------------------------------------------


def survey_repository(run: Run) -> None:
    root = clone_dir(run)
    if not root.is_dir():
        raise StepFailed("the clone is missing; retry the run from the fetch step")
    found = survey.survey(root)
    if not found.files and found.readme is None:
        raise StepFailed("the repository holds no source files or README to learn from")
    config = run.config

    if not run.repository_description:
        run.repository_description = _purpose(run, found)
        run.save(update_fields=["repository_description"])

    by_path = {f.path: f for f in found.files}
    already = set(run.file_ratings.values_list("path", flat=True))
    todo = [f for f in _by_priority(found.files) if f.path not in already][
        : config.get("max_rated_files", 200)
    ]
    batch_size = config.get("rating_batch_size", 8)
    # Each file is shown to the rater only up to this size: ratings need the gist, not all of it.
    excerpt_tokens = max(
        200,
        min(
            config.get("max_tokens_per_file", 12000), config.get("context_tokens", 128000) // (batch_size + 3)
        ),
    )
    for start in range(0, len(todo), batch_size):
        _rate_batch(run, todo[start : start + batch_size], excerpt_tokens)

    ratings = list(run.file_ratings.all())
    chosen = survey.select_files(
        [(r.path, r.tokens, r.rating) for r in ratings],
        budget_tokens=config.get("file_budget_tokens", 60000),
        max_tokens_per_file=config.get("max_tokens_per_file", 12000),
    )
    chosen_by_path = {c.path: c for c in chosen}
    for rating in ratings:
        choice = chosen_by_path.get(rating.path)
        rating.selected = choice is not None
        rating.selected_tokens = choice.selected_tokens if choice else 0
        source = by_path.get(rating.path)
        rating.excerpt = (
            survey.truncate_to_tokens(source.text, choice.selected_tokens) if choice and source else ""
        )
    FileRating.objects.bulk_update(ratings, ["selected", "selected_tokens", "excerpt"])
    if found.readme and not any(r.selected for r in ratings):
        # Nothing rated well enough: the README alone is still a basis for an example.
        FileRating.objects.update_or_create(
            run=run,
            path=found.readme.path,
            defaults={
                "tokens": found.readme.tokens,
                "selected": True,
                "selected_tokens": min(found.readme.tokens, config.get("max_tokens_per_file", 12000)),
                "excerpt": survey.truncate_to_tokens(
                    found.readme.text, config.get("max_tokens_per_file", 12000)
                ),
            },
        )


def _purpose(run: Run, found) -> str:
    listed = found.files[:300]
    readme = found.readme.text if found.readme else "(no README)"
    readme = survey.truncate_to_tokens(readme, max(500, run.config.get("context_tokens", 128000) // 4))
    prompt = prompts.render(
        "purpose",
        title=run.source_title or run.source_url,
        readme=readme,
        listed=len(listed),
        total=len(found.files),
        file_list="\n".join(f"{f.path} ({f.tokens})" for f in listed),
    )
    reply = llm.complete(
        run=run,
        stage="purpose",
        model=run.config["model_code"],
        messages=[{"role": "user", "content": prompt}],
        max_tokens=600,
    )
    return parsing.prose(reply.text)


def _by_priority(files):
    def key(f):
        parts = f.path.lower().split("/")
        if parts[0] in LOW_PRIORITY_FOLDERS or any(p.startswith("test_") for p in parts):
            rank = 2
        elif parts[0] in PRIORITY_FOLDERS or len(parts) == 1:
            rank = 0
        else:
            rank = 1
        return (rank, len(parts), f.path)

    return sorted(files, key=key)


def _rate_batch(run: Run, batch, excerpt_tokens: int) -> None:
    paths = [f.path for f in batch]
    body = "\n\n".join(
        f"--- FILE: {f.path} ({f.tokens} tokens) ---\n{survey.truncate_to_tokens(f.text, excerpt_tokens)}"
        for f in batch
    )
    prompt = prompts.render("rate", purpose=run.repository_description, files=body)
    messages = [{"role": "user", "content": prompt}]
    ratings, error = {}, ""
    # Rating is an aid, not a gate: a malformed or failed reply is retried once, then those files are
    # left unrated. Only the run's budget stops the survey.
    for _attempt in range(2):
        try:
            reply = llm.complete(
                run=run,
                stage="rate",
                model=run.config["model_fast"],
                messages=messages,
                max_tokens=200 + 80 * len(batch),
            )
            ratings = parsing.parse_ratings(reply.text, expected_paths=paths)
            break
        except parsing.ReplyError as exc:
            error = f"unreadable rating reply: {exc}"
            messages = [
                *messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": prompts.render("repair", error=exc)},
            ]
        except (llm.LLMUnavailable, llm.LLMRefused) as exc:
            error = f"rating call failed: {exc}"
    for f in batch:
        rating = ratings.get(f.path)
        FileRating.objects.update_or_create(
            run=run,
            path=f.path,
            defaults={
                "tokens": f.tokens,
                "rating": rating.rating if rating else None,
                "reason": rating.reason if rating else "",
                "error": "" if rating else (error or "the reply had no rating for this file"),
            },
        )


# Generate and fix -------------------------------------------------------------------------------------


def generate(run: Run) -> Iteration:
    existing = run.iterations.filter(number=1).first()
    if existing:
        return existing
    prompt = prompts.render(
        "generate",
        title=run.source_title or run.source_url,
        purpose=run.repository_description,
        files=_selected_files_text(run),
        format=prompts.render("program_format", changes_section=""),
        **_rules(run),
    )
    program = _ask_for_program(run, stage="generate", prompt=prompt, iteration=1, require_change_log=False)
    return _save_iteration(run, 1, program, change_log=program.change_log or "First version.")


def fix(run: Run, previous: Iteration) -> Iteration:
    number = previous.number + 1
    existing = run.iterations.filter(number=number).first()
    if existing:
        return existing
    prompt = prompts.render(
        "fix",
        title=run.source_title or run.source_url,
        purpose=run.repository_description,
        files=_selected_files_text(run, share=0.5),
        **failed_version(run, previous),
        **_rules(run),
    )
    program = _ask_for_program(
        run,
        stage="fix",
        prompt=prompt,
        iteration=number,
        require_change_log=True,
        previous_files=previous.files,
    )
    return _save_iteration(run, number, program, change_log=program.change_log)


def failed_version(run: Run, previous: Iteration) -> dict:
    """What a fix prompt (fix.txt, paper_fix.txt) shows of the version that failed, and the format."""
    change_log = "\n".join(
        f"Iteration {it.number}: {it.change_log}" for it in run.iterations.filter(number__lte=previous.number)
    )
    return {
        "iteration": previous.number,
        "current": _program_text(previous.files),
        "change_log": change_log or "(none)",
        "problems": "\n".join(f"- {p}" for p in problems_of(previous)) or "- (none recorded)",
        "exit_code": previous.exit_code if previous.exit_code is not None else "none (it was stopped)",
        "stdout": trim_output(previous.stdout),
        "stderr": trim_output(diagnosis.without_recorder_frames(previous.stderr)),
        "install_log": trim_output(previous.install_log, limit=2000) or "(environment reused)",
        "format": prompts.render(
            "program_format", changes_section="=== CHANGES ===\n<what this version changes, and why>\n"
        ),
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


def _rules(run: Run) -> dict:
    clone = clone_dir(run)
    declared = dependencies.declared_dependencies(clone) if clone.is_dir() else []
    return {
        "runtime_mins": run.config.get("max_runtime_mins", 45),
        "memory_mb": run.config.get("memory_mb", 4096),
        "network": "with network access" if run.config.get("network_run") else "without network access",
        # One a line, as requirements.txt takes them: given in one line, a small model copied the line.
        "dependencies": "\n".join(f"    {r}" for r in declared) if declared else "    (none declared)",
    }


def _selected_files_text(run: Run, share: float = 1.0) -> str:
    budget = int(run.config.get("file_budget_tokens", 60000) * share)
    parts, used = [], 0
    for rating in run.file_ratings.filter(selected=True).order_by("-rating", "path"):
        if used + rating.selected_tokens > budget and parts:
            break
        parts.append(f"--- FILE: {rating.path} ---\n{rating.excerpt}")
        used += rating.selected_tokens
    return "\n\n".join(parts) or "(no file was selected)"


def _program_text(files: dict) -> str:
    return "\n".join(f"=== FILE: {name} ===\n{content.rstrip()}" for name, content in files.items())


def _ask_for_program(
    run: Run,
    *,
    stage: str,
    prompt: str,
    iteration: int,
    require_change_log: bool,
    previous_files: dict | None = None,
) -> parsing.Program:
    messages = [{"role": "user", "content": prompt}]
    repairs = run.config.get("max_reply_repairs", 2)
    for attempt in range(repairs + 1):
        reply = llm.complete(
            run=run,
            stage=stage,
            model=run.config["model_code"],
            messages=messages,
            iteration=iteration,
            max_tokens=run.config.get("code_max_output_tokens", 16000),
        )
        try:
            program = parsing.parse_program(reply.text, require_change_log=require_change_log)
            if previous_files is not None and _same_program(program.files, previous_files):
                # Running it again would fail again, and spend an iteration on nothing.
                raise parsing.ReplyError(
                    "the files are the same as the version that failed; change them to remove the root cause"
                )
            return program
        except parsing.ReplyError as exc:
            logger.info("run %s: %s reply unusable (attempt %s): %s", run.pk, stage, attempt + 1, exc)
            error = exc
            messages = [
                *messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": prompts.render("repair", error=exc)},
            ]
    raise StepFailed(f"the code model's reply could not be used after {repairs + 1} tries: {error}")


def _same_program(files: dict, previous: dict) -> bool:
    def normal(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return files.keys() == previous.keys() and all(normal(files[n]) == normal(previous[n]) for n in files)


def _save_iteration(run: Run, number: int, program: parsing.Program, *, change_log: str) -> Iteration:
    iteration = Iteration.objects.create(
        run=run,
        number=number,
        files=program.files,
        metadata=program.metadata.model_dump(),
        change_log=change_log,
    )
    Run.objects.filter(pk=run.pk).update(iteration_count=number)
    run.iteration_count = number
    return iteration


# Execute ----------------------------------------------------------------------------------------------


def execute(run: Run, iteration: Iteration, *, should_cancel: Callable[[], bool]) -> None:
    from distill.sandbox import ExecutionRequest, Limits, get_sandbox

    job = iteration.output_dir
    if job.exists():  # a half-run of an interrupted execution: start clean
        shutil.rmtree(job)
    job.mkdir(parents=True)
    config = run.config
    clone = clone_dir(run) if clone_dir(run).is_dir() else None
    # Only a repository run has code the program must be proven to use; a paper's run has none.
    packages = proof.repository_packages(clone) if clone is not None else proof.Packages()
    recording = proof.recording_config(packages) if run.kind == Run.Kind.REPOSITORY else None
    request = ExecutionRequest(
        files=iteration.files,
        job_dir=job,
        env_dir=env_dir(run),
        repo_dir=clone,
        recording=recording,
        limits=Limits(
            wall_secs=float(config.get("max_runtime_mins", 45)) * 60,
            memory_mb=config.get("memory_mb", 4096),
            max_procs=config.get("max_procs", 256),
            network_run=bool(config.get("network_run", False)),
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
    }
    iteration.log, _ = _read_json(job / "log.json")
    iteration.results, iteration.measured = _measure(result, job)
    # A program stopped by a cancel says nothing of itself: no proof of its record, no likely cause.
    recorded = recording and not result.cancelled
    _prove(iteration, proof.verify(result.record, recording["key"], packages, clone) if recorded else None)
    if not iteration.measured["passed"] and not result.cancelled:
        iteration.measured["diagnosis"] = _diagnose(run, iteration, result, packages, clone)
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
    run: Run, iteration: Iteration, result, packages: proof.Packages, clone: Path | None
) -> list[str]:
    """The likely cause of a failed iteration (distill/pipeline/diagnosis.py)."""
    evidence = iteration.proof or {}
    unused = evidence.get("verdict") == proof.UNUSED
    return diagnosis.diagnose(
        output=result.stderr + "\n" + result.stdout[-20000:],
        install_log=result.install_log,
        packages={**packages.packages, **packages.modules},
        declared=dependencies.declared_dependencies(clone) if clone is not None else [],
        main_source=iteration.files.get("main.py", ""),
        imported={m[0].split(".")[0] for m in evidence.get("modules", [])} if unused else None,
        paper=run.kind == Run.Kind.PAPER,
    )


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


def judge(run: Run, iteration: Iteration) -> bool:
    """Measured first; only a program that passed the measurement is put before the LLM judge."""
    if iteration.state == Iteration.State.JUDGED:
        return bool(iteration.succeeded)
    measured = iteration.measured or {"passed": False, "reasons": ["the program did not run"]}
    judgement = None
    if measured.get("passed"):
        judgement = _llm_judgement(run, iteration)
    iteration.judgement = judgement
    iteration.succeeded = bool(measured.get("passed") and judgement and judgement.get("passed"))
    iteration.state = Iteration.State.JUDGED
    iteration.save(update_fields=["judgement", "succeeded", "state"])
    return iteration.succeeded


def _llm_judgement(run: Run, iteration: Iteration) -> dict:
    prompt = prompts.render(
        "judge",
        purpose=run.repository_description,
        code=iteration.code,
        exit_code=iteration.exit_code,
        duration=f"{iteration.duration_secs or 0:.1f}",
        stdout=trim_output(iteration.stdout),
        stderr=trim_output(iteration.stderr),
        results=json.dumps(iteration.results, indent=1)[:PROMPT_OUTPUT_CHARS],
        evidence=evidence_text(iteration),
    )
    messages = [{"role": "user", "content": prompt}]
    repairs = run.config.get("max_reply_repairs", 2)
    for _attempt in range(repairs + 1):
        reply = llm.complete(
            run=run,
            stage="judge",
            model=run.config["model_code"],
            messages=messages,
            iteration=iteration.number,
            max_tokens=1200,
        )
        try:
            verdict = parsing.parse_judgement(reply.text)
            return {**verdict.model_dump(), "passed": verdict.passed}
        except parsing.ReplyError as exc:
            error = exc
            messages = [
                *messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": prompts.render("repair", error=exc)},
            ]
    # An unreadable verdict is not a pass, and not a crash: the fixer sees why.
    return {
        "faithful": False,
        "accurate": False,
        "complete": False,
        "issues": [],
        "critical_issues": [f"the judge's reply could not be read: {error}"],
        "explanation": "",
        "passed": False,
        "unreadable": True,
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


ERROR_LINE = re.compile(r"(error|exception|traceback|warning|failed|line \d+|^\s+File \")", re.IGNORECASE)


def trim_output(text: str, limit: int = PROMPT_OUTPUT_CHARS) -> str:
    """Head, every error-looking line, and tail, within `limit` characters: the root cause is rarely
    in the middle of a log, but the error lines may be anywhere."""
    if len(text) <= limit:
        return text
    lines = text.splitlines()
    head, tail = lines[:20], lines[-60:]
    middle = [line for line in lines[20:-60] if ERROR_LINE.search(line)]
    kept = head + ["... [trimmed] ..."] + middle[-80:] + ["... [trimmed] ..."] + tail
    trimmed = "\n".join(line[:500] for line in kept)
    return (
        trimmed[: limit // 3] + "\n... [trimmed] ...\n" + trimmed[-(2 * limit) // 3 :]
        if len(trimmed) > limit
        else trimmed
    )
