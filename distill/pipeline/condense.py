"""A paper larger than the planner's budget, condensed section by section before it is planned.

Each section (its text without the references) is asked, in a JSON reply held to `DIGEST_SCHEMA`, what it
specifies for an implementation: components, equations, hyper-parameters, data, metrics. The condensed
paper is those lists under the section headings; it is fitted to the planner's budget by leaving out
first the sections that seldom specify anything (introduction, related work, conclusion), never the
method's or the experiments' before them.

A paper that fits the budget as it is (any paper, for a large-context model) is not condensed. The
digests are cached per paper (by the hash of its text) and per model in DATA_DIR, and per section inside
that, so a second run of the same paper, or a step resumed after a crash, asks only for what is missing.
What each section contributed is kept in the paper's plan (`plan["condensed"]`) for the run page.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from pydantic import BaseModel, ConfigDict, field_validator

from distill.models import Paper, Run
from distill.pipeline import papers, parsing, program, prompts, survey

logger = logging.getLogger(__name__)

FIELDS = ("components", "equations", "hyperparameters", "data", "metrics")
LABELS = {"components": "Components", "equations": "Equations", "hyperparameters": "Hyper-parameters",
          "data": "Data", "metrics": "Metrics"}  # fmt: skip
MAX_ITEMS = 6  # per list: a small model otherwise lists every sentence
MAX_ITEM_CHARS = 300
VERBATIM_TOKENS = 80  # a section this small is kept as it is: asking about it would cost more than it says
SECTION_SHARE = 0.6  # of the context left after the reply, for one section's text in its prompt
DIGEST_MAX_TOKENS = 450
# The JSON schema that holds a small model's reply to its shape (the local model's grammar).
DIGEST_SCHEMA = {
    "type": "object",
    "properties": {
        name: {"type": "array", "items": {"type": "string"}, "maxItems": MAX_ITEMS} for name in FIELDS
    },
    "required": list(FIELDS),
}
# Sections that seldom specify anything to implement: left out first when the condensed paper is too large.
BACKGROUND = re.compile(
    r"introduction|related work|background|motivation|conclusion|discussion|limitation|future work|"
    r"acknowledg|statement of need|broader impact|preliminar",
    re.IGNORECASE,
)
# Sections that specify the implementation: left out last, and only after every other section.
ESSENTIAL = re.compile(
    r"method|approach|model|algorithm|architecture|experiment|setup|implementation|training|"
    r"hyper|data|evaluation|result|appendix|usage|example",
    re.IGNORECASE,
)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")


class Digest(BaseModel):
    """What one section specifies for an implementation; lists of short phrases."""

    model_config = ConfigDict(extra="ignore")

    components: list[str] = []
    equations: list[str] = []
    hyperparameters: list[str] = []
    data: list[str] = []
    metrics: list[str] = []

    @field_validator(*FIELDS, mode="before")
    @classmethod
    def _phrases(cls, value):
        # A large model, unconstrained, writes a string or objects where a list of phrases is asked.
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        phrases = [item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) for item in items]
        return [" ".join(p.split())[:MAX_ITEM_CHARS] for p in phrases if p and p.strip()][:MAX_ITEMS]

    def as_text(self) -> str:
        return "\n".join(
            f"{LABELS[name]}: " + "; ".join(getattr(self, name)) for name in FIELDS if getattr(self, name)
        )


def parse_digest(text: str) -> Digest:
    data = parsing.extract_json(text, expect=dict, placeholders=prompts.placeholders("paper_condense"))
    return Digest.model_validate(data)


# Sections --------------------------------------------------------------------------------------------


def sections_of(text: str, *, max_tokens: int, title: str = "") -> list[dict]:
    """The paper's text without its references, in sections: [{"title", "level", "text", "key"}]. The
    text before the first heading (the title, authors, abstract) is a section of its own; a section over
    max_tokens is split at paragraphs into parts."""
    # A YAML front matter (a JOSS paper's) holds the title and affiliations: nothing to implement.
    body = re.sub(r"\A---[ \t]*\n.*?\n---[ \t]*\n", "", papers.without_references(text), flags=re.DOTALL)
    found: list[dict] = [{"title": "(beginning)", "level": 1, "lines": []}]
    in_fence = False
    for line in body.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else HEADING.match(line)
        if match and len(found) == 1 and match[2].strip() == title:
            continue  # the paper's title: the condensed paper begins with it anyway
        if match:
            found.append({"title": match[2].strip(), "level": len(match[1]), "lines": []})
            continue
        found[-1]["lines"].append(line)
    sections = []
    for section in found:
        content = "\n".join(section.pop("lines")).strip()
        if not content:
            continue
        parts = _split(content, max_tokens)
        for number, part in enumerate(parts, start=1):
            title = section["title"] if len(parts) == 1 else f"{section['title']} (part {number})"
            key = hashlib.sha256(f"{title}\n{part}".encode()).hexdigest()[:16]
            sections.append({**section, "title": title, "text": part, "key": key, "of": section["title"]})
    return sections


def _split(text: str, max_tokens: int) -> list[str]:
    if survey.count_tokens(text) <= max_tokens:
        return [text]
    parts, current = [], []
    for paragraph in re.split(r"\n\s*\n", text):
        candidate = "\n\n".join([*current, paragraph])
        if current and survey.count_tokens(candidate) > max_tokens:
            parts.append("\n\n".join(current))
            current = [paragraph]
        else:
            current.append(paragraph)
    if current:
        parts.append("\n\n".join(current))
    # A paragraph larger than a whole part is cut: its start says the most.
    return [survey.truncate_to_tokens(part, max_tokens) for part in parts]


# Condensing ------------------------------------------------------------------------------------------


def needs_condensing(paper: Paper, *, budget: int) -> bool:
    return survey.count_tokens(papers.without_references(paper.text)) > budget


def condense_paper(
    run: Run, paper: Paper, *, budget: int, should_cancel: Callable[[], bool] | None = None
) -> dict | None:
    """The condensed paper (and each section's contribution) in `paper.plan["condensed"]`, made if the
    paper does not fit `budget` tokens; None when it fits and is planned from as it is."""
    done = paper.plan.get("condensed")
    if done and done.get("complete"):
        return done
    if not needs_condensing(paper, budget=budget):
        return None
    config = run.config
    reply_tokens = min(DIGEST_MAX_TOKENS, config.get("code_max_output_tokens", 16000))
    room = config.get("context_tokens", 128000) - reply_tokens
    sections = sections_of(paper.text, max_tokens=max(200, int(room * SECTION_SHARE)), title=paper.title)
    cache_path = _cache_path(paper, config["model_code"])
    cached = _read_cache(cache_path)
    rows = []
    for section in sections:
        tokens = survey.count_tokens(section["text"])
        if tokens <= VERBATIM_TOKENS:
            rows.append({**_row(section, tokens), "kept_as_is": True, "digest": section["text"]})
            continue
        if section["key"] not in cached:
            program.stop_if_cancelled(should_cancel)
            prompt = prompts.render(
                "paper_condense",
                title=paper.title or "(untitled)",
                section=section["title"],
                text=section["text"],
            )
            digest, _ = program.ask(
                run, stage="condense", messages=[{"role": "user", "content": prompt}], parse=parse_digest,
                max_tokens=reply_tokens, schema=DIGEST_SCHEMA, continue_cut=True,
            )  # fmt: skip
            cached[section["key"]] = digest.model_dump()
            _write_cache(cache_path, cached)
        digest = Digest.model_validate(cached[section["key"]])
        rows.append({**_row(section, tokens), "kept_as_is": False, "digest": digest.as_text()})
    text, rows = fit(paper.title, rows, budget=budget)
    condensed = {
        "complete": True,
        "text": text,
        "tokens": survey.count_tokens(text),
        "paper_tokens": survey.count_tokens(papers.without_references(paper.text)),
        "budget_tokens": budget,
        "model": config["model_code"],
        "sections": rows,
    }
    paper.plan["condensed"] = condensed
    Paper.objects.filter(pk=paper.pk).update(plan=paper.plan)
    return condensed


def _row(section: dict, tokens: int) -> dict:
    return {"title": section["title"], "of": section["of"], "level": section["level"], "tokens": tokens}


def fit(title: str, rows: list[dict], *, budget: int) -> tuple[str, list[dict]]:
    """The condensed paper within budget, and the rows marked with whether each is in it ("used").

    Left out first: the background sections, from the last; then the others that are not essential;
    the method's and the experiments' only when nothing else is left, and then cut, not dropped."""
    for row in rows:
        row["used"] = bool(row["digest"].strip())

    def text() -> str:
        parts = [f"# {title or '(untitled)'}"]
        parts += [
            f"{'#' * (row['level'] + 1)} {row['title']}\n{row['digest']}" for row in rows if row["used"]
        ]
        return "\n\n".join(parts) + "\n"

    def rank(row: dict) -> int:
        if BACKGROUND.search(row["of"]):
            return 0
        return 2 if ESSENTIAL.search(row["of"]) else 1

    for level in (0, 1):
        for row in reversed(rows):
            if survey.count_tokens(text()) <= budget:
                return text(), rows
            if row["used"] and rank(row) == level:
                row["used"] = False
    return survey.truncate_to_tokens(text(), budget), rows


# The cache -------------------------------------------------------------------------------------------


def _cache_path(paper: Paper, model: str) -> Path:
    digest = hashlib.sha256(paper.text.encode()).hexdigest()[:32]
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", model)
    return Path(settings.DATA_DIR) / "paper-digests" / f"{digest}-{slug}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    """Written beside and renamed, so that a crash or a concurrent run never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
            json.dump(data, out, ensure_ascii=False)
        os.replace(out.name, path)
    except OSError:
        logger.exception("could not write the paper digest cache %s", path)
