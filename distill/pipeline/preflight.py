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
- it must write results.json: without that name anywhere in its code it cannot pass the measurement;
- in a fix of a version that failed on "Object of type ndarray is not JSON serializable" (pwlf's first
  iteration, in every run), json.dump and json.dumps are given a `default` that writes arrays and numpy
  numbers (_json_defaults), whatever the model wrote. json calls it only for a value it could not write;
  it is not added to programs that never failed so, where it would only be noise in the example;
- what it draws at random is seeded (_seeded): an example's results are the same on every run, so that
  the library's health check (library/health.py) can tell a changed result from chance. Seen on pwlf:
  `y = np.random.random(10)`, unseeded, in a program that passed.

A problem raises CannotRun (a parsing.ReplyError), whose message goes back to the model as a repair of
its reply, without an iteration. It carries the program as it would run: when the model's repairs do not
remove the problem, the program runs as it is (program.ask_for_program), and the fix loop sees what the
problem causes.
"""

import ast
import difflib
import io
import re
import sys
import tokenize

from pyflakes import checker, messages

from distill.pipeline import diagnosis
from distill.pipeline.parsing import Program, ReplyError

RESULTS_FILE = "results.json"
CANNOT_RUN = "the program cannot run as it is: "
BEFORE_RUNNING = "Before running: "  # what begins the change-log note of what was fixed here
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


class CannotRun(ReplyError):
    """Problems only the model can fix; `program` is the program with what is certain fixed. It is
    `runnable` unless a file does not compile: run, that tells the fix loop nothing the message does not."""

    def __init__(self, message: str, program: Program, *, runnable: bool = True):
        super().__init__(message)
        self.program = program
        self.runnable = runnable


def known_imports(modules: set[str], api_digest: str = "") -> dict[str, str]:
    """{name: the import line} for names beyond the standard library that a program may use unimported:
    the top-level `modules` installed for it (and their usual aliases), then the repository's public
    classes and functions that its API digest imports from one place only, and the submodules it imports
    them from."""
    known = {module: f"import {module}" for module in modules if module.isidentifier()}
    known.update({alias: line for alias, (module, line) in ALIASES.items() if module in modules})
    for name, places in diagnosis.api_definitions(api_digest).items():
        lines = {place.split(" (", 1)[1].rstrip(")") for place in places if place.startswith(f"{name} (")}
        if len(lines) == 1 and name not in known:
            known[name] = lines.pop()
    # The repository's submodules the digest imports from, by their last name (seen on uncertainties:
    # `unumpy.uarray(...)` without `from uncertainties import unumpy`, in three replies in a row).
    submodules: dict[str, set[str]] = {}
    for line in api_digest.splitlines():
        if (match := diagnosis.DIGEST_IMPORT.match(line)) and "." in match.group(1):
            parent, _, name = match.group(1).rpartition(".")
            submodules.setdefault(name, set()).add(parent)
    for name, parents in submodules.items():
        if len(parents) == 1 and name not in known and not name.startswith("_"):
            known[name] = f"from {parents.pop()} import {name}"
    return known


def check(program: Program, known: dict[str, str] | None = None, *, json_defaults: bool = False) -> Program:
    """The program with what is certain fixed, each fix said in its change log: missing imports (the
    standard library's, and those `known`: known_imports), a misspelt name the program defines
    (`needle` for `kneedle`), and a main.py that never writes results.json made to write its computed
    top-level values there.

    Raises CannotRun with every problem that only the model can fix.

    Why fix rather than ask: told exactly what was wrong ("undefined name 'needle' (did you mean
    'kneedle'?)", "never writes results.json"), the 1.5B model sent the same reply back three times, and
    the run ended before its first iteration. A name or a results file fixed here wrongly fails in the
    sandbox, where the fix loop sees why.
    """
    files = dict(program.files)
    problems, notes, runnable = [], [], True
    for name, source in program.files.items():
        if not name.endswith(".py"):
            continue
        try:
            tree = ast.parse(source, filename=name)
        except SyntaxError as exc:
            problems.append(_syntax_error(name, exc))
            runnable = False
            continue
        moved = _misplaced_imports(tree, source, known or {})
        if moved:
            source = _moved_imports(source, moved)
            tree = ast.parse(source, filename=name)
            said = sorted(
                {f"`{n}` from {line.split()[1]}" for names in moved.values() for n, line in names.items()}
            )
            notes.append(f"imported {', '.join(said)} in {name}, where the repository defines it")
        undefined = _undefined(tree, name)
        names = {message.message_args[0] for message in undefined}
        imports = _stdlib_imports(tree, names)
        imports.update({n: known[n] for n in names if n not in imports and n in (known or {})})
        if imports:
            lines = sorted(set(imports.values()))
            source = _with_imports(source, tree, lines)
            tree = ast.parse(source, filename=name)
            notes.append(
                f"added {', '.join(f'`{line}`' for line in lines)} to {name}, used without its import"
            )
            undefined = _undefined(tree, name)
        renames = {m.message_args[0]: meant for m in undefined if (meant := _meant(m.message_args[0], tree))}
        if renames:
            source = _renamed(source, renames)
            tree = ast.parse(source, filename=name)
            said = ", ".join(f"`{wrong}` to `{meant}`" for wrong, meant in sorted(renames.items()))
            notes.append(f"renamed {said} in {name}, the name it defines")
            undefined = _undefined(tree, name)
        if json_defaults and not undefined:
            source, defaults = _json_defaults(source, tree)
            if defaults:
                notes.append(
                    f"gave {defaults} json.dump call{'s' if defaults > 1 else ''} in {name} "
                    f"`{diagnosis.JSON_DEFAULT}`, so that arrays and numpy numbers can be written"
                )
                tree = ast.parse(source, filename=name)
        if name == "main.py" and not undefined:
            source, seeded = _seeded(source, tree)
            if seeded:
                notes.append(
                    f"seeded what {name} draws at random ({', '.join(seeded)}), so every run gives the same results"
                )
        files[name] = source
        problems += [str(message) for message in undefined]
    writes_results = any(_mentions(files[name], RESULTS_FILE) for name in files if name.endswith(".py"))
    if not problems and not writes_results:
        computed = _computed_names(ast.parse(files["main.py"]))
        if computed:
            files["main.py"] = files["main.py"].rstrip("\n") + "\n" + _results_block(computed)
            notes.append(
                f"main.py wrote no {RESULTS_FILE}: its computed top-level values ({', '.join(computed)}) "
                "are written there at its end"
            )
        else:
            problems.append(
                f"the program never writes {RESULTS_FILE}: main.py must write the values it computed to "
                f"{RESULTS_FILE}, as a JSON object"
            )
    if notes:
        note = BEFORE_RUNNING + "; ".join(notes) + "."
        change_log = f"{program.change_log}\n{note}".strip()
        program = program.model_copy(update={"files": files, "change_log": change_log})
    if problems:
        raise CannotRun(CANNOT_RUN + "; ".join(problems), program, runnable=runnable)
    return program


def _defined(tree: ast.Module) -> set[str]:
    defined = {
        node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return defined


def _meant(name: str, tree: ast.Module) -> str | None:
    """The one name the program defines that an undefined `name` is a misspelling of, if there is one."""
    close = difflib.get_close_matches(name, sorted(_defined(tree)), n=2, cutoff=0.8)
    return close[0] if len(close) == 1 else None


def _renamed(source: str, renames: dict[str, str]) -> str:
    """The source with each wrong name, where it is a name (not an attribute or a string), renamed."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines(keepends=True)
    # From the end, so that the columns of earlier tokens on a line stay right.
    for index in range(len(tokens) - 1, -1, -1):
        token = tokens[index]
        after_dot = index > 0 and tokens[index - 1].string == "."
        if token.type == tokenize.NAME and token.string in renames and not after_dot:
            row, col = token.start
            line = lines[row - 1]
            lines[row - 1] = line[:col] + renames[token.string] + line[col + len(token.string) :]
    return "".join(lines)


MAX_RESULT_NAMES = 12


def _computed_names(tree: ast.Module) -> list[str]:
    """main.py's top-level names assigned from a computation (a call, arithmetic, an attribute or an
    index), in order: what a results.json written for it may hold. Literals typed in are not results."""
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        value = getattr(node, "value", None)
        if not isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) or value is None:
            continue
        if not any(
            isinstance(n, ast.Call | ast.BinOp | ast.Attribute | ast.Subscript) for n in ast.walk(value)
        ):
            continue
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(element, ast.Name) and not element.id.startswith("_"):
                    names.append(element.id)
    return list(dict.fromkeys(names))[-MAX_RESULT_NAMES:]


def _results_block(names: list[str]) -> str:
    """Code that writes the named values to results.json: numbers, strings, booleans, short lists (arrays
    as lists), long lists and arrays of numbers by their shape, mean, min and max (emcee's 100 x 32
    samples were left out, and its results.json held only its inputs), short dicts (a named tuple by its
    names: pymannkendall's result had only its values), and other objects by their text when it is short
    and not only what they are (uncertainties' `2.0+/-0.2`); anything else is left out."""
    return f"""
# Added by CodeDistiller before the first run: main.py wrote no {RESULTS_FILE}. Its computed top-level
# values go there, so that the run can be measured.
import json as _json


# (the numbers, the shape) of a list of numbers or of equal lists of them; None for anything else.
def _numbers(value):
    if all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
        return list(value), [len(value)]
    inner = [_numbers(item) if isinstance(item, (list, tuple)) and item else None for item in value]
    if not all(inner) or len({{tuple(shape) for _, shape in inner}}) != 1:
        return None
    return [number for numbers, _ in inner for number in numbers], [len(value), *inner[0][1]]


def _result_value(value):
    value = value.tolist() if hasattr(value, "tolist") else value
    value = value._asdict() if hasattr(value, "_asdict") else value  # a named tuple, by its names
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    found = _numbers(value) if isinstance(value, (list, tuple)) and value else None
    if found and len(found[0]) > 50:  # a large array (more than 50 numbers in all): its figures
        numbers, shape = found
        return {{"shape": shape, "mean": sum(numbers) / len(numbers), "min": min(numbers), "max": max(numbers)}}
    if isinstance(value, (list, tuple)) and len(value) <= 50:
        return [_result_value(item) for item in value]
    if isinstance(value, dict) and len(value) <= 50:
        return {{str(k): _result_value(v) for k, v in value.items()}}
    # A value of the package's own type by its text ("4.0+/-1.0"), unless that says only what it is
    # ("<kneed.knee_locator.KneeLocator object at 0x7f...>", "<_io.TextIOWrapper name='results.json'>").
    text = str(value)
    return text if len(text) <= 200 and not (text.startswith("<") and text.endswith(">")) else None


_results = {{name: _result_value(globals().get(name)) for name in {names!r}}}
with open({RESULTS_FILE!r}, "w") as _file:
    _json.dump({{k: v for k, v in _results.items() if v is not None}}, _file, indent=2, default=str)
"""


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


def _misplaced_imports(
    tree: ast.Module, source: str, known: dict[str, str]
) -> dict[ast.ImportFrom, dict[str, str]]:
    """{statement: {name: the import line the API digest gives it}} for each top-level `from package.a
    import X` of the repository's own package where the digest imports X from another of its modules, and
    only there (`known`). Seen on findiff: a fix imported Id from findiff.diff as the diagnosis said, then
    again from findiff on the next line, and failed there. Importing from where a name is defined works
    whatever the package re-exports."""
    lines = source.splitlines()
    found: dict[ast.ImportFrom, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if (
            ast.get_source_segment(source, node)
            != "\n".join(lines[node.lineno - 1 : node.end_lineno]).strip()
        ):
            continue  # shares its lines with another statement or a comment: left as it is
        package = node.module.split(".")[0]
        for alias in node.names:
            line = known.get(alias.name, "")
            match = re.fullmatch(
                rf"from ({re.escape(package)}(?:\.\w+)*) import {re.escape(alias.name)}", line
            )
            if match and match.group(1) != node.module:
                found.setdefault(node, {})[alias.name] = line
    return found


def _moved_imports(source: str, moved: dict[ast.ImportFrom, dict[str, str]]) -> str:
    """The source with each misplaced name imported from its module instead, in the statement's place."""
    lines = source.splitlines(keepends=True)
    for node, names in sorted(moved.items(), key=lambda item: -item[0].lineno):
        kept = [ast.unparse(alias) for alias in node.names if alias.name not in names]
        new = [f"from {node.module} import {', '.join(kept)}"] if kept else []
        new += [
            names[a.name] + (f" as {a.asname}" if a.asname else "") for a in node.names if a.name in names
        ]
        lines[node.lineno - 1 : node.end_lineno] = [f"{' ' * node.col_offset}{line}\n" for line in new]
    return "".join(lines)


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


# Functions of numpy.random and random that do not draw from the module's global generator.
NOT_DRAWS = {
    "numpy.random": {"seed", "default_rng", "RandomState", "Generator", "SeedSequence", "BitGenerator",
                     "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64", "get_state", "set_state"},
    "random": {"seed", "Random", "SystemRandom", "getstate", "setstate"},
}  # fmt: skip
SEED_CALLS = {"numpy.random": "seed", "random": "seed", "torch": "manual_seed"}
# Constructors of a generator of its own, seeded from the operating system when called without a seed.
UNSEEDED_GENERATORS = {"numpy.random": {"default_rng", "RandomState"}, "random": {"Random"}}


def _seeded(source: str, tree: ast.Module) -> tuple[str, list[str]]:
    """main.py with what it draws at random seeded, and what was seeded (`np.random.seed(0)`).

    A draw from numpy's or the random module's global generator, with no seed call anywhere, gets a seed
    call after the imports; a generator made without a seed (`np.random.default_rng()`) gets one
    (`default_rng(0)`); a program that imports torch and never calls `torch.manual_seed` gets that too
    (its layers start from random weights). Only what the top level imports is followed."""
    imports = _top_level_imports(tree)
    modules = {name: module for name, (module, _) in imports.items()}
    drawn: set[str] = set()
    seeded_already: set[str] = set()
    generators: list[ast.Call] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        module, function = _called(node.func, modules)
        if module in NOT_DRAWS and function not in NOT_DRAWS[module]:
            drawn.add(module)
        if function == SEED_CALLS.get(module):
            seeded_already.add(module)
        if function in UNSEEDED_GENERATORS.get(module, ()) and not (node.args or node.keywords):
            generators.append(node)
    if "torch" in modules.values():
        drawn.add("torch")
    lines = source.splitlines(keepends=True)
    said = []
    skipped = _in_f_strings(tree)
    for call in sorted(generators, key=lambda c: (c.end_lineno, c.end_col_offset), reverse=True):
        line = lines[call.end_lineno - 1].encode()
        if call not in skipped and line[call.end_col_offset - 2 : call.end_col_offset] == b"()":
            _insert(lines, call.end_lineno, call.end_col_offset - 1, "0")
            said.append(f"`{ast.get_source_segment(source, call.func)}(0)`")
    leading = _leading_imports_end(tree)
    seeds = []
    for module in sorted(drawn - seeded_already):
        code, bound_by = _seed_call(module, imports)
        seeds.append((max(leading, bound_by), code))
    for at, code in sorted(seeds, reverse=True):
        lines[at:at] = [f"{code}\n"]
    said = [f"`{code}`".replace("\n", "; ") for _, code in seeds] + said
    return "".join(lines), said


def _json_defaults(source: str, tree: ast.Module) -> tuple[str, int]:
    """The source with each json.dump(s) call that has no `default` (nor `cls`, nor **kwargs) given
    diagnosis.JSON_DEFAULT after its last argument; and how many calls were changed."""
    modules = {name: module for name, (module, _) in _top_level_imports(tree).items()}
    skipped = _in_f_strings(tree)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node not in skipped
        and _called(node.func, modules) in (("json", "dump"), ("json", "dumps"))
        and (node.args or node.keywords)
        and not any(k.arg in ("default", "cls", None) for k in node.keywords)
    ]
    lines = source.splitlines(keepends=True)
    for call in sorted(calls, key=lambda c: (c.end_lineno, c.end_col_offset), reverse=True):
        last = max(
            [*call.args, *(k.value for k in call.keywords)], key=lambda n: (n.end_lineno, n.end_col_offset)
        )
        _insert(lines, last.end_lineno, last.end_col_offset, f", {diagnosis.JSON_DEFAULT}")
    return "".join(lines), len(calls)


def _insert(lines: list[str], lineno: int, col: int, text: str) -> None:
    """Inserts text into lines at an ast position (its column counts UTF-8 bytes, not characters)."""
    line = lines[lineno - 1].encode()
    lines[lineno - 1] = (line[:col] + text.encode() + line[col:]).decode()


def _in_f_strings(tree: ast.Module) -> set[ast.AST]:
    """The nodes inside f-strings, whose positions Python 3.11 does not always give right."""
    return {inner for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for inner in ast.walk(node)}


def _seed_call(module: str, imports: dict[str, tuple[str, int]]) -> tuple[str, int]:
    """(the code that seeds a module's generator, the line after which the name it uses is bound). A
    module the program has no name for is imported under a private name, which shadows nothing."""
    names = {bound: (name, line) for name, (bound, line) in imports.items()}
    call = SEED_CALLS[module]
    # Drawn through names imported from the module (`from random import choice`): seeded after those.
    after = max((line for bound, (_, line) in names.items() if bound.startswith(f"{module}.")), default=0)
    if module == "numpy.random":
        if "numpy" in names:
            name, line = names["numpy"]
            return f"{name}.random.seed(0)", line
        if "numpy.random" in names:
            name, line = names["numpy.random"]
            return f"{name}.seed(0)", line
        return "import numpy as _np\n_np.random.seed(0)", after
    if module in names:
        name, line = names[module]
        return f"{name}.{call}(0)", line
    return f"import {module} as _{module}\n_{module}.{call}(0)", after


def _leading_imports_end(tree: ast.Module) -> int:
    """The last line of the imports main.py begins with (after its docstring)."""
    end = 0
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.Import | ast.ImportFrom):
            end = node.end_lineno
        elif not (index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            break
    return end


def _top_level_imports(tree: ast.Module) -> dict[str, tuple[str, int]]:
    """{name: (module, the last line of its import)} for what the top level imports: `import numpy as np`
    -> {"np": ("numpy", 1)}, `from numpy import random` -> {"random": ("numpy.random", 1)}, and a name
    imported from a module, `from random import choice` -> {"choice": ("random.choice", 1)}."""
    imports = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports[alias.asname] = (alias.name, node.end_lineno)
                else:
                    top = alias.name.split(".")[0]
                    imports.setdefault(top, (top, node.end_lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                imports[alias.asname or alias.name] = (f"{node.module}.{alias.name}", node.end_lineno)
    return imports


def _called(func: ast.expr, modules: dict[str, str]) -> tuple[str, str]:
    """(the module, the function) a call calls: `np.random.rand` -> ("numpy.random", "rand"); ("", "")
    for anything else."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in modules:
        return "", ""
    dotted = ".".join([modules[func.id], *reversed(parts)])
    module, _, function = dotted.rpartition(".")
    return module, function


# Functions that write a file in a format of their own (and numpy's add ".npy" to the name): a file name
# given to them is not a JSON file written. Seen on kneed: `np.save("results.json", {"knee_y": knee_y})`.
NOT_JSON_WRITERS = {
    "save",
    "savez",
    "savez_compressed",
    "savetxt",
    "savefig",
    "to_csv",
    "to_pickle",
    "dump_pickle",
}


def _mentions(source: str, name: str) -> bool:
    """Whether a string in the code (a literal, or a literal part of an f-string) names the file, other
    than as the file of a writer of another format (NOT_JSON_WRITERS)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    elsewhere = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) in NOT_JSON_WRITERS
        for argument in node.args[:1]
        for inner in ast.walk(argument)
    }
    return any(
        isinstance(node, ast.Constant) and isinstance(node.value, str) and name in node.value
        for node in ast.walk(tree)
        if id(node) not in elsewhere
    )
