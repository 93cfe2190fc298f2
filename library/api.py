"""The read-only JSON API for agents: search the library, read an example with its files, list its versions.

Every answer is JSON, errors too (`{"error": "..."}` with the matching status, 404s for unknown addresses
under /api/ included), and strict JSON: no NaN or Infinity. Each address takes only the query parameters
it describes; any other one is refused with 400, so a misspelt filter is not silently ignored. An empty
value is the same as leaving the parameter out. Reading needs what the
library pages need (nothing while LIBRARY_PUBLIC, else a token or a session); the index and the OpenAPI
description are always readable, so that an agent can find out how to authenticate. CORS: any origin may
GET, since the wildcard never carries cookies: another site can read only what an anonymous visitor or
the holder of a token could read anyway. The shapes are described in `api_schema.py`.
"""

from functools import wraps

from django.conf import settings
from django.core.paginator import EmptyPage, Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve, reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import urlencode
from django.views.decorators.csrf import csrf_exempt

from library import api_schema
from library.api_auth import refusal, request_access, unauthorized
from library.export import MAX_PAGE_SIZE, example_brief, provenance, retraction
from library.filters import PARAMS, BadParameter, LibraryFilters
from library.models import Example

DEFAULT_PAGE_SIZE = 20
METHODS = "GET, HEAD, OPTIONS"
LIST_PARAMS = (*PARAMS, "include", "page", "page_size")
# What `include=` adds to each item of a list, beyond example_brief.
INCLUDES = ("files", "provenance")


def answer(data, *, status: int = 200, **dumps_options) -> JsonResponse:
    # allow_nan=False: Python would write NaN and Infinity, which strict JSON parsers reject.
    return JsonResponse(data, status=status, json_dumps_params={"allow_nan": False, **dumps_options})


def error(status: int, message: str, **extra) -> JsonResponse:
    return answer({"error": message, **extra}, status=status)


def with_cors(response: HttpResponse) -> HttpResponse:
    """Any origin may read, without cookies (see the module's doc); the downloads beside the API too."""
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Allow-Headers"] = "Authorization"
    response["Access-Control-Allow-Methods"] = METHODS
    patch_vary_headers(response, ["Authorization"])
    return response


def preflight() -> HttpResponse:
    response = HttpResponse(status=204)
    response["Allow"] = METHODS
    response["Access-Control-Max-Age"] = "86400"
    return response


def unknown_parameters(params, accepted: tuple[str, ...]) -> JsonResponse | None:
    """The 400 that names the parameters in `params` that are not `accepted`, or None when there are none."""
    if unknown := sorted(set(params) - set(accepted)):
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        return error(400, f"Unknown query parameter {', '.join(unknown)}: {takes}.", unknown=unknown)
    return None


def download_view(view):
    """The downloads beside the API (the export, an example's folder, its saved files): GET and HEAD, CORS
    and the 401 as in the API; the view answers the rest (a ZIP, a file)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.method == "OPTIONS":
            return with_cors(preflight())
        if request.method not in ("GET", "HEAD"):
            response = error(405, f"{request.method} is not allowed: downloads are read-only.")
            response["Allow"] = METHODS
            return with_cors(response)
        if refused := refusal(request):
            return with_cors(refused)
        try:
            return with_cors(view(request, *args, **kwargs))
        except Http404 as exc:
            return with_cors(error(404, str(exc) or "Not found."))

    return wrapper


def api_view(*, open_to_all: bool = False, params: tuple[str, ...] | None = ()):
    """GET and HEAD only, answered in JSON; OPTIONS for CORS preflight; access checked unless open_to_all;
    query parameters other than `params` refused (None: any is let through)."""

    def decorator(view):
        @csrf_exempt  # nothing here writes: a POST is answered 405, not refused by the CSRF check
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            return with_cors(_answer(view, open_to_all, params, request, *args, **kwargs))

        return wrapper

    return decorator


def _answer(view, open_to_all, params, request, *args, **kwargs):
    if request.method == "OPTIONS":
        return preflight()
    if request.method not in ("GET", "HEAD"):
        response = error(405, f"{request.method} is not allowed: this API is read-only.")
        response["Allow"] = METHODS
        return response
    if params is not None and (refused := unknown_parameters(request.GET, params)):
        return refused
    access = request.api_access = request_access(request)
    # A key that was sent must be good even where none is needed: its holder should learn it was revoked.
    if not access.allowed and (not open_to_all or "Authorization" in request.headers):
        return unauthorized(access.error)
    try:
        return view(request, *args, **kwargs)
    except BadParameter as exc:
        return error(400, str(exc))
    except Http404 as exc:
        return error(404, str(exc) or "Not found.")


@api_view(open_to_all=True)
def api_index(request):
    access = request.api_access
    return answer(
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
                "mcp": _url(request, "mcp"),
            },
        }
    )


@api_view(open_to_all=True)
def openapi(request):
    document = api_schema.openapi_document(
        server_url=request.build_absolute_uri("/").rstrip("/"), public=settings.LIBRARY_PUBLIC
    )
    return answer(document, indent=2)


@api_view(open_to_all=True, params=None)
def not_found(request, path: str):
    """Every unknown address under /api/ answers JSON, as the rest of the API does."""
    message = f"There is no API address {request.path}."
    try:
        resolve(request.path + "/")
        message += f" Did you mean {request.path}/?"
    except Resolver404:
        pass
    return error(404, message + f" The index is {_url(request, 'api_index')}.")


@api_view(params=LIST_PARAMS)
def example_list(request):
    filters = LibraryFilters.parse(request.GET).check()
    include = _includes(request.GET)
    page_number = _whole_number(request.GET, "page", default=1, low=1)
    page_size = _whole_number(request.GET, "page_size", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    examples = (
        Example.objects.listed()
        .matching(filters)
        .with_health()
        .select_related("approved_by")
        .prefetch_related("tags")
    )
    paginator = Paginator(examples, page_size)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        raise Http404(f"Page {page_number} is past the last page ({paginator.num_pages}).") from None
    params = {**filters.as_params(), "page_size": page_size, **({"include": include} if include else {})}
    return answer(
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
            "results": [summary_json(request, example, include=include) for example in page.object_list],
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
    return answer(detail_json(request, example))


@api_view()
def example_versions(request, example_id: int):
    example = _example(example_id)
    versions = Example.objects.versions_of(example.source_url).prefetch_related("tags")
    results = [version_json(request, version) for version in versions]
    return answer({"source_url": example.source_url, "count": len(results), "results": results})


# Shapes (see api_schema.py) --------------------------------------------------------------------------


def summary_json(request, example: Example, *, include: tuple[str, ...] = ()) -> dict:
    item = {**example_brief(example), "links": _links(request, example)}
    if "files" in include:
        item["files"] = files_json(example)
    if "provenance" in include:
        item["provenance"] = provenance(example)
    return item


def files_json(example: Example) -> list[dict]:
    return [
        {"name": name, "size": len(str(text).encode()), "content": str(text)}
        for name, text in sorted(example.files.items())
    ]


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
        "files": files_json(example),
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


def _includes(params) -> tuple[str, ...]:
    """include=files,provenance (or the parameter repeated), in a fixed order."""
    asked = {part.strip() for value in params.getlist("include") for part in value.split(",") if part.strip()}
    if unknown := sorted(asked - set(INCLUDES)):
        raise BadParameter(f"include takes {', '.join(INCLUDES)}, not {', '.join(unknown)}")
    return tuple(name for name in INCLUDES if name in asked)


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
