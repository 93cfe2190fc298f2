"""The runs list, the submit page, the live run page and the actions on a run."""

import os
from pathlib import Path

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import TextField
from django.db.models.functions import Cast, Length
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from codedistiller_site.ids import parse_id
from codedistiller_site.roles import CURATOR, curator_required, has_role
from codedistiller_site.zipstream import Entry, zip_stream
from distill import charts, services
from distill.forms import ProfileFields, SubmitForm, missing_key, profile_choices
from distill.highlight import CodeFile
from distill.models import Iteration, LLMCall, Paper, Run, in_pipeline_order
from distill.profiles import default_profile_name, list_profiles, load_profile

PAGE_SIZE = 25
INLINE_CALL_CHARS = 4000  # larger prompts and replies are fetched when their <details> is opened
COST_CHART_RUNS = 40
TAIL_LINES = 40
USAGE_SHOWN = 12  # harvested snippets on the run page, those in the prompt first
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"


# The list ---------------------------------------------------------------------------------------------


@login_required
def run_list(request):
    filters = {
        key: request.GET.get(key, "").strip() for key in ("status", "submitter", "profile", "q", "ids")
    }
    runs = Run.objects.search(filters["q"]).with_status(filters["status"])
    if filters["submitter"]:
        runs = runs.filter(submitted_by__username=filters["submitter"])
    if filters["profile"]:
        runs = runs.filter(profile=filters["profile"])
    ids = [pk for pk in map(parse_id, filters["ids"].split(",")) if pk is not None][:100]
    if ids:
        runs = runs.filter(pk__in=ids)
    page = Paginator(runs.for_list(), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    for run in rows:
        run.duration_text = human_duration(run.duration_secs)
    context = {
        "page": page,
        "rows": rows,
        "summary": runs.summary(),
        "polling": any(not run.is_finished for run in rows),
        "filters": filters,
        "filtered": any(filters.values()),
    }
    if request.htmx:
        return render(request, "distill/run_list.html#live", context)
    summary = context["summary"]
    recent = runs.finished().order_by("-created_at", "-id").values("pk", "cost_usd", "status")
    context |= {
        "success_chart": charts.success_by_iteration(
            runs.succeeded_at_iteration(), summary["succeeded"] + summary["failed"], summary["furthest"] or 1
        ),
        "cost_chart": charts.cost_per_run(list(recent[:COST_CHART_RUNS])),
        # A paper's run in a shared status is found under the repository's word too: say both.
        "statuses": [
            (
                value,
                label
                + (
                    f" / {Run.PAPER_STATUS_LABELS[value].lower()}" if value in Run.PAPER_STATUS_LABELS else ""
                ),
            )
            for value, label in Run.Status.choices
        ],
        "submitters": get_user_model()
        .objects.filter(runs__isnull=False)
        .distinct()
        .order_by("username")
        .values_list("username", flat=True),
        "profiles": sorted(
            set(list_profiles()) | set(Run.objects.order_by().values_list("profile", flat=True).distinct())
        ),
    }
    return render(request, "distill/run_list.html", context)


# Submit -----------------------------------------------------------------------------------------------


@curator_required
def run_new(request):
    form = SubmitForm(
        request.POST or None, request.FILES or None, initial={"profile": default_profile_name()}
    )
    if request.method == "POST" and form.is_valid() and form.cleaned_data.get("kind") == "paper":
        return _submit_paper(request, form)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            started = services.run_submit_many(  # all of them or none, as the page promises
                sources=data["sources"],
                profile_name=data["profile"],
                profile=data["profile_obj"],
                submitted_by=request.user,
            )
        except services.RunRefused as exc:
            form.add_error(None, f"Nothing was started: {exc}")
        else:
            if len(started) == 1:
                messages.success(request, f"Run {started[0].pk} was submitted.")
                return redirect("run_detail", started[0].pk)
            messages.success(request, f"{len(started)} runs are queued. The list below shows only them.")
            return redirect(f"{reverse('runs')}?{urlencode({'ids': ','.join(str(r.pk) for r in started)})}")
    return render(request, "distill/run_new.html", {"form": form, "profiles": _profile_cards()})


def _submit_paper(request, form):
    data = form.cleaned_data
    try:
        run = services.run_submit_paper(
            paper=data["paper"],
            profile_name=data["profile"],
            profile=data["profile_obj"],
            submitted_by=request.user,
        )
    except services.RunRefused as exc:
        form.add_error(None, f"Nothing was started: {exc}")
        return render(request, "distill/run_new.html", {"form": form, "profiles": _profile_cards()})
    messages.success(request, f"Run {run.pk} was submitted.")
    return redirect("run_detail", run.pk)


def _profile_cards() -> list[dict]:
    cards = []
    for name, _label in profile_choices():
        profile = load_profile(name)
        cards.append(
            {"name": name, "profile": profile, "local": name == "local", "missing": missing_key(profile)}
        )
    return cards


# The run page -----------------------------------------------------------------------------------------


@login_required
def run_detail(request, run_id: int):
    run = get_object_or_404(Run.objects.select_related("submitted_by"), pk=run_id)
    if "call" in request.GET:
        return _llm_call(request, run, request.GET["call"])
    if request.GET.get("part") == "ratings" and request.htmx:
        return render(request, "distill/run_detail.html#ratings", _ratings_context(run))
    context = _live_context(request, run)
    # Read again if a step began or ended while the page was read: its badge, timeline and calls are of
    # one moment, never a "Queued" badge over a running step.
    for _ in range(2):
        now = Run.objects.select_related("submitted_by").get(pk=run_id)
        if (now.status, now.lease, now.iteration_count) == (run.status, run.lease, run.iteration_count):
            break
        run, context = now, _live_context(request, now)
    if request.htmx:
        return render(request, "distill/run_detail.html#live", context)
    context |= _ratings_context(run)
    return render(request, "distill/run_detail.html", context)


def _live_context(request, run: Run) -> dict:
    now = timezone.now()
    steps = run.steps.all()
    for step in steps:
        running = step.finished_at is None
        step.duration_text = human_duration(
            (now - step.started_at).total_seconds() if running else step.duration_secs
        )
    iterations = list(
        run.iterations.defer("files", "stdout", "stderr", "install_log", "log", "results").order_by("number")
    )
    for iteration in iterations:
        iteration.duration_text = human_duration(iteration.duration_secs)
    by_number = {iteration.number: iteration for iteration in iterations}
    for step in steps:
        step.mark_class, step.mark_words = step.mark(by_number.get(step.iteration))
    # Its tail is saved about every second while it runs; the iteration page shows the whole output later.
    executing = (
        run.iterations.filter(state=Iteration.State.RUNNING)
        .only("number", "stdout", "stderr", "install_log", "started_at")
        .first()
    )
    if executing:
        executing.stdout_tail = last_lines(executing.stdout)
        executing.stderr_tail = last_lines(executing.stderr)
        executing.install_tail = last_lines(executing.install_log)
    calls = list(
        run.llm_calls.defer("prompt", "reply").annotate(
            prompt_chars=Length(Cast("prompt", TextField())), reply_chars=Length("reply")
        )
    )
    small = [c.pk for c in calls if (c.prompt_chars or 0) + (c.reply_chars or 0) <= INLINE_CALL_CHARS]
    bodies = {row["pk"]: row for row in LLMCall.objects.filter(pk__in=small).values("pk", "prompt", "reply")}
    for call in calls:
        if call.pk in bodies:
            call.body = {**bodies[call.pk], "error": call.error}
    totals = run.llm_calls.stage_totals()
    secs = steps.runtimes(labelled=True)
    stages = in_pipeline_order(set(totals) | set(secs))
    is_curator = has_role(request.user, CURATOR)
    resume = services.resume_status(run) if is_curator and run.status in _STOPPED else None
    other_active = Run.objects.in_progress_for(run.source_url) if is_curator and run.is_finished else None
    return {
        **_paper_context(run),
        "run": run,
        "duration_text": human_duration(run.duration_secs),
        "steps": steps,
        "iterations": iterations,
        "passed": run.is_finished and any(iteration.succeeded for iteration in iterations),
        "executing": executing,
        "calls": calls,
        "stage_rows": [
            {"stage": s, "secs_text": human_duration(secs.get(s)), **totals.get(s, {"calls": 0})}
            for s in stages
        ],
        "can_cancel": is_curator and not run.is_finished,
        "retry_from": run.label_of_status(resume).lower() if resume else None,
        "can_rerun": is_curator and run.is_finished and other_active is None,
        "other_active": other_active,
        "rerun_form": ProfileFields(initial={"profile": run.profile}, auto_id="rerun_%s")
        if is_curator
        else None,
        "has_output": (run.output_dir / "current_state.json").is_file(),
        "has_report": (run.output_dir / "report.html").is_file(),
    }


def _ratings_context(run: Run) -> dict:
    if run.kind == Run.Kind.PAPER:
        # A paper has no files to rate: its sections, and what the planner read of them, stand in.
        return {"run": run, "reading": services.paper_reading(run)}
    snippets = list(run.usage_snippets.all()[:USAGE_SHOWN])
    for snippet in snippets:
        snippet.code_file = CodeFile(f"usage-{snippet.pk}.py", snippet.code)
    return {
        "run": run,
        "ratings": list(run.file_ratings.defer("excerpt")),
        "snippets": snippets,
        "usage_count": run.usage_snippets.count() if len(snippets) == USAGE_SHOWN else len(snippets),
        "digest_file": CodeFile("api-digest.py", run.api_digest) if run.api_digest else None,
        # The ratings arrive with the survey; until then their section asks again.
        "ratings_pending": run.kind == Run.Kind.REPOSITORY
        and run.status in (Run.Status.QUEUED, Run.Status.FETCHING, Run.Status.SURVEYING),
    }


def _paper_context(run: Run) -> dict:
    """A paper run's plan as its page shows it (templates/distill/_paper_plan.html); nothing for others."""
    if run.kind != Run.Kind.PAPER:
        return {"paper": None}
    paper = Paper.objects.filter(run=run).defer("text").first()
    if paper is None:
        return {"paper": None}
    plan = paper.plan or {}
    logic = {entry["file"]: entry for entry in (plan.get("logic_design") or {}).get("files", [])}
    written, analysed = plan.get("code", {}), plan.get("analyses", {})
    tasks = [
        {
            "file": name,
            "logic": logic.get(name, {}).get("logic", ""),
            "depends_on": logic.get(name, {}).get("depends_on", []),
            "written": name in written or (name == "main.py" and run.iteration_count > 0),
            "analysed": name in analysed,
        }
        for name in plan.get("task_order", [])
    ]
    return {
        "paper": paper,
        "plan": plan,
        "tasks": tasks,
        "config_file": CodeFile("config.yaml", plan["config_yaml"]) if plan.get("config_yaml") else None,
        "plan_pending": not run.is_finished and not plan.get("config_yaml"),
        "evaluation": paper.evaluation,
    }


_STOPPED = (Run.Status.FAILED, Run.Status.ERROR, Run.Status.CANCELLED)


def _llm_call(request, run: Run, call_id: str):
    if parse_id(call_id) is None:
        raise Http404
    call = get_object_or_404(LLMCall, pk=parse_id(call_id), run=run)
    template = "distill/_llm_call.html" + ("#body" if request.htmx else "")
    body = {"prompt": call.prompt, "reply": call.reply, "error": call.error}
    return render(request, template, {"run": run, "call": call, "body": body})


# Actions ----------------------------------------------------------------------------------------------


@require_POST
@curator_required
def run_cancel(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    try:
        run = services.run_cancel(run=run)
    except services.RunRefused as exc:
        messages.error(request, str(exc))
    else:
        if run.status == Run.Status.CANCELLED:
            messages.success(request, f"Run {run.pk} is cancelled.")
        else:
            messages.success(request, f"Run {run.pk} stops at its next check; a running program is stopped.")
    return redirect("run_detail", run.pk)


@require_POST
@curator_required
def run_retry(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    try:
        run = services.run_retry(run=run)
    except services.RunRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run {run.pk} goes on from the {run.status_label.lower()} step.")
    return redirect("run_detail", run.pk)


@require_POST
@curator_required
def run_rerun(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    form = ProfileFields(request.POST)
    if not form.is_valid():
        problems = [str(e) for errors in form.errors.values() for e in errors]
        messages.error(request, "Not started: " + " ".join(problems))
        return redirect("run_detail", run.pk)
    try:
        new = services.run_rerun(
            run=run,
            profile_name=form.cleaned_data["profile"],
            profile=form.cleaned_data["profile_obj"],
            submitted_by=request.user,
        )
    except services.RunRefused as exc:
        messages.error(request, str(exc))
        return redirect("run_detail", run.pk)
    messages.success(request, f"Run {new.pk} runs {run.source_url} again with the {new.profile} profile.")
    return redirect("run_detail", new.pk)


# The output folder ------------------------------------------------------------------------------------


@login_required
def run_download(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    folder = run.output_dir
    if not folder.is_dir():
        raise Http404("This run has no output folder yet.")
    response = StreamingHttpResponse(
        zip_stream(
            Entry(f"run-{run.pk}/{p.relative_to(folder).as_posix()}", path=p) for p in _files_under(folder)
        ),
        content_type="application/zip",
    )
    response["Content-Disposition"] = f'attachment; filename="codedistiller-run-{run.pk}.zip"'
    return response


@login_required
def run_report(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    path = run.output_dir / "report.html"
    if not path.is_file() or path.is_symlink():
        raise Http404("This run has no report yet.")
    response = FileResponse(path.open("rb"), content_type="text/html; charset=utf-8")
    # The report embeds text from the repository, the program and the models: no scripts, no requests.
    response["Content-Security-Policy"] = REPORT_CSP
    response["Referrer-Policy"] = "no-referrer"
    return response


def _files_under(folder: Path):
    # The program wrote parts of this folder: its symlinks are never followed out of it.
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if not path.is_symlink() and path.is_file():
                yield path


# Formatting -------------------------------------------------------------------------------------------


def last_lines(text: str, count: int = TAIL_LINES) -> str:
    return "\n".join(text[-20_000:].splitlines()[-count:])


def human_duration(secs: float | None) -> str:
    if secs is None:
        return ""
    secs = int(round(secs))
    if secs < 60:
        return f"{secs} s"
    minutes, secs = divmod(secs, 60)
    if minutes < 10:
        return f"{minutes} min {secs} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
