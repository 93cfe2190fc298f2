"""Checks before running (distill/pipeline/preflight.py): what is fixed at once, and what goes back."""

import json
import math
import subprocess
import sys

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
    assert "added `from dataclasses import dataclass`, `from pathlib import Path`, `import json`" in (
        fixed.change_log
    )


def test_a_program_that_needs_nothing_is_returned_as_it_was():
    reply = parse_program(program())
    assert preflight.check(reply) is reply


def test_a_syntax_error_goes_back_with_its_line():
    with pytest.raises(preflight.CannotRun, match=r"main.py:2: '\(' was never closed: print\(\(1") as raised:
        checked("import json\nprint((1\njson.dump({}, open('results.json', 'w'))\n")
    assert not raised.value.runnable, "run, it would only say the same"


def test_an_undefined_name_that_is_not_the_standard_librarys_goes_back_as_pyflakes_says_it():
    main = WORKING_MAIN + "print(median_of_squares([1.0]))\n"
    with pytest.raises(
        preflight.CannotRun, match=r"main.py:14:7: undefined name 'median_of_squares'$"
    ) as raised:
        checked(main)
    # Kept repairs aside, it may run as it is: its NameError and traceback are for the fix loop.
    assert raised.value.runnable and raised.value.program.files["main.py"] == main


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
        "i = diff.Id()\n"  # a submodule of the repository (seen on uncertainties: `unumpy`)
        "json.dump({'n': len(x)}, open('results.json', 'w'))\n"
    )
    known = preflight.known_imports({"numpy", "findiff"}, FINDIFF_DIGEST)

    fixed = preflight.check(parse_program(program(main, changes="First version.")), known=known)

    assert fixed.files["main.py"] == (
        "from findiff import Coef\nfrom findiff import FinDiff\nfrom findiff import diff\nimport numpy\n"
        "import numpy as np\n" + main
    )
    assert (
        "added `from findiff import Coef`, `from findiff import FinDiff`, `from findiff import diff`"
        in fixed.change_log
    )
    compile(fixed.files["main.py"], "main.py", "exec")


def test_a_name_imported_from_the_wrong_module_of_the_repository_is_imported_where_it_is_defined():
    # Seen on findiff: a fix imported Id from findiff.diff, as the diagnosis said, and then again from
    # findiff on a later line, where it failed.
    digest = FINDIFF_DIGEST.split("from findiff.other import Id")[0]  # Id is defined in findiff.diff only
    known = preflight.known_imports({"findiff"}, digest)
    main = (
        "import json\n"
        "from findiff.diff import Id\n"
        "from findiff import FinDiff, Id, Coef as C\n"
        "if True:\n"
        "    from findiff import Id as Identity\n"
        "op = FinDiff(0, 0.1, 2) + C(5) * Id()\n"
        "json.dump({'op': str(op)}, open('results.json', 'w'))\n"
    )

    fixed = preflight.check(parse_program(program(main, changes="Import Id.")), known=known)

    assert fixed.files["main.py"].splitlines()[1:4] == [
        "from findiff.diff import Id",
        "from findiff import FinDiff, Coef as C",
        "from findiff.diff import Id",
    ]
    assert "    from findiff import Id as Identity" in fixed.files["main.py"], "only top-level imports"
    assert "imported `Id` from findiff.diff in main.py, where the repository defines it" in fixed.change_log
    compile(fixed.files["main.py"], "main.py", "exec")


def test_a_name_the_environment_does_not_define_unambiguously_still_goes_back():
    known = preflight.known_imports({"findiff"}, FINDIFF_DIGEST)
    assert "np" not in known and "pd" not in known  # numpy and pandas are not installed
    assert "Id" not in known  # two modules define it: which one is meant is the model's to say

    main = "import json\nprint(np.ones(3), Id())\njson.dump({}, open('results.json', 'w'))\n"
    with pytest.raises(ReplyError, match="undefined name 'np'.*undefined name 'Id'"):
        preflight.check(parse_program(program(main)), known=known)


def test_a_misspelt_name_is_renamed_and_computed_values_are_written_when_results_json_is_not():
    # Seen on kneed: `needle` for `kneedle` and no results.json, sent back unchanged three times when
    # the model was told exactly that.
    main = (
        "from kneed import KneeLocator\n"
        "kneedle = KneeLocator([1, 2, 3], [1, 4, 9])\n"
        "knee_y = needle.knee_y\n"
        "print(needle.knee, 'needle', kneedle.needle)\n"
        "steps = 3\n"
    )
    fixed = checked(main, changes="First version.")

    source = fixed.files["main.py"]
    assert source.startswith(main.replace("needle.knee", "kneedle.knee"))
    assert "'needle'" in source and "kneedle.needle" in source, "strings and attributes stay as written"
    assert fixed.change_log == (
        "First version.\nBefore running: renamed `needle` to `kneedle` in main.py, the name it defines; "
        "main.py wrote no results.json: its computed top-level values (kneedle, knee_y) are written there "
        "at its end."
    )
    compile(source, "main.py", "exec")


def test_the_results_block_writes_numbers_strings_and_short_lists_and_leaves_out_the_rest(tmp_path):
    main = (
        "import math\n"
        "class Model:\n    pass\n"
        "model = Model()\n"
        "area = math.pi * 2.0 ** 2\n"
        "roots = [math.sqrt(i) for i in range(3)]\n"
        "name = 'circle'.upper()\n"
        "many = list(range(100))\n"
        "from collections import namedtuple\n"
        "fit = namedtuple('Fit', 'trend p')('none', math.exp(-1))\n"
        "table = dict(a=[1, 2], b=Model())\n"
    )
    fixed = checked(main)
    (tmp_path / "main.py").write_text(fixed.files["main.py"])
    subprocess.run([sys.executable, "main.py"], cwd=tmp_path, check=True)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {
        "area": pytest.approx(4 * math.pi),
        "roots": [0.0, 1.0, pytest.approx(2**0.5)],
        "name": "CIRCLE",
        "fit": {"trend": "none", "p": pytest.approx(math.exp(-1))},
        "many": {"shape": [100], "mean": 49.5, "min": 0, "max": 99},
        "table": {"a": [1, 2], "b": None},
    }


def test_two_names_a_misspelling_could_mean_are_not_guessed():
    main = "values = [1]\nvalued = [2]\nprint(valuse)\njson_path = 'results.json'\n"
    with pytest.raises(ReplyError, match="undefined name 'valuse'"):
        checked(main)


def run_twice(tmp_path, source: str) -> list[str]:
    (tmp_path / "main.py").write_text(source)
    return [
        subprocess.run(
            [sys.executable, "main.py"], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout
        for _ in range(2)
    ]


def test_draws_from_numpys_global_generator_are_seeded_and_give_the_same_results_on_every_run(tmp_path):
    # Seen on pwlf: `y = np.random.random(10)` in a program that passed; the library's health check
    # would have called its next run's results changed.
    main = (
        '"""Fit."""\n'
        "import json\n"
        "import numpy as np\n"
        "\n"
        "y = np.random.random(3)\n"
        "z = np.random.default_rng().normal(size=2)\n"
        "print(json.dumps([*y.tolist(), *z.tolist()]))\n"
        "json.dump({'y': y.tolist()}, open('results.json', 'w'))\n"
    )
    unseeded = run_twice(tmp_path, main)
    assert unseeded[0] != unseeded[1], "the program as written differs between runs"

    fixed = checked(main, changes="First version.")

    source = fixed.files["main.py"]
    assert source.splitlines()[3] == "np.random.seed(0)", "right after the imports"
    assert "np.random.default_rng(0).normal(size=2)" in source
    assert fixed.change_log == (
        "First version.\nBefore running: seeded what main.py draws at random (`np.random.seed(0)`, "
        "`np.random.default_rng(0)`), so every run gives the same results."
    )
    first, second = run_twice(tmp_path, source)
    assert first == second


def test_names_drawn_from_the_random_module_are_seeded_after_their_import_under_a_private_name(tmp_path):
    main = (
        "import json\n"
        "print('setting up')\n"
        "from random import choice, random\n"
        "values = [choice(range(1000)), random()]\n"
        "json.dump(values, open('results.json', 'w'))\n"
        "print(values)\n"
    )
    fixed = checked(main)

    lines = fixed.files["main.py"].splitlines()
    assert lines[3:5] == ["import random as _random", "_random.seed(0)"], "after the import it draws through"
    assert "`import random as _random; _random.seed(0)`" in fixed.change_log
    first, second = run_twice(tmp_path, fixed.files["main.py"])
    assert first == second


def test_a_seeded_program_and_one_with_generators_of_its_own_are_left_as_they_are():
    for main in (
        "import json\nimport numpy as np\nnp.random.seed(1)\nx = np.random.rand()\njson.dump(x, open('results.json', 'w'))\n",
        "import json\nimport numpy as np\nx = np.random.default_rng(7).random()\njson.dump(x, open('results.json', 'w'))\n",
        "import json\nimport random\nrng = random.Random(3)\njson.dump(rng.random(), open('results.json', 'w'))\n",
    ):
        fixed = checked(main, changes="First version.")
        assert fixed.files["main.py"] == main
        assert fixed.change_log == "First version."


def test_a_program_that_imports_torch_has_its_seed_set():
    main = "import json\nimport torch\nlayer = torch.nn.Linear(2, 1)\njson.dump(layer.weight.tolist(), open('results.json', 'w'))\n"
    fixed = checked(main)
    assert fixed.files["main.py"].splitlines()[2] == "torch.manual_seed(0)"
    compile(fixed.files["main.py"], "main.py", "exec")


def test_in_a_fix_after_a_value_json_could_not_write_every_json_dump_is_given_a_default(tmp_path):
    # Seen on pwlf in every run: "Object of type ndarray is not JSON serializable".
    main = (
        "import json\n"
        "from fractions import Fraction\n"
        "label = 'équilibre'; json.dumps(label)\n"
        "values = {'third': Fraction(1, 3)}\n"
        "json.dump(\n    values,\n    open('results.json', 'w'),\n)\n"
        'print(f"{json.dumps(label)}")\n'
        "json.dump(values, open('log.json', 'w'), default=repr)\n"
    )
    assert checked(main).files["main.py"] == main, "only in a fix of that failure"

    fixed = preflight.check(parse_program(program(main, changes="Same.")), json_defaults=True)

    source = fixed.files["main.py"]
    default = "default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)"
    assert f"json.dumps(label, {default})\n" in source, "after a non-ASCII character on its line"
    assert f"open('results.json', 'w'), {default},\n)" in source
    assert "default=repr)" in source and source.count("default=") == 3, "f-strings and a default are left"
    assert (
        fixed.change_log
        == f"Same.\nBefore running: gave 2 json.dump calls in main.py `{default}`, so "
        + ("that arrays and numpy numbers can be written.")
    )
    (tmp_path / "main.py").write_text(source)
    subprocess.run([sys.executable, "main.py"], cwd=tmp_path, check=True, capture_output=True)
    assert json.loads((tmp_path / "results.json").read_text()) == {"third": "1/3"}


def test_a_results_json_given_to_a_writer_of_another_format_is_not_one_written():
    # Seen on kneed: np.save writes results.json.npy, and no results.json.
    main = (
        "import numpy as np\n"
        "from kneed import DataGenerator, KneeLocator\n"
        "x, y = DataGenerator.figure2()\n"
        "knee_y = KneeLocator(x, y).knee_y\n"
        'np.save("results.json", {"knee_y": knee_y})\n'
    )
    fixed = checked(main)
    assert fixed.files["main.py"].startswith(main)
    assert "_json.dump(" in fixed.files["main.py"]
    assert "its computed top-level values (x, y, knee_y) are written there" in fixed.change_log


def test_a_value_of_a_packages_own_type_is_written_by_its_text(tmp_path):
    # Seen on uncertainties: its values (`2.0+/-0.25`) are neither numbers nor lists.
    main = "from fractions import Fraction\nthird = Fraction(1, 3) * 1\nprint(third)\n"
    fixed = checked(main)
    (tmp_path / "main.py").write_text(fixed.files["main.py"])
    subprocess.run([sys.executable, "main.py"], cwd=tmp_path, check=True, capture_output=True)
    assert json.loads((tmp_path / "results.json").read_text()) == {"third": "1/3"}


def test_a_large_array_is_written_by_its_shape_and_figures(tmp_path):
    # Seen on emcee: its 100 x 32 samples were left out, and results.json held only the inputs.
    main = "import numpy as np\nsamples = np.arange(200.0).reshape(100, 2)\nprint(samples.shape)\n"
    # And a tensor whose `size` is a method, as torch's is.
    main += (
        "class Tensor:\n    def size(self):\n        return (60, 2)\n"
        "    def tolist(self):\n        return [[float(i), 1.0] for i in range(60)]\n"
        "weights = Tensor()\nweights.size()\n"
    )
    (tmp_path / "main.py").write_text(checked(main).files["main.py"])
    subprocess.run([sys.executable, "main.py"], cwd=tmp_path, check=True, capture_output=True)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["samples"] == {"shape": [100, 2], "mean": 99.5, "min": 0.0, "max": 199.0}
    assert results["weights"] == {"shape": [60, 2], "mean": 15.25, "min": 0.0, "max": 59.0}
