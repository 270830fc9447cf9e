"""Earlier question/answer pairs, kept as text (Phi-3-vision cannot re-read earlier images)."""
from __future__ import annotations

import collections
import threading
from typing import Tuple

from phi3v_ros.engine.generation import Turn


class ConversationHistory:
    """
    The last max_turns question/answer pairs; thread-safe.

    clear() starts a new conversation: an answer to a question asked before it (still being
    generated while ~/reset was called) is not added afterwards. turns() returns the epoch that
    add() must be given back for that.
    """

    def __init__(self, max_turns: int = 0) -> None:
        self._turns: 'collections.deque[Turn]' = collections.deque()
        self._lock = threading.Lock()
        self._epoch = 0
        self.max_turns = max_turns

    @property
    def max_turns(self) -> int:
        return self._max_turns

    @max_turns.setter
    def max_turns(self, value: int) -> None:
        if value < 0:
            raise ValueError('history_turns must be >= 0')
        with self._lock:
            self._max_turns = value
            while len(self._turns) > value:
                self._turns.popleft()

    def add(self, question: str, answer: str, epoch: int) -> None:
        """Append a turn, unless the history was cleared since turns() returned epoch."""
        with self._lock:
            if self._max_turns == 0 or epoch != self._epoch:
                return
            self._turns.append(Turn(question, answer))
            while len(self._turns) > self._max_turns:
                self._turns.popleft()

    def turns(self) -> Tuple[Tuple[Turn, ...], int]:
        """Return the turns and the epoch they belong to."""
        with self._lock:
            return tuple(self._turns), self._epoch

    def clear(self) -> None:
        with self._lock:
            self._turns.clear()
            self._epoch += 1
