"""Small factory functions for test data."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

import git


def make_git_repo(path: Path, files: dict[str, str | bytes]) -> Path:
    """Create a real git repository at path holding files (relative posix paths) in one commit."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(path, initial_branch="main")
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    # Actor and dates fixed so the tests need no git identity and the commit is reproducible.
    author = git.Actor("Test Author", "author@example.org")
    date = "2024-01-01T00:00:00"
    repo.index.add(list(files))
    repo.index.commit("Initial commit", author=author, committer=author, author_date=date, commit_date=date)
    repo.close()
    return path


def make_run(**fields):
    """A Run row as the pipeline would leave it; fields override the defaults."""
    from distill.models import Run
    from distill.profiles import load_profile

    profile = fields.pop("profile_name", "local")
    defaults = {
        "source_url": "https://github.com/example/minilib",
        "source_title": "example/minilib",
        "profile": profile,
        "config": load_profile(profile).model_dump(),
        "status": Run.Status.SUCCEEDED,
        "repository_description": "minilib computes summary statistics.",
        "commit_sha": "0123456789abcdef0123456789abcdef01234567",
    }
    defaults.update(fields)
    return Run.objects.create(**defaults)


def make_iteration(run, number: int = 1, **fields):
    """An Iteration that ran; `main` sets main.py's text."""
    from distill.models import Iteration

    main = fields.pop("main", "import json\nprint('hello')\njson.dump({'x': 1}, open('results.json', 'w'))\n")
    defaults = {
        "state": Iteration.State.JUDGED,
        "files": {"main.py": main, "requirements.txt": "numpy==2.1.0\n", "runscript.sh": "pip install -r requirements.txt\n"},
        "metadata": {"description": "An example.", "example_type": "demonstration"},
        "change_log": "First version." if number == 1 else f"Fix {number}.",
        "exit_code": 0,
        "duration_secs": 1.5,
        "stdout": "hello\n",
        "stderr": "",
        "results": {"x": 1},
        "log": ["started", "done"],
        "measured": {"exit_ok": True, "results_ok": True, "passed": True, "reasons": []},
        "judgement": {"faithful": True, "accurate": True, "complete": True, "issues": [], "critical_issues": [],
                      "explanation": "Fine.", "passed": True},
        "succeeded": True,
    }  # fmt: skip
    defaults.update(fields)
    iteration = Iteration.objects.create(run=run, number=number, **defaults)
    if run.iteration_count < number:
        type(run).objects.filter(pk=run.pk).update(iteration_count=number)
        run.iteration_count = number
    return iteration


def wheel(name: str, version: str, source: str) -> bytes:
    """A pure-Python wheel of one module, built here: pip installs it offline, with nothing to build."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record, buffer = [], io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return buffer.getvalue()
