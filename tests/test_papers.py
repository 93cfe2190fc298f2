"""Papers: reading them (PDF, Markdown, text, arXiv), planning, coding in order, the debug loop, the pages."""

import json
import re
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from distill import llm, services
from distill.models import LLMCall, Paper, Run, RunStep
from distill.pipeline import paper_steps, papers, parsing
from distill.profiles import load_profile
from tests.factories import make_iteration, make_run
from tests.paper_pdfs import corrupt_pdf, encrypted_pdf, image_only_pdf, make_pdf, paper_pdf
from tests.replies import cassette, program, verdict

MARKDOWN_PAPER = """\
# Mean Squares for Tiny Lists

Ada Lovelace, Alan Turing

## Abstract

We compute the mean of the squares of a list of numbers, a method with a large name.

## 1 Method

Square every value, then average them. The list is read from the configuration.

```python
# a heading inside code is not a section
```

## 2 Experiments

We run it on [1, 2, 3] and report the mean of squares, 14/3.

## References

[1] Someone. A book about squares.
"""


# Reading a paper ---------------------------------------------------------------------------------------


def test_a_pdf_keeps_its_title_authors_and_sections():
    paper = papers.from_pdf(paper_pdf(), filename="squares.pdf")

    assert paper.source == "pdf" and paper.pages == 2 and paper.filename == "squares.pdf"
    assert paper.title == "Mean Squares for Tiny Lists"
    assert paper.authors == "Ada Lovelace, Alan Turing"
    assert [(s["title"], s["level"], s["page"]) for s in paper.sections] == [
        ("1 Introduction", 1, 1),
        ("2 Method", 1, 2),
        ("2.1 Squaring", 2, 2),
        ("References", 1, 2),
    ]
    assert "## 1 Introduction\nWe compute the mean of the squares" in paper.text
    assert "### 2.1 Squaring" in paper.text


def test_headings_are_found_by_font_size_without_numbers():
    pdf = make_pdf([[(20, "A Title Set Large"), (11, "Body text that is long enough to be the body."),
                     (15, "Our Clever Idea"), (11, "More body text, and then some more body text.")]])  # fmt: skip
    paper = papers.from_pdf(pdf)
    assert paper.title == "A Title Set Large"
    assert [s["title"] for s in paper.sections] == ["Our Clever Idea"]


@pytest.mark.parametrize(
    "data, message",
    [
        (encrypted_pdf(), "encrypted"),
        (corrupt_pdf(), "could not be read; it may be damaged"),
        (image_only_pdf(), "no text layer"),
        (b"GIF89a not a pdf", "not a PDF"),
    ],
    ids=["encrypted", "corrupt", "image-only", "not-a-pdf"],
)
def test_an_unreadable_pdf_is_refused_clearly(data, message):
    with pytest.raises(papers.PaperRefused, match=message):
        papers.from_pdf(data)


def test_the_size_and_page_limits_are_enforced():
    with pytest.raises(papers.PaperRefused, match="larger than 1 MB"):
        papers.from_pdf(
            b"%PDF-1.4\n" + b"0" * (1024 * 1024), limits=papers.Limits(max_bytes=1024 * 1024, max_pages=100)
        )
    with pytest.raises(papers.PaperRefused, match="2 pages; the limit is 1"):
        papers.from_pdf(paper_pdf(), limits=papers.Limits(max_bytes=10**6, max_pages=1))


def test_the_limits_come_from_the_settings(settings):
    settings.DISTILL_MAX_PAPER_MB = 1
    settings.DISTILL_MAX_PAPER_PAGES = 7
    assert papers.Limits.from_settings() == papers.Limits(max_bytes=1024 * 1024, max_pages=7)


def test_markdown_keeps_its_headings_and_ignores_code():
    paper = papers.from_markdown(MARKDOWN_PAPER)
    assert paper.title == "Mean Squares for Tiny Lists"
    assert paper.authors == "Ada Lovelace, Alan Turing"
    assert [s["title"] for s in paper.sections] == ["Abstract", "1 Method", "2 Experiments", "References"]
    assert papers.looks_like_markdown(MARKDOWN_PAPER)


def test_plain_text_gets_headings_from_numbering_and_names():
    text = "Mean Squares\n\nAbstract\nWe square numbers and average them, carefully.\n\n1 Method\nSquare them.\n\n2.1 Data\nA list.\n"
    paper = papers.from_text(text)
    assert [(s["title"], s["level"]) for s in paper.sections] == [
        ("Abstract", 1),
        ("1 Method", 1),
        ("2.1 Data", 2),
    ]
    assert "## 1 Method" in paper.text and "### 2.1 Data" in paper.text
    assert not papers.looks_like_markdown(text)


def test_a_file_is_read_as_a_pdf_markdown_or_text_by_its_name_or_first_bytes():
    assert papers.from_file(paper_pdf(), filename="squares").source == "pdf"
    assert papers.from_file(MARKDOWN_PAPER.encode(), filename="squares.md").source == "markdown"
    text = "Mean Squares\n\nAbstract\nWe square numbers and average them, carefully.\n"
    assert papers.from_file(text.encode(), filename="squares.txt").source == "text"
    with pytest.raises(papers.PaperRefused, match="must be a PDF, a Markdown"):
        papers.from_file(b"PK\x03\x04", filename="squares.docx")
    with pytest.raises(papers.PaperRefused, match="not UTF-8"):
        papers.from_file(b"\xff\xfe" + text.encode("utf-16-le"), filename="squares.txt")


@pytest.mark.parametrize(
    "source, link",
    [("2504.17192", "https://arxiv.org/abs/2504.17192"), ("arxiv:hep-th/9901001", "https://arxiv.org/abs/hep-th/9901001"),
     ("https://arxiv.org/pdf/2504.17192v2", "https://arxiv.org/pdf/2504.17192v2"),
     ("https://github.com/a/b", None), ("papers/squares.pdf", None), ("http://[broken", None)],
)  # fmt: skip
def test_arxiv_names_are_told_from_other_sources(source, link):
    assert papers.arxiv_link(source) == link


def test_a_text_too_short_is_refused():
    with pytest.raises(papers.PaperRefused, match="too short"):
        papers.from_markdown("# Title\n\nshort")


def test_references_are_left_out_of_prompts_but_appendices_kept():
    text = "# T\n\n" + "body " * 100 + "\n\n## References\n[1] x\n\n## Appendix A\nDetails.\n"
    trimmed = papers.without_references(text)
    assert "[1] x" not in trimmed and "## Appendix A\nDetails." in trimmed and "body" in trimmed


@pytest.mark.parametrize(
    "url, identifier",
    [
        ("https://arxiv.org/abs/2504.17192", "2504.17192"),
        ("https://arxiv.org/pdf/2504.17192v2", "2504.17192v2"),
        ("https://arxiv.org/pdf/2504.17192v2.pdf", "2504.17192v2"),
        ("https://arxiv.org/abs/hep-th/9901001", "hep-th/9901001"),
    ],
)
def test_arxiv_links_give_their_identifier(url, identifier):
    assert papers.arxiv_id(url) == identifier


@pytest.mark.parametrize(
    "url",
    ["http://arxiv.org/abs/2504.17192", "https://evil.org/abs/2504.17192", "https://arxiv.org/list/cs",
     "https://user:pw@arxiv.org/abs/2504.17192", "https://arxiv.org:8443/abs/2504.17192",
     "https://arxiv.org/abs/../../etc/passwd"],
)  # fmt: skip
def test_other_links_are_refused(url):
    with pytest.raises(papers.PaperRefused):
        papers.arxiv_id(url)


def test_arxiv_out_of_reach_is_a_clear_error(monkeypatch):
    import urllib.error

    def unreachable(self, request, timeout=None):
        assert request.full_url == "https://arxiv.org/pdf/2504.17192" and timeout == papers.FETCH_TIMEOUT_SECS
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(papers.urllib.request.OpenerDirector, "open", unreachable)
    with pytest.raises(papers.PaperRefused, match="arXiv could not be reached from this server"):
        papers.from_arxiv("https://arxiv.org/abs/2504.17192")


def test_an_arxiv_pdf_is_read_within_the_size_limit(monkeypatch):
    class Response:
        headers = {"Content-Length": str(len(paper_pdf()))}

        def __init__(self, body):
            self.body = body

        def read(self, limit):
            return self.body[:limit]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(
        papers.urllib.request.OpenerDirector, "open", lambda self, r, timeout=None: Response(paper_pdf())
    )
    paper = papers.from_arxiv("https://arxiv.org/pdf/2504.17192.pdf")
    assert paper.source == "arxiv" and paper.url == "https://arxiv.org/abs/2504.17192"
    assert paper.title == "Mean Squares for Tiny Lists"

    big = Response(b"%PDF-" + b"0" * 2000)
    big.headers = {}
    monkeypatch.setattr(papers.urllib.request.OpenerDirector, "open", lambda self, r, timeout=None: big)
    with pytest.raises(papers.PaperRefused, match="larger than"):
        papers.from_arxiv(
            "https://arxiv.org/abs/2504.17192", limits=papers.Limits(max_bytes=1000, max_pages=10)
        )


# Planning, coding in order, the debug loop --------------------------------------------------------------

CLASS_DIAGRAM = 'classDiagram\n  class Squares {\n    +mean_squares(values)\n  }\n  note for Squares "<script>alert(1)</script>"'
SEQUENCE_DIAGRAM = "sequenceDiagram\n  participant M as main\n  M->>Squares: mean_squares(values)"

UTILS_PY = "def square(x):\n    return x * x\n"
SQUARES_PY = "from utils import square\n\n\ndef mean_squares(values):\n    return sum(square(v) for v in values) / len(values)\n"
PAPER_MAIN = """\
import json

from squares import mean_squares

values = json.loads(open("config.yaml").read().split(":", 1)[1].split("#")[0])
value = mean_squares(values)
print("mean of squares:", value)
json.dump({"mean_of_squares": value}, open("results.json", "w"))
json.dump(["read config", "done"], open("log.json", "w"))
"""
PAPER_BROKEN_MAIN = (
    "import json\nfrom squares import mean_of_squares  # the wrong name\n\n"
    "json.dump({'mean': mean_of_squares([1])}, open('results.json', 'w'))\n"
)


def planning_replies(task_list=("utils.py", "squares.py", "main.py")):
    plan = {"summary": "The paper averages the squares of a list; the example computes it for [1, 2, 3].",
            "methodology": ["square each value", "average"], "experiments": ["the list [1, 2, 3]"],
            "data": "a list in config.yaml", "evaluation": ["the mean of squares"],
            "small_configuration": "three values"}  # fmt: skip
    architecture = {"implementation_approach": "Plain Python, no packages.",
                    "files": ["utils.py", "squares.py", "main.py", "config.yaml"],
                    "class_diagram": "```mermaid\n" + CLASS_DIAGRAM + "\n```", "sequence_diagram": SEQUENCE_DIAGRAM,
                    "open_questions": ["The paper does not say how to round; we do not round."]}  # fmt: skip
    logic = {"required_packages": [],
             "files": [{"file": "utils.py", "logic": "square(x)", "depends_on": []},
                       {"file": "squares.py", "logic": "mean_squares(values) with utils.square", "depends_on": ["utils.py"]},
                       {"file": "main.py", "logic": "reads config.yaml, writes results", "depends_on": ["squares.py"]}],
             "task_list": list(task_list), "shared_knowledge": "values is a list of floats"}  # fmt: skip
    return [
        ("plan", json.dumps(plan)),
        ("architecture", json.dumps(architecture)),
        ("logic", "Here is the design:\n```json\n" + json.dumps(logic) + "\n```"),
        ("config", "=== FILE: config.yaml ===\nvalues: [1, 2, 3]  # the paper's own list\n=== END ==="),
    ]


def coding_replies(main=PAPER_BROKEN_MAIN):
    return [
        ("analysis", "utils.py holds square(x), which returns x times x."),
        ("analysis", "squares.py holds mean_squares(values), using utils.square."),
        ("analysis", "main.py reads config.yaml and writes results.json."),
        ("code", f"=== FILE: utils.py ===\n{UTILS_PY}=== END ==="),
        ("code", f"=== FILE: squares.py ===\n{SQUARES_PY}=== END ==="),
        ("entry", program(main)),
    ]


def evaluation_reply(score):
    return json.dumps({"critiques": [{"file": "squares.py", "severity": "Low", "critique": "No rounding."}],
                       "score": score})  # fmt: skip


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(llm, "_sleep", lambda secs: None)


def submit_paper(tmp_path, entries, text=MARKDOWN_PAPER, **overrides) -> Run:
    overrides.setdefault("max_debug_iterations", 3)
    overrides.setdefault("max_runtime_mins", 1)
    overrides["replay"] = str(cassette(tmp_path / "cassette.json", entries))
    profile = load_profile("local", overrides)
    return services.run_submit_paper(
        paper=papers.from_markdown(text), profile_name="local", profile=profile, enqueue=False
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_markdown_paper_is_planned_coded_in_order_run_fixed_and_scored(tmp_path, no_backoff):
    run = submit_paper(
        tmp_path,
        [*planning_replies(), *coding_replies(),
         ("fix", program(PAPER_MAIN, changes="Import mean_squares, the function's real name.")),
         ("judge", verdict(True)),
         ("evaluate", evaluation_reply(4)), ("evaluate", "not JSON"), ("evaluate", evaluation_reply(3)),
         ("evaluate", evaluation_reply(5))],
    )  # fmt: skip
    assert run.kind == Run.Kind.PAPER and run.source_url.startswith("paper:mean-squares-for-tiny-lists-")
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.SUCCEEDED, run.status_message
    paper = run.paper
    assert paper.title == "Mean Squares for Tiny Lists" and paper.authors == "Ada Lovelace, Alan Turing"
    plan = paper.plan
    assert plan["overall_plan"]["small_configuration"] == "three values"
    assert plan["architecture"]["class_diagram"] == CLASS_DIAGRAM, "the Markdown fence is taken off"
    assert plan["task_order"] == ["utils.py", "squares.py", "main.py"]
    assert plan["config_yaml"].startswith("values: [1, 2, 3]")
    assert run.repository_description.startswith("The paper averages the squares")

    # Planning is one conversation: each stage sees the replies before it.
    config_call = LLMCall.objects.get(run=run, stage="config")
    assert [m["role"] for m in config_call.prompt] == ["system", *["user", "assistant"] * 3, "user"]
    assert "Mean Squares for Tiny Lists" in config_call.prompt[1]["content"]

    # The files are written in the task order, each seeing the ones before it.
    code_prompts = [
        c.prompt[-1]["content"] for c in LLMCall.objects.filter(run=run, stage="code").order_by("pk")
    ]
    assert ["Write `utils.py`" in code_prompts[0], "Write `squares.py`" in code_prompts[1]] == [True, True]
    assert UTILS_PY.strip() not in code_prompts[0] and UTILS_PY.strip() in code_prompts[1]
    assert "square(x)" in code_prompts[0], "the file's analysis is in its prompt"
    entry_prompt = LLMCall.objects.get(run=run, stage="entry").prompt[0]["content"]
    assert UTILS_PY.strip() in entry_prompt and SQUARES_PY.strip() in entry_prompt
    stages = list(LLMCall.objects.filter(run=run).order_by("pk").values_list("stage", flat=True))
    assert stages[:10] == ["plan", "architecture", "logic", "config", "analysis", "analysis", "analysis",
                           "code", "code", "entry"]  # fmt: skip

    first, second = run.iterations.all()
    # The set, not the order: PostgreSQL's jsonb does not keep keys in order (the order of writing is
    # checked above, on the calls).
    assert sorted(first.files) == [
        "config.yaml",
        "main.py",
        "requirements.txt",
        "runscript.sh",
        "squares.py",
        "utils.py",
    ]
    assert first.exit_code != 0 and "ImportError" in first.stderr and not first.succeeded
    assert second.exit_code == 0 and second.succeeded, second.stderr
    assert second.results == {"mean_of_squares": pytest.approx(14 / 3)}
    assert second.files["utils.py"] == UTILS_PY, "files the fixer left out are kept"
    assert second.proof is None, "a paper's program has no repository to prove it uses"
    fix_prompt = LLMCall.objects.get(run=run, stage="fix").prompt[0]["content"]
    assert "ImportError" in fix_prompt and "mean_of_squares" in fix_prompt and "config.yaml" in fix_prompt
    judge_prompt = LLMCall.objects.get(run=run, stage="judge").prompt[0]["content"]
    assert "reproduces a research paper" in judge_prompt and "squares.py" in judge_prompt
    assert list(run.steps.values_list("name", flat=True)) == [
        "fetch", "survey", "generate", "execute", "judge", "fix", "execute", "judge"]  # fmt: skip

    # The quality score: three samples (one repaired), averaged, with their critiques.
    evaluation = paper.evaluation
    assert evaluation["iteration"] == 2 and evaluation["score"] == 4.0
    assert [s["score"] for s in evaluation["samples"]] == [4, 3, 5]
    assert evaluation["samples"][0]["critiques"][0]["severity"] == "low"
    assert evaluation["severity_counts"] == {"high": 0, "medium": 0, "low": 1}
    assert "Quality score 4.0 of 5" in run.status_message

    # The output folder, as for repositories.
    state = json.loads((run.output_dir / "current_state.json").read_text())
    assert state["status"] == "succeeded" and state["repo_url"] == run.source_url
    assert (run.output_dir / "iteration_2" / "squares.py").read_text() == SQUARES_PY
    assert "File ratings" not in (run.output_dir / "report.html").read_text(), "a paper has no files to rate"
    assert json.loads((run.output_dir / "paper_plan.json").read_text())["task_order"] == plan["task_order"]
    assert json.loads((run.output_dir / "paper_evaluation.json").read_text())["score"] == 4.0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_malformed_planning_replies_are_repaired_and_a_hopeless_one_ends_the_run_clearly(
    tmp_path, no_backoff
):
    replies = planning_replies()
    bad_architecture = json.loads(replies[1][1]) | {"class_diagram": "graph TD; A-->B"}
    run = submit_paper(
        tmp_path,
        [replies[0], ("architecture", json.dumps(bad_architecture)), replies[1],
         ("logic", "I would write the files in a sensible order."), ("logic", "still no JSON"),
         ("logic", "nope")],
        context_tokens=128000,  # a large model's context: the architecture and its diagrams in one reply
    )  # fmt: skip
    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.ERROR
    assert "logic reply could not be used after 3 tries" in run.status_message
    repair = LLMCall.objects.filter(run=run, stage="architecture").last().prompt[-1]["content"]
    assert "could not be used" in repair and "classDiagram" in repair
    assert "architecture" in run.paper.plan and "logic_design" not in run.paper.plan
    assert services.resume_status(run) == Run.Status.SURVEYING


@pytest.mark.django_db
def test_a_resumed_planning_step_does_not_ask_again():
    run = services.run_submit_paper(
        paper=papers.from_markdown(MARKDOWN_PAPER),
        profile_name="local",
        profile=load_profile("local"),
        enqueue=False,
    )
    replies = planning_replies()
    paper = run.paper
    paper.plan = {"replies": {"plan": replies[0][1]}, "overall_plan": json.loads(replies[0][1])}
    paper.save()
    calls = []

    def fake_complete(**kwargs):
        calls.append(kwargs)
        text = dict(replies)[kwargs["stage"]]
        return llm.LLMReply(text=text, tokens_in=1, tokens_out=1, cost_usd=0, call_id=0)

    with mock.patch.object(llm, "complete", fake_complete):
        paper_steps.plan(run)
    assert [c["stage"] for c in calls] == ["architecture", "logic", "config"]
    assert calls[0]["messages"][2] == {"role": "assistant", "content": replies[0][1]}
    assert paper_steps.is_planned(run)


def test_the_task_order_puts_each_file_after_the_files_it_imports():
    design = {"files": [{"file": "model.py", "logic": "m", "depends_on": ["utils.py"]},
                        {"file": "train.py", "logic": "t", "depends_on": ["model.py", "data.py"]},
                        {"file": "data.py", "logic": "d", "depends_on": ["utils.py"]},
                        {"file": "utils.py", "logic": "u", "depends_on": []}],
              "task_list": ["model.py", "train.py", "data.py", "utils.py", "main.py"]}  # fmt: skip
    files = ["utils.py", "data.py", "model.py", "train.py", "main.py"]
    _, order = paper_steps.parse_logic_design(json.dumps(design), files=files)
    assert order == ["utils.py", "model.py", "data.py", "train.py", "main.py"]

    cycle = design | {"files": [{"file": "model.py", "logic": "m", "depends_on": ["train.py"]},
                                {"file": "train.py", "logic": "t", "depends_on": ["model.py"]}]}  # fmt: skip
    _, order = paper_steps.parse_logic_design(json.dumps(cycle), files=files)
    assert order == design["task_list"], "in a cycle, the task list's order"
    everything = design | {"files": [{"file": name, "logic": "x", "depends_on": files} for name in files]}
    _, order = paper_steps.parse_logic_design(json.dumps(everything), files=files)
    assert order == design["task_list"]
    with pytest.raises(parsing.ReplyError, match="leaves out data.py, model.py, train.py"):
        paper_steps.parse_logic_design(
            json.dumps(design | {"task_list": ["utils.py", "main.py"]}), files=files
        )
    with pytest.raises(parsing.ReplyError, match="not one of the architecture's files"):
        paper_steps.parse_logic_design(json.dumps(design | {"task_list": [*files, "extra.py"]}), files=files)


def test_a_plan_that_copies_the_prompts_placeholders_is_sent_back_as_missing():
    copied = {"summary": "3 to 6 sentences: what the paper does and what the implementation will show",
              "methodology": ["Each component of the method, one sentence each.", "A kernel ridge fit."]}  # fmt: skip
    with pytest.raises(parsing.ReplyError, match="summary: Field required"):
        paper_steps.parse_overall_plan(json.dumps(copied))
    plan = paper_steps.parse_overall_plan(json.dumps(copied | {"summary": "Fits a kernel ridge model."}))
    assert plan.methodology == ["A kernel ridge fit."]


def test_code_replies_must_be_the_asked_file_and_valid_python():
    assert paper_steps.parse_code_file("=== FILE: a.py ===\nx = 1\n=== END ===", "a.py") == "x = 1\n"
    assert paper_steps.parse_code_file("```python\nx = 1\n```", "a.py") == "x = 1\n"
    # A fence on one side of the file only (the 1.5B model, three times on emcee's paper).
    assert paper_steps.parse_code_file("=== FILE: a.py ===\nx = 1\n```\n=== END ===", "a.py") == "x = 1\n"
    assert (
        paper_steps.parse_code_file("=== FILE: a.py ===\n```python\nx = 1\n=== END ===", "a.py") == "x = 1\n"
    )
    with pytest.raises(parsing.ReplyError, match="gives b.py but not a.py"):
        paper_steps.parse_code_file("=== FILE: b.py ===\nx = 1\n=== END ===", "a.py")
    with pytest.raises(parsing.ReplyError, match="not valid Python: line 1"):
        paper_steps.parse_code_file("=== FILE: a.py ===\ndef broken(:\n=== END ===", "a.py")
    with pytest.raises(parsing.ReplyError, match="not valid YAML|mapping"):
        paper_steps.parse_config_yaml("=== FILE: config.yaml ===\n- just\n- a list\n=== END ===")
    # Cut at the token limit in the middle of a line: the whole lines are the configuration.
    cut = "```yaml\n=== FILE: config.yaml ===\nseed: 42\nsteps: 10\nplot_ti"
    assert paper_steps.parse_config_yaml(cut) == "seed: 42\nsteps: 10\n"


# The submit page and the run page -----------------------------------------------------------------------


def htmx(client, url):
    return client.get(url, headers={"HX-Request": "true"})


def post_paper(client, **fields):
    return client.post(reverse("run_new"), {"kind": "paper", "profile": "local", **fields})


@pytest.mark.django_db
def test_a_curator_submits_a_pasted_markdown_paper(curator_client, curator):
    response = post_paper(
        curator_client, paper_text=MARKDOWN_PAPER, paper_link="https://doi.org/10.1/squares"
    )

    run = Run.objects.get()
    assert response.status_code == 302 and response.url == reverse("run_detail", args=[run.pk])
    assert run.kind == Run.Kind.PAPER and run.submitted_by == curator and run.status == Run.Status.QUEUED
    assert (
        run.source_url == "https://doi.org/10.1/squares" and run.source_title == "Mean Squares for Tiny Lists"
    )
    assert run.paper.source == "markdown" and run.paper.text == MARKDOWN_PAPER
    assert run.paper.authors == "Ada Lovelace, Alan Turing"


@pytest.mark.django_db
def test_a_curator_uploads_a_pdf_and_may_correct_its_title(curator_client):
    upload = SimpleUploadedFile("squares.pdf", paper_pdf(), content_type="application/pdf")
    post_paper(curator_client, paper_file=upload, paper_title="Mean Squares, Revisited")

    paper = Run.objects.get(kind=Run.Kind.PAPER).paper
    assert paper.source == "pdf" and paper.pages == 2 and paper.filename == "squares.pdf"
    assert paper.title == "Mean Squares, Revisited" and paper.authors == "Ada Lovelace, Alan Turing"
    assert [s["title"] for s in paper.sections][:2] == ["1 Introduction", "2 Method"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data, message",
    [(encrypted_pdf(), "encrypted with a password"), (corrupt_pdf(), "it may be damaged"),
     (image_only_pdf(), "no text layer")],
    ids=["encrypted", "corrupt", "image-only"],
)  # fmt: skip
def test_an_unreadable_pdf_is_refused_on_the_form_and_nothing_is_made(curator_client, data, message):
    upload = SimpleUploadedFile("paper.pdf", data, content_type="application/pdf")
    response = post_paper(curator_client, paper_file=upload)

    assert response.status_code == 200
    assert "This paper cannot be used" in response.content.decode() and message in response.content.decode()
    assert not Run.objects.exists() and not Paper.objects.exists()


@pytest.mark.django_db
def test_a_paper_too_large_or_given_twice_or_not_at_all_is_refused(curator_client, settings):
    settings.DISTILL_MAX_PAPER_MB = 0
    response = post_paper(curator_client, paper_text=MARKDOWN_PAPER)
    assert "larger than" in response.content.decode()
    settings.DISTILL_MAX_PAPER_MB = 30
    both = post_paper(
        curator_client, paper_text=MARKDOWN_PAPER, paper_arxiv="https://arxiv.org/abs/2504.17192"
    )
    assert "one way only" in both.content.decode()
    assert "Upload the paper, paste its text" in post_paper(curator_client).content.decode()
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_an_unreachable_arxiv_is_a_clear_error_on_the_form(curator_client, monkeypatch):
    import urllib.error

    def unreachable(self, request, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(papers.urllib.request.OpenerDirector, "open", unreachable)
    response = post_paper(curator_client, paper_arxiv="https://arxiv.org/abs/2504.17192")
    assert "arXiv could not be reached from this server" in response.content.decode()
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_reader_may_not_submit_a_paper(reader_client):
    assert post_paper(reader_client, paper_text=MARKDOWN_PAPER).status_code == 403
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_the_same_paper_twice_while_one_runs_is_refused(curator_client):
    post_paper(curator_client, paper_text=MARKDOWN_PAPER)
    response = post_paper(curator_client, paper_text=MARKDOWN_PAPER)
    assert "already has a run in progress" in response.content.decode()
    assert Run.objects.count() == 1


def planned_run(**fields) -> Run:
    replies = dict(planning_replies())
    run = services.run_submit_paper(
        paper=papers.from_markdown(MARKDOWN_PAPER),
        profile_name="local",
        profile=load_profile("local"),
        enqueue=False,
    )
    architecture = json.loads(replies["architecture"]) | {"class_diagram": CLASS_DIAGRAM}
    logic = json.loads(replies["logic"].split("```json\n")[1].split("\n```")[0])
    Paper.objects.filter(run=run).update(
        plan={
            "overall_plan": json.loads(replies["plan"]),
            "architecture": architecture,
            "logic_design": logic,
            "task_order": logic["task_list"],
            "config_yaml": "values: [1, 2, 3]\n",
            "code": {"utils.py": UTILS_PY},
        },
        **fields,
    )
    Run.objects.filter(pk=run.pk).update(status=Run.Status.GENERATING)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_the_plan_is_on_the_run_page_with_its_diagrams_escaped(reader_client):
    run = planned_run()
    html = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()

    assert "<script>alert(1)</script>" not in html, "the diagram text is never raw HTML"
    assert '<pre class="mermaid" data-testid="class-diagram">classDiagram' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "vendor/mermaid/mermaid.min.js" in html and "js/paper-plan.js" in html
    tasks = html[html.index('data-testid="task-list"') :]
    assert tasks.index("utils.py") < tasks.index("squares.py") < tasks.index("main.py")
    assert '<span class="badge badge--ok">written</span>' in tasks.split("squares.py")[0]
    assert 'class="code hl"' in html and "values" in html, "config.yaml is highlighted"

    # The live part is rendered again every two seconds: the diagrams are kept, the scripts not reloaded.
    live = htmx(reader_client, reverse("run_detail", args=[run.pk])).content.decode()
    assert 'id="paper-diagrams" hx-preserve="true"' in live and "mermaid.min.js" not in live


LONG_PAPER = (
    "# Mean Squares at Length\n\n## Abstract\n\nWe average squares.\n\n"
    "## 1 <b>Method</b>\n\n" + "Square every value, then average them. " * 40 + "\n\n"
    "## 2 Experiments\n\n" + "We run it on many lists of numbers. " * 60 + "\n\n"
    "### 2.1 Lists\n\nShort ones.\n\n"
    "## 3 Discussion\n\n" + "It works. " * 20 + "\n\n"
    "## References\n\n" + "[1] Someone. A book about squares.\n" * 30
)


def paper_run(text: str, **config) -> Run:
    run = services.run_submit_paper(
        paper=papers.from_markdown(text), profile_name="local", profile=load_profile("local"), enqueue=False
    )
    Run.objects.filter(pk=run.pk).update(config=run.config | config)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_a_paper_run_page_shows_the_sections_the_planner_read_instead_of_file_ratings(reader_client):
    # Room for 450 tokens of the paper: the abstract and the method, then the experiments are cut.
    run = paper_run(LONG_PAPER, context_tokens=2000, code_max_output_tokens=1000)
    html = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()

    assert "File ratings" not in html and 'id="run-ratings"' not in html
    start = html.index('data-testid="paper-sections"')
    rows = html[start : html.index("</table>", start)].split("<tr")[2:]  # the header row left out
    reading = [(row.split("</td>")[0].rsplit(">", 1)[1], row.split("</td>")[2]) for row in rows]
    assert [title for title, _ in reading] == [
        "Abstract", "1 &lt;b&gt;Method&lt;/b&gt;", "2 Experiments", "2.1 Lists", "3 Discussion", "References"]  # fmt: skip
    badges = [
        "in full",
        "in full",
        "in part: cut here",
        *["not read: past the budget"] * 2,
        "left out: references",
    ]
    assert [badge in cell for (_, cell), badge in zip(reading, badges, strict=True)] == [True] * 6
    assert "up to 450 tokens: the paper has" in html and "so it was cut" in html
    assert '<a href="#paper-sections">6 sections</a>' in html, "the plan's panel links to them"
    assert ">Page</th>" not in html, "Markdown has no pages"


@pytest.mark.django_db
def test_the_sections_are_all_read_when_the_paper_fits_and_the_references_left_out():
    run = paper_run(MARKDOWN_PAPER)
    reading = paper_steps.sections_read(run, run.paper)

    assert [(s["title"], s["read"]) for s in reading["sections"]] == [
        ("Abstract", "full"), ("1 Method", "full"), ("2 Experiments", "full"), ("References", "references")]  # fmt: skip
    assert not reading["truncated"] and reading["budget_tokens"] == paper_steps._budget(run, 0.45)
    assert all(s["tokens"] > 0 for s in reading["sections"]) and not reading["paged"]

    pdf_run = services.run_submit_paper(
        paper=papers.from_pdf(paper_pdf()), profile_name="local", profile=load_profile("local"), enqueue=False
    )
    reading = paper_steps.sections_read(pdf_run, pdf_run.paper)
    assert reading["paged"] and [(s["title"], s["page"], s["read"]) for s in reading["sections"]] == [
        ("1 Introduction", 1, "full"), ("2 Method", 2, "full"), ("2.1 Squaring", 2, "full"),
        ("References", 2, "references")]  # fmt: skip


@pytest.mark.django_db
def test_a_paper_without_sections_says_so_and_a_repository_keeps_its_file_ratings(reader_client):
    run = paper_run("Mean squares, a paper without headings. " * 5)
    html = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "No sections were found in the paper" in html and "File ratings" not in html
    assert "of them fit" in html and "so it was cut" not in html, "the whole paper fit"

    repository = make_run()
    assert "File ratings" in reader_client.get(reverse("run_detail", args=[repository.pk])).content.decode()


def timeline_and_status(html: str) -> tuple[list[str], str]:
    timeline = html[html.index('id="timeline-h"') : html.index("</section>", html.index('id="timeline-h"'))]
    names = [name.strip() for name in re.findall(r'<span class="timeline__name">([^<]*)', timeline)]
    return names, re.search(r'data-testid="run-status">([^<]*)<', html)[1]


def with_first_steps(run: Run) -> Run:
    now = timezone.now()
    for name in ("fetch", "survey"):
        RunStep.objects.create(run=run, name=name, outcome="done", started_at=now, finished_at=now)
    RunStep.objects.create(run=run, name="generate", started_at=now)
    return run


@pytest.mark.django_db
def test_a_paper_runs_timeline_and_status_say_what_is_done_to_the_paper(curator_client):
    paper = with_first_steps(planned_run())
    repository = with_first_steps(make_run(status=Run.Status.GENERATING))

    html = curator_client.get(reverse("run_detail", args=[paper.pk])).content.decode()
    assert timeline_and_status(html) == (
        ["Read the paper", "Plan the code", "Analyse and code"],
        "Analysing and coding",
    )
    assert "badge--generating" in html, "the status is the state machine's own"
    stages = re.findall(r"<tr><td>([^<]*)</td>", html[html.index('id="stages-h"') :])
    assert stages[:2] == ["read the paper", "plan the code"] and "survey" not in stages
    assert "first one after planning" in html and "during the survey" not in html
    html = curator_client.get(reverse("run_detail", args=[repository.pk])).content.decode()
    assert timeline_and_status(html) == (["Fetch", "Survey", "Generate"], "Generating"), (
        "repositories keep theirs"
    )

    listing = curator_client.get(reverse("runs")).content.decode()
    assert ">Analysing and coding</span>" in listing and ">Generating</span>" in listing
    assert '<option value="surveying">Surveying / planning</option>' in listing


@pytest.mark.django_db
def test_a_stopped_paper_run_is_retried_from_its_planning_step_by_that_name(curator_client):
    run = services.run_submit_paper(
        paper=papers.from_markdown(MARKDOWN_PAPER),
        profile_name="local",
        profile=load_profile("local"),
        enqueue=False,
    )
    Run.objects.filter(pk=run.pk).update(status=Run.Status.ERROR)
    html = curator_client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "Retry from the planning step" in html and "surveying" not in html

    response = curator_client.post(reverse("run_retry", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == Run.Status.SURVEYING and run.status_label == "Planning"
    assert f"Run {run.pk} goes on from the planning step." in response.content.decode()


@pytest.mark.django_db
def test_a_repository_run_page_does_not_load_mermaid(reader_client):
    run = make_run()
    assert "mermaid" not in reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()


@pytest.mark.django_db
def test_the_quality_score_is_shown_with_its_critiques(reader_client):
    evaluation = {"iteration": 2, "score": 3.5, "asked": 3, "errors": ["the evaluate reply could not be used"],
                  "severity_counts": {"high": 1, "medium": 0, "low": 0.5},
                  "samples": [{"score": 3, "critiques": [{"file": "squares.py", "severity": "high", "critique": "<b>no</b> rounding"}]},
                              {"score": 4, "critiques": []}]}  # fmt: skip
    run = planned_run(evaluation=evaluation)
    html = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert '<span class="score" data-testid="quality-score">3.5</span>' in html
    assert "the mean of 2 samples, for iteration 2" in html
    assert "&lt;b&gt;no&lt;/b&gt; rounding" in html and "1 sample could not be used" in html
    assert "Critiques per sample, on average: 1 high · 0 medium · 0.5 low" in html

    evaluation["severity_counts"] = {"high": 0.0, "medium": 0.0, "low": 0.0}
    Paper.objects.filter(run=run).update(evaluation=evaluation)
    html = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "No sample found anything to critique." in html and "0.0 high" not in html


@pytest.mark.django_db
def test_an_approved_paper_example_carries_the_papers_title_authors_and_link(curator):
    from library.services import example_approve

    run = planned_run()
    Paper.objects.filter(run=run).update(url="https://arxiv.org/abs/2504.17192")
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    make_iteration(run, 1)
    example = example_approve(run=run, approved_by=curator, title="Mean squares", summary="From the paper.")

    assert example.source_kind == "paper"
    assert example.paper_title == "Mean Squares for Tiny Lists"
    assert example.paper_authors == "Ada Lovelace, Alan Turing"
    assert example.paper_url == "https://arxiv.org/abs/2504.17192"


@pytest.mark.django_db
def test_a_paper_run_is_run_again_from_its_paper(curator):
    run = planned_run()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED)
    again = services.run_rerun(
        run=run, profile_name="local", profile=load_profile("local"), submitted_by=curator
    )

    assert again.pk != run.pk and again.kind == Run.Kind.PAPER and again.source_url == run.source_url
    assert again.paper.text == MARKDOWN_PAPER and again.paper.plan == {}


@pytest.mark.django_db
def test_a_cancel_stops_the_coding_between_two_calls_and_a_retry_goes_on_from_there():
    run = planned_run()
    stages = []

    def fake_complete(**kwargs):
        stages.append(kwargs["stage"])
        if len(stages) == 2:
            Run.objects.filter(pk=run.pk).update(cancel_requested=True)
        return llm.LLMReply(
            text="An analysis, long enough to be kept.", tokens_in=1, tokens_out=1, cost_usd=0, call_id=0
        )

    with mock.patch.object(llm, "complete", fake_complete):
        services.run_advance(run_id=run.pk, enqueue_next=False)

    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and "between two calls" in run.status_message
    assert stages == ["analysis", "analysis"]
    assert list(run.paper.plan["analyses"]) == ["utils.py", "squares.py"], "what was made is kept"
    assert services.resume_status(run) == Run.Status.GENERATING
