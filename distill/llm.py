"""The one door to LLMs: every call of the site goes through `complete`.

Three duties live here and nowhere else:
- the audit log and cost ledger: an `LLMCall` row is saved before each attempt and completed after, and
  the run's totals grow with it in the same transaction;
- the run's hard caps on cost and tokens, checked before each attempt: a call that would pass one is not
  made;
- retries: transient provider errors are retried a bounded number of times with backoff; permanent ones
  are not.

Replies come from litellm, or, when a replay cassette is configured, from a JSON file of recorded replies
(format: tests/cassettes/README.md). The replay raises litellm's own exception classes, so retries and
refusals go through exactly the same code as real errors. Settings (or environment variables):
`DISTILL_LLM_REPLAY` names a cassette to replay (a run's `config["replay"]` wins over it);
`DISTILL_LLM_RECORD` names a cassette to append real replies to.
"""

import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Literal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distill import local_model
from distill.models import LLMCall, Run

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
BACKOFF_BASE_SECS = 2.0
BACKOFF_MAX_SECS = 60.0
# A provider's retry-after hint is honoured, but a worker must not sleep for an hour on its word.
RETRY_AFTER_MAX_SECS = 120.0
# One attempt of a call without a run (a run's profile says `llm_timeout_secs`).
DEFAULT_TIMEOUT_SECS = 300.0

REPLAY_SETTING = "DISTILL_LLM_REPLAY"
RECORD_SETTING = "DISTILL_LLM_RECORD"

# Module-level so tests patch it and retries don't wait.
_sleep = time.sleep

_MICRO_DOLLAR = Decimal("0.000001")  # LLMCall.cost_usd and Run.cost_usd keep 6 decimal places


class LLMError(Exception):
    """Base of everything `complete` raises on purpose."""


class BudgetExceeded(LLMError):
    """The call was not made: it would pass the run's cost or token cap."""


class LLMUnavailable(LLMError):
    """Transient errors (rate limit, timeout, connection, 5xx) went on after the bounded retries."""


class LLMRefused(LLMError):
    """A permanent error (auth, bad request, unknown model, replay exhausted): retrying would not help."""


@dataclass
class LLMReply:
    text: str
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    call_id: int  # the LLMCall row


@dataclass
class _Answer:
    text: str
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    work_ms: int | None = None  # the provider's own timing of its work, when it gives one


@cache
def _litellm():
    """litellm takes seconds to import: load it on the first call, not when the site starts."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    # Token counts here are estimates for the caps; they must never wait on a tokenizer download.
    litellm.disable_hf_tokenizer_download = True
    local_model.register(litellm)  # `local/...` models: the offline default
    return litellm


def complete(
    *,
    run: Run | None,
    stage: str,
    model: str,
    messages: list[dict],
    iteration: int | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    timeout: float | None = None,
    json_mode: bool = False,
    schema: dict | None = None,
) -> LLMReply:
    """One completion, logged, capped and retried. Calls with `run=None` (a smoke test) have no caps.

    `timeout` (seconds per attempt) defaults to the run's profile's `llm_timeout_secs`. `schema`, the JSON
    schema of the reply, is sent to providers that constrain a reply to one (the local model compiles it
    into a grammar); the caller still parses the reply as if it had not been.

    Call it outside a transaction: the ledger rows must survive the caller's failure.
    Raises BudgetExceeded, LLMUnavailable or LLMRefused (all LLMError).
    """
    if timeout is None:
        timeout = float(
            (run.config.get("llm_timeout_secs") if run is not None else None) or DEFAULT_TIMEOUT_SECS
        )
    cassette = _replay_path(run)
    row = {"run": run, "iteration": iteration, "stage": stage, "model": model, "prompt": messages}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if run is not None:
            _check_caps(run, row=row, attempt=attempt, max_tokens=max_tokens)
        call = LLMCall.objects.create(**row, attempt=attempt, status=LLMCall.Status.PENDING)
        started = time.monotonic()
        try:
            if cassette:
                answer = _replay(cassette, call=call, model=model, messages=messages)
            else:
                answer = _call_provider(
                    stage=stage,
                    model=model,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    timeout=timeout,
                    json_mode=json_mode,
                    schema=schema,
                )
        except Exception as exc:
            _finish(call, started, error=exc)
            if isinstance(exc, LLMRefused):
                raise
            if not _is_transient(exc):
                raise LLMRefused(f"{model} refused the {stage} call: {_describe(exc)}") from exc
            if attempt == MAX_ATTEMPTS:
                raise LLMUnavailable(
                    f"{model} still failing after {attempt} attempts at the {stage} call: {_describe(exc)}"
                ) from exc
            delay = _retry_delay(exc, attempt)
            logger.warning(
                "LLM %s call to %s failed (attempt %d): %s; retrying in %.1fs",
                stage,
                model,
                attempt,
                _describe(exc),
                delay,
            )
            _sleep(delay)
            continue
        _finish(call, started, answer=answer)
        return LLMReply(answer.text, answer.tokens_in, answer.tokens_out, answer.cost_usd, call.pk)
    raise AssertionError("unreachable: the last attempt returns or raises")


# The ledger


def _finish(call: LLMCall, started: float, *, answer: _Answer | None = None, error: Exception | None = None):
    """Complete the attempt's row and add its spend to the run, together: the two must never disagree."""
    call.latency_ms = round((time.monotonic() - started) * 1000)
    if answer is not None and answer.work_ms is not None:
        call.latency_ms = answer.work_ms
    if answer is not None:
        call.status = LLMCall.Status.OK
        call.reply = answer.text
        call.tokens_in, call.tokens_out, call.cost_usd = answer.tokens_in, answer.tokens_out, answer.cost_usd
    else:
        call.status = LLMCall.Status.ERROR
        call.error = _describe(error)
    with transaction.atomic():
        call.save(
            update_fields=["status", "reply", "error", "tokens_in", "tokens_out", "cost_usd", "latency_ms"]
        )
        if call.run_id and answer is not None:
            # F() so that concurrent calls of one run (parallel file ratings) add up instead of overwriting.
            Run.objects.filter(pk=call.run_id).update(
                cost_usd=F("cost_usd") + answer.cost_usd,
                tokens_in=F("tokens_in") + answer.tokens_in,
                tokens_out=F("tokens_out") + answer.tokens_out,
            )


def _check_caps(run: Run, *, row: dict, attempt: int, max_tokens: int | None):
    """Refuse, with a `refused` row, a call whose estimate would pass the run's cost or token cap."""
    cost_cap = run.config.get("max_cost_usd")
    token_cap = run.config.get("max_total_tokens")
    if cost_cap is None and token_cap is None:
        return
    # Re-read: other workers of this run may have spent since this instance was loaded.
    spent = Run.objects.values("cost_usd", "tokens_in", "tokens_out").get(pk=run.pk)
    model = row["model"]
    prompt_tokens = _count_tokens(model, messages=row["prompt"])
    # Without max_tokens the reply's length is unknown; the estimate then counts the prompt only.
    reply_tokens = max_tokens or 0
    reason = None
    if token_cap is not None:
        used = spent["tokens_in"] + spent["tokens_out"]
        if used + prompt_tokens + reply_tokens > int(token_cap):
            reason = (
                f"token cap: the run has used {used} tokens of its {int(token_cap)}, "
                f"and this {row['stage']} call could use up to {prompt_tokens + reply_tokens} more"
            )
    if reason is None and cost_cap is not None:
        cap = Decimal(str(cost_cap))
        estimate = _estimate_cost(model, prompt_tokens, reply_tokens)
        if spent["cost_usd"] + estimate > cap:
            reason = (
                f"cost cap: the run has spent ${spent['cost_usd']} of its ${cap}, "
                f"and this {row['stage']} call could cost up to ${estimate}"
            )
    if reason:
        LLMCall.objects.create(**row, attempt=attempt, status=LLMCall.Status.REFUSED, error=reason)
        raise BudgetExceeded(reason)


def _count_tokens(model: str, *, messages: list[dict] | None = None, text: str | None = None) -> int:
    try:
        return int(_litellm().token_counter(model=model, messages=messages, text=text))
    except Exception:  # an odd model or message shape: a rough count serves an estimate
        if text is None:
            text = "".join(str(message.get("content", "")) for message in messages or [])
        return len(text) // 4


def _estimate_cost(model: str, prompt_tokens: int, reply_tokens: int) -> Decimal:
    try:
        prompt_cost, reply_cost = _litellm().cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=reply_tokens
        )
    except Exception:  # litellm has no price for this model (a local one, say): count it as free
        return Decimal(0)
    return _dollars(prompt_cost + reply_cost)


def _dollars(value) -> Decimal:
    return Decimal(str(value or 0)).quantize(_MICRO_DOLLAR, rounding=ROUND_HALF_UP)


# Errors and retries


def _is_transient(exc: Exception) -> bool:
    litellm = _litellm()
    transient = (
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )
    if isinstance(exc, transient):
        return True
    # Providers litellm maps only to its generic APIError still say what happened in the status code.
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in (408, 429) or status >= 500)


def _retry_delay(exc: Exception, attempt: int) -> float:
    hint = _retry_after(exc)
    if hint is not None:
        return min(max(hint, 0.0), RETRY_AFTER_MAX_SECS)
    # Exponential with jitter, so that parallel calls that failed together don't come back together.
    ceiling = min(BACKOFF_MAX_SECS, BACKOFF_BASE_SECS * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _retry_after(exc: Exception) -> float | None:
    headers = {}
    for source in (getattr(getattr(exc, "response", None), "headers", None), getattr(exc, "headers", None)):
        if source:
            headers.update({str(name).lower(): value for name, value in source.items()})
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except (TypeError, ValueError):  # an HTTP date: plain backoff will do
        pass
    return None


def _describe(exc: Exception) -> str:
    return _redact(f"{type(exc).__name__}: {exc}")


def _redact(text: str) -> str:
    """Provider errors sometimes quote a request; no key of ours may reach a row or a log."""
    for name, value in os.environ.items():
        if len(value) >= 8 and name.upper().endswith(("_KEY", "_TOKEN", "_SECRET")) and value in text:
            text = text.replace(value, f"<{name}>")
    return text


# The provider


def _call_provider(
    *,
    stage: str,
    model: str,
    messages: list[dict],
    max_tokens: int | None,
    temperature: float | None,
    timeout: float,
    json_mode: bool,
    schema: dict | None = None,
) -> _Answer:
    litellm = _litellm()
    if model.startswith(f"{local_model.PROVIDER}/"):
        try:  # one line on how to install it, rather than the error litellm would wrap around it
            local_model.require_installed()
        except local_model.LocalModelError as exc:
            raise LLMRefused(str(exc)) from None
    options = {}
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if temperature is not None:
        options["temperature"] = temperature
    if schema is not None and _supports_schema(model, schema):
        options["response_format"] = {"type": "json_schema", "json_schema": {"name": stage, "schema": schema}}
    elif (json_mode or _object(schema)) and _supports_json_mode(model):
        options["response_format"] = {"type": "json_object"}
    try:
        # max_retries=0: the retries are ours, counted and logged as rows, not hidden in the client.
        response = litellm.completion(
            model=model, messages=messages, timeout=timeout, max_retries=0, drop_params=True, **options
        )
    except Exception as exc:
        _record({"stage": stage, "model": model, "error": _error_kind(exc), "message": _redact(str(exc))})
        raise
    usage = getattr(response, "usage", None)
    tokens_in = getattr(usage, "prompt_tokens", None)
    tokens_out = getattr(usage, "completion_tokens", None)
    text = response.choices[0].message.content or ""
    answer = _Answer(
        text=text,
        tokens_in=tokens_in if tokens_in is not None else _count_tokens(model, messages=messages),
        tokens_out=tokens_out if tokens_out is not None else _count_tokens(model, text=text),
        cost_usd=_response_cost(response),
        work_ms=(getattr(response, "_hidden_params", None) or {}).get("work_ms"),
    )
    _record(
        {
            "stage": stage,
            "model": model,
            "reply": answer.text,
            "tokens_in": answer.tokens_in,
            "tokens_out": answer.tokens_out,
            "cost_usd": str(answer.cost_usd),
        }
    )
    return answer


def _supports_json_mode(model: str) -> bool:
    try:
        return "response_format" in (_litellm().get_supported_openai_params(model=model) or [])
    except Exception:  # a model litellm does not know: send plain text and let the prompt ask for JSON
        return False


def _supports_schema(model: str, schema: dict) -> bool:
    # Hosted providers take only an object at the root (OpenAI's structured outputs); a grammar takes any.
    local = model.startswith(f"{local_model.PROVIDER}/")
    try:
        return (local or _object(schema)) and bool(_litellm().supports_response_schema(model=model))
    except Exception:  # a model litellm does not know
        return False


def _object(schema: dict | None) -> bool:
    return schema is not None and schema.get("type") == "object"


def _response_cost(response) -> Decimal:
    try:
        return _dollars(_litellm().completion_cost(completion_response=response))
    except Exception:  # no known price (a local model): free as far as the ledger knows
        return Decimal(0)


# Record and replay


ErrorKind = Literal["rate_limit", "timeout", "connection", "server_error", "bad_request", "auth", "not_found"]


class CassetteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    model: str | None = None
    reply: str | None = None
    error: ErrorKind | None = None
    message: str | None = None  # an error's text, as the provider gave it
    retry_after: float | None = Field(None, ge=0)  # seconds, as a provider's retry-after header says
    tokens_in: int | None = Field(None, ge=0)
    tokens_out: int | None = Field(None, ge=0)
    cost_usd: Decimal | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _reply_or_error(self):
        if (self.reply is None) == (self.error is None):
            raise ValueError("each entry has either a reply or an error")
        return self


class Cassette(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replies: list[CassetteEntry]


def _setting(name: str) -> str | None:
    return getattr(settings, name, os.environ.get(name)) or None


def _replay_path(run: Run | None) -> Path | None:
    path = (run.config.get("replay") if run is not None else None) or _setting(REPLAY_SETTING)
    return Path(path) if path else None


# Calls without a run have no rows to count, so their replay position is kept here.
_positions_without_run: dict[tuple[str, str], int] = defaultdict(int)
_positions_lock = threading.Lock()


def _replay(path: Path, *, call: LLMCall, model: str, messages: list[dict]) -> _Answer:
    stage = call.stage
    entries = [entry for entry in _load_cassette(path).replies if entry.stage == stage]
    position = _replay_position(path, call)
    if position >= len(entries):
        raise LLMRefused(f"replay cassette {path} has no reply left for stage {stage}")
    entry = entries[position]
    if entry.model is not None and entry.model != model:
        raise LLMRefused(
            f"replay cassette {path}: reply {position + 1} of stage {stage} was recorded "
            f"for model {entry.model}, not {model}"
        )
    if entry.error:
        raise _replayed_error(entry, model)
    return _Answer(
        text=entry.reply,
        tokens_in=entry.tokens_in if entry.tokens_in is not None else _count_tokens(model, messages=messages),
        tokens_out=entry.tokens_out
        if entry.tokens_out is not None
        else _count_tokens(model, text=entry.reply),
        cost_usd=_dollars(entry.cost_usd),
    )


def _replay_position(path: Path, call: LLMCall) -> int:
    """Which of the stage's entries this attempt gets: one per earlier attempt of the stage.

    Counted from the run's rows made before this one, so a run resumed in another process continues at
    the right entry, and calls of other stages, even concurrent ones, don't shift it. Refused calls were
    never made and consumed nothing.
    """
    if call.run_id is None:
        with _positions_lock:
            position = _positions_without_run[(str(path), call.stage)]
            _positions_without_run[(str(path), call.stage)] += 1
            return position
    earlier = LLMCall.objects.filter(run_id=call.run_id, stage=call.stage, pk__lt=call.pk)
    return earlier.exclude(status=LLMCall.Status.REFUSED).count()


def _load_cassette(path: Path) -> Cassette:
    try:
        return Cassette.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise LLMRefused(f"replay cassette {path} cannot be read: {exc.strerror}") from None
    except ValidationError as exc:
        raise LLMRefused(f"replay cassette {path} is not a valid cassette: {exc}") from None


def _replayed_error(entry: CassetteEntry, model: str) -> Exception:
    """The real litellm exception, so that the replay takes the same except clauses as a provider."""
    litellm = _litellm()
    message = entry.message or f"replayed {entry.error}"
    where = {"llm_provider": "replay", "model": model}
    headers = {"retry-after": str(entry.retry_after)} if entry.retry_after is not None else None
    match entry.error:
        case "rate_limit":
            return litellm.RateLimitError(message, **where, headers=headers)
        case "timeout":
            return litellm.Timeout(message, **where, headers=headers)
        case "connection":
            return litellm.APIConnectionError(message, **where)
        case "server_error":
            return litellm.InternalServerError(message, **where)
        case "bad_request":
            return litellm.BadRequestError(message, **where)
        case "auth":
            return litellm.AuthenticationError(message, **where)
        case "not_found":
            return litellm.NotFoundError(message, **where)
    raise AssertionError(f"unknown error kind {entry.error}")


def _error_kind(exc: Exception) -> ErrorKind | None:
    """The cassette name of a real error, so a recorded run replays its failures too."""
    litellm = _litellm()
    kinds = [
        (litellm.RateLimitError, "rate_limit"),
        (litellm.Timeout, "timeout"),
        (litellm.APIConnectionError, "connection"),
        (litellm.AuthenticationError, "auth"),
        (litellm.PermissionDeniedError, "auth"),
        (litellm.NotFoundError, "not_found"),
    ]
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind
    return "server_error" if _is_transient(exc) else "bad_request"


_record_lock = threading.Lock()


def _record(entry: dict):
    """Append one real reply or error to the record cassette, if recording: a real run becomes a test."""
    path = _setting(RECORD_SETTING)
    if not path:
        return
    path = Path(path)
    with _record_lock:
        try:
            cassette = json.loads(path.read_text()) if path.exists() else {"replies": []}
        except (OSError, ValueError):
            logger.exception("record cassette %s cannot be read; not recording", path)
            return
        cassette["replies"].append(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside it and rename, so a crash mid-write leaves the old cassette whole.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
            json.dump(cassette, out, indent=2, ensure_ascii=False)
            out.write("\n")
        os.replace(out.name, path)
