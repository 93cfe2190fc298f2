"""The live tail of a running program, saved to the database while it runs so pages can show it."""

import threading
import time
from collections.abc import Callable

from distill.models import Iteration

TAIL_CHARS = 64 * 1024  # what a page needs; the whole output is saved when the program ends
FLUSH_SECS = 1.0


class LiveOutput:
    def __init__(self, *, iteration_id: int, should_cancel: Callable[[], bool]):
        self.iteration_id = iteration_id
        self._should_cancel = should_cancel
        self._lock = threading.Lock()
        # "install" is the install phase's merged output (runscript.sh), shown until the program starts.
        self._tails = {"stdout": "", "stderr": "", "install": ""}
        self._dirty = False
        self._flushed_at = 0.0

    def on_output(self, stream: str, text: str) -> None:
        # May be called from the sandbox's reader threads: only buffer here, write from should_cancel.
        with self._lock:
            self._tails[stream] = (self._tails[stream] + text)[-TAIL_CHARS:]
            self._dirty = True

    def should_cancel(self) -> bool:
        """Polled by the sandbox about twice a second: the moment to save the tail and look for a cancel."""
        now = time.monotonic()
        if now - self._flushed_at >= FLUSH_SECS:
            self._flushed_at = now
            self.flush()
            return self._should_cancel()
        return False

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            tails, self._dirty = dict(self._tails), False
        Iteration.objects.filter(pk=self.iteration_id).update(
            stdout=tails["stdout"], stderr=tails["stderr"], install_log=tails["install"]
        )

    def close(self) -> None:
        self.flush()
