"""Prompt templates, kept as text files so they read as prose and diff cleanly.

`$name` placeholders (string.Template): code and JSON in prompts are full of braces.
"""

import json
from functools import cache
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent


@cache
def _template(name: str) -> Template:
    return Template((HERE / f"{name}.txt").read_text())


def render(name: str, **values) -> str:
    return _template(name).substitute({key: str(value) for key, value in values.items()})


@cache
def placeholders(*names: str) -> frozenset[str]:
    """The descriptions that the templates' reply examples give in place of values, normalised.

    A small model sometimes copies them into its reply ("critical_issues": ["problems that make it
    unusable as an example"]); read from the templates themselves, so the list cannot drift from them.
    Only prose counts (a value with a space): an example value such as "main.py" or "high" may well be
    the right answer.
    """
    found = set()
    decoder = json.JSONDecoder()
    for name in names:
        text = (HERE / f"{name}.txt").read_text()
        for index, char in enumerate(text):
            if char in "[{":
                try:
                    value, _ = decoder.raw_decode(text, index)
                except ValueError:
                    continue
                found.update(s for s in _strings(value) if " " in s.strip())
    return frozenset(normal(s) for s in found)


def normal(text: str) -> str:
    """Text compared as a reader would: case, spacing and a closing full stop do not matter."""
    return " ".join(text.casefold().split()).rstrip(".")


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
