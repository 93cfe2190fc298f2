import json
from decimal import Decimal

import litellm
import pytest

from distill import llm
from distill.models import LLMCall, Run

MESSAGES = [{"role": "user", "content": "Write a small example program."}]


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Retries call the patched sleep; the list holds the delays they asked for."""
    delays = []
    monkeypatch.setattr(llm, "_sleep", delays.append)
    return delays


@pytest.fixture(autouse=True)
def no_cassettes_from_outside(settings, monkeypatch):
    for name in (llm.REPLAY_SETTING, llm.RECORD_SETTING):
        monkeypatch.delenv(name, raising=False)
        setattr(settings, name, None)


def write_cassette(tmp_path, *replies, name="cassette.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"replies": list(replies)}))
    return path


def make_run(cassette=None, **config):
    if cassette is not None:
        config["replay"] = str(cassette)
    return Run.objects.create(source_url="https://github.com/example/repo", profile="test", config=config)


def complete(run, stage="generate", model="test-model", **kwargs):
    return llm.complete(run=run, stage=stage, model=model, messages=MESSAGES, **kwargs)


@pytest.mark.django_db
def test_it_returns_a_replayed_reply_and_records_it(tmp_path):
    cassette = write_cassette(
        tmp_path,
        {
            "stage": "generate",
            "reply": "print('hi')",
            "tokens_in": 120,
            "tokens_out": 40,
            "cost_usd": "0.0012",
        },
    )
    run = make_run(cassette)

    reply = complete(run, iteration=1)

    assert reply.text == "print('hi')"
    assert (reply.tokens_in, reply.tokens_out, reply.cost_usd) == (120, 40, Decimal("0.0012"))
    call = LLMCall.objects.get(pk=reply.call_id)
    assert call.run == run
    assert (call.stage, call.model, call.iteration, call.attempt) == ("generate", "test-model", 1, 1)
    assert call.status == LLMCall.Status.OK
    assert call.prompt == MESSAGES
    assert call.reply == "print('hi')"
    assert (call.tokens_in, call.tokens_out, call.cost_usd) == (120, 40, Decimal("0.0012"))
    assert call.latency_ms is not None
    run.refresh_from_db()
    assert (run.tokens_in, run.tokens_out, run.cost_usd) == (120, 40, Decimal("0.0012"))


@pytest.mark.django_db
def test_the_run_totals_add_up_over_calls(tmp_path):
    cassette = write_cassette(
        tmp_path,
        {"stage": "rate", "reply": "7", "tokens_in": 100, "tokens_out": 1, "cost_usd": "0.001"},
        {"stage": "rate", "reply": "3", "tokens_in": 50, "tokens_out": 2, "cost_usd": "0.0005"},
    )
    run = make_run(cassette)

    complete(run, stage="rate")
    complete(run, stage="rate")

    run.refresh_from_db()
    assert (run.tokens_in, run.tokens_out, run.cost_usd) == (150, 3, Decimal("0.0015"))


@pytest.mark.django_db
def test_it_counts_tokens_and_costs_nothing_when_the_cassette_gives_no_figures(tmp_path):
    run = make_run(write_cassette(tmp_path, {"stage": "generate", "reply": "a reply of a few words"}))

    reply = complete(run)

    assert reply.tokens_in > 0
    assert reply.tokens_out > 0
    assert reply.cost_usd == 0


@pytest.mark.django_db
def test_it_replays_each_stage_in_its_own_order(tmp_path):
    cassette = write_cassette(
        tmp_path,
        {"stage": "generate", "reply": "generate 1"},
        {"stage": "generate", "reply": "generate 2"},
        {"stage": "judge", "reply": "judge 1"},
        {"stage": "judge", "reply": "judge 2"},
    )
    run = make_run(cassette)

    texts = [complete(run, stage=stage).text for stage in ("judge", "generate", "judge", "generate")]

    assert texts == ["judge 1", "generate 1", "judge 2", "generate 2"]


@pytest.mark.django_db
def test_a_resumed_run_continues_at_the_next_entry_of_the_stage(tmp_path):
    cassette = write_cassette(
        tmp_path,
        {"stage": "fix", "reply": "fix 1"},
        {"stage": "fix", "reply": "fix 2"},
        {"stage": "fix", "reply": "fix 3"},
    )
    run = make_run(cassette)
    # What an earlier process (since killed) left behind: two fix calls made, one call not made.
    for _ in range(2):
        LLMCall.objects.create(run=run, stage="fix", model="test-model", status=LLMCall.Status.OK)
    LLMCall.objects.create(run=run, stage="fix", model="test-model", status=LLMCall.Status.REFUSED)
    LLMCall.objects.create(run=run, stage="judge", model="test-model", status=LLMCall.Status.OK)

    assert complete(Run.objects.get(pk=run.pk), stage="fix").text == "fix 3"


@pytest.mark.django_db
def test_it_retries_a_rate_limit_then_succeeds(tmp_path, sleeps):
    cassette = write_cassette(
        tmp_path, {"stage": "rate", "error": "rate_limit"}, {"stage": "rate", "reply": "8"}
    )
    run = make_run(cassette)

    reply = complete(run, stage="rate")

    assert reply.text == "8"
    calls = list(LLMCall.objects.filter(run=run).order_by("id"))
    assert [(c.attempt, c.status) for c in calls] == [(1, "error"), (2, "ok")]
    assert "RateLimitError" in calls[0].error
    assert calls[0].latency_ms is not None
    assert reply.call_id == calls[1].pk
    assert len(sleeps) == 1
    assert 0 < sleeps[0] <= llm.BACKOFF_BASE_SECS


@pytest.mark.django_db
def test_it_honours_a_retry_after_hint(tmp_path, sleeps):
    cassette = write_cassette(
        tmp_path,
        {"stage": "rate", "error": "rate_limit", "retry_after": 7},
        {"stage": "rate", "error": "rate_limit", "retry_after": 100000},
        {"stage": "rate", "reply": "8"},
    )

    complete(make_run(cassette), stage="rate")

    assert sleeps == [7.0, llm.RETRY_AFTER_MAX_SECS]


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["rate_limit", "timeout", "connection", "server_error"])
def test_it_gives_up_on_transient_errors_after_the_bounded_attempts(tmp_path, sleeps, error):
    cassette = write_cassette(tmp_path, *[{"stage": "judge", "error": error}] * (llm.MAX_ATTEMPTS + 1))
    run = make_run(cassette)

    with pytest.raises(llm.LLMUnavailable, match=f"after {llm.MAX_ATTEMPTS} attempts"):
        complete(run, stage="judge")

    calls = LLMCall.objects.filter(run=run).order_by("id")
    assert [c.attempt for c in calls] == list(range(1, llm.MAX_ATTEMPTS + 1))
    assert {c.status for c in calls} == {"error"}
    assert len(sleeps) == llm.MAX_ATTEMPTS - 1
    assert sleeps == sorted(sleeps)  # the backoff grows; the jitter stays within each step
    run.refresh_from_db()
    assert (run.tokens_in, run.tokens_out, run.cost_usd) == (0, 0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["bad_request", "auth", "not_found"])
def test_it_does_not_retry_a_permanent_error(tmp_path, sleeps, error):
    cassette = write_cassette(
        tmp_path, {"stage": "generate", "error": error}, {"stage": "generate", "reply": "x"}
    )
    run = make_run(cassette)

    with pytest.raises(llm.LLMRefused, match="refused the generate call"):
        complete(run)

    call = LLMCall.objects.get(run=run)
    assert (call.attempt, call.status) == (1, "error")
    assert sleeps == []


@pytest.mark.django_db
def test_it_does_not_make_a_call_that_would_pass_the_cost_cap(tmp_path):
    run = make_run(write_cassette(tmp_path, {"stage": "generate", "reply": "x"}), max_cost_usd="1.00")
    # Spent by another worker since `run` was loaded: the cap must see the database, not the instance.
    Run.objects.filter(pk=run.pk).update(cost_usd=Decimal("0.9995"), tokens_in=10, tokens_out=5)

    # gpt-4o-mini has a known price: 10,000 reply tokens could cost about $0.006.
    with pytest.raises(llm.BudgetExceeded, match=r"cost cap: the run has spent \$0.999500 of its \$1.00"):
        complete(run, model="gpt-4o-mini", max_tokens=10_000)

    call = LLMCall.objects.get(run=run)
    assert call.status == LLMCall.Status.REFUSED
    assert call.error.startswith("cost cap")
    run.refresh_from_db()
    assert (run.cost_usd, run.tokens_in, run.tokens_out) == (Decimal("0.9995"), 10, 5)


@pytest.mark.django_db
def test_it_refuses_once_the_recorded_spend_reaches_the_cost_cap(tmp_path):
    cassette = write_cassette(
        tmp_path,
        {"stage": "generate", "reply": "x", "tokens_in": 100, "tokens_out": 10, "cost_usd": "0.5"},
        {"stage": "generate", "reply": "y", "cost_usd": "0.01"},
    )
    run = make_run(cassette, max_cost_usd=0.5)

    complete(run, model="gpt-4o-mini")
    with pytest.raises(llm.BudgetExceeded, match="cost cap"):
        complete(run, model="gpt-4o-mini")

    assert [c.status for c in LLMCall.objects.filter(run=run)] == ["ok", "refused"]


@pytest.mark.django_db
def test_it_does_not_make_a_call_that_would_pass_the_token_cap(tmp_path):
    cassette = write_cassette(
        tmp_path,
        {"stage": "rate", "reply": "5", "tokens_in": 900, "tokens_out": 50},
        {"stage": "rate", "reply": "6"},
    )
    run = make_run(cassette, max_total_tokens=1000)
    complete(run, stage="rate")

    with pytest.raises(llm.BudgetExceeded, match="token cap: the run has used 950 tokens of its 1000"):
        complete(run, stage="rate", max_tokens=100)

    assert [c.status for c in LLMCall.objects.filter(run=run)] == ["ok", "refused"]
    run.refresh_from_db()
    assert run.tokens_in + run.tokens_out == 950


@pytest.mark.django_db
def test_a_refused_call_does_not_use_up_a_replay_entry(tmp_path):
    cassette = write_cassette(
        tmp_path, {"stage": "rate", "reply": "first"}, {"stage": "rate", "reply": "second"}
    )
    run = make_run(cassette, max_total_tokens=1000)
    with pytest.raises(llm.BudgetExceeded):
        complete(run, stage="rate", max_tokens=5000)

    assert complete(run, stage="rate", max_tokens=10).text == "first"


@pytest.mark.django_db
def test_it_refuses_when_the_cassette_has_no_reply_left_for_the_stage(tmp_path):
    cassette = write_cassette(tmp_path, {"stage": "generate", "reply": "x"}, {"stage": "judge", "reply": "y"})
    run = make_run(cassette)
    complete(run)

    with pytest.raises(
        llm.LLMRefused, match=f"replay cassette {cassette} has no reply left for stage generate"
    ):
        complete(run)

    assert LLMCall.objects.filter(run=run).count() == 2


@pytest.mark.django_db
def test_it_refuses_a_reply_recorded_for_another_model(tmp_path):
    run = make_run(write_cassette(tmp_path, {"stage": "generate", "model": "gpt-4o", "reply": "x"}))

    with pytest.raises(llm.LLMRefused, match="recorded for model gpt-4o, not test-model"):
        complete(run)


@pytest.mark.django_db
def test_it_refuses_a_malformed_cassette(tmp_path):
    run = make_run(write_cassette(tmp_path, {"stage": "generate", "reply": "x", "error": "auth"}))

    with pytest.raises(llm.LLMRefused, match="not a valid cassette"):
        complete(run)


@pytest.mark.django_db
def test_the_cassette_may_come_from_the_setting(tmp_path, settings):
    settings.DISTILL_LLM_REPLAY = str(
        write_cassette(tmp_path, {"stage": "generate", "reply": "from setting"})
    )

    assert complete(make_run()).text == "from setting"


@pytest.mark.django_db
def test_a_call_without_a_run_has_no_caps_and_keeps_its_place_in_memory(tmp_path, settings):
    settings.DISTILL_LLM_REPLAY = str(
        write_cassette(
            tmp_path,
            {"stage": "smoke", "reply": "one", "tokens_in": 10**9, "cost_usd": "1000"},
            {"stage": "smoke", "reply": "two"},
        )
    )

    assert [complete(None, stage="smoke").text for _ in range(2)] == ["one", "two"]
    assert LLMCall.objects.filter(run=None, stage="smoke", status="ok").count() == 2


def model_response(text, *, model="gpt-4o-mini", prompt_tokens=12, completion_tokens=3):
    return litellm.ModelResponse(
        model=model,
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


@pytest.mark.django_db
def test_record_mode_writes_a_cassette_that_replays_the_same_replies(tmp_path, settings, monkeypatch):
    recorded = tmp_path / "recorded" / "run.json"
    settings.DISTILL_LLM_RECORD = str(recorded)
    provider_replies = iter(
        [
            litellm.RateLimitError("slow down", llm_provider="openai", model="gpt-4o-mini"),
            model_response("the program"),
            model_response('{"faithful": true}'),
        ]
    )
    sent = []

    def fake_completion(**kwargs):
        sent.append(kwargs)
        reply = next(provider_replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(litellm, "completion", fake_completion)
    live = make_run()
    first = complete(live, model="gpt-4o-mini", timeout=30, max_tokens=500)
    second = complete(live, stage="judge", model="gpt-4o-mini", json_mode=True)

    assert sent[0]["timeout"] == 30 and sent[0]["max_tokens"] == 500
    assert sent[2]["response_format"] == {"type": "json_object"}
    assert first.cost_usd > 0
    entries = json.loads(recorded.read_text())["replies"]
    assert [(e["stage"], e.get("error"), e.get("reply")) for e in entries] == [
        ("generate", "rate_limit", None),
        ("generate", None, "the program"),
        ("judge", None, '{"faithful": true}'),
    ]

    monkeypatch.setattr(litellm, "completion", lambda **kwargs: pytest.fail("replay called the provider"))
    settings.DISTILL_LLM_RECORD = None
    replayed = make_run(recorded)
    again = complete(replayed, model="gpt-4o-mini")
    assert (again.text, again.tokens_in, again.tokens_out, again.cost_usd) == (
        first.text,
        first.tokens_in,
        first.tokens_out,
        first.cost_usd,
    )
    assert complete(replayed, stage="judge", model="gpt-4o-mini").text == second.text
    assert [c.status for c in replayed.llm_calls.order_by("id")] == ["error", "ok", "ok"]


def test_json_mode_is_off_for_a_model_litellm_does_not_know():
    assert llm._supports_json_mode("gpt-4o-mini")
    assert not llm._supports_json_mode("no-such-provider/model")


@pytest.mark.django_db
def test_no_api_key_reaches_the_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-key-1234")
    cassette = write_cassette(
        tmp_path,
        {
            "stage": "generate",
            "error": "auth",
            "message": "Incorrect API key provided: sk-secret-test-key-1234",
        },
    )

    with pytest.raises(llm.LLMRefused) as refused:
        complete(make_run(cassette))

    call = LLMCall.objects.get()
    assert "sk-secret-test-key-1234" not in call.error
    assert "<OPENAI_API_KEY>" in call.error
    assert "sk-secret-test-key-1234" not in str(refused.value)
