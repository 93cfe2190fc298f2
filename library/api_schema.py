"""The OpenAPI 3.1 description of the JSON API, written by hand: it is the contract agents read.

tests/test_api.py checks it with openapi-spec-validator and checks the API's real answers against the
schemas here, so the two cannot drift apart silently.
"""

from django.conf import settings

from library.filters import SORTS
from library.models import HEALTH_LABELS, SCORE_BANDS, USAGE_BANDS

# 1.1: score, usage and sort, the library page's bands and orders. 1.2: requirement, include, relevance and
# richer list items; unknown parameters refused; the downloads described. 1.3: health and last_checked_at,
# the health filter.
API_VERSION = "1.3"

STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
URL = {"type": "string", "format": "uri"}
NULLABLE_URL = {"type": ["string", "null"], "format": "uri"}
DATE_TIME = {"type": "string", "format": "date-time"}
ANY_JSON = {"description": "Any JSON value, as the program or the model wrote it."}


def _object(properties: dict, *, description: str = "", nullable: bool = False) -> dict:
    schema = {
        "type": ["object", "null"] if nullable else "object",
        "required": list(properties),
        "properties": properties,
    }
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


LINKS = _object(
    {
        "self": {**URL, "description": "This example in the API."},
        "versions": {**URL, "description": "All versions of its source."},
        "html": {**URL, "description": "Its page on the site."},
        "download": {
            **URL,
            "description": "Its folder as a ZIP: files, metadata.json, results.json, to_save/.",
        },
    }
)

REQUIREMENTS = {
    "type": "array",
    "items": STRING,
    "description": "The lines of requirements.txt, comments (whole-line and inline) left out.",
}
FILES = {
    "type": "array",
    "items": _object({"name": STRING, "size": {"type": "integer"}, "content": STRING}),
    "description": "main.py, requirements.txt, runscript.sh and any other file, as text.",
}

SUMMARY_PROPERTIES = {
    "id": {"type": "integer"},
    "name": {
        **STRING,
        "description": "Stable name (the title's slug and the id), as in the exports' file and folder names.",
    },
    "title": STRING,
    "summary": STRING,
    "inclusion_criteria": {**STRING, "description": "When to use this example."},
    "exclusion_criteria": {**STRING, "description": "When not to use it."},
    "requirements": REQUIREMENTS,
    "tags": {"type": "array", "items": STRING},
    "source_kind": {"type": "string", "enum": ["repository", "paper"]},
    "source_url": {**STRING, "description": "The repository (or paper) the example was distilled from."},
    "commit_sha": {**STRING, "description": "The commit the run read; empty for papers."},
    "version": {"type": "integer", "minimum": 1, "description": "Versions of one source count up from 1."},
    "is_latest": {"type": "boolean", "description": "False for an older version of its source."},
    "example_type": STRING,
    "language": STRING,
    "gpu_required": {"type": "boolean"},
    "score": {"type": ["number", "null"], "description": "Mean expert score, or null before any review."},
    "score_count": {"type": "integer", "minimum": 0},
    "approved_at": DATE_TIME,
    "relevance": {
        "type": ["number", "null"],
        "minimum": 0,
        "maximum": 1,
        "description": "How well the hit matches `q`, in every order: 1.0 for a hit first in every ranking "
        "(full text, and meaning where semantic search is installed), falling with rank; sort=relevance "
        "orders by it. It is not a probability, nor comparable between queries. null without `q`.",
    },
    "health": {
        "type": ["string", "null"],
        "enum": [*[band for band in HEALTH_LABELS if band != "unchecked"], None],
        "description": "The verdict of the example's last scheduled check, which runs it again in a sandbox: "
        "passed (it still runs, with the approved results), changed (it runs, but its numbers moved), "
        "drifted (it runs with its lock, not with the newest versions its requirements allow), broken (it "
        "no longer runs); null before its first check. Prefer passed examples.",
    },
    "last_checked_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "When that check finished; null before the first.",
    },
    "links": _ref("Links"),
}

RETRACTION = _object(
    {"reason": STRING, "retracted_at": {"type": ["string", "null"], "format": "date-time"}},
    description="Why and when the example was withdrawn; null while it is in the library.",
    nullable=True,
)

PROVENANCE = _object(
    {
        "source_kind": STRING,
        "source_url": STRING,
        "source_title": STRING,
        "commit_sha": STRING,
        "paper_title": STRING,
        "paper_authors": STRING,
        "paper_url": STRING,
        "run_id": {"type": ["integer", "null"], "description": "null once the run was deleted."},
        "iteration_number": {"type": "integer"},
        "profile": STRING,
        "model_code": STRING,
        "model_fast": STRING,
        "cost_usd": {"type": "number", "description": "What the whole run cost."},
        "approved_by": NULLABLE_STRING,
        "approved_at": DATE_TIME,
        "override_reason": {
            **STRING,
            "description": "Set when a curator approved an iteration that did not pass, and why.",
        },
    }
)

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": STRING},
        "additionalProperties": True,
    },
    "Gone": _object(
        {
            "error": STRING,
            "retracted": _ref("Retraction"),
            "links": _object(
                {"versions": URL, "latest": {**NULLABLE_URL, "description": "The version now shown."}}
            ),
        },
        description="A retracted example: it left the library; the reason stays readable.",
    ),
    "Links": LINKS,
    "Retraction": RETRACTION,
    "Provenance": PROVENANCE,
    "ExampleSummary": {
        **_object(SUMMARY_PROPERTIES),
        "properties": {
            **SUMMARY_PROPERTIES,
            "files": {**FILES, "description": "Only with include=files. " + FILES["description"]},
            "provenance": {**_ref("Provenance"), "description": "Only with include=provenance."},
        },
    },
    "ExampleList": _object(
        {
            "count": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "page_size": {"type": "integer", "minimum": 1, "maximum": 100},
            "num_pages": {"type": "integer", "minimum": 1},
            "next": NULLABLE_URL,
            "previous": NULLABLE_URL,
            "query": {"type": "object", "description": "The filters that were applied, as parameters."},
            "results": {"type": "array", "items": _ref("ExampleSummary")},
        }
    ),
    "Example": _object(
        {
            **SUMMARY_PROPERTIES,
            "status": {"type": "string", "enum": ["approved"]},
            "description": STRING,
            "python_version": STRING,
            "how_to_run": {
                "type": "array",
                "items": STRING,
                "description": "The commands that run it in a fresh virtual environment, outside the sandbox.",
            },
            "files": FILES,
            "metadata": {"type": "object", "description": "The metadata the code model wrote."},
            "provenance": _ref("Provenance"),
            "results": {**ANY_JSON, "description": "results.json of the approved run, or null."},
            "stdout": {**STRING, "description": "The end of what the program printed."},
            "measured": {"type": ["object", "null"], "description": "Exit code and results checks."},
            "judgement": {"type": ["object", "null"], "description": "The LLM judge's verdict."},
            "saved_files": {
                "type": "array",
                "items": _object({"name": STRING, "size": {"type": ["integer", "null"]}, "url": URL}),
                "description": "What the program saved in to_save/ (plots, tables). Each `url` opens with the "
                "credentials the API takes: a token, a session, or none where the library is public.",
            },
            "links": _object(
                {**LINKS["properties"], "latest": {**NULLABLE_URL, "description": "The newest version."}}
            ),
        }
    ),
    "Version": _object(
        {
            "id": {"type": "integer"},
            "version": {"type": "integer", "minimum": 1},
            "title": STRING,
            "status": {"type": "string", "enum": ["approved", "retracted"]},
            "is_latest": {"type": "boolean"},
            "commit_sha": STRING,
            "approved_at": DATE_TIME,
            "retracted": _ref("Retraction"),
            "links": _ref("Links"),
        }
    ),
    "VersionList": _object(
        {
            "source_url": STRING,
            "count": {"type": "integer", "minimum": 0},
            "results": {"type": "array", "items": _ref("Version"), "description": "Newest first."},
        }
    ),
    "Index": _object(
        {
            "name": STRING,
            "version": STRING,
            "public": {"type": "boolean", "description": "Whether reading needs no token."},
            "authenticated": {"type": "boolean"},
            "links": _object(
                {
                    "examples": URL,
                    "example": {**STRING, "description": "A URL template: replace {id}."},
                    "versions": {**STRING, "description": "A URL template: replace {id}."},
                    "openapi": URL,
                    "export_zip": URL,
                    "export_codeblocks": URL,
                    "library": URL,
                    "mcp": {**URL, "description": "The MCP server (streamable HTTP), with the same tokens."},
                }
            ),
        }
    ),
}


def _json_response(description: str, schema: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict:
    return _json_response(description, "Error")


UNAUTHORIZED = _error("No valid token: missing (where the library is not public), unknown, or revoked.")
UNKNOWN_PARAMETER = _error("A query parameter this address does not take; the error names it.")
ZIP = {"application/zip": {"schema": {"type": "string", "contentMediaType": "application/zip"}}}


def _query(name: str, schema: dict, description: str, **extra) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
        **extra,
    }


EXAMPLE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
    "description": "The example's id.",
}

LIST_PARAMETERS = [
    _query("q", STRING, "Search words: full text over title, summary, description, code and repository."),
    _query(
        "tag",
        {"type": "array", "items": STRING},
        "A tag (slug); repeat the parameter to require several.",
        style="form",
        explode=True,
    ),
    _query("language", STRING, "Programming language, e.g. python (any case)."),
    _query("example_type", STRING, "Kind of example, e.g. demonstration (any case)."),
    _query("type", STRING, "The former spelling of example_type, kept for old links.", deprecated=True),
    _query("gpu", {"type": "boolean"}, "true: only examples that need a GPU; false: only those that do not."),
    _query("model", STRING, "The code or fast model that wrote it, as a litellm model string."),
    _query("source", STRING, "Only examples of this repository (or paper) URL."),
    _query(
        "requirement",
        {"type": "string", "pattern": "^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"},
        "Only examples whose requirements.txt names this package, spelled as pip compares names (any case; "
        "`-`, `_` and `.` alike): scikit_learn finds scikit-learn.",
    ),
    _query(
        "min_score",
        {"type": "number"},
        "Only examples whose mean expert score is at least this; a finite number (nan, inf are refused).",
    ),
    _query(
        "score",
        {"type": "string", "enum": list(SCORE_BANDS)},
        "A band of the mean expert score, as the library page's facet: 4 and above, 3 to 4, below 3, or "
        "not scored yet.",
    ),
    _query(
        "usage",
        {"type": "string", "enum": list(USAGE_BANDS)},
        "A band of how much of the repository's code the program exercised: half or more, 10% to 50%, or "
        "under 10%.",
    ),
    _query(
        "health",
        {"type": "string", "enum": list(HEALTH_LABELS)},
        "The verdict of the example's last check (see `health` in the results), or unchecked: not checked yet.",
    ),
    _query(
        "sort",
        {"type": "string", "enum": list(SORTS)},
        "relevance (needs q; the default with q), newest (the default without), or score: best scored first.",
    ),
    _query(
        "include",
        {"type": "array", "items": {"type": "string", "enum": ["files", "provenance"]}},
        "Add to each result its files inline (files) or its provenance: comma-separated or repeated.",
        style="form",
        explode=False,
    ),
    _query("page", {"type": "integer", "minimum": 1, "default": 1}, "Page number."),
    _query(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        "Examples per page.",
    ),
]

DESCRIPTION = """\
Read-only access to the CodeDistiller example library: small, working, vetted code examples distilled
from scientific repositories and papers.

Search with `GET /api/examples/?q=...`, read one example with its files with `GET /api/examples/{id}/`,
and list the versions of its source with `GET /api/examples/{id}/versions/`. The whole library, or a
search result, downloads as a ZIP (`/library/export/?format=zip|codeblocks&q=...`).

Each address takes only the query parameters described here: any other one is refused with 400 and
named, so that a misspelt filter does not silently return everything. An empty value is the same as
leaving the parameter out. Numbers are finite: JSON has no NaN or Infinity, and none is ever written.

The same library is an MCP server at `/mcp` (streamable HTTP, stateless, the same tokens), and
`python manage.py mcp` serves it on stdio.

Authentication: where the library is public, none is needed. Otherwise send a token,
`Authorization: Bearer <token>` (`Token <token>` works too); an administrator makes one with
`python manage.py api_token create USERNAME --name NAME`. A token that is sent must be valid, even where
none is needed. The saved files' `url`s and the ZIP downloads take the same token, answer the same JSON
401 and send the same CORS headers. Errors are JSON: `{"error": "..."}`, 404s for unknown addresses
under /api/ included. Any origin may read (CORS), without cookies.
"""


DOWNLOADS = {
    "/library/export/": {
        "get": {
            "operationId": "exportLibrary",
            "summary": "The library, or a search of it, as one ZIP",
            "description": "format=zip: one folder per example (its files, metadata.json, results.json, "
            "to_save/) and index.json. format=codeblocks: CodeScientist's codeblock format, one `<name>.py` "
            "per example and codedistiller_summaries.json (merge it into CodeScientist's "
            "codeblock_summaries.json with `python manage.py merge_codeblock_summaries`). Takes the list's "
            "filters (not page, page_size or include).",
            "parameters": [
                _query(
                    "format", {"type": "string", "enum": ["zip", "codeblocks"], "default": "zip"}, "The kind."
                ),
                *[p for p in LIST_PARAMETERS if p["name"] not in ("page", "page_size", "include")],
            ],
            "responses": {
                "200": {"description": "The ZIP, streamed.", "content": ZIP},
                "400": _error("A parameter that cannot be understood or that the export does not take."),
                "401": UNAUTHORIZED,
            },
        }
    },
    "/library/{id}/download/": {
        "get": {
            "operationId": "downloadExample",
            "summary": "One example's folder as a ZIP: files, metadata.json, results.json, to_save/",
            "description": "Any version, retracted ones too: their metadata.json says so, and why.",
            "parameters": [EXAMPLE_ID],
            "responses": {
                "200": {"description": "The ZIP.", "content": ZIP},
                "401": UNAUTHORIZED,
                "404": _error("No such example."),
            },
        }
    },
    "/library/{id}/files/{path}": {
        "get": {
            "operationId": "getSavedFile",
            "summary": "A file the example's program saved in to_save/ (a plot, a table)",
            "description": "The `url` of an example's `saved_files`. Images are served inline, anything "
            "else as a download (application/octet-stream).",
            "parameters": [
                EXAMPLE_ID,
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "schema": STRING,
                    "description": "The file's name in `saved_files`, e.g. plot.png or figures/fit.svg.",
                },
            ],
            "responses": {
                "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                "401": UNAUTHORIZED,
                "404": _error("No such example, or no such saved file."),
            },
        }
    },
}


def openapi_document(*, server_url: str, public: bool) -> dict:
    # An empty requirement ({}) means "no credentials needed": only where the library is public.
    security = ([{}] if public else []) + [{"bearerAuth": []}, {"sessionCookie": []}]
    open_to_all = [{}, {"bearerAuth": []}, {"sessionCookie": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CodeDistiller library API",
            "version": API_VERSION,
            "description": DESCRIPTION,
        },
        "servers": [{"url": server_url}],
        "security": security,
        "paths": {
            "/api/": {
                "get": {
                    "operationId": "index",
                    "summary": "Links to everything else, and whether this deployment needs a token",
                    "security": open_to_all,
                    "responses": {
                        "200": _json_response("The index.", "Index"),
                        "400": UNKNOWN_PARAMETER,
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This description",
                    "security": open_to_all,
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": UNKNOWN_PARAMETER,
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/api/examples/": {
                "get": {
                    "operationId": "listExamples",
                    "summary": "Search and filter the library",
                    "description": "The newest approved version of each source, as the library page lists "
                    "them: ranked by relevance when `q` is given, newest first otherwise (see `sort`).",
                    "parameters": LIST_PARAMETERS,
                    "responses": {
                        "200": _json_response("A page of examples.", "ExampleList"),
                        "400": _error(
                            "A parameter that cannot be understood (page=abc, min_score=nan) or that this "
                            "address does not take (library=scipy)."
                        ),
                        "401": UNAUTHORIZED,
                        "404": _error("A page past the last one."),
                    },
                }
            },
            "/api/examples/{id}/": {
                "get": {
                    "operationId": "getExample",
                    "summary": "One example with its files, requirements, metadata, provenance and results",
                    "description": "Any approved version, older ones too (see `is_latest`).",
                    "parameters": [EXAMPLE_ID],
                    "responses": {
                        "200": _json_response("The example.", "Example"),
                        "400": UNKNOWN_PARAMETER,
                        "401": UNAUTHORIZED,
                        "404": _error("No such example."),
                        "410": _json_response("The example was retracted; the reason is given.", "Gone"),
                    },
                }
            },
            "/api/examples/{id}/versions/": {
                "get": {
                    "operationId": "listVersions",
                    "summary": "All versions of the example's source, newest first",
                    "description": "Retracted versions are listed too, with the reason; their own "
                    "address answers 410.",
                    "parameters": [EXAMPLE_ID],
                    "responses": {
                        "200": _json_response("The versions.", "VersionList"),
                        "400": UNKNOWN_PARAMETER,
                        "401": UNAUTHORIZED,
                        "404": _error("No such example."),
                    },
                }
            },
            **DOWNLOADS,
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token: `Authorization: Bearer <token>` (or `Token <token>`).",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": settings.SESSION_COOKIE_NAME,
                    "description": "A logged-in browser session on the site.",
                },
            },
        },
    }
