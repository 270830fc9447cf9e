"""
The question-answering service behind the node, without ROS: prompts in, one reply each out.

A prompt is validated on arrival, waits in a bounded queue while the engine is busy or loading,
gets the latest fresh frame of every camera bound to it when its turn comes (cameras.py), and is
answered by the engine in the worker process. Every prompt gets exactly one reply: the answer,
or a sentence starting with ERROR_PREFIX.

Threads (the concurrency model):
- ROS callbacks call ask(), cancel(), reset_history(), configure(): they never block on the
  engine; ask() replies at once to a prompt it refuses (from the caller's thread).
- The dispatcher thread ('phi3v-dispatcher', guarded: see guarded_thread.py) takes one prompt at
  a time, binds the frames to it, submits it to the engine and waits for the result. Every wait it
  does is bounded (engine_wait_timeout, image_wait_timeout, and for the result: no progress for
  the engine's stall_timeout plus RESULT_GRACE_S) and ends in an ERROR reply; an unexpected
  exception while serving a prompt is that prompt's ERROR reply ('internal error').
- self._lock guards counters, _current (the prompt being served: its engine request id and
  whether it was cancelled), so that ~/cancel stops that very request and never the next one,
  and _open_ids (the ids of the requests waiting or being answered: ids are unique among them).

Requests (interface/requests.py) share the queue, the policies and every guarantee with plain
prompts: a QARequest rides on its Ticket, its options apply to it alone (cameras, max_new_tokens
up to the node's, max_crops, max_image_age, the answer's format), and a format's answer is
checked (answers.py) before the reply says answered; requests use no history.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple

from phi3v_ros.base.errors import EngineError, ImageConversionError, PromptError
from phi3v_ros.base.guarded_thread import start_guarded, ThreadHealth
from phi3v_ros.core.answers import AnswerError, check_answer
from phi3v_ros.core.conversation import Conversations, FollowUpOptions, Note, PLAIN, Plan
from phi3v_ros.core.history import ConversationHistory
from phi3v_ros.core.prompt_queue import PromptQueue
from phi3v_ros.engine.engine_client import EngineState
from phi3v_ros.engine.generation import GenerationSettings, Request, Result, StopReason
from phi3v_ros.engine.prompt import validate_question
from phi3v_ros.frames.cameras import BoundFrame, Cameras, CamerasNotReady
from phi3v_ros.frames.frame_cache import Frame
from phi3v_ros.interface.replies import ERROR_PREFIX
from phi3v_ros.interface.requests import QARequest

# How long past the engine's own stall timeout the dispatcher waits for a sign of progress before
# it gives up on a request (only reached when the engine client's monitor is not doing its job).
RESULT_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True)
class QAOptions:
    """The request policies; every field is a node parameter of the same name (seconds as *_s)."""

    max_image_age_s: float = 0.0        # 0 = any age
    image_wait_timeout_s: float = 2.0
    engine_wait_timeout_s: float = 60.0     # for the model to be loaded (or restarted)
    allow_text_only: bool = False
    max_queue: int = 4
    busy_policy: str = 'reject'
    max_prompt_chars: int = 4000
    history_turns: int = 0
    system_prompt: str = ''
    settings: GenerationSettings = GenerationSettings()
    follow_ups: FollowUpOptions = FollowUpOptions()     # follow_up_window, _max, _tokens


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: int  # noqa: A003 - the prompt's number, a public field (reply.ticket.id: node, tests)
    question: str
    received: float      # time.monotonic()
    request: Optional[QARequest] = None     # a request's options; None for a plain prompt


@dataclasses.dataclass(frozen=True)
class Reply:
    """
    What is published for one prompt.

    outcome: 'answered', 'rejected' (never processed) or 'failed'.
    """

    ticket: Ticket
    text: str
    outcome: str
    result: Optional[Result] = None
    frames: Tuple[BoundFrame, ...] = ()     # one per camera, in image order; () for text only
    # cameras answered without (allow_text_only: stale or silent when the prompt was taken)
    missing: Tuple[str, ...] = ()
    value: object = None    # a request with a format: the checked value of the answer
    # follow-ups: where the answer stands in its conversation (None: not in one)
    conversation: Optional[Note] = None
    # Where the node's own time went, in seconds (see VisionQA._serve), plus 'stream_messages'
    # (a count).
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == 'answered'


@dataclasses.dataclass
class Counters:
    """Prompts and requests: received = answered + rejected + failed once all are replied to."""

    received: int = 0
    answered: int = 0
    rejected: int = 0
    failed: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                              compare=False)

    def count_refused(self) -> None:
        """Count one received and refused at once (by the shell: malformed, node inactive)."""
        with self._lock:
            self.received += 1
            self.rejected += 1

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def count(self, outcome: str) -> None:
        """Count one reply: outcome 'answered', 'rejected' or 'failed'."""
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)


class _Cancelled(Exception):
    pass


class _Current:
    """The prompt the dispatcher serves; fields guarded by VisionQA._lock."""

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.request_id: Optional[int] = None   # the engine's, once submitted
        self.cancelled = False
        self.cancelled_by = ''
        self.replied = False


class _Failed(Exception):
    """A taken prompt cannot be answered; the message is the reply's sentence (without prefix)."""


class _Refused(Exception):
    """A request's options cannot be had here; the message is the reply's sentence."""


class VisionQA:
    """
    Owns the queue and the dispatcher thread; the engine and the cameras are given.

    convert_frame(frame, slot) returns the RGB array of a camera's frame; slot is the image's
    place in the request (0, 1, ...), for a converter that writes into per-image buffers.
    """

    def __init__(self, engine, cameras: Cameras,
                 convert_frame: Callable[[Frame, int], object],
                 on_reply: Callable[[Reply], None],
                 on_piece: Callable[[Ticket, str], None] = lambda ticket, piece: None,
                 options: QAOptions = QAOptions(),
                 log: Callable[[str], None] = lambda text: None,
                 health: Optional[ThreadHealth] = None,
                 result_grace_s: float = RESULT_GRACE_S,
                 counters: Optional[Counters] = None,
                 ids: Optional[Iterator[int]] = None) -> None:
        self._engine = engine
        self._cameras = cameras
        self._convert_frame = convert_frame
        self._on_reply = on_reply
        self._on_piece = on_piece
        self._log = log
        self._ids = ids if ids is not None else itertools.count(1)   # shared across VisionQAs
        self._queue: PromptQueue[Ticket] = PromptQueue(options.max_queue, options.busy_policy)
        self._history = ConversationHistory(options.history_turns)
        self._conversations = Conversations()
        self._options = options
        self._health = health or ThreadHealth()
        self._result_grace_s = result_grace_s
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._close_reason = 'the node is shutting down.'
        self._current: Optional[_Current] = None
        self._open_ids: set = set()
        self.counters = counters if counters is not None else Counters()
        self.last_result: Optional[Result] = None
        self.last_frames: Tuple[BoundFrame, ...] = ()   # the frames of the last answer
        self._thread: Optional[threading.Thread] = None

    # -- called from ROS callbacks --------------------------------------------------------------

    def start(self) -> None:
        self._thread = start_guarded('phi3v-dispatcher', self._dispatch_one, self._closing,
                                     self._health, self._log)

    def ask(self, text: str, request: Optional[QARequest] = None) -> Ticket:
        """
        Take a prompt, or a request's question with its options; never blocks.

        Refusals are replied to at once, from the caller's thread.
        """
        self.counters.count_received()
        ticket = Ticket(next(self._ids), text, time.monotonic(), request)
        try:
            ticket = dataclasses.replace(
                ticket, question=validate_question(text, self._options.max_prompt_chars))
            if request is not None:
                self._check_request(request)
        except (PromptError, _Refused) as exc:
            self._reply(ticket, f'{exc}.', 'rejected')
            return ticket
        if self._closing.is_set():
            self._reply(ticket, self._close_reason, 'rejected')
            return ticket
        if request is not None:
            with self._lock:
                if request.id in self._open_ids:
                    duplicate = True
                else:
                    duplicate = False
                    self._open_ids.add(request.id)
            if duplicate:
                self._reply(ticket, f'a request with id {request.id!r} is already waiting or '
                                    'being answered: ids must be unique among them.', 'rejected',
                            keep_id=True)
                return ticket
        loser = self._queue.put(ticket)
        if loser is ticket and self._closing.is_set():    # closed since the check above
            self._reply(ticket, self._close_reason, 'rejected')
        elif loser is ticket:
            self._reply(ticket, f'busy: {self._queue.max_size} prompts are already waiting '
                                '(busy_policy reject); ask again later.', 'rejected')
        elif loser is not None:
            self._reply(loser, 'dropped from the queue for a newer prompt (busy_policy '
                               'drop_oldest).', 'rejected')
        return ticket

    def _check_request(self, request: QARequest) -> None:
        """Raise _Refused saying why a request's options cannot be had here."""
        unknown = [name for name in request.cameras if name not in self._cameras.names]
        if unknown:
            raise _Refused(f'cameras {", ".join(unknown)} are not subscribed here; the node\'s '
                           f'cameras are {", ".join(self._cameras.names)}')
        ceiling = self._options.settings.max_new_tokens
        if request.max_new_tokens is not None and request.max_new_tokens > ceiling:
            raise _Refused(f'max_new_tokens {request.max_new_tokens} is more than the node '
                           f'allows ({ceiling}, its max_new_tokens parameter)')

    def cancel_request(self, request_id: str) -> bool:
        """
        Cancel the request of that id: the one being answered, or one still waiting.

        Its one reply says it was cancelled. False when no such request is waiting or being
        answered (already answered, or never seen).
        """
        with self._lock:
            current = self._current
            serving = (current is not None and current.ticket.request is not None
                       and current.ticket.request.id == request_id and not current.replied)
        if serving:
            return self.cancel(by='its client cancelled the request')
        waiting = self._queue.remove(
            lambda ticket: ticket.request is not None and ticket.request.id == request_id)
        if waiting is None:
            return False
        self._reply(waiting, 'cancelled by its client before it was answered.', 'rejected')
        return True

    def cancel(self, by: str = '~/cancel was called') -> bool:
        """
        Stop the prompt being processed (its reply says it was cancelled, and by what).

        False if there is none, or its reply is already out (its answer was complete: a client
        that saw the answer and then cancels must hear "nothing to cancel").
        """
        with self._lock:
            current = self._current
            if current is None or current.replied:
                return False
            current.cancelled = True
            current.cancelled_by = by
            request_id = current.request_id
        if request_id is not None:     # else _run sees the flag before or right after submitting
            self._engine.cancel(request_id)
        return True

    def reset_history(self) -> None:
        """Forget the history and end the open conversation (~/reset)."""
        self._history.clear()
        self.end_conversation('the conversation was reset (~/reset)')

    def end_conversation(self, why: str) -> None:
        """End the open conversation (or one being opened) and free what the worker keeps."""
        self._conversations.end(why)
        self._engine.end_conversation()    # after the answer in flight, if any: in order

    def configure(self, options: QAOptions) -> None:
        """Apply changed parameters; they take effect from the next prompt taken."""
        self._queue.configure(options.max_queue, options.busy_policy)
        self._history.max_turns = options.history_turns
        if options != self._options:
            self.end_conversation("the node's parameters changed")
        self._options = options

    @property
    def conversation(self):
        """Return what is open for follow-ups (a conversation.Conversation), or None."""
        return self._conversations.open

    @property
    def options(self) -> QAOptions:
        return self._options

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def close(self, reason: str = 'the node is shutting down.') -> None:
        """
        Stop taking prompts: the waiting ones get an ERROR reply, the current one is cancelled.

        reason is their reply's sentence. Never blocks. Then close the engine (which ends the
        request in flight), or not (a deactivation keeps it), and join().
        """
        self._close_reason = reason
        self._closing.set()
        for ticket in self._queue.close():
            self._reply(ticket, reason, 'rejected')
        self.cancel()
        self.end_conversation(reason.rstrip('.'))    # a deactivation keeps the worker: free it

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def join(self, timeout_s: float = 2.0) -> bool:
        """Wait for the dispatcher to finish its prompt; False if it is still busy."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    # -- dispatcher thread ----------------------------------------------------------------------

    def _dispatch_one(self) -> None:
        ticket = self._queue.get()
        if ticket is None:
            return
        current = _Current(ticket)
        with self._lock:
            self._current = current
        try:
            self._serve(current)
        except Exception as exc:  # noqa: BLE001 - a bug costs this prompt, not the node
            self._health.record_error('phi3v-dispatcher', exc)
            self._log(f'internal error while answering prompt #{ticket.id}: '
                      f'{type(exc).__name__}: {exc}')
            if not current.replied:
                self._reply(ticket, f'internal error: {type(exc).__name__}: {exc}', 'failed')
        finally:
            with self._lock:
                self._current = None

    def _serve(self, current: _Current) -> None:
        """
        Answer one taken prompt.

        timings (seconds): queue = arrival to taken; wait = for the engine and fresh frames;
        convert = the frames to RGB; to_worker = into shared memory + the request down the pipe;
        handoff = worker round trip outside Engine.generate; reply = result to reply.
        A follow-up (conversation.py) is answered about its conversation's frames, without new
        ones; one the worker cannot continue is asked again as a new question.
        """
        ticket = current.ticket
        options = self._options_for(ticket.request)
        key = ticket.request.id if ticket.request is not None else PLAIN
        frames, missing = (), ()
        timings = {'queue': time.monotonic() - ticket.received}
        plan = self._conversations.plan(ticket.request, options.follow_ups,
                                        options.max_image_age_s, self._engine.restarts)
        result = None
        submitted = [False]
        try:
            start = time.monotonic()
            self._wait_for_engine(current, options)
            if plan.continues is not None:
                frames = plan.continues.frames_now(time.monotonic())
                missing = plan.continues.missing
                timings.update(wait=time.monotonic() - start, convert=0.0)
                result = self._run(current, (), (), (), (), options, timings, plan, submitted)
                if not result.continued:      # the worker could not: ask it as a new question
                    plan = self._conversations.could_not_continue(
                        plan, result.fresh_because or result.error)
                    result, frames, missing = None, (), ()
                    start = time.monotonic()
            if result is None:
                frames, missing = self._bind_frames(current, options)
                bound = time.monotonic()
                images = tuple(self._convert(bound_frame, slot)
                               for slot, bound_frame in enumerate(frames))
                timings.update(wait=bound - start, convert=time.monotonic() - bound)
                history, epoch = self._history.turns() if ticket.request is None else ((), None)
                cameras = tuple(frame.camera for frame in frames) if self._cameras.labelled \
                    else ()
                result = self._run(current, images, cameras, missing, history, options, timings,
                                   plan, submitted)
                plan = dataclasses.replace(plan, frames_bound_at=bound)
            else:
                epoch = self._history.turns()[1] if ticket.request is None else None
            value = self._check(ticket.request, result, options)
        except _Cancelled:
            self._end_if(submitted, plan, key, 'its latest question was cancelled')
            self._reply(ticket, self._cancel_reason(current), 'failed', frames=frames,
                        timings=timings, conversation=self._note(plan, 0, False))
            return
        except _Failed as exc:
            self._end_if(submitted, plan, key, 'its latest question failed')
            self._reply(ticket, str(exc), 'failed', frames=frames, timings=timings,
                        conversation=self._note(plan, 0, False))
            return
        self.last_result = result
        failure, why = None, 'its latest question was not answered'
        if result.stop_reason == StopReason.CANCELLED or (self._closing.is_set()
                                                          and not result.ok):
            failure, why = self._cancel_reason(current), 'its latest question was cancelled'
        elif result.stop_reason == StopReason.ERROR:
            failure = f'the model failed: {result.error}'
        elif not result.text.strip():
            failure = 'the model ended its answer without any text.'
        elif isinstance(value, AnswerError):
            failure = f'{value}.'
        if failure is not None:
            self._end_if(submitted, plan, key, why)
            self._reply(ticket, failure, 'failed', result, frames, timings,
                        missing if isinstance(value, AnswerError) else (),
                        conversation=self._note(plan, 0, False))
            return
        number, can_follow = self._conversations.answered(
            plan, key, result, frames, missing, plan.frames_bound_at, self._engine.restarts)
        if ticket.request is None:
            self._history.add(ticket.question, result.text.strip(), epoch)
        self.last_frames = frames
        text = result.text
        if ticket.request is None and plan.new_because:     # the prompt topic says it in text
            text = f'(new conversation: {plan.new_because}) {text}'
        self._reply(ticket, text, 'answered', result, frames, timings, missing, value,
                    conversation=self._note(plan, number, can_follow, result.continued))

    def _end_if(self, submitted: list, plan: Plan, key: str, why: str) -> None:
        """End the conversation of a question that reached the model and failed (worker too)."""
        if submitted[0] and (plan.keep or plan.continues is not None):
            self._conversations.failed(plan, key, why)
            self._engine.end_conversation()

    @staticmethod
    def _note(plan: Plan, number: int, can_follow: bool, continued: bool = False
              ) -> Optional[Note]:
        if not plan.asked:
            return None
        return Note(plan.follows, continued, number, plan.new_because, can_follow)

    def _options_for(self, request: Optional[QARequest]) -> QAOptions:
        """Return the node's options, with a request's own settings in place of the node's."""
        options = self._options
        if request is None:
            return options
        settings = options.settings
        if request.max_new_tokens is not None:
            settings = dataclasses.replace(settings, max_new_tokens=request.max_new_tokens)
        if request.max_crops is not None:
            settings = dataclasses.replace(settings, max_crops=request.max_crops)
        age = options.max_image_age_s if request.max_image_age is None else request.max_image_age
        return dataclasses.replace(options, settings=settings, max_image_age_s=age)

    @staticmethod
    def _check(request: Optional[QARequest], result: Result, options: QAOptions):
        """Return the value of a formatted answer, its AnswerError, or None (no format)."""
        if request is None or request.format is None or not result.ok:
            return None
        try:
            return check_answer(request.format.kind, request.format.spec, result.text,
                                complete=result.stop_reason == StopReason.END_OF_TEXT,
                                max_new_tokens=options.settings.max_new_tokens)
        except AnswerError as exc:
            return exc

    def _wait_for_engine(self, current: _Current, options: QAOptions) -> None:
        deadline = time.monotonic() + options.engine_wait_timeout_s
        while True:
            self._check_cancel(current)
            state = self._engine.state
            if state in (EngineState.READY, EngineState.GENERATING):
                return
            if state == EngineState.FAILED:   # STOPPED: not started yet, wait like for LOADING
                raise _Failed(f'the model is not available: {self._engine.detail}.')
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = self._engine.detail
                raise _Failed(f'the model is still {state.value} after '
                              f'{options.engine_wait_timeout_s:g} s (engine_wait_timeout)'
                              + (f': {detail}' if detail else '') + '; ask again later.')
            try:
                if self._engine.wait_ready(min(0.1, remaining)):
                    return
            except EngineError as exc:
                raise _Failed(f'the model is not available: {exc}.') from None

    def _bind_frames(self, current: _Current, options: QAOptions
                     ) -> Tuple[Tuple[BoundFrame, ...], Tuple[str, ...]]:
        """
        Return (every camera's fresh frame, the cameras without one).

        Without allow_text_only a camera without a fresh frame fails the prompt. With it, the
        prompt is answered from the fresh cameras there are (maybe none): with named cameras the
        model is told which ones have no current image; a stale camera never drops the fresh
        frames of the others.
        """
        check = lambda: self._check_cancel(current)  # noqa: E731 - a callback, named for width
        names = current.ticket.request.cameras if current.ticket.request is not None else ()
        if not options.allow_text_only:
            try:
                return self._cameras.bind(options.max_image_age_s, options.image_wait_timeout_s,
                                          check, names), ()
            except CamerasNotReady as exc:
                raise _Failed(str(exc)) from None
        frames, missing, why = self._cameras.bind_available(
            options.max_image_age_s, options.image_wait_timeout_s, check, names)
        if missing:
            self._log(f'prompt #{current.ticket.id}: answered without '
                      f'{", ".join(missing)} (allow_text_only): {why}')
        return frames, missing

    def _convert(self, bound: BoundFrame, slot: int):
        try:
            return self._convert_frame(bound.frame, slot)
        except ImageConversionError as exc:
            camera = f' from {bound.camera}' if self._cameras.labelled else ''
            raise _Failed(f'the camera image{camera} could not be used: {exc}') from None

    def _run(self, current: _Current, images: tuple, cameras: Tuple[str, ...],
             missing: Tuple[str, ...], history, options: QAOptions,
             timings: Dict[str, float], plan: Plan, submitted: list) -> Result:
        ticket = current.ticket
        done = threading.Event()
        outcome = []
        arrived = []
        stream_messages = [0]
        progress = [time.monotonic()]

        def on_result(result: Result) -> None:
            arrived.append(time.monotonic())
            outcome.append(result)
            done.set()

        def on_piece(piece: str) -> None:
            progress[0] = time.monotonic()
            stream_messages[0] += 1
            self._on_piece(ticket, piece)

        answer_format = ticket.request.format if ticket.request is not None else None
        request = Request(prompt=ticket.question, images=images, cameras=cameras,
                          missing_cameras=missing if self._cameras.labelled else (),
                          settings=options.settings, system_prompt=options.system_prompt,
                          history=history,
                          answer_format=None if answer_format is None else
                          (answer_format.kind, answer_format.spec),
                          keep_tokens=options.follow_ups.tokens if plan.keep else 0,
                          follow_up=plan.continues is not None)
        self._check_cancel(current)
        start = time.monotonic()
        try:
            request_id = self._engine.submit(request, on_result=on_result, on_piece=on_piece)
            self._conversations.submitted(plan, ticket.id)
            submitted[0] = True
        except EngineError as exc:
            if self._closing.is_set():
                raise _Cancelled() from None    # its reply: the node is shutting down
            raise _Failed(f'the model is not available: {exc}.') from None
        submitted = progress[0] = time.monotonic()
        with self._lock:
            current.request_id = request_id
            cancelled = current.cancelled
        if cancelled:   # cancel() came before the request had its id
            self._engine.cancel(request_id)
        # Bounded: the engine client fails a silent worker after its stall_timeout; if even
        # that does not happen, give up on the request here.
        silence_limit_s = self._engine.stall_timeout_s + self._result_grace_s
        while not done.wait(0.25):
            if time.monotonic() - progress[0] > silence_limit_s:
                self._engine.abandon(request_id, 'abandoned without a result')
                raise _Failed(f'the engine gave no sign of progress for {silence_limit_s:g} s.')
        result = outcome[0]
        timings.update(to_worker=submitted - start,
                       handoff=max(0.0, arrived[0] - submitted - result.total_s),
                       reply=time.monotonic() - arrived[0], stream_messages=stream_messages[0])
        return result

    def _cancel_reason(self, current: _Current) -> str:
        if self._closing.is_set():
            return self._close_reason
        return f'cancelled ({current.cancelled_by}) before the answer was complete.'

    def _check_cancel(self, current: _Current) -> None:
        with self._lock:
            cancelled = current.cancelled
        if cancelled or self._closing.is_set():
            raise _Cancelled()

    def _reply(self, ticket: Ticket, text: str, outcome: str, result: Optional[Result] = None,
               frames: Tuple[BoundFrame, ...] = (),
               timings: Optional[Dict[str, float]] = None,
               missing: Tuple[str, ...] = (), value: object = None,
               keep_id: bool = False, conversation: Optional[Note] = None) -> None:
        """Count and hand on the one reply of a ticket (keep_id: its id is another's, open)."""
        if outcome != 'answered':
            text = ERROR_PREFIX + text
        self.counters.count(outcome)
        with self._lock:
            if self._current is not None and self._current.ticket is ticket:
                self._current.replied = True
            if ticket.request is not None and not keep_id:
                self._open_ids.discard(ticket.request.id)
        self._on_reply(Reply(ticket, text, outcome, result, tuple(frames), tuple(missing),
                             value, conversation, dict(timings or {})))
