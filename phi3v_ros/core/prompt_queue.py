"""Prompts waiting for the one engine: a bounded queue with a policy for when it is full."""
from __future__ import annotations

import collections
import threading
from typing import Callable, Deque, Generic, List, Optional, TypeVar

BUSY_POLICIES = ('reject', 'drop_oldest')

T = TypeVar('T')


class PromptQueue(Generic[T]):
    def __init__(self, max_size: int, policy: str = 'reject') -> None:
        self._items: Deque[T] = collections.deque()
        self._changed = threading.Condition()
        self._closed = False
        self.configure(max_size, policy)

    def configure(self, max_size: int, policy: str) -> None:
        """Change the bound and policy; prompts already waiting keep their place."""
        if max_size < 1:
            raise ValueError('max_queue must be >= 1')
        if policy not in BUSY_POLICIES:
            raise ValueError(
                f'busy_policy must be one of {", ".join(BUSY_POLICIES)}, not {policy!r}')
        with self._changed:
            self.max_size, self.policy = max_size, policy

    def put(self, item: T) -> Optional[T]:
        """
        Queue item.

        Returns the item that lost its place when full (item itself under 'reject').
        """
        with self._changed:
            if self._closed:
                return item
            loser = None
            if len(self._items) >= self.max_size:
                if self.policy == 'reject':
                    return item
                loser = self._items.popleft()
            self._items.append(item)
            self._changed.notify()
            return loser

    def get(self, timeout_s: Optional[float] = None) -> Optional[T]:
        """Return the oldest item, waiting up to timeout_s; None on timeout or when closed."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._items or self._closed, timeout_s):
                return None
            return self._items.popleft() if self._items else None

    def remove(self, matches: Callable[[T], bool]) -> Optional[T]:
        """Take the first waiting item that matches out of the queue; None if none does."""
        with self._changed:
            for item in self._items:
                if matches(item):
                    self._items.remove(item)
                    return item
        return None

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> List[T]:
        """Refuse new items, wake the waiting consumer, and hand back what was still waiting."""
        with self._changed:
            self._closed = True
            items, self._items = list(self._items), collections.deque()
            self._changed.notify_all()
            return items
