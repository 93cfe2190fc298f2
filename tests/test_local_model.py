"""The offline default model: joining and checking its weights, the litellm provider, the clear error when
it is not installed, and (marked `local_model`, skipped unless installed) the real model, offline."""

import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from decimal import Decimal
from pathlib import Path

import pytest

from distill import llm, local_model, services
from distill.models import LLMCall, Run
from distill.pipeline import paper_steps, parsing
from distill.pipeline.program import reply_format
from distill.profiles import load_profile
from tests.factories import make_git_repo
from tests.replies import WORKING_MAIN, program, verdict

MESSAGES = [{"role": "user", "content": "Say hello."}]
ROOT = Path(__file__).resolve().parent.parent


def real_model_installed() -> bool:
    if not local_model.llama_installed():
        return False
    try:
        local_model.part_paths()
    except local_model.LocalModelError:
        return False
    return True


def needs_real_model(test):
    """Marked `local_model`, and skipped where llama-cpp-python or the weights are not installed."""
    marks = [
        pytest.mark.local_model,
        pytest.mark.slow,
        pytest.mark.skipif(
            not real_model_installed(), reason="the local model (requirements-local.txt) is not installed"
        ),
    ]
    for mark in marks:
        test = mark(test)
    return test


@pytest.fixture(autouse=True)
def no_cassettes_from_outside(settings, monkeypatch):
    for name in (llm.REPLAY_SETTING, llm.RECORD_SETTING):
        monkeypatch.delenv(name, raising=False)
        setattr(settings, name, None)
    monkeypatch.setattr(llm, "_sleep", lambda secs: None)


# Joining and checking the weights ------------------------------------------------------------------------


def make_parts(folder: Path, *chunks: bytes) -> tuple[list[Path], local_model.Expected]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for number, chunk in enumerate(chunks, 1):
        path = folder / f"part{number:02d}.bin"
        path.write_bytes(chunk)
        parts.append(path)
    whole = b"".join(chunks)
    return parts, local_model.Expected(size=len(whole), sha256=hashlib.sha256(whole).hexdigest())


def test_it_joins_the_parts_in_order_and_marks_the_file_checked(tmp_path):
    parts, expected = make_parts(tmp_path / "parts", b"GGUF", b"-two-", b"three" * 1000)

    path = local_model.model_path(parts=parts, folder=tmp_path / "cache", expected=expected)

    assert path == tmp_path / "cache" / local_model.GGUF_NAME
    assert path.read_bytes() == b"GGUF-two-" + b"three" * 1000
    assert (tmp_path / "cache" / f"{local_model.GGUF_NAME}.verified").is_file()
    # Nothing half-written is left beside it.
    assert sorted(p.name for p in path.parent.iterdir() if "partial" in p.name) == []


def test_a_checked_file_is_not_hashed_again(tmp_path, monkeypatch):
    parts, expected = make_parts(tmp_path / "parts", b"GGUF", b"data")
    folder = tmp_path / "cache"
    local_model.model_path(parts=parts, folder=folder, expected=expected)

    def fail(*args, **kwargs):
        raise AssertionError("the checked file was hashed or joined again")

    monkeypatch.setattr(local_model, "_hash_file", fail)
    monkeypatch.setattr(local_model, "join_parts", fail)
    assert local_model.model_path(parts=parts, folder=folder, expected=expected).is_file()


def test_a_cached_file_changed_since_its_check_is_rejoined(tmp_path):
    parts, expected = make_parts(tmp_path / "parts", b"GGUF", b"data")
    folder = tmp_path / "cache"
    path = local_model.model_path(parts=parts, folder=folder, expected=expected)
    path.write_bytes(b"GGUFdat!")  # same size, other bytes, new mtime

    path = local_model.model_path(parts=parts, folder=folder, expected=expected)

    assert path.read_bytes() == b"GGUFdata"


def test_it_refuses_parts_whose_hash_is_not_the_official_one(tmp_path):
    parts, expected = make_parts(tmp_path / "parts", b"GGUF", b"data")
    wrong = local_model.Expected(size=expected.size, sha256="0" * 64)

    with pytest.raises(local_model.LocalModelError, match="SHA-256 .* not the official 0{64}; refusing"):
        local_model.model_path(parts=parts, folder=tmp_path / "cache", expected=wrong)

    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f".{local_model.GGUF_NAME}.lock"]


def test_it_refuses_parts_of_the_wrong_total_size_before_writing(tmp_path):
    parts, expected = make_parts(tmp_path / "parts", b"GGUF", b"data")
    wrong = local_model.Expected(size=expected.size + 1, sha256=expected.sha256)

    with pytest.raises(local_model.LocalModelError, match="add up to 8 bytes, not the expected 9"):
        local_model.model_path(parts=parts, folder=tmp_path / "cache", expected=wrong)

    assert not (tmp_path / "cache" / local_model.GGUF_NAME).exists()


def test_concurrent_starts_join_once(tmp_path, monkeypatch):
    parts, expected = make_parts(tmp_path / "parts", b"GGUF", os.urandom(1 << 20))
    joins = []
    real_join = local_model.join_parts
    monkeypatch.setattr(local_model, "join_parts", lambda *a, **k: joins.append(1) or real_join(*a, **k))
    folder = tmp_path / "cache"
    threads = [
        threading.Thread(
            target=local_model.model_path, kwargs={"parts": parts, "folder": folder, "expected": expected}
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(joins) == 1
    assert (
        local_model.model_path(parts=parts, folder=folder, expected=expected).stat().st_size == expected.size
    )


def test_missing_parts_say_how_to_install_them(monkeypatch):
    def not_installed(name):
        raise local_model.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(local_model.metadata, "distribution", not_installed)

    with pytest.raises(
        local_model.LocalModelError, match=r"22 of 22 parts missing.*make run.*requirements-local"
    ):
        local_model.part_paths()


# Registration and the provider, with a fake llama.cpp model ----------------------------------------------


class FakeLlama:
    """Stands in for llama_cpp.Llama: counts words as tokens and notes overlapping generations."""

    metadata = {
        "tokenizer.chat_template": (
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    }

    draft_model = None

    def __init__(self, reply="Hello there.", delay=0.0):
        self.reply, self.delay = reply, delay
        self.calls, self.active, self.overlapped = [], 0, False
        self._lock = threading.Lock()

    def tokenize(self, text: bytes, add_bos=False, special=True):
        return list(range(len(text.split())))

    def create_completion(self, prompt, stopping_criteria=None, **options):
        with self._lock:
            self.active += 1
            self.overlapped |= self.active > 1
        reply = self.reply.pop(0) if isinstance(self.reply, list) else self.reply
        written = reply.split(" ")
        for count in range(1, len(written) + 1):  # one word a token, each after `delay`, as llama.cpp checks
            time.sleep(self.delay)
            if stopping_criteria is not None and stopping_criteria([], []):
                written = written[:count]
                break
        self.calls.append({"prompt_tokens": len(prompt), **options})
        with self._lock:
            self.active -= 1
        return {
            "choices": [{"text": " ".join(written), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(written)},
        }

    def reset(self):
        pass


@pytest.fixture
def fake_grammars(monkeypatch):
    """llama_cpp's grammar module, noting the grammars asked for (its real one: test_grammar_*)."""
    made = []
    module = type(sys)("llama_cpp.llama_grammar")
    module.JSON_GBNF = 'root ::= object\nobject ::= "{" "}"'
    module.LlamaGrammar = type("LlamaGrammar", (), {
        "from_string": staticmethod(lambda text, verbose: made.append(("gbnf", text)) or made[-1]),
        "from_json_schema": staticmethod(lambda text, verbose: made.append(("schema", text)) or made[-1]),
    })  # fmt: skip
    monkeypatch.setitem(sys.modules, "llama_cpp", type(sys)("llama_cpp"))
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_grammar", module)
    return made


@pytest.fixture
def fake_model(monkeypatch, fake_grammars):
    model = FakeLlama()
    monkeypatch.setattr(local_model, "get_model", lambda: model)
    monkeypatch.setattr(local_model, "require_installed", lambda: None)
    return model


def test_the_local_provider_is_registered_with_litellm_and_free():
    litellm = llm._litellm()

    assert [item["provider"] for item in litellm.custom_provider_map].count("local") == 1
    local_model.register(litellm)  # again: still once
    assert [item["provider"] for item in litellm.custom_provider_map].count("local") == 1
    assert llm._estimate_cost(local_model.MODEL_STRING, 1000, 1000) == Decimal(0)


@pytest.mark.django_db
def test_a_local_call_goes_through_the_ledger_with_its_tokens_and_no_cost(fake_model):
    reply = llm.complete(
        run=None, stage="smoke", model=local_model.MODEL_STRING, messages=MESSAGES, max_tokens=50
    )

    assert reply.text == "Hello there."
    assert reply.tokens_out == 2 and reply.tokens_in == fake_model.calls[0]["prompt_tokens"] > 0
    assert reply.cost_usd == Decimal(0)
    call = LLMCall.objects.get(pk=reply.call_id)
    assert (call.status, call.model, call.tokens_in, call.tokens_out) == (
        LLMCall.Status.OK,
        local_model.MODEL_STRING,
        reply.tokens_in,
        2,
    )


@pytest.mark.django_db
def test_a_local_calls_latency_is_the_models_work_not_its_wait_for_the_model(fake_model, monkeypatch):
    def slow_to_load():
        time.sleep(0.5)  # as the first call of a process loads the weights, or waits for another run's reply
        return fake_model

    monkeypatch.setattr(local_model, "get_model", slow_to_load)

    reply = llm.complete(run=None, stage="smoke", model=local_model.MODEL_STRING, messages=MESSAGES)

    assert LLMCall.objects.get(pk=reply.call_id).latency_ms < 400


@pytest.mark.django_db
def test_the_local_model_gets_its_system_message_and_chat_template(fake_model, monkeypatch):
    prompts = []
    real = local_model._chat_prompt
    monkeypatch.setattr(
        local_model, "_chat_prompt", lambda m, msgs: prompts.append(real(m, msgs)) or prompts[-1]
    )

    llm.complete(run=None, stage="smoke", model=local_model.MODEL_STRING, messages=MESSAGES, max_tokens=50)

    (prompt,) = prompts
    assert prompt.startswith("<|im_start|>system\nYou are a careful Python programmer")
    assert "root cause first" in prompt
    assert prompt.endswith("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n")
    assert fake_model.calls[0]["max_tokens"] == 50
    assert "<|im_end|>" in fake_model.calls[0]["stop"]


@pytest.mark.django_db
def test_a_reply_that_must_be_a_program_is_begun_with_its_first_section(fake_model, monkeypatch):
    prompts = []
    real = local_model._chat_prompt
    monkeypatch.setattr(
        local_model, "_chat_prompt", lambda m, msgs: prompts.append(real(m, msgs)) or prompts[-1]
    )
    fake_model.reply = "print('hi')\n=== FILE: requirements.txt ===\n=== METADATA ===\n{}\n"
    asking = [{"role": "user", "content": "Write it.\n\n=== FILE: main.py ===\n<the complete program>\n"}]

    reply = llm.complete(run=None, stage="generate", model=local_model.MODEL_STRING, messages=asking)
    llm.complete(run=None, stage="rate", model=local_model.MODEL_STRING, messages=MESSAGES)

    assert (
        reply.text
        == "=== FILE: main.py ===\nprint('hi')\n=== FILE: requirements.txt ===\n=== METADATA ===\n{}\n"
    )
    assert fake_model.calls[0]["prompt_tokens"] == len((prompts[0] + "=== FILE: main.py ===\n").split())
    assert fake_model.calls[1]["prompt_tokens"] == len(prompts[1].split())  # other stages: no start given


@pytest.mark.django_db
def test_a_fix_is_begun_with_its_root_cause_and_a_repair_is_sampled_warmer(fake_model):
    fake_model.reply = " a wrong path.\n=== FILE: main.py ===\nprint('hi')\n=== METADATA ===\n{}\n"
    fix_format = "=== FILE: main.py ===\n<the complete program>\n=== CHANGES ===\n<what changes>\n=== END ==="
    asking = [{"role": "user", "content": f"Fix it.\n\n{fix_format}\n"}]

    reply = llm.complete(run=None, stage="fix", model=local_model.MODEL_STRING, messages=asking)
    repair = [*asking, {"role": "assistant", "content": reply.text}, {"role": "user", "content": "Again."}]
    llm.complete(run=None, stage="fix", model=local_model.MODEL_STRING, messages=repair)

    assert reply.text.startswith("=== CHANGES ===\nRoot cause: a wrong path.\n=== FILE: main.py ===")
    first, second = fake_model.calls
    assert "=== END ===" in first["stop"]
    assert first["temperature"] == local_model.DEFAULT_TEMPERATURE
    assert second["temperature"] == local_model.REPAIR_TEMPERATURE


@pytest.mark.django_db
def test_a_fix_that_ends_after_its_root_cause_goes_on_with_the_program(fake_model):
    program = "import sys\nprint(1)\n=== FILE: requirements.txt ===\n\n=== METADATA ===\n{}\n"
    fake_model.reply = [" The import of minilib failed.\n", program]
    messages = [{"role": "user", "content": "Fix it.\n=== CHANGES ===\n=== FILE: main.py ===\nprint(0)\n"}]

    reply = llm.complete(run=None, stage="fix", model=local_model.MODEL_STRING, messages=messages)

    assert reply.text == (
        "=== CHANGES ===\nRoot cause: The import of minilib failed.\n\n=== FILE: main.py ===\n" + program
    )
    first, second = fake_model.calls
    assert second["prompt_tokens"] > first["prompt_tokens"]  # the first part and the marker, read back
    # The first part stops where the model would begin to copy the prompt's headings; the program may not.
    # Each part stops where the model would begin to copy the prompt's headings.
    for call in (first, second):
        assert "\nChanges made so far:" in call["stop"] and "=== END ===" in call["stop"]
    assert reply.tokens_out == len(" The import of minilib failed.\n".split(" ")) + len(program.split(" "))


@pytest.mark.django_db
def test_a_fix_that_gives_its_program_is_one_generation(fake_model):
    fake_model.reply = " a typo.\n\n=== FILE: main.py ===\nprint(1)\n=== METADATA ===\n{}\n"
    messages = [{"role": "user", "content": "Fix it.\n=== CHANGES ===\n=== FILE: main.py ===\nprint(0)\n"}]

    reply = llm.complete(run=None, stage="fix", model=local_model.MODEL_STRING, messages=messages)

    assert len(fake_model.calls) == 1 and reply.text.endswith(
        "=== FILE: main.py ===\nprint(1)\n=== METADATA ===\n{}\n"
    )


@pytest.mark.django_db
def test_a_program_that_ends_before_its_metadata_goes_on_with_it(fake_model):
    files = "print(1)\n=== FILE: requirements.txt ===\n\n=== FILE: runscript.sh ===\n"
    fake_model.reply = [files, '{"description": "d"}\n']
    messages = [{"role": "user", "content": "Write it.\n=== FILE: main.py ===\n<the complete program>\n"}]

    reply = llm.complete(run=None, stage="generate", model=local_model.MODEL_STRING, messages=messages)

    assert (
        reply.text
        == "=== FILE: main.py ===\n" + files.rstrip() + '\n\n=== METADATA ===\n{"description": "d"}\n'
    )
    assert len(fake_model.calls) == 2
    assert (
        "\nChanges made so far:" not in fake_model.calls[0]["stop"]
    )  # not a fix: its prompt has other headings


@pytest.mark.django_db
def test_a_system_message_of_the_caller_is_kept(fake_model, monkeypatch):
    prompts = []
    real = local_model._chat_prompt
    monkeypatch.setattr(
        local_model, "_chat_prompt", lambda m, msgs: prompts.append(real(m, msgs)) or prompts[-1]
    )
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]

    llm.complete(run=None, stage="smoke", model=local_model.MODEL_STRING, messages=messages)

    assert prompts[0].startswith("<|im_start|>system\nBe brief.<|im_end|>")


@pytest.mark.django_db
def test_the_reply_is_bounded_by_what_is_left_of_the_context_window(fake_model):
    words = local_model.N_CTX - 1000
    messages = [{"role": "user", "content": "word " * words}]

    llm.complete(run=None, stage="smoke", model=local_model.MODEL_STRING, messages=messages, max_tokens=5000)

    (call,) = fake_model.calls
    assert call["max_tokens"] == local_model.N_CTX - call["prompt_tokens"] < 1000


@pytest.mark.django_db
def test_a_prompt_longer_than_the_context_window_is_refused_once_not_retried(fake_model):
    messages = [{"role": "user", "content": "word " * local_model.N_CTX}]

    with pytest.raises(llm.LLMRefused, match="too many for the local model's context window of 16384"):
        llm.complete(run=None, stage="smoke", model=local_model.MODEL_STRING, messages=messages)

    assert fake_model.calls == []
    assert LLMCall.objects.filter(status=LLMCall.Status.ERROR).count() == 1


@pytest.mark.django_db
def test_json_mode_constrains_the_reply_with_a_grammar(fake_model, monkeypatch):
    grammars = []
    fake_grammar_module = type(sys)("llama_cpp.llama_grammar")
    fake_grammar_module.JSON_GBNF = "root ::= object"
    fake_grammar_module.LlamaGrammar = type(
        "LlamaGrammar", (), {"from_string": staticmethod(lambda text, verbose: grammars.append(text) or text)}
    )
    monkeypatch.setitem(sys.modules, "llama_cpp", type(sys)("llama_cpp"))
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_grammar", fake_grammar_module)

    llm.complete(run=None, stage="judge", model=local_model.MODEL_STRING, messages=MESSAGES, json_mode=True)

    assert grammars == ["root ::= object"]
    assert fake_model.calls[0]["grammar"] == "root ::= object"


@pytest.mark.django_db
def test_a_reply_schema_reaches_the_local_model_as_its_grammar(fake_model, fake_grammars):
    schema = parsing.ratings_schema(["a.py", "b.py"])

    llm.complete(run=None, stage="rate", model=local_model.MODEL_STRING, messages=MESSAGES, schema=schema)

    assert fake_grammars == [("schema", json.dumps(schema, sort_keys=True))]
    assert fake_model.calls[0]["grammar"] == fake_grammars[0]


@pytest.mark.django_db
def test_a_json_reply_about_a_program_is_not_begun_as_a_program(fake_model, fake_grammars):
    # Seen on a paper: its evaluation, whose prompt shows the program's files, came back as
    # "=== FILE: main.py ===" + the JSON, then a METADATA section holding the JSON again.
    fake_model.reply = '{"score": 4, "critiques": []}'
    showing = [
        {"role": "user", "content": "Score this program.\n" + reply_format(prepared=False, changes=False)}
    ]
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}

    reply = llm.complete(
        run=None, stage="evaluate", model=local_model.MODEL_STRING, messages=showing, schema=schema
    )

    assert reply.text == '{"score": 4, "critiques": []}'
    (call,) = fake_model.calls
    assert call["grammar"] == ("schema", json.dumps(schema, sort_keys=True))


@pytest.mark.django_db
def test_a_program_reply_and_its_continuation_are_held_to_the_format_by_grammars(fake_model, fake_grammars):
    files = "print(1)\n=== FILE: requirements.txt ===\n\n=== FILE: runscript.sh ===\n"
    fake_model.reply = [files, '{"description": "d"}\n']
    asking = [{"role": "user", "content": "Write it.\n" + reply_format(prepared=False, changes=False)}]

    llm.complete(run=None, stage="generate", model=local_model.MODEL_STRING, messages=asking)

    first, second = fake_model.calls
    assert first["grammar"] == ("gbnf", local_model.program_grammar(asking, after=local_model.PROGRAM_START))
    assert second["grammar"] == ("gbnf", local_model.program_grammar(asking, after="=== METADATA ===\n"))
    assert second["grammar"][1].startswith("files ::=") and "root ::= metadata" in second["grammar"][1]


@pytest.mark.django_db
def test_a_reply_not_finished_within_the_profiles_timeout_is_refused_once_not_retried(fake_model):
    fake_model.reply, fake_model.delay = "word " * 200, 0.01
    profile = load_profile("local", {"llm_timeout_secs": 0.3})
    run = services.run_submit(
        source="https://github.com/acme/x", profile_name="local", profile=profile, enqueue=False
    )

    started = time.monotonic()
    with pytest.raises(
        llm.LLMRefused, match=r"did not finish its reply within 0 s \(\d+ prompt tokens read, (\d+) written\)"
    ):
        llm.complete(run=run, stage="generate", model=local_model.MODEL_STRING, messages=MESSAGES)

    assert time.monotonic() - started < 1.5  # stopped at the deadline, not after all 200 tokens (2 s)
    assert len(fake_model.calls) == 1
    call = LLMCall.objects.get(run=run)
    assert call.status == LLMCall.Status.ERROR and "llm_timeout_secs" in call.error


@pytest.mark.django_db
def test_a_reply_finished_in_time_is_whole(fake_model):
    fake_model.reply, fake_model.delay = " ".join(["word"] * 20), 0.001

    reply = llm.complete(
        run=None, stage="smoke", model=local_model.MODEL_STRING, messages=MESSAGES, timeout=30
    )

    assert reply.text.split() == ["word"] * 20 and reply.tokens_out == 20


def test_generations_of_one_process_take_turns(fake_model):
    fake_model.delay = 0.05
    threads = [threading.Thread(target=local_model.generate, args=(MESSAGES,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(fake_model.calls) == 4
    assert not fake_model.overlapped


def test_the_model_is_loaded_once_per_process(monkeypatch):
    loads, asked = [], []

    def default_params():
        return types.SimpleNamespace(use_extra_bufts=True)

    bindings = type(sys)("llama_cpp.llama_cpp")
    bindings.llama_model_default_params = default_params

    class Llama:
        def __init__(self, **kwargs):
            time.sleep(0.05)
            # What llama.cpp's loader would read: the weights must not be repacked (see _plain_weight_buffers).
            kwargs["use_extra_bufts"] = bindings.llama_model_default_params().use_extra_bufts
            loads.append(kwargs)
            self.draft_model = None
            self._batch = types.SimpleNamespace(
                set_batch=lambda batch, n_past, logits_all: asked.append(logits_all)
            )

        def close(self):
            pass

    fake_llama_cpp = type(sys)("llama_cpp")
    fake_llama_cpp.Llama = Llama
    fake_llama_cpp.llama_cpp = bindings
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama_cpp)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", bindings)
    monkeypatch.setattr(local_model, "_model", None)
    monkeypatch.setattr(local_model, "require_installed", lambda: None)
    monkeypatch.setattr(local_model, "model_path", lambda: Path("/models/model.gguf"))

    threads = [threading.Thread(target=local_model.get_model) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    (kwargs,) = loads
    assert kwargs["model_path"] == "/models/model.gguf"
    assert kwargs["n_ctx"] == local_model.N_CTX and kwargs["n_threads"] == local_model.N_THREADS
    assert kwargs["use_extra_bufts"] is False
    assert bindings.llama_model_default_params is default_params, "the loader's defaults are restored"
    # Drafted from the prompt, with the logits of a draft's batch only: a prompt's are not kept.
    model = local_model.get_model()
    assert isinstance(model.prompt_lookup, local_model.PromptLookup)
    model._batch.set_batch(batch=list(range(local_model.DRAFT_MAX + 1)), n_past=0, logits_all=False)
    model._batch.set_batch(batch=list(range(512)), n_past=0, logits_all=False)
    assert asked == [True, False]


def test_prompt_lookup_proposes_what_followed_the_longest_latest_match():
    import numpy as np

    lookup = local_model.PromptLookup(start=3)
    #              a  b  c  d  e  f | a  b  c  x  y  z | ... a  b  c
    ids = np.array([1, 2, 3, 4, 5, 6, 1, 2, 3, 7, 8, 9, 0, 6, 1, 2, 3])
    assert lookup(ids).tolist() == [7, 8, 9], "the latest occurrence of (a, b, c), not the first"
    lookup = local_model.PromptLookup(start=3)
    ids = np.array([5, 1, 2, 3, 4, 6, 1, 1, 2, 3, 8, 9, 5, 5, 1, 2, 3])
    assert lookup(ids).tolist() == [4, 6, 1], "(5, a, b, c) is longer than (a, b, c): its continuation wins"
    assert local_model.PromptLookup()(np.array([1, 2, 3, 9, 1, 2])).tolist() == [], "two tokens: too weak"


def test_prompt_lookup_proposes_more_after_a_proposal_kept_whole_and_fewer_after_one_refused():
    import numpy as np

    program = list(range(100, 140))
    lookup = local_model.PromptLookup(start=4, most=8)
    reply = program[:3]  # the reply begins to copy the program it was shown

    def step(kept_all: bool):
        draft = lookup(np.array([*program, *reply])).tolist()
        # The model keeps the whole proposal and samples one more; or keeps none and writes its own token.
        reply.extend([*draft, program[len(reply) + len(draft)]] if kept_all else [999])
        return len(draft)

    assert [step(True) for _ in range(4)] == [4, 6, 8, 8]
    assert step(False) == 8
    assert lookup(np.array([*program, *reply])).tolist() == [], "the reply left the program: no match"
    assert lookup.length == 7, "after a refused proposal, one fewer"
    assert lookup.calls == 6


# The grammars, held against the real vocabulary ------------------------------------------------------------

PAPER_FIX_PROMPT = (
    "Fix it.\n\n=== FILE: main.py ===\nimport squares\n=== FILE: squares.py ===\ndef f(): pass\n\n"
    + reply_format(prepared=False, changes=True)
)


@pytest.fixture(scope="module")
def vocabulary():
    """The real model's vocabulary alone (no weights are read): enough to hold text to a grammar."""
    if not real_model_installed():
        pytest.skip("the local model (requirements-local.txt) is not installed")
    from llama_cpp import Llama

    return Llama(model_path=str(local_model.model_path()), vocab_only=True, verbose=False)


def allows(vocabulary, grammar: str, text: str, *, to_the_end: bool = True) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write `text` (and then stop), token by token."""
    import ctypes

    import llama_cpp

    vocab = vocabulary._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp could not parse the grammar"
    tokens = vocabulary.tokenize(text.encode(), add_bos=False, special=False)
    try:
        for token in [*tokens, llama_cpp.llama_vocab_eos(vocab)] if to_the_end else tokens:
            candidate = llama_cpp.llama_token_data(token, 0.0, 0.0)
            array = llama_cpp.llama_token_data_array(ctypes.pointer(candidate), 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if candidate.logit == float("-inf"):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.local_model
def test_the_program_grammar_takes_the_format_and_nothing_else(vocabulary):
    asking = [{"role": "user", "content": "Write it.\n\n" + reply_format(prepared=False, changes=False)}]
    grammar = local_model.program_grammar(asking, after=local_model.PROGRAM_START)
    reply = program(WORKING_MAIN.replace("log = [", 'html = """\n<html>\n==\n\n\n\n"""\nlog = ['))
    after_start = reply.split(local_model.PROGRAM_START, 1)[1]

    assert allows(vocabulary, grammar, after_start)
    assert allows(vocabulary, grammar, after_start.removesuffix("=== END ==="))  # or it stops at the object
    # What a 1.5B model was seen to write instead:
    assert not allows(vocabulary, grammar, "<the complete program>\n", to_the_end=False)
    assert not allows(vocabulary, grammar, '{"main.py": "print(1)"}\n')  # JSON, never the sections
    assert not allows(vocabulary, grammar, "print(1)\n=== METADATA ===\n", to_the_end=False)  # files left out
    echo = after_start.replace("=== FILE: runscript.sh ===", "=== FILE: main.py ===")
    assert not allows(vocabulary, grammar, echo)  # the program again, from its start
    placeholder = "print(1)\n=== FILE: requirements.txt ===\n<one pip requirement>\n"
    assert not allows(vocabulary, grammar, placeholder, to_the_end=False)
    unclosed = "print(1)\n=== FILE: requirements.txt ===\n<only packages main.py needs, or add kneed\n"
    assert not allows(vocabulary, grammar, unclosed, to_the_end=False)  # seen: 1,400 tokens of it
    assert allows(vocabulary, grammar, "if a\n<= 3\n< 3\n<b>bold</b> text\n", to_the_end=False)
    # Seen on a fix: a marker written wrong became a line of main.py, then blank lines until the limit.
    assert not allows(vocabulary, grammar, "print(1)\n===METADATA ===\n", to_the_end=False)
    assert not allows(vocabulary, grammar, "print(1)\n\n\n  \n\n", to_the_end=False)
    # Where a reply that stopped short goes on: the metadata object, then the end.
    rest = local_model.program_grammar(asking, after="=== METADATA ===\n")
    assert allows(vocabulary, rest, '{"description": "d"}\n=== END ===')
    assert not allows(vocabulary, rest, "Here it is:", to_the_end=False)


@pytest.mark.local_model
def test_a_fix_grammar_begins_with_the_root_cause_and_takes_only_the_files_the_prompt_shows(vocabulary):
    asking = [{"role": "user", "content": PAPER_FIX_PROMPT}]
    grammar = local_model.program_grammar(asking, after=local_model.FIX_START)
    files = "=== FILE: main.py ===\nimport squares\n=== FILE: requirements.txt ===\n\n=== FILE: runscript.sh ===\n\n"
    metadata = '=== METADATA ===\n{"description": "d"}\n'

    assert allows(vocabulary, grammar, f" a wrong name.\nIt is f.\n{files}{metadata}")
    with_module = f" a wrong name.\n{files}=== FILE: squares.py ===\ndef f(): return 1\n{metadata}"
    assert allows(vocabulary, grammar, with_module)
    assert not allows(vocabulary, grammar, with_module.replace("squares.py ===", "other.py ==="))
    assert not allows(vocabulary, grammar, " a wrong name.\n" + metadata)
    # Seen on filterpy: a root cause repeating one paragraph to the reply's limit. The change section is
    # a line of the cause and a few bounded lines; then main.py must come.
    paragraph = "The `main.py` file is also left unchanged as it is already provided. "
    assert not allows(vocabulary, grammar, " a wrong name." + paragraph * 7, to_the_end=False)
    assert not allows(vocabulary, grammar, " a wrong name.\n" + (paragraph + "\n") * 5, to_the_end=False)
    assert allows(vocabulary, grammar, f" a wrong name.\n\n{paragraph * 3}\n  - it is f\n{files}{metadata}")


@pytest.mark.local_model
def test_the_reply_schemas_become_grammars_that_llama_cpp_takes(vocabulary):
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    judge = json_schema_to_gbnf(json.dumps(parsing.JUDGEMENT_SCHEMA))
    reasons_first = {
        "explanation": "It calls the real function.",
        **json.loads(verdict(True).strip("`json\n")),
    }
    assert allows(vocabulary, judge, json.dumps(reasons_first))
    assert not allows(vocabulary, judge, "The program looks good to me.", to_the_end=False)
    assert not allows(vocabulary, judge, '{"faithful": "yes"', to_the_end=False)
    # Seen: a verdict without a word of why, or with a word only.
    # In the schema's own order, so that only the missing or too short explanation refuses them.
    without_reasons = '{"faithful": true, "accurate": true, "complete": true}'
    assert not allows(vocabulary, judge, without_reasons, to_the_end=False)
    assert not allows(vocabulary, judge, '{"explanation": "ok", "faithful": true', to_the_end=False)

    rating = json_schema_to_gbnf(json.dumps(parsing.ratings_schema(["a.py", "b.py"])))
    assert allows(vocabulary, rating, '[{"path": "a.py", "rating": 7, "reason": "The API."}]')
    assert not allows(vocabulary, rating, '[{"path": "c.py"', to_the_end=False)  # only the files asked about
    for schema in (
        paper_steps.OverallPlan,
        paper_steps.Architecture,
        paper_steps.LogicDesign,
        paper_steps.EvaluationReply,
    ):
        grammar = json_schema_to_gbnf(json.dumps(schema.model_json_schema()))
        assert allows(vocabulary, grammar, "{", to_the_end=False)


@needs_real_model
@pytest.mark.django_db
def test_a_real_program_reply_through_the_local_provider_has_the_format():
    asking = [{"role": "user", "content": "Write a program that prints 1. Answer with a JSON object, not "
               "in sections.\n\n" + reply_format(prepared=False, changes=False)}]  # fmt: skip

    reply = llm.complete(run=None, stage="generate", model=local_model.MODEL_STRING, messages=asking,
                         max_tokens=120, temperature=0.2)  # fmt: skip

    markers = [line for line in reply.text.splitlines() if line.startswith("=== ")]
    assert markers[:3] == [
        "=== FILE: main.py ===",
        "=== FILE: requirements.txt ===",
        "=== FILE: runscript.sh ===",
    ]
    assert not parsing.PLACEHOLDER_LINE.search(reply.text)
    if "=== METADATA ===" in markers:  # within 120 tokens, the model may not get that far
        assert parsing.parse_program(reply.text).files["main.py"].strip()


@needs_real_model
def test_a_real_reply_that_repeats_its_prompt_is_written_in_fewer_steps_than_tokens():
    program = (
        "import numpy as np\n\nvalues = np.linspace(0.0, 1.0, 11)\nsquares = values ** 2\n"
        "print('sum of squares', squares.sum())\n"
    )
    # A conversation that goes back to the model's own reply, as a repair does: drafts are proposed.
    asking = [
        {"role": "user", "content": "Write a program that sums the squares of 11 values from 0 to 1."},
        {"role": "assistant", "content": program},
        {"role": "user", "content": "Write the same program again, exactly, with one more line at its end "
         "that prints the mean of squares. Only the code."},
    ]  # fmt: skip

    generation = local_model.generate(asking, max_tokens=48, temperature=0.0)

    assert "squares = values ** 2" in generation.text
    # Prompt lookup: the lines it repeats were proposed whole and kept, more than one token a step.
    assert 0 < generation.steps < 0.7 * generation.completion_tokens, generation


def test_drafts_are_proposed_only_where_a_reply_repeats_a_program_of_its_prompt():
    first = [{"role": "user", "content": "Write a program."}]
    assert not local_model._repeats_a_program(first, local_model.PROGRAM_START)
    assert local_model._repeats_a_program(first, local_model.FIX_START)
    repair = [*first, {"role": "assistant", "content": "print(1)"}, {"role": "user", "content": "Again."}]
    assert local_model._repeats_a_program(repair, local_model.PROGRAM_START)


@needs_real_model
@pytest.mark.django_db
def test_a_real_verdict_through_the_local_provider_fits_its_schema():
    asking = [{"role": "user", "content": "Is `print(2 + 2)` a faithful example of Python's addition? "
               "Say it in prose, not JSON."}]  # fmt: skip

    reply = llm.complete(run=None, stage="judge", model=local_model.MODEL_STRING, messages=asking,
                         max_tokens=120, schema=parsing.JUDGEMENT_SCHEMA)  # fmt: skip

    assert isinstance(parsing.Judgement.model_validate_json(reply.text).faithful, bool)


# Not installed: one clear line --------------------------------------------------------------------------


@pytest.fixture
def not_installed(monkeypatch):
    monkeypatch.setattr(local_model, "llama_installed", lambda: False)


@pytest.mark.django_db
def test_without_the_extra_a_local_call_says_how_to_install_it(not_installed):
    with pytest.raises(llm.LLMRefused) as refused:
        llm.complete(run=None, stage="smoke", model=local_model.MODEL_STRING, messages=MESSAGES)

    message = str(refused.value)
    assert message == (
        "the local model needs llama-cpp-python, which is not installed; install it with `make run`, "
        "or `.venv/bin/pip install -r requirements-local.txt`"
    )
    (call,) = LLMCall.objects.all()  # one attempt, not retried
    assert call.status == LLMCall.Status.ERROR and "make run" in call.error


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_without_the_extra_a_local_run_ends_with_one_line_on_how_to_install_it(
    not_installed, tmp_path, settings
):
    settings.DISTILL_ALLOW_LOCAL_SOURCES = True
    repo = make_git_repo(tmp_path / "lib", {"README.md": "# lib\n", "lib.py": "def f():\n    return 1\n"})
    run = services.run_submit(
        source=str(repo), profile_name="local", profile=load_profile("local"), enqueue=False
    )

    run = services.run_until_finished(run_id=run.pk)

    assert run.status == Run.Status.ERROR
    assert "\n" not in run.error_information
    assert "LLM Provider NOT provided" not in run.error_information
    assert re.search(
        r"llama-cpp-python, which is not installed; install it with `make run`", run.error_information
    )
    assert "pip install -r requirements-local.txt" in run.error_information


# The real model -----------------------------------------------------------------------------------------


@needs_real_model
@pytest.mark.django_db
def test_the_real_model_answers_through_the_one_door():
    reply = llm.complete(
        run=None,
        stage="smoke",
        model=local_model.MODEL_STRING,
        messages=[{"role": "user", "content": "Write a Python function that adds two numbers. Code only."}],
        max_tokens=64,
        temperature=0,
    )

    assert reply.text.strip()
    assert reply.tokens_in > 20 and 0 < reply.tokens_out <= 64
    assert reply.cost_usd == Decimal(0)
    assert LLMCall.objects.get(pk=reply.call_id).tokens_out == reply.tokens_out


@needs_real_model
def test_the_real_model_stops_writing_at_its_deadline():
    started = time.monotonic()
    with pytest.raises(local_model.GenerationTimeout, match="within 2 s"):
        local_model.generate(
            [{"role": "user", "content": "Write a long Python module with twenty functions."}],
            max_tokens=2000,
            timeout=2,
        )

    # The model was perhaps loaded first (not counted); then reading the prompt, then two seconds.
    assert time.monotonic() - started < 60


OFFLINE_SCRIPT = """
import django, json, sys
django.setup()
from distill import llm, local_model
answer = llm._call_provider(
    stage="smoke", model=local_model.MODEL_STRING, timeout=300, json_mode=False, temperature=0,
    messages=[{"role": "user", "content": "Print hello in Python. Code only."}], max_tokens=24,
)
print(json.dumps({"text": answer.text, "tokens_in": answer.tokens_in, "tokens_out": answer.tokens_out}))
"""


def non_loopback_connections(trace: str) -> list[str]:
    """connect/sendto/sendmsg calls in an strace log to any internet address but loopback."""
    found = []
    for line in trace.splitlines():
        if not re.search(r"\b(connect|sendto|sendmsg)\(", line) or "AF_INET" not in line:
            continue
        for address in re.findall(r'inet_(?:addr|pton)\((?:AF_INET6?, )?"([^"]+)"', line):
            if not ipaddress.ip_address(address).is_loopback:
                found.append(line)
    return found


def test_the_trace_reader_tells_loopback_from_the_internet():
    trace = "\n".join(
        [
            '12 connect(3, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("93.184.216.34")}, 16) = -1',
            '12 connect(4, {sa_family=AF_INET, sin_port=htons(8000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            '12 connect(5, {sa_family=AF_INET6, sin6_port=htons(53), inet_pton(AF_INET6, "2001:db8::1", &sin6_addr)}, 28) = -1',
            '12 connect(6, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1',
        ]
    )

    assert [line.split("(")[1].split(",")[0] for line in non_loopback_connections(trace)] == ["3", "5"]


@needs_real_model
def test_the_real_model_loads_and_answers_without_opening_any_network_connection(tmp_path):
    """Every connect/sendto/sendmsg system call of the process and its threads, native code included, is
    traced while litellm imports and the model loads and generates; it runs without network, too."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    command = [sys.executable, "-c", OFFLINE_SCRIPT]
    trace_file = tmp_path / "trace.txt"
    strace = "strace -f -qq -e trace=connect,sendto,sendmsg -e signal=none -o".split()
    command = [*strace, str(trace_file), *command]
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-rn", *command]  # and no network to reach even if something tried
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "codedistiller_site.test_settings",
        "DATA_DIR": str(tmp_path),
    }
    env.pop("DISTILL_LLM_REPLAY", None)

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, done.stderr[-3000:]
    assert '"text": ""' not in done.stdout and '"tokens_out": 0' not in done.stdout, done.stdout
    assert non_loopback_connections(trace_file.read_text()) == []
