"""A run's output folder, readable by CodeDistiller's users without the site:

    report.html          self-contained (styles inline, images as data: URIs)
    current_state.json   the reference's fields, and more
    iteration_<n>/       main.py, requirements.txt, runscript.sh, stdout.txt, stderr.txt, log.json,
                         results.json, to_save/
    environment/         the environment step's install log, runscript and import check (results.json)

Written after every step, so an interrupted run still leaves a readable folder.
"""

import base64
import json
import mimetypes
import os
from decimal import Decimal
from pathlib import Path

from django.template.loader import render_to_string

from distill.models import HOW_TO_RUN, Iteration, Run, in_pipeline_order

IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/svg+xml", "image/webp"}
MAX_INLINE_IMAGE_BYTES = 2 * 1024 * 1024


def write_outputs(run: Run) -> Path:
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    iterations = list(run.iterations.all())
    for iteration in iterations:
        _write_iteration_files(iteration)
    state = current_state(run, iterations)
    _atomic_write(out / "current_state.json", json.dumps(state, indent=2, default=str))
    _atomic_write(out / "report.html", render_report(run, iterations, state))
    return out


def current_state(run: Run, iterations: list[Iteration]) -> dict:
    last = iterations[-1] if iterations else None
    ran = [it for it in iterations if it.exit_code is not None or it.state in ("ran", "judged")]
    last_ran = ran[-1] if ran else None
    runtimes = run.steps.runtimes()
    return {
        "repo_url": run.source_url,
        "commit_sha": run.commit_sha,
        "repository_description": run.repository_description,
        "status": run.status,
        "status_message": run.status_message,
        "model_str_code": run.config.get("model_code"),
        "model_str_fast": run.config.get("model_fast"),
        "profile": run.profile,
        "total_cost": float(run.cost_usd),
        "costs": {stage: float(row["cost"] or 0) for stage, row in run.llm_calls.stage_totals().items()},
        "tokens": {"in": run.tokens_in, "out": run.tokens_out},
        "total_runtime_secs": round(sum(runtimes.values()), 3),
        "runtimes": {name: round(secs, 3) for name, secs in runtimes.items()},
        "reflection_idx": max(0, (last.number - 1) if last else 0),
        "is_finished": run.is_finished,
        "change_log": [{"iteration": it.number, "change": it.change_log} for it in iterations],
        "code": last.files.get("main.py", "") if last else "",
        "requirements": last.files.get("requirements.txt", "") if last else "",
        # The prepared environment, without its install log (in the run's environment/ folder).
        "environment": {k: v for k, v in run.environment.items() if k != "install_log"}
        if run.environment
        else None,
        "how_to_run": list(HOW_TO_RUN),
        "runscript": last.files.get("runscript.sh", "") if last else "",
        "metadata": last.metadata if last else {},
        "error_information": run.error_information,
        "classification_list": [
            {"path": r.path, "rating": r.rating, "reason": r.reason, "selected": r.selected, "error": r.error}
            for r in run.file_ratings.all()
        ],
        "execution_result": _execution_result(last_ran),
        "iterations": [
            {
                "number": it.number,
                "exit_code": it.exit_code,
                "timed_out": it.timed_out,
                "duration_secs": it.duration_secs,
                "measured": it.measured,
                "proof": proof_figures(it),
                "judgement": it.judgement,
                "succeeded": it.succeeded,
            }
            for it in iterations
        ],
    }


def _execution_result(iteration: Iteration | None) -> dict | None:
    if iteration is None:
        return None
    return {
        "iteration": iteration.number,
        "exit_code": iteration.exit_code,
        "timed_out": iteration.timed_out,
        "duration_secs": iteration.duration_secs,
        "sandbox": iteration.sandbox,
        "results": iteration.results,
        "log": iteration.log,
        "measured": iteration.measured,
        "proof": iteration.proof,
        "judgement": iteration.judgement,
        "saved_files": iteration.saved_files,
    }


def proof_figures(iteration: Iteration) -> dict | None:
    """What the recorder saw of the repository's code, in short; None when nothing was recorded."""
    if iteration.proof is None:
        return None
    return {
        "verdict": iteration.proof.get("verdict"),
        "label": iteration.proof_label,
        "reasons": iteration.proof.get("reasons", []),
        "modules_imported": iteration.repo_modules_imported,
        "modules": sorted({module[0] for module in iteration.proof.get("modules", [])}),
        "functions_executed": iteration.repo_functions_executed,
        "lines_executed": iteration.repo_lines_executed,
        "executable_lines": iteration.proof.get("executable_lines"),
        "share_covered": iteration.repo_share_covered,
    }


def render_report(run: Run, iterations: list[Iteration], state: dict) -> str:
    last = iterations[-1] if iterations else None
    ran = [it for it in iterations if it.exit_code is not None]
    last_ran = ran[-1] if ran else None
    totals = run.llm_calls.stage_totals()
    runtimes = run.steps.runtimes(labelled=True)
    stages = in_pipeline_order(set(totals) | set(runtimes))
    return render_to_string(
        "distill/report.html",
        {
            "run": run,
            "state": state,
            "how_to_run": HOW_TO_RUN,
            "last": last,
            "last_ran": last_ran,
            "iterations": iterations,
            "ratings": run.file_ratings.all(),
            "stage_rows": [
                {
                    "stage": stage,
                    "cost": totals.get(stage, {}).get("cost") or Decimal(0),
                    "tokens_in": totals.get(stage, {}).get("tokens_in") or 0,
                    "tokens_out": totals.get(stage, {}).get("tokens_out") or 0,
                    "secs": runtimes.get(stage),
                }
                for stage in stages
            ],
            "images": _inline_images(last_ran) if last_ran else [],
            "results_json": json.dumps(last_ran.results, indent=2)
            if last_ran and last_ran.results is not None
            else "",
            "log_json": json.dumps(last_ran.log, indent=2) if last_ran and last_ran.log is not None else "",
        },
    )


def _inline_images(iteration: Iteration) -> list[dict]:
    folder = iteration.output_dir / "to_save"
    images = []
    for saved in iteration.saved_files:
        path = folder / saved["name"]
        kind = mimetypes.guess_type(path.name)[0]
        if (
            kind in IMAGE_TYPES
            and path.is_file()
            and not path.is_symlink()
            and saved["size"] <= MAX_INLINE_IMAGE_BYTES
        ):
            data = base64.b64encode(path.read_bytes()).decode()
            images.append({"name": saved["name"], "src": f"data:{kind};base64,{data}"})
    return images


def _write_iteration_files(iteration: Iteration) -> None:
    folder = iteration.output_dir
    if iteration.state == Iteration.State.RUNNING:
        return  # the sandbox owns the folder while the program runs
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in iteration.files.items():
        path = folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    meta = {"number": iteration.number, "change_log": iteration.change_log, "metadata": iteration.metadata,
            "measured": iteration.measured, "judgement": iteration.judgement, "succeeded": iteration.succeeded,
            "exit_code": iteration.exit_code, "duration_secs": iteration.duration_secs, "sandbox": iteration.sandbox,
            "proof": iteration.proof}  # fmt: skip
    _atomic_write(folder / "iteration.json", json.dumps(meta, indent=2, default=str))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
