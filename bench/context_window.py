"""What a larger context window costs the local model: reading time and memory at 4k, 8k and 16k tokens.

    .venv/bin/python bench/context_window.py [--windows 4096 8192 16384]

For each window, the model is loaded with that n_ctx and reads one prompt that fills it (less 700
tokens for a reply): prints the seconds, tokens per second and the process's peak memory. The prompt is
this project's own source. Needs requirements-local.txt installed; on two shared cores a 16k prompt takes
many minutes. The local profile's context_tokens (distill/profiles/local.json) is chosen from these figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", nargs="+", type=int, default=[4096, 8192, 16384])
    args = parser.parse_args()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as distill.local_model loads it
    from llama_cpp import Llama

    from distill import local_model

    text = "\n".join(path.read_text() for path in sorted((ROOT / "distill").rglob("*.py")))
    for window in args.windows:
        with local_model._plain_weight_buffers():
            model = Llama(
                model_path=str(local_model.model_path()), n_ctx=window, n_threads=local_model.N_THREADS,
                n_threads_batch=local_model.N_THREADS, n_batch=512, verbose=False,
            )  # fmt: skip
        tokens = model.tokenize(text.encode(), add_bos=False)[: window - 700]
        started = time.monotonic()
        model.eval(tokens)
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(
            f"n_ctx {window:>6}: read {len(tokens):>6} tokens in {seconds:7.1f} s"
            f" = {len(tokens) / seconds:5.1f} tokens/s; peak memory {peak} MB",
            flush=True,
        )
        model.close()


if __name__ == "__main__":
    main()
