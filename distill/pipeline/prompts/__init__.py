"""Prompt templates, kept as text files so they read as prose and diff cleanly.

`$name` placeholders (string.Template): code and JSON in prompts are full of braces.
"""

from functools import cache
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent


@cache
def _template(name: str) -> Template:
    return Template((HERE / f"{name}.txt").read_text())


def render(name: str, **values) -> str:
    return _template(name).substitute({key: str(value) for key, value in values.items()})
