"""The repository's API in a few hundred tokens: signatures and first docstring lines, read with `ast`.

Nothing is imported on the host: a module whose import would raise, download or write files is read
as text like any other. What is public:

- modules of the repository's packages (distill.pipeline.proof.repository_packages) and its top-level
  modules, except tests, private (`_x.py`) and vendored ones; `__init__.py` counts as its package;
- in each, the names in a literal `__all__`, or else those without a leading underscore: functions and
  classes defined there (not imported); a class shows its constructor's signature, its public methods
  and the public attributes its `__init__` sets;
- where a package's `__init__.py` re-exports a name (`from .core import Thing`, or `import *`), the
  shortest import path is the one shown: it is the one a program should write.

Ranking: by how often the README and the harvested usage (distill.pipeline.usage) mention each name,
then shorter import paths first, then source order. `render` writes the digest as Python stubs, which a
code model reads (and copies) as code, cut to a token budget.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from distill.pipeline import proof, survey

MAX_MODULE_BYTES = 1_000_000
MAX_MODULES = 400
SKIPPED_FOLDERS = {
    "tests",
    "test",
    "testing",
    "examples",
    "example",
    "docs",
    "benchmarks",
    "_vendor",
    "vendor",
}
MAX_METHODS = 8
MAX_ATTRIBUTES = 10
MAX_DOC_CHARS = 110
MAX_DEFAULT_CHARS = 30


@dataclass
class Entry:
    name: str
    kind: str  # "function", "class", or for a method "staticmethod" or "classmethod"
    module: str  # where it is defined ("kneed.knee_locator")
    path: str  # that module's file, relative to the clone
    signature: str  # "(x, y, S=1.0)" as written; a class's is its constructor's
    doc: str  # the docstring's first line
    order: int  # source order across the repository
    import_from: str = ""  # the shortest module it can be imported from
    methods: list[Entry] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    uses: int = 0


# Reading ----------------------------------------------------------------------------------------------


def read_api(root: Path, packages: proof.Packages | None = None) -> list[Entry]:
    """The public functions and classes of the repository's Python code, in source order."""
    root = Path(root)
    packages = packages if packages is not None else proof.repository_packages(root)
    modules = _module_files(root, packages)
    entries: list[Entry] = []
    exports: dict[tuple[str, str], str] = {}  # (module, name) -> the module it imports the name from
    star_exports: dict[str, list[str]] = {}  # module -> modules it imports * from
    for dotted, rel in modules:
        tree = _parse_file(root / rel)
        if tree is None:
            continue
        public = _declared_all(tree)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if (public is None and node.name.startswith("_")) or (
                public is not None and node.name not in public
            ):
                continue
            entry = _entry(node, dotted, rel, len(entries))
            if entry:
                entries.append(entry)
        names, star_exports[dotted] = _reexports(tree, dotted, is_package=rel.endswith("__init__.py"))
        exports.update({(dotted, name): origin for name, origin in names.items()})
    by_key = {(e.module, e.name): e for e in entries}
    for entry in entries:
        entry.import_from = entry.module
    # `from .operators import Coef` where operators has `from .diff import Coef`: follow the chain to
    # the definition; the shortest module on the way is the one to import from.
    for (module, name), origin in exports.items():
        for _hop in range(5):
            if (origin, name) in by_key or (origin, name) not in exports:
                break
            origin = exports[(origin, name)]
        entry = by_key.get((origin, name))
        if entry and len(module) < len(entry.import_from):
            entry.import_from = module
    for module, origins in star_exports.items():
        for entry in entries:
            if (entry.module in origins or entry.import_from in origins) and len(module) < len(
                entry.import_from
            ):
                entry.import_from = module
    return entries


def _module_files(root: Path, packages: proof.Packages) -> list[tuple[str, str]]:
    """(dotted name, relative path) of every public module, packages walked in name order."""
    found = [(name, rel) for name, rel in sorted(packages.modules.items())]
    for name, folder in sorted(packages.packages.items()):
        base = root / folder
        if base.is_symlink() or not base.resolve().is_relative_to(root.resolve()):
            continue  # metadata may name any folder: only the clone's own are read
        for current, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith((".", "_")) and d.lower() not in SKIPPED_FOLDERS
                and (Path(current, d) / "__init__.py").is_file()
            )  # fmt: skip
            relative = Path(current).relative_to(base)
            prefix = ".".join([name, *relative.parts])
            for file in sorted(files):
                if not file.endswith(".py") or (file.startswith("_") and file != "__init__.py"):
                    continue
                if file.startswith("test_") or file.endswith("_test.py") or file == "conftest.py":
                    continue
                dotted = prefix if file == "__init__.py" else f"{prefix}.{file[:-3]}"
                found.append((dotted, (Path(folder) / relative / file).as_posix()))
            if len(found) >= MAX_MODULES:
                return found[:MAX_MODULES]
    return found


def _parse_file(path: Path) -> ast.Module | None:
    if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MODULE_BYTES:
        return None
    try:
        return ast.parse(path.read_bytes().decode("utf-8", errors="replace"))
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _declared_all(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError):
                return None
            return {v for v in value if isinstance(v, str)} if isinstance(value, list | tuple) else None
    return None


def _reexports(tree: ast.Module, module: str, *, is_package: bool) -> tuple[dict[str, str], list[str]]:
    """{name: origin module} a module imports from inside the repository, and the modules it imports
    everything from."""
    names, stars = {}, []
    top = module.split(".")[0]
    # A relative import is relative to the package: the module itself for an __init__.py.
    package = module if is_package else module.rpartition(".")[0]
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            origin = ".".join([*base, node.module] if node.module else base)
        elif node.module and node.module.split(".")[0] == top:
            origin = node.module
        else:
            continue
        for alias in node.names:
            if alias.name == "*":
                stars.append(origin)
            elif not (alias.asname or alias.name).startswith("_"):
                names[alias.name] = origin
    return names, stars


def _entry(node, module: str, path: str, order: int) -> Entry | None:
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is not None:
            signature = _signature(init.args)
        elif _is_dataclass(node):
            fields = [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
            signature = "(" + ", ".join(["self", *(_field(f) for f in fields)]) + ")"
        else:
            signature = ""  # no constructor of its own: the stub shows none rather than guess
        methods = [
            _entry(n, module, path, order)
            for n in node.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and not n.name.startswith("_")
            and not _is_property(n)
        ]
        attributes = _init_attributes(init) if init is not None else []
        attributes += [
            n.name
            for n in node.body
            if isinstance(n, ast.FunctionDef) and _is_property(n) and not n.name.startswith("_")
        ]
        return Entry(
            name=node.name, kind="class", module=module, path=path, signature=signature,
            doc=_first_line(node) or (_first_line(init) if init else ""), order=order,
            methods=methods, attributes=list(dict.fromkeys(attributes)),
        )  # fmt: skip
    decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
    kind = next((k for k in ("staticmethod", "classmethod") if k in decorators), "function")
    returns = ast.unparse(node.returns) if node.returns is not None else ""
    returns = f" -> {returns}" if returns and len(returns) <= MAX_DEFAULT_CHARS else ""
    return Entry(
        name=node.name, kind=kind, module=module, path=path,
        signature=_signature(node.args) + returns, doc=_first_line(node), order=order,
    )  # fmt: skip


def _is_property(node) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id in ("property", "cached_property"))
        or (isinstance(d, ast.Attribute) and d.attr == "cached_property")
        for d in node.decorator_list
    )


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(d) for d in node.decorator_list)


def _init_attributes(init) -> list[str]:
    names = []
    for node in ast.walk(init):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        # `self.knee, self.norm_knee = ...` sets two
        targets = [
            t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])
        ]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
            ):
                names.append(target.attr)
    return names


def _field(node: ast.AnnAssign) -> str:
    text = f"{node.target.id}: {_short(ast.unparse(node.annotation))}"
    return text + (f" = {_short(ast.unparse(node.value))}" if node.value is not None else "")


def _signature(args: ast.arguments) -> str:
    """The parameters as written; a long annotation is left out and a long default becomes `...`."""
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts = [_parameter(a, d) for a, d in zip(positional, defaults, strict=True)]
    if args.posonlyargs:
        parts.insert(len(args.posonlyargs), "/")
    if args.vararg:
        parts.append("*" + _parameter(args.vararg, None))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [_parameter(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg:
        parts.append("**" + _parameter(args.kwarg, None))
    return "(" + ", ".join(parts) + ")"


def _parameter(arg: ast.arg, default: ast.expr | None) -> str:
    annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
    text = arg.arg + (f": {annotation}" if annotation and len(annotation) <= MAX_DEFAULT_CHARS else "")
    if default is not None:
        value = ast.unparse(default)
        text += (" = " if len(text) > len(arg.arg) else "=") + (
            value if len(value) <= MAX_DEFAULT_CHARS else "..."
        )
    return text


def _short(text: str) -> str:
    return text if len(text) <= MAX_DEFAULT_CHARS else text[: MAX_DEFAULT_CHARS - 3].rstrip() + "..."


def _first_line(node) -> str:
    doc = ast.get_docstring(node, clean=True) if node is not None else None
    if not doc:
        return ""
    paragraph = doc.strip().split("\n\n")[0]
    line = " ".join(paragraph.split())
    sentence = re.split(r"(?<=\.)\s", line, maxsplit=1)[0]
    return sentence if len(sentence) <= MAX_DOC_CHARS else sentence[: MAX_DOC_CHARS - 3].rstrip() + "..."


# Ranking and rendering --------------------------------------------------------------------------------


def rank(entries: list[Entry], texts: list[str]) -> list[Entry]:
    """Most used first: how often the texts (README, harvested usage) name each function, class,
    method and attribute; ties by shorter import path, then source order."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text):
            counts[word] = counts.get(word, 0) + 1
    for entry in entries:
        entry.uses = counts.get(entry.name, 0)
        for method in entry.methods:
            method.uses = counts.get(method.name, 0)
        entry.methods.sort(key=lambda m: (-m.uses, m.order))
        entry.attributes.sort(key=lambda a: -counts.get(a, 0))
        if entry.uses:  # `apply`, `matrix`: common method names would lift every class that has them
            entry.uses += sum(m.uses for m in entry.methods) // 2
    return sorted(entries, key=lambda e: (-e.uses, e.import_from.count("."), e.order))


def names(entries: list[Entry]) -> set[str]:
    """The public functions and classes (module names are not: importing a module is not yet using it)."""
    return {entry.name for entry in entries}


def members(entries: list[Entry]) -> set[str]:
    """The public methods and attributes of the classes; two letters ("x", "N") say nothing."""
    found = set()
    for entry in entries:
        found.update(m.name for m in entry.methods)
        found.update(entry.attributes)
    return {name for name in found if len(name) > 2}


def import_lines(entries: list[Entry]) -> dict[str, str]:
    """{name: the line that imports it} for every public function and class."""
    return {entry.name: f"from {entry.import_from} import {entry.name}" for entry in entries}


def render(entries: list[Entry], budget_tokens: int) -> str:
    """The ranked entries as Python stubs, as many as fit the budget, each after its import line.

    Entries nothing mentions and only a submodule offers (`findiff.diff.Plus` where `findiff` exports
    its API) are internals more likely than not: they are only named, on one line at the end.
    """
    exported = any(e.import_from.count(".") == 0 for e in entries)
    major = [e for e in entries if e.uses or not exported or e.import_from.count(".") == 0]
    minor = [e for e in entries if e not in major]
    stubs = [(stub, survey.count_tokens(stub) + 1) for stub in map(_stub, major)]
    chosen = _fitting(stubs, budget_tokens)
    left = len(stubs) - len(chosen)
    if left:
        # Say that more exists, within the budget too.
        trailer = f"# ... and {left} more not shown"
        chosen = _fitting(stubs, budget_tokens - survey.count_tokens(trailer) - 1)
        if chosen:
            chosen.append(f"# ... and {len(stubs) - len(chosen)} more not shown")
    elif minor:
        names = ", ".join(f"{e.import_from}.{e.name}" for e in minor)
        used = sum(t for s, t in stubs)
        also = survey.truncate_to_tokens(f"# also: {names}", budget_tokens - used - 1)
        if also and used < budget_tokens:
            chosen.append(also.rstrip())
    return "\n".join(chosen)


def _fitting(stubs: list[tuple[str, int]], budget_tokens: int) -> list[str]:
    chosen, used = [], 0
    for stub, tokens in stubs:
        if used + tokens <= budget_tokens:  # a smaller one after a large one may still fit
            chosen.append(stub)
            used += tokens
    return chosen


def _stub(entry: Entry) -> str:
    lines = [f"from {entry.import_from} import {entry.name}"]
    doc = f"  # {entry.doc}" if entry.doc else ""
    if entry.kind == "function":
        lines.append(f"def {entry.name}{entry.signature}: ...{doc}")
        return "\n".join(lines)
    lines.append(f"class {entry.name}:{doc}")
    if not entry.signature and not entry.methods and not entry.attributes:
        lines.append("    ...")
    if entry.signature:
        lines.append(f"    def __init__{entry.signature}: ...")
    for method in entry.methods[:MAX_METHODS]:
        method_doc = f"  # {method.doc}" if method.doc else ""
        if method.kind != "function":  # `DataGenerator.figure2()` needs no instance: say so
            lines.append(f"    @{method.kind}")
        lines.append(f"    def {method.name}{method.signature}: ...{method_doc}")
    if entry.attributes:
        lines.append(f"    # attributes: {', '.join(entry.attributes[:MAX_ATTRIBUTES])}")
    return "\n".join(lines)
