"""Harvesting the authors' usage from a repository's text: README and docs, examples, doctests, notebooks, tests."""

import json
import textwrap

import pytest

from distill.models import LLMCall, Run
from distill.pipeline import digest, proof, repository, survey, usage
from tests.factories import make_run
from tests.replies import cassette, ratings

README = """\
# geolib

Install with pip:

```bash
pip install geolib
```

```python
from geolib import area
```

Then measure:

```python
print(area(2.0, 3.0))
6.0
```

A session:

```pycon
>>> from geolib.shapes import Circle
>>> c = Circle(1.5)
>>> c.scaled(2).radius
3.0
```

```python
this is not python
```
"""

DOCS = """\
Usage
=====

.. code-block:: python
   :linenos:

   from geolib import area
   total = area(4, 5)

A literal block::

    >>> import geolib
    >>> geolib.area(1, 1)
    1

.. code-block:: bash

   geolib --help
"""

GEOLIB = {
    "README.md": README,
    "docs/usage.rst": DOCS,
    "geolib/__init__.py": "from .core import area\n",
    "geolib/core.py": textwrap.dedent('''\
        def area(width, height):
            """The area of a rectangle.

            >>> area(2, 2)
            4
            """
            return width * height
        '''),
    "geolib/shapes.py": textwrap.dedent('''\
        class Circle:
            """A circle.

            Examples
            --------
            >>> import numpy as np
            >>> from geolib.shapes import Circle
            >>> Circle(np.float64(2.0)).scaled(0.5).radius
            1.0
            """

            def __init__(self, radius):
                self.radius = radius

            def scaled(self, factor):
                return Circle(self.radius * factor)
        '''),
    "examples/demo_area.py": "from geolib import area\n\nprint(area(1.0, 2.0))\n",
    "examples/needs_data.py": (
        "import numpy as np\nfrom geolib import area\n\nrows = np.loadtxt('widths.csv')\nprint(area(rows[0], 2))\n"
    ),
    "examples/walkthrough.ipynb": json.dumps(
        {
            "cells": [
                {"cell_type": "markdown", "source": ["# Walkthrough"]},
                {"cell_type": "code", "source": ["%matplotlib inline\n", "from geolib.shapes import Circle"]},
                {"cell_type": "code", "source": ["big = Circle(10)\n", "big.scaled(0.1)"]},
            ],
            "nbformat": 4,
        }
    ),
    "tests/test_shapes.py": textwrap.dedent('''\
        import pytest
        from geolib.shapes import Circle
        from geolib import area

        def test_scaled_circle():
            """Scaling multiplies the radius."""
            assert Circle(2).scaled(3).radius == 6

        def test_area_with_a_fixture(width):
            assert area(width, 1) == width

        def test_a_negative_width_is_refused():
            with pytest.raises(ValueError):
                area(-1, 1)
        '''),
}


def harvest(tmp_path, files=GEOLIB):
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    packages = proof.repository_packages(tmp_path)
    entries = digest.read_api(tmp_path, packages)
    return usage.harvest(
        survey.survey(tmp_path),
        top_names=set(packages.names),
        api_names=digest.names(entries),
        member_names=digest.members(entries),
        imports=digest.import_lines(entries),
    )


def by_source(snippets, source):
    return [s for s in snippets if s.source == source]


def test_markdown_blocks_build_on_the_blocks_before_them(tmp_path):
    readme = by_source(harvest(tmp_path), "README.md")
    codes = [s.code for s in readme]
    # The second Python block uses `area`, which the first imports: it is shown after that import, and
    # the printed value under the call is dropped.
    assert "from geolib import area\n\nprint(area(2.0, 3.0))" in codes
    assert not any("6.0" in code.splitlines() for code in codes)
    # The shell block and the block that is not Python are not usage.
    assert not any("pip install" in code or "not python" in code for code in codes)
    assert all(s.kind == "readme" for s in readme)


def test_a_pycon_session_becomes_plain_code(tmp_path):
    (session,) = [s for s in harvest(tmp_path) if "Circle(1.5)" in s.code and s.source == "README.md"]
    assert session.code == "from geolib.shapes import Circle\nc = Circle(1.5)\nc.scaled(2).radius"
    assert session.undefined == [] and {"Circle", "scaled", "radius"} <= set(session.names)


def test_rst_code_blocks_and_literal_sessions_are_harvested(tmp_path):
    docs = by_source(harvest(tmp_path), "docs/usage.rst")
    codes = {s.code for s in docs}
    assert "from geolib import area\ntotal = area(4, 5)" in codes  # the :linenos: option is not code
    assert "import geolib\ngeolib.area(1, 1)" in codes  # a `::` block with a session, output dropped
    assert not any("--help" in code for code in codes)
    assert {s.kind for s in docs} == {"docs"}


def test_doctests_examples_notebooks_and_tests_are_harvested(tmp_path):
    snippets = harvest(tmp_path)
    doctests = by_source(snippets, "geolib/shapes.py")
    assert [s.kind for s in doctests] == ["doctest"]
    assert doctests[0].code.startswith("import numpy as np\nfrom geolib.shapes import Circle\n")

    # A doctest without an import of its own: the package's import is added, as a reader would.
    (core,) = by_source(snippets, "geolib/core.py")
    assert core.code == "from geolib.core import area\narea(2, 2)" or core.code.startswith(
        "from geolib import area"
    )

    (demo,) = by_source(snippets, "examples/demo_area.py")
    assert demo.kind == "example" and demo.code == GEOLIB["examples/demo_area.py"].strip()

    notebook = by_source(snippets, "examples/walkthrough.ipynb")
    # The cell that uses Circle comes after the cell that imports it; the magic line is dropped.
    assert [s.code for s in notebook] == [
        "from geolib.shapes import Circle\n\nbig = Circle(10)\nbig.scaled(0.1)"
    ]
    assert (
        notebook[0].kind == "notebook" and notebook[0].line == 2
    )  # the first cell it needs, after the markdown one

    tests = {s.code.splitlines()[-1]: s for s in by_source(snippets, "tests/test_shapes.py")}
    circle = tests["assert Circle(2).scaled(3).radius == 6"]
    # The test's body after the imports it uses; not pytest's import, and not the docstring.
    assert circle.code == "from geolib.shapes import Circle\n\nassert Circle(2).scaled(3).radius == 6"
    assert tests["assert area(width, 1) == width"].undefined == ["width"]  # a fixture


def test_self_contained_usage_of_more_of_the_package_ranks_first(tmp_path):
    snippets = harvest(tmp_path)
    needs_data = by_source(snippets, "examples/needs_data.py")[0]
    assert needs_data.needs == ["reads widths.csv"]
    fixture = next(s for s in snippets if s.undefined == ["width"])
    session = next(s for s in snippets if "Circle(1.5)" in s.code)
    assert snippets.index(session) < snippets.index(needs_data)
    assert snippets.index(session) < snippets.index(fixture)
    assert [s.score for s in snippets] == sorted((s.score for s in snippets), reverse=True)

    chosen = usage.for_prompt(snippets, budget_tokens=10_000)
    assert 0 < len(chosen) <= 3
    assert all(not s.undefined and not s.needs for s in chosen)
    assert all(sum(c.source == s.source for c in chosen) <= 2 for s in chosen)  # variety over repetition
    raising = next(s for s in snippets if "pytest.raises" in s.code)
    assert raising.needs == ["needs pytest"]  # how to test it, not how to use it
    assert usage.for_prompt(snippets, budget_tokens=5) == []


def test_code_that_never_touches_the_package_is_not_usage(tmp_path):
    files = {
        "README.md": "```python\nimport numpy as np\nprint(np.arange(3))\n```\n",
        "geolib/__init__.py": "def area(w, h):\n    return w * h\n",
        "examples/plot.py": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n",
    }
    assert harvest(tmp_path, files) == []


def test_nothing_is_imported_or_run_while_harvesting(tmp_path):
    marker = tmp_path / "ran"
    files = {
        "README.md": f"```python\nimport boom\nopen({str(marker)!r}, 'w').write('x')\nboom.go()\n```\n",
        "boom/__init__.py": f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(1)\ndef go():\n    pass\n",
        "examples/run_me.py": f"import boom\n\nopen({str(marker)!r}, 'w').write('x')\nboom.go(1)\n",
    }
    snippets = harvest(tmp_path, files)
    assert {s.source for s in snippets} == {"README.md", "examples/run_me.py"}
    assert not marker.exists()


# The survey step and the generate prompt ----------------------------------------------------------------


def surveyed(tmp_path, profile_name="local", files=GEOLIB, **config):
    """A run of the profile whose clone holds `files`, after the survey step (purpose already known)."""
    from distill.profiles import load_profile

    profile = load_profile(profile_name, config).model_dump()
    run = make_run(profile_name=profile_name, config=profile, status=Run.Status.SURVEYING)
    root = repository.clone_dir(run)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    repository.survey_source(run)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_in_a_small_context_the_digest_and_usage_replace_the_files_and_nothing_is_rated(tmp_path):
    run = surveyed(tmp_path)  # the local profile: 4,096 tokens of context

    assert "context of 4096 tokens" in run.rating_skipped
    assert not LLMCall.objects.filter(run=run).exists()
    assert run.file_ratings.exists() and not run.file_ratings.exclude(rating=None).exists()
    # Unrated, the files the usage in the prompt comes from are taken first.
    prompt_sources = set(run.usage_snippets.filter(in_prompt=True).values_list("source", flat=True))
    selected = set(run.file_ratings.filter(selected=True).values_list("path", flat=True))
    assert prompt_sources & selected

    snippets = list(run.usage_snippets.all())
    assert snippets and {s.kind for s in snippets} >= {"readme", "docs", "doctest", "example", "test"}
    in_prompt = [s for s in snippets if s.in_prompt]
    usage_budget, digest_budget = usage.budgets(run.config)
    assert 0 < sum(s.tokens for s in in_prompt) <= usage_budget and all(not s.undefined for s in in_prompt)
    assert (
        "from geolib import area\ndef area(width, height): ...  # The area of a rectangle." in run.api_digest
    )
    assert survey.count_tokens(run.api_digest) <= digest_budget

    block = usage.prompt_block(run, files="--- FILE: geolib/core.py ---\n...")
    assert block.startswith("How the authors use it")
    assert f"# From {in_prompt[0].source}, {in_prompt[0].where}:\n{in_prompt[0].code}" in block
    assert "The repository's API" in block and "--- FILE:" not in block


@pytest.mark.django_db
def test_in_a_large_context_the_usage_and_digest_go_before_the_files(tmp_path):
    run = surveyed(tmp_path, context_tokens=16384)

    # Every file and the digest fit the budget: a CPU model's ratings would change nothing.
    assert (
        run.rating_skipped.startswith("Files not rated: all ")
        and "fit the budget of 2400 tokens" in run.rating_skipped
    )
    assert not LLMCall.objects.filter(run=run).exists()
    block = usage.prompt_block(run, files="--- FILE: geolib/core.py ---\n...")
    assert (
        block.index("How the authors use it") < block.index("The repository's API") < block.index("--- FILE:")
    )


@pytest.mark.django_db
def test_files_are_rated_by_a_providers_model_or_when_the_profile_asks(tmp_path):
    files = {"README.md": "# geolib\n", "geolib/__init__.py": "def area(w, h):\n    return w * h\n"}
    replies = cassette(tmp_path / "c.json", [("rate", ratings("geolib/__init__.py"))] * 2)
    run = surveyed(tmp_path, "gpt-5", files, replay=str(replies))
    assert run.rating_skipped == "" and LLMCall.objects.filter(run=run, stage="rate").count() == 1
    assert run.file_ratings.get(path="geolib/__init__.py").rating == 8

    run = surveyed(tmp_path, "local", files, replay=str(replies), rate_files=True)
    assert run.rating_skipped == "" and LLMCall.objects.filter(run=run, stage="rate").count() == 1

    run = surveyed(tmp_path, "gpt-5", files, replay=str(replies), rate_files=False)
    assert "rate_files is false" in run.rating_skipped and not LLMCall.objects.filter(run=run).exists()


@pytest.mark.django_db
def test_a_survey_done_again_harvests_again_without_duplicates(tmp_path):
    run = surveyed(tmp_path)
    count = run.usage_snippets.count()
    run.status = Run.Status.SURVEYING
    repository.survey_source(run)
    assert run.usage_snippets.count() == count
