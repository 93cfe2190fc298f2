"""Syntax highlighting with pygments, one HTML string per source line.

Pages lay the lines out themselves (line numbers, anchors, diff rows), so the formatter runs with
`nowrap` and its output is cut at newlines: pygments' HTML formatter closes every span at the end of a
line, so each piece is balanced markup. Pygments escapes the text; the pieces are marked safe here and
nowhere else.
"""

from __future__ import annotations

import json
import re

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import BashLexer, JsonLexer, PythonLexer, TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

# Above this, highlighting costs more than it gives: the text is shown plain (and still escaped).
MAX_HIGHLIGHT_CHARS = 2_000_000
CSS_CLASS = "hl"

_LEXERS_BY_SUFFIX = {".py": PythonLexer, ".sh": BashLexer, ".txt": TextLexer, ".json": JsonLexer}
_FORMATTER = HtmlFormatter(nowrap=True)


def split_lines(text: str) -> list[str]:
    """The text's lines without their endings; a final newline does not start another line."""
    if not text:
        return []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def lexer_for(name: str) -> Lexer:
    """Pick a lexer from the file name alone (never by guessing from content, which is slow and odd)."""
    base = name.rsplit("/", 1)[-1].lower()
    options = {"stripnl": False, "ensurenl": False}
    if base.startswith("requirements") or base in ("license", "readme"):
        return TextLexer(**options)
    suffix = "." + base.rsplit(".", 1)[-1] if "." in base else ""
    if suffix in _LEXERS_BY_SUFFIX:
        return _LEXERS_BY_SUFFIX[suffix](**options)
    try:
        return get_lexer_for_filename(base, **options)
    except ClassNotFound:
        return TextLexer(**options)


def highlight_lines(name: str, text: str) -> list[SafeString]:
    """One HTML string per line of `text`, highlighted by the lexer for `name`."""
    lines = split_lines(text)
    if not lines:
        return []
    if len(text) <= MAX_HIGHLIGHT_CHARS:
        html = highlight("\n".join(lines) + "\n", lexer_for(name), _FORMATTER)
        pieces = html.split("\n")
        if pieces and pieces[-1] == "":
            pieces.pop()
        # A lexer that swallowed or added a line would shift every anchor after it: show plain text.
        if len(pieces) == len(lines):
            return [mark_safe(piece) for piece in pieces]
    return [escape(line) for line in lines]


def pretty_json(value) -> list[SafeString]:
    """A JSON value indented for reading, highlighted, one string per line."""
    return highlight_lines("data.json", json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


_ANCHOR_UNSAFE = re.compile(r"[\s#]+")


def anchor_prefix(name: str) -> str:
    """The file part of a line anchor such as `main.py-L12`: ids and fragments may not hold spaces or #."""
    return _ANCHOR_UNSAFE.sub("_", name)


def stylesheet() -> str:
    """The pygments token colours under `.hl`, written once into static/css/code.css.

    Only the token rules: the formatter's rules for bare `pre` and its own line numbers would restyle the
    rest of the site, and its error boxes are noise on code that a lexer merely did not expect.
    """
    rules = HtmlFormatter(style="default").get_style_defs(f".{CSS_CLASS}").splitlines()
    return "\n".join(
        rule
        for rule in rules
        if rule.startswith(f".{CSS_CLASS} .") and not rule.startswith(f".{CSS_CLASS} .err ")
    )


class CodeFile:
    """A file as the iteration page shows it: its name, the anchor prefix of its lines, its lines."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.anchor = anchor_prefix(name)
        self.lines = highlight_lines(name, text)

    @property
    def rows_html(self) -> SafeString:
        """The table rows, one per line, each with its anchor and a link to it.

        Built here rather than in a template loop, which takes ten times as long on a 5,000-line file.
        Only the escaped anchor, line numbers and pygments' own (escaped) output go in.
        """
        anchor = escape(self.anchor)
        return mark_safe(
            "\n".join(
                f'<tr id="{anchor}-L{number}"><td class="code__num"><a href="#{anchor}-L{number}">{number}</a>'
                f'</td><td class="code__text">{line}</td></tr>'
                for number, line in enumerate(self.lines, start=1)
            )
        )


# The program's own files first, in the order one reads them; extra files after, by name.
_FILE_ORDER = {"main.py": 0, "requirements.txt": 1, "runscript.sh": 2}


def code_files(files: dict[str, str]) -> list[CodeFile]:
    names = sorted(files, key=lambda name: (_FILE_ORDER.get(name, len(_FILE_ORDER)), name))
    return [
        CodeFile(name, files[name] if isinstance(files[name], str) else str(files[name])) for name in names
    ]


def key_value_items(value) -> list[tuple[str, str]]:
    """A dict's pairs for a key/value table: strings as written, other values as JSON."""
    if not isinstance(value, dict):
        return []
    return [
        (str(key), item if isinstance(item, str) else json.dumps(item, ensure_ascii=False))
        for key, item in value.items()
    ]


def flat_items(value) -> list[tuple[str, str]] | None:
    """The pairs of a flat dict (no nested dict or list), or None: only those read well as a table."""
    if not isinstance(value, dict) or any(isinstance(item, dict | list) for item in value.values()):
        return None
    return key_value_items(value)
