"""Checks before running (distill/pipeline/preflight.py): what is fixed at once, and what goes back."""

import pytest

from distill.pipeline import preflight
from distill.pipeline.parsing import ReplyError, parse_program
from tests.replies import WORKING_MAIN, program


def checked(main: str, **kwargs):
    return preflight.check(parse_program(program(main, **kwargs)))


def test_a_forgotten_import_json_is_added_and_said_in_the_change_log():
    main = WORKING_MAIN.replace("import json\n", "")
    assert "json.dump" in main and "import json" not in main

    fixed = checked(main, changes="Call mean_squared.")

    assert fixed.files["main.py"] == "import json\n" + main
    assert fixed.change_log == (
        "Call mean_squared.\nBefore running: added `import json` to main.py, used without its import."
    )
    compile(fixed.files["main.py"], "main.py", "exec")


def test_imports_go_after_the_docstring_and_future_imports_and_before_decorators():
    main = (
        '"""Doc."""\n'
        "from __future__ import annotations\n"
        "# the example\n"
        "@dataclass\n"
        "class Point:\n"
        "    x: float\n\n"
        "value = math.sqrt(Point(2.0).x)\n"
        "Path('results.json').write_text(json.dumps({'v': value}))\n"
    )

    fixed = checked(main)

    assert fixed.files["main.py"].splitlines()[:7] == [
        '"""Doc."""',
        "from __future__ import annotations",
        "# the example",
        "from dataclasses import dataclass",
        "from pathlib import Path",
        "import json",
        "import math",
    ]
    assert "`from dataclasses import dataclass` to main.py, `from pathlib import Path` to main.py" in (
        fixed.change_log
    )


def test_a_program_that_needs_nothing_is_returned_as_it_was():
    reply = parse_program(program())
    assert preflight.check(reply) is reply


def test_a_syntax_error_goes_back_with_its_line():
    with pytest.raises(ReplyError, match=r"main.py:2: '\(' was never closed: print\(\(1"):
        checked("import json\nprint((1\njson.dump({}, open('results.json', 'w'))\n")


def test_an_undefined_name_that_is_not_the_standard_librarys_goes_back_as_pyflakes_says_it():
    main = WORKING_MAIN + "print(mean_squares([1.0]))\n"
    with pytest.raises(ReplyError, match=r"main.py:14:7: undefined name 'mean_squares' \(did you mean 'mean_squared'\?\)$"):
        checked(main)


def test_a_module_name_used_as_its_class_is_not_guessed():
    # `datetime.now()` wants `from datetime import datetime`; `import datetime` would only move the error.
    main = WORKING_MAIN + "print(datetime.now())\n"
    with pytest.raises(ReplyError, match="undefined name 'datetime'"):
        checked(main)


def test_a_program_that_never_writes_results_json_goes_back():
    main = "import sys\nsys.path.insert(0, '/repo')\nimport minilib\nprint(minilib.mean_squared([1.0]))\n"
    with pytest.raises(ReplyError, match="never writes results.json"):
        checked(main)
    # Written anywhere in the code, under any path, it counts.
    checked(main + "import json, pathlib\npathlib.Path(f'out/results.json').write_text(json.dumps({}))\n")


FINDIFF_DIGEST = """from findiff import FinDiff
class FinDiff:  # A finite difference operator.
    def __init__(self, *args, **kwargs): ...
from findiff import Coef
class Coef:  # A constant or variable coefficient.
    def __init__(self, value): ...
from findiff.diff import Id
class Id:
    def matrix(self, shape): ...
from findiff.other import Id
class Id:
    def matrix(self, shape): ...
"""


def test_installed_modules_their_aliases_and_the_repositorys_api_are_imported_when_forgotten():
    # Seen on findiff: three generate replies used numpy and the repository's classes unimported.
    main = (
        "import json\n"
        "x = numpy.linspace(0, 1, 11)\n"
        "d = FinDiff(0, x[1] - x[0], 1, acc=2) * Coef(2.0)\n"
        "y = np.sin(x)\n"
        "json.dump({'n': len(x)}, open('results.json', 'w'))\n"
    )
    known = preflight.known_imports({"numpy", "findiff"}, FINDIFF_DIGEST)

    fixed = preflight.check(parse_program(program(main, changes="First version.")), known=known)

    assert fixed.files["main.py"] == (
        "from findiff import Coef\nfrom findiff import FinDiff\nimport numpy\nimport numpy as np\n" + main
    )
    assert "added `from findiff import Coef` to main.py" in fixed.change_log
    compile(fixed.files["main.py"], "main.py", "exec")


def test_a_name_the_environment_does_not_define_unambiguously_still_goes_back():
    known = preflight.known_imports({"findiff"}, FINDIFF_DIGEST)
    assert "np" not in known and "pd" not in known  # numpy and pandas are not installed
    assert "Id" not in known  # two modules define it: which one is meant is the model's to say

    main = "import json\nprint(np.ones(3), Id())\njson.dump({}, open('results.json', 'w'))\n"
    with pytest.raises(ReplyError, match="undefined name 'np'.*undefined name 'Id'"):
        preflight.check(parse_program(program(main)), known=known)


def test_an_undefined_name_close_to_one_the_program_defines_is_named_with_it_and_results_json_too():
    # Seen on kneed: `needle` for `kneedle`, three replies in a row, in a program that wrote no results.
    main = "from kneed import KneeLocator\nkneedle = KneeLocator([1, 2], [1, 2])\nprint(needle.knee)\n"
    with pytest.raises(ReplyError) as raised:
        checked(main)

    assert "main.py:3:7: undefined name 'needle' (did you mean 'kneedle'?)" in str(raised.value)
    assert "never writes results.json" in str(raised.value), "every problem in one repair"
