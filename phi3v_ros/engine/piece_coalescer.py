"""
Join streamed text pieces that come faster than a short interval into one message.

A small model on a CPU (or a big one on a fast GPU) decodes thousands of tokens per second; one
pipe message and one ROS publish per token then cost the node more CPU than the answer is worth to
a listener, and on a machine with few cores that CPU is taken from the model. The rule here:

* a piece is sent at once when at least `interval_s` has passed since the last send (so the first
  piece of an answer always goes out at once, and a model slower than one token per interval
  streams every piece as before);
* otherwise it waits and is sent, joined with the pieces after it, with the first piece that comes
  at least `interval_s` after the last send, or by flush() at the end of the answer.

Nothing is dropped or reordered: the pieces sent, joined, equal the pieces added, joined. A waiting
piece is late by at most `interval_s` plus one token's time. There is no timer thread: the decode
loop holds the GIL between tokens anyway, so a timer could not send earlier than the next token.
"""
from __future__ import annotations

import time
from typing import Callable, List

DEFAULT_INTERVAL_S = 0.02


class PieceCoalescer:
    def __init__(self, send: Callable[[str], None], interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._interval_s = interval_s
        self._clock = clock
        self._waiting: List[str] = []
        self._last_sent = float('-inf')
        self.messages = 0      # sends so far
        self.pieces = 0        # pieces added so far

    def add(self, piece: str) -> None:
        if not piece:
            return
        self.pieces += 1
        self._waiting.append(piece)
        now = self._clock()
        if now - self._last_sent >= self._interval_s:
            self._flush(now)

    def flush(self) -> None:
        """Send whatever waits (call it when the answer ends, however it ends)."""
        if self._waiting:
            self._flush(self._clock())

    def _flush(self, now: float) -> None:
        text = ''.join(self._waiting)
        self._waiting.clear()
        self._last_sent = now
        self.messages += 1
        self._send(text)
