"""The recorder: which of the repository's code a program runs. It runs inside the sandbox, not in the app.

run.sh puts this file on the path as `sitecustomize` for the run phase only, when DISTILL_RECORD names two
file descriptors: one holds the configuration (a signing key and the repository's package names), which is
read and closed before main.py starts, and one receives the record, which the sandbox's host side reads
(locally two pipes; on Modal the stdin of the run and a file read back after it, see modal.py).

Python 3.11 has no cheap tracing: any sys.settrace or sys.setprofile slows every bytecode of the program
by 50-300%. So the repository's modules are compiled here with a probe at the start of each module, class
and function body: `if not __distill_<n>__: __distill_probe__(n)`. The flag is False in builtins until the
first hit, which sets it True in the module's globals: from then on the check is one specialised global
load (about a nanosecond; a list or a builtin would cost 5-15 ns a call), and nothing elsewhere. A
probe's first hit records the block and line-traces that
one execution until its frame returns or re-runs lines already seen (a loop), which gives a lower bound of
the lines executed at a cost bounded per block.

Each record line is `<hmac> <json>`: the key reaches only this module's closure, through a pipe, never the
environment, so a program that writes to the record's descriptor cannot make lines the host accepts
without digging the key out of this module's memory on purpose. The record ends with an `end` line written
at exit; a program that leaves by os._exit, a signal or a removed atexit hook leaves no end line, and the
host calls its run unproven. Forked children record too (their lines carry their own pid).
"""

import atexit
import builtins
import json
import os
import sys
import time

try:  # not hashlib: loading OpenSSL would add 10 ms to every program's start
    from _sha256 import sha256
except ImportError:  # Python 3.12 merged it into _sha2 (Modal's images run 3.12 by default)
    from _sha2 import sha256
from _thread import allocate_lock, get_ident
from importlib.machinery import ExtensionFileLoader, SourceFileLoader

MESSAGE_BYTES = 3500  # below PIPE_BUF (4096): writes of parent and forked children never interleave
FLUSH_SECS = 1.0
QUIET_LINES = 300  # line events in a row that find nothing new end a block's tracing
# Functions compiled from their bytecode by a JIT must keep their bytecode as written.
JIT_DECORATORS = {"jit", "njit", "vectorize", "guvectorize", "cfunc", "stencil", "generated_jit", "jitclass"}


def _start():
    spec = os.environ.pop("DISTILL_RECORD", "")
    if not spec:
        return
    try:
        config_fd, out_fd = (int(part) for part in spec.split(","))
        data = b""
        while chunk := os.read(config_fd, 65536):
            data += chunk
        os.close(config_fd)
        config = json.loads(data)
        key = bytes.fromhex(config.pop("key"))
        os.set_inheritable(out_fd, False)  # subprocesses are other programs; forked children keep it
    except (ValueError, OSError, KeyError, TypeError):
        return
    _install(config, out_fd, key)


def _install(config, out_fd, key):  # noqa: C901 (one closure keeps the key out of reach of attributes)
    root = config.get("root", "/repo").rstrip("/") + "/"  # where the clone is mounted
    packages = set(config.get("packages", []))
    modules = set(config.get("modules", []))
    site_dirs = set()
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")) and os.path.isdir(entry):
            site_dirs.update({os.path.normpath(entry), os.path.realpath(entry)})
    site_dirs = sorted(site_dirs, key=len, reverse=True)

    lock = allocate_lock()
    seen = []  # whether each block ran, indexed by block number
    blocks = []  # (filename, tag, qualname, first line, kind, first body line)
    block_ids = {}
    tags = {}  # filename -> "repo:<path>" | "site:<path>" | None
    lines = {}  # filename -> set of lines seen
    pending = {"modules": [], "blocks": [], "lines": {}}
    state = {"pid": os.getpid(), "main": True, "seq": 0, "flushed": time.monotonic(), "problems": []}
    traced = {}  # thread id -> {"frames": set, "quiet": int}

    inner_key = bytes(b ^ 0x36 for b in key.ljust(64, b"\0"))
    outer_key = bytes(b ^ 0x5C for b in key.ljust(64, b"\0"))

    def sign(payload):  # HMAC-SHA256 (RFC 2104), for a key of at most 64 bytes
        body = json.dumps(payload, separators=(",", ":")).encode()
        mac = sha256(outer_key + sha256(inner_key + body).digest()).hexdigest()
        return mac.encode() + b" " + body + b"\n"

    def tag_of(filename):
        if filename in tags:
            return tags[filename]
        tag = None
        path = os.path.normpath(filename) if filename else ""
        if path.startswith(root):
            tag = "repo:" + path[len(root) :]
        else:
            for site in site_dirs:
                if path.startswith(site + "/"):
                    rest = path[len(site) + 1 :]
                    top = rest.split("/", 1)[0]
                    name = top.split(".", 1)[0]
                    if ("/" in rest and top in packages) or ("/" not in rest and name in modules):
                        tag = "site:" + rest
                    break
        tags[filename] = tag
        return tag

    def send(payload):
        payload.update(pid=state["pid"], main=state["main"], seq=state["seq"])
        state["seq"] += 1
        data = sign(payload)
        while data:
            data = data[os.write(out_fd, data) :]

    def flush():
        items = [["m", *m] for m in pending["modules"]]
        items += [["f", *blocks[n][1:5]] for n in pending["blocks"]]
        for filename, numbers in pending["lines"].items():
            tag = tag_of(filename)
            for start in range(0, len(numbers), 300):
                items.append(["l", tag, sorted(numbers[start : start + 300])])
        pending["modules"], pending["blocks"], pending["lines"] = [], [], {}
        state["flushed"] = time.monotonic()
        batch, size = [], 0
        for item in items:
            cost = len(json.dumps(item)) + 1
            if batch and size + cost > MESSAGE_BYTES - 200:
                send({"items": batch})
                batch, size = [], 0
            batch.append(item)
            size += cost
        if batch:
            send({"items": batch})

    def note_line(filename, line):
        known = lines.get(filename)
        if known is None:
            known = lines[filename] = set()
        if line in known:
            return False
        known.add(line)
        pending["lines"].setdefault(filename, []).append(line)
        return True

    def stop_tracing(mine):
        for frame in mine["frames"]:
            frame.f_trace = None
        mine["frames"].clear()
        if sys.gettrace() is global_trace:
            sys.settrace(None)

    def local_trace(frame, event, arg):
        try:
            mine = traced.get(get_ident())
            if mine is None:
                return None
            if event == "line":
                with lock:
                    new = note_line(frame.f_code.co_filename, frame.f_lineno)
                mine["quiet"] = 0 if new else mine["quiet"] + 1
                if mine["quiet"] > QUIET_LINES:
                    stop_tracing(mine)
                    return None
            elif event == "return":
                mine["frames"].discard(frame)
                if not mine["frames"]:
                    stop_tracing(mine)
            return local_trace
        except Exception:  # the recorder never breaks the program
            sys.settrace(None)
            return None

    def global_trace(frame, event, arg):
        mine = traced.get(get_ident())
        if mine is None or tag_of(frame.f_code.co_filename) is None:
            return None
        mine["frames"].add(frame)
        return local_trace

    def probe(number):
        if seen[number]:
            return
        seen[number] = True
        try:
            frame = sys._getframe(1)
            filename, _tag, _qualname, _line, _kind, first = blocks[number]
            if frame.f_code.co_filename != filename:
                state["problems"].append(f"a probe was called from outside its block ({number})")
                return
            frame.f_globals[f"__distill_{number}__"] = True
            with lock:
                pending["blocks"].append(number)
                note_line(filename, first)
            if sys.gettrace() in (None, global_trace):  # a debugger or coverage of the program's own wins
                mine = traced.setdefault(get_ident(), {"frames": set(), "quiet": 0})
                mine["quiet"] = 0
                mine["frames"].add(frame)
                frame.f_trace = local_trace
                if sys.gettrace() is None:
                    sys.settrace(global_trace)
            if not state["main"] or time.monotonic() - state["flushed"] > FLUSH_SECS:
                with lock:
                    flush()
        except Exception:
            pass

    def make_probes():
        import ast  # only now: a program that never imports the repository does not pay for it

        class Probes(ast.NodeTransformer):
            def __init__(self, filename, tag):
                self.filename, self.tag, self.names = filename, tag, []

            def add_probe(self, node, kind):
                body = node.body
                start = 1 if body and _is_docstring(body[0]) else 0
                if kind == "module":
                    while (
                        start < len(body)
                        and isinstance(body[start], ast.ImportFrom)
                        and body[start].module == "__future__"
                    ):
                        start += 1
                anchor = body[start] if start < len(body) else body[-1]
                qualname = ".".join(self.names) or "<module>"
                first = getattr(anchor, "lineno", 1)
                key = (self.filename, qualname, getattr(node, "lineno", 0))
                with lock:
                    number = block_ids.get(key)
                    if number is None:
                        number = block_ids[key] = len(blocks)
                        blocks.append(
                            (self.filename, self.tag, qualname, getattr(node, "lineno", 1), kind, first)
                        )
                        seen.append(False)
                        setattr(builtins, f"__distill_{number}__", False)
                check = ast.parse(f"if not __distill_{number}__: __distill_probe__({number})").body[0]
                for child in ast.walk(check):
                    ast.copy_location(child, anchor)
                    if hasattr(child, "end_lineno"):
                        child.end_lineno, child.end_col_offset = anchor.lineno, anchor.col_offset
                body.insert(start, check)

            def visit_Module(self, node):
                self.generic_visit(node)
                if node.body:
                    self.add_probe(node, "module")
                return node

            def visit_ClassDef(self, node):
                self.names.append(node.name)
                self.generic_visit(node)
                self.add_probe(node, "class")
                self.names.pop()
                return node

            def visit_FunctionDef(self, node):
                self.names.append(node.name)
                self.generic_visit(node)
                if not any(_decorator_name(d) in JIT_DECORATORS for d in node.decorator_list):
                    self.add_probe(node, "function")
                self.names.pop()
                return node

            visit_AsyncFunctionDef = visit_FunctionDef

        return ast, Probes

    probes = []

    class Loader(SourceFileLoader):
        def get_code(self, fullname):
            source = self.get_data(self.path)
            if not probes:
                probes.extend(make_probes())
            ast, Probes = probes
            try:
                tree = ast.parse(source, self.path)
                Probes(self.path, tag_of(self.path)).visit(tree)
                return compile(tree, self.path, "exec", dont_inherit=True)
            except SyntaxError:
                raise
            except Exception:  # an unforeseen construct: the module runs as written, unprobed
                return compile(source, self.path, "exec", dont_inherit=True)

        def exec_module(self, module):
            with lock:
                pending["modules"].append([module.__name__, tag_of(self.path), "source"])
                recorded.add(module.__name__)
            super().exec_module(module)

    recorded = set()

    class Finder:
        """First on sys.meta_path: asks the others, and compiles the repository's sources with probes."""

        def find_spec(self, name, path=None, target=None):
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            if spec.origin and tag_of(spec.origin) is not None:
                if type(spec.loader) is SourceFileLoader:
                    spec.loader = Loader(spec.loader.name, spec.loader.path)
                elif isinstance(spec.loader, ExtensionFileLoader):
                    with lock:
                        pending["modules"].append([name, tag_of(spec.origin), "compiled"])
                        recorded.add(name)
            return spec

    finder = Finder()

    def at_exit():
        problems = list(state["problems"])
        if getattr(builtins, "__distill_probe__", None) is not probe:
            problems.append("the probe function was replaced")
        if finder not in sys.meta_path:
            problems.append("the recorder's import hook was removed")
        with lock:
            for name, module in list(sys.modules.items()):
                filename = getattr(module, "__file__", None)
                if name not in recorded and isinstance(filename, str) and tag_of(filename) is not None:
                    pending["modules"].append([name, tag_of(filename), "other"])
                    recorded.add(name)
            flush()
            send({"end": {"problems": problems}})

    def before_fork():
        with lock:
            flush()

    def in_child():
        state.update(pid=os.getpid(), main=False, seq=0)
        traced.clear()

    builtins.__distill_probe__ = probe
    sys.meta_path.insert(0, finder)
    atexit.register(at_exit)
    os.register_at_fork(before=before_fork, after_in_child=in_child)
    send({"start": {"python": sys.version.split()[0], "site": site_dirs}})


def _is_docstring(node):
    value = getattr(node, "value", None)
    return type(node).__name__ == "Expr" and isinstance(getattr(value, "value", None), str)


def _decorator_name(node):
    if type(node).__name__ == "Call":
        node = node.func
    if type(node).__name__ == "Attribute":
        return node.attr
    return getattr(node, "id", "")


_start()
