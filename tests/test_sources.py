import os
import stat
from pathlib import Path

import git
import pytest

from distill.pipeline import sources
from distill.pipeline.sources import DEFAULT_ALLOWED_HOSTS, FetchLimits, SourceRefused, check_source, fetch
from tests.factories import make_git_repo


def check(source: str, **kwargs) -> str:
    kwargs.setdefault("allowed_hosts", DEFAULT_ALLOWED_HOSTS)
    kwargs.setdefault("allow_local", False)
    return check_source(source, **kwargs)


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc",
        "ssh://github.com/a/b",
        "git://github.com/a/b",
        "http://github.com/a/b",
        "http://127.0.0.1/",
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://2130706433/x",
        "https://0x7f000001/x",
        "https://127.1/x",
        "https://localhost/x",
        "https://intranet/a/b",
        "https://printer.local/a/b",
        "https://user:token@github.com/a/b",
        "https://token@github.com/a/b",
        "https://github.com.evil.example/a/b",
        "https://evil.github.com/a/b",
        "https://github.com:8443/a/b",
        "https://github.com:notaport/a/b",
        "git@github.com:a/b.git",
        "-u https://github.com/a/b",
        "--upload-pack=touch /tmp/x",
        "https://github.com/a/b c",
        "https://github.com/a/b\x00",
        "https://github.com/a/\nb",
        "https://example.org/a/b",
        "https://github.com/",
        "https://github.com/onlyowner",
        "https://github.com/a/..",
        "ext::sh -c touch% /tmp/pwned",
        "",
    ],
)
def test_it_refuses_unsafe_sources(source):
    with pytest.raises(SourceRefused) as excinfo:
        check(source)
    message = str(excinfo.value)
    assert message and "\n" not in message


def test_it_says_why_a_host_is_refused():
    with pytest.raises(SourceRefused, match="not on the list of allowed hosts"):
        check("https://example.org/a/b")
    with pytest.raises(SourceRefused, match="IP address"):
        check("https://2130706433/x")
    with pytest.raises(SourceRefused, match="credentials"):
        check("https://user:token@github.com/a/b")


@pytest.mark.parametrize(
    "source, expected",
    [
        ("https://github.com/a/b", "https://github.com/a/b"),
        ("https://github.com/a/b/", "https://github.com/a/b"),
        ("https://github.com/a/b.git", "https://github.com/a/b"),
        ("https://github.com/a/b/tree/main/x", "https://github.com/a/b"),
        ("https://GitHub.com/a/b?tab=readme#usage", "https://github.com/a/b"),
        ("https://github.com:443/a/b", "https://github.com/a/b"),
        ("  https://github.com/a/b\n", "https://github.com/a/b"),
        ("https://gitlab.com/group/sub/proj/-/tree/main", "https://gitlab.com/group/sub/proj"),
        ("https://codeberg.org/a/b/src/branch/main", "https://codeberg.org/a/b"),
        ("https://huggingface.co/datasets/a/b/tree/main", "https://huggingface.co/datasets/a/b"),
        ("https://huggingface.co/a/b/blob/main/x.py", "https://huggingface.co/a/b"),
    ],
)
def test_it_normalises_urls(source, expected):
    assert check(source) == expected


def test_it_honours_a_custom_allow_list():
    assert (
        check("https://git.example.org/a/b", allowed_hosts=["git.example.org"])
        == "https://git.example.org/a/b"
    )
    with pytest.raises(SourceRefused):
        check("https://github.com/a/b", allowed_hosts=["git.example.org"])


def test_it_refuses_local_paths_unless_allowed(tmp_path):
    with pytest.raises(SourceRefused, match="local folders are not accepted"):
        check(str(tmp_path))
    assert check(str(tmp_path), allow_local=True) == str(tmp_path.resolve())


def test_it_refuses_relative_or_missing_local_paths(tmp_path):
    with pytest.raises(SourceRefused):
        check("some/relative/path", allow_local=True)
    with pytest.raises(SourceRefused, match="not an existing folder"):
        check(str(tmp_path / "missing"), allow_local=True)


def test_fetch_refuses_a_url_before_any_network(tmp_path, monkeypatch):
    def no_clone(*args, **kwargs):
        raise AssertionError("git must not run for a refused URL")

    monkeypatch.setattr(sources, "_clone", no_clone)
    dest = tmp_path / "clone"
    with pytest.raises(SourceRefused):
        fetch(
            "https://user:token@github.com/a/b",
            dest,
            allowed_hosts=DEFAULT_ALLOWED_HOSTS,
            allow_local=False,
            limits=FetchLimits(),
        )
    assert not dest.exists()


def do_fetch(source, dest, **limits):
    return fetch(
        str(source), dest, allowed_hosts=DEFAULT_ALLOWED_HOSTS, allow_local=True, limits=FetchLimits(**limits)
    )


def test_it_clones_a_local_repository(tmp_path):
    src = make_git_repo(tmp_path / "src", {"main.py": "print('hi')\n", "pkg/mod.py": "x = 1\n"})
    head = git.Repo(src).head.commit.hexsha
    (src / "uncommitted.py").write_text("not committed\n")

    fetched = do_fetch(src, tmp_path / "clone")

    assert fetched.commit_sha == head
    assert fetched.title == "src"
    assert fetched.path == tmp_path / "clone"
    assert (fetched.path / "pkg/mod.py").read_text() == "x = 1\n"
    assert not (fetched.path / "uncommitted.py").exists()
    # Shallow and disconnected from the source: nothing hard-linked, hooks off in the clone's config.
    clone = git.Repo(fetched.path)
    assert clone.git.rev_parse("--is-shallow-repository") == "true"
    assert clone.config_reader().get_value("core", "hooksPath") == os.devnull
    src_objects = {p.stat().st_ino for p in (src / ".git/objects").rglob("*") if p.is_file()}
    clone_objects = {p.stat().st_ino for p in (fetched.path / ".git/objects").rglob("*") if p.is_file()}
    assert not src_objects & clone_objects


def test_it_runs_no_hooks_while_cloning(tmp_path, monkeypatch):
    # A hook in the git template folder would be copied into the clone and run at checkout: hooksPath
    # must disable it. The template is the one thing a source cannot set; the environment could.
    template = tmp_path / "template"
    (template / "hooks").mkdir(parents=True)
    marker = tmp_path / "hook-ran"
    hook = template / "hooks/post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
    src = make_git_repo(tmp_path / "src", {"a.py": "a = 1\n"})
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
    fetched = do_fetch(src, tmp_path / "clone")
    assert (fetched.path / ".git/hooks/post-checkout").exists()  # the template did apply
    assert not marker.exists()


def test_it_refuses_a_repository_over_the_size_limit(tmp_path):
    src = make_git_repo(tmp_path / "src", {"big.bin": os.urandom(200_000)})
    dest = tmp_path / "clone"
    with pytest.raises(SourceRefused, match="larger than"):
        do_fetch(src, dest, max_repo_bytes=100_000)
    assert not dest.exists()


def test_it_refuses_a_repository_over_the_file_limit(tmp_path):
    src = make_git_repo(tmp_path / "src", {f"f{i}.py": f"x = {i}\n" for i in range(12)})
    dest = tmp_path / "clone"
    with pytest.raises(SourceRefused, match="more than 10 files"):
        do_fetch(src, dest, max_files=10)
    assert not dest.exists()


def test_it_refuses_a_clone_that_takes_too_long(tmp_path):
    src = make_git_repo(
        tmp_path / "src", {f"d{i}/f{j}.bin": os.urandom(4000) for i in range(20) for j in range(20)}
    )
    dest = tmp_path / "clone"
    with pytest.raises(SourceRefused, match="within 0.001 seconds"):
        do_fetch(src, dest, clone_timeout_secs=0.001)
    assert not dest.exists()


def test_it_refuses_a_broken_repository(tmp_path):
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    dest = tmp_path / "clone"
    with pytest.raises(SourceRefused, match="could not be cloned"):
        do_fetch(src, dest)
    assert not dest.exists()


def test_it_refuses_a_repository_without_commits(tmp_path):
    src = tmp_path / "src"
    git.Repo.init(src)
    dest = tmp_path / "clone"
    with pytest.raises(SourceRefused):
        do_fetch(src, dest)
    assert not dest.exists()


def test_it_copies_a_plain_folder_without_following_symlinks(tmp_path):
    src = tmp_path / "plain"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg/a.py").write_text("a = 1\n")
    (src / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(src / "pipe")

    fetched = do_fetch(src, tmp_path / "copy")

    assert fetched.commit_sha == ""
    assert fetched.title == "plain"
    assert (fetched.path / "pkg/a.py").read_text() == "a = 1\n"
    assert (fetched.path / "passwd").is_symlink()
    assert not (fetched.path / "pipe").exists()


def test_it_refuses_a_plain_folder_over_the_limits_without_copying(tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.py").write_text("x\n")
    dest = tmp_path / "copy"
    with pytest.raises(SourceRefused, match="more than 3 files"):
        do_fetch(src, dest, max_files=3)
    assert not dest.exists()


def test_it_refuses_a_destination_that_is_not_empty(tmp_path):
    src = make_git_repo(tmp_path / "src", {"a.py": "a = 1\n"})
    dest = tmp_path / "clone"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        do_fetch(src, dest)
    assert (dest / "keep.txt").read_text() == "mine"


def test_make_git_repo_makes_one_commit(tmp_path):
    path = make_git_repo(tmp_path / "r", {"a/b.txt": "text", "c.bin": b"\x00\x01"})
    repo = git.Repo(path)
    assert isinstance(path, Path)
    assert len(list(repo.iter_commits())) == 1
    assert sorted(item.path for item in repo.head.commit.tree.traverse()) == ["a", "a/b.txt", "c.bin"]


def test_an_unreachable_host_is_told_apart_from_a_refused_source(tmp_path):
    from distill.pipeline.sources import SourceUnreachable, host_reachable

    # A real clone from a name that never resolves (RFC 2606), as from an offline machine.
    url = "https://forge.invalid/a/b"
    with pytest.raises(SourceUnreachable, match="the host could not be reached"):
        fetch(
            url, tmp_path / "clone", allowed_hosts=["forge.invalid"], allow_local=False, limits=FetchLimits()
        )
    assert not (tmp_path / "clone").exists()
    assert not host_reachable(url) and host_reachable(str(tmp_path))


@pytest.mark.parametrize(
    "stderr, reason",
    [
        (
            "remote: Repository not found.\nfatal: repository 'https://x:ghp_secret@github.com/a/b/' not found",
            "not found or private",
        ),
        (
            "fatal: could not read Username for 'https://github.com': terminal prompts disabled",
            "not found or private",
        ),
        (
            "fatal: unable to access 'https://github.com/a/b/': Could not resolve host: github.com",
            "could not be reached",
        ),
        (
            "fatal: unable to access 'https://github.com/a/b/': The requested URL returned error: 301",
            "has moved",
        ),
        ("fatal: early EOF ghp_secret", "could not be cloned"),
    ],
)
def test_git_failures_become_one_line_reasons_without_secrets(tmp_path, monkeypatch, stderr, reason):
    def failing_clone(self, *args, **kwargs):
        (tmp_path / "clone").mkdir()  # a half-made clone
        raise git.GitCommandError(["git", "clone"], 128, stderr=stderr)

    monkeypatch.setattr(git.Git, "clone", failing_clone, raising=False)
    with pytest.raises(SourceRefused) as excinfo:
        fetch(
            "https://github.com/a/b",
            tmp_path / "clone",
            allowed_hosts=DEFAULT_ALLOWED_HOSTS,
            allow_local=False,
            limits=FetchLimits(),
        )
    message = str(excinfo.value)
    assert reason in message
    assert "secret" not in message and "\n" not in message
    assert excinfo.value.__cause__ is None
    assert not (tmp_path / "clone").exists()


def test_it_clones_urls_with_safe_options(tmp_path, monkeypatch):
    calls = []

    def fake_clone(self, *args, **kwargs):
        calls.append((args, kwargs))
        raise git.GitCommandError(["git", "clone"], 128, stderr="not found")

    monkeypatch.setattr(git.Git, "clone", fake_clone, raising=False)
    with pytest.raises(SourceRefused):
        fetch(
            "https://github.com/a/b.git",
            tmp_path / "c",
            allowed_hosts=DEFAULT_ALLOWED_HOSTS,
            allow_local=False,
            limits=FetchLimits(clone_timeout_secs=7),
        )
    ((args, kwargs),) = calls
    assert args[-3:] == ("--", "https://github.com/a/b", str(tmp_path / "c"))
    assert {"--depth=1", "--single-branch", "--no-tags", "--no-recurse-submodules"} <= set(args)
    assert kwargs["kill_after_timeout"] == 7
    env = kwargs["env"]
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_LFS_SKIP_SMUDGE"] == "1"
    config = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert config["protocol.file.allow"] == "never"
    assert config["http.followRedirects"] == "false"
    assert config["core.hooksPath"] == os.devnull


def test_it_refuses_a_source_longer_than_a_run_can_hold():
    from distill.models import Run
    from distill.pipeline.sources import MAX_SOURCE_CHARS

    assert Run._meta.get_field("source_url").max_length == MAX_SOURCE_CHARS
    long_url = "https://github.com/owner/name/tree/main/" + "a/" * 2500

    with pytest.raises(
        SourceRefused, match=r"^the source is 5040 characters long; at most 2000 are accepted$"
    ):
        check(long_url)


def test_it_refuses_a_path_part_longer_than_the_forge_allows():
    check("https://github.com/owner/" + "n" * 100)

    with pytest.raises(
        SourceRefused, match=r"^the URL's part n{20}\.\.\. is 101 characters long; github.com allows 100$"
    ):
        check("https://github.com/owner/" + "n" * 101)
    with pytest.raises(SourceRefused, match="gitlab.com allows 255"):
        check("https://gitlab.com/group/" + "n" * 256)
