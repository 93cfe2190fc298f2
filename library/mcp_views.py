"""/mcp: the library's MCP server (library.mcp_server) over streamable HTTP, served by the site itself.

Stateless and in JSON: each POST is answered whole, with no session to keep, so it works however Django is
served (gunicorn's threads under `make run`, `manage.py runserver`, ASGI) and on any number of processes.
The request reaches the SDK's own transport as an ASGI request, inside an event loop made for it, and the
answer comes back as an ordinary Django response. Who may read is decided here, before the SDK sees the
request, by the API's rule: a token that is sent must be valid; else a session, or LIBRARY_PUBLIC.
"""

import anyio
from asgiref.sync import async_to_sync
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from library.api import error, with_cors
from library.api_auth import request_access, unauthorized
from library.mcp_server import server

# Stateless and in JSON, a POST is the whole protocol: there is no stream to GET, no session to DELETE (and
# the SDK would hold a GET open, waiting for a stream that never comes).
METHODS = "POST, OPTIONS"
# Django has checked the Host header against ALLOWED_HOSTS before any view runs: the SDK's own check, made
# for a server that does not know its host name, would refuse every host but localhost.
HOSTS_CHECKED_BY_DJANGO = TransportSecuritySettings(enable_dns_rebinding_protection=False)


@csrf_exempt  # JSON-RPC from agents; it only reads, and CORS gives no other site a credentialed answer
def mcp_endpoint(request):
    if request.method == "OPTIONS":
        response = HttpResponse(status=204)
        response["Access-Control-Max-Age"] = "86400"
    elif request.method != "POST":
        response = error(405, f"{request.method} is not allowed: send MCP messages with POST.")
        response["Allow"] = METHODS
    elif not (access := request_access(request)).allowed:
        response = unauthorized(access.error)
    else:
        status, headers, body = async_to_sync(_serve)(_asgi_scope(request), request.body)
        response = HttpResponse(body, status=status)
        for name, value in headers:
            response[name.decode("latin-1")] = value.decode("latin-1")
    with_cors(response)
    response["Access-Control-Allow-Methods"] = METHODS
    response["Access-Control-Allow-Headers"] = (
        "Authorization, Content-Type, Mcp-Protocol-Version, Mcp-Session-Id"
    )
    response["Access-Control-Expose-Headers"] = "Mcp-Session-Id"
    return response


async def _serve(scope: dict, body: bytes) -> tuple[int, list, bytes]:
    """One HTTP exchange with the SDK's streamable HTTP transport: (status, headers, body)."""
    # A session manager runs once, and stateless, each request gets a fresh transport anyway. The SDK's own
    # client reaches the low-level server of an MCPServer the same way (mcp/client/client.py).
    manager = StreamableHTTPSessionManager(
        app=server._lowlevel_server,
        json_response=True,
        stateless=True,
        security_settings=HOSTS_CHECKED_BY_DJANGO,
    )
    answered = anyio.Event()
    started: dict = {}
    chunks: list[bytes] = []
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()  # the client "disconnects" only once it has its answer
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                answered.set()

    async with manager.run():
        await manager.handle_request(scope, receive, send)
    return started.get("status", 500), started.get("headers", []), b"".join(chunks)


def _asgi_scope(request) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.META.get("QUERY_STRING", "").encode("latin-1"),
        # WSGI hands header values over as latin-1 text: encoding them back gives the bytes that came.
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.items()
        ],
        "server": (request.get_host().rsplit(":", 1)[0], int(request.get_port())),
        "client": (request.META.get("REMOTE_ADDR", ""), 0),
    }
