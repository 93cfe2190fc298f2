"""The read-only JSON API for agents: search the library, read an example with its files, list its versions.

Every answer is JSON, errors too (`{"error": "..."}` with the matching status). Reading needs what the
library pages need (nothing while LIBRARY_PUBLIC, else a token or a session); the index and the OpenAPI
description are always readable, so that an agent can find out how to authenticate. CORS: any origin may
GET, since the wildcard never carries cookies: another site can read only what an anonymous visitor or
the holder of a token could read anyway. The shapes are described in `api_schema.py`.
"""

from functools import wraps

from django.conf import settings
from django.core.paginator import EmptyPage, Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import urlencode
from django.views.decorators.csrf import csrf_exempt

from library import api_schema
from library.api_auth import request_access
from library.export import MAX_PAGE_SIZE, provenance, retraction, tag_names
from library.filters import BadParameter, LibraryFilters
from library.models import Example

DEFAULT_PAGE_SIZE = 20
METHODS = "GET, HEAD, OPTIONS"


def error(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def api_view(*, open_to_all: bool = False):
    """GET and HEAD only, answered in JSON; OPTIONS for CORS preflight; access checked unless open_to_all."""

    def decorator(view):
        @csrf_exempt  # nothing here writes: a POST is answered 405, not refused by the CSRF check
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            response = _answer(view, open_to_all, request, *args, **kwargs)
            response["Access-Control-Allow-Origin"] = "*"
            response["Access-Control-Allow-Headers"] = "Authorization"
            response["Access-Control-Allow-Methods"] = METHODS
            patch_vary_headers(response, ["Authorization"])
            return response

        return wrapper

    return decorator


def _answer(view, open_to_all, request, *args, **kwargs):
    if request.method == "OPTIONS":
        response = HttpResponse(status=204)
        response["Allow"] = METHODS
        response["Access-Control-Max-Age"] = "86400"
        return response
    if request.method not in ("GET", "HEAD"):
        response = error(405, f"{request.method} is not allowed: this API is read-only.")
        response["Allow"] = METHODS
        return response
    access = request.api_access = request_access(request)
    # A key that was sent must be good even where none is needed: its holder should learn it was revoked.
    if not access.allowed and (not open_to_all or "Authorization" in request.headers):
        response = error(401, access.error)
        response["WWW-Authenticate"] = 'Bearer realm="codedistiller"'
        return response
    try:
        return view(request, *args, **kwargs)
    except BadParameter as exc:
        return error(400, str(exc))
    except Http404 as exc:
        return error(404, str(exc) or "Not found.")


@api_view(open_to_all=True)
def api_index(request):
    access = request.api_access
    return JsonResponse(
        {
            "name": "CodeDistiller library API",
            "version": api_schema.API_VERSION,
            "public": settings.LIBRARY_PUBLIC,
            "authenticated": access.user is not None,
            "links": {
                "examples": _url(request, "api_examples"),
                "example": _url(request, "api_examples") + "{id}/",
                "versions": _url(request, "api_examples") + "{id}/versions/",
                "openapi": _url(request, "api_openapi"),
                "export_zip": _url(request, "library_export") + "?format=zip",
                "export_codeblocks": _url(request, "library_export") + "?format=codeblocks",
                "library": _url(request, "library"),
            },
        }
    )


@api_view(open_to_all=True)
def openapi(request):
    document = api_schema.openapi_document(
        server_url=request.build_absolute_uri("/").rstrip("/"), public=settings.LIBRARY_PUBLIC
    )
    return JsonResponse(document, json_dumps_params={"indent": 2})


@api_view()
def example_list(request):
    filters = LibraryFilters.parse(request.GET).check()
    page_number = _whole_number(request.GET, "page", default=1, low=1)
    page_size = _whole_number(request.GET, "page_size", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    examples = (
        Example.objects.listed().matching(filters).select_related("approved_by").prefetch_related("tags")
    )
    paginator = Paginator(examples, page_size)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        raise Http404(f"Page {page_number} is past the last page ({paginator.num_pages}).") from None
    params = {**filters.as_params(), "page_size": page_size}
    return JsonResponse(
        {
            "count": paginator.count,
            "page": page.number,
            "page_size": page_size,
            "num_pages": paginator.num_pages,
            "next": _page_link(request, params, page.next_page_number()) if page.has_next() else None,
            "previous": _page_link(request, params, page.previous_page_number())
            if page.has_previous()
            else None,
            "query": filters.as_params(),
            "results": [summary_json(request, example) for example in page.object_list],
        }
    )


@api_view()
def example_detail(request, example_id: int):
    example = _example(example_id)
    if example.is_retracted:
        latest = Example.objects.listed().filter(source_url=example.source_url).first()
        return error(
            410,
            f"Example {example.pk} was retracted: {example.retracted_reason}",
            retracted=retraction(example),
            links={
                "versions": _url(request, "api_example_versions", example.pk),
                "latest": _url(request, "api_example", latest.pk) if latest else None,
            },
        )
    return JsonResponse(detail_json(request, example))


@api_view()
def example_versions(request, example_id: int):
    example = _example(example_id)
    versions = Example.objects.versions_of(example.source_url).prefetch_related("tags")
    results = [version_json(request, version) for version in versions]
    return JsonResponse({"source_url": example.source_url, "count": len(results), "results": results})


# Shapes (see api_schema.py) --------------------------------------------------------------------------


def summary_json(request, example: Example) -> dict:
    return {
        "id": example.pk,
        "title": example.title,
        "summary": example.summary,
        "tags": tag_names(example),
        "source_kind": example.source_kind,
        "source_url": example.source_url,
        "commit_sha": example.commit_sha,
        "version": example.version,
        "example_type": example.example_type,
        "language": example.language,
        "gpu_required": example.gpu_required,
        "score": example.score,
        "score_count": example.score_count,
        "approved_at": example.approved_at.isoformat(),
        "links": _links(request, example),
    }


def detail_json(request, example: Example) -> dict:
    latest = (
        example
        if example.is_latest
        else Example.objects.listed().filter(source_url=example.source_url).first()
    )
    return {
        **summary_json(request, example),
        "status": example.status,
        "is_latest": example.is_latest,
        "description": example.description,
        "inclusion_criteria": example.inclusion_criteria,
        "exclusion_criteria": example.exclusion_criteria,
        "python_version": example.python_version,
        "requirements": example.requirements,
        "how_to_run": example.how_to_run,
        "files": [
            {"name": name, "size": len(str(text).encode()), "content": str(text)}
            for name, text in sorted(example.files.items())
        ],
        "metadata": example.metadata,
        "provenance": provenance(example),
        "results": example.results,
        "stdout": example.stdout,
        "measured": example.measured,
        "judgement": example.judgement,
        "saved_files": [
            {
                "name": saved["name"],
                "size": saved.get("size"),
                "url": request.build_absolute_uri(reverse("example_file", args=[example.pk, saved["name"]])),
            }
            for saved in example.saved_files or []
            if isinstance(saved, dict) and saved.get("name")
        ],
        "links": {
            **_links(request, example),
            "latest": _url(request, "api_example", latest.pk) if latest else None,
        },
    }


def version_json(request, example: Example) -> dict:
    return {
        "id": example.pk,
        "version": example.version,
        "title": example.title,
        "status": example.status,
        "is_latest": example.is_latest,
        "commit_sha": example.commit_sha,
        "approved_at": example.approved_at.isoformat(),
        "retracted": retraction(example),
        "links": _links(request, example),
    }


def _links(request, example: Example) -> dict:
    return {
        "self": _url(request, "api_example", example.pk),
        "versions": _url(request, "api_example_versions", example.pk),
        "html": _url(request, "example_detail", example.pk),
        "download": _url(request, "example_download", example.pk),
    }


# Helpers ---------------------------------------------------------------------------------------------


def _example(example_id: int) -> Example:
    example = (
        Example.objects.select_related("approved_by").prefetch_related("tags").filter(pk=example_id).first()
    )
    if example is None:
        raise Http404(f"There is no example {example_id}.")
    return example


def _url(request, name: str, *args) -> str:
    return request.build_absolute_uri(reverse(name, args=args))


def _page_link(request, params: dict, number: int) -> str:
    return request.build_absolute_uri(request.path) + "?" + urlencode({**params, "page": number}, doseq=True)


def _whole_number(params, key: str, *, default: int, low: int, high: int | None = None) -> int:
    text = params.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(f"{key} must be a whole number, not {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadParameter(f"{key} must be {bounds}, not {value}")
    return value
