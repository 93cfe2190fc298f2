"""What prompt-lookup decoding saves the local model: recorded prompts replayed with and without drafts.

    .venv/bin/python bench/prompt_lookup.py DB [--stages generate fix judge] [--calls ID ...] [--max-tokens 700]

DB is the db.sqlite3 of a run's data folder, e.g. the folder bench/local_model.py prints at its end: each
recorded LLM call of the given stages has its prompt replayed through distill.local_model.generate (the
real model, on this CPU) twice in a row, drafts off then on, from an empty model state each time so that
both read the whole prompt. Prints per call: tokens written, the model's steps of writing (fewer than
the tokens where drafts were kept), reading and writing seconds, and the writing speed both ways; then
per stage the ratio of writing seconds and of whole-call seconds (off / on, > 1 is a saving). The pairs
run back to back, so a ratio survives a busy machine better than either figure; sampling is the same,
but the drafts' batches change the logits in their last bits, so the two replies may differ.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="a run data folder's db.sqlite3 with recorded LLM calls")
    parser.add_argument("--stages", nargs="+", default=["generate", "fix", "judge"])
    parser.add_argument("--calls", nargs="+", type=int, help="only these recorded calls (their ids)")
    parser.add_argument("--max-tokens", type=int, default=700, help="the most each reply writes")
    parser.add_argument("--rounds", type=int, default=1, help="pairs per call")
    args = parser.parse_args()

    from distill import local_model

    local_model.require_installed()
    model = local_model.get_model()
    drafts = model.prompt_lookup
    marks = ",".join("?" * len(args.stages))
    with sqlite3.connect(args.db) as db:
        calls = db.execute(
            f"select id, stage, prompt from distill_llmcall where status = 'ok' and stage in ({marks}) "
            "order by id",
            args.stages,
        ).fetchall()
    calls = [call for call in calls if not args.calls or call[0] in args.calls]
    print(f"{len(calls)} recorded calls of {', '.join(args.stages)} in {args.db}", flush=True)
    print(f"{'call':>5} {'stage':<9} {'drafts':<6} {'read':>5} {'read s':>7} {'wrote':>5} {'steps':>5}"
          f" {'write s':>8} {'write t/s':>9}")  # fmt: skip
    ratios: dict[str, list[tuple[float, float]]] = {}
    for pk, stage, prompt in calls:
        messages = json.loads(prompt)
        for _ in range(args.rounds):
            seconds = {}
            for label, draft in (("off", None), ("on", drafts)):
                model.prompt_lookup = draft  # "on": where generate() drafts (fixes and repairs)
                model.reset()  # both read the whole prompt
                g = local_model.generate(messages, max_tokens=args.max_tokens, seed=1)
                writing = g.seconds - g.prompt_seconds
                seconds[label] = (writing, g.seconds)
                print(f"{pk:>5} {stage:<9} {label:<6} {g.prompt_read:>5} {g.prompt_seconds:>7.1f}"
                      f" {g.completion_tokens:>5} {g.steps or g.completion_tokens:>5} {writing:>8.1f}"
                      f" {g.completion_tokens / writing if writing else 0:>9.2f}", flush=True)  # fmt: skip
            ratios.setdefault(stage, []).append(
                (seconds["off"][0] / seconds["on"][0], seconds["off"][1] / seconds["on"][1])
            )
    model.prompt_lookup = drafts
    print("\nstage      pairs  writing off/on (median)  whole call off/on (median)")
    for stage, pairs in ratios.items():
        print(f"{stage:<10} {len(pairs):>5}  {statistics.median(w for w, _ in pairs):>23.2f}"
              f"  {statistics.median(c for _, c in pairs):>26.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
