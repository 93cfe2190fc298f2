"""The environment step (distill/pipeline/environment.py): real git repositories made here, the real
bubblewrap sandbox, real pip; the code model's changes replayed from a cassette."""

import functools
import http.server
import json
import subprocess
import sys
import threading
import types

import pytest

from distill import services
from distill.models import LLMCall, Run
from distill.pipeline import dependencies, environment, program, repository
from distill.profiles import load_profile
from tests.factories import make_git_repo, make_run
from tests.replies import cassette

SETUP = "from setuptools import setup\nsetup(name='s15minilib', version='1.2.0', packages=['s15minilib'])\n"
MINILIB = {
    "README.md": "# s15minilib\n",
    "s15minilib/__init__.py": "def mean_squared(xs):\n    return sum(x * x for x in xs) / len(xs)\n",
    "setup.py": SETUP,
}


@pytest.fixture(autouse=True)
def local_sources(settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True


def fetched_run(tmp_path, files, *, entries=(), **overrides) -> Run:
    repo = make_git_repo(tmp_path / "minilib-src", files)
    overrides.setdefault("max_environment_repairs", 0)
    if entries:
        overrides["replay"] = str(cassette(tmp_path / "cassette.json", list(entries)))
    profile = load_profile("local", overrides)
    run = services.run_submit(source=str(repo), profile_name="local", profile=profile, enqueue=False)
    repository.read_source(run)
    return run


def prepare(run: Run) -> tuple[bool, str]:
    return environment.prepare(run, repository.clone_dir(run), should_cancel=lambda: False)


# The same package built by a backend of its own (PEP 517, in the tree): it builds offline, with nothing to
# download and without the `wheel` package (which Python 3.11's venv lacks), in the sandbox and out of it.
BACKEND = 'import base64, hashlib, pathlib, zipfile\n\nNAME, VERSION = "s15minilib", "1.2.0"\n\n\ndef build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n    filename, info = f"{NAME}-{VERSION}-py3-none-any.whl", f"{NAME}-{VERSION}.dist-info"\n    files = {\n        f"{NAME}/__init__.py": pathlib.Path(NAME, "__init__.py").read_bytes(),\n        f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode(),\n        f"{info}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",\n    }\n    record = []\n    with zipfile.ZipFile(pathlib.Path(wheel_directory, filename), "w") as wheel:\n        for name, data in files.items():\n            wheel.writestr(name, data)\n            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()\n            record.append(f"{name},sha256={digest},{len(data)}")\n        wheel.writestr(f"{info}/RECORD", "\\n".join([*record, f"{info}/RECORD,,"]) + "\\n")\n    return filename\n'
OFFLINE_MINILIB = {
    "README.md": "# s15minilib\n",
    "s15minilib/__init__.py": MINILIB["s15minilib/__init__.py"],
    "backend.py": BACKEND,
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n'
    '[project]\nname = "s15minilib"\nversion = "1.2.0"\n',
}


# Requirement lines, checked with packaging ------------------------------------------------------------


def test_it_cleans_the_wrappings_models_put_around_requirement_lines():
    text = "```text\n- `kneed==0.8.5`\n* numpy>=1.2  # arrays\n1. scipy\npip install matplotlib pandas\n```\n"
    requirements, problems = dependencies.clean_requirements(text)
    assert requirements == ["kneed==0.8.5", "numpy>=1.2", "scipy", "matplotlib", "pandas"]
    assert problems == []


def test_it_names_each_line_that_cannot_be_a_requirement_and_keeps_the_others():
    requirements, problems = dependencies.clean_requirements(
        "numpy\n-r other.txt\nthe repository itself\n<one pip requirement a line>\n"
    )
    assert requirements == ["numpy"]
    assert problems == [
        "'-r other.txt' is a pip option, not a requirement; it was left out",
        "'the repository itself' is not a requirement pip can read; it was left out",
        "'<one pip requirement a line>' is not a requirement pip can read; it was left out",
    ]


def test_declared_dependencies_leave_out_urls_extras_and_prose(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\ndependencies = ["numpy>=1.20", "tool @ https://example.org/t.zip", '
        '"plotting ; extra == \\"plot\\"", "see the README"]\n'
    )
    assert dependencies.declared_dependencies(tmp_path) == ["numpy>=1.20"]
    assert dependencies.distribution_name(tmp_path) == "demo"
    assert dependencies.is_installable(tmp_path)


def test_a_setup_py_is_read_without_running_it(tmp_path):
    (tmp_path / "setup.py").write_text("import os\nos.system('touch ran')\n" + SETUP)
    assert dependencies.distribution_name(tmp_path) == "s15minilib"
    assert not (tmp_path / "ran").exists()


# The step, in the real sandbox ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_fix_prompt_shows_the_program_as_the_model_wrote_it_not_the_derived_lock_and_runscript():
    state = {
        "key": "a" * 24, "mode": "package", "root": "/repo", "lock": ["numpy==2.1.0"], "done": True,
        "status": "ready", "repository": {"requirement": "kneed==0.8.5"},
    }  # fmt: skip
    run = make_run(environment=state)
    derived = environment.program_files(state, "import kneed\n", ["matplotlib"])

    shown = program.written_files(run, derived)

    assert shown == {"main.py": "import kneed\n", "requirements.txt": "matplotlib\n"}
    assert program.written_files(make_run(), derived) == derived, "without a prepared environment, all of it"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_installs_the_repository_proves_it_and_reuses_it_for_the_same_commit(tmp_path):
    run = fetched_run(tmp_path, MINILIB)
    done, message = prepare(run)

    run.refresh_from_db()
    state = run.environment
    assert done and state["status"] == environment.READY, state["reason"]
    assert message.startswith("Environment ready without a model"), message
    assert state["installed"] == {"name": "s15minilib", "version": "1.2.0"}
    assert state["mode"] == "package"
    assert state["imports"][0]["name"] == "s15minilib" and state["imports"][0]["ok"]
    assert not any("s15minilib" in line for line in state["lock"]), "the repository is named, not pinned"
    assert "Successfully installed" in state["install_log"]
    assert not state["model"] and not LLMCall.objects.filter(run=run).exists()
    # Unreachable index: the version from the metadata cannot be checked, so the commit names it.
    assert state["repository"]["published"] is None
    assert state["repository"]["requirement"] == (
        f"s15minilib @ git+file://localhost{(tmp_path / 'minilib-src').resolve()}@{run.commit_sha}"
    )

    again = fetched_run(tmp_path / "second", MINILIB)
    assert again.commit_sha == run.commit_sha
    prepare(again)
    again.refresh_from_db()
    assert again.environment["status"] == environment.READY
    assert again.environment["reused"] and again.environment["install_secs"] == 0
    assert again.environment["install_log"] == state["install_log"], "the cached log is shown again"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_repository_without_build_metadata_is_put_on_the_path(tmp_path):
    run = fetched_run(tmp_path, {"src/s15flat/__init__.py": "VALUE = 3\n", "README.md": "# flat\n"})
    prepare(run)
    run.refresh_from_db()
    state = run.environment
    assert state["status"] == environment.READY, state["reason"]
    assert state["mode"] == "path" and state["root"] == "/repo/src" and state["installed"] is None
    assert "clone goes on the path" in (run.output_dir / "environment" / "runscript.sh").read_text()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_package_that_fails_to_import_makes_it_partial_and_names_why(tmp_path):
    files = {
        **MINILIB,
        "s15broken/__init__.py": "import s15_not_installed_anywhere\n",
        "setup.py": SETUP.replace("['s15minilib']", "['s15minilib', 's15broken']"),
    }
    run = fetched_run(tmp_path, files)
    done, message = prepare(run)
    assert not done and message.endswith("trying again."), "an undeclared module is tried by its name"
    done, message = prepare(run)
    state = run.environment
    assert done and state["status"] == environment.PARTIAL, "the better attempt is kept"
    assert [a["extras"] for a in state["attempts"]] == [[], ["s15_not_installed_anywhere"]]
    assert (
        "import s15broken: ModuleNotFoundError: No module named 's15_not_installed_anywhere'"
        in state["reason"]
    )
    assert "failed: s15broken" in message
    facts = environment.prompt_facts(state, [])
    assert "These imports work: s15minilib." in facts and "do not use them: s15broken" in facts


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_dependency_that_does_not_exist_ends_the_step_with_one_line(tmp_path):
    setup = SETUP.replace("packages=", "install_requires=['s15-no-such-distribution==9.9'], packages=")
    run = fetched_run(tmp_path, {**MINILIB, "setup.py": setup})
    with pytest.raises(environment.EnvironmentFailed) as failed:
        prepare(run)
    assert "\n" not in str(failed.value)
    assert str(failed.value).startswith("the environment could not be prepared: install failed: exit code 1")
    run.refresh_from_db()
    assert run.environment["status"] == environment.FAILED and run.environment["done"]
    assert "s15-no-such-distribution" in run.environment["install_log"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_setup_py_that_hangs_ends_the_step_within_the_time_limit_and_changes_nothing_on_the_host(tmp_path):
    canary = tmp_path / "canary.txt"
    setup = f"import pathlib, time\ntry:\n    pathlib.Path({str(canary)!r}).write_text('x')\nexcept OSError:\n    pass\ntime.sleep(600)\n"
    run = fetched_run(tmp_path, {**MINILIB, "setup.py": setup + SETUP}, environment_install_mins=0.5)
    with pytest.raises(environment.EnvironmentFailed) as failed:
        prepare(run)
    assert str(failed.value) == "the environment could not be prepared: install timed out after 30 s"
    assert not canary.exists(), "setup.py ran only inside the sandbox"
    assert run.environment["install_secs"] < 60


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_model_is_asked_only_when_the_deterministic_install_fails_and_its_change_is_tried(tmp_path):
    # A pin that no version satisfies; the model's reply replaces it.
    setup = SETUP.replace("packages=", "install_requires=['packaging==0.0.1'], packages=")
    reply = json.dumps(
        {"requirements": ["- `packaging>=20`", "not a requirement at all"], "reason": "no 0.0.1"}
    )
    run = fetched_run(
        tmp_path, {**MINILIB, "setup.py": setup}, entries=[("environment", reply)], max_environment_repairs=1
    )
    done, message = prepare(run)
    assert not done and message.startswith("Attempt 1: environment failed"), message

    done, message = prepare(run)
    run.refresh_from_db()
    state = run.environment
    assert done and state["status"] == environment.READY, state["reason"]
    assert message.startswith("Environment ready with the model's changes (attempt 2)"), message
    assert state["extras"] == ["packaging>=20"]
    assert state["problems"] == [
        "'not a requirement at all' is not a requirement pip can read; it was left out"
    ]
    assert [a["status"] for a in state["attempts"]] == [environment.FAILED, environment.READY]
    assert list(LLMCall.objects.filter(run=run).values_list("stage", flat=True)) == ["environment"]
    assert any(line.startswith("packaging==") for line in state["lock"])


# A program's files, and outside the sandbox -----------------------------------------------------------


def test_a_program_without_extras_reuses_the_prepared_environment_and_with_extras_gets_its_own():
    state = {
        "key": "a" * 24,
        "mode": "package",
        "root": "/repo",
        "lock": ["numpy==2.1.0", "scipy==1.14.1"],
        "repository": {"requirement": "kneed==0.8.5"},
    }
    plain = environment.program_files(state, "print(1)\n", [])
    assert environment.program_env_key(state, environment.program_extras(plain)) == state["key"]
    assert plain["requirements.txt"] == (
        "# The repository itself\nkneed==0.8.5\n# The prepared environment (pip freeze)\nnumpy==2.1.0\nscipy==1.14.1\n"
    )
    assert "grep -vxF -e kneed==0.8.5 requirements.txt" in plain["runscript.sh"], (
        "inside, built from the clone"
    )
    assert "pip install --no-deps --use-pep517 /tmp/source" in plain["runscript.sh"]

    extra = environment.program_files(state, "print(1)\n", ["numpy<2", "matplotlib"])
    assert environment.program_extras(extra) == ["numpy<2", "matplotlib"]
    assert "numpy==2.1.0" not in extra["requirements.txt"], "the program's pin replaces the lock's"
    assert environment.program_env_key(state, ["numpy<2", "matplotlib"]) not in (None, state["key"])

    # An extra of the repository itself (a library's advice: `pip install kneed[plot]`) is built from
    # the clone with its dependencies, never installed from the index.
    state["installed"] = {"name": "kneed"}
    own = environment.program_files(state, "print(1)\n", ["kneed[plot]"])
    assert environment.program_extras(own) == ["kneed[plot]"]
    assert environment.program_env_key(state, ["kneed[plot]"]) not in (None, state["key"])
    assert "grep -vxF -e kneed==0.8.5 -e 'kneed[plot]' requirements.txt" in own["runscript.sh"]
    assert "pip install --use-pep517 '/tmp/source[plot]'" in own["runscript.sh"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_program_runs_outside_the_sandbox_with_its_own_files_offline(tmp_path):
    run = fetched_run(tmp_path, OFFLINE_MINILIB)
    prepare(run)
    run.refresh_from_db()
    main = "from s15minilib import mean_squared\nprint(mean_squared([1.0, 2.0, 3.0]))\n"
    files = environment.program_files(run.environment, main, [])
    assert "/repo" not in files["requirements.txt"] and "/repo" not in files["main.py"]

    outside = tmp_path / "outside"
    outside.mkdir()
    for name, text in files.items():
        (outside / name).write_text(text)
    subprocess.run([sys.executable, "-m", "venv", str(outside / ".venv")], check=True)
    # Offline: no index; the repository comes from its git commit, built by its own backend.
    env = {
        "PATH": f"{outside / '.venv/bin'}:/usr/bin:/bin",
        "PIP_NO_INDEX": "1",
    }
    subprocess.run(["bash", "runscript.sh"], cwd=outside, check=True, env=env)
    done = subprocess.run(
        [str(outside / ".venv/bin/python"), "main.py"], cwd=outside, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(14 / 3)


@pytest.fixture
def package_index(tmp_path, settings):
    """A package index answering PyPI's JSON API for one project, s15minilib, published at 1.2.0."""
    folder = tmp_path / "index"
    (folder / "s15minilib").mkdir(parents=True)
    (folder / "s15minilib" / "json").write_text(json.dumps({"releases": {"1.2.0": [{}], "1.1.0": []}}))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.DISTILL_PYPI_URL = f"http://127.0.0.1:{server.server_port}/"
    yield
    server.shutdown()


@pytest.mark.parametrize(
    ("source", "version", "expected", "published"),
    [
        ("https://github.com/example/s15minilib", "1.2.0", "s15minilib==1.2.0", True),
        # A version whose files were all deleted cannot be installed from the index.
        (
            "https://github.com/example/s15minilib",
            "1.1.0",
            "s15minilib @ git+https://github.com/example/s15minilib@abc",
            False,
        ),
        (
            "https://github.com/example/s15minilib",
            "9.0",
            "s15minilib @ git+https://github.com/example/s15minilib@abc",
            False,
        ),
    ],
)
def test_the_repository_is_named_by_its_published_version_else_by_its_commit(
    package_index, tmp_path, source, version, expected, published
):
    run = types.SimpleNamespace(source_url=source, commit_sha="abc")
    state = {"installed": {"name": "s15minilib", "version": version}}
    named = environment._published(run, tmp_path, state)
    assert named == {
        "name": "s15minilib",
        "version": version,
        "published": published,
        "requirement": expected,
    }


def test_an_unreachable_index_leaves_the_published_version_unchecked(settings, tmp_path):
    settings.DISTILL_PYPI_URL = "http://127.0.0.1:9/pypi"  # nothing listens on the discard port
    run = types.SimpleNamespace(source_url="https://github.com/example/s15minilib", commit_sha="abc")
    named = environment._published(run, tmp_path, {"installed": {"name": "s15minilib", "version": "1.2.0"}})
    assert named["published"] is None and named["requirement"] == "s15minilib==1.2.0"


def test_a_missing_module_is_repaired_by_rule_before_any_model(tmp_path):
    # pwlf 2.2.1 declares pyDOE>=0.3.8; pyDOE 1.6 renamed its module to pydoe: its lowest version works.
    (tmp_path / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='pwlf', packages=['pwlf'], install_requires=['numpy', 'pyDOE>=0.3.8'])\n"
    )
    (tmp_path / "pwlf").mkdir()
    (tmp_path / "pwlf" / "__init__.py").write_text("")
    failed = [
        {"name": "pwlf", "ok": False, "error": "ModuleNotFoundError: No module named 'pyDOE'"},
        {"name": "helpers", "ok": False, "error": "ModuleNotFoundError: No module named 'yaml'"},
        {"name": "other", "ok": False, "error": "ModuleNotFoundError: No module named 'pwlf.missing'"},
    ]
    state = {"status": environment.PARTIAL, "imports": failed}
    assert environment.deterministic_repair(state, tmp_path) == ["pyDOE==0.3.8", "pyyaml"]
    assert environment.deterministic_repair({**state, "status": environment.READY}, tmp_path) is None
    unpinned = [{"name": "pwlf", "ok": False, "error": "ModuleNotFoundError: No module named 'numpy'"}]
    assert environment.deterministic_repair({"status": "failed", "imports": unpinned}, tmp_path) is None


def test_requirements_the_environment_already_satisfies_are_not_extras():
    state = {"installed": {"name": "kneed", "version": "0.8.5"}, "lock": ["numpy==2.4.6", "scipy==1.17.1"]}
    asked = ["numpy", "numpy>=1.20", "kneed", "scipy<1.10", "matplotlib", "numpy[extra]"]
    assert environment.beyond_environment(state, asked) == ["scipy<1.10", "matplotlib", "numpy[extra]"]


def test_an_extra_of_the_repository_itself_is_beyond_the_environment_and_the_repository_is_not():
    state = {"installed": {"name": "kneed"}, "lock": ["numpy==2.1.0"]}
    assert environment.beyond_environment(state, ["kneed", "kneed[plot]", "numpy", "matplotlib"]) == [
        "kneed[plot]",
        "matplotlib",
    ]
