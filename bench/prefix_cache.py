"""The local model's reading and writing speed, and what a shared prompt prefix and the grammars cost or save.

    .venv/bin/python bench/prefix_cache.py [--context-tokens 2400] [--max-tokens 96]

Three calls through distill.local_model.generate (the real model, on this CPU), each printed with its
prompt tokens, the tokens llama.cpp actually read (the rest came from the previous call's state), reading
and writing tokens/s, and wall time:

1. a program prompt as the pipeline sends it now: the run's context (repository, purpose, files) first;
2. a fix prompt with the same context first: only its own part is read;
3. the same fix prompt in the old order (the changing part before the files), after call 1 again.

Then the same small program reply with and without its grammar, and a judge verdict with and without its
JSON schema, for the grammars' cost in writing speed. The context is real text of about
--context-tokens tokens (this repository's distill/pipeline sources), as the local profile's file budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-tokens", type=int, default=2400, help="size of the shared context")
    parser.add_argument("--max-tokens", type=int, default=96, help="tokens written per call")
    args = parser.parse_args()

    from bench import django_setup

    django_setup.setup("bench-prefix-cache-")
    from distill import local_model
    from distill.pipeline import parsing, program, prompts, survey

    local_model.require_installed()
    started = time.monotonic()
    local_model.get_model()
    print(f"model loaded in {time.monotonic() - started:.1f} s ({local_model.N_THREADS} threads)\n")

    sources = "\n".join(p.read_text() for p in sorted((ROOT / "distill" / "pipeline").glob("*.py")))
    files = survey.truncate_to_tokens(sources, args.context_tokens)
    context = prompts.render("context", title="codedistiller", purpose="Distils repositories.", files=files)
    task = "Write a small example program that uses this repository.\n\n" + program.reply_format(
        prepared=False, changes=False
    )
    fix = "The example program below did not pass: NameError: name 'json' is not defined.\n\n" + task

    def call(label: str, user: str, **options):
        result = local_model.generate(
            [{"role": "user", "content": user}],
            max_tokens=args.max_tokens,
            temperature=0.2,
            seed=1,
            **options,
        )
        writing = result.seconds - result.prompt_seconds
        print(
            f"{label:<44} prompt {result.prompt_tokens:>5}  read {result.prompt_read:>5}"
            f" ({result.prompt_read / result.prompt_seconds if result.prompt_seconds else 0:6.1f} t/s)"
            f"  wrote {result.completion_tokens:>4} ({result.completion_tokens / writing if writing else 0:5.1f} t/s)"
            f"  {result.seconds:6.1f} s",
            flush=True,
        )
        return result

    print("A shared prefix")
    call("1. program prompt, context first", f"{context}\n{task}")
    call("2. fix prompt, context first (now)", f"{context}\n{fix}")
    call("   program prompt again", f"{context}\n{task}")
    call("3. fix prompt, changing part first (before)", f"{fix}\n\n{context}")

    print("\nThe grammars' cost in writing speed (a short prompt, nothing shared)")
    short = "Write a tiny program that prints the mean of [1, 2, 3].\n\n" + program.reply_format(
        prepared=False, changes=False
    )
    call("program reply, with its grammar", short)
    real_grammar = local_model._grammar
    local_model._grammar = lambda **kwargs: None
    try:
        call("program reply, without (before)", short + "\n")
        call(
            "judge verdict, plain (before)",
            "Judge: is 2 + 2 = 4 computed right? Reply with the JSON verdict.",
        )
    finally:
        local_model._grammar = real_grammar
    call(
        "judge verdict, with its JSON schema",
        "Judge: is 2 + 2 = 4 computed right? Reply with the JSON verdict. ",
        json_schema=parsing.JUDGEMENT_SCHEMA,
    )


if __name__ == "__main__":
    main()
