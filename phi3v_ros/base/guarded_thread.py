"""
Long-lived threads that survive their own bugs and say so.

Every long-lived thread of the package (the engine client's monitor, the dispatcher) runs its loop
body through start_guarded: an exception in one pass is logged with its traceback, counted in
ThreadHealth (which /diagnostics reports as ERROR for a while) and the loop goes on after a short
pause that grows while the error repeats. A thread that ends anyway (a BaseException such as
SystemExit, or a bug in the guard itself) is marked dead in ThreadHealth; the node then exits with
code 1 so that launch's `respawn` (or systemd's Restart=) starts it again, instead of running on
without the thread.
"""
from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from typing import Callable, List, Optional

# How long an internal error keeps /diagnostics at ERROR after it happened.
RECENT_ERROR_WINDOW_S = 60.0
_FIRST_PAUSE_S = 0.05
_MAX_PAUSE_S = 2.0


@dataclasses.dataclass(frozen=True)
class InternalError:
    thread: str
    text: str             # 'ValueError: ...', one line
    at: float             # time.monotonic()


class ThreadHealth:
    """What went wrong inside the package's own threads; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error_count = 0
        self.last_error: Optional[InternalError] = None
        self._dead: List[str] = []

    def record_error(self, thread: str, exc: BaseException) -> InternalError:
        error = InternalError(thread, f'{type(exc).__name__}: {exc}', time.monotonic())
        with self._lock:
            self.error_count += 1
            self.last_error = error
        return error

    def mark_dead(self, thread: str) -> None:
        with self._lock:
            self._dead.append(thread)

    @property
    def dead_threads(self) -> List[str]:
        with self._lock:
            return list(self._dead)

    def recent_error(self, window_s: float = RECENT_ERROR_WINDOW_S) -> Optional[InternalError]:
        """Return the last internal error if it happened within window_s, else None."""
        error = self.last_error
        if error is None or time.monotonic() - error.at > window_s:
            return None
        return error


def start_guarded(name: str, step: Callable[[], None], stop: threading.Event,
                  health: ThreadHealth, log: Callable[[str], None]) -> threading.Thread:
    """Start a daemon thread that calls step() until stop is set, surviving its exceptions."""
    def run() -> None:
        pause = _FIRST_PAUSE_S
        try:
            while not stop.is_set():
                try:
                    step()
                    pause = _FIRST_PAUSE_S
                except Exception as exc:  # noqa: BLE001 - the guard: one bad pass, not the thread
                    health.record_error(name, exc)
                    _safe_log(log, f'internal error in thread {name} (it goes on): '
                                   f'{traceback.format_exc()}')
                    stop.wait(pause)
                    pause = min(_MAX_PAUSE_S, pause * 2)
        finally:
            if not stop.is_set():
                health.mark_dead(name)
                _safe_log(log, f'thread {name} ended unexpectedly')

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _safe_log(log: Callable[[str], None], text: str) -> None:
    try:
        log(text)
    except Exception:  # noqa: BLE001 - a broken logger must not end the thread it reports on
        pass
