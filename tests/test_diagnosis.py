"""Reading a repository's declared dependencies, and the likely root cause of a failed run from its output."""

from distill.pipeline import digest
from distill.pipeline.dependencies import declared_dependencies, unpinned
from distill.pipeline.diagnosis import (
    diagnose,
    missing_requirements,
    unavailable_versions,
    unreached_imports,
    without_recorder_frames,
)
from tests.factories import make_git_repo

PYPROJECT = """
[project]
name = "kneed"
dependencies = ["numpy>=1.14.2", "scipy>=1.0.0"]
[project.optional-dependencies]
plot = ["matplotlib>=2.2.5"]
"""


def test_dependencies_come_from_pyproject_without_the_optional_ones(tmp_path):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)

    assert declared_dependencies(tmp_path) == ["numpy>=1.14.2", "scipy>=1.0.0"]


def test_setup_py_is_read_not_run_and_duplicates_across_files_are_dropped(tmp_path):
    canary = tmp_path / "ran"
    (tmp_path / "setup.py").write_text(
        f"open({str(canary)!r}, 'w')\n"
        "from setuptools import setup\n"
        "setup(name='x', install_requires=['NumPy>=1.20', 'pandas'], tests_require=['pytest'])\n"
    )
    (tmp_path / "setup.cfg").write_text("[options]\ninstall_requires =\n    numpy\n    networkx>=2\n")
    (tmp_path / "requirements.txt").write_text(
        "# runtime\npandas==2.2.3  # pinned\n-e .\nhttps://example.org/x.whl\npytest\nscikit_learn\n"
    )

    assert declared_dependencies(tmp_path) == ["numpy", "networkx>=2", "pandas", "scikit_learn"]
    assert not canary.exists()


def test_an_sdists_pkg_info_gives_what_setup_py_computed(tmp_path):
    (tmp_path / "setup.py").write_text("from setuptools import setup\nsetup(install_requires=read_reqs())\n")
    (tmp_path / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: pwlf\nRequires-Dist: numpy>=1.14.0\nRequires-Dist: scipy>=1.8.0\n"
        'Requires-Dist: pytest; extra == "test"\nRequires-Dist: pyDOE>=0.3.8; extra == "doe"\n\nlong text\n'
    )

    assert declared_dependencies(tmp_path) == ["numpy>=1.14.0", "scipy>=1.8.0"]


def test_broken_or_hostile_metadata_gives_nothing_rather_than_an_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project\nname = ")
    (tmp_path / "setup.py").write_text("def (:\n")
    (tmp_path / "setup.cfg").write_text("not an ini file [")
    (tmp_path / "requirements.txt").write_text("$(rm -rf /)\n<script>alert(1)</script>\n")
    (tmp_path / "PKG-INFO").symlink_to("/etc/passwd")

    assert declared_dependencies(tmp_path) == []


def test_a_real_clone_without_metadata_declares_nothing(tmp_path):
    repo = make_git_repo(tmp_path / "r", {"lib.py": "def f():\n    return 1\n"})

    assert declared_dependencies(repo) == []


TRACEBACK = """\
Traceback (most recent call last):
  File "/job/main.py", line 6, in <module>
    from kneed.knee_locator import KneeLocator
  File "/sandbox/record/sitecustomize.py", line 287, in exec_module
    super().exec_module(module)
  File "/job/../repo/kneed/knee_locator.py", line 2, in <module>
    from scipy import interpolate
ModuleNotFoundError: No module named 'scipy'
"""


def test_a_missing_module_is_named_with_the_requirement_the_repository_declares():
    found = diagnose(
        output=TRACEBACK, install_log="", packages={"kneed": "kneed"}, declared=["numpy", "scipy>=1.0.0"]
    )

    assert found == [
        "the module 'scipy' is not installed: add 'scipy>=1.0.0' to requirements.txt (the repository declares it)"
    ]


def test_a_missing_module_with_another_distribution_name_gets_that_name():
    stderr = "ModuleNotFoundError: No module named 'sklearn.linear_model'\n"

    (found,) = diagnose(output=stderr, install_log="", packages={}, declared=[])

    assert "'sklearn.linear_model' is not installed: add 'scikit-learn'" in found
    assert "declares" not in found


def test_the_repositorys_own_package_missing_says_the_line_that_reaches_it():
    def found_for(module: str, packages: dict) -> str:
        (found,) = diagnose(
            output=f"ModuleNotFoundError: No module named '{module}'\n",
            install_log="",
            packages=packages,
            declared=[],
        )
        return found

    assert "own package 'kneed'" in found_for("kneed.knee_locator", {"kneed": "kneed"})
    assert (
        "`sys.path.insert(0, '/repo')` at the top of main.py, before the first import of kneed"
        in found_for("kneed", {"kneed": "kneed"})
    )
    assert "sys.path.insert(0, '/repo/src')" in found_for("pwlf", {"pwlf": "src/pwlf"})
    assert "sys.path.insert(0, '/repo/lib')" in found_for("tool", {"tool": "lib/tool.py"})


def test_wrong_names_and_pip_failures_are_named_and_at_most_three_findings_are_kept():
    stderr = (
        "ImportError: cannot import name 'mean_squares' from 'minilib' (/repo/minilib/__init__.py)\n"
        "AttributeError: module 'numpy' has no attribute 'float'\n"
        "ModuleNotFoundError: No module named 'yaml'\n"
    )
    install_log = (
        "ERROR: Could not find a version that satisfies the requirement kneeed==9.9 (from versions: none)\n"
    )

    found = diagnose(output=stderr, install_log=install_log, packages={"minilib": "minilib"}, declared=[])

    assert len(found) == 3
    assert found[0].startswith("pip could not install 'kneeed==9.9'")
    # Then in the order the output shows them: the first failure first.
    assert found[1].startswith("'minilib' has no name 'mean_squares'")
    assert found[2] == (
        "the module 'numpy' has no attribute 'float': use a name it defines (the API digest above lists them)"
    )


def test_several_requirements_on_one_line_are_named_with_the_line():
    install_log = (
        "ERROR: Invalid requirement: 'numpy>=1.14.2 scipy>=1.0.0' (from line 1 of requirements.txt)\n"
        "ERROR: Invalid requirement: 'numpy!!' (from line 3 of requirements.txt)\n"
    )

    found = diagnose(output="", install_log=install_log, packages={}, declared=[])

    assert found == [
        "line 1 of requirements.txt, 'numpy>=1.14.2 scipy>=1.0.0', is not a requirement pip can read: put each "
        "requirement on a line of its own",
        "line 3 of requirements.txt, 'numpy!!', is not a requirement pip can read: correct or remove it",
    ]


def test_a_librarys_own_advice_to_pip_install_something_is_passed_on():
    stdout = (
        "An error occurred: This function needs Matplotlib. Please run command `pip install kneed[plot]`\n"
    )

    found = diagnose(output=stdout, install_log="", packages={"kneed": "kneed"}, declared=[])

    assert found == [
        "the program's output asks for `pip install kneed[plot]`: add 'kneed[plot]' to requirements.txt"
    ]


def test_an_import_of_the_repository_swallowed_by_the_program_is_still_found():
    main = (
        "import sys\ntry:\n    from kneed.knee_locator import KneeLocator\n    import numpy as np\n"
        "except ImportError:\n    print('Error: kneed module not found. Please install it using pip.')\n"
        "    sys.exit(1)\n"
    )
    packages = {"kneed": "kneed"}

    assert unreached_imports(main, packages, imported=set()) == {"kneed": 3}
    assert unreached_imports(main, packages, imported={"kneed"}) == {}
    assert unreached_imports("def (:", packages, imported=set()) == {}
    (found,) = diagnose(
        output="Error: kneed module not found. Please install it using pip.\n",
        install_log="",
        packages=packages,
        declared=[],
        main_source=main,
        imported=set(),
    )
    assert found.startswith("the repository's own package 'kneed' could not be imported")


# numpy fails on line 4, before line 6 puts the clone on sys.path: the recorder saw no kneed imported,
# yet kneed is not the cause, and naming it first sent fixers after the wrong line.
NUMPY_FIRST = """\
import json
import sys

import numpy as np

sys.path.insert(0, "/repo")
from kneed import KneeLocator
"""
NUMPY_TRACEBACK = """\
Traceback (most recent call last):
  File "/job/main.py", line 4, in <module>
    import numpy as np
ModuleNotFoundError: No module named 'numpy'
"""


def test_an_import_below_the_line_that_failed_is_not_a_cause():
    found = diagnose(
        output=NUMPY_TRACEBACK,
        install_log="",
        packages={"kneed": "kneed"},
        declared=["numpy"],
        main_source=NUMPY_FIRST,
        imported=set(),
    )

    assert found == [
        "the module 'numpy' is not installed: add 'numpy' to requirements.txt (the repository declares it)"
    ]


def test_findings_follow_the_traceback_the_first_failing_line_first():
    output = (
        "Traceback (most recent call last):\n"
        '  File "/job/main.py", line 2, in <module>\n'
        "ImportError: cannot import name 'KneeFinder' from 'kneed' (/repo/kneed/__init__.py)\n"
        "ModuleNotFoundError: No module named 'kneed'\n"
    )
    main = "import sys\nfrom kneed import KneeFinder\nimport scipy\n"

    found = diagnose(
        output=output,
        install_log="",
        packages={"kneed": "kneed"},
        declared=[],
        main_source=main,
        imported=set(),
    )

    assert found[0].startswith("'kneed' has no name 'KneeFinder'")
    assert found[1].startswith("the repository's own package 'kneed' could not be imported")
    assert len(found) == 2


def test_a_paper_run_never_speaks_of_the_repository():
    install_log = "ERROR: No matching distribution found for squarez\n"
    output = "ImportError: cannot import name 'square_all' from 'squares' (/job/squares.py)\n"

    found = diagnose(output=output, install_log=install_log, packages={}, declared=[], paper=True)

    assert len(found) == 2 and not any("repository" in finding for finding in found)
    assert found[1] == (
        "'squares' has no name 'square_all': import only names defined in the program's own files "
        "(check the module path, too)"
    )
    (as_repository,) = diagnose(output=output, install_log="", packages={}, declared=[])
    assert "the repository's files shown above" in as_repository


def test_output_without_a_known_cause_gives_no_finding():
    assert diagnose(output="ValueError: x must be positive\n", install_log="", packages={}, declared=[]) == []


def test_the_recorders_frames_are_taken_out_of_a_traceback():
    cleaned = without_recorder_frames(TRACEBACK)

    assert "/sandbox/record/" not in cleaned and "super().exec_module" not in cleaned
    assert cleaned.count('  File "') == 2 and cleaned.endswith("No module named 'scipy'\n")


def test_a_program_stopped_at_the_memory_limit_is_told_so_first():
    found = diagnose(
        output="No module named 'nothing'\n",
        install_log="",
        packages={},
        declared=[],
        out_of_memory_mb=4096,
    )

    assert found[0].startswith("the program was stopped at the sandbox's memory limit (4096 MB for all")
    assert diagnose(output="", install_log="", packages={}, declared=[]) == []


def test_a_name_asked_of_the_wrong_class_is_found_where_the_repository_defines_it(tmp_path):
    # Seen with the offline model: `KneeLocator.figure2()`, a static method of kneed's DataGenerator.
    make_git_repo(
        tmp_path / "lib",
        {
            "curves/__init__.py": "from .data import Data\nfrom .locate import Locator\n",
            "curves/data.py": "class Data:\n    @staticmethod\n    def figure2():\n        return [1], [2]\n",
            "curves/locate.py": "class Locator:\n    def __init__(self, x, y):\n        self.knee = x\n",
        },
    )
    api = digest.render(digest.rank(digest.read_api(tmp_path / "lib"), []), budget_tokens=2000)
    output = (
        'Traceback (most recent call last):\n  File "/job/main.py", line 3, in <module>\n'
        "AttributeError: type object 'Locator' has no attribute 'figure2'\n"
        "AttributeError: 'Locator' object has no attribute 'elbow'\n"
    )

    found = diagnose(
        output=output, install_log="", packages={"curves": "curves"}, declared=[], api_digest=api
    )

    assert found[0] == (
        "the class 'Locator' has no attribute 'figure2': the repository defines it as Data.figure2 "
        "(from curves import Data); call it there"
    )
    assert found[1] == (
        "a 'Locator' object has no attribute 'elbow': use a name it defines (the API digest above lists them)"
    )


def test_the_requirements_that_install_the_modules_a_program_could_not_import():
    output = (
        "ModuleNotFoundError: No module named 'sklearn.svm'\n"
        "ModuleNotFoundError: No module named 'matplotlib'\n"
        "ModuleNotFoundError: No module named 'kneed.extra'\n"  # the repository's own: not installable
        "ModuleNotFoundError: No module named 'matplotlib'\n"
    )
    found = missing_requirements(output, {"kneed": "kneed"}, declared=["matplotlib>=3"])

    assert found == ["scikit-learn", "matplotlib>=3"]


def test_a_librarys_own_advice_to_install_an_extra_is_a_missing_requirement():
    output = (
        '  File "/env/lib/python3.11/site-packages/kneed/knee_locator.py", line 335, in plot_knee\n'
        "ModuleNotFoundError: This function needs Matplotlib to be executed. Please run command "
        "`pip install kneed[plot]`\n"
    )
    assert missing_requirements(output, {"kneed": "kneed"}, declared=[]) == ["kneed[plot]"]


def test_a_value_json_cannot_write_is_named_with_the_one_argument_that_writes_it():
    output = (
        'Traceback (most recent call last):\n  File "/job/main.py", line 25, in <module>\n'
        "TypeError: Object of type ndarray is not JSON serializable\n"
    )
    (finding,) = diagnose(output=output, install_log="", packages={}, declared=[])

    assert finding.startswith("json cannot write a ndarray value")
    assert "default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)" in finding


def test_a_name_imported_from_the_wrong_module_is_named_with_where_the_digest_imports_it():
    digest_text = (
        "from findiff.diff import Id\nclass Id:  # The identity operator.\n    def __init__(self): ...\n"
    )
    output = "ImportError: cannot import name 'Id' from 'findiff' (/env/lib/python3.11/site-packages/findiff/__init__.py)\n"
    (finding,) = diagnose(output=output, install_log="", packages={}, declared=[], api_digest=digest_text)

    assert finding == (
        "'findiff' has no name 'Id': the repository defines it as Id (from findiff.diff import Id); call it there"
    )


# The ends of real install logs (a paper's runs, pip 24 in the sandbox), and newer pip's wording.
NO_SUCH_VERSION = """\
ERROR: Ignored the following versions that require a different python version: 2.5.0 Requires-Python >=3.12
ERROR: Could not find a version that satisfies the requirement corner==0.4.1 (from versions: 0.2.0, 1.0.0, 2.3.0)
ERROR: No matching distribution found for corner==0.4.1
ERROR: Could not find a version that satisfies the requirement cornerz==1.0 (from versions: none)
"""
LEGACY_BUILD = """\
      error: Failed to download any of the following: ['https://downloads.sourceforge.net/freetype-2.6.1.tar.gz']
      [end of output]
error: legacy-install-failure

× Encountered error while trying to install package.
╰─> matplotlib
"""
WHEEL_BUILD = """\
  Building wheel for scikit-learn (pyproject.toml) ... error
  ERROR: Failed building wheel for scikit-learn
Failed to build scikit-learn
ERROR: Failed to build installable wheels for some pyproject.toml based projects (scikit-learn)
"""


def test_pins_the_index_has_not_and_builds_that_failed_are_read_from_the_install_log():
    assert unavailable_versions(NO_SUCH_VERSION) == {"corner": ["0.2.0", "1.0.0", "2.3.0"]}, (
        "none: a name to fix"
    )
    assert unavailable_versions(LEGACY_BUILD) == {"matplotlib": None}
    assert unavailable_versions(WHEEL_BUILD) == {"scikit-learn": None}
    assert unavailable_versions("Successfully installed numpy-2.1.3\n") == {}


def test_a_pin_is_taken_off_only_where_it_allows_no_version_the_index_has():
    unavailable = {"corner": ["0.2.0", "1.0.0", "2.3.0"], "matplotlib": None}
    lines, said = unpinned(
        ["corner[plot]==0.4.0; python_version >= '3'", "matplotlib==3.5.1", "numpy==2.1.3", "matplotlib"],
        unavailable,
    )
    assert lines == ['corner[plot]; python_version >= "3"', "matplotlib", "numpy==2.1.3", "matplotlib"]
    assert said == [
        "corner[plot]==0.4.0; python_version >= '3' (pip has 0.2.0, 1.0.0, 2.3.0)",
        "matplotlib==3.5.1 (it did not build from source here)",
    ]
    assert unpinned(["corner>=2"], unavailable) == (["corner>=2"], []), "a pin the index satisfies stays"
