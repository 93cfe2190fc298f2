"""A paper larger than the planner's budget: condensed section by section, cached, planned from; a plan
reply cut by the token limit continued; the replies' schemas."""

import json

import pytest
from django.urls import reverse

from distill import services
from distill.models import LLMCall, Run
from distill.pipeline import condense, paper_steps, papers, program
from distill.profiles import load_profile
from tests.replies import cassette
from tests.test_papers import planning_replies

BIG_PAPER = (
    "# Squares at Scale\n\nAda Lovelace\n\n"
    "## 1 Introduction\n\n" + "People have long wondered about squares and their averages. " * 40 + "\n\n"
    "## 2 Method\n\n" + "We square every value and average them with a running mean. " * 40 + "\n\n"
    "## 3 Experiments\n\n" + "We run it on lists of one thousand numbers drawn uniformly. " * 40 + "\n\n"
    "## 4 Conclusion\n\nSquares <b>work</b>.\n\n"
    "## References\n\n" + "[1] Someone. A book about squares.\n" * 20
)
# Small enough that the paper (about 1,400 tokens) is over the planner's budget (0.45 of 1,600).
SMALL_CONTEXT = {"context_tokens": 2600, "code_max_output_tokens": 1000}


def digest(**lists) -> str:
    return json.dumps({name: lists.get(name, []) for name in condense.FIELDS})


CONDENSE_REPLIES = [
    ("condense", digest()),  # the introduction specifies nothing
    ("condense", digest(components=["running mean of squared values"], equations=["m = sum(x_i^2) / n"])),
    ("condense", digest(data=["1,000 numbers, uniform on [0, 1]"], metrics=["mean of squares near 1/3"])),
]


def submit(tmp_path, entries, *, text=BIG_PAPER, **config):
    profile = load_profile("local", {**SMALL_CONTEXT, **config})
    profile.replay = str(cassette(tmp_path / f"cassette-{len(entries)}.json", entries))
    return services.run_submit_paper(
        paper=papers.from_markdown(text), profile_name="local", profile=profile, enqueue=False
    )


def prompts_of(run: Run, stage: str) -> list[str]:
    calls = LLMCall.objects.filter(run=run, stage=stage).order_by("pk")
    return [call.prompt[-1]["content"] for call in calls]


@pytest.mark.django_db
def test_a_paper_over_the_budget_is_condensed_per_section_and_planned_from_the_condensed_text(tmp_path):
    run = submit(tmp_path, [*CONDENSE_REPLIES, *planning_replies()])

    paper_steps.plan(run)

    asked = prompts_of(run, "condense")
    assert len(asked) == 3, (
        "the introduction, the method and the experiments; the tiny conclusion is kept as is"
    )
    assert (
        "Section: 1 Introduction" in asked[0] and "running mean" in asked[1] and "drawn uniformly" in asked[2]
    )
    assert not any("A book about squares" in prompt for prompt in asked), "references are never condensed"
    plan_prompt = prompts_of(run, "plan")[0]
    assert (
        "Equations: m = sum(x_i^2) / n" in plan_prompt and "Metrics: mean of squares near 1/3" in plan_prompt
    )
    assert "Squares <b>work</b>." in plan_prompt, "a small section is kept as it is"
    assert "People have long wondered" not in plan_prompt, "the paper's own text is not in the prompt"
    run.paper.refresh_from_db()
    condensed = run.paper.plan["condensed"]
    assert condensed["tokens"] <= condensed["budget_tokens"] < condensed["paper_tokens"]
    assert paper_steps.is_planned(run)


@pytest.mark.django_db
def test_the_condensed_paper_is_cached_per_paper_and_a_second_run_asks_nothing_again(tmp_path, data_dir):
    first = submit(tmp_path, [*CONDENSE_REPLIES, *planning_replies()])
    paper_steps.plan(first)
    assert list((data_dir / "paper-digests").glob("*-local_qwen2.5-coder-1.5b.json"))
    Run.objects.filter(pk=first.pk).update(status=Run.Status.FAILED)

    second = submit(tmp_path, planning_replies())  # no condense reply left: asking would be refused
    paper_steps.plan(second)

    assert not LLMCall.objects.filter(run=second, stage="condense").exists()
    assert "Equations: m = sum(x_i^2) / n" in prompts_of(second, "plan")[0]


@pytest.mark.django_db
def test_a_paper_that_fits_a_large_context_is_not_condensed(tmp_path):
    run = submit(tmp_path, planning_replies(), context_tokens=128000, code_max_output_tokens=16000)

    paper_steps.plan(run)

    assert not LLMCall.objects.filter(run=run, stage="condense").exists()
    run.paper.refresh_from_db()
    assert "condensed" not in run.paper.plan
    assert "People have long wondered" in prompts_of(run, "plan")[0]


def test_the_introduction_is_left_out_for_the_budget_before_the_method_and_experiments():
    rows = [
        {
            "title": "1 Introduction",
            "of": "1 Introduction",
            "level": 1,
            "digest": "Components: " + "x " * 200,
        },
        {"title": "2 Method", "of": "2 Method", "level": 1, "digest": "Components: the running mean"},
        {"title": "3 Experiments", "of": "3 Experiments", "level": 1, "digest": "Data: 1,000 numbers"},
        {
            "title": "4 Related work",
            "of": "4 Related work",
            "level": 1,
            "digest": "Components: " + "y " * 200,
        },
    ]
    text, rows = condense.fit("Squares", rows, budget=120)

    assert [row["used"] for row in rows] == [False, True, True, False]
    assert "the running mean" in text and "1,000 numbers" in text and "x x" not in text


def test_a_section_larger_than_a_prompt_is_split_at_paragraphs_and_the_references_left_out():
    text = "# T\n\n## 2 Method\n\n" + "\n\n".join(f"Paragraph {n}. " + "word " * 60 for n in range(6))
    text += "\n\n## References\n\n[1] A book.\n"
    sections = condense.sections_of(text, max_tokens=150, title="T")

    assert [s["of"] for s in sections] == ["2 Method"] * len(sections) and len(sections) >= 3
    assert sections[0]["title"] == "2 Method (part 1)" and "Paragraph 0." in sections[0]["text"]
    assert all("A book" not in s["text"] for s in sections)


@pytest.mark.django_db
def test_the_run_page_shows_what_each_section_contributed_escaped(tmp_path, reader_client):
    run = submit(tmp_path, [*CONDENSE_REPLIES[:1],
                            ("condense", digest(components=["<script>alert(1)</script> the mean"])),
                            *CONDENSE_REPLIES[2:], *planning_replies()])  # fmt: skip
    paper_steps.plan(run)

    html = reader_client.get(reverse("run_detail", args=[run.pk])).content.decode()

    assert 'data-testid="paper-condensed"' in html and "What it contributed" in html
    assert "Components: &lt;script&gt;alert(1)&lt;/script&gt; the mean" in html
    assert "<script>alert(1)</script>" not in html
    assert "condensed: nothing to implement" in html, "the introduction specified nothing"
    run.paper.refresh_from_db()
    reading = paper_steps.sections_read(run, run.paper)
    assert [(s["title"], s["read"]) for s in reading["sections"]] == [
        ("1 Introduction", "nothing"), ("2 Method", "condensed"), ("3 Experiments", "condensed"),
        ("4 Conclusion", "condensed"), ("References", "references")]  # fmt: skip


@pytest.mark.django_db
def test_a_plan_reply_cut_by_the_token_limit_is_continued_not_refused(tmp_path):
    plan = planning_replies()[0][1]
    cut = len(plan) // 2
    run = submit(
        tmp_path,
        [{"stage": "plan", "reply": plan[:cut], "tokens_out": 1000},  # all of code_max_output_tokens
         {"stage": "plan", "reply": "```json\n" + plan[cut:] + "\n```", "tokens_out": 300},
         *planning_replies()[1:]],
        text="# Squares\n\n## 1 Method\n\nSquare every value, then average them.\n",
    )  # fmt: skip

    paper_steps.plan(run)

    calls = LLMCall.objects.filter(run=run, stage="plan").order_by("pk")
    assert calls.count() == 2
    assert calls[1].prompt[-2] == {"role": "assistant", "content": plan[:cut]}
    assert "cut off at the length limit" in calls[1].prompt[-1]["content"]
    run.paper.refresh_from_db()
    assert run.paper.plan["overall_plan"] == json.loads(plan)
    assert run.paper.plan["replies"]["plan"] == plan, "the reply kept is the whole one"


@pytest.mark.django_db
def test_a_malformed_reply_within_the_limit_is_repaired_not_continued(tmp_path):
    plan = planning_replies()[0][1]
    run = submit(
        tmp_path,
        [{"stage": "plan", "reply": plan[:40], "tokens_out": 20}, ("plan", plan), *planning_replies()[1:]],
        text="# Squares\n\n## 1 Method\n\nSquare every value, then average them.\n",
    )

    paper_steps.plan(run)

    second = LLMCall.objects.filter(run=run, stage="plan").order_by("pk")[1]
    assert "could not be used" in second.prompt[-1]["content"]


def test_a_continuation_that_starts_again_replaces_the_cut_reply():
    assert program.joined('{"summary": "The pa', '{"summary": "The paper, again"}') == (
        '{"summary": "The paper, again"}'
    )
    assert program.joined('{"summary": "The pa', 'per"}') == '{"summary": "The paper"}'


def test_the_plan_and_digest_replies_have_schemas_the_local_grammar_compiles():
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    for schema in (condense.DIGEST_SCHEMA, paper_steps.OverallPlan.model_json_schema()):
        assert llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    # A small model's plan with a data set as an object is taken as prose, not refused.
    value = paper_steps.parse_overall_plan(
        json.dumps({"summary": "S.", "data": {"name": "lists", "size": 3}, "methodology": "square"})
    )
    assert value.data == "name: lists; size: 3" and value.methodology == ["square"]


@pytest.mark.django_db
def test_a_small_model_is_asked_the_architecture_and_its_diagrams_in_two_replies(tmp_path):
    plan, architecture, logic, config = planning_replies()
    whole = json.loads(architecture[1])
    files_only = {key: whole[key] for key in ("implementation_approach", "files", "open_questions")}
    diagrams = {key: whole[key] for key in ("class_diagram", "sequence_diagram")}
    run = submit(
        tmp_path,
        [plan, ("architecture", json.dumps(files_only)), ("diagrams", json.dumps(diagrams)), logic, config],
        text="# Squares\n\n## 1 Method\n\nSquare every value, then average them.\n",
    )

    paper_steps.plan(run)

    stages = list(LLMCall.objects.filter(run=run).order_by("pk").values_list("stage", flat=True))
    assert stages == ["plan", "architecture", "diagrams", "logic", "config"]
    assert "The diagrams come in the next step" in prompts_of(run, "architecture")[0]
    run.paper.refresh_from_db()
    saved = run.paper.plan["architecture"]
    assert saved["files"] == whole["files"] and saved["class_diagram"].startswith("classDiagram")
    assert saved["sequence_diagram"].startswith("sequenceDiagram") and paper_steps.is_planned(run)


@pytest.mark.django_db
def test_a_large_model_gives_the_architecture_with_its_diagrams_in_one_reply(tmp_path):
    run = submit(
        tmp_path,
        planning_replies(),
        text="# Squares\n\n## 1 Method\n\nSquare every value, then average them.\n",
        context_tokens=128000,
        code_max_output_tokens=16000,
    )

    paper_steps.plan(run)

    assert not LLMCall.objects.filter(run=run, stage="diagrams").exists()
    assert "Draw two Mermaid diagrams" in prompts_of(run, "architecture")[0]


def test_the_logic_designs_schema_names_only_the_architectures_files():
    schema = paper_steps.logic_schema(["utils.py", "main.py", "config.yaml"])

    assert schema["properties"]["task_list"]["items"]["enum"] == ["utils.py", "main.py"]
    assert schema["properties"]["task_list"]["minItems"] == 2 == schema["properties"]["task_list"]["maxItems"]
    depends = schema["properties"]["files"]["items"]["properties"]["depends_on"]["items"]
    assert depends["enum"] == ["utils.py", "main.py", "config.yaml"]
    assert schema["properties"]["files"]["maxItems"] == 2, "one entry a coded file at most"
    # The example's "..." that a small model copies into the file list is not a file.
    architecture = paper_steps.parse_architecture(
        json.dumps({"implementation_approach": "Plain.", "files": ["main.py", "config.yaml", "..."]}),
        schema=paper_steps.ArchitectureFiles,
    )
    assert architecture.files == ["main.py", "config.yaml"]
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    assert llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


@pytest.mark.django_db
def test_each_planning_reply_is_asked_with_its_schema(tmp_path):
    from unittest import mock

    from distill import llm

    run = submit(tmp_path, [], text="# Squares\n\n## 1 Method\n\nSquare every value, then average them.\n")
    replies = dict(planning_replies())
    whole = json.loads(replies["architecture"])
    replies["architecture"] = json.dumps({k: whole[k] for k in ("implementation_approach", "files")})
    replies["diagrams"] = json.dumps({k: whole[k] for k in ("class_diagram", "sequence_diagram")})
    schemas = {}

    def fake_complete(**kwargs):
        schemas[kwargs["stage"]] = kwargs["schema"]
        return llm.LLMReply(text=replies[kwargs["stage"]], tokens_in=1, tokens_out=1, cost_usd=0, call_id=0)

    with mock.patch.object(llm, "complete", fake_complete):
        paper_steps.plan(run)

    assert schemas["plan"] == paper_steps.OverallPlan.model_json_schema()
    assert schemas["architecture"] == paper_steps.ArchitectureFiles.model_json_schema()
    assert schemas["diagrams"] == paper_steps.Diagrams.model_json_schema()
    assert schemas["logic"] == paper_steps.logic_schema(whole["files"])
    assert schemas["config"] is None, "config.yaml is a file, not JSON"


@pytest.mark.django_db
def test_diagrams_a_small_model_cannot_draw_are_drawn_from_the_file_list_and_planning_goes_on(tmp_path):
    plan, architecture, logic, config = planning_replies()
    whole = json.loads(architecture[1])
    files_only = {key: whole[key] for key in ("implementation_approach", "files")}
    example = json.dumps({"class_diagram": "classDiagram\n  class Model {\n    +forward(x)\n  }",
                          "sequence_diagram": "sequenceDiagram\n  participant M as main\n  M->>Model: forward"})  # fmt: skip
    run = submit(
        tmp_path,
        [plan, ("architecture", json.dumps(files_only)), *[("diagrams", example)] * 3, logic, config],
        text="# Squares\n\n## 1 Method\n\nSquare every value, then average them.\n",
    )

    paper_steps.plan(run)

    assert LLMCall.objects.filter(run=run, stage="diagrams").count() == 3, (
        "the prompt's example is no diagram"
    )
    run.paper.refresh_from_db()
    saved = run.paper.plan["architecture"]
    assert "drawn from the file list" in saved["class_diagram"] and "class utils" in saved["class_diagram"]
    assert "main->>squares: uses" in saved["sequence_diagram"] and paper_steps.is_planned(run)


def test_one_good_diagram_is_kept_and_the_other_drawn_from_the_file_list():
    reply = json.dumps({"class_diagram": "classDiagram\n  class Sampler {\n    +run(steps)\n  }",
                        "sequence_diagram": "sequenceDiagram\n  participant M as main\n  M->>Model: forward"})  # fmt: skip
    diagrams = paper_steps.parse_diagrams(reply, files=["main.py", "sampler.py", "config.yaml"])

    assert "class Sampler" in diagrams.class_diagram
    assert (
        "drawn from the file list" in diagrams.sequence_diagram
        and "main->>sampler: uses" in diagrams.sequence_diagram
    )
    with pytest.raises(paper_steps.parsing.ReplyError, match="class_diagram"):
        paper_steps.parse_diagrams(json.dumps({"class_diagram": "graph TD"}), files=["main.py"])
