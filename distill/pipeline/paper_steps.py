"""The steps of distilling a paper: PaperCoder's method, then the same run → judge → fix loop as repositories.

A paper's run goes through the statuses of a repository's run, each doing the paper's work:

- fetching: the paper was read when it was submitted (`distill.pipeline.papers`); this step checks it;
- surveying: planning, in one conversation with the code model: the overall plan, the architecture (file
  list, class and sequence diagrams), the logic design (each file's logic, the task list in dependency
  order, shared knowledge), then config.yaml;
- generating: an analysis per file, then the code file by file in the task list's order, each file seeing
  the ones before it, then main.py, requirements.txt and a runscript that run a small configuration:
  iteration 1;
- executing, judging, fixing: the program loop that repositories share (`distill.pipeline.program`),
  with a judge's and a fixer's prompt that speak of the paper instead of a repository. When the run
  ends, PaperCoder's reference-free evaluation scores the final code (several samples of per-file
  critiques and a 1-5 score, averaged).

Every reply has a strict schema (pydantic for the planning stages), a malformed one is repaired a bounded
number of times, and every stage's result is saved as it is made, so a resumed step goes on where it
stopped and never asks twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distill import llm
from distill.models import Iteration, Paper, Run
from distill.pipeline import condense, papers, parsing, program, prompts, survey
from distill.pipeline.program import StepFailed

logger = logging.getLogger(__name__)

MAX_PLAN_FILES = 20
# Written by the planning and entry stages, not one by one.
NOT_CODED = ("main.py", "config.yaml", "requirements.txt", "runscript.sh")
PAPER_EVAL_SAMPLES = 3  # PaperCoder's reference-free evaluation, averaged; a run's config may say otherwise
ANALYSIS_MAX_CHARS = 8000
CONFIG_MAX_TOKENS = 600  # a small configuration of a few dozen lines; more is a model that does not stop
PLANNING_STAGES = ("plan", "architecture", "logic", "config")
# For a small model (a context of at most PARTS_CONTEXT_TOKENS): the architecture without its diagrams,
# then the diagrams, so that no reply has to hold both (the 1.5B model's replies were cut or refused).
PLANNING_STAGES_IN_PARTS = ("plan", "architecture", "diagrams", "logic", "config")
PARTS_CONTEXT_TOKENS = 8192
PLAN_PAPER_SHARE = 0.45  # of the prompt's room, for the paper's text: the planner reads the most of it


# Reply schemas -----------------------------------------------------------------------------------------


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OverallPlan(_Reply):
    summary: str = Field(min_length=1)
    methodology: list[str] = []
    experiments: list[str] = []
    data: str = ""
    evaluation: list[str] = []
    small_configuration: str = ""

    @field_validator("summary", "data", "small_configuration", mode="before")
    @classmethod
    def _prose(cls, value):
        # Seen from the 1.5B model: "data" as an object or a list of data sets, and the plan refused for it.
        if isinstance(value, list):
            return "; ".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value)
        if isinstance(value, dict):
            return "; ".join(f"{k}: {v}" for k, v in value.items())
        return value

    @field_validator("methodology", "experiments", "evaluation", mode="before")
    @classmethod
    def _phrases(cls, value):
        if isinstance(value, str):
            return [value] if value.strip() else []
        if isinstance(value, list):
            return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
        return value


class ArchitectureFiles(_Reply):
    implementation_approach: str = Field(min_length=1)
    files: list[str] = Field(min_length=1)
    open_questions: list[str] = []

    @field_validator("files", mode="before")
    @classmethod
    def _without_ellipsis(cls, files):
        # The 1.5B model copies the example's "..." into its file list: a placeholder, not a file.
        if isinstance(files, list):
            return [name for name in files if not isinstance(name, str) or re.search(r"[A-Za-z0-9]", name)]
        return files

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files):
        if len(files) > MAX_PLAN_FILES:
            raise ValueError(f"at most {MAX_PLAN_FILES} files")
        for name in files:
            _check_name(name)
        if len(set(files)) != len(files):
            raise ValueError("a file is listed twice")
        return files


class Diagrams(_Reply):
    class_diagram: str
    sequence_diagram: str

    @field_validator("class_diagram", "sequence_diagram")
    @classmethod
    def _mermaid(cls, text, info):
        text = parsing._strip_outer_fence(text.strip()).strip()
        keyword = "classDiagram" if info.field_name == "class_diagram" else "sequenceDiagram"
        first = next(
            (
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.strip().startswith("%%")
            ),
            "",
        )
        if not first.startswith(keyword):
            raise ValueError(f"must be a Mermaid diagram that starts with {keyword}")
        if len(text) > 20_000:
            raise ValueError("is longer than 20,000 characters")
        return text


class Architecture(ArchitectureFiles, Diagrams):
    """The architecture in one reply: the files and the diagrams (ArchitectureFiles, then Diagrams, in parts)."""


class FileLogic(_Reply):
    file: str
    logic: str = Field(min_length=1)
    depends_on: list[str] = []


class LogicDesign(_Reply):
    required_packages: list[str] = []
    files: list[FileLogic] = Field(min_length=1)
    task_list: list[str] = Field(min_length=1)
    shared_knowledge: str = ""


class Critique(_Reply):
    file: str = ""
    severity: Literal["high", "medium", "low"]
    critique: str = Field(min_length=1)

    @field_validator("severity", mode="before")
    @classmethod
    def _lower(cls, value):
        return str(value).strip().lower()


class EvaluationReply(_Reply):
    critiques: list[Critique] = []
    score: float = Field(ge=1, le=5)


def _check_name(name: str) -> None:
    if not parsing.SAFE_NAME.match(name) or ".." in name.split("/"):
        raise ValueError(f"file name {name!r} is not a plain relative path")


def _validated(schema: type[BaseModel], data) -> BaseModel:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise parsing.ReplyError(parsing._first_error(exc)) from None


def _json(text: str, template: str) -> dict:
    """The reply's JSON object, without the values that copy the template's own placeholders."""
    return parsing.extract_json(text, expect=dict, placeholders=prompts.placeholders(template))


def parse_overall_plan(text: str) -> OverallPlan:
    return _validated(OverallPlan, _json(text, "paper_plan"))


def parse_architecture(text: str, *, schema: type[ArchitectureFiles] = Architecture) -> ArchitectureFiles:
    architecture = _validated(schema, _json(text, "paper_architecture"))
    if "main.py" not in architecture.files:
        raise parsing.ReplyError("files: the architecture needs main.py, the entry point")
    return architecture


def parse_diagrams(text: str, *, files: list[str] | None = None) -> Diagrams:
    """Both diagrams; given the architecture's `files`, one good diagram is enough, the other is drawn
    from the file list (a small model drew one and copied the prompt's example for the other)."""
    data = _json(text, "paper_diagrams")
    if files is None:
        return _validated(Diagrams, data)
    drawn = file_diagrams(files).model_dump()
    good = {}
    for name in ("class_diagram", "sequence_diagram"):
        try:
            good[name] = _validated(Diagrams, {**drawn, name: data.get(name)}).model_dump()[name]
        except parsing.ReplyError:
            continue
    if not good:
        return _validated(Diagrams, data)  # the problem with both, for the repair
    return Diagrams(**{**drawn, **good})


def parse_logic_design(text: str, *, files: list[str]) -> tuple[LogicDesign, list[str]]:
    """The logic design and the order to write the files in: the task list, each file after its imports."""
    design = _validated(LogicDesign, _json(text, "paper_logic"))
    known = set(files)
    for name in design.task_list:
        if name not in known:
            raise parsing.ReplyError(f"task_list: {name} is not one of the architecture's files")
    if len(set(design.task_list)) != len(design.task_list):
        raise parsing.ReplyError("task_list: a file is listed twice")
    missing = [name for name in files if name not in design.task_list and name not in NOT_CODED[1:]]
    if missing:
        raise parsing.ReplyError(f"task_list: it leaves out {', '.join(missing)}")
    depends_on = {}
    for entry in design.files:
        unknown = [d for d in entry.depends_on if d not in known]
        if unknown:
            raise parsing.ReplyError(f"files: {entry.file} depends on unknown files: {', '.join(unknown)}")
        depends_on[entry.file] = entry.depends_on
    return design, dependency_order(design.task_list, depends_on)


def file_diagrams(files: list[str]) -> Diagrams:
    """Diagrams of the architecture's modules alone: main.py and the modules it runs."""
    modules = [name for name in files if name.endswith(".py") and name != "main.py"]
    ids = {name: re.sub(r"\W", "_", name.removesuffix(".py")) for name in modules}
    note = "%% drawn from the file list: the model's diagrams could not be used"
    classes = [f"  class {ids[name]}" for name in modules] or ["  class main"]
    calls = [f"  main->>{ids[name]}: uses" for name in modules] or [
        "  main->>main: runs the small configuration"
    ]
    return Diagrams(
        class_diagram="\n".join([note, "classDiagram", *classes]),
        sequence_diagram="\n".join([note, "sequenceDiagram", "  participant main", *calls]),
    )


def logic_schema(files: list[str]) -> dict:
    """The logic design's JSON schema for the architecture's files: a small model, held to it, can only
    name those files (seen: the 1.5B model copied the example's model.py and utils.py three times)."""
    coded = [name for name in files if name not in NOT_CODED[1:]]
    known = {"type": "string", "enum": list(files)}
    return {
        "type": "object",
        "properties": {
            "required_packages": {"type": "array", "items": {"type": "string"}},
            # One entry a file at most: unbounded, the 1.5B model wrote main.py entries until the reply's
            # limit, four times in a row (corner's JOSS paper, 6,000 tokens of them).
            "files": {
                "type": "array",
                "minItems": 1,
                "maxItems": len(coded),
                "items": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "enum": coded},
                        "logic": {"type": "string"},
                        "depends_on": {"type": "array", "items": known, "maxItems": len(files)},
                    },
                    "required": ["file", "logic", "depends_on"],
                },
            },
            "task_list": {
                "type": "array",
                "items": {"type": "string", "enum": coded},
                "minItems": len(coded),
                "maxItems": len(coded),
            },
            "shared_knowledge": {"type": "string"},
        },
        "required": ["required_packages", "files", "task_list", "shared_knowledge"],
    }


def dependency_order(task_list: list[str], depends_on: dict[str, list[str]]) -> list[str]:
    """The task list with each file moved after the files it depends on; otherwise in the list's order.

    The model's order is kept where it is right; where it is wrong the stated imports win, so a file is
    never written before a file it imports. Dependencies in a cycle cannot all be right: the task list's
    own order is taken. Seen: the 1.5B model made every file depend on every file, itself included,
    three times, and the run ended at planning; the order is only the order the files are written in.
    """
    wanted = set(task_list)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str) -> bool:
        """False on a cycle."""
        if state.get(name) == "done":
            return True
        if state.get(name) == "visiting":
            return False
        state[name] = "visiting"
        for dependency in depends_on.get(name, []):
            if dependency in wanted and dependency != name and not visit(dependency):
                return False
        state[name] = "done"
        order.append(name)
        return True

    if all(visit(name) for name in task_list):
        return order
    logger.info(
        "the logic design's dependencies form a cycle: the files are written in its task list's order"
    )
    return list(task_list)


def parse_config_yaml(text: str) -> str:
    import yaml

    body = _single_file(text, "config.yaml")
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        # A reply cut at its token limit ends in half a line: without it, the rest may be whole.
        whole = body.rstrip("\n").rpartition("\n")[0]
        try:
            data, body = yaml.safe_load(whole), whole + "\n"
        except yaml.YAMLError:
            raise parsing.ReplyError(f"config.yaml is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise parsing.ReplyError("config.yaml must hold a mapping of settings")
    return body


def parse_code_file(text: str, name: str) -> str:
    body = _single_file(text, name)
    if name.endswith(".py"):
        try:
            compile(body, name, "exec")
        except SyntaxError as exc:
            raise parsing.ReplyError(f"{name} is not valid Python: line {exc.lineno}: {exc.msg}") from None
    return body


def _single_file(text: str, name: str) -> str:
    """The body of the `=== FILE: name ===` section; a reply that is only one fenced block is taken too."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = parsing.SECTION.match(line.strip())
        if match:
            current = (match.group(2) or "").strip() if match.group(1) == "FILE" else None
            if current is not None:
                sections[current] = []
            continue
        if current is not None:
            sections[current].append(line)
    if name in sections:
        body = parsing.file_body("\n".join(sections[name]))
    elif not sections and text.strip().startswith("```") and text.strip().endswith("```"):
        body = parsing.file_body(text.strip())
    elif sections:
        raise parsing.ReplyError(f"the reply gives {', '.join(sections)} but not {name}")
    else:
        raise parsing.ReplyError(
            f"missing the section: a line '=== FILE: {name} ===', the file, then '=== END ==='"
        )
    if not body.strip():
        raise parsing.ReplyError(f"{name} is empty")
    return body.rstrip("\n") + "\n"


def parse_evaluation(text: str) -> EvaluationReply:
    return _validated(EvaluationReply, _json(text, "paper_evaluate"))


# The steps ---------------------------------------------------------------------------------------------


def read_source(run: Run) -> str:
    """The paper was read when it was submitted (`distill.pipeline.papers`): this step checks it."""
    paper = _paper(run)
    if not paper.text.strip():
        raise StepFailed("the paper has no text; submit it again")
    pages = f"{paper.pages} pages, " if paper.pages else ""
    return f"Read the paper: {pages}{len(paper.sections)} sections."


def is_read(run: Run) -> bool:
    return True  # at submission: a run is made only of a paper that could be read


def survey_source(run: Run, *, should_cancel: Callable[[], bool] | None = None) -> str:
    """A paper's survey is its plan: the files to write, their logic and order, config.yaml."""
    paper = plan(run, should_cancel=should_cancel)
    return f"Planned {len(paper.plan['architecture']['files'])} files."


def is_surveyed(run: Run) -> bool:
    return is_planned(run)


def is_planned(run: Run) -> bool:
    plan = Paper.objects.filter(run=run).values_list("plan", flat=True).first() or {}
    return bool(plan.get("config_yaml") and plan.get("task_order") is not None)


def _paper(run: Run) -> Paper:
    try:
        return Paper.objects.get(run=run)
    except Paper.DoesNotExist:
        raise StepFailed("the run has no paper; submit the paper again") from None


def _save_plan(paper: Paper) -> None:
    Paper.objects.filter(pk=paper.pk).update(plan=paper.plan)


# Planning ---------------------------------------------------------------------------------------------


def plan(run: Run, *, should_cancel: Callable[[], bool] | None = None) -> Paper:
    """The four planning stages in one conversation; stages already done are skipped, not asked again."""
    paper = _paper(run)
    # A paper larger than the planner's budget is planned from its condensed sections (condense.py).
    condense.condense_paper(run, paper, budget=_budget(run, PLAN_PAPER_SHARE), should_cancel=should_cancel)
    data = paper.plan
    replies = data.setdefault("replies", {})
    messages = [{"role": "system", "content": prompts.render("paper_system")}]
    files: list[str] = data.get("architecture", {}).get("files", [])
    in_parts = _in_parts(run)
    for stage in PLANNING_STAGES_IN_PARTS if in_parts else PLANNING_STAGES:
        prompt = _planning_prompt(run, paper, stage)
        if stage == "diagrams" and data["architecture"].get("class_diagram"):
            continue  # the architecture's reply held them already
        if stage in replies:
            messages += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": replies[stage]},
            ]
            continue
        program.stop_if_cancelled(should_cancel)
        schema = None
        if stage == "plan":
            parse, schema = parse_overall_plan, OverallPlan.model_json_schema()
        elif stage == "architecture":
            part = ArchitectureFiles if in_parts else Architecture
            parse, schema = partial(parse_architecture, schema=part), part.model_json_schema()
        elif stage == "diagrams":
            parse, schema = partial(parse_diagrams, files=files), Diagrams.model_json_schema()
        elif stage == "logic":
            parse, schema = partial(parse_logic_design, files=files), logic_schema(files)
        else:
            parse = parse_config_yaml
        max_tokens = run.config.get("code_max_output_tokens", 16000)
        if stage == "config":
            # The small configuration is a few dozen lines. Seen: the 1.5B model listed YAML keys on and on
            # to its 1,536-token limit (4 minutes on two cores), and the cut YAML still parsed.
            max_tokens = min(max_tokens, CONFIG_MAX_TOKENS)
        try:
            value, text = program.ask(run, stage=stage, messages=[*messages, {"role": "user", "content": prompt}], parse=parse,
                               max_tokens=max_tokens, schema=schema, continue_cut=stage != "config")  # fmt: skip
        except program.ReplyUnusable:
            if stage != "diagrams":
                raise
            # The diagrams are for reading, and the code is planned without them: a small model that
            # cannot draw them (seen: the 1.5B model copied the prompt's example three times) gets the
            # plainest true ones, drawn from the file list and said to be so, instead of a failed run.
            value = file_diagrams(files)
            text = json.dumps(value.model_dump())
        if stage == "plan":
            data["overall_plan"] = value.model_dump()
        elif stage == "architecture":
            data["architecture"] = value.model_dump()
            files = value.files
            if in_parts:
                with contextlib.suppress(parsing.ReplyError):
                    data["architecture"] |= parse_diagrams(text).model_dump()
        elif stage == "diagrams":
            data["architecture"] = {**data["architecture"], **value.model_dump()}
        elif stage == "logic":
            design, order = value
            data["logic_design"] = design.model_dump()
            data["task_order"] = order
        else:
            data["config_yaml"] = value
        replies[stage] = text
        _save_plan(paper)
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        if stage == "plan" and not run.repository_description:
            # The run page's "purpose", and what the judge holds the program to.
            run.repository_description = value.summary
            run.save(update_fields=["repository_description"])
    _write_artefact(run, "paper_plan.json", {k: v for k, v in data.items() if k != "replies"})
    return paper


def _in_parts(run: Run) -> bool:
    return run.config.get("context_tokens", 128000) <= PARTS_CONTEXT_TOKENS


def _planning_prompt(run: Run, paper: Paper, stage: str) -> str:
    runtime = program.rules(run, None)["runtime_mins"]
    if stage == "plan":
        return prompts.render(
            "paper_plan",
            title=paper.title or "(untitled)",
            paper=_paper_text(run, paper, share=PLAN_PAPER_SHARE),
            runtime_mins=runtime,
        )
    if stage == "architecture" and _in_parts(run):
        return prompts.render("paper_architecture_files", max_files=MAX_PLAN_FILES)
    if stage == "architecture":
        return prompts.render("paper_architecture", max_files=MAX_PLAN_FILES)
    if stage == "diagrams":
        return prompts.render("paper_diagrams")
    if stage == "logic":
        return prompts.render("paper_logic")
    return prompts.render("paper_config", runtime_mins=runtime)


# Analysis, code and the entry point: iteration 1 -------------------------------------------------------


def write_first_version(run: Run, *, should_cancel: Callable[[], bool] | None = None) -> Iteration:
    """Iteration 1: an analysis per file, the files in the task list's order, then the entry point."""
    existing = run.iterations.filter(number=1).first()
    if existing:
        return existing
    paper = _paper(run)
    data = paper.plan
    if not is_planned(run):
        raise StepFailed("the paper has no plan yet; retry the run from the planning step")
    to_code = [name for name in data["task_order"] if name not in NOT_CODED]
    analyses = data.setdefault("analyses", {})
    for name in [*to_code, "main.py"]:
        if name not in analyses:
            program.stop_if_cancelled(should_cancel)
            analyses[name] = _analyse(run, paper, name)
            _save_plan(paper)
    code = data.setdefault("code", {})
    for name in to_code:
        if name not in code:
            program.stop_if_cancelled(should_cancel)
            code[name] = _write_file(run, paper, name, written={n: code[n] for n in to_code if n in code})
            _save_plan(paper)

    written = {name: code[name] for name in to_code}
    written["config.yaml"] = data["config_yaml"]
    prompt = prompts.render(
        "paper_entry",
        title=paper.title or "(untitled)",
        paper=_paper_text(run, paper, share=0.15),
        plan=_plan_digest(run, data, share=0.2),
        written=_files_text(written, budget=_budget(run, 0.3)),
        analysis=analyses.get("main.py", ""),
        format=program.program_format(run, changes=False),
        **program.rules(run, None),
    )
    entry = program.ask_for_program(run, stage="entry", prompt=prompt, iteration=1)
    files = {**written, **entry.files}
    files = {name: files[name] for name in _ordered_names(files, data["task_order"])}
    return program.save_iteration(
        run,
        1,
        entry.model_copy(update={"files": files}),
        change_log=entry.change_log or "First version, written from the paper's plan.",
    )


def _analyse(run: Run, paper: Paper, name: str) -> str:
    prompt = prompts.render(
        "paper_analysis",
        title=paper.title or "(untitled)",
        paper=_paper_text(run, paper, share=0.35),
        plan=_plan_digest(run, paper.plan, share=0.3),
        file=name,
    )

    def parse(text: str) -> str:
        if len(text.strip()) < 20:
            raise parsing.ReplyError(f"the analysis of {name} is empty")
        return text.strip()[:ANALYSIS_MAX_CHARS]

    value, _ = program.ask(run, stage="analysis", messages=_conversation(prompt), parse=parse,
                    max_tokens=min(4000, run.config.get("code_max_output_tokens", 16000)))  # fmt: skip
    return value


def _write_file(run: Run, paper: Paper, name: str, *, written: dict[str, str]) -> str:
    prompt = prompts.render(
        "paper_code",
        title=paper.title or "(untitled)",
        paper=_paper_text(run, paper, share=0.2),
        plan=_plan_digest(run, paper.plan, share=0.2),
        written=_files_text({**written, "config.yaml": paper.plan["config_yaml"]}, budget=_budget(run, 0.3)),
        analysis=paper.plan["analyses"].get(name, "(none)"),
        file=name,
    )
    value, _ = program.ask(run, stage="code", messages=_conversation(prompt), parse=lambda text: parse_code_file(text, name),
                    max_tokens=run.config.get("code_max_output_tokens", 16000))  # fmt: skip
    return value


def _ordered_names(files: dict, task_order: list[str]) -> list[str]:
    """main.py first (it is what people read first), then the task order, then the rest."""
    first = ["main.py", *task_order, "config.yaml", "requirements.txt", "runscript.sh"]
    names = [name for name in dict.fromkeys(first) if name in files]
    return names + [name for name in files if name not in names]


# The prompts of the shared loop ---------------------------------------------------------------------


def judge_prompt(run: Run, iteration: Iteration) -> str:
    return prompts.render(
        "paper_judge",
        title=run.source_title or "(untitled)",
        purpose=run.repository_description,
        code=_files_text(_code_files(iteration.files), budget=_budget(run, 0.4)),
        evidence="\n".join(f"Flag: {flag}" for flag in (iteration.measured or {}).get("flags", [])),
        **program.judge_output(iteration),
    )


def fix_prompt(run: Run, previous: Iteration) -> str:
    return prompts.render(
        "paper_fix",
        title=run.source_title or "(untitled)",
        purpose=run.repository_description,
        **program.failed_version(run, previous),
        **program.rules(run, None),
    )


def repository_of(run: Run) -> None:
    """A paper's program has no repository to be proven to use."""
    return None


def conclude(run: Run, iteration: Iteration) -> str:
    """PaperCoder's quality score of the final code, for the run's last message."""
    evaluation = evaluate(run, iteration)
    if evaluation and evaluation.get("score") is not None:
        return f" Quality score {evaluation['score']:.1f} of 5."
    return ""


# Reference-free evaluation ----------------------------------------------------------------------------


def evaluate(run: Run, iteration: Iteration) -> dict | None:
    """PaperCoder's reference-free evaluation of an iteration's code: samples of critiques and scores.

    It informs, it does not gate: a failure (the budget, the provider, unreadable replies) is recorded
    on the evaluation and the run ends as it would have.
    """
    paper = Paper.objects.filter(run=run).first()
    if paper is None:
        return None
    if paper.evaluation and paper.evaluation.get("iteration") == iteration.number:
        return paper.evaluation
    count = int(run.config.get("paper_eval_samples", PAPER_EVAL_SAMPLES))
    prompt = prompts.render(
        "paper_evaluate",
        title=paper.title or "(untitled)",
        paper=_paper_text(run, paper, share=0.4),
        code=_files_text(_code_files(iteration.files), budget=_budget(run, 0.4)),
    )
    samples, errors = [], []
    for _sample in range(count):
        try:
            reply, _ = program.ask(run, stage="evaluate", messages=[{"role": "user", "content": prompt}],
                            parse=parse_evaluation, max_tokens=2000, iteration=iteration.number,
                            schema=EvaluationReply.model_json_schema())  # fmt: skip
        except (StepFailed, llm.LLMError) as exc:
            errors.append(str(exc))
            if isinstance(exc, llm.BudgetExceeded | llm.LLMRefused):
                break  # the next sample would fail the same way
            continue
        samples.append(reply.model_dump())
    scores = [sample["score"] for sample in samples]
    evaluation = {
        "iteration": iteration.number,
        "samples": samples,
        "score": round(sum(scores) / len(scores), 2) if scores else None,
        "asked": count,
        "errors": errors,
        "severity_counts": _severity_counts(samples),
    }
    Paper.objects.filter(pk=paper.pk).update(evaluation=evaluation)
    _write_artefact(run, "paper_evaluation.json", evaluation)
    return evaluation


def _severity_counts(samples: list[dict]) -> dict[str, float]:
    """Critiques per severity, averaged over the samples."""
    if not samples:
        return {}
    return {
        level: round(
            sum(1 for s in samples for c in s["critiques"] if c["severity"] == level) / len(samples), 1
        )
        for level in ("high", "medium", "low")
    }


# Re-running ------------------------------------------------------------------------------------------


def paper_text_of(run: Run) -> papers.PaperText:
    """The paper of a run, as read at submission: to run it again."""
    paper = _paper(run)
    return papers.PaperText(
        source=paper.source, text=paper.text, title=paper.title, authors=paper.authors, url=paper.url,
        filename=paper.filename, pages=paper.pages, sections=paper.sections,
    )  # fmt: skip


# Helpers ----------------------------------------------------------------------------------------------


def _write_artefact(run: Run, name: str, data: dict) -> None:
    """A copy for the run's output folder, beside report.html; the database holds the original."""
    try:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        (run.output_dir / name).write_text(json.dumps(data, indent=2, ensure_ascii=False))
    except OSError:
        logger.exception("run %s: could not write %s", run.pk, name)


def _conversation(prompt: str) -> list[dict]:
    return [
        {"role": "system", "content": prompts.render("paper_system")},
        {"role": "user", "content": prompt},
    ]


def _budget(run: Run, share: float) -> int:
    """Tokens for one part of a prompt: a share of the context left after the reply."""
    config = run.config
    room = config.get("context_tokens", 128000) - config.get("code_max_output_tokens", 16000)
    return max(300, int(room * share))


def _paper_text(run: Run, paper: Paper, *, share: float) -> str:
    """The paper as a prompt holds it: condensed when it was too large for the planner, else as it is."""
    condensed = (paper.plan or {}).get("condensed")
    text = condensed["text"] if condensed else papers.without_references(paper.text)
    return survey.truncate_to_tokens(text, _budget(run, share))


def sections_read(run: Run, paper: Paper) -> dict:
    """How much of each section the planner's prompt holds: a paper run's counterpart of a repository's
    file selection. Every later stage sees the plan and less of the paper, so this is the most any saw."""
    text = paper.text
    cut = papers.references_span(text)
    body = papers.without_references(text)
    budget = _budget(run, PLAN_PAPER_SHARE)
    kept = survey.truncate_to_tokens(body, budget)
    # The kept text is the body's start (then a marker), so a length in characters says where it stops.
    kept_chars = len(body) if kept == body else len(kept.removesuffix(survey.TRUNCATION_MARKER))
    starts, position = [], 0
    for section in paper.sections:
        heading = re.compile(rf"^#{{1,6}}[ \t]+{re.escape(section['title'])}[ \t#]*$", re.MULTILINE)
        match = heading.search(text, position)
        starts.append(match.start() if match else None)
        position = match.end() if match else position
    found = [start for start in starts if start is not None] + [len(text)]
    rows = []
    for section, start in zip(paper.sections, starts, strict=True):
        row = {**section, "tokens": None, "read": "unknown"}
        if start is not None:
            end = next(later for later in found if later > start)
            row["tokens"] = survey.count_tokens(text[start:end])
            row["read"] = _reading(start, end, cut=cut, kept_chars=kept_chars)
        rows.append(row)
    condensed = (paper.plan or {}).get("condensed")
    if condensed:
        _add_contributions(rows, condensed)
    return {
        "sections": rows,
        "condensed": condensed,
        "paged": any(row.get("page") for row in rows),  # a PDF's sections have pages, Markdown's none
        "budget_tokens": budget,
        "paper_tokens": survey.count_tokens(body),
        "truncated": kept != body,
    }


def _add_contributions(rows: list[dict], condensed: dict) -> None:
    """Each section's part of the condensed paper, and whether the planner read it ("condensed"), it was
    left out for the budget ("dropped") or it specified nothing to implement ("nothing"); a section split
    into parts gets its parts' together."""
    by_title: dict[str, list[dict]] = {}
    for part in condensed["sections"]:
        by_title.setdefault(part["of"], []).append(part)
    for row in rows:
        if row["read"] == "references":
            continue
        parts = by_title.get(row["title"], [])
        row["contribution"] = "\n".join(part["digest"] for part in parts if part["digest"].strip())
        if any(part["used"] for part in parts):
            row["read"] = "condensed"
        elif parts:
            row["read"] = "dropped" if row["contribution"] else "nothing"


def _reading(start: int, end: int, *, cut: tuple[int, int] | None, kept_chars: int) -> str:
    """Whether the text from start to end was in the prompt: "full", "part", "none" or left out, "references"."""
    if cut:
        if cut[0] <= start < cut[1]:
            return "references"
        if start >= cut[1]:
            start, end = start - (cut[1] - cut[0]), end - (cut[1] - cut[0])
        else:
            end = min(end, cut[0])
    if end <= kept_chars:
        return "full"
    return "part" if start < kept_chars else "none"


def _plan_digest(run: Run, data: dict, *, share: float) -> str:
    """The planning artefacts as the later stages see them: plan, architecture, logic, config.yaml."""
    overall, architecture, logic = data["overall_plan"], data["architecture"], data["logic_design"]
    parts = [
        f"Summary: {overall['summary']}",
        "Methodology:\n" + "\n".join(f"- {m}" for m in overall.get("methodology", [])),
        f"Small configuration: {overall.get('small_configuration', '')}",
        f"Implementation approach: {architecture['implementation_approach']}",
        "Files, in the order they are written: " + ", ".join([*data["task_order"], "main.py"]),
        "Class diagram:\n" + architecture["class_diagram"],
        "Each file's logic:\n"
        + "\n".join(
            f"- {f['file']}: {f['logic']}"
            + (f" (imports {', '.join(f['depends_on'])})" if f.get("depends_on") else "")
            for f in logic["files"]
        ),
        "Required packages: " + (", ".join(logic.get("required_packages", [])) or "(none)"),
        f"Shared knowledge: {logic.get('shared_knowledge', '')}",
        "Open questions and assumptions:\n"
        + "\n".join(f"- {q}" for q in architecture.get("open_questions", [])),
        "config.yaml:\n" + data["config_yaml"],
    ]
    return survey.truncate_to_tokens("\n\n".join(parts), _budget(run, share))


def _files_text(files: dict[str, str], *, budget: int) -> str:
    """Files in full while they fit the budget; the rest cut, never silently: the marker says so."""
    if not files:
        return "(none yet)"
    share = max(100, budget // len(files))
    return "\n".join(
        f"=== FILE: {name} ===\n{survey.truncate_to_tokens(text, max(share, budget - used)).rstrip()}"
        for used, (name, text) in _running_sizes(files)
    )


def _running_sizes(files: dict[str, str]):
    used = 0
    for name, text in files.items():
        yield used, (name, text)
        used += survey.count_tokens(text)


def _code_files(files: dict[str, str]) -> dict[str, str]:
    """What a reviewer reads: the code and config, not the install scripts."""
    return {
        name: text
        for name, text in files.items()
        if not re.match(r"^(requirements\.txt|runscript\.sh)$", name)
    }
