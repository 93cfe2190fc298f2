"""What a repository says it needs installed, read from its metadata files; nothing of it is executed.

A missing dependency is the commonest first failure of a program whose author (a model) writes its
requirements from memory (CodeDistiller's own analysis). The environment step (environment.py) installs
what is declared here before any program is written, and every requirement line, the repository's or a
model's, is checked here with `packaging` (the parser pip itself uses) before pip sees it.
"""

import ast
import configparser
import re
import tomllib
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

MAX_FILE_BYTES = 1024 * 1024
MAX_REQUIREMENTS = 40
MAX_LINE = 200
TEST_AND_DOCS = re.compile(r"^(pytest|coverage|sphinx|flake8|black|mypy|tox|pre-commit|ruff|pylint)\b", re.I)


def declared_dependencies(root: Path) -> list[str]:
    """The runtime requirements the repository declares, first source first, one per distribution."""
    found: list[str] = []
    for reader in (_pyproject, _setup_cfg, _setup_py, _pkg_info, _requirements_txt):
        found += reader(root)
    chosen, seen = [], set()
    for line in found:
        # Only a name with extras, versions and markers: a URL or a path a repository put there would
        # point the sandbox's pip somewhere the repository's authors chose, and prose is no requirement.
        requirement = parsed(line)
        if requirement is None or requirement.url or TEST_AND_DOCS.match(requirement.name):
            continue
        if requirement.marker and "extra" in str(requirement.marker):
            continue  # optional: only for an extra
        name = canonicalize_name(requirement.name)
        if name not in seen:
            seen.add(name)
            chosen.append(str(requirement))
    return chosen[:MAX_REQUIREMENTS]


# Import names whose distribution on PyPI is called otherwise (the common ones in scientific code).
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "Bio": "biopython",
    "Crypto": "pycryptodome",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "attr": "attrs",
    "jwt": "pyjwt",
    "serial": "pyserial",
    "git": "gitpython",
    "OpenGL": "pyopengl",
    "google.protobuf": "protobuf",
    "tensorflow_probability": "tensorflow-probability",
}


def distribution_of(module: str) -> str:
    """The distribution on PyPI that installs an import name ("sklearn.svm" -> "scikit-learn")."""
    top = module.split(".")[0]
    return DISTRIBUTIONS.get(module) or DISTRIBUTIONS.get(top) or top


def modules_of(distribution: str) -> set[str]:
    """The top-level import names a distribution most likely provides ("scikit-learn" -> {"sklearn"})."""
    name = canonicalize_name(distribution)
    named = {
        module.split(".")[0] for module, dist in DISTRIBUTIONS.items() if canonicalize_name(dist) == name
    }
    return named or {name.replace("-", "_")}


def normalized_name(requirement: str) -> str:
    parsed_requirement = parsed(requirement)
    if parsed_requirement is not None:
        return canonicalize_name(parsed_requirement.name)
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~;,( @]", requirement.strip(), maxsplit=1)[0]).lower()


def parsed(line: str) -> Requirement | None:
    """The line as a requirement (PEP 508, as pip reads it), or None."""
    line = " ".join(line.split())
    if not line or len(line) > MAX_LINE:
        return None
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


# Lines a model wraps a requirement in: a bullet or a number, backticks, `pip install` before it.
BULLET = re.compile(r"^(?:[-*+•]|\d+[.)])\s+")
PIP_INSTALL = re.compile(r"^(?:python3?\s+-m\s+)?pip3?\s+install\s+", re.I)


def clean_requirements(text: str) -> tuple[list[str], list[str]]:
    """(requirements, problems): the requirement lines of a model's text, cleaned and checked.

    Markdown fences, comments, bullets, backticks and a leading `pip install` are taken off; what is left
    must parse as a requirement, or it is named in `problems` (one sentence each) and left out, so one bad
    line never fails the whole install. pip options (-r, --index-url, -e) are never taken from a model.
    """
    requirements, problems, seen = [], [], set()
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "```", "~~~")):
            continue
        line = PIP_INSTALL.sub("", BULLET.sub("", line)).strip().strip("`'\"").strip()
        if not line or line.lower() in ("none", "(none)", "n/a"):
            continue
        if line.startswith("-"):
            problems.append(f"{line[:80]!r} is a pip option, not a requirement; it was left out")
            continue
        for part in line.split() if PIP_INSTALL.match(raw.strip()) else [line]:
            requirement = parsed(part.strip("`,"))
            if requirement is None:
                problems.append(f"{part[:80]!r} is not a requirement pip can read; it was left out")
                continue
            name = canonicalize_name(requirement.name)
            if name not in seen:
                seen.add(name)
                requirements.append(str(requirement))
    return requirements, problems


def unpinned(
    requirements: list[str], unavailable: dict[str, list[str] | None]
) -> tuple[list[str], list[str]]:
    """(the requirement lines with each pin pip could not install taken off, what was unpinned).

    `unavailable` is diagnosis.unavailable_versions of the last install: {name: the versions the index
    has}, or {name: None} for a package whose pinned build failed. A line of such a name keeps its pin only
    where the pin allows a version the index has; its extras and marker are kept."""
    lines, said = [], []
    for line in requirements:
        requirement = parsed(line)
        name = canonicalize_name(requirement.name) if requirement else ""
        if requirement is None or name not in unavailable or not requirement.specifier:
            lines.append(line)
            continue
        versions = unavailable[name]
        if versions is not None and any(
            requirement.specifier.contains(v, prereleases=True) for v in versions
        ):
            lines.append(line)
            continue
        requirement.specifier = SpecifierSet()
        lines.append(str(requirement))
        said.append(
            f"{line} (pip has {_versions(versions)})"
            if versions
            else f"{line} (it did not build from source here)"
        )
    return lines, said


def _versions(versions: list[str]) -> str:
    return ", ".join(versions) if len(versions) <= 4 else f"{versions[0]} ... {versions[-1]}"


def distribution_name(root: Path) -> str:
    """The repository's own distribution name as its metadata gives it, or ""."""
    try:
        project = tomllib.loads(_read(root / "pyproject.toml")).get("project") or {}
    except (tomllib.TOMLDecodeError, ValueError):
        project = {}
    if isinstance(project.get("name"), str):
        return project["name"]
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read_string(_read(root / "setup.cfg"))
        name = cfg.get("metadata", "name", fallback="")
    except (configparser.Error, ValueError):
        name = ""
    if name:
        return name
    if headers := _read(root / "PKG-INFO"):
        return HeaderParser().parsestr(headers).get("Name", "")
    return _setup_py_keyword(root, "name") or ""


def is_installable(root: Path) -> bool:
    """Whether pip can build the repository: it has build metadata (nothing here runs it)."""
    try:
        pyproject = tomllib.loads(_read(root / "pyproject.toml"))
    except (tomllib.TOMLDecodeError, ValueError):
        pyproject = {}
    return bool(pyproject.get("build-system") or pyproject.get("project")) or (root / "setup.py").is_file()


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
    value = _setup_py_keyword(root, "install_requires")
    return [item for item in value if isinstance(item, str)] if isinstance(value, list | tuple) else []


def _setup_py_keyword(root: Path, name: str):
    """The literal value of a keyword argument of a call in setup.py (setup(name=...)), or None."""
    try:
        tree = ast.parse(_read(root / "setup.py"))
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg != name:
                    continue
                try:
                    return ast.literal_eval(keyword.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
    return None


def _pkg_info(root: Path) -> list[str]:
    """A source distribution's PKG-INFO: Requires-Dist, as built (whatever setup.py computed)."""
    text = _read(root / "PKG-INFO")
    if not text:
        return []
    return [value for value in HeaderParser().parsestr(text).get_all("Requires-Dist") or []]


def _requirements_txt(root: Path) -> list[str]:
    lines = _read(root / "requirements.txt").splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and line.strip()[0] not in "#-"]
