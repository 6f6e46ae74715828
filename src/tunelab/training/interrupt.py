"""Ctrl-C and SIGTERM while training: the step under way finishes, the loop saves a checkpoint at that step, and
only then does the run stop (KeyboardInterrupt, or `errors.Terminated` for SIGTERM), so that `--resume` goes on
from exactly where it was stopped rather than from the last periodic checkpoint. A second signal stops at once.

Signals are deferred this way in the main thread only, where Python delivers them; elsewhere (a thread of a web
interface, say) nothing changes."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import Terminated

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


@contextmanager
def deferred_stop() -> Iterator[Callable[[], int | None]]:
    """Within: SIGINT/SIGTERM are noted, not acted on; the function given says which arrived (None: none)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[int] = []

    def note(signum, frame) -> None:
        if received:  # asked twice: the user means now
            raise stop_for(signum)
        received.append(signum)

    previous = {s: signal.signal(s, note) for s in SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
