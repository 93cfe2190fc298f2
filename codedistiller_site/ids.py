"""Ids and page numbers read from URLs: digits only, and few enough to fit the database's integers.

A 20-digit id reached SQLite as an OverflowError (a 500); every 18-digit number fits a signed 64-bit
integer, so anything longer is simply not an id of ours (a 404, or left out of a list).
"""

import re

from django.urls import register_converter

ID = re.compile(r"[0-9]{1,18}")


def parse_id(text: str | None) -> int | None:
    """The id in text, or None when text is not one."""
    text = (text or "").strip()
    return int(text) if ID.fullmatch(text) else None


class IdConverter:
    """`<id:name>` in URL patterns: an id as parse_id reads it."""

    regex = ID.pattern

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


# On import: each urls module that uses <id:> imports this one, so that it loads alone (as a test does) too.
register_converter(IdConverter, "id")
