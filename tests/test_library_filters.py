"""One definition of the library's filters (library/filters.py): the page, its export, the JSON API and a
review queue made from the same parameters hold the same examples, in the same order."""

import json

import pytest
from django.urls import reverse

from library.filters import BadParameter, LibraryFilters
from library.models import Example, ExampleCheck
from library.services import example_approve, example_retract
from reviews.models import ReviewQueue, ScoringForm
from tests.conftest import logged_in
from tests.factories import make_iteration, make_run
from tests.test_export import unzip
from tests.test_reviews import CODEDISTILLER, shipped_forms

pytestmark = pytest.mark.django_db

FAST = "openai/gpt-mini"
CLAUDE = "anthropic/claude-x"

# name: (title, tags, language, example_type, gpu, model_code, model_fast, score, share of the repository used)
LIBRARY = {
    "phonons": ("Phonon band structure", ["phonons", "dft"], "python", "demonstration", False, "openai/gpt-x", FAST, 4.5, 0.8),
    "gpu": ("Phonon dispersion on the GPU", ["phonons"], "Python", "Benchmark", True, CLAUDE, FAST, 3.2, 0.05),
    "julia": ("Spectra peak fitting", ["spectra"], "julia", "demonstration", False, FAST, "", None, None),
    "gap": ("Band gap from spectra", ["spectra", "dft"], "python", "benchmark", True, "openai/gpt-x", CLAUDE, 2.0, 0.3),
    "graphs": ("Shortest paths in graphs", ["graphs"], "python", "tutorial", False, CLAUDE, CLAUDE, 3.9, 0.02),
}  # fmt: skip
# Each example's checks (library/health.py), oldest first: `health` is the verdict of the newest that has one.
CHECKS = {
    "phonons": ["passed", "broken"],
    "gpu": ["broken", "passed", "error"],  # "could not check" is no verdict
    "gap": ["drifted"],
    "graphs": ["running"],  # no verdict yet
}
# Each example's requirements.txt: `requirement` matches names as pip compares them, never a comment.
REQUIREMENTS = {
    "phonons": "Phonopy>=2.20  # the band structure\nnumpy\n",
    "gpu": "phonopy\ntorch==2.5.1\n",
    "julia": "# numpy, in a comment\n",
    "gap": "numpy==2.1.0; python_version >= '3.10'\nscikit_learn\n",
    "graphs": "networkx\nnumpy-financial\n",
}


@pytest.fixture
def library(curator):
    made = {}
    for name, (title, tags, language, kind, gpu, code, fast, score, share) in LIBRARY.items():
        run = make_run(source_url=f"https://github.com/lab/{name}", source_title=f"lab/{name}")
        make_iteration(run, 1, main=f"# {title}\nprint('{name}')\n")
        example = example_approve(run=run, approved_by=curator, title=title, summary=f"{title}.", tags=tags)
        Example.objects.filter(pk=example.pk).update(
            language=language, example_type=kind, gpu_required=gpu, model_code=code, model_fast=fast,
            score=score, score_count=0 if score is None else 2,
            usage=None if share is None else {"repo_share_covered": share},
            files={**example.files, "requirements.txt": REQUIREMENTS[name]},
        )  # fmt: skip
        made[name] = example
        for status in CHECKS.get(name, []):
            ExampleCheck.objects.create(example=example, status=status, reason=f"{status}.")
    # Neither a retracted example nor an older version is listed anywhere.
    retracted = make_run(source_url="https://github.com/lab/retracted")
    make_iteration(retracted, 1)
    gone = example_approve(run=retracted, approved_by=curator, title="Phonon band retracted", summary="Gone.")
    example_retract(example=gone, retracted_by=curator, reason="Wrong.")
    return made


CASES = [
    ({}, {"phonons", "gpu", "julia", "gap", "graphs"}),
    ({"q": "band"}, None),
    ({"q": "phonon band", "gpu": "false"}, None),
    ({"q": "spectra", "tag": "dft"}, None),
    ({"tag": "dft"}, {"phonons", "gap"}),
    ({"tag": ["phonons", "dft"]}, {"phonons"}),
    ({"language": "PYTHON"}, {"phonons", "gpu", "gap", "graphs"}),
    ({"example_type": "benchmark"}, {"gpu", "gap"}),
    ({"type": "Benchmark"}, {"gpu", "gap"}),  # the library page's former spelling
    ({"gpu": "true"}, {"gpu", "gap"}),
    ({"gpu": "no"}, {"phonons", "julia", "graphs"}),
    ({"model": FAST}, {"phonons", "gpu", "julia"}),  # the code model or the fast model
    ({"model": CLAUDE}, {"gpu", "gap", "graphs"}),
    ({"source": "https://github.com/lab/julia"}, {"julia"}),
    ({"min_score": "3.5"}, {"phonons", "graphs"}),
    ({"score": "3-4"}, {"gpu", "graphs"}),
    ({"score": "unscored"}, {"julia"}),
    ({"usage": "little"}, {"gpu", "graphs"}),
    ({"usage": "tenth", "language": "python"}, {"gap"}),
    ({"requirement": "numpy"}, {"phonons", "gap"}),
    ({"requirement": "PHONOPY", "gpu": "true"}, {"gpu"}),
    ({"requirement": "scikit-learn"}, {"gap"}),
    ({"q": "band", "requirement": "numpy"}, None),
    ({"health": "broken"}, {"phonons"}),
    ({"health": "passed"}, {"gpu"}),
    ({"health": "drifted", "tag": "dft"}, {"gap"}),
    ({"health": "unchecked"}, {"julia", "graphs"}),
    ({"health": "unchecked", "q": "spectra"}, None),
]
SORTS = [{}, {"sort": "newest"}, {"sort": "score"}, {"sort": "relevance"}]


@pytest.mark.parametrize("params, expected", CASES, ids=[json.dumps(params) for params, _ in CASES])
def test_the_page_its_export_the_api_and_a_review_queue_hold_the_same_examples_in_the_same_order(
    client, curator, expert, library, params, expected
):
    shipped_forms()
    form = ScoringForm.objects.get(name=CODEDISTILLER)
    curator_client = logged_in(curator)
    names = {example.pk: name for name, example in library.items()}
    for sort in SORTS:
        asked = {**params, **sort}
        page = [row.pk for row in client.get(reverse("library"), asked).context["rows"]]
        index = json.loads(unzip(client.get(reverse("library_export"), asked)).read("index.json"))
        api = client.get(reverse("api_examples"), {**asked, "page_size": 100}).json()
        queue_post = {"name": f"Queue {asked}", "form": form.pk, "scores_needed": 1, "experts": [expert.pk],
                      "all_matching": "on", "create": "", **asked}  # fmt: skip
        made = curator_client.post(reverse("review_queue_new"), queue_post)
        queue = ReviewQueue.objects.get(name=f"Queue {asked}") if made.status_code == 302 else None

        assert page, f"{asked}: the page lists nothing; the case proves nothing"
        assert [entry["id"] for entry in index["examples"]] == page, asked
        assert [item["id"] for item in api["results"]] == page, asked
        assert list(queue.items.order_by("id").values_list("example_id", flat=True)) == page, asked
        assert queue.saved_search == LibraryFilters.parse(asked).as_params()
        if expected is not None:
            assert {names[pk] for pk in page} == expected, asked


def test_the_orders_differ_so_that_the_test_above_tells_them_apart(client, library):
    newest = [row.pk for row in client.get(reverse("library")).context["rows"]]
    best = [row.pk for row in client.get(reverse("library"), {"sort": "score"}).context["rows"]]
    assert newest == [library[name].pk for name in ["graphs", "gap", "julia", "gpu", "phonons"]]
    assert best == [library[name].pk for name in ["phonons", "graphs", "gpu", "gap", "julia"]]


def test_the_page_lists_a_fast_models_examples_as_its_download_holds_them(client, library):
    response = client.get(reverse("library"), {"model": FAST})
    assert {row.pk for row in response.context["rows"]} == {
        library[n].pk for n in ("phonons", "gpu", "julia")
    }
    model = next(panel for panel in response.context["facets"] if panel["param"] == "model")
    counts = {value["label"]: value["count"] for value in model["values"]}
    # An example whose code and fast model are the same is counted once.
    assert counts == {FAST: 3, CLAUDE: 3, "openai/gpt-x": 2}


def test_values_that_differ_only_in_case_are_one_facet_value(client, library):
    panels = {panel["param"]: panel for panel in client.get(reverse("library")).context["facets"]}
    languages = {value["label"]: value["count"] for value in panels["language"]["values"]}
    assert languages == {"python": 4, "julia": 1}
    types = {value["label"]: value["count"] for value in panels["example_type"]["values"]}
    assert types == {"demonstration": 2, "benchmark": 2, "tutorial": 1}


def test_the_page_says_which_parameters_it_left_out_and_lists_the_rest(client, library):
    response = client.get(reverse("library"), {"gpu": "maybe", "score": "5", "tag": "dft"})
    assert response.status_code == 200
    assert {row.pk for row in response.context["rows"]} == {library["phonons"].pk, library["gap"].pk}
    page = response.content.decode()
    assert "Left out: gpu must be true or false, not &#x27;maybe&#x27;; score must be one of" in page
    # Its links carry only what it understood.
    assert "maybe" not in response.context["filter_query"]


def test_a_search_carries_each_hits_relevance_in_every_order(client, library):
    by_order = {}
    for sort in ("relevance", "newest", "score"):
        results = client.get(reverse("api_examples"), {"q": "phonon band", "sort": sort}).json()["results"]
        by_order[sort] = {item["id"]: item["relevance"] for item in results}
    assert by_order["relevance"] == by_order["newest"] == by_order["score"]
    relevance = list(by_order["relevance"].values())
    assert relevance == sorted(relevance, reverse=True) and 0 < relevance[-1] <= relevance[0] <= 1
    assert client.get(reverse("api_examples")).json()["results"][0]["relevance"] is None


def test_the_page_shows_a_package_filter_and_a_queue_picker_keeps_it(client, curator, library):
    page = client.get(reverse("library"), {"requirement": "numpy"})
    assert ("Needs package", "numpy", reverse("library")) in page.context["chosen"]
    picker = logged_in(curator).get(reverse("review_queue_new"), {"requirement": "numpy", "tag": "dft"})
    assert ("requirement", "numpy") in picker.context["kept_filters"]
    assert {example.pk for example in picker.context["page"]} == {library["phonons"].pk, library["gap"].pk}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"min_score": "nan"}, "min_score must be a finite number, not 'nan'"),
        ({"min_score": "1e999"}, "min_score must be a finite number, not '1e999'"),
        ({"requirement": "numpy>=2"}, "requirement must be a package name such as numpy, not 'numpy>=2'"),
        ({"health": "sick"}, "health must be one of passed, changed, drifted, broken, unchecked, not 'sick'"),
    ],
)
def test_non_finite_scores_and_requirement_lines_are_bad_parameters(params, message):
    filters = LibraryFilters.parse(params)
    assert filters.errors == ((next(iter(params)), message),) and filters.as_params() == {}
    with pytest.raises(BadParameter, match=message.split(",")[0]):
        filters.check()


def test_parse_keeps_the_good_parameters_and_check_refuses_the_bad_ones():
    filters = LibraryFilters.parse({"q": " x ", "tag": ["B c", "a", ""], "gpu": "YES", "min_score": "high"})
    assert filters.q == "x" and filters.tags == ("a", "b-c") and filters.gpu is True
    assert filters.min_score is None and filters.errors == (
        ("min_score", "min_score must be a number, not 'high'"),
    )
    with pytest.raises(BadParameter, match="min_score must be a number"):
        filters.check()
    assert LibraryFilters.parse(filters.as_params()) == filters
    assert LibraryFilters.parse({"sort": "relevance"}).order == "newest"  # relevance needs words


def test_the_health_facet_counts_each_examples_newest_verdict(client, library):
    panels = {panel["param"]: panel for panel in client.get(reverse("library")).context["facets"]}
    counts = {value["label"]: value["count"] for value in panels["health"]["values"]}
    assert counts == {"verified": 1, "drifted": 1, "broken": 1, "not checked yet": 2}
