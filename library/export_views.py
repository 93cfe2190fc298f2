"""Downloads: the library (or a search result) as a ZIP of example folders or as codeblocks, and one example.

Readable like the library pages: by anyone while LIBRARY_PUBLIC, else after logging in. An agent may
also send its API token (`Authorization: Bearer ...`) here.
"""

from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_safe

from codedistiller_site.zipstream import zip_stream
from library.api_auth import refusal
from library.export import codeblock_entries, example_entries, export_name, library_entries
from library.filters import BadParameter, LibraryFilters
from library.models import Example

FORMATS = {"zip": library_entries, "codeblocks": codeblock_entries}


@require_safe
def library_export(request):
    if refused := refusal(request):
        return refused
    kind = request.GET.get("format", "zip")
    if kind not in FORMATS:
        return _bad_request(f"format must be zip or codeblocks, not {kind!r}")
    try:
        filters = LibraryFilters.parse(request.GET).check()
    except BadParameter as exc:
        return _bad_request(str(exc))
    examples = (
        Example.objects.listed().matching(filters).select_related("approved_by").prefetch_related("tags")
    )
    # A large library is not held at once.
    entries = FORMATS[kind](examples.iterator(chunk_size=100), filters=filters, url_for=_page_url(request))
    stem = "library" if kind == "zip" else "codeblocks"
    suffix = "-search" if filters.as_params() else ""
    return _zip_response(entries, f"codedistiller-{stem}{suffix}-{timezone.now():%Y%m%d}.zip")


@require_safe
def example_download(request, example_id: int):
    """Any version, retracted ones too: its metadata.json says so, and why."""
    if refused := refusal(request):
        return refused
    example = get_object_or_404(Example.objects.prefetch_related("tags"), pk=example_id)
    name = export_name(example)
    return _zip_response(example_entries(example, folder=name, url_for=_page_url(request)), f"{name}.zip")


def _page_url(request):
    return lambda example: request.build_absolute_uri(reverse("example_detail", args=[example.pk]))


def _zip_response(entries, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(zip_stream(entries), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def _bad_request(message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=400, content_type="text/plain; charset=utf-8")
