"""The API digest: public signatures and first docstring lines read with `ast`, never by importing."""

import sys
import textwrap

from distill.pipeline import digest, survey

CORE = '''\
"""Shapes and areas."""
import numpy as np

__all__ = ["area", "Circle", "Grid"]


def area(width: float, height: float = 1.0, *, unit: str = "m", **options) -> float:
    """The area of a rectangle.

    More text that the digest leaves out.
    """
    return width * height


def helper():
    """Not in __all__: not public."""


class Circle:
    """A circle of a given radius. It scales."""

    def __init__(self, radius, center=(0.0, 0.0), label="a very long default label that goes on and on"):
        self.radius = radius
        self.center, self._cache = center, None

    def scaled(self, factor):
        """A new circle, scaled."""
        return Circle(self.radius * factor)

    @property
    def diameter(self):
        return 2 * self.radius

    def _private(self):
        pass


class Grid:
    pass
'''

BOMB = '''\
"""Importing this module writes a file and raises: the digest must read it without either."""
open({marker!r}, "w").write("imported")
import os
os.system("touch {marker}-system")
raise RuntimeError("never import me")


def detonate(seconds: int = 3):
    """Counts down."""
'''


def make(tmp_path, files):
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return digest.read_api(tmp_path)


def test_signatures_and_first_docstring_lines_of_the_public_api(tmp_path):
    entries = make(
        tmp_path,
        {
            "shapes/__init__.py": "from .core import area, Circle\n",
            "shapes/core.py": CORE,
            "shapes/_internal.py": "def hidden():\n    pass\n",
            "shapes/tests/test_core.py": "def test_area():\n    pass\n",
            "setup.py": "from setuptools import setup\nsetup(name='shapes', packages=['shapes'])\n",
        },
    )
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {
        "area",
        "Circle",
        "Grid",
    }  # __all__ decides; private modules and tests are not read

    area = by_name["area"]
    assert area.signature == "(width: float, height: float = 1.0, *, unit: str = 'm', **options) -> float"
    assert area.doc == "The area of a rectangle."
    assert area.import_from == "shapes"  # re-exported by the package: the shorter import
    assert by_name["Grid"].import_from == "shapes.core"

    circle = by_name["Circle"]
    assert circle.signature == "(self, radius, center=(0.0, 0.0), label=...)"  # a long default is cut
    assert circle.doc == "A circle of a given radius."
    assert [m.name for m in circle.methods] == ["scaled"]
    assert circle.attributes == ["radius", "center", "diameter"]

    text = digest.render(digest.rank(entries, []), budget_tokens=1000)
    assert "from shapes import area\ndef area(width: float, height: float = 1.0," in text
    assert "class Circle:  # A circle of a given radius.\n    def __init__(self, radius," in text
    assert "    def scaled(self, factor): ...  # A new circle, scaled." in text
    # Unused and only in a submodule when the package exports its API: named on the last line only.
    assert text.endswith("\n# also: shapes.core.Grid") and "class Grid" not in text


def test_what_the_readme_and_examples_use_comes_first_and_the_budget_holds(tmp_path):
    entries = make(tmp_path, {"shapes/__init__.py": CORE})
    ranked = digest.rank(entries, ["from shapes import Grid\ng = Grid()\ng2 = Grid()", "area(1, 2)"])
    assert [e.name for e in ranked] == ["Grid", "area", "Circle"]

    full = digest.render(ranked, budget_tokens=10_000)
    small = digest.render(ranked, budget_tokens=survey.count_tokens(full) // 2)
    assert survey.count_tokens(small) <= survey.count_tokens(full) // 2
    assert small.startswith("from shapes import Grid") and "more not shown" in small
    assert digest.render(ranked, budget_tokens=0) == ""


def test_a_module_whose_import_would_raise_or_write_a_file_is_digested_without_effect(tmp_path):
    marker = tmp_path / "marker"
    modules_before = set(sys.modules)
    entries = make(
        tmp_path / "repo",
        {
            "bomb/__init__.py": BOMB.format(marker=str(marker)),
            "bomb/sub.py": "raise SystemExit(3)\ndef quiet(): ...\n",
        },
    )

    assert [(e.name, e.signature, e.doc) for e in entries] == [
        ("detonate", "(seconds: int = 3)", "Counts down."),
        ("quiet", "()", ""),
    ]
    assert not marker.exists() and not (tmp_path / "marker-system").exists()
    assert "bomb" not in sys.modules and set(sys.modules) - modules_before <= {"tiktoken_ext"}


def test_a_file_that_is_not_python_is_skipped(tmp_path):
    entries = make(
        tmp_path,
        {
            "pkg/__init__.py": "def ok(a):\n    pass\n",
            "pkg/broken.py": "def nope(:\n",
            "pkg/latin.py": textwrap.dedent("# caf\xe9\ndef latin(): ...\n"),
        },
    )
    assert {e.name for e in entries} == {"ok", "latin"}
