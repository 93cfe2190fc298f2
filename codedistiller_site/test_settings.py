"""Settings for the test suite: the real settings, with tasks run in-process.

django-q2 reads `Q_CLUSTER` when it is imported, so `sync` has to be set here rather than by a fixture.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="codedistiller-test-"))

from codedistiller_site.settings import *  # noqa: E402,F403
from codedistiller_site.settings import Q_CLUSTER, STORAGES  # noqa: E402

Q_CLUSTER = {**Q_CLUSTER, "sync": True}
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A file, not SQLite's shared in-memory database: the pipeline's heartbeat thread and the live server
# open connections of their own, and these must see committed rows without sharing a lock.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(os.environ["DATA_DIR"], "test.sqlite3")}  # noqa: F405

# The environment step asks no package index in tests: a repository's version is "unchecked", and named by
# its commit when its source is a local folder (distill/pipeline/environment.py).
DISTILL_PYPI_URL = ""
