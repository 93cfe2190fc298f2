"""The library as data: examples' records and the two export formats (library/filters.py finds them).

Nothing here knows of requests or responses: the export views and the JSON API call these builders.

- A ZIP of example folders: `index.json` at the root, and one folder per example with its files,
  `metadata.json` (fields and provenance), `results.json` and `to_save/`.
- A CodeScientist codeblock library: one `<name>.py` per example, a header of `# key: value` lines
  followed by the code, and `codedistiller_summaries.json` keyed by name, in the shape of CodeScientist's
  own `codeblock_summaries.json` (`manage.py merge_codeblock_summaries` merges it into that file).

An example's name (`export_name`) is the slug of its title and its id: unique, safe as a file name, and
stable across exports, so an agent can diff two exports of the library.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.utils import timezone
from django.utils.text import slugify

from codedistiller_site.zipstream import Entry
from library.filters import LibraryFilters
from library.models import Example

FORMAT_VERSION = 1
MAX_PAGE_SIZE = 100
# Files the export writes itself in each example folder; an example file of the same name is renamed.
RESERVED = ("metadata.json", "results.json", "to_save")
HEADER_KEYS = ("name", "description", "inclusion_criteria", "exclusion_criteria", "python_version")
# CodeScientist (allenai/codescientist, src/CodeBlockStore.py, parseCodeblockPython) reads *every* line of a
# codeblock that starts with `#` (after leading spaces), drops the leading #s and spaces, and takes it as
# a field when it starts with `<field>:` in any case: a single field from its first such line,
# pip_requirement from all of them. A comment in the program would become a requirement.
HEADER_LIKE = re.compile(
    r"^(\s*#+\s*)(" + "|".join((*HEADER_KEYS, "pip_requirement")) + r")(:)", re.IGNORECASE
)
# CodeScientist reads its own summaries from this name in its codeblocks/ folder; ours must not replace it.
SUMMARIES = "codedistiller_summaries.json"
CODESCIENTIST_SUMMARIES = "codeblock_summaries.json"
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


# Records ---------------------------------------------------------------------------------------------


def example_brief(example: Example) -> dict:
    """What an agent needs to choose among search hits without fetching each one: the API's list items
    and the MCP server's search results."""
    return {
        "id": example.pk,
        "name": export_name(example),
        "title": example.title,
        "summary": example.summary,
        "inclusion_criteria": example.inclusion_criteria,
        "exclusion_criteria": example.exclusion_criteria,
        "requirements": example.requirements,
        "tags": tag_names(example),
        "source_kind": example.source_kind,
        "source_url": example.source_url,
        "commit_sha": example.commit_sha,
        "version": example.version,
        "is_latest": example.is_latest,
        "example_type": example.example_type,
        "language": example.language,
        "gpu_required": example.gpu_required,
        "score": example.score,
        "score_count": example.score_count,
        "approved_at": example.approved_at.isoformat(),
        "relevance": getattr(example, "relevance", None),
        **health_brief(example),
    }


def health_brief(example: Example) -> dict:
    """The verdict of the example's last check and when it finished (library/health.py), so that an agent
    can prefer verified examples. Read from `ExampleQuerySet.with_health` where a list was annotated."""
    if hasattr(example, "health") and hasattr(example, "checked_at"):
        status, checked_at = example.health, example.checked_at
    else:
        check = example.checks.verdicts().only("status", "finished_at").first()
        status, checked_at = (check.status, check.finished_at) if check else (None, None)
    return {"health": status, "last_checked_at": checked_at.isoformat() if checked_at else None}


def export_name(example: Example) -> str:
    """Unique (the id), safe as a file or module name (lowercase, digits, underscores), and stable."""
    slug = slugify(example.title).replace("-", "_")[:60].strip("_") or "example"
    return f"{slug}_{example.pk}"


def requirement_names(example: Example) -> list[str]:
    """The distribution names in requirements.txt, without versions or markers: `numpy==2.1` → numpy."""
    names = []
    for line in example.requirements:
        match = REQUIREMENT_NAME.match(line)
        if match and not line.lstrip().startswith("-") and match.group(1) not in names:
            names.append(match.group(1))
    return names


def provenance(example: Example) -> dict:
    return {
        "source_kind": example.source_kind,
        "source_url": example.source_url,
        "source_title": example.source_title,
        "commit_sha": example.commit_sha,
        "paper_title": example.paper_title,
        "paper_authors": example.paper_authors,
        "paper_url": example.paper_url,
        "run_id": example.run_id,
        "iteration_number": example.iteration_number,
        "profile": example.profile,
        "model_code": example.model_code,
        "model_fast": example.model_fast,
        "cost_usd": float(example.cost_usd),
        "approved_by": example.approved_by.get_username() if example.approved_by else None,
        "approved_at": example.approved_at.isoformat(),
        "override_reason": example.override_reason,
    }


def retraction(example: Example) -> dict | None:
    if not example.is_retracted:
        return None
    return {
        "reason": example.retracted_reason,
        "retracted_at": example.retracted_at.isoformat() if example.retracted_at else None,
    }


def metadata_record(example: Example) -> dict:
    """Everything known about an example but its code and outputs: `metadata.json` in an export."""
    return {
        "format": "codedistiller-example",
        "format_version": FORMAT_VERSION,
        "id": example.pk,
        "name": export_name(example),
        "title": example.title,
        "summary": example.summary,
        "description": example.description,
        "inclusion_criteria": example.inclusion_criteria,
        "exclusion_criteria": example.exclusion_criteria,
        "tags": tag_names(example),
        "example_type": example.example_type,
        "language": example.language,
        "gpu_required": example.gpu_required,
        "python_version": example.python_version,
        "requirements": example.requirements,
        "how_to_run": example.how_to_run,
        "version": example.version,
        "is_latest": example.is_latest,
        "status": example.status,
        "retracted": retraction(example),
        "score": example.score,
        "score_count": example.score_count,
        "files": sorted(example.files),
        "saved_files": example.saved_files,
        "metadata": example.metadata,
        "provenance": provenance(example),
        "measured": example.measured,
        "judgement": example.judgement,
    }


def readme_text(example: Example) -> str:
    """How to run the example, for the folder of an export: two commands in a fresh virtual environment."""
    commands = "".join(f"    {command}\n" for command in example.how_to_run)
    return (
        f"# {fold(example.title)}\n\n{example.summary.strip()}\n\n"
        f"Run it in a fresh virtual environment (Python {example.python_version or '3'}):\n\n{commands}\n"
        "requirements.txt names the repository itself and the versions it was proven with.\n"
    )


def tag_names(example: Example) -> list[str]:
    return sorted(tag.name for tag in example.tags.all())


# The codeblock format ----------------------------------------------------------------------------------


def fold(text: str) -> str:
    """One line: a header value must not break the `# key: value` format."""
    return " ".join(str(text).split())


# Files that are the example's setup, not its program: the codeblock's header carries the requirements.
SETUP_FILES = ("requirements.txt", "runscript.sh")
FUTURE_IMPORT = re.compile(r"^from __future__ import [^\n]*\n", re.M)


def codeblock_code(example: Example) -> str:
    """The example's program as one file: main.py (or its first Python file), with every other file it
    needs inlined ahead of it.

    A CodeScientist codeblock is one Python file, but a program written from a paper often imports its
    own modules and reads its own config.yaml: `main.py` alone would fail at its first import. The other
    files go into the codeblock as text that the program writes beside itself before its own code runs,
    so the codeblock both reads whole and runs as it is.
    """
    python_files = [name for name in sorted(example.files) if name.endswith(".py")]
    main_name = "main.py" if "main.py" in example.files else (python_files[0] if python_files else None)
    if main_name is None:
        return ""
    main = example.files[main_name]
    others = {
        name: text for name, text in sorted(example.files.items()) if name not in (main_name, *SETUP_FILES)
    }
    if not others:
        return main
    futures = "".join(FUTURE_IMPORT.findall(main))  # they must stay the first statements
    listing = "".join(f"    {name!r}: {text!r},\n" for name, text in others.items())
    prelude = (
        f"# --- The {len(others)} other file(s) this example needs, written beside it when it runs ---\n"
        "import os as _os\nimport sys as _sys\n\n"
        f"_EXAMPLE_FILES = {{\n{listing}}}\n"
        "_here = _os.path.dirname(_os.path.abspath(__file__))\n"
        "for _name, _text in _EXAMPLE_FILES.items():\n"
        "    _path = _os.path.join(_here, _name)\n"
        "    _os.makedirs(_os.path.dirname(_path), exist_ok=True)\n"
        "    with open(_path, 'w', encoding='utf-8') as _file:\n"
        "        _file.write(_text)\n"
        "_sys.path.insert(0, _here)\n"
        f"# --- {main_name} ---\n"
    )
    return futures + prelude + FUTURE_IMPORT.sub("", main)


def codeblock_body(code: str) -> str:
    """The program with every line that CodeScientist would read as a header field made plain text:
    `# pip_requirement: x` becomes `# [pip_requirement]: x` (a comment; or, rarely, a line of a string)."""
    return "\n".join(HEADER_LIKE.sub(r"\1[\2]\3", line) for line in code.split("\n"))


def codeblock_text(example: Example) -> str:
    fields = {
        "name": export_name(example),
        "description": f"{example.title}: {example.summary}",
        "inclusion_criteria": example.inclusion_criteria,
        "exclusion_criteria": example.exclusion_criteria,
        "python_version": example.python_version,
    }
    lines = [f"# {key}: {fold(value)}".rstrip() for key, value in fields.items()]
    lines += [f"# pip_requirement: {fold(requirement)}" for requirement in example.requirements]
    if example.how_to_run:
        lines.append(f"# how_to_run: {' && '.join(example.how_to_run)}")
    return "\n".join(lines) + "\n\n" + codeblock_body(codeblock_code(example))


def parse_codeblock(text: str) -> dict:
    """The header fields and the code of a codeblock file: the inverse of `codeblock_text`."""
    fields: dict = {"pip_requirements": []}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        match = re.match(r"^# ([a-z_]+):(?: (.*))?$", lines[index], re.IGNORECASE)
        if not match:
            break
        key, value = match.group(1).lower(), (match.group(2) or "").strip()
        if key == "pip_requirement":
            if value:
                fields["pip_requirements"].append(value)
        else:
            fields[key] = value
        index += 1
    if index < len(lines) and lines[index] == "":
        index += 1
    fields["code"] = "\n".join(lines[index:])
    return fields


def codeblock_summary(example: Example, *, url: str = "") -> dict:
    """The example in the shape of an entry of CodeScientist's codeblock_summaries.json (which its own LLM
    call writes: name, description, libraries, when_to_use, examples, kinds_of_ideas, plus the criteria),
    filled from what we know rather than asked of a model."""
    tags = tag_names(example)
    ideas = [
        ", ".join(tags),
        f"work that builds on {example.source_title or example.source_url}",
        example.example_type,
    ]
    summary = {
        "name": export_name(example),
        "description": fold(f"{example.title}: {example.summary}"),
        "libraries": requirement_names(example),
        "when_to_use": fold(example.inclusion_criteria or example.summary),
        "examples": fold(example.description or example.summary),
        "kinds_of_ideas": fold("; ".join(idea for idea in ideas if idea)),
        "inclusion_criteria": fold(example.inclusion_criteria),
        "exclusion_criteria": fold(example.exclusion_criteria),
        # Beyond CodeScientist's fields: where the example came from, for an agent that cites it.
        "example_id": example.pk,
        "version": example.version,
        "source_url": example.source_url,
        "commit_sha": example.commit_sha,
    }
    if url:
        summary["url"] = url
    return summary


def merge_summaries(ours: Mapping, target: Path) -> tuple[int, int, int]:
    """Write our summaries into CodeScientist's codeblock_summaries.json at `target` (made if missing):
    ours replace the entries of the same name (names are stable across exports), the others stay.
    Returns (added, replaced, kept). ValueError says why a file cannot be read."""
    existing = {}
    if target.exists():
        try:
            existing = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{target} is not a readable JSON file ({exc})") from None
        if not isinstance(existing, dict):
            raise ValueError(f"{target} holds a JSON {type(existing).__name__}, not an object of summaries")
    added = sum(1 for name in ours if name not in existing)
    merged = {**existing, **ours}
    # Indented as CodeScientist writes it; replaced in one step, so a crash never leaves half a file.
    partial = target.with_name(target.name + ".partial")
    partial.write_text(
        json.dumps(merged, indent=4, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    partial.replace(target)
    return added, len(ours) - added, len(existing) - (len(ours) - added)


# Archives -------------------------------------------------------------------------------------------


def library_entries(examples: Iterable[Example], *, filters: LibraryFilters, url_for=None) -> Iterator[Entry]:
    """The ZIP of example folders, `index.json` last (it lists what was written)."""
    index = []
    for example in examples:
        name = export_name(example)
        written = []
        for entry in example_entries(example, folder=name, url_for=url_for):
            written.append(entry.name.removeprefix(f"{name}/"))
            yield entry
        index.append(
            {
                "name": name,
                "folder": f"{name}/",
                "id": example.pk,
                "title": example.title,
                "summary": example.summary,
                "tags": tag_names(example),
                "version": example.version,
                "source_url": example.source_url,
                "commit_sha": example.commit_sha,
                "example_type": example.example_type,
                "language": example.language,
                "gpu_required": example.gpu_required,
                "files": written,
                **({"url": url_for(example)} if url_for else {}),
            }
        )
    yield Entry("index.json", _json(_index(filters, index, "codedistiller-library")))


def example_entries(example: Example, *, folder: str, url_for=None) -> Iterator[Entry]:
    """One example's folder: its files, metadata.json, results.json and its saved to_save/ files."""
    when = example.approved_at.timetuple()[:6]
    for name, text in sorted(example.files.items()):
        safe = _safe_name(name)
        if safe is None:
            continue
        if safe.split("/")[0] in RESERVED:
            safe = f"example_{safe}"
        yield Entry(f"{folder}/{safe}", str(text).encode(), date_time=when)
    record = metadata_record(example)
    if url_for:
        record["url"] = url_for(example)
    yield Entry(f"{folder}/metadata.json", _json(record), date_time=when)
    if example.how_to_run and "README.md" not in example.files:
        yield Entry(f"{folder}/README.md", readme_text(example).encode(), date_time=when)
    if example.results is not None:
        yield Entry(f"{folder}/results.json", _json(example.results), date_time=when)
    for saved in saved_file_paths(example):
        yield Entry(f"{folder}/to_save/{saved.name}", path=saved.path, date_time=when)


def codeblock_entries(
    examples: Iterable[Example], *, filters: LibraryFilters, url_for=None
) -> Iterator[Entry]:
    summaries = {}
    for example in examples:
        name = export_name(example)
        yield Entry(
            f"{name}.py", codeblock_text(example).encode(), date_time=example.approved_at.timetuple()[:6]
        )
        summaries[name] = codeblock_summary(example, url=url_for(example) if url_for else "")
    yield Entry(SUMMARIES, _json(summaries))


@dataclass(frozen=True)
class SavedFile:
    name: str
    path: Path


def saved_file_paths(example: Example) -> list[SavedFile]:
    """The example's listed to_save files that are regular files inside its folder: never a link."""
    folder = example.files_dir / "to_save"
    found = []
    for saved in example.saved_files or []:
        name = _safe_name(str(saved.get("name", ""))) if isinstance(saved, dict) else None
        if name is None:
            continue
        # No step of the path may be a link (lstat each one), and the file must be a regular one.
        path, modes = folder, []
        try:
            modes.append(os.lstat(path).st_mode)
            for part in PurePosixPath(name).parts:
                path = path / part
                modes.append(os.lstat(path).st_mode)
        except OSError:
            continue
        if any(stat.S_ISLNK(mode) for mode in modes) or not stat.S_ISREG(modes[-1]):
            continue
        found.append(SavedFile(name, path))
    return found


def _index(filters: LibraryFilters, examples: list[dict], kind: str) -> dict:
    return {
        "format": kind,
        "format_version": FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "query": filters.as_params(),
        "count": len(examples),
        "examples": examples,
    }


def dumps(value, **options) -> str:
    """JSON that every parser reads: no NaN or Infinity, ever. None can come from the database (its JSON
    columns refuse them); a parameter that would bring one is refused (LibraryFilters.parse)."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, default=str, **options)


def _json(value) -> bytes:
    return (dumps(value, indent=2) + "\n").encode()


def _safe_name(name: str) -> str | None:
    """A relative path with no `..`, no absolute start and no backslashes, or None."""
    if not name or "\\" in name or "\x00" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", ".", "") for part in path.parts):
        return None
    return path.as_posix()
