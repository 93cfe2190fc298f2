"""`manage.py distill`: the engine in the foreground, as a batch tool."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from distill import services
from distill.models import Iteration, LLMCall, Paper, Run, RunStep
from tests.factories import make_git_repo, make_run
from tests.paper_pdfs import encrypted_pdf, paper_pdf
from tests.replies import WORKING_MAIN, cassette, program, verdict
from tests.test_many_workers import database_url
from tests.test_papers import PAPER_MAIN, coding_replies, evaluation_reply, planning_replies
from tests.test_pipeline import MINILIB, survey_replies

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
# Fails before it gets to write its results.
EXITS_3 = "import json\n\nraise SystemExit(3)\njson.dump({}, open('results.json', 'w'))\n"


def distill(*args, tmp_path, replay: Path | None = None, **env):
    """Runs the command in its own process, on the test database, as a user would."""
    full_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "codedistiller_site.settings",
        "DEBUG": "true",
        "DATABASE_URL": database_url(),
        "DATA_DIR": str(tmp_path / "data"),
        "DISTILL_ALLOW_LOCAL_SOURCES": "true",
        **({"DISTILL_LLM_REPLAY": str(replay)} if replay else {}),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "distill", *args],
        cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def test_it_distills_a_repository_and_exits_zero(tmp_path):
    repo = make_git_repo(tmp_path / "minilib", MINILIB)
    replay = cassette(
        tmp_path / "c.json", [*survey_replies(), ("generate", program()), ("judge", verdict(True))]
    )
    proc = distill(
        str(repo), "--profile", "local", "--output", str(tmp_path / "out"), tmp_path=tmp_path, replay=replay
    )
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    assert "1 of 1 succeeded" in out
    assert "executing" in out and "iteration 1/" in out  # the progress display
    run = Run.objects.get()
    assert run.status == Run.Status.SUCCEEDED
    (copied,) = (tmp_path / "out").iterdir()
    assert (copied / "report.html").is_file() and (copied / "iteration_1" / "main.py").is_file()


def test_a_failed_run_makes_the_exit_code_non_zero(tmp_path):
    repo = make_git_repo(tmp_path / "minilib", MINILIB)
    replay = cassette(tmp_path / "c.json", [*survey_replies(), ("generate", program(EXITS_3))])
    proc = distill(
        str(repo),
        "--config",
        str(write_profile(tmp_path, max_debug_iterations=1)),
        tmp_path=tmp_path,
        replay=replay,
    )
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 1
    assert "0 of 1 succeeded" in out
    assert Run.objects.get().status == Run.Status.FAILED


@pytest.mark.parametrize(
    "args, message",
    [
        (["file:///etc/passwd"], "error: "),
        (["https://user:s3cr3tpass@github.com/a/b"], "error: "),
        (["https://github.com/a/b", "--profile", "nope"], "error: unknown profile 'nope'"),
    ],
)
def test_refused_input_is_one_line_on_stderr_and_exit_2(tmp_path, args, message):
    proc = distill(*args, tmp_path=tmp_path)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert "Traceback" not in err and "s3cr3tpass" not in err
    assert not Run.objects.exists(), "nothing half-made"


def test_a_source_with_a_run_in_progress_is_refused_and_nothing_starts(tmp_path):
    free = make_git_repo(tmp_path / "free", MINILIB)
    busy_repo = make_git_repo(tmp_path / "busy", MINILIB)
    busy = make_run(source_url=str(busy_repo.resolve()), status=Run.Status.EXECUTING)
    proc = distill(str(free), str(busy_repo), "--profile", "local", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert lines == [f"error: {busy_repo.resolve()} already has a run in progress: run {busy.pk}."], err
    assert list(Run.objects.all()) == [busy], "nothing started, not even the free source before it"


def test_the_same_source_twice_is_refused_and_nothing_starts(tmp_path):
    repo = make_git_repo(tmp_path / "minilib", MINILIB)
    proc = distill(str(repo), str(repo), "--profile", "local", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 2, out + err
    assert err.strip().splitlines() == [f"error: {repo.resolve()} is given twice."], err
    assert not Run.objects.exists()


def test_a_text_file_of_sources_is_read_and_runs_in_parallel(tmp_path):
    repos = [make_git_repo(tmp_path / f"lib{i}", MINILIB) for i in range(2)]
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# two copies\n{repos[0]}\n\n{repos[1]}\n")
    entries = [*survey_replies(), ("generate", program()), ("judge", verdict(True))]
    config = write_profile(tmp_path, replay=str(cassette(tmp_path / "c.json", entries)))
    proc = distill(str(listing), "--config", str(config), "--parallel", "2", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    assert "2 of 2 succeeded" in out
    assert Run.objects.filter(status=Run.Status.SUCCEEDED).count() == 2


def test_it_distills_a_pdf_paper_alongside_a_repository(tmp_path):
    repo = make_git_repo(tmp_path / "minilib", MINILIB)
    pdf = tmp_path / "squares.pdf"
    pdf.write_bytes(paper_pdf())
    # One cassette serves both runs: replies are matched per run and stage, and the two runs' stages
    # differ but for the judge, which each run asks once.
    replay = cassette(
        tmp_path / "c.json",
        [*survey_replies(), ("generate", program()), ("judge", verdict(True)),
         *planning_replies(), *coding_replies(main=PAPER_MAIN),
         *[("evaluate", evaluation_reply(4))] * 3],
    )  # fmt: skip
    proc = distill(
        str(pdf), str(repo), "--config", str(write_profile(tmp_path, replay=str(replay))), tmp_path=tmp_path
    )
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    assert "Distilling 2 source(s)" in out and "2 of 2 succeeded" in out
    assert "Mean Squares for Tiny Lists] planning · iteration 0/" in out  # the paper's progress, in its words
    assert "Mean Squares for Tiny Lists] surveying" not in out
    paper_run = Run.objects.get(kind=Run.Kind.PAPER)
    assert paper_run.status == Run.Status.SUCCEEDED, paper_run.status_message
    assert paper_run.paper.source == "pdf" and paper_run.paper.filename == "squares.pdf"
    assert paper_run.paper.pages == 2 and paper_run.paper.authors == "Ada Lovelace, Alan Turing"
    assert paper_run.paper.plan["task_order"] == ["utils.py", "squares.py", "main.py"]
    assert paper_run.iterations.get().results == {"mean_of_squares": pytest.approx(14 / 3)}
    assert Run.objects.get(kind=Run.Kind.REPOSITORY).status == Run.Status.SUCCEEDED


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: [write_file(d / "locked.pdf", encrypted_pdf())],
         "locked.pdf: this paper cannot be used: the PDF is encrypted with a password"),
        (lambda d: [str(d / "missing.pdf")], "missing.pdf: No such file or directory"),
        (lambda d: ["--paper", write_file(d / "notes.txt", b"Too short.")],
         "notes.txt: this paper cannot be used: the paper's text is too short"),
        (lambda d: ["--paper", write_file(d / "squares.docx", b"PK\x03\x04")],
         "squares.docx: this paper cannot be used: a paper must be a PDF"),
        # A line of a .txt list is told apart like an argument.
        (lambda d: [write_file(d / "list.txt", write_file(d / "locked.pdf", encrypted_pdf()).encode())],
         "locked.pdf: this paper cannot be used: the PDF is encrypted"),
        # A readable paper first: the refusal after it leaves no run of it behind.
        (lambda d: [write_file(d / "squares.pdf", paper_pdf()), "file:///etc/passwd"], "error: "),
    ],
    ids=["encrypted", "missing", "too-short-text", "not-a-paper", "in-a-list", "good-paper-then-refused-repo"],
)  # fmt: skip
def test_a_refused_paper_is_one_line_on_stderr_and_exit_2(tmp_path, make_args, message):
    proc = distill(*make_args(tmp_path), "--profile", "local", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not Run.objects.exists() and not Paper.objects.exists(), "nothing half-made"


@pytest.mark.parametrize("source", ["2504.17192", "arxiv:2504.17192", "https://arxiv.org/abs/2504.17192"])
def test_an_arxiv_paper_out_of_reach_is_the_sites_clear_error(tmp_path, source):
    # A proxy on a closed port: arXiv is out of reach whatever this machine's network, as it is in
    # production behind a firewall.
    proc = distill(
        source, "--profile", "local", tmp_path=tmp_path,
        https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="",
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 2, out + err
    line = err.strip()
    assert line.startswith(f"error: {source}: this paper cannot be used: arXiv could not be reached"), err
    assert line.endswith("download the PDF and submit the file instead") and "\n" not in line
    assert not Run.objects.exists()


def test_a_process_killed_mid_run_is_resumed_from_its_last_step(tmp_path):
    slow = WORKING_MAIN.replace(
        "log = [", "import time\nprint('working', flush=True)\ntime.sleep(4)\nlog = ["
    )
    repo = make_git_repo(tmp_path / "minilib", MINILIB)
    replay = cassette(
        tmp_path / "c.json", [*survey_replies(), ("generate", program(slow)), ("judge", verdict(True))]
    )
    # The replay is part of the run's profile, so the process that resumes the run replays it too.
    proc = distill(str(repo), "--config", str(write_profile(tmp_path, replay=str(replay))), tmp_path=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not _iteration_is_running():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the program never started"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its sandbox die mid-execution
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    run = Run.objects.get()
    assert run.status == Run.Status.EXECUTING and run.lease
    from datetime import timedelta

    assert services.sweep_stale_runs(stale_after=timedelta(0)) == [run.pk]
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    assert run.iterations.count() == 1
    assert LLMCall.objects.filter(run=run, stage="generate").count() == 1, "generation was not repeated"
    assert run.steps.filter(name="execute", outcome=RunStep.Outcome.INTERRUPTED).count() == 1
    assert run.steps.filter(name="execute", outcome=RunStep.Outcome.DONE).count() == 1


def _iteration_is_running() -> bool:
    # The test runs in autocommit (transaction=True), so this read holds no transaction open while the
    # subprocess writes.
    assert connection.get_autocommit()
    stdout = Iteration.objects.filter(state=Iteration.State.RUNNING).values_list("stdout", flat=True).first()
    return bool(stdout and "working" in stdout)


def write_profile(tmp_path, **fields) -> Path:
    import json

    from distill.profiles import load_profile

    data = load_profile("local").model_dump()
    data.update(max_runtime_mins=1, **fields)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path
