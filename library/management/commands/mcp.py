"""`manage.py mcp`: the library's MCP server on stdio, for an agent that starts it as a subprocess.

stdout carries the protocol and nothing else; anything the server has to say goes to stderr.
"""

from django.core.management.base import BaseCommand

from library.mcp_server import server


class Command(BaseCommand):
    help = "Serve the library's MCP server on stdin/stdout (configure your agent to start this command)."

    def handle(self, *args, **options):
        # Every reader of a stdio server is local and started it: the LIBRARY_PUBLIC rule is for the web.
        server.run("stdio")
