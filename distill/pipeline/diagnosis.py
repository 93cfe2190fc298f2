"""The likely root cause of a failed run, read from its output by rules, before any model looks at it.

A fixer shown a traceback and a list of failures tends to fix the last-listed or the loudest; the
commonest root causes (a package not installed, a name that does not exist, pip failing on a requirement)
are plain in the output and cost nothing to name. What is found here is put first in the fix prompt and
shown to the curator on the iteration. Found nothing: the fixer reads the output itself, as before.
"""

import ast
import re
from pathlib import PurePosixPath

from distill.pipeline.dependencies import distribution_of, normalized_name

MAX_FINDINGS = 3
REPO_MOUNT = "/repo"  # where the sandbox mounts the clone (distill/sandbox)

NO_MODULE = re.compile(r"^(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'", re.M)
NO_NAME = re.compile(r"^ImportError: cannot import name '(\w+)' from '([\w.]+)'", re.M)
NO_ATTRIBUTE = re.compile(r"^AttributeError: module '([\w.]+)' has no attribute '(\w+)'", re.M)
# A class or an instance without the name: `type object 'KneeLocator' has no attribute 'figure2'`.
NO_MEMBER = re.compile(
    r"^AttributeError: (?:type object '(\w+)'|'(\w+)' object) has no attribute '(\w+)'", re.M
)
# Seen on pwlf: a numpy array in results; the fix converted one of two and failed again.
NOT_JSON = re.compile(r"^TypeError: Object of type (\w+) is not JSON serializable", re.M)
DIGEST_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)")
DIGEST_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class) (\w+)")
PIP_NOT_FOUND = re.compile(r"^ERROR: (?:Could not find a version that satisfies the requirement|No matching "
                           r"distribution found for) ([^\s(]+)", re.M)  # fmt: skip
# pip's list of the versions a requirement it could not satisfy has ("none" when the name has none).
PIP_VERSIONS = re.compile(
    r"^ERROR: Could not find a version that satisfies the requirement ([^\s(]+) \(from versions: ([^)]*)\)",
    re.M,
)
# A package pip had to build from source and could not: the newest pip (rich's box), older ones, and the
# legacy setup.py install.
PIP_BUILD_FAILED = re.compile(
    r"^(?:\s*(?:ERROR: )?Failed (?:building wheel for|to build) (?!installable\b)([A-Za-z0-9][\w.-]*)"
    r"|(?:×|ERROR:) Encountered error while trying to install package\.\n╰─> ([A-Za-z0-9][\w.-]*))",
    re.M,
)
# The argument that lets json write what a scientific program computes: arrays and numpy numbers as lists
# and numbers, anything else as its text. json calls it only for what it cannot write itself.
JSON_DEFAULT = "default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)"
PIP_INVALID = re.compile(
    r"^ERROR: Invalid requirement: '([^'\n]*)' \(from line (\d+) of requirements\.txt\)", re.M
)
# A library's own error message that says what to install ("... Please run `pip install kneed[plot]`").
PIP_ADVICE = re.compile(r"\bpip install ([A-Za-z0-9][\w.-]*(?:\[[\w,-]+\])?)")
# Frames of the sandbox's own recorder (distill/sandbox/audit.py runs as sitecustomize): not the program's.
# A frame of main.py's top level in a traceback (the sandbox runs it as /job/main.py).
MAIN_FRAME = re.compile(r'^  File "[^"\n]*/main\.py", line (\d+), in <module>$', re.M)
RECORDER_FRAME = re.compile(r'^  File "/sandbox/record/[^"]*", line \d+, in \w+\n(?:    .*\n)?', re.M)


def diagnose(
    *,
    output: str,
    install_log: str,
    packages: dict[str, str],
    declared: list[str],
    main_source: str = "",
    imported: set[str] | None = None,
    out_of_memory_mb: int | None = None,
    prepared: bool = False,
    paper: bool = False,
    api_digest: str = "",
) -> list[str]:
    """Up to three findings, each one sentence that names the cause and the change that removes it.

    `output` is the program's stderr and stdout (programs that catch an exception often print it there).
    `packages` maps the repository's own import names to where each lives in the clone ("kneed" ->
    "src/kneed"); `declared` are its declared requirements. `imported` are the repository's packages the
    recorder saw imported when it found the program did not use the repository (None: not known); those
    main.py imports but the recorder never saw are found even when the program swallowed the ImportError.
    `out_of_memory_mb` is the sandbox's memory limit when it stopped the program there (None: it did not).
    `prepared`: the program ran in a prepared environment (environment.py), where the repository is
    installed: a sys.path line is then never the way out.
    `paper`: the program was written from a paper, so there is no repository to speak of.
    `api_digest`: the repository's API digest (digest.py); a name asked of the wrong module, class or
    object is looked up in it, and the finding says where the repository does define it.

    The findings come in the order the program met them: pip's before the program's, then by their place
    in the output, so that the first line that failed is named first. A fixer told first about a later
    line (an import the program never reached) fixed that one and sent the real failure back again.
    """
    found: list[tuple[int, str]] = []  # (where in the output, finding); the install log comes first
    if out_of_memory_mb is not None:
        # A kill at the limit leaves no traceback (SIGKILL): without this line the fixer sees only an exit code.
        found.append(
            (
                -2,
                f"the program was stopped at the sandbox's memory limit ({out_of_memory_mb} MB for all its "
                "processes together): use less memory (smaller data or models, fewer worker processes, "
                "batches instead of everything at once)",
            )
        )
    provides = "" if paper else ", or leave it out if the repository provides it"
    for requirement in dict.fromkeys(PIP_NOT_FOUND.findall(install_log)):
        found.append(
            (
                -1,
                f"pip could not install {requirement!r} from requirements.txt: that name or "
                f"version does not exist on PyPI; correct it{provides}",
            )
        )
    for line, number in dict.fromkeys(PIP_INVALID.findall(install_log)):
        several = len(line.split()) > 1
        found.append(
            (
                -1,
                f"line {number} of requirements.txt, {line!r}, is not a requirement pip can read"
                + (": put each requirement on a line of its own" if several else ": correct or remove it"),
            )
        )
    missing = [(m.start(), m.group(1)) for m in NO_MODULE.finditer(output)]
    # A program that catches its ImportError and prints its own words has no traceback to read; an
    # import below the line that failed was simply never reached, and is no cause.
    if imported is not None:
        failed_at = failing_line(output)
        for top, line in sorted(unreached_imports(main_source, packages, imported).items()):
            if failed_at is None or line <= failed_at:
                missing.append((len(output), top))
    named = set()
    for position, module in missing:
        top = module.split(".")[0]
        if top in named:
            continue
        named.add(top)
        if top in packages and prepared:
            found.append(
                (
                    position,
                    f"the repository's own package {top!r} could not be imported: the prepared "
                    "environment lists the imports that work; use only those, and never add a folder "
                    "to sys.path",
                )
            )
            continue
        if top in packages:
            # One concrete line: offered two ways out ("install it, or add /repo to sys.path"), a small
            # model took neither and sent the same program back.
            folder = PurePosixPath(REPO_MOUNT, packages[top]).parent.as_posix()
            found.append(
                (
                    position,
                    f"the repository's own package {top!r} could not be imported: the "
                    f"repository is at {REPO_MOUNT}, not installed; put `import sys` and "
                    f"`sys.path.insert(0, {folder!r})` at the top of main.py, before the "
                    f"first import of {top}",
                )
            )
            continue
        requirement, listed = _requirement_for(module, declared)
        found.append(
            (
                position,
                f"the module {module!r} is not installed: add {requirement!r} to requirements.txt"
                + (" (the repository declares it)" if listed else ""),
            )
        )
    for match in _first_of_each(PIP_ADVICE, output)[:2]:
        requirement = match.group(1)
        found.append(
            (
                match.start(),
                f"the program's output asks for `pip install {requirement}`: add "
                f"{requirement!r} to requirements.txt",
            )
        )
    where = "the program's own files" if paper else "the repository's files shown above"
    defined = api_definitions(api_digest)
    for match in _first_of_each(NO_NAME, output):
        name, module = match.groups()
        # Seen on findiff: `from findiff import Id`, where the digest imports it from findiff.diff.
        where_defined = (
            _elsewhere(name, defined)
            if name in defined
            else f"import only names defined in {where} (check the module path, too)"
        )
        found.append((match.start(), f"{module!r} has no name {name!r}: {where_defined}"))
    for match in _first_of_each(NO_ATTRIBUTE, output):
        module, name = match.groups()
        found.append(
            (match.start(), f"the module {module!r} has no attribute {name!r}: " + _elsewhere(name, defined))
        )
    for match in _first_of_each(NO_MEMBER, output):
        cls, instance, name = match.groups()
        owner = f"the class {cls!r}" if cls else f"a {instance!r} object"
        found.append((match.start(), f"{owner} has no attribute {name!r}: " + _elsewhere(name, defined)))
    for match in _first_of_each(NOT_JSON, output):
        found.append(
            (
                match.start(),
                f"json cannot write a {match.group(1)} value: give json.dump (or json.dumps) the argument "
                f"`{JSON_DEFAULT}`, or convert each value first (an array with .tolist(), a numpy number "
                "with float())",
            )
        )
    found.sort(key=lambda pair: pair[0])  # stable: within one place, the order above
    return [finding for _, finding in found][:MAX_FINDINGS]


def missing_requirements(output: str, packages: dict[str, str], declared: list[str]) -> list[str]:
    """The requirements that would install the modules a program could not import (not the repository's
    own packages), as diagnose names them: the repository's declared line when it declares one, and what
    a library's own message says to install ("Please run `pip install kneed[plot]`", seen on kneed)."""
    found = {}
    for module in NO_MODULE.findall(output):
        if module.split(".")[0] not in packages:
            requirement, _ = _requirement_for(module, declared)
            found.setdefault(normalized_name(requirement), requirement)
    for match in _first_of_each(PIP_ADVICE, output)[:2]:
        found.setdefault(match.group(1), match.group(1))
    return list(found.values())


def unavailable_versions(install_log: str) -> dict[str, list[str] | None]:
    """{distribution: the versions the index has} for each requirement pip could not find at the version
    asked while the name has others (`corner==0.4.1`, "from versions: 0.2.0, ..., 2.3.0"), and {distribution:
    None} for each package pip could not build from source (matplotlib==3.5.1 has no wheel for Python 3.11,
    and its build downloads what the sandbox cannot reach). Both are a pin's fault, and the fix unpins them
    (program.parse_program): seen on a paper's run, the 1.5B model changed corner==0.4.1 to corner==0.4.0."""
    found: dict[str, list[str] | None] = {}
    for requirement, versions in PIP_VERSIONS.findall(install_log):
        listed = [v.strip() for v in versions.split(",") if v.strip() and v.strip() != "none"]
        if listed:
            found[normalized_name(requirement)] = listed
    for match in PIP_BUILD_FAILED.finditer(install_log):
        found.setdefault(normalized_name(match.group(1) or match.group(2)), None)
    return found


def _requirement_for(module: str, declared: list[str]) -> tuple[str, bool]:
    """(the requirement that installs `module`, whether it is the repository's declared line)."""
    distribution = distribution_of(module)
    listed = [r for r in declared if normalized_name(r) == normalized_name(distribution)]
    return (listed[0], True) if listed else (distribution, False)


def api_definitions(digest: str) -> dict[str, list[str]]:
    """Where the API digest defines each name, as a program reaches it: "figure2" ->
    ["DataGenerator.figure2 (from kneed import DataGenerator)"]. Read as text: nothing is imported."""
    found: dict[str, list[str]] = {}
    importing, owner = "", None
    for line in digest.splitlines():
        if match := DIGEST_IMPORT.match(line):
            importing, owner = match.group(0), None
            continue
        match = DIGEST_DEF.match(line)
        if match is None or not importing:
            continue
        indent, kind, name = match.groups()
        if not indent:
            owner = name if kind == "class" else None
            path = name
        elif owner is not None:
            path = f"{owner}.{name}"
        else:
            continue
        found.setdefault(name, []).append(f"{path} ({importing})")
    return found


def _elsewhere(name: str, defined: dict[str, list[str]]) -> str:
    places = defined.get(name, [])
    if not places:
        return "use a name it defines (the API digest above lists them)"
    return f"the repository defines it as {' and as '.join(places[:2])}; call it there"


def _first_of_each(pattern: re.Pattern, text: str) -> list[re.Match]:
    """The first match of each distinct capture, in the text's order."""
    first: dict[tuple, re.Match] = {}
    for match in pattern.finditer(text):
        first.setdefault(match.groups(), match)
    return list(first.values())


def failing_line(output: str) -> int | None:
    """The line of main.py's top level that the last traceback in the output went through, if any."""
    lines = MAIN_FRAME.findall(output)
    return int(lines[-1]) if lines else None


def unreached_imports(main_source: str, packages: dict[str, str], imported: set[str]) -> dict[str, int]:
    """The repository's top-level packages that main.py imports, of which the recorder saw no module,
    each with the line of main.py that first imports it."""
    try:
        tree = ast.parse(main_source)
    except (SyntaxError, ValueError):
        return {}
    named: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            named[name] = min(named.get(name, node.lineno), node.lineno)
    return {name: line for name, line in named.items() if name in packages and name not in imported}


def without_recorder_frames(output: str) -> str:
    """A traceback as the program would have had it without the sandbox's recorder in between."""
    return RECORDER_FRAME.sub("", output)


PROMPT_OUTPUT_CHARS = 6000  # of stdout/stderr shown to the judge, the fixer and the environment's repair
ERROR_LINE = re.compile(r"(error|exception|traceback|warning|failed|line \d+|^\s+File \")", re.IGNORECASE)


def trim_output(text: str, limit: int = PROMPT_OUTPUT_CHARS) -> str:
    """Head, every error-looking line, and tail, within `limit` characters: the root cause is rarely
    in the middle of a log, but the error lines may be anywhere."""
    if len(text) <= limit:
        return text
    lines = text.splitlines()
    head, tail = lines[:20], lines[-60:]
    middle = [line for line in lines[20:-60] if ERROR_LINE.search(line)]
    kept = head + ["... [trimmed] ..."] + middle[-80:] + ["... [trimmed] ..."] + tail
    trimmed = "\n".join(line[:500] for line in kept)
    return (
        trimmed[: limit // 3] + "\n... [trimmed] ...\n" + trimmed[-(2 * limit) // 3 :]
        if len(trimmed) > limit
        else trimmed
    )
