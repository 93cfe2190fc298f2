import math
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from library import search, semantic
from library.models import Example, Tag
from library.services import example_approve, example_retract
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

needs_model = pytest.mark.skipif(not semantic.available(), reason="the semantic model is not installed")

# A small corpus: each entry is (source, title, summary, tags, main.py).
CORPUS = [
    (
        "materialsproject/phonopy-demo",
        "Phonon band structure of silicon",
        "Computes the phonon dispersion of bulk silicon with finite displacements and plots the bands.",
        ["phonons"],
        "from phonopy import Phonopy\nbands = phonon.get_band_structure_dict()\n",
    ),
    (
        "lab/gnn-energies",
        "Graph neural network for formation energies",
        "Trains a small message-passing network on crystal graphs to predict formation energy per atom.",
        ["machine-learning"],
        "import torch\nmodel = CGCNN(hidden=64)\nloss = mse(model(graph), energy)\n",
    ),
    (
        "lab/md-lennard-jones",
        "Molecular dynamics of a Lennard-Jones fluid",
        "Runs a velocity Verlet integration of argon atoms and reports the radial distribution function.",
        ["simulation"],
        "def velocity_verlet(positions, velocities, forces, dt):\n    return positions + velocities * dt\n",
    ),
    (
        "lab/xrd-fit",
        "Rietveld refinement of an X-ray diffraction pattern",
        "Fits lattice parameters to a powder diffraction pattern by least squares.",
        ["diffraction"],
        "from scipy.optimize import least_squares\nresult = least_squares(residual, x0)\n",
    ),
    (
        "lab/dft-relax",
        "Relaxing a crystal structure with density functional theory",
        "Uses a plane-wave DFT code to relax the cell and ions of a perovskite.",
        ["dft"],
        "calc = Espresso(ecutwfc=40)\natoms.calc = calc\nBFGS(atoms).run(fmax=0.01)\n",
    ),
]


def approve_source(curator, source, title, summary, tags, code):
    run = make_run(source_url=f"https://github.com/{source}", source_title=source)
    make_iteration(run, 1, main=code)
    return example_approve(run=run, approved_by=curator, title=title, summary=summary, tags=tags)


@pytest.fixture
def corpus(curator):
    examples = {entry[0]: approve_source(curator, *entry) for entry in CORPUS}
    if semantic.available():  # approving embeds once the transaction commits, which a test's never does
        search.embed_missing(Example.objects.all())
    return examples


def first(q, **kwargs):
    ids = search.ranked_ids(q, within=Example.objects.listed(), **kwargs)
    return Example.objects.get(pk=ids[0]).source_url.removeprefix("https://github.com/") if ids else None


@pytest.mark.parametrize(
    "q, expected",
    [
        ("phonon band structure", "materialsproject/phonopy-demo"),  # title
        ("formation energy", "lab/gnn-energies"),  # summary, stemmed
        ("velocity_verlet", "lab/md-lennard-jones"),  # code, snake_case split as the index does
        ("least_squares", "lab/xrd-fit"),
        ("dft-relax", "lab/dft-relax"),  # the repository's name, with a dash
        ("diffraction", "lab/xrd-fit"),  # a tag
    ],
)
def test_full_text_ranks_the_expected_example_first(corpus, q, expected):
    assert first(q, use_semantic=False) == expected


@needs_model
def test_semantic_search_finds_a_synonym_that_shares_no_word(corpus):
    # No example has any of these words (full text finds nothing), but their meaning is plain.
    for q, expected in [
        ("trajectory of particles under classical interatomic potentials", "lab/md-lennard-jones"),
        ("crystallography peak matching", "lab/xrd-fit"),
    ]:
        assert not search.ranked_ids(q, within=Example.objects.listed(), use_semantic=False)
        assert first(q, use_semantic=True) == expected


@needs_model
def test_hybrid_search_keeps_the_full_text_winners_first(corpus):
    for q, expected in [
        ("phonon band structure", "materialsproject/phonopy-demo"),
        ("least_squares", "lab/xrd-fit"),
    ]:
        assert first(q, use_semantic=True) == expected


@needs_model
def test_approving_embeds_the_new_example_once_it_commits(curator_client, django_capture_on_commit_callbacks):
    run = make_run()
    make_iteration(run, 1)
    data = {"iteration": 1, "title": "Squares", "summary": "Squares numbers."}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        curator_client.post(reverse("run_approve", args=[run.pk]), data)
    example = Example.objects.get()
    assert not example.embedding, "not in the request: a worker embeds it"
    assert "indexing" in curator_client.get(reverse("example_detail", args=[example.pk])).content.decode()
    for callback in callbacks:  # the commit: the task runs (in-process in the test settings)
        callback()
    assert len(Example.objects.get().embedding) == semantic.DIMENSIONS * 4


@needs_model
def test_the_embedding_ranks_obvious_pairs(db):
    food, bread, horse = semantic.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    )
    assert food @ bread > 0.7 > food @ horse
    assert abs(float(food @ food) - 1.0) < 1e-5


@needs_model
def test_it_gives_the_vector_it_gave_before_the_batched_forward_pass(db):
    import numpy as np

    # The first components of "A man is eating food." from the one-text-at-a-time pass this one replaced.
    vector = semantic.encode(["A man is eating food."])[0]
    expected = [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617]
    assert np.allclose(vector[:6], expected, atol=1e-5)


@needs_model
@pytest.mark.parametrize("batch", [semantic.BATCH, 3])
def test_a_padded_batch_embeds_each_text_as_it_is_embedded_alone(db, monkeypatch, batch):
    import numpy as np

    monkeypatch.setattr(semantic, "BATCH", batch)
    texts = [
        "Phonons.",
        "",
        "A man is eating a piece of bread.",
        "Graph neural network for formation energies. machine-learning. " * 8,  # cut at MAX_TOKENS
        "Relaxing a crystal structure with density functional theory: ünïcödé, 数値計算.",
        "Phonons.",
    ]
    together = semantic.encode(texts)
    tokens = semantic._model().tokenize(texts)
    assert len({len(ids) for ids in tokens}) >= 4  # lengths differ: the batch is padded
    assert max(len(ids) for ids in tokens) == semantic.MAX_TOKENS
    for text, vector in zip(texts, together, strict=True):
        assert np.abs(semantic.encode([text])[0] - vector).max() < 1e-5
    assert np.array_equal(together[0], together[5])


@needs_model
def test_gelu_is_the_exact_one():
    import numpy as np

    x = np.linspace(-8, 8, 100_003, dtype=np.float32)
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    computed = x.copy()
    semantic._gelu(computed, chunk=4096)  # several pieces, the last one short
    assert np.abs(computed - expected).max() < 2e-6


def test_search_works_full_text_only_without_the_model(corpus, client, monkeypatch):
    monkeypatch.setattr(semantic, "model_dir", lambda: None)
    assert not semantic.available()
    response = client.get(reverse("library"), {"q": "phonon"})
    assert response.status_code == 200
    assert [row.pk for row in response.context["rows"]] == [corpus["materialsproject/phonopy-demo"].pk]


@pytest.mark.parametrize(
    "q",
    [
        '"',
        'phonon"',
        "-",
        "a:b",
        "NEAR(x y)",
        "*",
        "AND OR NOT",
        "^title",
        "((",
        "'; DROP TABLE x; --",
        "é ü",
    ],
)
def test_query_syntax_never_fails(corpus, client, q):
    response = client.get(reverse("library"), {"q": q})
    assert response.status_code == 200


def test_terms_are_letters_and_digits_only():
    assert search.terms('phonon "band" -structure mean_squared x:y') == [
        ["phonon"], ["band"], ["structure"], ["mean", "squared"], ["x"], ["y"],
    ]  # fmt: skip
    assert search.fts_query([["mean", "squared"], ["x"]]) == '"mean squared" "x"'


def test_a_query_with_a_word_nobody_has_falls_back_to_any_word(corpus):
    assert first("phonon zzzunknownword", use_semantic=False) == "materialsproject/phonopy-demo"


def test_snippets_mark_the_words_and_escape_the_code(curator, client):
    example = approve_source(
        curator,
        "lab/xss",
        "Plotting a chart",
        "Draws a chart.",
        [],
        "html = '<script>alert(1)</script> quokka'\n",
    )
    response = client.get(reverse("library"), {"q": "quokka"})
    page = response.content.decode()
    snippet = response.context["rows"][0].snippet
    assert response.context["rows"][0].pk == example.pk
    assert "<mark>quokka</mark>" in snippet and "<script" not in snippet
    if connection.vendor == "sqlite":  # Postgres' ts_headline drops what looks like a tag instead
        assert "&lt;script&gt;" in snippet
    assert "<script>alert" not in page


def test_mark_never_lets_stray_markers_make_markup():
    text = "a \ue000b\ue001 \ue001<i>\ue000 c"
    assert search.mark(text) == "a <mark>b</mark> &lt;i&gt; c"


def test_retracted_examples_leave_search(corpus, curator):
    example = corpus["lab/xrd-fit"]
    example_retract(example=example, retracted_by=curator, reason="Wrong.")
    assert example.pk not in search.ranked_ids("diffraction", within=Example.objects.listed())


def test_a_new_version_replaces_the_old_in_results(corpus, curator):
    old = corpus["lab/xrd-fit"]
    new = approve_source(curator, "lab/xrd-fit", "Rietveld refinement, version two", "Better.", [], "x = 1\n")
    ids = search.ranked_ids("rietveld", within=Example.objects.listed())
    assert new.pk in ids and old.pk not in ids


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the FTS5 index is SQLite's")
def test_the_index_follows_edits_tags_and_deletes(corpus):
    example = corpus["lab/dft-relax"]
    listed = Example.objects.listed()
    Example.objects.filter(pk=example.pk).update(summary="Now about wombats.")
    assert search.ranked_ids("wombats", within=listed, use_semantic=False) == [example.pk]
    example.tags.add(Tag.objects.create(name="numbat"))
    assert search.ranked_ids("numbat", within=listed, use_semantic=False) == [example.pk]
    Tag.objects.filter(name="numbat").update(name="quoll")
    assert search.ranked_ids("quoll", within=listed, use_semantic=False) == [example.pk]
    example.tags.clear()
    assert search.ranked_ids("quoll", within=listed, use_semantic=False) == []
    example.delete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM library_example_fts WHERE rowid = %s", [example.pk])
        assert cursor.fetchone()[0] == 0


def test_search_results_are_ranked_and_filtered_in_the_page(corpus, client):
    response = client.get(reverse("library"), {"q": "crystal"})
    ids = [row.pk for row in response.context["rows"]]
    assert set(ids) >= {corpus["lab/gnn-energies"].pk, corpus["lab/dft-relax"].pk}
    filtered = client.get(reverse("library"), {"q": "crystal", "tag": "dft"})
    assert [row.pk for row in filtered.context["rows"]] == [corpus["lab/dft-relax"].pk]
    assert filtered.context["sort"] == "relevance"


@needs_model
def test_embed_examples_embeds_the_missing_ones_and_with_all_every_one_again(corpus):
    import numpy as np

    stale = corpus["lab/xrd-fit"]
    Example.objects.filter(pk=stale.pk).update(embedding=np.zeros(semantic.DIMENSIONS, np.float32).tobytes())
    Example.objects.filter(pk=corpus["lab/dft-relax"].pk).update(embedding=None)
    out = StringIO()

    call_command("embed_examples", stdout=out)
    assert "done: 1 example(s) embedded" in out.getvalue()
    assert not Example.objects.filter(embedding__isnull=True).exists()
    assert not np.frombuffer(Example.objects.get(pk=stale.pk).embedding, np.float32).any()

    call_command("embed_examples", "--all", "--batch", "2", stdout=out)
    assert f"done: {len(CORPUS)} example(s) embedded" in out.getvalue()
    for example in Example.objects.prefetch_related("tags"):
        expected = semantic.encode([example.semantic_text])[0]
        assert np.abs(np.frombuffer(example.embedding, np.float32) - expected).max() < 1e-5


def test_a_web_process_loads_its_views_and_the_embedding_model_as_it_starts(monkeypatch):
    import importlib

    import codedistiller_site.asgi
    import codedistiller_site.wsgi
    from codedistiller_site import startup

    started = []
    monkeypatch.setattr(startup, "warm_up", lambda: started.append(True))
    importlib.reload(codedistiller_site.wsgi)
    importlib.reload(codedistiller_site.asgi)
    assert started == [True, True]
    monkeypatch.undo()

    models = []
    monkeypatch.setattr(semantic, "warm_in_background", lambda: models.append(True))
    startup.warm_up()
    assert models == [True]
    monkeypatch.undo()

    if not semantic.available():
        assert semantic.warm_in_background() is None
        return
    semantic._model.cache_clear()
    semantic.warm_in_background().join(timeout=120)
    assert semantic._model.cache_info().currsize == 1, "the model is loaded before any search"
