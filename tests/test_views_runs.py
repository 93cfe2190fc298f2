"""The runs list, the submit page, the run page and the actions on a run."""

import io
import zipfile
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from distill.models import FileRating, Iteration, LLMCall, Run, RunStep, UsageSnippet
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script>'
GH = "https://github.com/example/"


@pytest.fixture(autouse=True)
def github_only(settings):
    settings.DISTILL_ALLOWED_HOSTS = ["github.com"]
    settings.DISTILL_ALLOW_LOCAL_SOURCES = False


def detail(run):
    return reverse("run_detail", args=[run.pk])


def htmx(client, url):
    return client.get(url, headers={"HX-Request": "true"})


# Permissions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["runs", "run_new"])
def test_anonymous_visitors_are_sent_to_log_in(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_anonymous_visitors_are_sent_to_log_in_from_a_run_and_its_actions(client):
    run = make_run()
    for name in ("run_detail", "run_download", "run_report"):
        assert client.get(reverse(name, args=[run.pk])).status_code == 302
    for name in ("run_cancel", "run_retry", "run_rerun"):
        assert client.post(reverse(name, args=[run.pk])).status_code == 302
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED


def test_a_reader_reads_the_list_and_a_run_but_sees_no_actions(reader_client):
    run = make_run(status=Run.Status.EXECUTING)
    assert reader_client.get(reverse("runs")).status_code == 200
    html = reader_client.get(detail(run)).content.decode()
    assert reverse("run_cancel", args=[run.pk]) not in html
    assert reverse("run_new") not in reader_client.get(reverse("runs")).content.decode()


def test_a_reader_may_not_submit_or_act(reader_client):
    run = make_run(status=Run.Status.EXECUTING)
    assert reader_client.get(reverse("run_new")).status_code == 403
    assert reader_client.post(reverse("run_new"), {"urls": GH + "a"}).status_code == 403
    assert reader_client.post(reverse("run_cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert not run.cancel_requested and run.status == Run.Status.EXECUTING
    assert not Run.objects.exclude(pk=run.pk).exists()


def test_actions_refuse_get(curator_client):
    run = make_run(status=Run.Status.EXECUTING)
    assert curator_client.get(reverse("run_cancel", args=[run.pk])).status_code == 405
    run.refresh_from_db()
    assert not run.cancel_requested


# Submit -----------------------------------------------------------------------------------------------


def test_the_submit_page_shows_each_profile_with_its_models_and_says_local_is_limited(curator_client):
    html = curator_client.get(reverse("run_new")).content.decode()
    for name in ("local", "gpt-5", "claude-sonnet-4.5"):
        assert f'value="{name}"' in html
    assert "local/qwen2.5-coder-1.5b" in html and "limited quality" in html
    assert "nothing is started" in html
    assert "Paper" in html, "the form leaves room for papers"


def test_submitting_one_url_starts_a_run_and_opens_its_page(curator_client, curator):
    response = curator_client.post(reverse("run_new"), {"urls": GH + "minilib", "profile": "local"})
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == detail(run)
    assert run.source_url == GH + "minilib" and run.profile == "local" and run.submitted_by == curator
    assert run.status == Run.Status.QUEUED
    assert run.config["model_code"] == "local/qwen2.5-coder-1.5b"


def test_overrides_are_applied_to_the_run_config(curator_client):
    curator_client.post(
        reverse("run_new"),
        {"urls": GH + "a", "profile": "local", "max_debug_iterations": "2", "max_runtime_mins": "3",
         "max_cost_usd": "1.50"},
    )  # fmt: skip
    config = Run.objects.get().config
    assert config["max_debug_iterations"] == 2 and config["max_runtime_mins"] == 3
    assert config["max_cost_usd"] == 1.5


def test_submitting_several_urls_lists_only_them(curator_client):
    make_run(source_url=GH + "older")
    response = curator_client.post(
        reverse("run_new"), {"urls": f"{GH}a\n\n# a comment\n{GH}b\n", "profile": "local"}
    )
    new = Run.objects.exclude(source_url=GH + "older")
    assert sorted(new.values_list("source_url", flat=True)) == [GH + "a", GH + "b"]
    assert response.status_code == 302 and response["Location"].startswith(reverse("runs") + "?ids=")
    listed = curator_client.get(response["Location"]).content.decode()
    assert GH + "a" in listed and GH + "older" not in listed


def test_a_txt_upload_adds_its_urls(curator_client):
    upload = SimpleUploadedFile("repos.txt", f"{GH}a\n{GH}b\n".encode(), content_type="text/plain")
    curator_client.post(reverse("run_new"), {"urls": "", "urls_file": upload, "profile": "local"})
    assert Run.objects.count() == 2


def test_an_upload_that_is_not_txt_is_refused(curator_client):
    upload = SimpleUploadedFile("repos.csv", b"x", content_type="text/csv")
    response = curator_client.post(reverse("run_new"), {"urls_file": upload, "profile": "local"})
    assert response.status_code == 200 and "Upload a .txt file" in response.content.decode()
    assert not Run.objects.exists()


def test_a_refused_line_is_shown_with_its_reason_and_nothing_starts(curator_client):
    response = curator_client.post(
        reverse("run_new"),
        {"urls": f"{GH}good\nhttp://github.com/x/y\nhttps://evil.example/a/b", "profile": "local"},
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "Line 2" in html and "Line 3" in html and "Line 1" not in html
    assert "nothing was started" in html
    assert GH + "good" in html, "the list stays in the form"
    assert not Run.objects.exists()


def test_a_url_with_a_run_in_progress_links_to_that_run_instead_of_starting_another(curator_client):
    running = make_run(source_url=GH + "busy", status=Run.Status.EXECUTING)
    response = curator_client.post(reverse("run_new"), {"urls": GH + "busy", "profile": "local"})
    html = response.content.decode()
    assert "already has a run in progress" in html and f'href="{detail(running)}"' in html
    assert Run.objects.count() == 1


def test_a_url_whose_runs_finished_may_start_again(curator_client):
    make_run(source_url=GH + "done", status=Run.Status.FAILED)
    curator_client.post(reverse("run_new"), {"urls": GH + "done", "profile": "local"})
    assert Run.objects.filter(source_url=GH + "done").count() == 2


def test_a_repeated_line_is_refused(curator_client):
    response = curator_client.post(reverse("run_new"), {"urls": f"{GH}a\n{GH}a", "profile": "local"})
    assert "the same repository as line 1" in response.content.decode()
    assert not Run.objects.exists()


def test_an_empty_submission_asks_for_a_url(curator_client):
    response = curator_client.post(reverse("run_new"), {"urls": "  ", "profile": "local"})
    assert "at least one repository URL" in response.content.decode()


def test_a_profile_whose_provider_key_is_missing_is_refused(curator_client, monkeypatch, settings):
    settings.DISTILL_LLM_REPLAY = None
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    response = curator_client.post(reverse("run_new"), {"urls": GH + "a", "profile": "gpt-5"})
    assert "OPENAI_API_KEY" in response.content.decode()
    assert not Run.objects.exists()


def test_an_override_out_of_range_is_an_inline_error(curator_client):
    response = curator_client.post(
        reverse("run_new"), {"urls": GH + "a", "profile": "local", "max_debug_iterations": "0"}
    )
    assert response.status_code == 200 and not Run.objects.exists()
    assert "greater than or equal to 1" in response.content.decode()


# The list ---------------------------------------------------------------------------------------------


def test_the_list_shows_status_source_profile_progress_cost_and_submitter(reader_client, curator):
    run = make_run(status=Run.Status.FIXING, cost_usd=Decimal("1.25"), submitted_by=curator)
    make_iteration(run, 1)
    make_iteration(run, 2)
    html = reader_client.get(reverse("runs")).content.decode()
    assert "example/minilib" in html and "Fixing" in html and "$1.25" in html
    assert 'value="2" max="4"' in html and "2 of 4" in html
    assert "by cora" in html and "offline model" in html


def test_the_summary_counts_statuses_and_the_success_rate_of_finished_runs(reader_client):
    for status in ("queued", "executing", "succeeded", "succeeded", "succeeded", "failed", "cancelled"):
        make_run(status=status)
    summary = reader_client.get(reverse("runs")).context["summary"]
    assert (summary["queued"], summary["running"], summary["succeeded"], summary["failed"]) == (1, 1, 3, 1)
    assert summary["success_rate"] == pytest.approx(0.75)


def test_a_source_that_could_not_be_fetched_is_counted_apart_from_the_success_rate(reader_client):
    make_run(status="succeeded")
    make_run(status="error")  # failed while distilling: counts against the rate
    unfetched = make_run(status="error", commit_sha="", source_title="")
    summary = reader_client.get(reverse("runs")).context["summary"]
    assert (summary["succeeded"], summary["failed"], summary["not_fetched"]) == (1, 1, 1)
    assert summary["success_rate"] == pytest.approx(0.5)
    # The page's word for one run and the list's count are one definition.
    assert unfetched.not_fetched and not Run.objects.get(status="succeeded").not_fetched
    assert "1 whose source could not be fetched" in reader_client.get(reverse("runs")).content.decode()


def test_the_list_filters_by_status_submitter_profile_and_search(reader_client, curator, reader):
    a = make_run(source_url=GH + "alpha", status="succeeded", submitted_by=curator)
    b = make_run(source_url=GH + "beta", status="failed", submitted_by=reader, profile_name="gpt-5")
    c = make_run(source_url=GH + "gamma", status="executing", source_title="gamma lab tools")

    def listed(**params):
        return {run.pk for run in reader_client.get(reverse("runs"), params).context["rows"]}

    assert listed(status="failed") == {b.pk}
    assert listed(status="active") == {c.pk}
    assert listed(submitter="cora") == {a.pk}
    assert listed(profile="gpt-5") == {b.pk}
    assert listed(q="alph") == {a.pk}
    assert listed(q="lab tools") == {c.pk}


def test_the_list_is_paginated(reader_client):
    Run.objects.bulk_create([Run(source_url=f"{GH}r{i}", profile="local", config={}) for i in range(30)])
    first = reader_client.get(reverse("runs"))
    assert len(first.context["rows"]) == 25 and "Page 1 of 2" in first.content.decode()
    assert len(reader_client.get(reverse("runs"), {"page": 2}).context["rows"]) == 5


def test_the_table_polls_only_while_a_run_on_the_page_is_active(reader_client):
    run = make_run(status=Run.Status.EXECUTING)
    html = reader_client.get(reverse("runs")).content.decode()
    assert "every 2s [document.visibilityState === 'visible']" in html
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    fragment = htmx(reader_client, reverse("runs")).content.decode()
    assert 'id="runs-live"' in fragment and "hx-trigger" not in fragment
    assert "<html" not in fragment and 'hx-swap-oob="true"' in fragment, "the summary comes along"


def test_the_list_draws_both_charts_as_accessible_svg(reader_client):
    for number, status in ((1, "succeeded"), (2, "succeeded"), (3, "failed")):
        run = make_run(status=status, cost_usd=Decimal("0.5") * number)
        for n in range(1, number + 1):
            make_iteration(run, n)
    html = reader_client.get(reverse("runs")).content.decode()
    assert html.count('<svg class="chart__svg"') == 2 and "<title" in html and "<desc" in html
    # 3 finished runs: one succeeded at iteration 1, one at 2.
    assert "by iteration 1: 33%; by iteration 2: 67%" in html
    assert "median $1.00" in html


def test_the_charts_keep_to_the_runs_shown_their_iterations_and_their_scale(reader_client):
    for cost, iterations in ((Decimal("0.01"), 1), (Decimal("0.04"), 4)):
        run = make_run(status="succeeded", cost_usd=cost)
        for n in range(1, iterations + 1):
            make_iteration(run, n)
    context = reader_client.get(reverse("runs")).context
    # The runs shown stopped by iteration 4: the chart does not run on to the profiles' default of 8.
    assert [tick["label"] for tick in context["success_chart"].x_ticks] == ["1", "2", "3", "4"]
    assert [tick["label"] for tick in context["cost_chart"].y_ticks] == ["$0", "2.5¢", "5¢"]

    Run.objects.update(cost_usd=0)  # the local model's runs cost nothing
    assert [tick["label"] for tick in reader_client.get(reverse("runs")).context["cost_chart"].y_ticks] == [
        "$0"
    ]


def test_the_list_without_runs_invites_a_curator_to_submit(curator_client):
    html = curator_client.get(reverse("runs")).content.decode()
    assert "No runs yet" in html and "No finished runs yet" in html


# The run page -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["queued", "executing", "succeeded", "failed", "error", "cancelled"])
def test_the_run_page_renders_in_every_state(curator_client, status):
    run = make_run(status=status, status_message=f"It is {status}.")
    if status != "queued":
        make_iteration(run, 1)
    response = curator_client.get(detail(run))
    assert response.status_code == 200
    html = response.content.decode()
    assert f"It is {status}." in html
    polling = "every 2s" in html.split('id="run-ratings"')[0]
    assert polling == (status in ("queued", "executing"))


def test_a_running_run_shows_the_timeline_the_live_tail_and_a_cancel_button(curator_client):
    run = make_run(status=Run.Status.EXECUTING, started_at=timezone.now())
    RunStep.objects.create(run=run, name="fetch", outcome="done", finished_at=timezone.now())
    RunStep.objects.create(run=run, name="execute", iteration=1)
    make_iteration(run, 1, state=Iteration.State.RUNNING, exit_code=None, stdout="line 1\nepoch 3 of 10\n",
                   measured=None, judgement=None, succeeded=None)  # fmt: skip
    html = curator_client.get(detail(run)).content.decode()
    assert "Fetch" in html and "Execute" in html and "running for" in html
    assert "epoch 3 of 10" in html and "Iteration 1 is running" in html
    assert reverse("run_cancel", args=[run.pk]) in html
    assert reverse("run_retry", args=[run.pk]) not in html


def test_while_its_dependencies_install_the_live_tail_shows_the_install_output(curator_client):
    run = make_run(status=Run.Status.EXECUTING, started_at=timezone.now())
    install = "Collecting numpy\n<b>Downloading</b> numpy-2.1.0.whl\n"
    make_iteration(run, 1, state=Iteration.State.RUNNING, exit_code=None, stdout="", stderr="",
                   install_log=install, measured=None, judgement=None, succeeded=None)  # fmt: skip

    html = htmx(curator_client, detail(run)).content.decode()
    assert "Installing its dependencies" in html and 'data-testid="install-tail"' in html
    assert "&lt;b&gt;Downloading&lt;/b&gt; numpy-2.1.0.whl" in html

    Iteration.objects.filter(run=run).update(stdout="step 1 of 3\n")  # the program has started
    html = htmx(curator_client, detail(run)).content.decode()
    assert 'data-testid="install-tail"' not in html and "step 1 of 3" in html


def test_the_live_fragment_stops_polling_when_the_run_ends(curator_client):
    run = make_run(status=Run.Status.JUDGING)
    assert "every 2s" in htmx(curator_client, detail(run)).content.decode()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    fragment = htmx(curator_client, detail(run)).content.decode()
    assert 'id="run-live"' in fragment and "hx-trigger" not in fragment and "<html" not in fragment


def test_an_iteration_card_shows_both_verdicts_its_changes_and_links(curator_client):
    run = make_run()
    make_iteration(run, 1, exit_code=1, succeeded=False, judgement=None,
                   measured={"passed": False, "exit_ok": False, "reasons": ["exited with code 1"]})  # fmt: skip
    make_iteration(run, 2, change_log="Import the right name.")
    html = curator_client.get(detail(run)).content.decode()
    assert "exit 1" in html and "exited with code 1" in html and "not asked: the measurement failed" in html
    assert "Import the right name." in html and "faithful ✓" in html
    assert reverse("iteration_detail", args=[run.pk, 2]) in html
    assert reverse("run_diff", args=[run.pk]) + "?a=1&amp;b=2" in html


def test_the_run_page_shows_ratings_stage_costs_and_the_models(curator_client):
    run = make_run()
    FileRating.objects.create(run=run, path="minilib/core.py", rating=9, reason="the core", selected=True)
    LLMCall.objects.create(run=run, stage="generate", model="local/qwen2.5-coder-1.5b", status="ok",
                           tokens_in=1200, tokens_out=300, cost_usd=Decimal("0.0123"),
                           prompt=[{"role": "user", "content": "Write main.py"}], reply="=== FILE: main.py ===")  # fmt: skip
    html = curator_client.get(detail(run)).content.decode()
    assert "minilib/core.py" in html and "9/10" in html
    assert "1200 / 300" in html and "$0.0123" in html
    assert "Write main.py" in html and "=== FILE: main.py ===" in html
    assert "The local offline model" in html and "limited quality" in html


def test_the_run_page_shows_the_harvested_usage_and_the_api_digest_escaped_and_highlighted(curator_client):
    reason = "Files not rated: in a context of 4096 tokens the API digest and the authors' usage take the place of file excerpts."
    run = make_run(api_digest=f"from minilib import mean\ndef mean(xs): ...  # {XSS}", rating_skipped=reason)
    RunStep.objects.create(run=run, name="survey", outcome="done", finished_at=timezone.now())
    UsageSnippet.objects.create(run=run, source="README.md", line=7, kind="readme", code=f"import minilib\nprint({XSS!r})",
                                score=9.5, tokens=12, names=["mean"], in_prompt=True)  # fmt: skip
    UsageSnippet.objects.create(run=run, source="demo.ipynb", line=3, kind="notebook", code="minilib.mean(xs)",
                                undefined=["xs"], needs=["reads data.csv"])  # fmt: skip
    html = curator_client.get(detail(run)).content.decode()

    assert XSS not in html and "&lt;script&gt;" in html
    assert "README.md" in html and "line 7" in html and "in the prompt" in html
    assert "demo.ipynb" in html and "cell 3" in html and "undefined: xs" in html and "reads data.csv" in html
    # Highlighted like the iterations' code (pygments spans), with the digest beside it.
    assert '<span class="kn">import</span>' in html and '<span class="k">def</span>' in html
    # Why the files were not rated: in the ratings panel and on the survey step of the timeline.
    assert html.count("Files not rated: in a context of 4096 tokens") == 2

    # Before the survey the section says what will come, and polls.
    waiting = make_run(source_url=GH + "waiting", status=Run.Status.SURVEYING)
    fragment = htmx(curator_client, detail(waiting) + "?part=ratings").content.decode()
    assert "The survey harvests them" in fragment and "The survey reads it from the source" in fragment


def test_a_large_llm_call_is_loaded_when_opened(curator_client):
    run = make_run()
    call = LLMCall.objects.create(run=run, stage="fix", model="m", status="ok", prompt=[{"role": "user", "content": "p" * 9000}],
                                  reply="THE-REPLY")  # fmt: skip
    html = curator_client.get(detail(run)).content.decode()
    assert "THE-REPLY" not in html and f"?call={call.pk}" in html
    fragment = htmx(curator_client, detail(run) + f"?call={call.pk}").content.decode()
    assert "THE-REPLY" in fragment and "<html" not in fragment
    page = curator_client.get(detail(run) + f"?call={call.pk}").content.decode()
    assert "THE-REPLY" in page and "<html" in page
    other = make_run(source_url=GH + "other")
    assert curator_client.get(detail(other) + f"?call={call.pk}").status_code == 404


def test_the_ratings_section_polls_until_the_survey_is_done(curator_client):
    run = make_run(status=Run.Status.SURVEYING)
    fragment = htmx(curator_client, detail(run) + "?part=ratings").content.decode()
    assert 'id="run-ratings"' in fragment and "every 2s" in fragment
    Run.objects.filter(pk=run.pk).update(status=Run.Status.GENERATING)
    assert "every 2s" not in htmx(curator_client, detail(run) + "?part=ratings").content.decode()


def test_an_unknown_run_is_404(reader_client):
    assert reader_client.get(reverse("run_detail", args=[999])).status_code == 404


# Actions ----------------------------------------------------------------------------------------------


def test_a_curator_cancels_a_queued_run(curator_client):
    run = make_run(status=Run.Status.QUEUED)
    response = curator_client.post(reverse("run_cancel", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and run.cancel_requested
    assert f"Run {run.pk} is cancelled." in response.content.decode()


def test_cancelling_a_run_a_worker_holds_asks_it_to_stop(curator_client):
    run = make_run(status=Run.Status.EXECUTING, lease="worker-1")
    curator_client.post(reverse("run_cancel", args=[run.pk]))
    run.refresh_from_db()
    assert run.cancel_requested and run.status == Run.Status.EXECUTING


def test_cancelling_a_finished_run_is_a_message_not_an_error(curator_client):
    run = make_run(status=Run.Status.SUCCEEDED)
    response = curator_client.post(reverse("run_cancel", args=[run.pk]), follow=True)
    assert response.status_code == 200 and "already finished" in response.content.decode()
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and not run.cancel_requested


def test_a_failed_run_offers_a_retry_from_the_failed_step(curator_client):
    run = make_run(status=Run.Status.ERROR, repository_description="")
    html = curator_client.get(detail(run)).content.decode()
    assert "Retry from the surveying step" in html
    curator_client.post(reverse("run_retry", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == Run.Status.SURVEYING and run.finished_at is None


def test_retrying_a_fetch_while_its_host_is_out_of_reach_is_refused_at_once(curator_client, settings):
    # A name that never resolves (RFC 2606): out of reach as every host is from an offline site.
    settings.DISTILL_ALLOWED_HOSTS = [*settings.DISTILL_ALLOWED_HOSTS, "forge.invalid"]
    run = make_run(
        status=Run.Status.ERROR, commit_sha="", source_title="", source_url="https://forge.invalid/a/b"
    )
    response = curator_client.post(reverse("run_retry", args=[run.pk]), follow=True)
    assert "Not retried. Could not reach forge.invalid" in response.content.decode()
    run.refresh_from_db()
    assert run.status == Run.Status.ERROR and not run.steps.exists()


def test_retrying_a_running_run_is_refused_with_a_message(curator_client):
    run = make_run(status=Run.Status.EXECUTING)
    response = curator_client.post(reverse("run_retry", args=[run.pk]), follow=True)
    assert "only a stopped run can be retried" in response.content.decode()
    run.refresh_from_db()
    assert run.status == Run.Status.EXECUTING


def test_a_finished_run_runs_again_with_another_profile(curator_client, curator, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    run = make_run(status=Run.Status.FAILED)
    assert reverse("run_rerun", args=[run.pk]) in curator_client.get(detail(run)).content.decode()
    response = curator_client.post(reverse("run_rerun", args=[run.pk]), {"profile": "gpt-5"})
    new = Run.objects.exclude(pk=run.pk).get()
    assert response["Location"] == detail(new)
    assert new.profile == "gpt-5" and new.source_url == run.source_url and new.submitted_by == curator
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED


def test_running_again_while_the_source_has_a_run_in_progress_is_refused(curator_client):
    old = make_run(status=Run.Status.FAILED)
    busy = make_run(status=Run.Status.EXECUTING)
    html = curator_client.get(detail(old)).content.decode()
    assert reverse("run_rerun", args=[old.pk]) not in html and f'href="{detail(busy)}"' in html
    response = curator_client.post(reverse("run_rerun", args=[old.pk]), {"profile": "local"}, follow=True)
    assert "already has a run in progress" in response.content.decode()
    assert Run.objects.count() == 2


def test_the_output_folder_downloads_as_a_zip_without_symlinks(reader_client, tmp_path):
    run = make_run()
    out = run.output_dir
    (out / "iteration_1" / "to_save").mkdir(parents=True)
    (out / "report.html").write_text("<h1>report</h1>")
    (out / "iteration_1" / "main.py").write_text("print(1)\n")
    (tmp_path / "secret.txt").write_text("secret")
    (out / "iteration_1" / "to_save" / "link.txt").symlink_to(tmp_path / "secret.txt")
    response = reader_client.get(reverse("run_download", args=[run.pk]))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"] == f'attachment; filename="codedistiller-run-{run.pk}.zip"'
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    names = archive.namelist()
    assert f"run-{run.pk}/iteration_1/main.py" in names and f"run-{run.pk}/report.html" in names
    assert not any("link.txt" in name for name in names)
    assert archive.read(f"run-{run.pk}/iteration_1/main.py") == b"print(1)\n"


def test_a_run_without_output_has_no_download_or_report(reader_client):
    run = make_run(status=Run.Status.QUEUED)
    assert reader_client.get(reverse("run_download", args=[run.pk])).status_code == 404
    assert reader_client.get(reverse("run_report", args=[run.pk])).status_code == 404
    html = reader_client.get(detail(run)).content.decode()
    assert reverse("run_download", args=[run.pk]) not in html


def test_the_report_is_served_with_a_policy_that_forbids_scripts(reader_client):
    run = make_run()
    run.output_dir.mkdir(parents=True)
    (run.output_dir / "report.html").write_text("<p>report</p><script>alert(1)</script>")
    (run.output_dir / "current_state.json").write_text("{}")
    response = reader_client.get(reverse("run_report", args=[run.pk]))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    csp = response["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "sandbox" in csp
    html = reader_client.get(detail(run)).content.decode()
    assert reverse("run_report", args=[run.pk]) in html and reverse("run_download", args=[run.pk]) in html


# Untrusted text ---------------------------------------------------------------------------------------


def test_text_from_repositories_programs_and_models_is_never_markup(curator_client):
    run = make_run(
        source_url=GH + "x", source_title=XSS, repository_description=XSS, status_message=XSS,
        status=Run.Status.FAILED, error_information=XSS,
    )  # fmt: skip
    make_iteration(
        run, 1, change_log=XSS, exit_code=0,
        judgement={"faithful": False, "accurate": True, "complete": True, "passed": False, "explanation": XSS,
                   "issues": [XSS], "critical_issues": [XSS]},
        measured={"passed": True, "reasons": [XSS], "diagnosis": [XSS]},
    )  # fmt: skip
    make_iteration(run, 2, state=Iteration.State.RUNNING, stdout=XSS, stderr=XSS, exit_code=None)
    FileRating.objects.create(run=run, path=XSS, reason=XSS, error=XSS, rating=3)
    LLMCall.objects.create(
        run=run, stage="judge", model=XSS, prompt=[{"role": "user", "content": XSS}], reply=XSS
    )
    for url in (reverse("runs"), detail(run)):
        html = curator_client.get(url).content.decode()
        assert "<script>" not in html, url
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html, url


# Query counts -----------------------------------------------------------------------------------------


def _make_runs(count: int, users):
    for i in range(count):
        run = make_run(source_url=f"{GH}r{i}", status=("executing", "succeeded", "failed")[i % 3],
                       submitted_by=users[i % len(users)], cost_usd=Decimal("0.1") * i)  # fmt: skip
        for n in (1, 2):
            make_iteration(run, n)
        RunStep.objects.create(run=run, name="fetch", outcome="done", finished_at=timezone.now())
        FileRating.objects.create(run=run, path="a.py", rating=5)
        LLMCall.objects.create(run=run, stage="generate", model="m", status="ok", reply="x")
    return run


def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_the_pages_make_as_many_queries_for_30_runs_as_for_3(curator_client, curator, reader):
    last = _make_runs(3, [curator, reader])
    few = (_queries(curator_client, reverse("runs")), _queries(curator_client, detail(last)))
    last = _make_runs(27, [curator, reader])
    for n in range(3, 9):
        make_iteration(last, n)
        RunStep.objects.create(
            run=last, name="execute", iteration=n, outcome="done", finished_at=timezone.now()
        )
        LLMCall.objects.create(run=last, stage="fix", model="m", status="ok", reply="y" * 9000)
    many = (_queries(curator_client, reverse("runs")), _queries(curator_client, detail(last)))
    assert many == few
    # The run page's budget includes the library panel's two queries (its examples and rejections), the
    # harvested usage's one, and the second read of the run that checks that the page shows one moment.
    assert few[0] <= 12 and few[1] <= 18, few


ENVIRONMENT = {
    "status": "partial",
    "done": True,
    "model": False,
    "number": 2,
    "secs": 61.0,
    "reason": "import extra: ModuleNotFoundError: No module named '<script>x</script>'",
    "installed": {"name": "minilib", "version": "1.0"},
    "imports": [
        {"name": "minilib", "ok": True, "error": "", "secs": 0.4},
        {
            "name": "extra",
            "ok": False,
            "error": "ModuleNotFoundError: No module named '<script>x</script>'",
            "secs": 0.3,
        },
    ],
    "lock": ["numpy==2.1.0"],
    "install_log": "Successfully installed <b>minilib</b>",
    "extras": ["pyDOE==0.3.8"],
    "attempts": [
        {"number": 1, "status": "failed", "extras": [], "reason": "import minilib failed"},
        {"number": 2, "status": "partial", "extras": ["pyDOE==0.3.8"], "reason": "one failed"},
    ],
    "repository": {"requirement": "minilib==1.0", "published": True},
}


def test_the_run_page_shows_the_prepared_environment_escaped(reader_client):
    run = make_run(environment=ENVIRONMENT)
    html = reader_client.get(detail(run)).content.decode()
    assert 'data-testid="environment-status"' in html and "partly importable" in html
    assert "without a model (attempt 2)" in html
    assert "installed as <code>minilib 1.0</code>" in html and "<code>pyDOE==0.3.8</code>" in html
    assert "<code>minilib==1.0</code>" in html and "published on PyPI" in html
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "Successfully installed &lt;b&gt;minilib&lt;/b&gt;" in html
    assert '<pre class="output" data-testid="environment-lock">numpy==2.1.0\n</pre>' in html


def test_the_run_page_shows_an_environment_attempt_as_it_runs(reader_client):
    run = make_run(status=Run.Status.PREPARING, environment={"live": "Collecting numpy\n", "live_attempt": 1})
    html = htmx(reader_client, detail(run)).content.decode()
    assert "Attempt 1 is running" in html and "Collecting numpy" in html
    assert 'data-testid="environment-status"' not in html, "nothing is known yet but the output"


def test_a_run_stopped_at_its_environment_is_retried_from_a_fresh_start(curator_client):
    failed = {**ENVIRONMENT, "status": "failed", "reason": "install failed: exit code 1"}
    run = make_run(status=Run.Status.FAILED, environment=failed)
    FileRating.objects.create(run=run, path="a.py", selected=True)
    assert "Retry from the preparing environment step" in curator_client.get(detail(run)).content.decode()
    curator_client.post(reverse("run_retry", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == Run.Status.PREPARING and run.environment is None
