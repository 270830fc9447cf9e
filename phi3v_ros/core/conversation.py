"""
Follow-up questions: which question continues the open conversation, and what ends it.

The worker keeps one conversation (engine.py, "Conversations"): the prompt with its images, and
every exchange since, in the model's KV cache. A follow-up continues it: it is answered about the
conversation's frames (not newer ones) and prefills only its own turn. This module decides, for
each question the dispatcher takes, whether it continues the open conversation, and remembers why
the last one ended, so that a question meant as a follow-up that starts anew can say why.

Opt-in and explicit:
- a request opens a conversation with "follow_ups": true and continues it with "follows": <the
  id of the conversation's latest request>;
- on the prompt topic, with follow_up_window > 0, every prompt may be followed, and a prompt
  within follow_up_window seconds of the previous answer continues its conversation.
A conversation ends at its follow_up_max-th follow-up, when its KV budget (follow_up_tokens) is
used up, when another question reaches the model, at ~/reset, a cancel or failure, a parameter
change, a worker restart, or when its frames are older than the question's max_image_age.

Threads: the dispatcher calls plan() and answered(); ROS callbacks call end() (~/reset,
parameters). _lock guards _open and _ended; nothing blocks under it.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Optional, Tuple

from phi3v_ros.frames.cameras import BoundFrame

PLAIN = '<prompt topic>'     # the key of the prompt topic's conversation
ENDED_KEPT = 16              # why the latest conversations ended, for follow-ups that name them


@dataclasses.dataclass(frozen=True)
class Conversation:
    """The open conversation: what its follow-ups are answered about."""

    key: str                      # the id of its latest request, or PLAIN
    frames: Tuple[BoundFrame, ...]
    missing: Tuple[str, ...]
    frames_bound_at: float        # time.monotonic() when the frames were bound (ages grow)
    follow_ups: int               # answered so far (0: only the opening)
    answered_at: float            # time.monotonic() of its latest answer
    worker_restarts: int          # the engine's restart count when it was opened

    def frames_now(self, now: float) -> Tuple[BoundFrame, ...]:
        """Return the conversation's frames with their ages as of now."""
        return tuple(dataclasses.replace(bound, age_s=bound.age_s + now - self.frames_bound_at)
                     for bound in self.frames)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do with one question."""

    continues: Optional[Conversation] = None   # continue this conversation
    keep: bool = False                         # keep the answer for follow-ups
    follows: Optional[str] = None              # what the question asked to follow (requests)
    meant_as_follow_up: bool = False
    new_because: str = ''                      # meant as a follow-up, answered anew: why
    asked: bool = False                        # the question asked for follow-ups (follow_ups,
    #                                            follows, or a prompt with follow_up_window on)
    epoch: int = 0                             # Conversations' when planned (end() counts up)
    frames_bound_at: float = 0.0               # a new question's: when its frames were bound


@dataclasses.dataclass(frozen=True)
class Note:
    """Where an answer stands in its conversation (the response's "conversation")."""

    follows: Optional[str]
    continued: bool
    follow_up: int          # 0: the opening
    new_because: str        # meant as a follow-up, answered anew: why
    open: bool  # noqa: A003 - a field of the wire format: the answer can be followed up


@dataclasses.dataclass(frozen=True)
class FollowUpOptions:
    """The node parameters of follow-ups."""

    window_s: float = 0.0       # prompt topic: a prompt this soon after an answer follows it
    max_follow_ups: int = 4
    tokens: int = 1024          # KV cache kept for all of a conversation's follow-ups

    @property
    def enabled(self) -> bool:
        return self.max_follow_ups > 0 and self.tokens > 0


class Conversations:
    """The open conversation (at most one: the worker keeps one) and why the last one ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Optional[Conversation] = None
        # why conversations ended, by the keys a follow-up may name (the latest few)
        self._ended: 'collections.OrderedDict[str, str]' = collections.OrderedDict()
        self._last_plain_answer_at: Optional[float] = None   # a prompt within the window follows
        # end() (another thread) counts this up: an answer planned before it opens nothing
        self._epoch = 0
        self._last_end_why = ''

    def _record_end(self, keys, why: str) -> None:
        """Remember why the conversation of these keys ended (under _lock)."""
        for key in keys:
            self._ended.pop(key, None)
            self._ended[key] = why
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    @property
    def open(self) -> Optional[Conversation]:   # noqa: A003 - what is open, for diagnostics
        with self._lock:
            return self._open

    def plan(self, request, options: FollowUpOptions, max_image_age_s: float,
             worker_restarts: int, now: Optional[float] = None) -> Plan:
        """
        Decide whether a question (request: a QARequest, or None for a prompt) continues.

        A question meant as a follow-up that cannot continue ends the open conversation here
        (the worker drops it when the question reaches it) and says why.
        """
        now = time.monotonic() if now is None else now
        if request is not None:
            asked = request.follow_ups or request.follows is not None
            keep = options.enabled and asked
            meant, key = request.follows is not None, request.follows
        else:
            asked = options.window_s > 0
            keep = options.enabled and options.window_s > 0
            with self._lock:
                last = self._last_plain_answer_at
            meant = keep and last is not None and now - last <= options.window_s
            key = PLAIN
        follows = request.follows if request is not None else None
        with self._lock:
            epoch = self._epoch
        if not meant:
            return Plan(keep=keep, follows=follows, asked=asked, epoch=epoch)
        with self._lock:
            open_ = self._open
            why = self._why_not(open_, key, options, max_image_age_s, worker_restarts, now)
            if why is None:
                return Plan(continues=open_, keep=keep, follows=follows, meant_as_follow_up=True,
                            asked=True, epoch=epoch)
            if open_ is not None and open_.key == key:
                self._open = None
                self._record_end((key,), why)
        return Plan(keep=keep, follows=follows, meant_as_follow_up=True, new_because=why,
                    asked=True, epoch=epoch)

    def could_not_continue(self, plan: Plan, why: str) -> Plan:
        """End plan's conversation, which the worker could not continue; return the fresh plan."""
        with self._lock:
            if self._open is plan.continues:
                self._open = None
            self._record_end((plan.continues.key,), why)
        return Plan(keep=plan.keep, follows=plan.follows, meant_as_follow_up=True,
                    new_because=why, asked=True, epoch=plan.epoch)

    def _why_not(self, open_: Optional[Conversation], key: str, options: FollowUpOptions,
                 max_image_age_s: float, worker_restarts: int, now: float) -> Optional[str]:
        """Why the question cannot continue open_ (None: it can); under _lock."""
        if not options.enabled:
            return 'follow-ups are off (follow_up_max or follow_up_tokens is 0)'
        if open_ is None or open_.key != key:
            if key in self._ended:
                return self._ended[key]
            if key == PLAIN:
                return 'no conversation of the prompt topic is open'
            return (f'request {key!r} is not the latest answer of an open conversation'
                    + (f' (that is {open_.key!r})' if open_ is not None and open_.key != PLAIN
                       else ''))
        if open_.follow_ups >= options.max_follow_ups:
            return f'it had its {options.max_follow_ups} follow-ups (follow_up_max)'
        if worker_restarts != open_.worker_restarts:
            return 'the inference worker was restarted'
        if max_image_age_s > 0:
            oldest = max((bound.age_s for bound in open_.frames_now(now)), default=0.0)
            if oldest > max_image_age_s:
                return (f'its frames are {oldest:.1f} s old, more than max_image_age '
                        f'({max_image_age_s:g} s)')
        return None

    def submitted(self, plan: Plan, ticket_id: int) -> None:
        """Note a question that reached the model: unless it continues it, a conversation ends."""
        if plan.continues is not None:
            return
        with self._lock:
            if self._open is not None:
                self._record_end((self._open.key,), f'another question (#{ticket_id}) reached '
                                                    'the model in between')
                self._open = None

    def answered(self, plan: Plan, key: str, result, frames: Tuple[BoundFrame, ...],
                 missing: Tuple[str, ...], frames_bound_at: float,
                 worker_restarts: int, now: Optional[float] = None) -> Tuple[int, bool]:
        """
        Record an answer; return (its follow-up number, whether it can be followed up).

        key: the request's id, or PLAIN. result: the engine's Result (continued,
        kept_tokens_left).
        """
        now = time.monotonic() if now is None else now
        continued = plan.continues is not None and result.continued
        number = plan.continues.follow_ups + 1 if continued else 0
        with self._lock:
            if key == PLAIN:
                self._last_plain_answer_at = now
            if plan.epoch != self._epoch:      # ended (~/reset, parameters) while answered
                if plan.keep:
                    self._record_end((key,), self._last_end_why)
                return number, False
            if plan.keep and result.ok and result.kept_tokens_left > 0:
                if continued:
                    self._open = dataclasses.replace(plan.continues, key=key,
                                                     follow_ups=number, answered_at=now)
                else:
                    self._open = Conversation(key, tuple(frames), tuple(missing),
                                              frames_bound_at, 0, now, worker_restarts)
                return number, True
            if plan.keep:
                self._open = None
                self._record_end((key,), 'its KV budget is used up (follow_up_tokens)')
            return number, False

    def failed(self, plan: Plan, key: str, why: str) -> None:
        """End the conversation of a question that reached the model and was not answered."""
        with self._lock:
            if plan.continues is not None or plan.keep:
                self._open = None
                keys = (key,) if plan.continues is None else (plan.continues.key, key)
                self._record_end(keys, why)

    def end(self, why: str) -> bool:
        """
        End the open conversation, and any a question being answered would open (~/reset, ...).

        True if one was open.
        """
        with self._lock:
            self._epoch += 1
            self._last_end_why = why
            open_, self._open = self._open, None
            if open_ is not None:
                self._record_end((open_.key,), why)
            return open_ is not None
