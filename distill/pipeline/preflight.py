"""Checks before running: a program that cannot pass, by construction, never spends a sandbox run.

Before a program reply becomes an iteration:
- every Python file must compile;
- no name may be undefined (pyflakes, on the syntax tree: nothing of the program is imported or run
  here). A standard-library module used without its import gets the import, added at a fixed place and
  said in the change log: the 1.5B model forgets `import json` often, and a sandbox run and a fix cost
  it minutes to learn what this knows at once. So does a name the program's environment defines beyond
  the standard library (`known`, from known_imports): an installed module (`numpy`, or `np` by its usual
  alias) or one of the repository's own classes and functions, as the API digest imports it (seen on
  findiff: three replies in a row used `numpy`, `Coef` and `BoundaryConditions` without importing them,
  and the run ended before its first iteration). Any other undefined name is a repair, with pyflakes'
  own message;
- it must write results.json: without that name anywhere in its code it cannot pass the measurement.

A problem raises parsing.ReplyError, whose message goes back to the model as a repair of its reply,
without an iteration.
"""

import ast
import difflib
import sys

from pyflakes import checker, messages

from distill.pipeline import diagnosis
from distill.pipeline.parsing import Program, ReplyError

RESULTS_FILE = "results.json"
# Names that programs use from a standard-library module rather than the module itself, and where only
# one module has them: `Path(...)` without `from pathlib import Path`.
FROM_IMPORTS = {
    "Path": "pathlib",
    "defaultdict": "collections",
    "Counter": "collections",
    "OrderedDict": "collections",
    "deque": "collections",
    "namedtuple": "collections",
    "dataclass": "dataclasses",
    "partial": "functools",
    "reduce": "functools",
}


# The usual short names of scientific modules: {alias: (the distribution's module, the import line)}.
ALIASES = {
    "np": ("numpy", "import numpy as np"),
    "pd": ("pandas", "import pandas as pd"),
    "plt": ("matplotlib", "import matplotlib.pyplot as plt"),
    "mpl": ("matplotlib", "import matplotlib as mpl"),
    "sns": ("seaborn", "import seaborn as sns"),
    "nx": ("networkx", "import networkx as nx"),
    "xr": ("xarray", "import xarray as xr"),
    "gpd": ("geopandas", "import geopandas as gpd"),
    "tf": ("tensorflow", "import tensorflow as tf"),
}


def known_imports(modules: set[str], api_digest: str = "") -> dict[str, str]:
    """{name: the import line} for names beyond the standard library that a program may use unimported:
    the top-level `modules` installed for it (and their usual aliases), then the repository's public
    classes and functions that its API digest imports from one place only."""
    known = {module: f"import {module}" for module in modules if module.isidentifier()}
    known.update({alias: line for alias, (module, line) in ALIASES.items() if module in modules})
    for name, places in diagnosis.api_definitions(api_digest).items():
        lines = {place.split(" (", 1)[1].rstrip(")") for place in places if place.startswith(f"{name} (")}
        if len(lines) == 1 and name not in known:
            known[name] = lines.pop()
    return known


def check(program: Program, known: dict[str, str] | None = None) -> Program:
    """The program, with its missing imports added (and said in its change log): the standard library's,
    and those `known` (known_imports) names.

    Raises ReplyError with every problem that only the model can fix.
    """
    files = dict(program.files)
    problems, added = [], []
    for name, source in program.files.items():
        if not name.endswith(".py"):
            continue
        try:
            tree = ast.parse(source, filename=name)
        except SyntaxError as exc:
            problems.append(_syntax_error(name, exc))
            continue
        undefined = _undefined(tree, name)
        names = {message.message_args[0] for message in undefined}
        imports = _stdlib_imports(tree, names)
        imports.update({n: known[n] for n in names if n not in imports and n in (known or {})})
        if imports:
            source = _with_imports(source, tree, sorted(set(imports.values())))
            tree = ast.parse(source, filename=name)
            files[name] = source
            added += [f"`{line}` to {name}" for line in sorted(set(imports.values()))]
            undefined = _undefined(tree, name)
        problems += [_with_suggestion(message, tree) for message in undefined]
    # Said with the other problems, not after them: each repair costs a small model minutes.
    if not any(_mentions(files[name], RESULTS_FILE) for name in files if name.endswith(".py")):
        problems.append(
            f"the program never writes {RESULTS_FILE}: main.py must write the values it computed to "
            f"{RESULTS_FILE}, as a JSON object"
        )
    if problems:
        raise ReplyError("the program cannot run as it is: " + "; ".join(problems))
    if not added:
        return program
    note = f"Before running: added {', '.join(added)}, used without its import."
    change_log = f"{program.change_log}\n{note}".strip()
    return program.model_copy(update={"files": files, "change_log": change_log})


def _with_suggestion(message, tree: ast.Module) -> str:
    """pyflakes' message, and the name the program defines that it most likely meant (seen: `needle`
    used for `kneedle` three replies in a row)."""
    defined = {
        node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    close = difflib.get_close_matches(message.message_args[0], sorted(defined), n=1, cutoff=0.8)
    return str(message) + (f" (did you mean {close[0]!r}?)" if close else "")


def _syntax_error(name: str, exc: SyntaxError) -> str:
    line = (exc.text or "").strip()
    return f"{name}:{exc.lineno}: {exc.msg}" + (f": {line}" if line else "")


def _undefined(tree: ast.Module, name: str) -> list:
    found = checker.Checker(tree, filename=name).messages
    return sorted(
        (m for m in found if isinstance(m, messages.UndefinedName | messages.UndefinedLocal)),
        key=lambda m: (m.lineno, m.col),
    )


def _stdlib_imports(tree: ast.Module, names: set[str]) -> dict[str, str]:
    """{name: the import line} for the undefined names a standard-library import defines, unambiguously."""
    imports = {}
    for name in names:
        if name in FROM_IMPORTS:
            imports[name] = f"from {FROM_IMPORTS[name]} import {name}"
        elif name in sys.stdlib_module_names and not name.startswith("_") and _attributes_exist(tree, name):
            imports[name] = f"import {name}"
    return imports


def _attributes_exist(tree: ast.Module, module: str) -> bool:
    """Whether each `module.attribute` the program uses is in the module, when it is loaded here already.

    `datetime.now()` means the class, not the module: adding `import datetime` would only move the error.
    Modules not loaded in this process are not imported to find out (some act on import).
    """
    loaded = sys.modules.get(module)
    if loaded is None:
        return True
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == module
    }
    return all(hasattr(loaded, attribute) for attribute in used)


def _with_imports(source: str, tree: ast.Module, lines: list[str]) -> str:
    """The source with the import lines before its first statement, after a docstring and __future__."""
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body.pop(0)
    while body and isinstance(body[0], ast.ImportFrom) and body[0].module == "__future__":
        body.pop(0)
    text = source.splitlines(keepends=True)
    if body:
        first = body[0]
        at = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))]) - 1
    else:
        at = len(text)
        if text and not text[-1].endswith("\n"):
            text[-1] += "\n"
    return "".join([*text[:at], *(f"{line}\n" for line in lines), *text[at:]])


def _mentions(source: str, name: str) -> bool:
    """Whether a string in the code (a literal, or a literal part of an f-string) names the file."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(
        isinstance(node, ast.Constant) and isinstance(node.value, str) and name in node.value
        for node in ast.walk(tree)
    )
