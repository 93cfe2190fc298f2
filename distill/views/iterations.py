import mimetypes
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers

from codedistiller_site.saved_files import INLINE_IMAGE_TYPES, saved_file_response
from distill.diffing import choose_pair, diff_files
from distill.highlight import code_files, flat_items, key_value_items, pretty_json
from distill.models import Iteration, Run


def _iteration(run_id: int, number: int) -> Iteration:
    return get_object_or_404(Iteration.objects.select_related("run"), run_id=run_id, number=number)


@login_required
def iteration_detail(request, run_id: int, number: int):
    iteration = _iteration(run_id, number)
    numbers = list(iteration.run.iterations.values_list("number", flat=True))
    index = numbers.index(number)
    context = {
        "run": iteration.run,
        "iteration": iteration,
        "previous": numbers[index - 1] if index > 0 else None,
        "next": numbers[index + 1] if index + 1 < len(numbers) else None,
        "files": code_files(iteration.files),
        "metadata": key_value_items(iteration.metadata),
        "results_table": flat_items(iteration.results),
        "results_json": pretty_json(iteration.results) if iteration.results is not None else None,
        "log_json": pretty_json(iteration.log) if iteration.log is not None else None,
        "saved_files": _saved_files(iteration),
    }
    return render(request, "distill/iteration_detail.html", context)


@login_required
def iteration_file(request, run_id: int, number: int, path: str):
    iteration = _iteration(run_id, number)
    return saved_file_response(iteration.output_dir / "to_save", iteration.saved_files, path)


@login_required
def run_diff(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    numbers = list(run.iterations.values_list("number", flat=True))
    a, b, problem = choose_pair(numbers, request.GET.get("a"), request.GET.get("b"))
    view = "split" if request.GET.get("view") == "split" else "unified"
    ignore_whitespace = request.GET.get("ws") == "ignore"
    context = {
        "run": run,
        "numbers": numbers,
        "a": a,
        "b": b,
        "problem": problem,
        "view": view,
        "ignore_whitespace": ignore_whitespace,
    }
    if not problem:
        files = dict(run.iterations.filter(number__in=(a, b)).values_list("number", "files"))
        context["diff"] = diff_files(files[a], files[b], ignore_whitespace=ignore_whitespace)
        context["links"] = _diff_links(run, a, b, view, ignore_whitespace)
    template = "distill/diff.html#diff" if request.htmx else "distill/diff.html"
    # Explicit parameters that name no pair are the caller's mistake; a run too short to compare is not.
    status = 400 if problem and (request.GET.get("a") or request.GET.get("b")) else 200
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])  # a fragment and a page at one address
    return response


def _diff_links(run: Run, a: int, b: int, view: str, ignore_whitespace: bool) -> dict[str, str]:
    base = reverse("run_diff", args=[run.pk])

    def url(**changes) -> str:
        params = {"a": a, "b": b, "view": view, "ws": "ignore" if ignore_whitespace else ""} | changes
        return f"{base}?{urlencode({key: value for key, value in params.items() if value})}"

    return {
        "unified": url(view="unified"),
        "split": url(view="split"),
        "whitespace": url(ws="" if ignore_whitespace else "ignore"),
        "swap": url(a=b, b=a),
    }


def _saved_files(iteration: Iteration) -> list[dict]:
    saved = []
    for entry in iteration.saved_files:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        content_type = mimetypes.guess_type(entry["name"])[0]
        saved.append(
            {
                "name": entry["name"],
                "size": entry.get("size"),
                "image": content_type in INLINE_IMAGE_TYPES,
                "url": reverse("iteration_file", args=[iteration.run_id, iteration.number, entry["name"]]),
            }
        )
    return saved
