"""A paper's text, from a PDF, Markdown, plain text or an arXiv URL, with its sections where they show.

Everything here runs when a curator submits a paper, before any run exists: a paper that cannot be read
(encrypted, damaged, scanned without a text layer, too large, arXiv out of reach) raises `PaperRefused`
with one line for the curator, and nothing is made.

The text comes out as Markdown: headings found in a PDF (its own outline when it has one; else by font
size, or by numbering such as "2.1 Training" and the usual names such as "Introduction") or in plain text
(numbering, upper-case lines, the usual names) become `#` lines, so that the prompts, the page and the
sections list all see one structure.
"""

from __future__ import annotations

import io
import logging
import math
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings

logger = logging.getLogger(__name__)

MIN_TEXT_CHARS = 40  # below this, a PDF has no usable text layer (a scan, or figures only)
FETCH_TIMEOUT_SECS = 30
HEADING_SIZE_RATIO = 1.15  # a line this much larger than the body text is a heading
MAX_HEADING_CHARS = 120
KNOWN_HEADINGS = {
    "abstract", "introduction", "background", "related work", "related works", "preliminaries", "method",
    "methods", "methodology", "approach", "model", "experiments", "experimental setup", "experimental results",
    "evaluation", "results", "discussion", "conclusion", "conclusions", "limitations", "future work",
    "references", "bibliography", "acknowledgements", "acknowledgments", "appendix", "supplementary material",
    "summary", "statement of need", "implementation", "implementation details", "training", "data", "dataset",
    "datasets", "experimental settings", "hyperparameters", "ablation study", "ablations", "analysis",
    "usage", "features", "installation", "examples", "overview", "architecture", "algorithm",
}  # fmt: skip
NUMBERED_HEADING = re.compile(
    r"^(?P<number>(?:\d+(?:\.\d+){0,3}|[IVX]{1,5}|[A-H]))\.?\s+(?P<title>[A-Z][^\n]*)$"
)
ROMAN = re.compile(r"^[IVX]+$")
# A table of contents' line: dot leaders (or an ellipsis) then a page number. Not a heading, and not text.
DOT_LEADER = re.compile(r"(?:\.\s?){4,}\s*\d*\s*$|…\s*\d+\s*$")
# An upper-case heading in plain text ("EXPERIMENTAL SETUP"): letters, digits and a little punctuation.
UPPER_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,:&/'()\-]*[A-Z)]$")
MAX_UPPER_HEADING_WORDS = 8
# A line on this share of the pages (at their top or bottom, and on 3 pages at least) is a running header
# or footer: measured on PDFs here, 27 of 99 headings found by size were a page header repeated.
RUNNING_SHARE = 0.25
RUNNING_EDGE_LINES = 3
ARXIV_ID = re.compile(r"^(?:\d{4}\.\d{4,5}|[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?$")
ARXIV_HOSTS = {"arxiv.org", "www.arxiv.org", "export.arxiv.org"}


class PaperRefused(Exception):
    """The paper cannot be used; the message is one line meant for the curator."""


@dataclass
class Limits:
    max_bytes: int
    max_pages: int

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_bytes=int(getattr(settings, "DISTILL_MAX_PAPER_MB", 30)) * 1024 * 1024,
            max_pages=int(getattr(settings, "DISTILL_MAX_PAPER_PAGES", 100)),
        )


@dataclass
class PaperText:
    source: str  # "pdf", "markdown", "text" or "arxiv"
    text: str  # Markdown: headings as `#` lines
    title: str = ""
    authors: str = ""
    url: str = ""
    filename: str = ""
    pages: int | None = None
    sections: list[dict] = field(default_factory=list)  # [{"title", "level"}], in order


# PDF --------------------------------------------------------------------------------------------------


def from_pdf(
    data: bytes, *, filename: str = "", limits: Limits | None = None, source: str = "pdf"
) -> PaperText:
    import pypdf
    from pypdf.errors import PdfReadError

    limits = limits or Limits.from_settings()
    _check_size(len(data), limits)
    if not data.lstrip()[:5] == b"%PDF-":
        raise PaperRefused("the file is not a PDF (it does not start with %PDF-)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            # Many PDFs are "encrypted" only against editing and open with an empty password.
            try:
                opened = reader.decrypt("")
            except Exception:  # e.g. AES without the cryptography package
                opened = 0
            if not opened:
                raise PaperRefused("the PDF is encrypted with a password; upload an unprotected copy")
        count = len(reader.pages)
    except PaperRefused:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise PaperRefused(f"the PDF could not be read; it may be damaged ({_short(exc)})") from None
    if count == 0:
        raise PaperRefused("the PDF has no pages")
    if count > limits.max_pages:
        raise PaperRefused(f"the PDF has {count} pages; the limit is {limits.max_pages}")

    pages: list[tuple[str, list[tuple[str, float]]]] = []
    try:
        for page in reader.pages:
            fragments: list[tuple[str, float]] = []
            text = page.extract_text(visitor_text=_collect(fragments)) or ""
            pages.append((text, fragments))
    except Exception as exc:  # pypdf raises many kinds on damaged content streams
        raise PaperRefused(f"the PDF could not be read; it may be damaged ({_short(exc)})") from None

    total = sum(len(re.sub(r"\s", "", text)) for text, _ in pages)
    if total < MIN_TEXT_CHARS:
        raise PaperRefused(
            "the PDF has no text layer (a scanned or image-only document?); "
            "upload a PDF with selectable text, or paste the text as Markdown"
        )
    metadata = _pdf_metadata(reader)
    text, sections, first_heading, title_line = _structure_pdf(pages, outline=_outline(reader))
    title = metadata.get("title") or title_line or first_heading or _first_line(text)
    authors = metadata.get("author") or _authors_after_title(pages[0][0], title)
    return PaperText(
        source=source,
        text=text,
        title=_clip(title, 500),
        authors=_clip(authors, 1000),
        filename=filename,
        pages=count,
        sections=sections,
    )


def _collect(fragments: list):
    def visit(text, cm, tm, font_dict, font_size):
        if not text:
            return
        # The rendered size: the font size scaled by the text and the current transformation matrices.
        scale = math.hypot(tm[2], tm[3]) * math.hypot(cm[2], cm[3]) if tm and cm else 1.0
        fragments.append((text, round(float(font_size or 0) * (scale or 1.0), 1)))

    return visit


def _structure_pdf(pages, *, outline: list[dict] | None = None) -> tuple[str, list[dict], str, str]:
    """Markdown text and sections. Headings: the PDF's outline when it has one; else lines set larger than
    the body, or numbered, or named. Running headers and footers are neither headings nor text after the
    first page, and table-of-contents lines are dropped."""
    sizes: Counter = Counter()
    for _, fragments in pages:
        for text, size in fragments:
            sizes[size] += len(text.strip())
    body = sizes.most_common(1)[0][0] if sizes else 0
    large: dict[str, float] = {}  # a large line, squeezed of whitespace, and its size
    for _, fragments in pages:
        line, line_size = [], 0.0
        for text, size in fragments + [("\n", 0.0)]:
            parts = text.split("\n")
            for index, part in enumerate(parts):
                if index > 0:
                    joined = _squeeze("".join(line))
                    if joined and line_size >= body * HEADING_SIZE_RATIO and len(joined) <= MAX_HEADING_CHARS:
                        large.setdefault(joined, line_size)
                    line, line_size = [], 0.0
                if part.strip():
                    line.append(part)
                    line_size = max(line_size, size)
    running = running_lines([text for text, _ in pages])
    title_size = max(large.values(), default=0)
    title_line = ""
    out, sections = [], []
    for page_number, (text, _) in enumerate(pages, start=1):
        wanted = _outline_on_page(outline, page_number) if outline else {}
        for raw in text.splitlines():
            line = " ".join(raw.split())
            if not line or DOT_LEADER.search(line):
                continue
            squeezed = _squeeze(line)
            if page_number == 1 and not title_line and large.get(squeezed) == title_size and title_size:
                title_line = line  # the largest line of the first page is the title, not a section
                out.append(f"# {line}")
                continue
            if _running_key(line) in running:
                if page_number == 1:
                    out.append(line)
                continue
            if outline:
                item = wanted.pop(squeezed.lower(), None)
                level = item["level"] if item else 0
            else:
                level = _heading_level(line, sized=squeezed in large)
            if level:
                sections.append({"title": line, "level": level, "page": page_number})
                out.append("\n" + "#" * (level + 1) + " " + line)
            else:
                out.append(line)
        # An outline entry whose words are not a line of its page (set in pieces, or with its number
        # apart) still opens a section: at the end of the page it points to.
        for item in wanted.values() if outline else ():
            sections.append({"title": item["title"], "level": item["level"], "page": page_number})
            out.append("\n" + "#" * (item["level"] + 1) + " " + item["title"])
    if outline:
        order = {(s["title"], s["page"]): i for i, s in enumerate(outline)}
        sections.sort(key=lambda s: order.get((s["title"], s["page"]), len(order)))
    first_heading = sections[0]["title"] if sections else ""
    return "\n".join(out).strip() + "\n", sections, first_heading, title_line


def _outline(reader) -> list[dict]:
    """The PDF's own outline (bookmarks) as sections, [{"title", "level", "page"}]; [] when it has none.

    An outline whose one top entry holds all the others is the paper's title above its sections: it is
    left out, and the sections are the levels below it.
    """
    try:
        items = reader.outline
    except Exception:  # a damaged outline is no outline: the headings are then found in the text
        return []
    if len(items) == 2 and not isinstance(items[0], list) and isinstance(items[1], list):
        items = items[1]
    found: list[dict] = []

    def walk(entries, level: int) -> None:
        for entry in entries:
            if isinstance(entry, list):
                walk(entry, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(entry) + 1
            except Exception:
                page = None
            title = " ".join(str(getattr(entry, "title", "") or "").split())
            if title and page and len(title) <= MAX_HEADING_CHARS:
                found.append({"title": title, "level": min(level, 4), "page": page})

    walk(items, 1)
    return found


def _outline_on_page(outline: list[dict], page: int) -> dict[str, dict]:
    """The outline's entries of one page, by their squeezed lower-case title (as a line is matched)."""
    return {_squeeze(item["title"]).lower(): item for item in outline if item["page"] == page}


def running_lines(page_texts: list[str]) -> set[str]:
    """Running headers and footers: lines at the top or bottom of many pages, page numbers aside."""
    if len(page_texts) < 3:
        return set()
    counts: Counter = Counter()
    for text in page_texts:
        lines = [line for line in text.splitlines() if line.strip()]
        counts.update(
            {_running_key(line) for line in lines[:RUNNING_EDGE_LINES] + lines[-RUNNING_EDGE_LINES:]}
        )
    need = max(3, math.ceil(len(page_texts) * RUNNING_SHARE))
    return {key for key, count in counts.items() if count >= need and key}


def _running_key(line: str) -> str:
    """A line as running headers repeat it: whitespace and case aside, any page number as one '#'."""
    return re.sub(r"\d+", "#", _squeeze(line).lower())


def _heading_level(line: str, *, sized: bool = False, upper: bool = False) -> int:
    """0 for body text; else the heading's level (1 for "2 Method", 2 for "2.1 Data"). `upper`: a line in
    capitals may be a heading (in plain text, after a blank line)."""
    if (
        len(line) > MAX_HEADING_CHARS
        or line.endswith((".", ",", ";"))
        and not sized
        or DOT_LEADER.search(line)
    ):
        return 0
    bare = line.rstrip(":").strip()
    if bare.lower() in KNOWN_HEADINGS:
        return 1
    match = NUMBERED_HEADING.match(bare)
    if match and len(match["title"].split()) <= 10 and not match["title"].endswith("."):
        number = match["number"]
        if ROMAN.match(number) or len(number) == 1 and number.isalpha():
            # "A Appendix", "B Proofs", "IV RESULTS"; not a sentence that begins with "A" or "I".
            titled = all(word[0].isupper() for word in match["title"].split() if len(word) > 3)
            return 1 if (sized or bare.isupper() or ROMAN.match(number) or titled) else 0
        return number.count(".") + 1
    if upper and UPPER_HEADING.match(bare) and len(bare.split()) <= MAX_UPPER_HEADING_WORDS:
        return 1 if sum(c.isalpha() for c in bare) >= 4 else 0
    return 1 if sized else 0


def _pdf_metadata(reader) -> dict:
    try:
        info = reader.metadata or {}
        found = {"title": str(info.get("/Title") or ""), "author": str(info.get("/Author") or "")}
    except Exception:
        return {}
    title = found["title"].strip()
    # Word processors leave file names and placeholders here.
    if re.search(r"\.(dvi|docx?|tex|pdf)$|^untitled|^microsoft word", title, re.IGNORECASE) or len(title) < 4:
        title = ""
    return {"title": title, "author": found["author"].strip()}


def _authors_after_title(first_page: str, title: str) -> str:
    lines = [" ".join(line.lstrip("#").split()) for line in first_page.splitlines() if line.strip()]
    for index, line in enumerate(lines[:-1]):
        if _squeeze(line) == _squeeze(title):
            candidate = lines[index + 1]
            if len(candidate) <= 300 and not _heading_level(candidate) and not candidate.endswith("."):
                return candidate
            break
    return ""


# Markdown and plain text ------------------------------------------------------------------------------

MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def from_markdown(text: str, *, filename: str = "", limits: Limits | None = None) -> PaperText:
    """Markdown: `#` headings, the first level-1 one the title. A text whose only `#` lines are not
    headings (a "# of samples" line in a .txt) has its headings found as in plain text."""
    text = _check_text(text, limits)
    front = _front_matter(text)
    # With the title in the front matter (JOSS papers), `#` headings are the sections themselves.
    title, shift = front.get("title", ""), 0 if front.get("title") else 1
    sections, in_fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else MD_HEADING.match(line)
        if not match:
            continue
        level, heading = len(match[1]), match[2].strip()
        if level == 1 and not title:
            title = heading
            continue
        sections.append({"title": heading, "level": max(1, level - shift)})
    if not sections:
        structured, found = _text_structure(text)
        if found:
            text, sections = structured, found
    title = title or _first_line(text)
    return PaperText(
        source="markdown",
        text=text,
        title=_clip(title, 500),
        authors=_clip(front.get("authors") or _authors_after_title(text, title), 1000),
        filename=filename,
        sections=sections,
    )


def _front_matter(text: str) -> dict:
    """The title and authors of a YAML front matter (`---` lines around it, as JOSS papers have)."""
    import yaml

    match = re.match(r"^---[ \t]*\n(.*?)\n---[ \t]*\n", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}
    if not isinstance(data, dict):
        return {}
    authors = data.get("authors") or []
    names = (
        [a.get("name") if isinstance(a, dict) else a for a in authors if a]
        if isinstance(authors, list)
        else []
    )
    return {
        "title": " ".join(str(data.get("title") or "").split()),
        "authors": ", ".join(str(name) for name in names if name),
    }


def from_text(text: str, *, filename: str = "", limits: Limits | None = None) -> PaperText:
    """Plain text: headings by numbering, capitals and the usual names, turned into Markdown headings."""
    text = _check_text(text, limits)
    structured, sections = _text_structure(text)
    title = _first_line(text)
    return PaperText(
        source="text",
        text=structured,
        title=_clip(title, 500),
        authors=_clip(_authors_after_title(text, title), 1000),
        filename=filename,
        sections=sections,
    )


def _text_structure(text: str) -> tuple[str, list[dict]]:
    """Plain text as Markdown, with its sections. A line in capitals is a heading only after a blank line
    (or at the start): inside a paragraph it is an acronym's line or a table's."""
    out, sections, after_blank = [], [], True
    lines = text.splitlines()
    for index, line in enumerate(lines):
        stripped = " ".join(line.split())
        if stripped and DOT_LEADER.search(stripped):
            continue
        level = _heading_level(stripped, upper=after_blank) if stripped and index > 0 else 0
        if level:
            sections.append({"title": stripped, "level": level})
            out.append("\n" + "#" * (level + 1) + " " + stripped)
        else:
            out.append(line.rstrip())
        after_blank = not stripped
    return "\n".join(out).strip() + "\n", sections


def from_file(data: bytes, *, filename: str, limits: Limits | None = None) -> PaperText:
    """An uploaded or local file: a PDF (by its name or its first bytes), Markdown or plain text."""
    lower = filename.lower()
    if lower.endswith(".pdf") or data[:5] == b"%PDF-":
        return from_pdf(data, filename=filename, limits=limits)
    if not lower.endswith((".md", ".markdown", ".txt", ".text")):
        raise PaperRefused("a paper must be a PDF, a Markdown (.md) or a text (.txt) file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PaperRefused("the file is not UTF-8 text") from None
    if lower.endswith((".md", ".markdown")) or looks_like_markdown(text):
        return from_markdown(text, filename=filename, limits=limits)
    return from_text(text, filename=filename, limits=limits)


def looks_like_markdown(text: str) -> bool:
    return any(MD_HEADING.match(line) for line in text.splitlines()[:400])


def _check_text(text: str, limits: Limits | None) -> str:
    limits = limits or Limits.from_settings()
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    _check_size(len(text.encode("utf-8")), limits)
    if len(re.sub(r"\s", "", text)) < MIN_TEXT_CHARS:
        raise PaperRefused(f"the paper's text is too short (fewer than {MIN_TEXT_CHARS} characters)")
    return text


# arXiv ------------------------------------------------------------------------------------------------


def arxiv_id(url: str) -> str:
    """The identifier in `https://arxiv.org/abs/<id>` or `https://arxiv.org/pdf/<id>[.pdf]`."""
    from urllib.parse import urlsplit

    parts = urlsplit((url or "").strip())
    if parts.scheme != "https" or (parts.hostname or "") not in ARXIV_HOSTS or parts.port not in (None, 443):
        raise PaperRefused(
            "an arXiv link must look like https://arxiv.org/abs/<id> or https://arxiv.org/pdf/<id>"
        )
    if parts.username or parts.password:
        raise PaperRefused("an arXiv link must not hold credentials")
    match = re.match(r"^/(abs|pdf)/(.+?)(\.pdf)?/?$", parts.path)
    if not match or not ARXIV_ID.match(match[2]):
        raise PaperRefused(
            "an arXiv link must look like https://arxiv.org/abs/<id> or https://arxiv.org/pdf/<id>"
        )
    return match[2]


def arxiv_link(source: str) -> str | None:
    """The arXiv link that `arxiv:<id>`, a bare identifier or an arxiv.org URL names; None for other text.

    The link is not checked here: `from_arxiv` refuses a malformed one with the same words as the site.
    """
    from urllib.parse import urlsplit

    source = source.strip()
    if source.lower().startswith("arxiv:"):
        return f"https://arxiv.org/abs/{source[len('arxiv:') :].strip()}"
    if ARXIV_ID.match(source):
        return f"https://arxiv.org/abs/{source}"
    try:
        host = urlsplit(source).hostname or ""
    except ValueError:
        return None
    return source if host in ARXIV_HOSTS else None


def from_arxiv(url: str, *, limits: Limits | None = None, timeout: float = FETCH_TIMEOUT_SECS) -> PaperText:
    identifier = arxiv_id(url)
    limits = limits or Limits.from_settings()
    data = fetch_limited(f"https://arxiv.org/pdf/{identifier}", max_bytes=limits.max_bytes, timeout=timeout)
    paper = from_pdf(data, filename=f"{identifier.replace('/', '_')}.pdf", limits=limits, source="arxiv")
    paper.url = f"https://arxiv.org/abs/{identifier}"
    return paper


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """arXiv redirects /pdf/<id> to /pdf/<id>vN on the same host: allow that, never another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        from urllib.parse import urlsplit

        parts = urlsplit(newurl)
        if parts.scheme != "https" or (parts.hostname or "") not in ARXIV_HOSTS:
            raise PaperRefused(f"arXiv redirected to {parts.hostname}, which is not arXiv")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_limited(url: str, *, max_bytes: int, timeout: float) -> bytes:
    """The body of an https GET, at most max_bytes; every failure is a PaperRefused saying why."""
    opener = urllib.request.build_opener(_NoRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "CodeDistiller (paper fetch)"})
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise PaperRefused(f"the PDF is larger than {_mb(max_bytes)}")
            body = response.read(max_bytes + 1)
    except PaperRefused:
        raise
    except urllib.error.HTTPError as exc:
        raise PaperRefused(f"arXiv answered {exc.code} for {url}; check the identifier") from None
    except OSError as exc:  # URLError, timeouts and refused connections are all OSError
        reason = getattr(exc, "reason", exc)
        raise PaperRefused(
            f"arXiv could not be reached from this server ({_short(reason)}); "
            "download the PDF and submit the file instead"
        ) from None
    if len(body) > max_bytes:
        raise PaperRefused(f"the PDF is larger than {_mb(max_bytes)}")
    return body


# For prompts ------------------------------------------------------------------------------------------

END_MATTER = re.compile(
    r"^#{1,6}\s+(?:\d+\.?\s+)?(references|bibliography)\s*$", re.IGNORECASE | re.MULTILINE
)


def without_references(text: str) -> str:
    """The paper without its references: they cost many tokens and say nothing about what to build."""
    span = references_span(text)
    return text if span is None else text[: span[0]] + text[span[1] :]


def references_span(text: str) -> tuple[int, int] | None:
    """Where the references start and end in the text, if it has them at its end (in its last two thirds)."""
    match = END_MATTER.search(text)
    if not match or match.start() < len(text) // 3:
        return None
    # Appendices after the references often hold the details an implementation needs: they stay.
    rest = text[match.end() :]
    appendix = re.search(r"^#{1,6}\s+.*(appendix|supplementary).*$", rest, re.IGNORECASE | re.MULTILINE)
    return match.start(), match.end() + appendix.start() if appendix else len(text)


# Helpers ----------------------------------------------------------------------------------------------


def _check_size(size: int, limits: Limits) -> None:
    if size > limits.max_bytes:
        raise PaperRefused(f"the paper is larger than {_mb(limits.max_bytes)}")


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.3g} MB"


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line
    return ""


def _clip(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(exc) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
