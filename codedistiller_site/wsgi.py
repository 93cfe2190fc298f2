import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codedistiller_site.settings")

application = get_wsgi_application()

# Each web process loads the search's embedding model as it starts, not on the first search of a phrase.
from library import semantic  # noqa: E402 (needs the settings above)

semantic.warm_in_background()
