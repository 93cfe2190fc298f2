"""What a repository says it needs installed, read from its metadata files; nothing of it is executed.

The program's author (a model) writes requirements.txt from memory otherwise, and a missing dependency is
the commonest first failure (CodeDistiller's own analysis; and a small model rarely repairs it from the
traceback alone). The list goes into the generate and fix prompts as a fact, not a rule: the program
installs what it needs of it.
"""

import ast
import configparser
import re
import tomllib
from email.parser import HeaderParser
from pathlib import Path

MAX_FILE_BYTES = 1024 * 1024
MAX_REQUIREMENTS = 40
# A requirement as pip takes it: a name, extras, a version specifier, a marker. Anything else (URLs,
# options, paths, prose a repository put there) is left out of the prompt.
REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._ -]*\])?\s*([<>=!~;,( ].*)?$")
TEST_AND_DOCS = re.compile(r"^(pytest|coverage|sphinx|flake8|black|mypy|tox|pre-commit|ruff|pylint)\b", re.I)


def declared_dependencies(root: Path) -> list[str]:
    """The runtime requirements the repository declares, first source first, one per distribution."""
    found: list[str] = []
    for reader in (_pyproject, _setup_cfg, _setup_py, _pkg_info, _requirements_txt):
        found += reader(root)
    chosen, seen = [], set()
    for requirement in found:
        requirement = " ".join(requirement.split())[:120]
        if not REQUIREMENT.match(requirement) or TEST_AND_DOCS.match(requirement):
            continue
        if "extra ==" in requirement.replace('"', "").replace("'", ""):
            continue  # optional: only for an extra
        name = normalized_name(requirement)
        if name not in seen:
            seen.add(name)
            chosen.append(requirement)
    return chosen[:MAX_REQUIREMENTS]


def normalized_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~;,( ]", requirement, maxsplit=1)[0]).lower()


def _read(path: Path) -> str:
    if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
        return ""
    return path.read_text(errors="replace")


def _pyproject(root: Path) -> list[str]:
    try:
        data = tomllib.loads(_read(root / "pyproject.toml"))
    except (tomllib.TOMLDecodeError, ValueError):
        return []
    found = [d for d in (data.get("project") or {}).get("dependencies") or [] if isinstance(d, str)]
    poetry = ((data.get("tool") or {}).get("poetry") or {}).get("dependencies") or {}
    if isinstance(poetry, dict):
        found += [name for name in poetry if isinstance(name, str) and name.lower() != "python"]
    return found


def _setup_cfg(root: Path) -> list[str]:
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read_string(_read(root / "setup.cfg"))
    except (configparser.Error, ValueError):
        return []
    value = cfg.get("options", "install_requires", fallback="") if cfg.has_section("options") else ""
    return [line.strip() for line in value.splitlines() if line.strip()]


def _setup_py(root: Path) -> list[str]:
    """install_requires=[...] when it is a literal in setup.py's syntax tree."""
    try:
        tree = ast.parse(_read(root / "setup.py"))
    except (SyntaxError, ValueError):
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg != "install_requires":
                    continue
                try:
                    value = ast.literal_eval(keyword.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
                if isinstance(value, list | tuple):
                    return [item for item in value if isinstance(item, str)]
    return []


def _pkg_info(root: Path) -> list[str]:
    """A source distribution's PKG-INFO: Requires-Dist, as built (whatever setup.py computed)."""
    text = _read(root / "PKG-INFO")
    if not text:
        return []
    return [value for value in HeaderParser().parsestr(text).get_all("Requires-Dist") or []]


def _requirements_txt(root: Path) -> list[str]:
    lines = _read(root / "requirements.txt").splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and line.strip()[0] not in "#-"]
