from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from codedistiller_site.roles import curator_required
from distill.models import Run


@login_required
def run_list(request):
    runs = Run.objects.select_related("submitted_by")
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    return render(request, "distill/run_list.html", {"page": page})


@curator_required
def run_new(request):
    return render(request, "distill/run_new.html")


@login_required
def run_detail(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    return render(request, "distill/run_detail.html", {"run": run})


@curator_required
def run_cancel(request, run_id: int):
    raise NotImplementedError


@curator_required
def run_retry(request, run_id: int):
    raise NotImplementedError


@curator_required
def run_rerun(request, run_id: int):
    raise NotImplementedError


@login_required
def run_download(request, run_id: int):
    raise NotImplementedError


@login_required
def run_report(request, run_id: int):
    raise NotImplementedError
