"""The whole engine on real git repositories made here, a real sandbox and replayed LLM replies."""

import json
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from distill import llm, services
from distill.models import FileRating, Iteration, LLMCall, Run, RunStep
from distill.pipeline import environment
from distill.profiles import load_profile
from tests.factories import make_git_repo, wheel
from tests.replies import BROKEN_MAIN, FAKE_MAIN, WORKING_MAIN, cassette, program, ratings, verdict

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MINILIB = {
    "README.md": "# minilib\n\nTiny statistics for tests. `mean_squared(xs)` returns the mean of squares.\n",
    "minilib/__init__.py": "def mean_squared(xs):\n    return sum(x * x for x in xs) / len(xs)\n",
    "minilib/extra.py": "def unused():\n    return 0\n",
    "setup.py": "from setuptools import setup\nsetup(name='minilib', packages=['minilib'])\n",
}
PURPOSE = "minilib computes summary statistics; its entry point is minilib.mean_squared."


@pytest.fixture
def repo(tmp_path, settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    return make_git_repo(tmp_path / "minilib", MINILIB)


@pytest.fixture(autouse=True)
def no_backoff_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(llm, "_sleep", slept.append)
    return slept


def start(repo, tmp_path, entries, profile_name="local", **overrides) -> Run:
    overrides.setdefault("max_debug_iterations", 3)
    overrides.setdefault("max_runtime_mins", 1)
    # The cassettes hold no environment replies: an install that is slow on a loaded machine must not
    # turn into a model call these tests never recorded.
    overrides.setdefault("max_environment_repairs", 0)
    overrides["replay"] = str(cassette(tmp_path / "cassette.json", entries))
    profile = load_profile(profile_name, overrides)
    return services.run_submit(source=str(repo), profile_name=profile_name, profile=profile, enqueue=False)


def survey_replies():
    # The survey rates the three candidate files in one batch of the local profile (4 a call).
    return [
        ("purpose", PURPOSE),
        ("rate", ratings("README.md", "minilib/__init__.py", "minilib/extra.py", "setup.py")),
    ]


def test_it_succeeds_at_the_first_iteration(repo, tmp_path):
    run = start(repo, tmp_path, [*survey_replies(), ("generate", program()), ("judge", verdict(True))])
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert run.commit_sha and len(run.commit_sha) == 40
    assert run.repository_description == PURPOSE
    (iteration,) = run.iterations.all()
    assert iteration.exit_code == 0 and iteration.succeeded
    assert iteration.results == {"mean_squared": pytest.approx(14 / 3)}
    assert iteration.measured["passed"] and iteration.judgement["passed"]
    assert "mean squared" in iteration.stdout
    assert list(run.steps.values_list("name", flat=True)) == [
        "fetch",
        "survey",
        "prepare",
        "generate",
        "execute",
        "judge",
    ]
    # In the local profile's small context the API digest takes the place of file excerpts, so the
    # files are not rated (a minute or more per batch on a CPU), and the run says so.
    assert set(LLMCall.objects.filter(run=run).values_list("stage", flat=True)) == {
        "purpose",
        "generate",
        "judge",
    }
    assert "API digest" in run.rating_skipped
    assert FileRating.objects.filter(run=run, selected=True).exists()
    generate_prompt = LLMCall.objects.get(run=run, stage="generate").prompt[-1]["content"]
    assert "from minilib import mean_squared\ndef mean_squared(xs): ..." in generate_prompt
    assert "--- FILE:" not in generate_prompt

    out = run.output_dir
    state = json.loads((out / "current_state.json").read_text())
    for field in ("repo_url", "repository_description", "status", "status_message", "model_str_code", "model_str_fast",
                  "total_cost", "costs", "total_runtime_secs", "runtimes", "reflection_idx", "is_finished", "change_log",
                  "code", "requirements", "runscript", "metadata", "error_information", "classification_list",
                  "execution_result"):  # fmt: skip
        assert field in state, field
    assert state["status"] == "succeeded" and state["is_finished"] is True
    assert state["execution_result"]["exit_code"] == 0
    assert (out / "iteration_1" / "main.py").read_text() == WORKING_MAIN
    assert json.loads((out / "iteration_1" / "results.json").read_text()) == iteration.results
    report = (out / "report.html").read_text()
    assert "minilib" in report and "mean_squared" in report and "File ratings" in report
    # The environment it ran in, and how it runs outside the sandbox.
    assert state["environment"]["status"] == "ready" and "install_log" not in state["environment"]
    assert state["how_to_run"] == ["pip install -r requirements.txt", "python main.py"]
    assert "<h2>Environment</h2>" in report and "Run it yourself" in report
    assert (out / "environment" / "install_log.txt").read_text() == run.environment["install_log"]

    # It is proven to have run the repository's code, and the figures say how much of it.
    assert iteration.measured["uses_repository"] and iteration.proof["verdict"] == "proven"
    assert iteration.repo_modules_imported == 1 and iteration.repo_functions_executed == 1
    assert iteration.proof["functions"] == [["minilib/__init__.py", "mean_squared", 1]]
    assert iteration.repo_lines_executed >= 2 and 0 < iteration.repo_share_covered < 1
    assert state["iterations"][0]["proof"]["functions_executed"] == 1
    assert state["execution_result"]["proof"]["verdict"] == "proven"
    assert "uses the repository" in report and "1 function and at least" in report
    judge_prompt = LLMCall.objects.get(run=run, stage="judge").prompt[0]["content"]
    assert "ran 1 of its functions (mean_squared (minilib/__init__.py))" in judge_prompt
    assert "minilib/extra.py" not in iteration.proof["files"], "unused() never ran"


def test_a_failure_is_fixed_and_the_fix_is_executed(repo, tmp_path):
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(BROKEN_MAIN)),
         ("fix", program(WORKING_MAIN, changes="Import mean_squared, the function's real name.")),
         ("judge", verdict(True))],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    first, second = run.iterations.all()
    assert first.exit_code != 0 and "ImportError" in first.stderr
    assert first.judgement is None, "a program that failed the measurement is not put before the judge"
    assert not first.succeeded and any("exited with code" in r for r in first.measured["reasons"])
    assert second.exit_code == 0 and second.succeeded
    assert first.files["main.py"] != second.files["main.py"]
    assert second.change_log.startswith("Import mean_squared")
    fix_prompt = LLMCall.objects.get(run=run, stage="fix").prompt[0]["content"]
    assert "ImportError" in fix_prompt and "mean_squares" in fix_prompt
    assert run.steps.filter(name="execute").count() == 2


def test_a_module_the_program_could_not_import_is_added_to_the_fixs_requirements(repo, tmp_path, monkeypatch):
    # Seen on kneed: its plot needs matplotlib, and told so, the 1.5B model sent main.py back unchanged.
    # Offline index: the added requirement cannot install here, and no test reaches PyPI.
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())
    needs_plots = WORKING_MAIN.replace("import json\n", "import json\nimport minilib_plots\n")
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(needs_plots)),
         ("fix", program(needs_plots, changes="Root cause: minilib_plots is not installed."))],
        max_debug_iterations=2,
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    first, second = run.iterations.all()
    assert "No module named 'minilib_plots'" in first.stderr
    assert first.measured["missing_requirements"] == ["minilib_plots"]
    assert second.files["main.py"] == first.files["main.py"], "the model changed nothing"
    assert environment.program_extras(second.files) == ["minilib_plots"]
    assert "Added minilib_plots to requirements.txt" in second.change_log
    assert LLMCall.objects.filter(run=run, stage="fix").count() == 1, "not refused as the same program"


def test_a_pin_the_index_cannot_satisfy_is_taken_off_in_the_fix_whatever_the_model_writes(
    tmp_path, monkeypatch, settings
):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    # Seen on a paper's run: told that corner==0.4.1 does not exist, the 1.5B model wrote corner==0.4.0.
    # The index is a folder of the repository (mounted at /repo in the sandbox), holding tinydep 1.0 only.
    wheel_name = "tinydep-1.0-py3-none-any.whl"
    files = {
        **MINILIB,
        f"index/tinydep/{wheel_name}": wheel("tinydep", "1.0", "def double(x):\n    return 2 * x\n"),
        "index/tinydep/index.html": f'<a href="{wheel_name}">{wheel_name}</a>\n',
    }
    repo = make_git_repo(tmp_path / "minilib", files)
    monkeypatch.setenv("PIP_INDEX_URL", "file:///repo/index")
    main = WORKING_MAIN.replace("import json\n", "import json\nimport tinydep\n")
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(main, requirements="tinydep==0.4.1\n")),
         ("fix", program(main, requirements="tinydep==0.4.0\n", changes="Root cause: no tinydep 0.4.1.")),
         ("judge", verdict(True))],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    first, second = run.iterations.all()
    assert "No matching distribution found for tinydep==0.4.1" in first.install_log
    assert first.measured["unavailable_versions"] == {"tinydep": ["1.0"]}
    assert environment.program_extras(second.files) == ["tinydep"]
    assert "Unpinned tinydep==0.4.0 (pip has 1.0) in requirements.txt" in second.change_log
    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert second.exit_code == 0 and "tinydep-1.0" in second.install_log


# What a model copies from the last change log: a note of the check before running, not its own change.
COPIED_NOTE = "Before running: added `import json` to main.py, used without its import."


def test_a_fix_after_a_value_json_could_not_write_writes_it_even_when_the_model_changed_nothing(
    repo, tmp_path
):
    # Seen on pwlf: "Object of type ndarray is not JSON serializable". Here a Fraction, with no numpy.
    main = WORKING_MAIN.replace(
        '{"mean_squared": value}', '{"mean_squared": value, "exact": Fraction(14, 3)}'
    ).replace("import json\n", "import json\nfrom fractions import Fraction\n")
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(main)),
         ("fix", program(main, changes=f"Root cause: a Fraction.\n{COPIED_NOTE}")), ("judge", verdict(True))],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    first, second = run.iterations.all()
    assert "Object of type Fraction is not JSON serializable" in first.stderr
    assert second.change_log.startswith("Root cause: a Fraction.\nBefore running: gave 2 json.dump calls in")
    assert "import json" not in second.change_log, "the copied note of what was done to another version"
    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert second.results == {"mean_squared": 14 / 3, "exact": "14/3"}


def test_a_dependency_that_does_not_exist_stops_the_run_at_the_environment_with_one_line(tmp_path, settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    needy = {
        **MINILIB,
        "minilib/__init__.py": "import tinystats_dep_xyz\n\ndef mean_squared(xs):\n    return 0\n",
        "setup.py": "from setuptools import setup\n"
        "setup(name='minilib', packages=['minilib'], install_requires=['tinystats_dep_xyz>=1.0'])\n",
    }
    repo = make_git_repo(tmp_path / "needy", needy)
    run = start(repo, tmp_path, survey_replies(), max_environment_repairs=0)
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.FAILED
    assert run.status_message.startswith("The environment could not be prepared: install failed: exit code 1")
    assert "\n" not in run.status_message
    assert "tinystats_dep_xyz" in run.environment["install_log"]
    assert not run.iterations.exists(), "no program is written for an environment that does not work"
    assert list(run.steps.values_list("name", "outcome")) == [
        ("fetch", "done"), ("survey", "done"), ("prepare", "failed")
    ]  # fmt: skip
    assert not LLMCall.objects.filter(run=run, stage__in=["environment", "generate"]).exists()

    assert services.resume_status(run) == Run.Status.PREPARING, "a retry prepares it again"


def test_programs_are_written_for_the_prepared_environment_and_bad_requirement_lines_are_named(
    repo, tmp_path
):
    # Two requirements on one line, as a small model wrote them: the line is left out and named, the
    # install goes on; the program fails on its own mistake, which is the likely cause after it.
    broken = program(BROKEN_MAIN, requirements="`tinystats_dep_xyz>=1.0 numpy`\n")
    run = start(repo, tmp_path, [*survey_replies(), ("generate", broken)], max_debug_iterations=1)
    run = services.run_until_finished(run_id=run.pk)

    assert run.environment["status"] == "ready", (run.environment.get("reason"), run.status_message)
    assert run.environment["installed"]["name"] == "minilib"
    generate_prompt = LLMCall.objects.get(run=run, stage="generate").prompt[0]["content"]
    assert "The repository is installed as minilib 0.0.0. These imports work: minilib." in generate_prompt
    assert "=== FILE: runscript.sh ===" not in generate_prompt, "the runscript is derived, not asked for"
    first = run.iterations.get()
    assert first.files["requirements.txt"].startswith("# The repository itself\nminilib @ git+file://")
    assert "tinystats" not in first.files["requirements.txt"]
    assert first.sandbox["env_reused"], "the program runs in the environment the step proved"
    assert first.measured["diagnosis"][0] == (
        "requirements.txt: 'tinystats_dep_xyz>=1.0 numpy' is not a requirement pip can read; it was left out"
    )


def test_a_fix_that_sends_back_the_failed_program_unchanged_is_repaired_not_run(repo, tmp_path):
    same = program(BROKEN_MAIN + "\n", changes="Root cause: a wrong name.")  # only whitespace differs
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(BROKEN_MAIN)), ("fix", same),
         ("fix", program(WORKING_MAIN, changes="Import mean_squared.")), ("judge", verdict(True))],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert run.iterations.count() == 2 and run.steps.filter(name="execute").count() == 2
    first_try, second_try = LLMCall.objects.filter(run=run, stage="fix").order_by("pk")
    assert "the files are the same as the version that failed" in second_try.prompt[-1]["content"]


def test_a_judges_objection_the_fixer_cannot_act_on_fails_the_run_and_offers_the_measured_pass(
    repo, tmp_path
):
    # The program ran, wrote its results and used the repository; only the judge objected, and the fixer
    # sent the same program back every time: "failed" with the judge's reason, not "error".
    same = program(WORKING_MAIN + "\n", changes="Nothing to change.")
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program()), ("judge", verdict(False)),
         ("fix", same), ("fix", same), ("fix", same)],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.FAILED, run.status_message
    assert "passed the measurement" in run.status_message
    assert "it does not compute anything" in run.status_message, "the judge's reason is said"
    assert run.iterations.count() == 1
    first = run.iterations.get()
    assert first.measured["passed"] and not first.succeeded
    assert run.iterations.offered() == first


def test_a_forgotten_standard_library_import_is_added_before_the_first_run(repo, tmp_path):
    forgetful = WORKING_MAIN.replace("import json\n", "")
    run = start(
        repo, tmp_path, [*survey_replies(), ("generate", program(forgetful)), ("judge", verdict(True))]
    )
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    (iteration,) = run.iterations.all()
    assert iteration.files["main.py"] == "import json\n" + forgetful
    assert "added `import json` to main.py" in iteration.change_log
    assert LLMCall.objects.filter(run=run, stage="generate").count() == 1


def test_a_syntax_error_is_repaired_without_a_sandbox_run_or_an_iteration(repo, tmp_path):
    broken = WORKING_MAIN.replace("print(", "print((", 1)
    silent = "print('done')\n"  # compiles, but could never pass: it writes no results.json
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(broken)), ("generate", program(silent)),
         ("generate", program()), ("judge", verdict(True))],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert run.iterations.count() == 1 and run.steps.filter(name="execute").count() == 1
    first, second, third = LLMCall.objects.filter(run=run, stage="generate").order_by("pk")
    assert "main.py:9: '(' was never closed" in second.prompt[-1]["content"]
    assert "never writes results.json" in third.prompt[-1]["content"]


def test_an_undefined_name_the_repairs_keep_is_run_as_it_is_and_the_fix_loop_sees_why(repo, tmp_path):
    # Seen on a paper: three replies in a row called an undefined load_config(). Ending the run there
    # showed nothing; run, the NameError goes to a fix prompt, which asks for the root cause first.
    stubborn = WORKING_MAIN.replace('log = ["computing"]', "log = load_config()")
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), *[("generate", program(stubborn))] * 3,
         ("fix", program(WORKING_MAIN, changes="Root cause: load_config is defined nowhere.")),
         ("judge", verdict(True))],
        max_reply_repairs=2,
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    first, second = run.iterations.order_by("number")
    assert "Run as it is, although main.py:7:7: undefined name 'load_config' (still so after 3 replies)" in (
        first.change_log
    )
    assert first.exit_code != 0 and "NameError" in first.stderr
    assert (
        "NameError: name 'load_config' is not defined"
        in LLMCall.objects.get(run=run, stage="fix").prompt[-1]["content"]
    )
    assert second.succeeded


def test_plausible_output_without_the_repository_is_not_a_success(repo, tmp_path):
    run = start(
        repo,
        tmp_path,
        [*survey_replies(), ("generate", program(FAKE_MAIN)),
         ("fix", program(WORKING_MAIN, changes="Call minilib.mean_squared instead of printing its value.")),
         ("judge", verdict(True))],
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    fake, real = run.iterations.all()
    assert fake.exit_code == 0 and fake.results == {"mean_squared": pytest.approx(14 / 3)}
    assert fake.measured["exit_ok"] and fake.measured["results_ok"]
    assert not fake.measured["passed"] and fake.measured["uses_repository"] is False
    assert fake.proof["verdict"] == "unused" and fake.succeeded is False
    assert (fake.repo_modules_imported, fake.repo_functions_executed) == (0, 0)
    assert fake.judgement is None, "a program that does not use the repository is not put before the judge"
    assert "results.json" in fake.measured["flags"][0] and "literal" in fake.measured["flags"][0]
    fix_prompt = LLMCall.objects.get(run=run, stage="fix").prompt[0]["content"]
    assert (
        "- critical: the program does not use the repository: it imported none of its modules" in fix_prompt
    )
    assert "- flag: every value in results.json" in fix_prompt
    assert real.succeeded and real.proof["verdict"] == "proven" and "flags" not in real.measured
    assert LLMCall.objects.filter(run=run, stage="judge").count() == 1
    state = json.loads((run.output_dir / "current_state.json").read_text())
    assert [it["proof"]["verdict"] for it in state["iterations"]] == ["unused", "proven"]
    assert "does not use the repository" in (run.output_dir / "report.html").read_text()


def test_exit_zero_without_results_json_is_not_a_success(repo, tmp_path):
    silent = "print('the example ran, trust me: see results.json')\n"  # named, never written
    run = start(repo, tmp_path, [*survey_replies(), ("generate", program(silent))], max_debug_iterations=1)
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.FAILED
    (iteration,) = run.iterations.all()
    assert iteration.exit_code == 0 and iteration.succeeded is False
    assert iteration.measured["exit_ok"] and not iteration.measured["results_ok"]
    assert "results.json was not written" in iteration.measured["reasons"]
    assert not LLMCall.objects.filter(run=run, stage="judge").exists()


def test_malformed_replies_are_repaired_and_never_crash_the_run(repo, tmp_path):
    run = start(
        repo,
        tmp_path,
        [("purpose", PURPOSE), ("rate", "I think they are all great!"), ("rate", "still not JSON"),
         ("generate", "```python\nprint('no sections')\n```"), ("generate", program()),
         ("judge", "Looks good to me"), ("judge", verdict(True))],
        rate_files=True,
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    # Both rating replies were unreadable: the files are left unrated, the README still grounds the example.
    assert not FileRating.objects.filter(run=run, rating__isnull=False).exists()
    assert FileRating.objects.filter(run=run, path="README.md", selected=True).exists()
    assert LLMCall.objects.filter(run=run, stage="generate").count() == 2
    repair = LLMCall.objects.filter(run=run, stage="generate").last().prompt[-1]["content"]
    assert "could not be used" in repair and "main.py" in repair


def test_a_reply_that_stays_malformed_ends_the_run_with_a_clear_error(repo, tmp_path):
    run = start(
        repo, tmp_path, [*survey_replies(), *[("generate", "no code today")] * 3], max_reply_repairs=2
    )
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.ERROR
    assert "could not be used after 3 tries" in run.status_message
    assert run.steps.get(name="generate").outcome == RunStep.Outcome.FAILED


def test_only_the_profiles_number_of_files_is_rated_most_promising_first(repo, tmp_path):
    # A CPU model answers a batch of ratings in a minute or more: the local profile rates a few files only.
    entries = [*survey_replies(), ("generate", program()), ("judge", verdict(True))]
    run = start(repo, tmp_path, entries, max_rated_files=2, rate_files=True)
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    rated = set(run.file_ratings.exclude(rating=None).values_list("path", flat=True))
    assert rated == {"setup.py", "minilib/__init__.py"}  # top level first; minilib/extra.py sorts after
    (rate_call,) = LLMCall.objects.filter(run=run, stage="rate")
    assert "minilib/extra.py" not in rate_call.prompt[-1]["content"]


def test_a_rate_limit_is_retried_then_succeeds(repo, tmp_path, no_backoff_sleep):
    run = start(
        repo,
        tmp_path,
        [
            *survey_replies(),
            {"stage": "generate", "error": "rate_limit"},
            ("generate", program()),
            ("judge", verdict(True)),
        ],
    )
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    calls = list(LLMCall.objects.filter(run=run, stage="generate").values_list("attempt", "status"))
    assert calls == [(1, "error"), (2, "ok")]
    assert len(no_backoff_sleep) == 1


def test_the_cost_cap_stops_the_run_before_the_call_that_would_pass_it(repo, tmp_path):
    priced = [
        {"stage": "purpose", "reply": PURPOSE, "cost_usd": "0.40"},
        {"stage": "rate", "reply": ratings("README.md", "minilib/__init__.py"), "cost_usd": "0.40"},
        {"stage": "generate", "reply": program(), "cost_usd": "0.40"},
    ]
    # GPT-5 has known prices, so the gateway can estimate the generate call (up to 32k output tokens at
    # $10/M: over $0.30) before making it: $0.80 spent plus that passes the $0.90 cap.
    run = start(repo, tmp_path, priced, profile_name="gpt-5", max_cost_usd=0.9)
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.FAILED
    assert "cap" in run.status_message
    assert run.cost_usd == Decimal("0.80")
    assert LLMCall.objects.filter(run=run, stage="generate", status=LLMCall.Status.REFUSED).count() == 1
    assert not run.iterations.exists()


def test_links_a_program_leaves_behind_cannot_reach_the_host(repo, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    sneaky = (
        "import json, os\n"
        f"os.symlink({str(canary)!r}, 'stdout.txt')\n"
        "os.rmdir('to_save')\n"
        "os.symlink('/etc', 'to_save')\n"
        "json.dump({'x': 1}, open('results.json', 'w'))\n"
    )
    run = start(repo, tmp_path, [*survey_replies(), ("generate", program(sneaky))], max_debug_iterations=1)
    run = services.run_until_finished(run_id=run.pk)

    assert run.iterations.exists(), (run.status, run.status_message)
    iteration = run.iterations.get()
    assert iteration.exit_code == 0, iteration.stderr
    assert canary.read_text() == "untouched"
    assert iteration.saved_files == []
    assert not (iteration.output_dir / "to_save").is_symlink()
    assert environment.env_dir(run).is_dir(), "a commit's environment is kept for its next run"


def test_a_refused_source_is_a_clear_error_on_submit(settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = False
    with pytest.raises(services.RunRefused, match="local"):
        services.run_submit(source="/etc", profile_name="local", profile=load_profile("local"), enqueue=False)
    with pytest.raises(services.RunRefused):
        services.run_submit(
            source="file:///etc/passwd", profile_name="local", profile=load_profile("local"), enqueue=False
        )
    assert not Run.objects.exists()


def test_a_hostile_repository_is_surveyed_without_reading_what_it_must_not(tmp_path, settings):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    repo = make_git_repo(tmp_path / "hostile", {**MINILIB})
    (repo / "passwd").symlink_to("/etc/passwd")
    with open(repo / "big.bin", "wb") as f:
        f.truncate(200 * 1024 * 1024)
    import git

    with git.Repo(repo) as r:
        r.index.add(["passwd", "big.bin"])
        r.index.commit("add hostile files")
    run = start(repo, tmp_path, [*survey_replies(), ("generate", program()), ("judge", verdict(True))])
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    rated = set(FileRating.objects.filter(run=run).values_list("path", flat=True))
    assert "passwd" not in rated and "big.bin" not in rated
    assert "root:" not in json.dumps(list(LLMCall.objects.filter(run=run).values_list("prompt", flat=True)))


def test_cancel_stops_a_queued_run_at_once(repo, tmp_path):
    run = start(repo, tmp_path, [])
    run = services.run_cancel(run=run)
    assert run.status == Run.Status.CANCELLED and run.finished_at
    with pytest.raises(services.RunRefused, match="already finished"):
        services.run_cancel(run=run)
    assert services.run_advance(run_id=run.pk) is False


def test_cancel_stops_a_running_program(repo, tmp_path):
    slow = (
        "import time\nprint('started', flush=True)\ntime.sleep(60)\nopen('results.json', 'w').write('{}')\n"
    )
    run = start(repo, tmp_path, [*survey_replies(), ("generate", program(slow))])
    for _ in range(4):  # fetch, survey, prepare, generate
        services.run_advance(run_id=run.pk, enqueue_next=False)
    worker = threading.Thread(target=advance_in_thread, args=(run.pk,))
    worker.start()
    deadline = time.monotonic() + 60
    while "started" not in Iteration.objects.get(run=run).stdout:  # the live tail reaches the database
        assert time.monotonic() < deadline, "the program's output never reached the database"
        time.sleep(0.2)
    services.run_cancel(run=run)
    worker.join(timeout=30)

    assert not worker.is_alive()
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    iteration = run.iterations.get()
    assert iteration.sandbox["cancelled"] and iteration.duration_secs < 30
    # Stopped, not failed: one reason that says so, no exit code of None, no proof or likely cause of a
    # record that was cut short by the stop itself; and the time it started is kept.
    assert iteration.measured["reasons"] == ["the program was stopped while it ran: the run was cancelled"]
    assert iteration.measured["cancelled"] and not iteration.measured["passed"]
    assert iteration.proof is None and "diagnosis" not in iteration.measured
    assert iteration.started_at is not None and iteration.started_at <= iteration.finished_at


def advance_in_thread(run_id):
    try:
        services.run_advance(run_id=run_id, enqueue_next=False)
    finally:
        connection.close()


def test_a_run_whose_worker_died_is_resumed_without_losing_or_repeating_work(repo, tmp_path):
    run = start(repo, tmp_path, [*survey_replies(), ("generate", program()), ("judge", verdict(True))])
    for _ in range(4):  # fetch, survey, prepare, generate
        services.run_advance(run_id=run.pk, enqueue_next=False)
    # A worker claims the execute step and dies: its claim stays, its heartbeat goes stale, its step
    # stays "running" and the iteration was left half-run.
    Run.objects.filter(pk=run.pk).update(lease="dead-worker", heartbeat_at="2020-01-01T00:00:00Z")
    RunStep.objects.create(run=run, name="execute", iteration=1)
    Iteration.objects.filter(run=run).update(state=Iteration.State.RUNNING, stdout="partial")

    assert services.run_advance(run_id=run.pk, enqueue_next=False) is False, (
        "a claimed run is not advanced twice"
    )
    assert services.sweep_stale_runs() == [run.pk]
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert run.iterations.count() == 1
    assert LLMCall.objects.filter(run=run, stage="generate").count() == 1
    assert run.steps.filter(name="execute", outcome=RunStep.Outcome.INTERRUPTED).count() == 1
    assert "partial" not in run.iterations.get().stdout


def test_the_sweeper_leaves_runs_with_a_fresh_heartbeat_alone(repo, tmp_path):
    run = start(repo, tmp_path, [])
    Run.objects.filter(pk=run.pk).update(
        lease="busy-worker", heartbeat_at=run.created_at.__class__.now(run.created_at.tzinfo)
    )
    assert services.sweep_stale_runs() == []


def test_the_sweeper_waits_longer_for_a_queued_run_that_nobody_picked_up(repo, tmp_path, settings):
    from datetime import timedelta

    from django.utils import timezone

    run = start(repo, tmp_path, [])
    ten_minutes_ago = timezone.now() - timedelta(minutes=10)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=ten_minutes_ago)
    assert services.sweep_stale_runs() == [], "its task may still be waiting behind others"
    step = RunStep.objects.create(run=run, name="fetch")  # e.g. a step another worker has just started

    settings.DISTILL_LOST_TASK_SECS = 300
    assert services.sweep_stale_runs() == [run.pk]
    step.refresh_from_db()
    assert step.outcome == RunStep.Outcome.RUNNING, "an unclaimed run had no step to interrupt"
