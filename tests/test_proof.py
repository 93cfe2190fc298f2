"""Proof that a program used its repository: package names from a clone, the recorder in the real sandbox,
the verification of its record, and the results-are-literals flag."""

import hashlib
import hmac
import json
from textwrap import dedent

import pytest

from distill.pipeline import proof
from distill.sandbox import ExecutionRequest, Limits, get_sandbox
from tests.factories import make_git_repo

MINILIB = {
    "minilib/__init__.py": "from minilib.core import mean_squared\n",
    "minilib/core.py": dedent(
        '''\
        """Statistics."""


        def mean_squared(xs):
            """The mean of squares."""
            total = 0.0
            for x in xs:
                total += x * x
            return total / len(xs)


        def unused(x):
            if x:
                return 1
            return 2
        '''
    ),
    "setup.py": "from setuptools import setup\nsetup(name='minilib', version='0.1', packages=['minilib'])\n",
    "tests/test_core.py": "def test_it():\n    assert True\n",
}
WRITE_RESULTS = "import json\njson.dump({'mean_squared': value}, open('results.json', 'w'))\n"
USES_CLONE = "import sys\nsys.path.insert(0, '/repo')\nfrom minilib import mean_squared\nvalue = mean_squared([1.0, 2.0, 3.0])\n"


# The repository's packages, read and never executed ---------------------------------------------------


def test_it_reads_packages_from_pyproject_with_a_src_layout(tmp_path):
    root = make_git_repo(tmp_path / "r", {
        "pyproject.toml": '[project]\nname = "Tiny-Stats"\n[tool.setuptools]\npackage-dir = {"" = "src"}\n',
        "src/tiny_stats/__init__.py": "", "src/tiny_stats/core.py": "", "helpers.py": "",
        "tests/__init__.py": "", "docs/conf.py": "", "setup.py": "",
    })  # fmt: skip

    found = proof.repository_packages(root)

    assert found.packages == {"tiny_stats": "src/tiny_stats"}
    assert found.modules == {"helpers": "helpers.py"}
    assert proof.package_files(root, found) == [
        "src/tiny_stats/__init__.py",
        "src/tiny_stats/core.py",
        "helpers.py",
    ]


def test_it_reads_setup_py_without_running_it(tmp_path):
    canary = tmp_path / "ran"
    setup = (
        f"open({str(canary)!r}, 'w').write('ran')\nfrom setuptools import setup\n"
        "setup(name='mini', packages=['lib_a', 'lib_a.sub'], package_dir={'lib_a': 'code/lib_a'}, py_modules=['one'])\n"
    )
    root = make_git_repo(tmp_path / "r", {
        "setup.py": setup, "code/lib_a/__init__.py": "", "code/lib_a/sub/__init__.py": "", "one.py": "",
    })  # fmt: skip

    found = proof.repository_packages(root)

    assert not canary.exists()
    assert found.packages == {"lib_a": "code/lib_a"}
    assert found.modules == {"one": "one.py"}


def test_it_reads_setup_cfg_and_folders(tmp_path):
    root = make_git_repo(tmp_path / "r", {
        "setup.cfg": "[metadata]\nname = other\n[options]\npackages = find:\npy_modules =\n    tool\n",
        "tool.py": "", "pkg/__init__.py": "", "not_a_package/x.py": "", ".hidden/__init__.py": "",
    })  # fmt: skip

    found = proof.repository_packages(root)

    assert found.packages == {"pkg": "pkg"}
    assert found.modules == {"tool": "tool.py"}


def test_executable_lines_are_the_line_table_of_all_code(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f(x):\n    # a comment\n\n    return x\n")

    assert proof.executable_lines(path) == {1, 4}


# Verifying a record -----------------------------------------------------------------------------------

PACKAGES = proof.Packages(packages={"minilib": "minilib"})


def signed(key: str, *payloads: dict) -> bytes:
    lines = []
    for seq, payload in enumerate(payloads):
        body = json.dumps({**payload, "pid": 2, "main": True, "seq": seq}).encode()
        lines.append(hmac.new(bytes.fromhex(key), body, hashlib.sha256).hexdigest().encode() + b" " + body)
    return b"\n".join(lines) + b"\n"


def test_a_whole_signed_record_of_a_function_call_is_proof(tmp_path):
    key = proof.recording_config(PACKAGES)["key"]
    items = [["m", "minilib", "site:minilib/__init__.py", "source"],
             ["f", "site:minilib/__init__.py", "mean_squared", 1, "function"]]  # fmt: skip
    record = signed(key, {"start": {}}, {"items": items}, {"end": {"problems": []}})

    evidence = proof.verify(record, key, PACKAGES, None)

    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert evidence["modules"] == [["minilib", "minilib/__init__.py", "source"]]
    assert evidence["functions"] == [["minilib/__init__.py", "mean_squared", 1]]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda key, good: None, "made no record"),
        (lambda key, good: b"", "never started"),
        (lambda key, good: good.rsplit(b"\n", 2)[0] + b"\n", "cut short"),
        (
            lambda key, good: good + b"0" * 64 + b' {"end": {}, "pid": 2, "main": true, "seq": 3}\n',
            "tampered",
        ),
        (lambda key, good: signed("00" * 32, {"start": {}}, {"end": {"problems": []}}), "never started"),
        (
            lambda key, good: signed(
                key, {"start": {}}, {"end": {"problems": ["the probe function was replaced"]}}
            ),
            "interfered with",
        ),
    ],
    ids=["none", "empty", "no end", "forged line", "other key", "problems"],
)
def test_a_missing_cut_or_forged_record_is_unproven(damage, reason):
    key = proof.recording_config(PACKAGES)["key"]
    good = signed(key, {"start": {}}, {"items": [["f", "repo:minilib/core.py", "f", 1, "function"]]},
                  {"end": {"problems": []}})  # fmt: skip

    evidence = proof.verify(damage(key, good), key, PACKAGES, None)

    assert evidence["verdict"] == proof.UNPROVEN
    assert any(reason in r for r in evidence["reasons"]), evidence["reasons"]


# Results that are literals of main.py -----------------------------------------------------------------


def test_results_that_are_all_literals_of_main_are_flagged():
    main = "import json\nprint('mean squared: 4.6667')\njson.dump({'mean_squared': 4.6667, 'n': 3, 'unit': 'm2', 'ok': True}, open('results.json', 'w'))\n"

    flag = proof.literal_results({"mean_squared": 4.6667, "n": 3, "unit": "m2", "ok": True}, main)

    assert flag is not None and flag["values"] == 3
    assert "literal" in flag["message"] and "4.6667" in flag["message"]


def test_computed_or_trivial_results_are_not_flagged():
    main = "import json\nx = [1.5, 2.0]\njson.dump({'n': 2, 'mean': sum(x) / 2}, open('results.json', 'w'))\n"

    assert proof.literal_results({"n": 2, "mean": 1.75}, main) is None
    assert proof.literal_results({"converged": True, "errors": 0}, main) is None
    assert (
        proof.literal_results({"loss": -0.25, "curve": [1e-3, -0.25]}, "a = -0.25\nb = 0.001\n") is not None
    )
    assert proof.literal_results("not a dict", "x = 1") is None


# The recorder in the real sandbox ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    return get_sandbox("local")


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    return make_git_repo(tmp_path_factory.mktemp("clone") / "minilib", MINILIB)


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    return tmp_path_factory.mktemp("envs")


def record_run(
    sandbox, clone, envs, tmp_path, main, *, runscript="true\n", env="plain", recording=True, wall_secs=60
):
    """Runs main in sandbox; recording is True for a fresh configuration, one to use, or False for none."""
    packages = proof.repository_packages(clone)
    config = proof.recording_config(packages) if recording is True else recording or None
    request = ExecutionRequest(
        files={"main.py": dedent(main), "requirements.txt": "", "runscript.sh": runscript},
        job_dir=tmp_path / "job",
        env_dir=envs / env,
        repo_dir=clone,
        limits=Limits(wall_secs=wall_secs),
        recording=config,
    )
    result = sandbox.execute(request)
    evidence = proof.verify(result.record, config["key"], packages, clone) if recording else None
    return result, evidence


def test_a_program_that_imports_the_clone_and_calls_one_function_is_proven(sandbox, clone, envs, tmp_path):
    result, evidence = record_run(sandbox, clone, envs, tmp_path, USES_CLONE + WRITE_RESULTS)

    assert result.exit_code == 0, result.stderr
    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert {m[0] for m in evidence["modules"]} == {"minilib", "minilib.core"}
    assert evidence["functions"] == [["minilib/core.py", "mean_squared", 4]]
    assert evidence["functions_executed"] == 1
    # Lines of the module bodies and of the one call; not those of unused().
    assert evidence["files"]["minilib/core.py"][0] >= 6
    assert 0 < evidence["share_covered"] < 1
    assert "DISTILL_RECORD" not in result.stdout + result.stderr


def test_a_program_that_prints_the_expected_output_without_the_library_is_not(sandbox, clone, envs, tmp_path):
    fake = "print('mean squared:', 4.666666666666667)\nvalue = 4.666666666666667\n" + WRITE_RESULTS

    result, evidence = record_run(sandbox, clone, envs, tmp_path, fake)

    assert result.exit_code == 0
    assert evidence["verdict"] == proof.UNUSED
    assert "does not use the repository" in evidence["reasons"][0]


def test_a_look_alike_module_in_the_job_folder_is_not_the_repository(sandbox, clone, envs, tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "minilib.py").write_text("def mean_squared(xs):\n    return 4.666666666666667\n")

    _, evidence = record_run(
        sandbox,
        clone,
        envs,
        tmp_path,
        "from minilib import mean_squared\nvalue = mean_squared([1])\n" + WRITE_RESULTS,
    )

    assert evidence["verdict"] == proof.UNUSED


def test_importing_without_calling_anything_is_not_using_it(sandbox, clone, envs, tmp_path):
    _, evidence = record_run(
        sandbox, clone, envs, tmp_path, "import sys\nsys.path.insert(0, '/repo')\nimport minilib\n"
    )

    assert evidence["verdict"] == proof.UNUSED
    assert "ran none of its functions" in evidence["reasons"][0]


def test_the_record_works_when_the_library_is_pip_installed_in_the_sandbox(sandbox, clone, envs, tmp_path):
    # No network: pip installs a copy of the read-only clone (the build needs a writable folder).
    runscript = "cp -r /repo /tmp/src && pip install -q --no-index --no-build-isolation /tmp/src\n"
    main = (
        "import minilib\nprint(minilib.__file__)\nvalue = minilib.mean_squared([1.0, 2.0, 3.0])\n"
        + WRITE_RESULTS
    )

    result, evidence = record_run(sandbox, clone, envs, tmp_path, main, runscript=runscript, env="installed")

    assert result.exit_code == 0, result.stderr + result.install_log
    assert "site-packages/minilib" in result.stdout
    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert evidence["functions"] == [["minilib/core.py", "mean_squared", 4]]
    assert "minilib/core.py" in evidence["files"]


FORGE = """
import json, os, stat
for fd in map(int, os.listdir('/proc/self/fd')):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b'0' * 64 + b' {"items": [["f", "repo:minilib/core.py", "mean_squared", 4, "function"]], "pid": 2, "main": true, "seq": 1}\\n')
            os.write(fd, b'0' * 64 + b' {"end": {"problems": []}, "pid": 2, "main": true, "seq": 2}\\n')
    except OSError:
        pass
"""
BYPASSES = {
    "forged record lines": FORGE + "value = 4.666666666666667\n" + WRITE_RESULTS,
    "os._exit before the exit hooks": USES_CLONE + WRITE_RESULTS + "import os\nos._exit(0)\n",
    "exit hooks cleared": "import atexit\natexit._clear()\n" + USES_CLONE + WRITE_RESULTS,
    "probe replaced": "import builtins\nbuiltins.__distill_probe__ = lambda n: None\n"
    + USES_CLONE
    + WRITE_RESULTS,
    "import hook removed": USES_CLONE + "import sys\nsys.meta_path.pop(0)\n" + WRITE_RESULTS,
    "killed by a signal": USES_CLONE
    + WRITE_RESULTS
    + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
}


@pytest.mark.parametrize("main", BYPASSES.values(), ids=BYPASSES.keys())
def test_a_program_that_removes_or_bypasses_the_recording_is_unproven(sandbox, clone, envs, tmp_path, main):
    result, evidence = record_run(sandbox, clone, envs, tmp_path, main)

    assert evidence["verdict"] == proof.UNPROVEN, evidence
    assert (tmp_path / "job" / "results.json").exists(), result.stderr


def test_tracing_switched_off_by_the_program_still_records_calls(sandbox, clone, envs, tmp_path):
    main = "import sys\nsys.settrace(None)\nsys.setprofile(None)\n" + USES_CLONE + WRITE_RESULTS

    _, evidence = record_run(sandbox, clone, envs, tmp_path, main)

    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]


def test_forked_children_record_their_calls(sandbox, clone, envs, tmp_path):
    main = (
        "import os, sys\nsys.path.insert(0, '/repo')\nimport minilib.core\n"
        "pid = os.fork()\nif pid == 0:\n    minilib.core.unused(1)\n    os._exit(0)\nos.waitpid(pid, 0)\n"
        "value = minilib.core.mean_squared([2.0])\n" + WRITE_RESULTS
    )

    _, evidence = record_run(sandbox, clone, envs, tmp_path, main)

    assert evidence["verdict"] == proof.PROVEN, evidence["reasons"]
    assert {f[1] for f in evidence["functions"]} == {"mean_squared", "unused"}


def test_without_recording_the_sandbox_returns_no_record(sandbox, clone, envs, tmp_path):
    result, _ = record_run(
        sandbox, clone, envs, tmp_path, "import os\nprint(os.environ.get('PYTHONPATH'))\n", recording=False
    )

    assert result.record is None
    assert result.stdout == "None\n"


def test_the_program_keeps_its_docstrings_tracebacks_and_main_module(sandbox, clone, envs, tmp_path):
    main = (
        "import sys, inspect\nsys.path.insert(0, '/repo')\nimport minilib.core as core\n"
        "print(core.__doc__, core.mean_squared.__doc__, __name__, sys.argv[0])\n"
        "print(inspect.getsource(core.unused).splitlines()[0])\ncore.mean_squared([])\n"
    )

    result, evidence = record_run(sandbox, clone, envs, tmp_path, main)

    assert result.stdout.splitlines() == [
        "Statistics. The mean of squares. __main__ main.py",
        "def unused(x):",
    ]
    assert 'File "/repo/minilib/core.py", line 9, in mean_squared' in result.stderr
    assert "return total / len(xs)" in result.stderr and "ZeroDivisionError" in result.stderr
    assert (
        evidence["verdict"] == proof.PROVEN
    )  # it ran the repository's code, and failed: the exit code says so


def test_the_recorders_key_is_neither_in_the_environment_nor_in_a_file(sandbox, clone, envs, tmp_path):
    main = (
        "import os, glob\nseen = repr(dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/self/fd/*') + glob.glob('/proc/1/fd/*'):\n"
        "    try:\n        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)\n"
        "        seen += os.read(fd, 65536).decode('latin-1')\n    except OSError:\n        pass\n"
        "print(seen)\n"
    )
    packages = proof.repository_packages(clone)
    config = proof.recording_config(packages)
    request = ExecutionRequest(
        files={"main.py": main, "requirements.txt": "", "runscript.sh": "true\n"},
        job_dir=tmp_path / "job", env_dir=envs / "plain", repo_dir=clone, limits=Limits(wall_secs=60), recording=config,
    )  # fmt: skip

    result = sandbox.execute(request)

    assert result.exit_code == 0, result.stderr
    assert "PIP_NO_INPUT" in result.stdout, "it did read the environments"
    assert config["key"] not in result.stdout  # the variable DISTILL_RECORD names descriptors, not the key


# The figures on the iteration page --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_iteration_page_shows_the_proof_and_its_figures(reader_client):
    from django.urls import reverse

    from tests.factories import make_iteration, make_run

    run = make_run()
    evidence = {
        "verdict": "proven", "reasons": [], "modules": [["minilib", "minilib/__init__.py", "source"]],
        "functions": [["minilib/core.py", "mean_squared", 4]], "functions_executed": 1, "lines_executed": 9,
        "executable_lines": 40, "share_covered": 0.25, "files": {},
    }  # fmt: skip
    make_iteration(run, 1, proof=evidence, repo_modules_imported=1, repo_functions_executed=1,
                   repo_lines_executed=9, repo_share_covered=0.25,
                   measured={"passed": True, "exit_ok": True, "results_ok": True, "reasons": [],
                             "flags": ["every value in results.json (3) is written as a literal in main.py"]})  # fmt: skip
    unused = {**evidence, "verdict": "unused", "modules": [], "functions": [], "functions_executed": 0,
              "reasons": ["the program does not use the repository: it imported none of its modules (minilib)"]}  # fmt: skip
    make_iteration(run, 2, proof=unused, repo_modules_imported=0, repo_functions_executed=0, succeeded=False)

    page = reader_client.get(reverse("iteration_detail", args=[run.pk, 1])).content.decode()
    other = reader_client.get(reverse("iteration_detail", args=[run.pk, 2])).content.decode()

    assert "Uses the repository" in page and "<code>minilib</code>" in page
    assert "25% of 40 lines" in page and "at least 9" in page and "mean_squared" in page
    assert "written as a literal in main.py" in page
    assert "Does not use the repository" in other and "imported none of its modules" in other
