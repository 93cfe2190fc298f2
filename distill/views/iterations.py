from django.contrib.auth.decorators import login_required
from django.http import HttpResponse


@login_required
def iteration_detail(request, run_id: int, number: int):
    return HttpResponse(status=501)


@login_required
def iteration_file(request, run_id: int, number: int, path: str):
    return HttpResponse(status=501)


@login_required
def run_diff(request, run_id: int):
    return HttpResponse(status=501)
