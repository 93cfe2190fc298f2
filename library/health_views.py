"""The library's health on the site: one check's output, the curator's page of failing examples, and the
repair of one (library/health.py does the work)."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from codedistiller_site.roles import curator_required
from distill.charts import share_by_day
from distill.forms import ProfileFields
from library import health
from library.models import Example, ExampleCheck
from library.services import LibraryRefused
from library.views import _may_read


def example_check_detail(request, example_id: int, check_id: int):
    if not _may_read(request):
        return redirect_to_login(request.get_full_path())
    check = get_object_or_404(
        ExampleCheck.objects.select_related("example"), pk=check_id, example_id=example_id
    )
    return render(request, "library/check_detail.html", {"check": check, "example": check.example})


@curator_required
def library_health(request):
    failing = list(
        Example.objects.listed()
        .filter(checks__status__in=health.FAILED)
        .distinct()
        .only("pk", "title", "version", "source_url", "profile")
    )
    rows = [{"example": example, "health": health.health_of(example)} for example in failing]
    rows = [row for row in rows if row["health"].status in health.FAILED]
    order = {status: i for i, status in enumerate(health.FAILED)}
    rows.sort(key=lambda row: (order[row["health"].status], row["health"].since))
    counts = {band: Example.objects.listed().health_band(band).count() for band in ("passed", "unchecked")}
    context = {
        "rows": rows,
        "counts": counts,
        "chart": share_by_day(health.health_by_day(), what="verified"),
        "per_hour": settings.LIBRARY_HEALTH_CHECKS_PER_HOUR,
    }
    return render(request, "library/health.html", context)


@require_POST
@curator_required
def example_repair(request, example_id: int):
    example = get_object_or_404(Example, pk=example_id)
    form = ProfileFields(request.POST)
    if not form.is_valid():
        problems = [str(e) for errors in form.errors.values() for e in errors]
        messages.error(request, "Not started: " + " ".join(problems))
        return redirect("example_detail", example.pk)
    try:
        run = health.example_repair(
            example=example,
            profile_name=form.cleaned_data["profile"],
            profile=form.cleaned_data["profile_obj"],
            requested_by=request.user,
        )
    except LibraryRefused as exc:
        messages.error(request, str(exc))
        return redirect("example_detail", example.pk)
    messages.success(
        request, f"Run {run.pk} repairs example {example.pk}: it starts from its code and the check's output."
    )
    return redirect("run_detail", run.pk)
