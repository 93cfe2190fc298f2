"""Configuration mistakes are one clear line on stderr, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from codedistiller_site.settings import env_bool, env_int, env_list, env_str

ROOT = Path(__file__).resolve().parents[1]


def manage(*args, env: dict, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "DATABASE_URL")}
    base.update({"DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "codedistiller_site.settings"}, **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def test_env_bool_rejects_anything_but_true_or_false(monkeypatch):
    monkeypatch.setenv("FLAG", "True")
    assert env_bool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "false")
    assert env_bool("FLAG", True) is False
    monkeypatch.setenv("FLAG", "yes")
    with pytest.raises(ImproperlyConfigured, match="FLAG must be true or false"):
        env_bool("FLAG", False)


def test_env_int_and_list(monkeypatch):
    monkeypatch.setenv("N", "12")
    monkeypatch.setenv("HOSTS", "a.example, b.example,")
    assert env_int("N", 1) == 12
    assert env_list("HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("N", "twelve")
    with pytest.raises(ImproperlyConfigured, match="whole number"):
        env_int("N", 1)


def test_a_secret_comes_from_its_file(monkeypatch, tmp_path):
    (tmp_path / "key").write_text("from-a-file\n")
    monkeypatch.setenv("TOKEN_FILE", str(tmp_path / "key"))
    assert env_str("TOKEN") == "from-a-file"
    monkeypatch.setenv("TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="TOKEN_FILE"):
        env_str("TOKEN")


def test_production_without_a_secret_key_is_one_clear_line(tmp_path):
    result = manage("check", env={"DEBUG": "false"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: SECRET_KEY is not set: set SECRET_KEY (or SECRET_KEY_FILE), or DEBUG=true for local development"
    ]


def test_an_unreadable_database_url_is_one_clear_line(tmp_path):
    result = manage("check", env={"DEBUG": "true", "DATABASE_URL": "nonsense://x"}, tmp_path=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DATABASE_URL cannot be read")
    assert "Traceback" not in result.stderr


def test_a_missing_bubblewrap_is_named_with_what_to_install(tmp_path):
    # A PATH without bwrap: the system check says what to install.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to("/usr/bin/git")
    result = manage("check", env={"DEBUG": "true", "PATH": str(bin_dir)}, tmp_path=tmp_path)
    assert "apt-get install bubblewrap" in result.stderr + result.stdout


def test_the_test_settings_run_tasks_synchronously(settings):
    assert settings.Q_CLUSTER["sync"] is True
    assert settings.Q_CLUSTER["timeout"] < settings.Q_CLUSTER["retry"]
    assert settings.Q_CLUSTER["max_attempts"] > 0


def _q_cluster(tmp_path, **env) -> dict:
    import json

    result = manage(
        "shell",
        "-c",
        "import json; from django.conf import settings; from django_q.brokers import get_broker; "
        "print(json.dumps({**settings.Q_CLUSTER, 'broker': type(get_broker()).__name__}))",
        env={"DEBUG": "true", **env},
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_orm_broker_is_the_default(tmp_path):
    q_cluster = _q_cluster(tmp_path)
    assert q_cluster["orm"] == "default" and "redis" not in q_cluster
    assert q_cluster["broker"] == "ORM"


def test_redis_url_switches_the_broker_to_redis(tmp_path):
    # django-q2 passes a string `redis` to redis.from_url, a dict to redis.StrictRedis(**kwargs).
    q_cluster = _q_cluster(tmp_path, REDIS_URL="redis://:secret@redis.internal:6380/2", Q_WORKERS="8")
    assert q_cluster["redis"] == "redis://:secret@redis.internal:6380/2"
    assert "orm" not in q_cluster, "django-q2 picks the ORM broker whenever `orm` is set"
    assert q_cluster["broker"] == "Redis" and q_cluster["workers"] == 8
