"""Check a submitted source and fetch it into a working tree.

A source is either an ``https://`` URL on an allow-listed forge, or (only when local sources are allowed,
for tests and offline use) an absolute path to a folder on this machine.

Decisions worth knowing:

- URLs are checked before anything touches the network: https only, the host must equal an allow-listed
  host (subdomains do not count), no credentials, no IP literals or local names, no port but 443.
- Redirects are not followed (``http.followRedirects=false``): a redirect could lead off the allow-list,
  and git gives us no hook to check where it went. A renamed GitHub repository therefore fails with a
  message that asks for its current URL.
- Clones are shallow, single-branch, without tags, submodules or LFS objects, with hooks disabled, no
  credential helpers and no terminal prompt (a private repository fails instead of waiting for a
  password), and the user's and system's git configuration is ignored so a ``url.insteadOf`` or a
  template cannot change what we fetch.
- ``Repo.clone_from`` ignores ``kill_after_timeout`` in GitPython 3.2.1 (it runs git ``as_process``), so
  we call ``Git().clone`` with a list of arguments and ``kill_after_timeout``: still no shell.
- Size and file count are measured after the clone (git cannot stop a clone at a size); the timeout is
  what bounds a clone in flight. A refused or failed fetch leaves nothing behind at ``dest``.
- A local git repository is cloned through ``file://`` (so nothing is hard-linked to the source) with the
  same options; uncommitted changes in it are not fetched. A local folder that is not a git repository
  is copied (symlinks copied as symlinks, never followed) after checking the limits on the source, and
  its ``commit_sha`` is ``""``: it has no commit.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import stat
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import git

logger = logging.getLogger(__name__)

DEFAULT_ALLOWED_HOSTS = ["github.com", "gitlab.com", "bitbucket.org", "codeberg.org", "huggingface.co"]

# Names that resolve to this machine or a private network, whatever the allow-list says.
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".lan", ".home.arpa")

# Forges whose repositories are always "owner/name": anything after that names a branch, file or page.
TWO_SEGMENT_HOSTS = {"github.com", "bitbucket.org", "codeberg.org"}
HF_PREFIXES = {"datasets", "spaces", "models"}

SEGMENT_RE = re.compile(r"[A-Za-z0-9_.~-]+")
MAX_SOURCE_CHARS = 2000  # what Run.source_url holds (Postgres refuses more, SQLite would store it)
# The longest part of a repository's path each forge allows (GitHub: repository names of 100 characters);
# a longer one names no repository there.
MAX_SEGMENT_CHARS = {"github.com": 100}
DEFAULT_MAX_SEGMENT_CHARS = 255


class SourceRefused(Exception):
    """The source cannot be used; the message is one line meant for the curator."""


class SourceUnreachable(SourceRefused):
    """The source's host could not be reached: the network's fault, not the source's (a retry may work)."""


@dataclass
class FetchLimits:
    clone_timeout_secs: float = 300
    max_repo_bytes: int = 500 * 1024 * 1024
    max_files: int = 100_000


@dataclass
class Fetched:
    path: Path
    commit_sha: str
    title: str


def check_source(source: str, *, allowed_hosts: list[str], allow_local: bool) -> str:
    """Return the normalised source, or raise SourceRefused saying why it is refused."""
    if not isinstance(source, str):
        raise SourceRefused("the source must be text")
    # Forms strip surrounding whitespace too; whitespace inside is refused below.
    source = source.strip()
    if not source:
        raise SourceRefused("the source is empty")
    if len(source) > MAX_SOURCE_CHARS:
        raise SourceRefused(
            f"the source is {len(source)} characters long; at most {MAX_SOURCE_CHARS} are accepted"
        )
    if any(unicodedata.category(ch)[0] in "CZ" for ch in source):
        raise SourceRefused("the source contains spaces or control characters")
    if source.startswith("-"):
        raise SourceRefused("the source must not start with '-'")
    if source.startswith("/"):
        return _check_local(source, allow_local=allow_local)
    if "://" not in source:
        if re.match(r"^[\w.-]+@[\w.-]+:", source):
            raise SourceRefused("SSH addresses (user@host:path) are not accepted; use the https:// URL")
        raise SourceRefused(
            "only https:// URLs are accepted" + ("" if not allow_local else " (or an absolute path)")
        )
    return _check_url(source, allowed_hosts=allowed_hosts)


def _check_local(source: str, *, allow_local: bool) -> str:
    if not allow_local:
        raise SourceRefused("local folders are not accepted here; give an https:// URL")
    path = Path(source)
    if any(part == ".." for part in path.parts):
        raise SourceRefused("the local path must not contain '..'")
    if not path.is_dir():
        raise SourceRefused("the local path is not an existing folder")
    return str(path.resolve())


def _check_url(source: str, *, allowed_hosts: list[str]) -> str:
    try:
        parts = urlsplit(source)
        port = parts.port
    except ValueError:
        raise SourceRefused("the URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme != "https":
        raise SourceRefused(f"only https:// URLs are accepted, not {scheme}://")
    if "@" in parts.netloc:
        raise SourceRefused("URLs with credentials (user@ or user:token@) are not accepted")
    if port not in (None, 443):
        raise SourceRefused("URLs with a port other than 443 are not accepted")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise SourceRefused("the URL has no host")
    if _is_ip_literal(host, parts.netloc):
        raise SourceRefused("URLs with an IP address are not accepted; use the forge's name")
    if host == "localhost" or "." not in host or host.endswith(LOCAL_SUFFIXES):
        raise SourceRefused(f"{host} is a local name, not a public forge")
    allowed = {h.strip().rstrip(".").lower() for h in allowed_hosts if h.strip()}
    if host not in allowed:
        raise SourceRefused(f"{host} is not on the list of allowed hosts ({', '.join(sorted(allowed))})")

    segments = [s for s in parts.path.split("/") if s]
    if host == "gitlab.com" and "-" in segments:
        segments = segments[: segments.index("-")]
    elif host == "huggingface.co":
        segments = segments[:3] if segments and segments[0] in HF_PREFIXES else segments[:2]
    elif host in TWO_SEGMENT_HOSTS:
        segments = segments[:2]
    if segments:
        segments[-1] = segments[-1].removesuffix(".git")
    if len(segments) < 2 or not all(SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments):
        raise SourceRefused(f"the URL must name a repository, like https://{host}/owner/name")
    longest = MAX_SEGMENT_CHARS.get(host, DEFAULT_MAX_SEGMENT_CHARS)
    if too_long := next((s for s in segments if len(s) > longest), None):
        raise SourceRefused(
            f"the URL's part {too_long[:20]}... is {len(too_long)} characters long; {host} allows {longest}"
        )
    return f"https://{host}/{'/'.join(segments)}"


def _is_ip_literal(host: str, netloc: str) -> bool:
    if "[" in netloc:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    # Resolvers accept 2130706433, 0x7f000001, 0177.0.0.1 and 127.1 as addresses too: a host whose last
    # label is not a name is treated as an address.
    last = host.rsplit(".", 1)[-1]
    return bool(re.fullmatch(r"[0-9]+|0x[0-9a-f]*", last))


def fetch(
    source: str, dest: Path, *, allowed_hosts: list[str], allow_local: bool, limits: FetchLimits
) -> Fetched:
    """Fetch the source into ``dest`` (which must not exist, or be empty) and check the limits."""
    normalised = check_source(source, allowed_hosts=allowed_hosts, allow_local=allow_local)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    try:
        if normalised.startswith("https://"):
            sha = _clone(normalised, dest, limits=limits, local=False)
            title = normalised.removeprefix("https://").split("/", 1)[1]
        else:
            local = Path(normalised)
            title = local.name
            if _is_git_repository(local):
                sha = _clone(local.as_uri(), dest, limits=limits, local=True)
            else:
                _copy_folder(local, dest, limits=limits)
                sha = ""
        _measure(dest, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return Fetched(path=dest, commit_sha=sha, title=title)


def _git_env(*, local: bool) -> dict[str, str]:
    config = {
        "protocol.file.allow": "always" if local else "never",
        "protocol.ext.allow": "never",
        "http.followRedirects": "false",
        "credential.helper": "",
        "core.hooksPath": os.devnull,
        "core.symlinks": "true",
    }
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_LFS_SKIP_SMUDGE": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for i, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _clone(url: str, dest: Path, *, limits: FetchLimits, local: bool) -> str:
    try:
        git.Git().clone(
            "--depth=1",
            "--single-branch",
            "--no-tags",
            "--no-recurse-submodules",
            # Stored in the clone, so later git commands in it run no hooks either.
            "--config=core.hooksPath=" + os.devnull,
            "--",
            url,
            str(dest),
            env=_git_env(local=local),
            kill_after_timeout=limits.clone_timeout_secs,
        )
        return git.Repo(dest).head.commit.hexsha
    except git.GitCommandError as exc:
        stderr = _redact(str(exc.stderr or ""))
        logger.warning("git clone of %s failed (status %s): %s", _redact(url), exc.status, stderr)
        reason = _clone_failure_reason(stderr, limits)
        raise (SourceUnreachable if reason == UNREACHABLE else SourceRefused)(reason) from None
    except (ValueError, git.BadName, git.InvalidGitRepositoryError):
        raise SourceRefused("the repository has no commits") from None


def checkout_commit(dest: Path, commit_sha: str, *, local: bool, limits: FetchLimits) -> None:
    """Turn a fresh shallow clone (`fetch`) to an older commit of its repository, fetched alone.

    A library check runs the commit an example was made from, and the repository has usually moved on
    since. SourceRefused when the commit is no longer there (a force-push, a deleted branch)."""
    if not re.fullmatch(r"[0-9a-f]{7,64}", commit_sha):
        raise SourceRefused(f"{commit_sha!r} is not a commit id")
    repo = git.Repo(dest)
    if repo.head.commit.hexsha == commit_sha:
        return
    try:
        repo.git.fetch(
            "--depth=1", "--no-tags", "--no-recurse-submodules", "origin", commit_sha,
            env=_git_env(local=local), kill_after_timeout=limits.clone_timeout_secs,
        )  # fmt: skip
        repo.git.checkout("--detach", commit_sha, env=_git_env(local=local))
    except git.GitCommandError as exc:
        stderr = _redact(str(exc.stderr or ""))
        logger.warning("git fetch of commit %s failed (status %s): %s", commit_sha, exc.status, stderr)
        reason = _clone_failure_reason(stderr, limits)
        if reason == UNREACHABLE:
            raise SourceUnreachable(reason) from None
        raise SourceRefused(f"commit {commit_sha[:12]} is no longer in the repository") from None
    finally:
        repo.close()


def _clone_failure_reason(stderr: str, limits: FetchLimits) -> str:
    text = stderr.lower()
    if "timeout:" in text and "did not complete" in text:
        return f"the repository could not be cloned within {limits.clone_timeout_secs:g} seconds"
    if "could not resolve host" in text or "failed to connect" in text or "couldn't connect" in text:
        return UNREACHABLE
    if "redirect" in text or "301" in text or "302" in text:
        return "the repository could not be cloned: it has moved; give its current URL"
    if (
        "not found" in text
        or "could not read username" in text
        or "authentication" in text
        or "terminal prompts disabled" in text
        or "does not appear to be a git repository" in text
        or "403" in text
    ):
        return "the repository could not be cloned: not found or private"
    return "the repository could not be cloned"


UNREACHABLE = "the repository could not be cloned: the host could not be reached"


def host_reachable(url: str, *, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within the timeout (a local path: always)."""
    host = urlsplit(url).hostname if url.startswith("https://") else None
    if host is None:
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _redact(text: str) -> str:
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def _is_git_repository(path: Path) -> bool:
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _measure(root: Path, limits: FetchLimits, *, deadline: float | None = None) -> None:
    """Raise SourceRefused as soon as the tree under root passes a limit; never follows symlinks."""
    total_bytes = 0
    files = 0
    stack = [str(root)]
    while stack:
        if deadline is not None and time.monotonic() > deadline:
            raise SourceRefused(
                f"the folder could not be copied within {limits.clone_timeout_secs:g} seconds"
            )
        top = stack.pop()
        with os.scandir(top) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    continue
                total_bytes += st.st_size
                # .git holds a few dozen bookkeeping files: only the working tree counts towards max_files.
                if not entry.path.startswith(os.path.join(str(root), ".git") + os.sep):
                    files += 1
                if total_bytes > limits.max_repo_bytes:
                    raise SourceRefused(f"the repository is larger than {_mib(limits.max_repo_bytes)}")
                if files > limits.max_files:
                    raise SourceRefused(f"the repository has more than {limits.max_files} files")


def _copy_folder(source: Path, dest: Path, *, limits: FetchLimits) -> None:
    if dest.resolve().is_relative_to(source):
        raise SourceRefused("the destination lies inside the source folder")
    deadline = time.monotonic() + limits.clone_timeout_secs
    try:
        _measure(source, limits, deadline=deadline)
    except OSError:
        raise SourceRefused("the folder could not be read") from None

    def ignore(folder: str, names: list[str]) -> list[str]:
        if time.monotonic() > deadline:
            raise SourceRefused(
                f"the folder could not be copied within {limits.clone_timeout_secs:g} seconds"
            )
        # Fifos, sockets and devices would block or make no sense in a working tree.
        return [
            n
            for n in names
            if not (
                stat.S_ISREG(m := os.lstat(os.path.join(folder, n)).st_mode)
                or stat.S_ISDIR(m)
                or stat.S_ISLNK(m)
            )
        ]

    try:
        shutil.copytree(source, dest, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    except shutil.Error as exc:
        logger.warning("copying %s failed: %s", source, exc)
        raise SourceRefused("the folder could not be copied (unreadable files)") from None


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"
