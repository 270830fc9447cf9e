"""
VisionQAClient: ask a vision_qa node from a Python program and get the answer to your question.

    from phi3v_ros.client.vision_qa_client import VisionQAClient

    client = VisionQAClient()                      # its own node, spun in a thread of its own
    answer = client.ask('Is the door open?', choices=['yes', 'no'], timeout=30)
    if answer.ok and answer.value == 'yes':
        ...
    seen = client.ask('What is on the table?', follow_ups=True)
    red = client.ask('Which one is red?', follows=seen.id)   # same frames, in the model's memory
    future = client.ask_async('Describe the scene.', on_piece=print)   # non-blocking
    future.cancel()                                # this request only
    client.close()

Each question is a request with an id of this client's own (interface/requests.py), so that the
response, and the streamed pieces, are this question's and never another client's. ask() returns
an Answer for every response (``ok``, or ``error`` with the node's sentence); it raises
NodeNotFound when no node listens within connect_timeout and AnswerTimeout when no response comes
in time (the request is then cancelled at the node).

With node= your own rclpy node, the client makes its publisher and subscriptions on it and never
spins it: spin it yourself (a MultiThreadedExecutor in another thread for the blocking ask(), or
call ask_async() from your callbacks). Without, it makes a SpinningNode of its own.

Threads: responses and pieces arrive in the thread that spins the node; ``_lock`` guards the
table of pending requests; on_piece callbacks run in that thread (keep them short); futures are
completed from it. ask() waits on its future, bounded by timeout.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence
import uuid

from phi3v_ros.interface.qos import response_qos
from phi3v_ros.interface.requests import (AnswerFormat, cancel_json, parse_json_object,
                                          QARequest, request_json, STATUS_OK)

# How long a request is re-sent by the middleware until the node acknowledges it (publish is
# asynchronous: a client that exits at once can lose its request).
DELIVERY_TIMEOUT_S = 2.0
# Pieces and responses travel on two topics: the last pieces of an answer may come after it.
# A request's on_piece is kept this long after its response.
LATE_PIECES_S = 5.0


class NodeNotFound(RuntimeError):
    """No vision_qa node listens on the request topic (namespace, domain, remapping?)."""


class AnswerTimeout(TimeoutError):
    """No response came in time; the request was cancelled at the node."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """A response: status 'ok' (text, value) or 'error' (error); what it used and cost."""

    id: str  # noqa: A003 - the request's id
    status: str
    text: str
    value: Any
    error: Optional[str]
    frames: List[dict]
    missing_cameras: List[str]
    choice_probabilities: Optional[Dict[str, float]]
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: Optional[float]
    total_s: Optional[float]
    raw: dict
    # follow-ups: {'follows', 'continued', 'follow_up', 'new_because', 'open'}, or None
    conversation: Optional[dict] = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @classmethod
    def from_response(cls, body: dict) -> 'Answer':
        return cls(id=body.get('id'), status=body.get('status'), text=body.get('text') or '',
                   value=body.get('value'), error=body.get('error'),
                   frames=list(body.get('frames') or []),
                   missing_cameras=list(body.get('missing_cameras') or []),
                   choice_probabilities=body.get('choice_probabilities'),
                   prompt_tokens=int(body.get('prompt_tokens') or 0),
                   generated_tokens=int(body.get('generated_tokens') or 0),
                   time_to_first_token_s=body.get('time_to_first_token_s'),
                   total_s=body.get('total_s'), raw=body,
                   conversation=body.get('conversation'))


class AnswerFuture(concurrent.futures.Future):
    """The future Answer of one request; cancel() cancels the request at the node too."""

    def __init__(self, client: 'VisionQAClient', request_id: str) -> None:
        super().__init__()
        self.request_id = request_id
        self._client = client

    def cancel(self) -> bool:
        if self.done():
            return False
        self._client.cancel(self.request_id)
        return super().cancel()


def answer_format(choices: Optional[Sequence[str]] = None, regex: Optional[str] = None,
                  json_schema: Optional[dict] = None,
                  lark_grammar: Optional[str] = None) -> Optional[AnswerFormat]:
    """Return the AnswerFormat of at most one of the arguments (None: free text)."""
    kinds = (('choices', choices), ('regex', regex), ('json_schema', json_schema),
             ('lark_grammar', lark_grammar))
    given = [(kind, spec) for kind, spec in kinds if spec is not None]
    if len(given) > 1:
        raise ValueError('give at most one of choices, regex, json_schema, lark_grammar')
    if not given:
        return None
    kind, spec = given[0]
    return AnswerFormat(kind, tuple(spec) if kind == 'choices' else spec)


class VisionQAClient:
    """Ask a vision_qa node questions; each gets its own answer (see the module's text)."""

    def __init__(self, node=None, namespace: str = '', request_topic: str = 'request',
                 response_topic: str = 'response', args: Optional[Sequence[str]] = None) -> None:
        """Make the client; args are ROS arguments (remapping) for a node of its own."""
        import rclpy.qos
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String
        self._own = None
        if node is None:
            from phi3v_ros.client.spinning import SpinningNode
            self._own = SpinningNode(f'vision_qa_client_{os.getpid()}_{uuid.uuid4().hex[:6]}',
                                     namespace=namespace, args=args)
            node = self._own.node
        self.node = node
        self._String = String
        self._prefix = f'{node.get_name()}-{uuid.uuid4().hex[:8]}'
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: Dict[str, tuple] = {}      # id -> (AnswerFuture, on_piece)
        self._answered: Dict[str, tuple] = {}     # id -> (on_piece, answered at): late pieces
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                              reliability=ReliabilityPolicy.RELIABLE)
        self._publisher = node.create_publisher(String, request_topic, reliable)
        self._response_topic = node.resolve_topic_name(response_topic)
        # transient local (interface/qos.py): a response sent before the node met this
        # subscription still arrives
        node.create_subscription(String, response_topic, self._on_response,
                                 response_qos(rclpy.qos))
        node.create_subscription(String, response_topic + '/stream', self._on_piece, 1000)
        if self._own is not None:
            self._own.start()

    # -- asking ---------------------------------------------------------------------------------

    def connected(self) -> bool:
        """Return True when a node takes requests and publishes responses (and pieces) here."""
        return (self._publisher.get_subscription_count() > 0
                and self.node.count_publishers(self._response_topic) > 0
                and self.node.count_publishers(self._response_topic + '/stream') > 0)

    def wait_for_node(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until a node takes requests and publishes responses here."""
        deadline = time.monotonic() + timeout
        ready = threading.Event()
        while not self.connected():
            if time.monotonic() >= deadline:
                return False
            ready.wait(0.05)   # the graph has no event to wait on here: look again shortly
        return True

    def ask_async(self, question: str, *, choices: Optional[Sequence[str]] = None,
                  regex: Optional[str] = None, json_schema: Optional[dict] = None,
                  lark_grammar: Optional[str] = None, cameras: Sequence[str] = (),
                  max_new_tokens: Optional[int] = None, max_crops: Optional[int] = None,
                  max_image_age: Optional[float] = None, follow_ups: bool = False,
                  follows: Optional[str] = None,
                  on_piece: Optional[Callable[[str], None]] = None) -> AnswerFuture:
        """
        Send a request and return its AnswerFuture at once; on_piece gets streamed pieces.

        follow_ups=True keeps the answer for follow-up questions; follows=<an earlier answer's
        id> asks one (about that conversation's frames; see Answer.conversation).
        """
        request = QARequest(id=f'{self._prefix}-{next(self._numbers)}', question=question,
                            format=answer_format(choices, regex, json_schema, lark_grammar),
                            cameras=tuple(cameras), max_new_tokens=max_new_tokens,
                            max_crops=max_crops, max_image_age=max_image_age,
                            follow_ups=follow_ups, follows=follows)
        future = AnswerFuture(self, request.id)
        with self._lock:
            self._pending[request.id] = (future, on_piece)
        self._publisher.publish(self._String(data=request_json(request)))
        return future

    def ask(self, question: str, *, timeout: float = 60.0, connect_timeout: float = 10.0,
            **options) -> Answer:
        """
        Ask and wait for the answer (the options are ask_async's).

        Raises NodeNotFound when no node listens within connect_timeout, AnswerTimeout when no
        response comes within timeout (the request is then cancelled at the node).
        """
        if not self.wait_for_node(connect_timeout):
            raise NodeNotFound(f'no vision_qa node takes requests on '
                               f'{self._publisher.topic_name} (within '
                               f'{connect_timeout:g} s): is it running, in this namespace and '
                               'ROS_DOMAIN_ID?')
        future = self.ask_async(question, **options)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AnswerTimeout(f'no answer within {timeout:g} s (request {future.request_id} '
                                'cancelled)') from None

    def cancel(self, request_id: str) -> None:
        """Cancel a request at the node (its response then says so, if it was still open)."""
        self._publisher.publish(self._String(data=cancel_json(request_id)))

    def wait_delivered(self, timeout: float = DELIVERY_TIMEOUT_S) -> bool:
        """Wait (bounded) until the node has acknowledged every request sent; call before exit."""
        from rclpy.duration import Duration
        return self._publisher.wait_for_all_acked(Duration(nanoseconds=int(timeout * 1e9)))

    def close(self) -> None:
        """Fail what is still pending; stop the client's own node (never a node it was given)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for future, _ in pending:
            if not future.done():
                future.set_exception(RuntimeError('the client was closed'))
        if self._own is not None:
            self._own.close()

    # -- callbacks (in the thread that spins the node) ------------------------------------------

    def _on_response(self, message) -> None:
        if self._prefix not in message.data:
            return      # another client's (a new client is sent up to 1000 earlier responses)
        body = parse_json_object(message.data)
        if body is None or not isinstance(body.get('id'), str):
            return
        now = time.monotonic()
        with self._lock:
            entry = self._pending.pop(body['id'], None)
            if entry is not None and entry[1] is not None:
                self._answered[body['id']] = (entry[1], now)
            for late in [key for key, (_, at) in self._answered.items()
                         if now - at > LATE_PIECES_S]:
                del self._answered[late]
        if entry is not None and not entry[0].done():
            entry[0].set_result(Answer.from_response(body))

    def _on_piece(self, message) -> None:
        body = parse_json_object(message.data)
        if body is None or not isinstance(body.get('piece'), str):
            return
        with self._lock:
            pending = self._pending.get(body.get('id'))
            answered = self._answered.get(body.get('id'))
        on_piece = pending[1] if pending is not None else answered[0] if answered else None
        if on_piece is not None:
            on_piece(body['piece'])
