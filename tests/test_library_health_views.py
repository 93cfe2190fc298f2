"""What people and agents see of the library's health: the example page's line, a check's output, the
curator's page of failing examples, the API and the MCP server; and the repair of a broken example."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from distill.models import Iteration, Run
from distill.pipeline import program, repository
from library import health, mcp_server
from library.models import Example, ExampleCheck
from tests.factories import make_git_repo
from tests.test_library_health import MINILIB, USES_FACTOR, make_example

pytestmark = pytest.mark.django_db
S = ExampleCheck.Status
OUTPUT = "=== locked: stderr ===\nTraceback: <script>alert(1)</script>\nAttributeError: FACTOR\n"


@pytest.fixture(autouse=True)
def local_sources(settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True


@pytest.fixture
def example(tmp_path):
    return make_example(make_git_repo(tmp_path / "minilib", MINILIB), main=USES_FACTOR)


def checked(example, status, *, days_ago=0, reason="", **fields):
    when = timezone.now() - timedelta(days=days_ago)
    return ExampleCheck.objects.create(
        example=example, status=status, reason=reason or f"{status}.", started_at=when, finished_at=when,
        variants=[{"name": "locked", "passed": status != S.BROKEN, "reasons": ["the program exited with code 1"],
                   "exit_code": 1, "changes": [], "install_secs": 4.2, "duration_secs": 0.8, "env_reused": False,
                   "proof": "unused"}],
        output=OUTPUT, **fields,
    )  # fmt: skip


# The example page ------------------------------------------------------------------------------------------


def test_the_example_page_says_when_it_was_verified_and_links_the_checks_output(client, example):
    check = checked(example, S.PASSED, reason="ran with its lock, with the approved results")

    page = client.get(reverse("example_detail", args=[example.pk])).content.decode()

    assert f"Verified {check.finished_at:%Y-%m-%d}: ran with its lock, with the approved results" in page
    assert reverse("example_check", args=[example.pk, check.pk]) in page


def test_a_broken_example_says_since_when_and_why(client, example):
    checked(example, S.PASSED, days_ago=10)
    first = checked(example, S.BROKEN, days_ago=3, reason="its requirements no longer install: tinydep")
    checked(example, S.BROKEN, days_ago=1, reason="its requirements no longer install: tinydep==1.0")

    page = client.get(reverse("example_detail", args=[example.pk])).content.decode()

    assert (
        f"Broken since {first.finished_at:%Y-%m-%d}: its requirements no longer install: tinydep==1.0" in page
    )


def test_an_example_never_checked_says_so(client, example):
    page = client.get(reverse("example_detail", args=[example.pk])).content.decode()
    assert "Not checked again since it was approved." in page


def test_a_checks_page_shows_its_output_escaped(client, example):
    check = checked(example, S.BROKEN)

    response = client.get(reverse("example_check", args=[example.pk, check.pk]))

    page = response.content.decode()
    assert "Traceback: &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "the program exited with code 1" in page
    assert client.get(reverse("example_check", args=[example.pk + 1, check.pk])).status_code == 404


# The curator's page ----------------------------------------------------------------------------------------


def test_the_health_page_is_for_curators(client, reader_client, curator_client, example):
    assert client.get(reverse("library_health")).status_code == 302
    assert reader_client.get(reverse("library_health")).status_code == 403
    assert curator_client.get(reverse("library_health")).status_code == 200


def test_the_health_page_lists_the_failing_examples_and_the_chart(curator_client, example, tmp_path):
    checked(example, S.BROKEN, reason="it fails with its lock: the program exited with code 1")
    verified = make_example(tmp_path / "other", title="Still fine")
    checked(verified, S.PASSED)
    mended = make_example(tmp_path / "third", title="Mended")
    checked(mended, S.BROKEN, days_ago=2)
    checked(mended, S.PASSED, days_ago=1)

    response = curator_client.get(reverse("library_health"))

    assert [row["example"] for row in response.context["rows"]] == [example]
    page = response.content.decode()
    assert "it fails with its lock: the program exited with code 1" in page
    assert "Of 4 checks over 3 days, 2 found the example verified (50%)" in page
    assert reverse("library_health") in curator_client.get(reverse("library")).content.decode()


# The API and the MCP server ---------------------------------------------------------------------------------


def test_the_api_and_the_mcp_server_report_health_and_the_last_check(client, example, tmp_path):
    check = checked(example, S.DRIFTED)
    make_example(tmp_path / "other", title="Unchecked")

    items = {item["id"]: item for item in client.get(reverse("api_examples")).json()["results"]}
    hits = {hit.id: hit for hit in mcp_server._search({}, 10).results}
    detail = client.get(reverse("api_example", args=[example.pk])).json()

    assert items[example.pk]["health"] == "drifted" == hits[example.pk].health == detail["health"]
    assert (
        items[example.pk]["last_checked_at"]
        == check.finished_at.isoformat()
        == hits[example.pk].last_checked_at
    )
    unchecked = next(pk for pk in items if pk != example.pk)
    assert items[unchecked]["health"] is None and items[unchecked]["last_checked_at"] is None
    only_drifted = client.get(reverse("api_examples"), {"health": "drifted"}).json()["results"]
    assert [item["id"] for item in only_drifted] == [example.pk]
    assert [hit.id for hit in mcp_server._search({"health": "unchecked"}, 10).results] == [unchecked]


# Repair -----------------------------------------------------------------------------------------------------


def test_a_curator_repairs_a_broken_example_with_a_run_that_starts_from_its_code(
    curator_client, curator, example
):
    check = checked(example, S.BROKEN, reason="it fails with its lock: the program exited with code 1")

    response = curator_client.post(reverse("example_repair", args=[example.pk]), {"profile": "local"})

    run = Run.objects.get()
    assert response.status_code == 302 and response.url == reverse("run_detail", args=[run.pk])
    check.refresh_from_db()
    assert check.repair_run == run and run.submitted_by == curator and run.source_url == example.source_url
    assert run.config["first_version"]["files"] == example.files

    first = repository.write_first_version(run)

    assert first.state == Iteration.State.RAN and first.files == example.files
    assert not first.measured["passed"] and first.exit_code == 1
    assert run.llm_calls.count() == 0, "the first version is the example's code: no model call"
    shown = program.failed_version(run, first)
    assert (
        "the library's check found: it fails with its lock: the program exited with code 1"
        in shown["problems"]
    )
    assert "AttributeError: FACTOR" in shown["stderr"]
    assert "tinydep.FACTOR" in shown["current"]
    example.refresh_from_db()
    assert example.files["main.py"] == USES_FACTOR, "the example itself is not changed"

    again = curator_client.post(
        reverse("example_repair", args=[example.pk]), {"profile": "local"}, follow=True
    )
    assert f"This example is already being repaired: run {run.pk}." in again.content.decode()
    assert Run.objects.count() == 1


def test_only_a_curator_repairs_and_only_by_post(client, reader_client, curator_client, example):
    checked(example, S.BROKEN)
    url = reverse("example_repair", args=[example.pk])

    assert client.post(url, {"profile": "local"}).status_code == 302  # to the login page
    assert reader_client.post(url, {"profile": "local"}).status_code == 403
    assert curator_client.get(url).status_code == 405
    assert not Run.objects.exists()


def test_a_verified_example_is_not_repaired(curator_client, example):
    checked(example, S.PASSED)

    response = curator_client.post(
        reverse("example_repair", args=[example.pk]), {"profile": "local"}, follow=True
    )

    assert "Only an example whose last check failed can be repaired." in response.content.decode()
    assert not Run.objects.exists()
    assert "Repair…" not in curator_client.get(reverse("example_detail", args=[example.pk])).content.decode()


def test_the_repair_runs_result_is_offered_as_the_next_version_with_the_diff(
    curator_client, curator, example
):
    checked(example, S.BROKEN)
    curator_client.post(reverse("example_repair", args=[example.pk]), {"profile": "local"})
    run = Run.objects.get()
    repository.write_first_version(run)
    fixed = USES_FACTOR.replace("tinydep.FACTOR", "tinydep.SCALE_FACTOR")
    Iteration.objects.create(
        run=run, number=2, files={**example.files, "main.py": fixed}, state=Iteration.State.JUDGED, exit_code=0,
        succeeded=True, measured={"passed": True}, judgement={"passed": True},
    )  # fmt: skip
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED, iteration_count=2)

    response = curator_client.get(reverse("run_approve", args=[run.pk]))

    page = response.content.decode()
    assert (
        f'A repair of <a href="{reverse("example_detail", args=[example.pk])}">example {example.pk}</a>'
        in page
    )
    assert response.context["repair_diff"].added == 1 and response.context["repair_diff"].removed == 1
    assert "SCALE_FACTOR" in page
    new = curator_client.post(
        reverse("run_approve", args=[run.pk]),
        {"iteration": 2, "title": example.title, "summary": "Repaired."},
    )
    assert new.status_code == 302
    assert Example.objects.get(source_url=example.source_url, is_latest=True).version == example.version + 1


def test_health_of_a_check_page_needs_the_library_to_be_readable(client, example, settings):
    check = checked(example, S.PASSED)
    settings.LIBRARY_PUBLIC = False
    assert client.get(reverse("example_check", args=[example.pk, check.pk])).status_code == 302
    assert health.health_of(example).status == S.PASSED
