from django.http import HttpResponse


def _todo(request, **kwargs):
    return HttpResponse(status=501)


library_export = example_download = _todo
