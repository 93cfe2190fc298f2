"""The admin's edits of examples and tags: an embedding always says what the example's text says now."""

import pytest
from django.forms import CheckboxInput, SplitDateTimeWidget
from django.urls import reverse
from django_q.models import Task

from library import search, semantic, services
from library.models import Example, Tag
from library.services import example_approve
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

needs_model = pytest.mark.skipif(not semantic.available(), reason="the semantic model is not installed")


def approve(curator, slug, title, summary, tags):
    run = make_run(source_url=f"https://github.com/lab/{slug}", source_title=f"lab/{slug}")
    make_iteration(run, 1)
    return example_approve(run=run, approved_by=curator, title=title, summary=summary, tags=tags)


@pytest.fixture
def examples(curator):
    made = {
        "phonons": approve(
            curator,
            "phonons",
            "Phonon band structure of silicon",
            "Plots the phonon dispersion.",
            ["physics"],
        ),
        "md": approve(curator, "md", "Molecular dynamics of argon", "Integrates Newton's laws.", ["physics"]),
        "stats": approve(
            curator, "stats", "Bootstrap confidence intervals", "Resamples a mean.", ["statistics"]
        ),
    }
    # What the approve page does; without the model, a stand-in vector marks "has an embedding".
    for example in made.values():
        Example.objects.filter(pk=example.pk).update(embedding=b"\x01" * 4 * semantic.DIMENSIONS)
    return made


@pytest.fixture
def admin(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="a-long-test-password-42"))
    return client


def form_data(admin, url: str, **changes) -> dict:
    """The admin form's current values as the browser would post them, with changes."""
    form = admin.get(url).context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field.widget, SplitDateTimeWidget):
            date, time = field.widget.decompress(value)
            data[f"{name}_0"], data[f"{name}_1"] = date or "", time or ""
        elif isinstance(field.widget, CheckboxInput):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
    data.update(changes)
    return data


def embedding(example):
    return Example.objects.get(pk=example.pk).embedding


def change_example(admin, example, **changes):
    url = reverse("admin:library_example_change", args=[example.pk])
    response = admin.post(url, form_data(admin, url, **changes))
    assert response.status_code == 302, response.context["adminform"].form.errors


def test_editing_the_title_summary_or_tags_clears_the_embedding(
    admin, examples, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(semantic, "model_dir", lambda: None)  # cleared, and nothing to compute it again
    stats = Tag.objects.get(name="statistics")
    phonons, md, bootstrap = examples["phonons"], examples["md"], examples["stats"]
    with django_capture_on_commit_callbacks(execute=True):
        change_example(admin, phonons, title="Horse riding for beginners")
        change_example(admin, md, summary="Something else entirely.")
        change_example(admin, bootstrap, tags=[stats.pk, Tag.objects.create(name="horses").pk])
    assert Example.objects.get(pk=phonons.pk).title == "Horse riding for beginners"
    assert embedding(phonons) is None and embedding(md) is None and embedding(bootstrap) is None


def test_editing_anything_else_keeps_the_embedding(admin, examples, django_capture_on_commit_callbacks):
    example = examples["phonons"]
    before = embedding(example)
    with django_capture_on_commit_callbacks(execute=True):
        change_example(admin, example, example_type="tutorial", python_version="3.12")
    assert Example.objects.get(pk=example.pk).example_type == "tutorial"
    assert embedding(example) == before


def test_a_cleared_embedding_is_never_ranked_by_its_old_text(examples):
    example = examples["phonons"]
    Example.objects.filter(pk=example.pk).update(title="Horse riding for beginners", summary="Trotting.")
    services.example_embeddings_refresh(example_ids=[example.pk])  # before the commit: cleared, not computed
    ids, _matrix = search._vectors(Example.objects.listed())
    assert example.pk not in ids and len(ids) == 2


@needs_model
def test_an_edited_example_is_embedded_again_from_its_new_text(
    admin, examples, django_capture_on_commit_callbacks
):
    import numpy as np

    example = examples["phonons"]
    with django_capture_on_commit_callbacks(execute=True):
        change_example(admin, example, title="Horse riding for beginners", summary="Trotting and cantering.")
    edited = Example.objects.prefetch_related("tags").get(pk=example.pk)
    assert edited.semantic_text == "Horse riding for beginners. physics. Trotting and cantering."
    expected = semantic.encode([edited.semantic_text])[0]
    assert np.abs(np.frombuffer(edited.embedding, np.float32) - expected).max() < 1e-5
    assert search.ranked_ids("equestrian lessons", within=Example.objects.listed())[0] == example.pk


@needs_model
def test_renaming_a_tag_embeds_each_of_its_examples_again(
    admin, examples, django_capture_on_commit_callbacks
):
    import numpy as np

    tag = Tag.objects.get(name="physics")
    untouched = embedding(examples["stats"])
    url = reverse("admin:library_tag_change", args=[tag.pk])
    with django_capture_on_commit_callbacks(execute=True):
        assert admin.post(url, {"name": "classical-mechanics"}).status_code == 302
    for key in ("phonons", "md"):
        example = Example.objects.prefetch_related("tags").get(pk=examples[key].pk)
        assert "classical-mechanics" in example.semantic_text
        expected = semantic.encode([example.semantic_text])[0]
        assert np.abs(np.frombuffer(example.embedding, np.float32) - expected).max() < 1e-5
    assert embedding(examples["stats"]) == untouched


def test_deleting_a_tag_refreshes_its_examples(
    admin, examples, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(semantic, "model_dir", lambda: None)
    tag = Tag.objects.get(name="physics")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(reverse("admin:library_tag_delete", args=[tag.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Tag.objects.filter(name="physics").exists()
    assert embedding(examples["phonons"]) is None and embedding(examples["md"]) is None
    assert embedding(examples["stats"]) is not None

    statistics = Tag.objects.get(name="statistics")
    changelist = reverse("admin:library_tag_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(
            changelist, {"action": "delete_selected", "_selected_action": [statistics.pk], "post": "yes"}
        )
    assert not Tag.objects.exists() and embedding(examples["stats"]) is None


@needs_model
def test_many_examples_are_embedded_again_by_a_worker(
    examples, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "EMBED_AT_ONCE", 1)
    ids = [example.pk for example in examples.values()]
    with django_capture_on_commit_callbacks(execute=True):
        services.example_embeddings_refresh(example_ids=ids)
    assert Task.objects.filter(func="library.tasks.embed_examples", success=True).count() == 1
    assert Example.objects.filter(pk__in=ids, embedding__isnull=True).count() == 0
    assert all(len(embedding(example)) == 4 * semantic.DIMENSIONS for example in examples.values())
    assert all(embedding(example) != b"\x01" * 4 * semantic.DIMENSIONS for example in examples.values())


@needs_model
def test_an_embedding_computed_from_text_that_changed_meanwhile_is_not_written(examples, monkeypatch):
    # A bulk embed read the old title; an edit lands before it writes: the edit's own embedding comes later.
    example = examples["phonons"]
    Example.objects.filter(pk=example.pk).update(embedding=None)
    real_encode = semantic.encode

    def encode_then_edit(texts):
        Example.objects.filter(pk=example.pk).update(title="Horse riding")
        return real_encode(texts)

    monkeypatch.setattr(semantic, "encode", encode_then_edit)
    search.embed_missing(Example.objects.filter(pk=example.pk))
    assert embedding(example) is None
