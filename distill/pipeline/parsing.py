"""Strict schemas for LLM replies, and parsers that survive what models actually send.

Programs are asked for in a sectioned format rather than JSON: code inside JSON strings breaks on one
unescaped quote, and code inside Markdown fences breaks on code that itself contains ``` (docstrings,
notebooks, Markdown writers). A section starts with a line `=== FILE: name ===` and ends at the next
section marker or `=== END ===`; only whole lines count, so nothing inside the code can end it early.
"""

import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distill.pipeline import prompts


class ReplyError(ValueError):
    """A reply that does not fit its schema; the message is sent back to the model to repair it."""


REQUIRED_FILES = ("main.py", "requirements.txt", "runscript.sh")
SECTION = re.compile(
    r"^=== (FILE|METADATA|CHANGES): ?(.*?) ?===[ \t]*$|^=== (END|METADATA|CHANGES) ===[ \t]*$"
)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class ExampleMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    description: str = Field(min_length=1)
    inclusion_criteria: str = ""
    exclusion_criteria: str = ""
    example_type: str = "demonstration"
    compute_needs: str = "cpu"
    gpu_required: bool = False
    api_keys_needed: list[str] = []
    python_version: str = "3.11"

    @field_validator("api_keys_needed", mode="before")
    @classmethod
    def _listify(cls, value):
        if value in (None, "", "none", "None"):
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class Program(BaseModel):
    files: dict[str, str]
    metadata: ExampleMetadata
    change_log: str = ""
    # Requirement lines of the reply that were left out, each with why (dependencies.clean_requirements).
    requirement_problems: list[str] = []


class FileRatingReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    path: str
    rating: int = Field(ge=0, le=10)
    reason: str = ""


class Judgement(BaseModel):
    model_config = ConfigDict(extra="ignore")

    faithful: bool
    accurate: bool
    complete: bool
    issues: list[str] = []
    critical_issues: list[str] = []
    explanation: str = ""

    @property
    def passed(self) -> bool:
        return self.faithful and self.accurate and self.complete and not self.critical_issues


# The schema a provider holds the judge's reply to: its reasons are required there, and come first, before
# the verdicts they lead to. Held to the model's own schema, the 1.5B model left them out and passed every
# example without a word for the curator to read. Judgement itself stays lenient: a reply from a provider
# without schemas is read as before.
JUDGEMENT_SCHEMA = Judgement.model_json_schema()
JUDGEMENT_SCHEMA["properties"] = {
    "explanation": {"title": "Explanation", "type": "string", "minLength": 20},
    **{name: value for name, value in JUDGEMENT_SCHEMA["properties"].items() if name != "explanation"},
}
JUDGEMENT_SCHEMA["required"] = ["explanation", *JUDGEMENT_SCHEMA["required"]]


def ratings_schema(paths: list[str]) -> dict:
    """The JSON schema of a batch's ratings: one object per file, and only the files asked about."""
    item = FileRatingReply.model_json_schema()
    item["properties"] = {**item["properties"], "path": {"enum": paths}}
    return {"type": "array", "items": item, "minItems": 1, "maxItems": len(paths)}


# A line that is wholly a placeholder of program_format.txt ("<one pip requirement a line, ...>"): a small
# model sometimes copies the format's skeleton instead of filling it in. No file kind has such a line.
# A line that is only "<...>" with a space in it ("<the complete program>"), or words joined by two or more
# dots, underscores or commas: held by the grammar to lines without a space there, the 1.5B model wrote
# "<the.complete.program>", "<theupdated,complete,program>" and "<bash_commands_that_install_...>"; and
# words joined by nothing, closed or not ("<onlypackagesmain.pyneedsbeyond..."): 15 characters or more,
# longer than an HTML tag alone on its line.
PLACEHOLDER_LINE = re.compile(
    r"^\s*<(?:[^<>\n]* [^<>\n]*>|[A-Za-z][\w-]*(?:[._,][\w-]+){2,}[._,]?>|[A-Za-z][\w.,-]{14,}>?)\s*$", re.M
)


def parse_program(
    text: str,
    *,
    require_change_log: bool = False,
    required_files: tuple[str, ...] = REQUIRED_FILES,
    metadata_default: dict | None = None,
) -> Program:
    """A program reply. With a prepared environment only main.py is required: its requirements.txt, if
    any, holds extra requirements, and the files the sandbox runs are derived (environment.py).

    `metadata_default` (a fix's: the failed version's metadata) fills what the reply's METADATA leaves
    out or only copies from the format: a fix rarely changes what the example is, and the 1.5B model,
    busy with the code, sent the format's template back three times and lost the run for it."""
    files: dict[str, str] = {}
    metadata_text = None
    change_log = ""
    current: tuple[str, str] | None = None
    lines: list[str] = []

    def close():
        nonlocal metadata_text, change_log
        if current is None:
            return
        kind, name = current
        body = "\n".join(lines).strip("\n")
        if kind == "FILE":
            files[name] = file_body(body) + "\n"
        elif kind == "METADATA":
            metadata_text = body
        elif kind == "CHANGES":
            change_log = body.strip()

    for line in text.splitlines():
        match = SECTION.match(line.strip())
        if not match:
            if current is not None:
                lines.append(line)
            continue
        kind = match.group(1) or match.group(3)
        name = (match.group(2) or "").strip() if match.group(1) else ""
        close()
        lines = []
        if kind == "FILE" and name in files:
            # The reply starts over: a small model, done with its answer, goes on to echo the program or
            # its prompt instead of ending. The first, whole answer is the reply; the echo is dropped.
            current = None
            break
        if kind == "END":
            current = None
            continue
        if kind == "FILE" and (not SAFE_NAME.match(name) or ".." in name.split("/")):
            raise ReplyError(f"file name {name!r} is not a plain relative path")
        current = (kind, name)
    close()

    missing = [name for name in required_files if name not in files]
    if missing:
        raise ReplyError(
            f"missing file section(s): {', '.join(missing)}; each file starts with a line '=== FILE: name ==='"
        )
    if not files["main.py"].strip():
        raise ReplyError("main.py is empty")
    for name, content in files.items():
        if name == "requirements.txt" and name not in required_files:
            continue  # extras only: cleaned line by line later, a copied placeholder named as a problem
        if match := PLACEHOLDER_LINE.search(content):
            raise ReplyError(
                f"{name} holds the format's placeholder {match.group().strip()!r}: write the real content"
            )
    if metadata_text is None and metadata_default is None:
        raise ReplyError("missing the '=== METADATA ===' section with a JSON object")
    try:
        written = {}
        if metadata_text is not None:
            try:
                written = extract_json(
                    metadata_text, expect=dict, placeholders=prompts.placeholders("program_format")
                )
            except ReplyError:
                if metadata_default is None:
                    raise
        metadata = ExampleMetadata.model_validate({**(metadata_default or {}), **written})
    except ValidationError as exc:
        raise ReplyError(f"metadata: {_first_error(exc)}") from None
    if require_change_log and not change_log:
        raise ReplyError("missing the '=== CHANGES ===' section saying what this version changes and why")
    return Program(files=files, metadata=metadata, change_log=change_log)


class EnvironmentChange(BaseModel):
    """The code model's changes to an environment that did not build: requirement lines, and why."""

    model_config = ConfigDict(extra="ignore")

    requirements: list[str]
    reason: str = ""

    @field_validator("requirements", mode="before")
    @classmethod
    def _lines(cls, value):
        if isinstance(value, str):
            return value.splitlines()
        return [str(item) for item in value] if isinstance(value, list) else value


def parse_environment_change(text: str) -> EnvironmentChange:
    try:
        return EnvironmentChange.model_validate(extract_json(text, expect=dict))
    except ValidationError as exc:
        raise ReplyError(f"environment change: {_first_error(exc)}") from None


def parse_ratings(text: str, *, expected_paths: list[str]) -> dict[str, FileRatingReply]:
    """Ratings for a batch of files; only paths that were asked about are kept."""
    data = extract_json(text, expect=(list, dict), placeholders=prompts.placeholders("rate"))
    if isinstance(data, dict):
        data = data.get("ratings", data.get("files", [data]))
    if not isinstance(data, list):
        raise ReplyError("expected a JSON list of {path, rating, reason} objects")
    ratings = {}
    for item in data:
        try:
            rating = FileRatingReply.model_validate(item)
        except ValidationError as exc:
            raise ReplyError(f"rating: {_first_error(exc)}") from None
        if rating.path in expected_paths:
            ratings[rating.path] = rating
    if not ratings:
        raise ReplyError(f"no rating for any of the files asked about: {', '.join(expected_paths)}")
    return ratings


def parse_judgement(text: str) -> Judgement:
    try:
        verdict = extract_json(text, expect=dict, placeholders=prompts.placeholders("judge", "paper_judge"))
        return Judgement.model_validate(verdict)
    except ValidationError as exc:
        raise ReplyError(f"verdict: {_first_error(exc)}") from None


def extract_json(text: str, *, expect, placeholders: frozenset[str] = frozenset()):
    """The first JSON value of the expected type in a reply, with or without a Markdown fence around it.

    A value that copies one of the prompt's `placeholders` (prompts.placeholders) counts as absent: it is
    dropped from its object or list, so the schema's default or its "field required" applies.
    """
    value = _first_json(text, expect=expect)
    return without_placeholders(value, placeholders) if placeholders else value


def without_placeholders(value, placeholders: frozenset[str]):
    if isinstance(value, dict):
        return {
            k: without_placeholders(v, placeholders) for k, v in value.items() if not _copied(v, placeholders)
        }
    if isinstance(value, list):
        return [without_placeholders(v, placeholders) for v in value if not _copied(v, placeholders)]
    return value


def _copied(value, placeholders: frozenset[str]) -> bool:
    return isinstance(value, str) and prompts.normal(value) in placeholders


def _first_json(text: str, *, expect):
    text = text.strip()
    candidates = [text, _strip_outer_fence(text)]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            value = json.loads(candidate)
            if isinstance(value, expect):
                return value
        except ValueError:
            pass
    # Otherwise scan for the first decodable value that starts at a bracket.
    for index, char in enumerate(text):
        if char in "[{":
            try:
                value, _ = decoder.raw_decode(text, index)
            except ValueError:
                continue
            if isinstance(value, expect):
                return value
    raise ReplyError("the reply holds no valid JSON " + ("object" if expect is dict else "value"))


def prose(text: str) -> str:
    """A model's plain-text answer without the Markdown fences it was not asked for (pages show it as text)."""
    lines = _strip_outer_fence(text.strip()).splitlines()
    return "\n".join(line for line in lines if not line.strip().startswith("```")).strip()


def file_body(text: str) -> str:
    """A file's text without the Markdown fences around it: one on both sides, or one on a side only (seen:
    a paper module that ended in a lone fence before its END marker, three replies in a row)."""
    lines = _strip_outer_fence(text.strip("\n")).strip("\n").split("\n")
    if lines and FENCE_OPENING.fullmatch(lines[0].strip()):
        lines = lines[1:]
    if lines and lines[-1].strip() == "```":
        lines = lines[:-1]
    return "\n".join(lines)


FENCE_OPENING = re.compile(r"```[\w+-]*")


def _strip_outer_fence(text: str) -> str:
    """Remove one Markdown fence wrapped around the whole text, and only that."""
    lines = text.strip("\n").splitlines()
    if len(lines) >= 2 and lines[0].lstrip().startswith("```") and lines[-1].strip() == "```":
        return "\n".join(lines[1:-1])
    return text


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "value"
    return f"{where}: {error['msg']}"
