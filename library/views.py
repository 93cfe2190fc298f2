from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render


def library_index(request):
    if not settings.LIBRARY_PUBLIC and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return render(request, "library/index.html", {"q": request.GET.get("q", "")})


@login_required
def review_index(request):
    return render(request, "reviews/index.html")


def _todo(request, **kwargs):
    from django.http import HttpResponse

    return HttpResponse(status=501)


run_approve = run_reject = example_detail = example_retract = example_file = _todo
