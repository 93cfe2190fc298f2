"""The library's MCP server, driven by the official SDK's own client over both of its transports:
streamable HTTP at /mcp on a real server (pytest-django's live server), and stdio through `manage.py mcp`
in its own process, both on the test database."""

import base64
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx2
import pytest
from django.urls import reverse
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from library.api_auth import api_token_create, api_token_revoke
from library.models import Example
from library.services import example_retract
from tests.test_api import make_example
from tests.test_many_workers import database_url

# The live server and the stdio process read the rows with connections of their own: they must be committed.
pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"search_examples", "get_example", "get_example_code", "list_versions"}


def in_own_thread(function, *args, **kwargs):
    """`function(*args, **kwargs)` in a thread of its own, as an agent is a program of its own: the test's thread may
    hold a running event loop (Playwright's sync API leaves one there once an e2e test ran in the session),
    where neither anyio.run nor the view's async_to_sync may start another."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


def over_http(live_server, scenario, *, token: str | None = None):
    """Runs `scenario(client)` with an SDK client connected to /mcp; returns what it returns."""

    async def main():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            transport = streamable_http_client(live_server.url + "/mcp", http_client=http)
            async with Client(transport) as client:
                return await scenario(client)

    return in_own_thread(anyio.run, main)


def with_saved_plot(example: Example) -> Example:
    folder = example.files_dir / "to_save"
    folder.mkdir(parents=True)
    (folder / "plot.png").write_bytes(b"\x89PNG fake")
    example.saved_files = [{"name": "plot.png", "size": 9}]
    example.save()
    return example


# Over streamable HTTP ---------------------------------------------------------------------------------------


def test_it_lists_its_tools_read_only_with_their_schemas(live_server):
    async def scenario(client):
        return (await client.list_tools()).tools, (await client.list_resource_templates()).resource_templates

    tools, templates = over_http(live_server, scenario)

    assert {tool.name for tool in tools} == TOOLS
    for tool in tools:
        assert tool.annotations.read_only_hint is True and tool.output_schema["type"] == "object"
    search = next(tool for tool in tools if tool.name == "search_examples")
    assert {"query", "tags", "language", "requirement", "gpu", "score", "usage"} <= set(
        search.input_schema["properties"]
    )
    assert {template.uri_template for template in templates} == {
        "codedistiller://examples/{example_id}/files/{+name}",
        "codedistiller://examples/{example_id}/saved/{+path}",
    }


def test_search_finds_what_the_api_finds_with_the_same_filters(live_server, client, curator):
    spectra = make_example(curator, "spectra", title="Peak fitting of spectra", tags=("spectroscopy",))
    make_example(curator, "graphs", title="Shortest paths in graphs", tags=("graphs",))
    sklearn = make_example(curator, "learner", title="Peak picking with a classifier")
    sklearn.files = {**sklearn.files, "requirements.txt": "scikit-learn>=1.5  # the classifier\n"}
    sklearn.save()

    async def scenario(client):
        return [
            (await client.call_tool("search_examples", arguments)).structured_content
            for arguments in ({"query": "peak"}, {"requirement": "scikit_learn"}, {"tags": ["graphs"]})
        ]

    by_words, by_requirement, by_tag = over_http(live_server, scenario)

    for found, params in [(by_words, {"q": "peak"}), (by_requirement, {"requirement": "scikit_learn"})]:
        api = client.get(reverse("api_examples"), params).json()
        assert [hit["id"] for hit in found["results"]] == [item["id"] for item in api["results"]]
        assert found["count"] == api["count"]
    assert {hit["id"] for hit in by_words["results"]} == {spectra.pk, sklearn.pk}
    relevance = [hit["relevance"] for hit in by_words["results"]]
    assert relevance == sorted(relevance, reverse=True) and 0 < relevance[-1] <= relevance[0] <= 1
    (hit,) = by_requirement["results"]
    assert hit["id"] == sklearn.pk and hit["requirements"] == ["scikit-learn>=1.5"]
    assert hit["inclusion_criteria"] == "When you need learner." and hit["is_latest"] is True
    assert [hit["title"] for hit in by_tag["results"]] == ["Shortest paths in graphs"]


def test_a_bad_filter_is_an_error_the_model_can_read(live_server):
    async def scenario(client):
        return await client.call_tool("search_examples", {"requirement": "numpy; rm -rf /"})

    result = over_http(live_server, scenario)
    assert result.is_error is True
    assert "requirement must be a package name" in result.content[0].text


def test_it_fetches_an_example_its_code_and_its_files(live_server, curator):
    example = with_saved_plot(make_example(curator))

    async def scenario(client):
        detail = await client.call_tool("get_example", {"example_id": example.pk})
        code = await client.call_tool("get_example_code", {"example_id": example.pk})
        main = await client.read_resource(f"codedistiller://examples/{example.pk}/files/main.py")
        plot = await client.read_resource(f"codedistiller://examples/{example.pk}/saved/plot.png")
        missing = await client.call_tool("get_example", {"example_id": 999})
        return detail.structured_content, code.structured_content, main, plot, missing

    detail, code, main, plot, missing = over_http(live_server, scenario)

    assert detail["id"] == example.pk and detail["status"] == "approved" and detail["retracted"] is None
    assert {file["name"]: file["content"] for file in detail["files"]} == example.files
    assert detail["latest_id"] == example.pk and "bash runscript.sh" in detail["how_to_run"]
    assert detail["provenance"]["commit_sha"] == example.commit_sha and detail["results"] == {"x": 1}
    assert detail["saved_files"] == [
        {"name": "plot.png", "size": 9, "uri": f"codedistiller://examples/{example.pk}/saved/plot.png"}
    ]
    assert code["main_py"] == example.files["main.py"] and code["requirements_txt"] == "numpy==2.1.0\n"
    assert code["runscript_sh"] == example.files["runscript.sh"]
    assert main.contents[0].text == example.files["main.py"]
    assert base64.b64decode(plot.contents[0].blob) == b"\x89PNG fake"
    assert missing.is_error and missing.content[0].text.endswith("There is no example 999.")


def test_a_retracted_example_is_reported_as_such(live_server, curator):
    old = make_example(curator)
    new = make_example(curator)
    example_retract(example=new, retracted_by=curator, reason="It uses a deprecated API.")

    async def scenario(client):
        detail = await client.call_tool("get_example", {"example_id": new.pk})
        versions = await client.call_tool("list_versions", {"example_id": old.pk})
        search = await client.call_tool("search_examples", {})
        return detail.structured_content, versions.structured_content, search.structured_content

    detail, versions, search = over_http(live_server, scenario)

    assert detail["status"] == "retracted" and detail["retracted"]["reason"] == "It uses a deprecated API."
    assert detail["latest_id"] == old.pk
    assert [(v["id"], v["status"], v["is_latest"]) for v in versions["versions"]] == [
        (new.pk, "retracted", False),
        (old.pk, "approved", True),
    ]
    assert [hit["id"] for hit in search["results"]] == [old.pk]


def test_a_private_library_needs_a_valid_token(live_server, settings, curator, reader):
    settings.LIBRARY_PUBLIC = False
    make_example(curator)
    _, key = api_token_create(user=reader, name="agent")
    revoked, revoked_key = api_token_create(user=reader, name="old agent")
    api_token_revoke(token=revoked)

    async def scenario(client):
        return (await client.call_tool("search_examples", {})).structured_content["count"]

    assert over_http(live_server, scenario, token=key) == 1
    refusals = [
        (None, "Authentication required: send 'Authorization: Bearer <token>'."),
        ("cd_not-a-real-key", "Invalid token."),
        (revoked_key, "This token has been revoked."),
    ]
    for token, reason in refusals:
        with pytest.raises(ExceptionGroup) as refused:
            over_http(live_server, scenario, token=token)
        assert refused.group_contains(MCPError, match="Server returned an error response", depth=None)
        answer = httpx2.post(
            live_server.url + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        assert answer.status_code == 401 and answer.json() == {"error": reason}
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="codedistiller"'


def test_it_is_stateless_and_answers_in_json(client):
    response = in_own_thread(
        client.post,
        "/mcp",
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        content_type="application/json",
        HTTP_ACCEPT="application/json, text/event-stream",
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "Mcp-Session-Id" not in response  # nothing to keep between requests: any process may answer
    assert response.json()["result"]["serverInfo"]["name"] == "codedistiller-library"


def test_only_post_reaches_the_server_and_browsers_may_ask_first(client):
    for method in ("get", "delete", "put"):
        response = getattr(client, method)("/mcp")
        assert response.status_code == 405 and response["Allow"] == "POST, OPTIONS"
        assert response.json() == {"error": f"{method.upper()} is not allowed: send MCP messages with POST."}
    preflight = client.options("/mcp", HTTP_ORIGIN="https://agent.example")
    assert preflight.status_code == 204 and preflight["Access-Control-Allow-Origin"] == "*"
    assert "Mcp-Protocol-Version" in preflight["Access-Control-Allow-Headers"]
    assert preflight["Access-Control-Allow-Methods"] == "POST, OPTIONS"


# Over stdio --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_manage_py_mcp_serves_the_same_tools_on_stdio(settings, curator):
    example = make_example(curator, "spectra", title="Peak fitting of spectra")
    server = StdioServerParameters(
        command=sys.executable,
        args=["manage.py", "mcp"],
        cwd=str(ROOT),
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "codedistiller_site.settings",
            "DEBUG": "true",
            "DATABASE_URL": database_url(),
            "DATA_DIR": str(settings.DATA_DIR),
        },
    )

    async def main():
        async with Client(server) as client:
            tools = (await client.list_tools()).tools
            found = await client.call_tool("search_examples", {"query": "spectra"})
            code = await client.call_tool("get_example_code", {"example_id": example.pk})
            return tools, found.structured_content, code.structured_content

    tools, found, code = in_own_thread(anyio.run, main)

    assert {tool.name for tool in tools} == TOOLS
    assert [hit["id"] for hit in found["results"]] == [example.pk]
    assert code["main_py"] == example.files["main.py"]
