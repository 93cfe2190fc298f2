"""Small factory functions for test data."""

from __future__ import annotations

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
