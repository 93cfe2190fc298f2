import os

import pytest
from django.test import Client
from django.urls import reverse

from library.api_auth import api_token_create, api_token_revoke
from library.models import Example, Rejection
from library.services import example_approve, example_retract
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db


def approve(run, user, **kwargs):
    kwargs.setdefault("title", "Mean of squares with minilib")
    kwargs.setdefault("summary", "Computes minilib.mean_squared on three numbers.")
    return example_approve(run=run, approved_by=user, **kwargs)


def approve_url(run):
    return reverse("run_approve", args=[run.pk])


# Approve ----------------------------------------------------------------------------------------------


def test_the_approve_form_requires_the_curator_role(client, reader_client, expert_client):
    run = make_run()
    make_iteration(run, 1)
    assert client.get(approve_url(run)).status_code == 302
    assert reader_client.get(approve_url(run)).status_code == 403
    assert (
        expert_client.post(approve_url(run), {"iteration": 1, "title": "t", "summary": "s"}).status_code
        == 403
    )
    assert not Example.objects.exists()


def test_the_approve_form_defaults_to_the_final_successful_iteration(curator_client):
    run = make_run(source_title="example/minilib")
    make_iteration(run, 1, metadata={"description": "First try."})
    make_iteration(run, 2, metadata={"description": "Squares three numbers."})
    make_iteration(run, 3, succeeded=False)
    page = curator_client.get(approve_url(run)).content.decode()

    assert 'value="2" checked' in page
    assert 'value="example/minilib"' in page and "Squares three numbers." in page


def test_a_curator_approves_an_iteration_with_title_summary_and_tags(curator_client, curator):
    run = make_run()
    make_iteration(run, 1)
    response = curator_client.post(
        approve_url(run),
        {"iteration": 1, "title": "Squares", "summary": "Squares numbers.", "tags": "Statistics, tiny data"},
    )
    example = Example.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "example_detail", args=[example.pk]
    )
    assert (example.title, example.summary, example.approved_by) == ("Squares", "Squares numbers.", curator)
    assert sorted(example.tags.values_list("name", flat=True)) == ["statistics", "tiny-data"]
    page = curator_client.get(response["Location"]).content.decode()
    assert (
        '<pre class="output" data-testid="how-to-run">pip install -r requirements.txt\npython main.py\n</pre>'
        in page
    )


def test_a_failed_iteration_needs_a_reason(curator_client):
    run = make_run(status="failed")
    make_iteration(run, 1, succeeded=False)
    data = {"iteration": 1, "title": "Squares", "summary": "Squares numbers."}
    response = curator_client.post(approve_url(run), data)
    assert response.status_code == 200 and "needs a reason" in response.content.decode()
    assert not Example.objects.exists()

    curator_client.post(approve_url(run), data | {"override_reason": "Only the plot fails."})
    assert Example.objects.get().override_reason == "Only the plot fails."


def test_an_iteration_already_approved_is_refused(curator_client, curator):
    run = make_run()
    make_iteration(run, 1)
    approve(run, curator)
    response = curator_client.post(approve_url(run), {"iteration": 1, "title": "Again", "summary": "Again."})
    assert response.status_code == 200 and "already in the library" in response.content.decode()
    assert Example.objects.count() == 1


def test_an_iteration_that_never_ran_is_not_offered(curator_client):
    run = make_run()
    make_iteration(run, 1)
    make_iteration(run, 2, state="written", exit_code=None, succeeded=None)
    response = curator_client.post(approve_url(run), {"iteration": 2, "title": "t", "summary": "s"})
    assert response.status_code == 200 and not Example.objects.exists()


def test_approving_a_newer_run_makes_a_new_version(curator_client, curator):
    old_run, new_run = make_run(), make_run()
    make_iteration(old_run, 1)
    make_iteration(new_run, 1)
    old = approve(old_run, curator)
    curator_client.post(approve_url(new_run), {"iteration": 1, "title": "Squares v2", "summary": "Better."})
    new = Example.objects.get(run=new_run)
    old.refresh_from_db()

    assert (old.version, new.version, old.is_latest, new.is_latest) == (1, 2, False, True)
    page = curator_client.get(reverse("example_detail", args=[old.pk])).content.decode()
    assert "A newer version exists" in page and reverse("example_detail", args=[new.pk]) in page
    assert (
        "A newer version exists"
        not in curator_client.get(reverse("example_detail", args=[new.pk])).content.decode()
    )


# The run page -----------------------------------------------------------------------------------------


def test_the_run_page_offers_approve_and_reject_to_curators_only(curator_client, reader_client):
    run = make_run()
    make_iteration(run, 1)
    url = reverse("run_detail", args=[run.pk])
    assert approve_url(run) in curator_client.get(url).content.decode()
    page = reader_client.get(url).content.decode()
    assert approve_url(run) not in page and reverse("run_reject", args=[run.pk]) not in page


def test_the_run_page_lists_its_examples_and_rejections(reader_client, curator):
    run = make_run()
    make_iteration(run, 1)
    example = approve(run, curator, title="Squares <b>bold</b>")
    Rejection.objects.create(run=run, reason="Too trivial for the library.", rejected_by=curator)
    page = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert reverse("example_detail", args=[example.pk]) in page
    assert "Squares &lt;b&gt;bold&lt;/b&gt;" in page and "Too trivial for the library." in page


# Reject -----------------------------------------------------------------------------------------------


def test_a_curator_rejects_a_finished_run_with_a_reason(curator_client, curator, reader_client, client):
    run = make_run()
    url = reverse("run_reject", args=[run.pk])
    assert client.post(url, {"reason": "No."}).status_code == 302
    assert reader_client.post(url, {"reason": "No."}).status_code == 403
    assert curator_client.get(url).status_code == 405
    assert not Rejection.objects.exists()

    response = curator_client.post(url, {"reason": "   "}, follow=True)
    assert "Say why" in response.content.decode() and not Rejection.objects.exists()
    curator_client.post(url, {"reason": "The example does not use the repository."})
    rejection = Rejection.objects.get()
    assert (rejection.run, rejection.rejected_by) == (run, curator)


def test_a_running_run_is_not_rejected(curator_client):
    run = make_run(status="executing")
    response = curator_client.post(reverse("run_reject", args=[run.pk]), {"reason": "No."}, follow=True)
    assert "wait for it to finish" in response.content.decode() and not Rejection.objects.exists()


# Retract ----------------------------------------------------------------------------------------------


def test_a_curator_retracts_an_example_with_a_reason(curator_client, curator, expert_client, client):
    run = make_run()
    make_iteration(run, 1)
    example = approve(run, curator)
    url = reverse("example_retract", args=[example.pk])
    assert client.post(url, {"reason": "Wrong."}).status_code == 302
    assert expert_client.post(url, {"reason": "Wrong."}).status_code == 403
    example.refresh_from_db()
    assert example.status == Example.Status.APPROVED

    curator_client.post(url, {"reason": "It plots the wrong axis."})
    example.refresh_from_db()
    assert example.status == Example.Status.RETRACTED and example.retracted_by == curator
    page = client.get(reverse("example_detail", args=[example.pk])).content.decode()
    assert "Retracted" in page and "It plots the wrong axis." in page
    assert reverse("example_detail", args=[example.pk]) not in client.get(reverse("library")).content.decode()

    response = curator_client.post(url, {"reason": "Again."}, follow=True)
    assert "already been retracted" in response.content.decode()


def test_retracting_the_newest_version_shows_the_previous_one_again(client, curator):
    first, second = make_run(), make_run()
    make_iteration(first, 1)
    make_iteration(second, 1)
    approve(first, curator, title="Old squares")
    new = approve(second, curator, title="New squares")
    page = client.get(reverse("library")).content.decode()
    assert "New squares" in page and "Old squares" not in page
    example_retract(example=new, retracted_by=curator, reason="Broken.")
    page = client.get(reverse("library")).content.decode()
    assert "Old squares" in page and "New squares" not in page


# Browse -----------------------------------------------------------------------------------------------


def test_anonymous_visitors_read_the_library_while_it_is_public(client, curator, settings):
    run = make_run()
    make_iteration(run, 1)
    example = approve(run, curator)
    assert client.get(reverse("library")).status_code == 200
    assert client.get(reverse("example_detail", args=[example.pk])).status_code == 200

    settings.LIBRARY_PUBLIC = False
    assert client.get(reverse("library")).status_code == 302
    assert client.get(reverse("example_detail", args=[example.pk])).status_code == 302
    reader = Client()
    reader.force_login(curator)
    assert reader.get(reverse("library")).status_code == 200


def make_examples(curator, count=3, **fields):
    examples = []
    for index in range(count):
        run = make_run(source_url=f"https://github.com/lab/repo{index}", source_title=f"lab/repo{index}")
        make_iteration(
            run, 1, metadata={"description": "x", "example_type": fields.get("type", "demonstration")}
        )
        examples.append(approve(run, curator, title=f"Example {index}", tags=fields.get("tags", [])))
    return examples


def test_facets_count_and_filter(client, curator):
    a, b, c = make_examples(curator, 3, tags=["phonons"])
    Example.objects.filter(pk=c.pk).update(
        gpu_required=True, example_type="tutorial", score=4.5, score_count=2
    )
    Example.objects.filter(pk=b.pk).update(score=2.0, score_count=1, usage={"repo_share_covered": 0.6})
    page = client.get(reverse("library")).content.decode()
    for text in (
        "phonons",
        "demonstration",
        "tutorial",
        "needs a GPU",
        "CPU only",
        "4 and above",
        "half or more",
    ):
        assert text in page

    response = client.get(reverse("library"), {"gpu": "yes"})
    assert [row.pk for row in response.context["rows"]] == [c.pk]
    response = client.get(reverse("library"), {"type": "demonstration", "score": "under-3"})
    assert [row.pk for row in response.context["rows"]] == [b.pk]
    response = client.get(reverse("library"), {"usage": "half"})
    assert [row.pk for row in response.context["rows"]] == [b.pk]
    response = client.get(reverse("library"), {"source": a.source_url})
    assert [row.pk for row in response.context["rows"]] == [a.pk]
    # The GPU facet keeps counting both values while one is chosen: each says what choosing it gives.
    gpu = next(panel for panel in response.context["facets"] if panel["param"] == "gpu")
    assert [value["count"] for value in gpu["values"]] == [1]


def test_sorting_by_score_and_newest(client, curator):
    a, b, c = make_examples(curator, 3)
    Example.objects.filter(pk=a.pk).update(score=4.0)
    Example.objects.filter(pk=c.pk).update(score=2.0)
    best = client.get(reverse("library"), {"sort": "score"}).context["rows"]
    assert [row.pk for row in best] == [a.pk, c.pk, b.pk]
    newest = client.get(reverse("library")).context["rows"]
    assert [row.pk for row in newest] == [c.pk, b.pk, a.pk]


def test_pagination(client, curator):
    make_examples(curator, 23)
    first = client.get(reverse("library"))
    assert len(first.context["rows"]) == 20 and first.context["next_link"]
    second = client.get(first.context["next_link"])
    assert len(second.context["rows"]) == 3


# The example page -------------------------------------------------------------------------------------


def test_the_example_page_shows_code_outputs_and_provenance(client, reader_client, curator):
    run = make_run()
    make_iteration(run, 1, main="print('<script>x</script>')\n", results={"rmse": 0.12})
    example = approve(run, curator)
    page = client.get(reverse("example_detail", args=[example.pk])).content.decode()
    assert "&lt;script&gt;" in page and "<script>x" not in page
    assert "numpy==2.1.0" in page and "rmse" in page and "hello" in page
    assert example.commit_sha[:12] in page
    assert reverse("example_download", args=[example.pk]) in page
    # Runs need a login: anonymous visitors see the provenance without links to them.
    assert reverse("run_detail", args=[run.pk]) not in page
    page = reader_client.get(reverse("example_detail", args=[example.pk])).content.decode()
    assert reverse("run_detail", args=[run.pk]) in page
    assert reverse("iteration_detail", args=[run.pk, 1]) in page


def test_a_paper_example_shows_its_paper(client, curator):
    run = make_run()
    make_iteration(run, 1)
    example = approve(run, curator)
    Example.objects.filter(pk=example.pk).update(
        source_kind="paper", paper_title="Deep phonons", paper_authors="A. Author, B. Author",
        paper_url="https://arxiv.org/abs/2401.00001",
    )  # fmt: skip
    page = client.get(reverse("example_detail", args=[example.pk])).content.decode()
    assert (
        "Deep phonons" in page
        and "A. Author, B. Author" in page
        and "https://arxiv.org/abs/2401.00001" in page
    )


def test_saved_files_are_served_safely(client, curator, tmp_path):
    run = make_run()
    iteration = make_iteration(
        run, 1, saved_files=[{"name": "plot.png", "size": 4}, {"name": "data.csv", "size": 3}]
    )
    folder = iteration.output_dir / "to_save"
    folder.mkdir(parents=True)
    (folder / "plot.png").write_bytes(b"\x89PNG")
    (folder / "data.csv").write_text("a,b")
    example = approve(run, curator)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")

    image = client.get(reverse("example_file", args=[example.pk, "plot.png"]))
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert image["X-Content-Type-Options"] == "nosniff" and "sandbox" in image["Content-Security-Policy"]
    assert "attachment" not in image.get("Content-Disposition", "")
    data = client.get(reverse("example_file", args=[example.pk, "data.csv"]))
    assert data["Content-Type"] == "application/octet-stream" and "attachment" in data["Content-Disposition"]

    assert client.get(reverse("example_file", args=[example.pk, "other.txt"])).status_code == 404
    assert client.get(f"/library/{example.pk}/files/../../secret.txt").status_code == 404
    # A listed file swapped for a link after approval is refused.
    copied = example.files_dir / "to_save" / "data.csv"
    copied.unlink()
    os.symlink(secret, copied)
    assert client.get(reverse("example_file", args=[example.pk, "data.csv"])).status_code == 404


@pytest.mark.parametrize("public", [True, False])
def test_saved_files_open_with_an_api_token_as_the_api_does(client, curator, reader, settings, public):
    settings.LIBRARY_PUBLIC = public
    run = make_run()
    iteration = make_iteration(run, 1, saved_files=[{"name": "plot.png", "size": 4}])
    (iteration.output_dir / "to_save").mkdir(parents=True)
    (iteration.output_dir / "to_save" / "plot.png").write_bytes(b"\x89PNG")
    example = approve(run, curator)
    _token, key = api_token_create(user=reader, name="agent")
    revoked, revoked_key = api_token_create(user=reader, name="old agent")
    api_token_revoke(token=revoked)

    # The link the API gives, fetched with the token that read the API.
    detail = client.get(reverse("api_example", args=[example.pk]), HTTP_AUTHORIZATION=f"Bearer {key}").json()
    url = detail["saved_files"][0]["url"]
    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"\x89PNG"
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {key}").status_code == 200

    for header, message in [
        ("Bearer cd_not-a-real-key", b"Invalid token."),
        (f"Bearer {revoked_key}", b"This token has been revoked."),
        ("Basic dXNlcjpwYXNz", b"Malformed Authorization header"),
    ]:
        refused = client.get(url, HTTP_AUTHORIZATION=header)
        assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
        assert message in refused.content and b"PNG" not in refused.content

    anonymous = client.get(url)
    if public:
        assert anonymous.status_code == 200
    else:
        # An agent gets the API's JSON 401; a browser opening the link goes to the login page.
        assert anonymous.status_code == 401 and anonymous.json()["error"].startswith(
            "Authentication required"
        )
        browser = client.get(url, HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
        assert browser.status_code == 302 and browser["Location"].startswith("/accounts/login/")
    session = Client()
    session.force_login(reader)
    assert session.get(url).status_code == 200
