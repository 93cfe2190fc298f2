import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codedistiller_site.settings")

application = get_asgi_application()

# Each web process loads the search's embedding model as it starts, not on the first search of a phrase.
from library import semantic  # noqa: E402 (needs the settings above)

semantic.warm_in_background()
