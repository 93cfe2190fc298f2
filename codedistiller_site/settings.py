"""Settings for CodeDistiller site: one module, read from the environment only.

Every default suits one machine (SQLite, the django-q2 ORM broker, the local sandbox); every default is
swapped by an environment variable, never by editing code. See README.md, "Configuration".
"""

import os
from pathlib import Path

# litellm fetches its model price map from the network at import unless told otherwise; start-up must
# never wait on the network, so this is set before anything can import litellm.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from django.core.exceptions import ImproperlyConfigured  # noqa: E402

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str | None:
    """A string setting; a secret may also come from the file named by `<NAME>_FILE`."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_name} cannot be read: {exc.strerror}") from None
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    """Only `true` or `false` (any case): a typo must not silently mean either."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")
    return lowered == "true"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: set SECRET_KEY (or SECRET_KEY_FILE), or DEBUG=true for local development"
        )
    SECRET_KEY = "insecure-development-key-only-for-debug"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Where runs keep their output folders, clones and the SQLite file.
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_q",
    "distill",
    "library",
    "reviews",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "codedistiller_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "codedistiller_site.roles.context_processor",
            ],
        },
    },
]

WSGI_APPLICATION = "codedistiller_site.wsgi.application"
ASGI_APPLICATION = "codedistiller_site.asgi.application"


# The web server and the workers write at once: WAL lets readers go on, and IMMEDIATE transactions take
# the write lock up front instead of failing with "database is locked" when a read turns into a write.
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}


def _database() -> dict:
    url = env_str("DATABASE_URL")
    if not url:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "OPTIONS": SQLITE_OPTIONS,
        }
    import dj_database_url

    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # the library raises several types for a bad URL
        raise ImproperlyConfigured(
            f"DATABASE_URL cannot be read ({exc}); expected e.g. postgres://user:password@host:5432/name"
        ) from None
    if not config.get("ENGINE"):
        raise ImproperlyConfigured("DATABASE_URL names no known database engine; use postgres://...")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
        config["CONN_MAX_AGE"] = 0
    return config


DATABASES = {"default": _database()}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "runs"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Anonymous visitors may read the library (browse, search, example pages) and its JSON API when this is
# true: the library exists to be shared. Runs, reviews and every action always need an account.
LIBRARY_PUBLIC = env_bool("LIBRARY_PUBLIC", True)

# Background workers (django-q2). The ORM broker keeps tasks in the database, so they survive a crash;
# REDIS_URL switches to Redis. `timeout` must stay below `retry`, or a slow step is handed out twice.
Q_TIMEOUT = env_int("Q_TIMEOUT", 3600)
Q_CLUSTER = {
    "name": "codedistiller",
    "workers": env_int("Q_WORKERS", 2),
    "timeout": Q_TIMEOUT,
    "retry": Q_TIMEOUT + 300,
    "max_attempts": 3,
    "queue_limit": 50,
    "bulk": 1,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "poll": 0.5,
}
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"forbidden_without_traceback": {"()": "codedistiller_site.logs.ForbiddenWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"filters": ["forbidden_without_traceback"]},
        # litellm logs every request at INFO, prompts included.
        "LiteLLM": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # /mcp starts and stops a session manager for every request (library/mcp_views.py), each at INFO.
        "mcp.server.streamable_http_manager": {"level": "WARNING"},
    },
}

# Distillation. Sources: https URLs on these hosts; local folders only when allowed (tests, offline use).
DISTILL_ALLOWED_HOSTS = env_list(
    "DISTILL_ALLOWED_HOSTS", ["github.com", "gitlab.com", "bitbucket.org", "codeberg.org", "huggingface.co"]
)
DISTILL_ALLOW_LOCAL_SOURCES = env_bool("DISTILL_ALLOW_LOCAL_SOURCES", False)
DISTILL_MAX_REPO_MB = env_int("DISTILL_MAX_REPO_MB", 500)
DISTILL_MAX_REPO_FILES = env_int("DISTILL_MAX_REPO_FILES", 100_000)
DISTILL_CLONE_TIMEOUT_SECS = env_int("DISTILL_CLONE_TIMEOUT_SECS", 300)
# Where the environment step asks whether the repository's version is published (PyPI's JSON API), to name
# it `name==version` in an example's requirements; "" asks nobody (the version is then "unchecked").
DISTILL_PYPI_URL = env_str("DISTILL_PYPI_URL", "https://pypi.org/pypi")
# A run whose worker has not renewed its heartbeat for this long is resumed by the sweeper.
DISTILL_STALE_SECS = env_int("DISTILL_STALE_SECS", 180)
# A queued run nobody picked up is re-enqueued only after this long (its task may be waiting in a backlog).
DISTILL_LOST_TASK_SECS = env_int("DISTILL_LOST_TASK_SECS", Q_TIMEOUT + 600)
# Record and replay of LLM replies (see tests/cassettes/README.md).
DISTILL_LLM_REPLAY = env_str("DISTILL_LLM_REPLAY")
DISTILL_LLM_RECORD = env_str("DISTILL_LLM_RECORD")

# Papers (distill.pipeline.papers): the largest PDF or text a curator may submit, and a PDF's pages.
DISTILL_MAX_PAPER_MB = env_int("DISTILL_MAX_PAPER_MB", 30)
DISTILL_MAX_PAPER_PAGES = env_int("DISTILL_MAX_PAPER_PAGES", 100)

# Library health (library/health.py): approved examples are run again on a schedule. At most this many
# checks start in an hour; an example is checked at most once per interval, a broken one less often.
LIBRARY_HEALTH_CHECKS_PER_HOUR = env_int("LIBRARY_HEALTH_CHECKS_PER_HOUR", 4)
LIBRARY_HEALTH_INTERVAL_HOURS = env_int("LIBRARY_HEALTH_INTERVAL_HOURS", 24 * 7)
LIBRARY_HEALTH_BROKEN_INTERVAL_HOURS = env_int("LIBRARY_HEALTH_BROKEN_INTERVAL_HOURS", 24)
# A number in results.json has changed when it moved by more than this share of the approved value (and by
# more than 1e-9 in absolute terms, for values near zero). In parts per million: 10000 is 1%.
LIBRARY_HEALTH_TOLERANCE_PPM = env_int("LIBRARY_HEALTH_TOLERANCE_PPM", 10_000)
# A check's task may run this long (two installs and two runs at the profile's limits, and a clone); its
# sandbox limits are cut to fit. A check still running past it was stopped with its worker.
LIBRARY_HEALTH_CHECK_TIMEOUT_SECS = env_int("LIBRARY_HEALTH_CHECK_TIMEOUT_SECS", 3 * 3600)
