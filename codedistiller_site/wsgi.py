import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codedistiller_site.settings")

application = get_wsgi_application()

from codedistiller_site import startup  # noqa: E402 (after the settings are set)

startup.warm_up()
