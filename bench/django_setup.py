"""Django for a benchmark: the production settings on a fresh SQLite database in a temporary folder.

Unset here, whatever the shell has: DATABASE_URL (a benchmark must not touch a real database) and the
LLM cassette variables (a benchmark measures real work).
"""

import os
import tempfile
from pathlib import Path


def setup(prefix: str, *, env: dict | None = None, test_client: bool = False) -> Path:
    """Migrated and ready; returns the temporary folder (DATA_DIR unless `env` says otherwise)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "codedistiller_site.settings",
            "DEBUG": "false",
            "SECRET_KEY": "bench-only",
            "DATA_DIR": str(folder),
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
    )
    for name in ("DATABASE_URL", "DISTILL_LLM_REPLAY", "DISTILL_LLM_RECORD"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if test_client:  # pages through django.test.Client, without collectstatic's manifest
        settings.ALLOWED_HOSTS = ["testserver"]
        settings.STORAGES["staticfiles"] = {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        }
    call_command("migrate", verbosity=0)
    return folder
