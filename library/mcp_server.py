"""The library's MCP server: the tools and resources a coding agent reaches through the Model Context Protocol.

Built with the official SDK (`mcp`, its MCPServer). Every tool is read-only and finds examples through the
library's one filter definition (`library.filters.LibraryFilters`, as the pages, the JSON API, the export
and the review queues do), and describes them with the API's records (`export.example_brief`,
`export.provenance`), so they agree.

Two transports serve this one server: stdio (`manage.py mcp`, for an agent on the same machine) and
streamable HTTP at /mcp (`library.mcp_views`), stateless, with the API's tokens and LIBRARY_PUBLIC rule.

Resources have stable URIs: `codedistiller://examples/{id}/files/{name}` (the example's files, as text) and
`codedistiller://examples/{id}/saved/{path}` (what the program saved in to_save/: plots, tables).

The tools are async and reach the ORM through `sync_to_async`: on /mcp they then run in the request's own
thread (async_to_sync hands them back to it), with its database connection.
"""

from __future__ import annotations

from typing import Annotated, Literal

from asgiref.sync import sync_to_async
from django.core.paginator import Paginator
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from library.api_schema import API_VERSION
from library.export import example_brief, export_name, provenance, retraction, saved_file_paths
from library.filters import BadParameter, LibraryFilters
from library.models import HEALTH_LABELS, SCORE_BANDS, USAGE_BANDS, Example

SCHEME = "codedistiller"
MAX_RESULTS = 50
# Hints for the client, not security: nothing here can change the library (the spec defines the other two
# hints only for tools that write).
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)

INSTRUCTIONS = """\
The CodeDistiller library: small, working, vetted Python examples distilled from scientific repositories
and papers, each run in a sandbox and approved by a curator. Search with search_examples (words plus
filters), then read one with get_example (everything) or get_example_code (just main.py, requirements.txt
and runscript.sh). Examples are versioned per source: list_versions shows them all, retracted ones with the
reason. Files and saved outputs are resources too (codedistiller://examples/{id}/files/{name},
codedistiller://examples/{id}/saved/{path})."""

server = MCPServer(
    "codedistiller-library",
    title="CodeDistiller library",
    instructions=INSTRUCTIONS,
    version=API_VERSION,
)


def file_uri(example_id: int, name: str) -> str:
    return f"{SCHEME}://examples/{example_id}/files/{name}"


def saved_uri(example_id: int, path: str) -> str:
    return f"{SCHEME}://examples/{example_id}/saved/{path}"


# Shapes (the tools' output schemas) ---------------------------------------------------------------------


class Retraction(BaseModel):
    reason: str
    retracted_at: str | None


class ExampleHit(BaseModel):
    """One search result: enough to choose among hits without fetching each one."""

    id: int
    name: str = Field(description="Stable name, as in the exports: the title's slug and the id.")
    title: str
    summary: str
    inclusion_criteria: str = Field(description="When to use this example.")
    exclusion_criteria: str = Field(description="When not to use it.")
    requirements: list[str] = Field(description="requirements.txt, comments left out.")
    tags: list[str]
    source_url: str
    version: int
    is_latest: bool = Field(description="False for an older version of its source.")
    example_type: str = Field(description="demonstration, tutorial, benchmark or workflow.")
    language: str
    gpu_required: bool
    score: float | None = Field(description="Mean expert score (1-5), or null before any review.")
    relevance: float | None = Field(
        description="0-1 when ranked by the query: 1.0 for the best possible match, falling with rank."
    )
    health: Literal["passed", "changed", "drifted", "broken"] | None = Field(
        description="The verdict of its last scheduled check, which runs it again in a sandbox: passed (still "
        "runs, same results), changed (runs, numbers moved), drifted (fails with the newest versions its "
        "requirements allow), broken (no longer runs); null before its first check. Prefer passed examples."
    )
    last_checked_at: str | None = Field(
        description="When that check finished (ISO 8601); null before the first."
    )


class SearchResults(BaseModel):
    count: int = Field(description="How many examples match; `results` holds the first `limit` of them.")
    results: list[ExampleHit]


class ExampleFile(BaseModel):
    name: str
    uri: str
    content: str


class SavedFile(BaseModel):
    name: str
    size: int | None
    uri: str = Field(description="Read it as a resource (binary, base64 in the reply).")


class ExampleDetail(ExampleHit):
    status: Literal["approved", "retracted"]
    retracted: Retraction | None = Field(description="Why and when it was withdrawn; null while listed.")
    latest_id: int | None = Field(
        description="The newest listed version of its source (this one if it is the latest), or null."
    )
    description: str
    python_version: str
    how_to_run: str
    files: list[ExampleFile] = Field(description="Every file of the example, inline.")
    saved_files: list[SavedFile]
    results: dict | list | str | int | float | bool | None = Field(description="results.json of the run.")
    provenance: dict = Field(description="Source, commit, run, iteration, models, cost, approval.")


class ExampleCode(BaseModel):
    id: int
    name: str
    main_py: str
    requirements_txt: str
    runscript_sh: str
    how_to_run: str


class Version(BaseModel):
    id: int
    version: int
    title: str
    status: Literal["approved", "retracted"]
    is_latest: bool
    commit_sha: str
    approved_at: str
    retracted: Retraction | None


class Versions(BaseModel):
    source_url: str
    versions: list[Version] = Field(description="Newest first; retracted ones too, with the reason.")


# Tools ------------------------------------------------------------------------------------------------


@server.tool(title="Search the library", annotations=READ_ONLY)
async def search_examples(
    query: Annotated[str, Field(description="Search words; empty lists the newest examples.")] = "",
    # A list default is safe here: the SDK validates every call's arguments into new objects.
    tags: Annotated[list[str], Field(description="Tags (slugs) the examples must all have.")] = [],  # noqa: B006
    language: Annotated[str, Field(description="Programming language, e.g. python.")] = "",
    requirement: Annotated[str, Field(description="A package the example needs, e.g. numpy.")] = "",
    gpu: Annotated[bool | None, Field(description="true: needs a GPU; false: runs on a CPU.")] = None,
    score: Annotated[
        Literal[tuple(SCORE_BANDS)] | None,  # type: ignore[valid-type]
        Field(description="A band of the mean expert score: 4+, 3-4, under-3 or unscored."),
    ] = None,
    min_score: Annotated[float | None, Field(description="Mean expert score at least this (1-5).")] = None,
    usage: Annotated[
        Literal[tuple(USAGE_BANDS)] | None,  # type: ignore[valid-type]
        Field(description="How much of the repository's code it exercised: half, tenth or little."),
    ] = None,
    health: Annotated[
        Literal[tuple(HEALTH_LABELS)] | None,  # type: ignore[valid-type]
        Field(description="Its last check's verdict: passed, changed, drifted, broken, or unchecked."),
    ] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_RESULTS, description="How many results at most.")] = 10,
) -> SearchResults:
    """Search the library's examples by words and filters, best match first (newest first without words).
    Each result says when to use the example and what it needs; get_example reads one in full."""
    params = {
        "q": query,
        "tag": tags,
        "language": language,
        "requirement": requirement,
        "gpu": "" if gpu is None else str(gpu).lower(),
        "score": score or "",
        "min_score": "" if min_score is None else str(min_score),
        "usage": usage or "",
        "health": health or "",
    }
    return await sync_to_async(_search)(params, limit)


def _search(params: dict, limit: int) -> SearchResults:
    try:
        filters = LibraryFilters.parse(params).check()
    except BadParameter as exc:
        raise ToolError(str(exc)) from None
    examples = (
        Example.objects.listed()
        .matching(filters)
        .with_health()
        .select_related("approved_by")
        .prefetch_related("tags")
    )
    page = Paginator(examples, limit).page(1)
    return SearchResults(
        count=page.paginator.count, results=[ExampleHit(**example_brief(e)) for e in page.object_list]
    )


@server.tool(title="Read an example", annotations=READ_ONLY)
async def get_example(example_id: Annotated[int, Field(description="The example's id.")]) -> ExampleDetail:
    """One example in full: its files inline, how to run it, its provenance and results, and whether it is
    the latest version of its source or was retracted (and why)."""
    return await sync_to_async(_detail)(example_id)


def _detail(example_id: int) -> ExampleDetail:
    example = _example(example_id)
    latest = (
        example
        if example.is_latest and not example.is_retracted
        else Example.objects.listed().filter(source_url=example.source_url).first()
    )
    return ExampleDetail(
        **example_brief(example),
        status=example.status,
        retracted=retraction(example),
        latest_id=latest.pk if latest else None,
        description=example.description,
        python_version=example.python_version,
        how_to_run=how_to_run(example),
        files=[
            ExampleFile(name=name, uri=file_uri(example.pk, name), content=str(text))
            for name, text in sorted(example.files.items())
        ],
        saved_files=[
            SavedFile(name=saved.name, size=saved.path.stat().st_size, uri=saved_uri(example.pk, saved.name))
            for saved in saved_file_paths(example)
        ],
        results=example.results,
        provenance=provenance(example),
    )


@server.tool(title="Get an example's code", annotations=READ_ONLY)
async def get_example_code(example_id: Annotated[int, Field(description="The example's id.")]) -> ExampleCode:
    """main.py, requirements.txt and runscript.sh of one example as text, in one call."""
    return await sync_to_async(_code)(example_id)


def _code(example_id: int) -> ExampleCode:
    example = _example(example_id)
    files = example.files
    return ExampleCode(
        id=example.pk,
        name=export_name(example),
        main_py=str(files.get("main.py", "")),
        requirements_txt=str(files.get("requirements.txt", "")),
        runscript_sh=str(files.get("runscript.sh", "")),
        how_to_run=how_to_run(example),
    )


@server.tool(title="List an example's versions", annotations=READ_ONLY)
async def list_versions(example_id: Annotated[int, Field(description="Any version's id.")]) -> Versions:
    """Every version of the example's source, newest first, retracted ones too with the reason."""
    return await sync_to_async(_versions)(example_id)


def _versions(example_id: int) -> Versions:
    example = _example(example_id)
    return Versions(
        source_url=example.source_url,
        versions=[
            Version(
                id=version.pk,
                version=version.version,
                title=version.title,
                status=version.status,
                is_latest=version.is_latest,
                commit_sha=version.commit_sha,
                approved_at=version.approved_at.isoformat(),
                retracted=retraction(version),
            )
            for version in Example.objects.versions_of(example.source_url)
        ],
    )


# Resources --------------------------------------------------------------------------------------------


@server.resource(
    f"{SCHEME}://examples/{{example_id}}/files/{{+name}}",
    name="example-file",
    title="A file of an example",
    mime_type="text/plain",
)
async def example_file(example_id: int, name: str) -> str:
    return await sync_to_async(_file_text)(example_id, name)


def _file_text(example_id: int, name: str) -> str:
    example = Example.objects.filter(pk=example_id).first()
    if example is None or name not in example.files:
        raise ResourceError(f"Example {example_id} has no file {name!r}.")
    return str(example.files[name])


@server.resource(
    f"{SCHEME}://examples/{{example_id}}/saved/{{+path}}",
    name="example-saved-file",
    title="A file an example's program saved (to_save/)",
    mime_type="application/octet-stream",
)
async def example_saved_file(example_id: int, path: str) -> bytes:
    return await sync_to_async(_saved_bytes)(example_id, path)


def _saved_bytes(example_id: int, path: str) -> bytes:
    example = Example.objects.filter(pk=example_id).first()
    # saved_file_paths lists only regular files inside the example's folder, never through a link.
    found = {saved.name: saved.path for saved in saved_file_paths(example)} if example else {}
    if path not in found:
        raise ResourceError(f"Example {example_id} saved no file {path!r}.")
    return found[path].read_bytes()


# Helpers ----------------------------------------------------------------------------------------------


def how_to_run(example: Example) -> str:
    python = f"Python {example.python_version}" if example.python_version else "Python 3"
    return (
        f"In a fresh virtual environment with {python}: `bash runscript.sh` installs the requirements, then "
        "`python main.py` runs the program, which writes results.json and its outputs in to_save/."
    )


def _example(example_id: int) -> Example:
    example = (
        Example.objects.prefetch_related("tags").select_related("approved_by").filter(pk=example_id).first()
    )
    if example is None:
        raise ToolError(f"There is no example {example_id}.")
    return example
