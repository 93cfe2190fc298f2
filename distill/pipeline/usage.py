"""How the repository's authors use their own code: runnable snippets, harvested as text, never run.

Nothing here imports or executes the repository on the host: every snippet is read as text and parsed
with `ast`. The sources, all from the survey's files (distill.pipeline.survey):

- the README and docs: Markdown fenced blocks (python, py, pycon, ipython, or no language), and
  reStructuredText `code-block`/`code`/`sourcecode`/`doctest`/`testcode`/`ipython`/`jupyter-execute`
  directives and `::` literal blocks; a `>>>` session becomes plain code (its output lines dropped);
- scripts under examples/demo/tutorials folders and `demo*`/`example*` scripts: the whole script;
- doctests in the docstrings of the repository's own modules;
- notebook code cells, shell and magic lines dropped;
- tests: each test function's body, after the imports of its file that it uses.

A block that does not parse as Python 3 is dropped (a shell command, pseudo-code). Documents build up:
a README block that uses a name an earlier block defines gets that block in front of it, so each
snippet stands alone. A snippet that never touches the repository's code is dropped.

Ranking (`Snippet.score`): the more of the repository's names a snippet uses the better; every name it
uses but never defines, every data file it reads and every URL it fetches count against it (the example
runs alone, offline, in a sandbox), and so do long ones. The best ones, within a token budget, go
verbatim into the generate prompt as "how the authors use it" (`prompt_block`).
"""

from __future__ import annotations

import ast
import builtins
import re
import textwrap
from dataclasses import dataclass, field

from django.db import transaction

from distill.models import Run, UsageSnippet
from distill.pipeline import digest, proof, survey

# Above this size a snippet is still stored and shown, but never put in a prompt: a small model copies a
# long script's detours along with its point.
MAX_PROMPT_SNIPPET_TOKENS = 700
MAX_SNIPPETS = 60  # stored per run, best first
SMALL_CONTEXT_TOKENS = 8192  # a context window this small gets the digest and usage instead of files

PYTHON_LANGUAGES = {"", "python", "py", "python3", "pycon", "ipython", "ipython3", "pytb", "default"}
RST_DIRECTIVES = {"code-block", "code", "sourcecode", "doctest", "testcode", "ipython", "jupyter-execute"}
EXAMPLE_FOLDERS = {"examples", "example", "demo", "demos", "tutorials", "tutorial", "scripts", "notebooks"}
TEST_FOLDERS = {"tests", "test", "testing"}
# A snippet that needs a test runner shows how to test the code, not how to use it.
TEST_MODULES = {"pytest", "unittest", "unittest.mock", "mock", "hypothesis", "numpy.testing"}
# The authors' own words on how to use it first; a test also checks corner cases nobody should copy.
KIND_BONUS = {"readme": 4.0, "example": 3.0, "docs": 3.0, "notebook": 2.0, "doctest": 1.0, "test": 0.0}
READ_CALL = re.compile(r"(read|load|open|fromfile|genfromtxt|imread)", re.IGNORECASE)
DATA_PATH = re.compile(
    r"^[\w./\\-]+\.(csv|tsv|txt|dat|npy|npz|h5|hdf5|json|xlsx?|mat|pkl|pickle|nc|fits|cif|xyz)$"
)
URL = re.compile(r"^(https?|ftp)://", re.IGNORECASE)
KNOWN_NAMES = set(dir(builtins)) | {"__file__", "__name__", "display", "get_ipython"}

CONVENTIONAL_IMPORTS = {
    "np": "import numpy as np", "pd": "import pandas as pd", "plt": "import matplotlib.pyplot as plt",
    "numpy": "import numpy", "scipy": "import scipy", "math": "import math", "os": "import os",
    "json": "import json", "random": "import random", "time": "import time",
}  # fmt: skip
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*\{?\.?(?P<lang>[\w+-]*)")
DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\.\s+(?P<name>[\w-]+)::\s*(?P<lang>[\w+-]*)\s*$")
IPYTHON_IN = re.compile(r"^\s*In \[\d*\]:\s?")
IPYTHON_MORE = re.compile(r"^\s*\.\.\.+:\s?")


@dataclass
class Snippet:
    source: str  # the file it came from, relative to the clone
    line: int  # where it starts in that file (1-based)
    kind: str  # readme, docs, example, doctest, notebook, test
    code: str
    tokens: int = 0
    score: float = 0.0
    names: list[str] = field(default_factory=list)  # the repository's names it uses
    undefined: list[str] = field(default_factory=list)  # names it uses and never defines
    needs: list[str] = field(default_factory=list)  # files it reads, URLs it fetches


@dataclass
class _Block:
    line: int
    code: str
    tree: ast.Module


# The survey's and the prompt's side ------------------------------------------------------------------


def is_small_context(config: dict) -> bool:
    return config.get("context_tokens", 128000) <= SMALL_CONTEXT_TOKENS


def budgets(config: dict) -> tuple[int, int]:
    """(usage, digest) tokens. In a small context window they share the file budget, since they take the
    files' place; in a large one they come on top of the files, each a small share."""
    files = config.get("file_budget_tokens", 60000)
    if is_small_context(config):
        return int(files * 0.4), files - int(files * 0.4)
    return min(4000, files // 8), min(8000, files // 6)


def survey_usage(run: Run, root, found: survey.Survey) -> None:
    """Harvests the usage and reads the API digest of a surveyed clone; stores both on the run."""
    packages = proof.repository_packages(root)
    entries = digest.read_api(root, packages)
    snippets = harvest(
        found,
        top_names=set(packages.names),
        api_names=digest.names(entries),
        member_names=digest.members(entries),
        imports=digest.import_lines(entries),
    )
    # Tests call internals too: the README and the authors' examples say what matters.
    texts = [found.readme.text if found.readme else "", *(s.code for s in snippets if s.kind != "test")]
    usage_budget, digest_budget = budgets(run.config)
    chosen = {id(s) for s in for_prompt(snippets, usage_budget)}
    with transaction.atomic():
        run.usage_snippets.all().delete()  # a survey done again harvests again
        UsageSnippet.objects.bulk_create(
            UsageSnippet(
                run=run,
                source=s.source,
                line=s.line,
                kind=s.kind,
                code=s.code,
                tokens=s.tokens,
                score=s.score,
                names=s.names,
                undefined=s.undefined,
                needs=s.needs,
                in_prompt=id(s) in chosen,
            )  # fmt: skip
            for s in snippets
        )
        run.api_digest = digest.render(digest.rank(entries, texts), digest_budget)
        run.save(update_fields=["api_digest"])


def prompt_block(run: Run, files: str) -> str:
    """What the generate prompt shows of the repository: the authors' usage and the API digest, then the
    selected files; in a small context window the digest takes the files' place."""
    parts = []
    snippets = list(run.usage_snippets.filter(in_prompt=True))
    if snippets:
        parts.append(
            "How the authors use it (verbatim from the repository, missing imports added):\n"
            + prompt_text(snippets)
        )
    if run.api_digest:
        parts.append(
            "The repository's API (signatures read from its source, most used first):\n" + run.api_digest
        )
    if not (run.api_digest and is_small_context(run.config)):
        parts.append("The repository's most relevant files:\n" + files)
    return "\n\n".join(parts)


# Harvest ----------------------------------------------------------------------------------------------


def harvest(
    found: survey.Survey,
    *,
    top_names: set[str],
    api_names: set[str],
    member_names: set[str] = frozenset(),
    imports: dict[str, str] | None = None,
) -> list[Snippet]:
    """The usage snippets of a surveyed repository, best first, at most MAX_SNIPPETS.

    `top_names`: the repository's importable top-level names (distill.pipeline.proof.repository_packages);
    `api_names`: its public functions and classes, `member_names` their methods and attributes, and
    `imports` the import line of each public name (distill.pipeline.digest), for snippets that leave
    their imports out.
    """
    snippets: list[Snippet] = []
    documents = [found.readme] if found.readme else []
    documents += [f for f in found.files if f.kind == "doc"]
    for doc in documents:
        kind = "readme" if doc is found.readme or _is_readme(doc.path) else "docs"
        snippets += _chained(doc.path, kind, _document_blocks(doc.text))
    for f in found.files:
        parts = f.path.lower().split("/")
        if f.kind == "notebook":
            snippets += _chained(f.path, "notebook", _notebook_blocks(f.text))
        elif f.kind != "code" or not f.path.endswith(".py"):
            continue
        elif _is_test(parts):
            snippets += _test_snippets(f.path, f.text)
        elif _is_example(parts):
            block = _parsed(1, f.text)
            if block:
                snippets.append(Snippet(source=f.path, line=1, kind="example", code=f.text.strip()))
        elif parts[0] in top_names or parts[0] == "src" or parts[-1][:-3] in top_names:
            snippets += _doctest_snippets(f.path, f.text)
    return rank(
        snippets, top_names=top_names, api_names=api_names, member_names=member_names, imports=imports or {}
    )


def rank(
    snippets: list[Snippet],
    *,
    top_names: set[str],
    api_names: set[str],
    member_names: set[str],
    imports: dict[str, str],
) -> list[Snippet]:
    """Scores each snippet and keeps those that touch the repository, best first, without duplicates."""
    kept, seen = [], set()
    known = {**CONVENTIONAL_IMPORTS, **{name: f"import {name}" for name in top_names}, **imports}
    for snippet in snippets:
        key = "\n".join(line.rstrip() for line in snippet.code.strip().splitlines())
        if key in seen:
            continue
        seen.add(key)
        tree = _parse(snippet.code)
        if tree is None:
            continue
        # Docs often leave out `import numpy as np` or the package's own import: added, as a reader
        # would; any other missing name stays missing and counts against the snippet.
        missing = sorted(name for name in _undefined(tree) if name in known)
        if missing:
            snippet.code = "\n".join([*dict.fromkeys(known[name] for name in missing), snippet.code])
            tree = _parse(snippet.code)
        if all(isinstance(node, ast.Import | ast.ImportFrom) for node in tree.body):
            continue  # imports alone show nothing (a later block that uses them has them in front)
        imported = _imported_modules(tree)
        if not any(module.split(".")[0] in top_names for module in imported):
            continue  # it may mention the API, but without an import it is not runnable usage
        used, attributes = _identifiers(tree), _attributes(tree)
        star = any(a.name == "*" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names)
        # A method or attribute counts only after a dot: a variable called `curve` is not `.curve`.
        snippet.names = sorted(((used | attributes) & api_names) | (attributes & member_names))
        snippet.undefined = sorted(_undefined(tree) - (api_names if star else set()))
        snippet.needs = _needs(tree) + [f"needs {module}" for module in sorted(imported & TEST_MODULES)]
        snippet.tokens = survey.count_tokens(snippet.code)
        snippet.score = round(
            2.0
            + 1.5 * min(len(snippet.names), 8)
            - 2.5 * len(snippet.undefined)
            - 3.0 * len(snippet.needs)
            - snippet.tokens / 250
            + KIND_BONUS.get(snippet.kind, 0.0),
            2,
        )
        kept.append(snippet)
    kept.sort(key=lambda s: (-s.score, s.tokens, s.source, s.line))
    return kept[:MAX_SNIPPETS]


def for_prompt(snippets: list[Snippet], budget_tokens: int) -> list[Snippet]:
    """The best snippets that fit the budget: self-contained ones only (nothing undefined, no data file,
    URL or test runner), at most two per source file, none that mostly repeats one already chosen."""
    chosen, used = [], 0
    for snippet in snippets:
        if snippet.undefined or snippet.needs or snippet.tokens > MAX_PROMPT_SNIPPET_TOKENS:
            continue
        if used + snippet.tokens > budget_tokens or sum(c.source == snippet.source for c in chosen) >= 2:
            continue
        lines = _lines(snippet.code)
        if any(len(lines & _lines(c.code)) > len(lines) / 2 for c in chosen):
            continue  # a README's blocks share their first block: one of them shows it
        chosen.append(snippet)
        used += snippet.tokens
        if len(chosen) == 3:
            break
    return chosen


def _lines(code: str) -> set[str]:
    return {
        line.strip()
        for line in code.splitlines()
        if line.strip() and not line.lstrip().startswith(("import", "from"))
    }


def prompt_text(snippets) -> str:
    """Stored snippets (distill.models.UsageSnippet) as the prompt shows them, each after where it came from."""
    return "\n\n".join(f"# From {s.source}, {s.where}:\n{s.code.strip()}" for s in snippets)


# Where blocks come from -------------------------------------------------------------------------------


def _document_blocks(text: str) -> list[_Block]:
    """Python blocks of a Markdown or reStructuredText document, in document order."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            marker = fence.group("fence")
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(marker):
                end += 1
            if fence.group("lang").lower() in PYTHON_LANGUAGES:
                found.append((i + 2, "\n".join(lines[i + 1 : end])))
            i = end + 1
            continue
        directive = DIRECTIVE.match(line)
        literal = line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        if directive or literal:
            if directive and (
                directive.group("name") not in RST_DIRECTIVES
                or directive.group("lang").lower() not in PYTHON_LANGUAGES
            ):
                i += 1
                continue
            indent = len(line) - len(line.lstrip())
            start = i + 1
            # Directive options (":linenos:") come first, then the indented content.
            while start < len(lines) and re.match(r"^\s+:[\w-]+:", lines[start]) and directive:
                start += 1
            end = start
            while end < len(lines) and (
                not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
            ):
                end += 1
            body = "\n".join(lines[start:end])
            if body.strip():
                found.append((start + 1, body))
            i = max(end, i + 1)
            continue
        i += 1
    blocks = []
    for line_number, body in found:
        block = _parsed(line_number, _as_code(body))
        if block:
            blocks.append(block)
    return blocks


def _notebook_blocks(text: str) -> list[_Block]:
    """The code cells of a notebook as the survey reads it (each after a `# %%` line); a block's `line`
    is its cell's number."""
    blocks, cells, cell = [], 0, None
    for line in [*text.splitlines(), "# %% [end]"]:
        if line.startswith("# %%"):
            if cell is not None:
                block = _parsed(cells, _as_code("\n".join(cell)))
                if block:
                    blocks.append(block)
            cells += 1
            cell = [] if line.strip() == "# %%" else None
        elif cell is not None:
            cell.append(line)
    return blocks


def _test_snippets(path: str, text: str) -> list[Snippet]:
    """Each test function's body, after the file's imports that it uses."""
    tree = _parse(text)
    if tree is None:
        return []
    lines = text.splitlines()
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.startswith("Test")):
        functions += [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    snippets = []
    for function in functions:
        if not function.name.startswith("test") or not function.body:
            continue
        first = function.body[0]
        if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
            if len(function.body) == 1:
                continue
            first = function.body[1]  # its docstring says what it tests, not how to use the code
        body = textwrap.dedent("\n".join(lines[first.lineno - 1 : function.end_lineno]))
        body_tree = _parse(body)
        if body_tree is None:
            continue
        used = _identifiers(body_tree)
        needed = [
            ast.get_source_segment(text, node)
            for node in imports
            if {(a.asname or a.name).split(".")[0] for a in node.names} & used
        ]
        code = "\n".join([*needed, "", body]) if needed else body
        snippets.append(Snippet(source=path, line=first.lineno, kind="test", code=code.strip()))
    return snippets


def _doctest_snippets(path: str, text: str) -> list[Snippet]:
    """The `>>>` examples in the docstrings of a module, its classes and functions."""
    tree = _parse(text)
    if tree is None:
        return []
    snippets = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        docstring = ast.get_docstring(node, clean=True)
        if not docstring or ">>>" not in docstring:
            continue
        block = _parsed(1, _as_code(docstring))
        if block:
            line = node.body[0].lineno if node.body else 1
            snippets.append(Snippet(source=path, line=line, kind="doctest", code=block.code))
    return snippets


def _chained(path: str, kind: str, blocks: list[_Block]) -> list[Snippet]:
    """One snippet per block, each after the earlier blocks of its document that define what it uses."""
    snippets = []
    for index, block in enumerate(blocks):
        needed = _undefined(block.tree)
        chain = [block]
        for earlier in reversed(blocks[:index]):
            if not needed:
                break
            defined = _bound(earlier.tree)
            if needed & defined:
                chain.insert(0, earlier)
                needed = (needed - defined) | _undefined(earlier.tree)
        code = "\n\n".join(b.code for b in chain)
        snippets.append(Snippet(source=path, line=chain[0].line, kind=kind, code=code))
    return snippets


def _as_code(text: str) -> str:
    """A block as plain code: `>>>`/`...` prompts and IPython's `In [n]:` removed, output lines dropped,
    shell (`!`) and magic (`%`) lines dropped."""
    text = textwrap.dedent(text)
    lines = text.splitlines()
    if any(line.lstrip().startswith(">>>") for line in lines):
        code = []
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith(">>>"):
                code.append(stripped[4:] if stripped.startswith(">>> ") else stripped[3:])
            elif stripped.startswith("...") and code:
                code.append(stripped[4:] if stripped.startswith("... ") else stripped[3:])
        lines = code
    elif any(IPYTHON_IN.match(line) for line in lines):
        code = []
        for line in lines:
            if IPYTHON_IN.match(line):
                code.append(IPYTHON_IN.sub("", line, count=1))
            elif IPYTHON_MORE.match(line) and code:
                code.append(IPYTHON_MORE.sub("", line, count=1))
        lines = code
    lines = [line for line in lines if not line.lstrip().startswith(("%", "!"))]
    return textwrap.dedent("\n".join(lines)).strip()


def _parsed(line: int, code: str) -> _Block | None:
    """The block as code, without the printed values a README shows after a call (bare literals)."""
    tree = _parse(code) if code.strip() else None
    if tree is None:
        return None
    printed = [node for node in tree.body if isinstance(node, ast.Expr) and _is_literal(node.value)]
    if printed:
        lines = code.splitlines()
        drop = {n for node in printed for n in range(node.lineno - 1, node.end_lineno)}
        code = "\n".join(text for n, text in enumerate(lines) if n not in drop).strip()
        code = re.sub(r"\n{3,}", "\n\n", code)
        tree = _parse(code)
        if tree is None:
            return None
    # What is left must do something: a lone name or attribute ("numpy", "kl.knee") is an aside.
    if not any(not isinstance(node, ast.Expr) or isinstance(node.value, ast.Call) for node in tree.body):
        return None
    return _Block(line=line, code=code, tree=tree)


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _is_readme(path: str) -> bool:
    return path.rsplit("/", 1)[-1].lower().startswith("readme")


def _is_test(parts: list[str]) -> bool:
    name = parts[-1]
    return bool(TEST_FOLDERS & set(parts[:-1])) or name.startswith("test_") or name.endswith("_test.py")


def _is_example(parts: list[str]) -> bool:
    name = parts[-1]
    return bool(EXAMPLE_FOLDERS & set(parts[:-1])) or name.startswith(("demo", "example"))


# Names ------------------------------------------------------------------------------------------------


def _bound(tree: ast.AST) -> set[str]:
    """Every name the code binds anywhere (scopes are not told apart: a snippet is small)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.update(node.names)
    return bound


def _undefined(tree: ast.Module) -> set[str]:
    """Names used before anything binds them, statement by statement at the top level (a README's
    `FinDiff(...)` before its `from findiff import FinDiff` counts); inside a function or class body,
    anything bound anywhere counts, since it runs later."""
    undefined, bound, deferred = set(), set(KNOWN_NAMES), set()
    for statement in tree.body:
        loaded = {
            n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            deferred |= loaded - _bound(statement)
        else:
            undefined |= loaded - bound - _bound(statement)
        bound |= _bound(statement)
    return undefined | (deferred - bound)


def _attributes(tree: ast.AST) -> set[str]:
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


def _identifiers(tree: ast.AST) -> set[str]:
    """Names and imported names (not attributes)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(a.name.split(".")[-1] for a in node.names)
            names.update(a.asname for a in node.names if a.asname)
    return names


def _imported_modules(tree: ast.AST) -> set[str]:
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def _needs(tree: ast.AST) -> list[str]:
    """Data files it reads and URLs it fetches: an example must run alone and offline."""
    needs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and URL.match(node.value):
            needs.append(f"fetches {node.value[:80]}")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                READ_CALL.search(name)
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and DATA_PATH.match(first.value)
                and not _writes(node)
            ):
                needs.append(f"reads {first.value[:80]}")
    return sorted(set(needs))


def _writes(call: ast.Call) -> bool:
    modes = [call.args[1]] if len(call.args) > 1 else []
    modes += [k.value for k in call.keywords if k.arg == "mode"]
    return any(
        isinstance(m, ast.Constant) and isinstance(m.value, str) and set(m.value) & set("wax") for m in modes
    )
