"""What a web process does as it starts (wsgi.py, asgi.py), so that its first visitor does not wait for it."""

from django.urls import get_resolver


def warm_up() -> None:
    # Every view and what it imports (the pipeline, litellm): about two seconds, paid by the first request.
    get_resolver().resolve("/")
    # The search's embedding model, in a thread of its own: the first search of a new phrase waited for it.
    from library import semantic

    semantic.warm_in_background()
