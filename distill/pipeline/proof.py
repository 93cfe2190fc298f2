"""Proof that a program used the repository it distills, from the record the sandbox made of its run.

The recorder (`distill/sandbox/audit.py`) runs inside the sandbox and streams signed lines; this module
knows the repository's packages (read from the clone, never executed), checks the record's signatures and
completeness, and turns it into a verdict and figures:

    proven    the record is whole, and the program imported a repository module and ran its functions
    unused    the record is whole, and the program did not use the repository ("does not use the repository")
    unproven  no record, or one that was cut short or tampered with: nothing can be concluded

Plus a flag that does not decide anything on its own: results.json values that all appear as literals
in main.py (`literal_results`).
"""

import ast
import configparser
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PROVEN, UNPROVEN, UNUSED = "proven", "unproven", "unused"  # Iteration.PROOF_LABELS says them in words
SKIPPED_FOLDERS = {"tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks", "build",
                   "dist", "scripts", "tools", "ci", "site-packages", "node_modules", "venv", "env"}  # fmt: skip
SKIPPED_MODULES = {"setup", "conftest", "noxfile", "tasks", "fabfile", "manage", "versioneer"}
MAX_SOURCE_FILES = 3000
MAX_SOURCE_BYTES = 40 * 1024 * 1024
MAX_LISTED_FUNCTIONS = 200
MAX_NAMES = 500
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# The repository's packages -----------------------------------------------------------------------------


@dataclass
class Packages:
    """Top-level import names of the repository and where each lives in the clone (a relative path)."""

    packages: dict[str, str] = field(default_factory=dict)  # name -> folder ("minilib", "src/minilib")
    modules: dict[str, str] = field(default_factory=dict)  # name -> file ("lib.py")

    @property
    def names(self) -> list[str]:
        return sorted({*self.packages, *self.modules})


def repository_packages(root: Path) -> Packages:
    """What the repository installs or offers for import: its metadata's packages, then its folders."""
    found = Packages()
    declared_packages, declared_modules, package_dirs = _declared(root)
    for name in declared_packages:
        top = name.split(".")[0]
        folder = _package_folder(root, top, package_dirs)
        if folder is not None:
            found.packages[top] = folder
    for name in declared_modules:
        base = package_dirs.get("", "")
        path = Path(base, f"{name}.py").as_posix()
        if (root / path).is_file():
            found.modules[name] = path
    for base in ("", "src"):
        folder = root / base if base else root
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if entry.is_symlink() or name.startswith(".") or name.lower() in SKIPPED_FOLDERS:
                continue
            relative = Path(base, name).as_posix()
            if entry.is_dir() and NAME.match(name) and (entry / "__init__.py").is_file():
                found.packages.setdefault(name, relative)
            elif entry.suffix == ".py" and NAME.match(entry.stem) and entry.stem not in SKIPPED_MODULES:
                found.modules.setdefault(entry.stem, relative)
    return found


def _declared(root: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """(packages, py_modules, package_dir) from pyproject.toml, setup.cfg and setup.py, none executed."""
    packages, modules, package_dirs = [], [], {}
    try:
        pyproject = tomllib.loads(_read(root / "pyproject.toml"))
    except (tomllib.TOMLDecodeError, ValueError):
        pyproject = {}
    project_name = (pyproject.get("project") or {}).get("name")
    tool = pyproject.get("tool") or {}
    setuptools = tool.get("setuptools") or {}
    if isinstance(setuptools.get("packages"), list):
        packages += [p for p in setuptools["packages"] if isinstance(p, str)]
    if isinstance(setuptools.get("py-modules"), list):
        modules += [m for m in setuptools["py-modules"] if isinstance(m, str)]
    if isinstance(setuptools.get("package-dir"), dict):
        package_dirs.update({str(k): str(v) for k, v in setuptools["package-dir"].items()})
    for entry in (tool.get("poetry") or {}).get("packages", []) or []:
        if isinstance(entry, dict) and isinstance(entry.get("include"), str):
            packages.append(entry["include"])
            if isinstance(entry.get("from"), str):
                package_dirs.setdefault(entry["include"], f"{entry['from']}/{entry['include']}")
    flit_name = ((tool.get("flit") or {}).get("module") or {}).get("name")
    if isinstance(flit_name, str):
        packages.append(flit_name)

    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read_string(_read(root / "setup.cfg"))
    except (configparser.Error, ValueError):
        cfg = configparser.ConfigParser()
    if cfg.has_section("options"):
        packages += [
            p for p in _cfg_list(cfg.get("options", "packages", fallback="")) if NAME.match(p.split(".")[0])
        ]
        modules += _cfg_list(cfg.get("options", "py_modules", fallback=""))
        for line in _cfg_list(cfg.get("options", "package_dir", fallback="")):
            key, _, value = line.partition("=")
            package_dirs[key.strip()] = value.strip()
    cfg_name = cfg.get("metadata", "name", fallback="") if cfg.has_section("metadata") else ""

    setup_name, setup_packages, setup_modules, setup_dirs = _setup_py(_read(root / "setup.py"))
    packages += setup_packages
    modules += setup_modules
    package_dirs.update(setup_dirs)

    for name in (project_name, cfg_name, setup_name):
        if isinstance(name, str) and name:
            packages.append(re.sub(r"[-.]+", "_", name).lower())  # the distribution's usual import name
    return packages, modules, package_dirs


def _setup_py(source: str) -> tuple[str, list[str], list[str], dict[str, str]]:
    """The literal arguments of setup(...) in setup.py, read from its syntax tree."""
    name, packages, modules, dirs = "", [], [], {}
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return name, packages, modules, dirs
    for node in ast.walk(tree):
        if (
            not isinstance(node, ast.Call)
            or getattr(node.func, "id", getattr(node.func, "attr", "")) != "setup"
        ):
            continue
        for keyword in node.keywords:
            try:
                value = ast.literal_eval(keyword.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            if keyword.arg == "name" and isinstance(value, str):
                name = value
            elif keyword.arg == "packages" and isinstance(value, list | tuple):
                packages += [p for p in value if isinstance(p, str)]
            elif keyword.arg == "py_modules" and isinstance(value, list | tuple):
                modules += [m for m in value if isinstance(m, str)]
            elif keyword.arg == "package_dir" and isinstance(value, dict):
                dirs.update({str(k): str(v) for k, v in value.items()})
    return name, packages, modules, dirs


def _package_folder(root: Path, top: str, package_dirs: dict[str, str]) -> str | None:
    if not NAME.match(top):
        return None
    candidates = []
    if top in package_dirs:
        candidates.append(package_dirs[top])
    candidates += [Path(package_dirs.get("", ""), top).as_posix(), f"src/{top}", top]
    for candidate in candidates:
        folder = root / candidate
        resolved = folder.resolve()
        if folder.is_dir() and resolved.is_relative_to(root.resolve()) and (folder / "__init__.py").is_file():
            return Path(os.path.normpath(candidate)).as_posix()
    return None


def _cfg_list(value: str) -> list[str]:
    return [
        item.strip()
        for item in re.split(r"[\n,]", value)
        if item.strip() and not item.strip().startswith("find")
    ]


def _read(path: Path) -> str:
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 1024 * 1024:
        return ""
    return path.read_text(errors="replace")


def package_files(root: Path, packages: Packages) -> list[str]:
    """The repository's own Python files (relative paths): the denominator of the share covered."""
    files, size = [], 0
    for folder in packages.packages.values():
        for path in sorted((root / folder).rglob("*.py")):
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(root)
            if any(part.lower() in ("tests", "test") for part in relative.parts[:-1]):
                continue
            size += path.stat().st_size
            if len(files) >= MAX_SOURCE_FILES or size > MAX_SOURCE_BYTES:
                return files
            files.append(relative.as_posix())
    files += [path for path in packages.modules.values() if (root / path).is_file()]
    return files


def executable_lines(path: Path) -> set[int]:
    """Lines that hold code, as the interpreter's line table has them (what a line tracer can see)."""
    try:
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OSError):
        return set()
    lines, todo = set(), [code]
    while todo:
        current = todo.pop()
        lines.update(line for _, _, line in current.co_lines() if line)
        todo += [const for const in current.co_consts if hasattr(const, "co_lines")]
    return lines


# Recording ---------------------------------------------------------------------------------------------


def recording_config(packages: Packages) -> dict:
    """What the recorder is given: a fresh key per execution, and the names to match in site-packages."""
    return {
        "key": secrets.token_hex(32),
        # It travels in a pipe written before the sandbox starts: small enough for the pipe's buffer.
        "packages": sorted(packages.packages)[:MAX_NAMES],
        "modules": sorted(packages.modules)[:MAX_NAMES],
    }


def verify(record: bytes | None, key_hex: str, packages: Packages, root: Path | None) -> dict:
    """The proof of one execution: a verdict, its reasons, and the figures."""
    proof = {
        "verdict": UNPROVEN,
        "reasons": [],
        "packages": packages.names,
        "modules": [],
        "functions": [],
        "functions_executed": 0,
        "lines_executed": 0,
        "executable_lines": 0,
        "share_covered": None,
        "files": {},
    }
    if not packages.names and root is None:
        proof["reasons"].append("the repository's code was not available to the program")
        return proof
    if record is None:
        proof["reasons"].append("the sandbox made no record of which code ran")
        return proof
    key = bytes.fromhex(key_hex)
    messages, forged = [], 0
    for raw in record.splitlines():
        mac, _, body = raw.partition(b" ")
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, expected):
            forged += 1
            continue
        messages.append(json.loads(body))
    main = [m for m in messages if m.get("main")]
    pids = {m["pid"] for m in main}
    if forged:
        proof["reasons"].append(
            f"the record holds {forged} line(s) the recorder did not write: it was tampered with"
        )
    if not main:
        proof["reasons"].append("the recorder never started, or its record was removed")
        return proof
    by_pid: dict[int, list[int]] = {}
    for m in messages:
        by_pid.setdefault(m["pid"], []).append(m["seq"])
    if len(pids) > 1 or any(sorted(seqs) != list(range(len(seqs))) for seqs in by_pid.values()):
        proof["reasons"].append("the record has gaps or repeats: it was tampered with")
    ends = [m["end"] for m in main if "end" in m]
    if not ends:
        proof["reasons"].append(
            "the record was cut short: the program ended without Python's normal exit "
            "(os._exit, a signal, a removed exit hook or a time limit)"
        )
    for problem in ends[0].get("problems", []) if ends else []:
        proof["reasons"].append(f"the recording was interfered with: {problem}")

    _figures(proof, messages, packages, root)
    if proof["reasons"]:
        return proof
    compiled = any(kind == "compiled" for _, _, kind in proof["modules"])
    if not proof["modules"]:
        proof["verdict"] = UNUSED
        proof["reasons"].append(
            "the program does not use the repository: it imported none of its modules "
            f"({', '.join(packages.names) or 'its files under /repo'})"
        )
    elif not proof["functions_executed"] and not compiled:
        proof["verdict"] = UNUSED
        proof["reasons"].append(
            "the program does not use the repository: it imported "
            f"{', '.join(sorted({name for name, _, _ in proof['modules']}))} but ran none of its functions"
        )
    else:
        proof["verdict"] = PROVEN
    return proof


def _figures(proof: dict, messages: list[dict], packages: Packages, root: Path | None) -> None:
    modules, functions, lines = {}, [], {}
    for message in messages:
        for item in message.get("items", []):
            kind, tag = item[0], item[2] if item[0] == "m" else item[1]
            path = _clone_path(tag, packages)
            if path is None:
                continue
            if kind == "m":
                modules.setdefault(item[1], [item[1], path, item[3]])
            elif kind == "f" and item[4] == "function":
                functions.append([path, item[2], item[3]])
            elif kind == "l":
                lines.setdefault(path, set()).update(item[2])
    functions = sorted({tuple(f) for f in functions})
    proof["modules"] = sorted(modules.values())
    proof["functions_executed"] = len(functions)
    proof["functions"] = [list(f) for f in functions[:MAX_LISTED_FUNCTIONS]]
    proof["lines_executed"] = sum(len(numbers) for numbers in lines.values())
    if root is None or not root.is_dir():
        return
    total = covered = 0
    for path in package_files(root, packages):
        executable = executable_lines(root / path)
        ran = lines.get(path, set()) & executable
        total += len(executable)
        covered += len(ran)
        if ran:
            proof["files"][path] = [len(ran), len(executable)]
    proof["executable_lines"] = total
    proof["share_covered"] = round(covered / total, 4) if total else None


def _clone_path(tag, packages: Packages) -> str | None:
    """The clone's relative path of a file the recorder saw at /repo/... or in site-packages."""
    if not isinstance(tag, str):
        return None
    where, _, rest = tag.partition(":")
    if where == "repo":
        return rest
    top = rest.split("/", 1)[0]
    if top in packages.packages:
        return Path(packages.packages[top], *rest.split("/")[1:]).as_posix()
    name = top.split(".", 1)[0]
    return packages.modules.get(name, rest)


# Results that no computation made ----------------------------------------------------------------------


def literal_results(results, main_source: str) -> dict | None:
    """The flag: every value of results.json (ignoring trivial ones) appears as a literal in main.py."""
    values = [v for v in _leaves(results) if not _trivial(v)]
    if not values:
        return None
    try:
        tree = ast.parse(main_source)
    except (SyntaxError, ValueError):
        return None
    numbers, strings = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                strings.add(node.value)
            elif isinstance(node.value, int | float) and not isinstance(node.value, bool):
                numbers.append(node.value)
        elif (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
        ):
            if isinstance(node.operand.value, int | float) and not isinstance(node.operand.value, bool):
                numbers.append(-node.operand.value)
    for value in values:
        if isinstance(value, str):
            if value not in strings:
                return None
        elif not any(math.isclose(value, n, rel_tol=1e-9, abs_tol=1e-12) for n in numbers):
            return None
    shown = [json.dumps(v)[:60] for v in values[:8]]
    return {
        "values": len(values),
        "message": f"every value in results.json ({', '.join(shown)}{', ...' if len(values) > 8 else ''}) "
        "is written as a literal in main.py: the results may not come from a computation",
    }


def _leaves(value, depth=0):
    if depth > 20:
        return
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, depth + 1)
    else:
        yield value


def _trivial(value) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int | float):
        return value in (0, 1, -1) or (isinstance(value, float) and not math.isfinite(value))
    return isinstance(value, str) and not value.strip()
