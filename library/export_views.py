"""Downloads: the library (or a search result) as a ZIP of example folders or as codeblocks, and one example.

Readable like the library pages: by anyone while LIBRARY_PUBLIC, else after logging in. An agent may
also send its API token (`Authorization: Bearer ...`) here; errors, the 401 included, are the API's JSON.
"""

from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from codedistiller_site.zipstream import zip_stream
from library.api import download_view, error, unknown_parameters
from library.export import codeblock_entries, example_entries, export_name, library_entries
from library.filters import PARAMS, BadParameter, LibraryFilters
from library.models import Example

FORMATS = {"zip": library_entries, "codeblocks": codeblock_entries}
EXPORT_PARAMS = ("format", *PARAMS)


@download_view
def library_export(request):
    if refused := unknown_parameters(request.GET, EXPORT_PARAMS):
        return refused
    kind = request.GET.get("format", "zip")
    if kind not in FORMATS:
        return error(400, f"format must be zip or codeblocks, not {kind!r}")
    try:
        filters = LibraryFilters.parse(request.GET).check()
    except BadParameter as exc:
        return error(400, str(exc))
    examples = (
        Example.objects.listed().matching(filters).select_related("approved_by").prefetch_related("tags")
    )
    # A large library is not held at once.
    entries = FORMATS[kind](examples.iterator(chunk_size=100), filters=filters, url_for=_page_url(request))
    stem = "library" if kind == "zip" else "codeblocks"
    suffix = "-search" if filters.as_params() else ""
    return _zip_response(entries, f"codedistiller-{stem}{suffix}-{timezone.now():%Y%m%d}.zip")


@download_view
def example_download(request, example_id: int):
    """Any version, retracted ones too: its metadata.json says so, and why."""
    example = Example.objects.prefetch_related("tags").filter(pk=example_id).first()
    if example is None:
        return error(404, f"There is no example {example_id}.")
    name = export_name(example)
    return _zip_response(example_entries(example, folder=name, url_for=_page_url(request)), f"{name}.zip")


def _page_url(request):
    return lambda example: request.build_absolute_uri(reverse("example_detail", args=[example.pk]))


def _zip_response(entries, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(zip_stream(entries), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
