"""
The fault soak's ROS side: prompts, bad frames and service calls out; replies and diagnostics in.

FaultClient records every reply, streamed piece and diagnostics message (with arrival times) for
the recording and the verdict; CallBatch sends service calls without waiting for each.
"""
from __future__ import annotations

import collections
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple


ERROR_PREFIX = 'ERROR: '


NODE = '/vision_qa'


STATUS_NAME = f'{NODE}: engine'


DEPTH = 10000            # prompts and replies: deep enough that this side never drops one


ERROR_LEVEL = 2          # diagnostic_msgs/DiagnosticStatus.ERROR


CALL_TIMEOUT_S = 15.0    # a service call not answered by then is counted as unanswered


def category(text: str) -> str:
    """Return an ERROR reply without prefix, numbers as '#', cut: replies of one kind group."""
    return re.sub(r'\d+(\.\d+)?', '#', text[len(ERROR_PREFIX):])[:90]


class CallBatch:
    """Service calls sent without waiting; what came back is written into their fault event."""

    def __init__(self, client, futures: list, event: dict, summarize: Callable[[list], dict],
                 sent_at: float) -> None:
        self.client = client
        self.futures = futures
        self.event = event
        self.summarize = summarize
        self.sent_at = sent_at
        self.deadline = sent_at + CALL_TIMEOUT_S
        self.last_answer: List[float] = []
        for future in futures:
            future.add_done_callback(lambda f: self.last_answer.append(time.monotonic()))

    def settle(self, now: float, force: bool = False) -> bool:
        """Once all are answered or the deadline passed (or force): record; True when recorded."""
        finished = [f for f in self.futures if f.done()]
        if len(finished) < len(self.futures) and now < self.deadline and not force:
            return False
        responses = []
        for future in finished:
            try:
                responses.append(future.result())
            except Exception as exc:   # noqa: BLE001 - recorded, the soak goes on
                responses.append(exc)
        for future in self.futures:
            if not future.done():
                try:
                    self.client.remove_pending_request(future)
                except Exception:   # noqa: BLE001 - forgetting it is all that is wanted
                    pass
        self.event['calls'] = len(self.futures)
        self.event['answered'] = len(finished)
        self.event['unanswered'] = len(self.futures) - len(finished)
        if self.last_answer:
            self.event['answered_within_s'] = round(max(self.last_answer) - self.sent_at, 3)
        self.event.update(self.summarize(responses))
        return True


class FaultClient:
    """The soak's ROS side: prompts, bad frames, service calls; records replies and diagnostics."""

    def __init__(self, compressed: bool) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from phi3v_ros.client.spinning import SpinningNode
        from rcl_interfaces.srv import SetParameters
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._ros = SpinningNode('soak_fault_client')
        self.node = self._ros.node
        self.String, self.Image, self.CompressedImage = String, Image, CompressedImage
        self.Trigger, self.SetParameters = Trigger, SetParameters
        deep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=DEPTH,
                          reliability=ReliabilityPolicy.RELIABLE)
        frame_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                               reliability=ReliabilityPolicy.RELIABLE)
        self.prompt_pub = self.node.create_publisher(String, 'prompt', deep)
        if compressed:
            self.frame_pub = self.node.create_publisher(CompressedImage, 'image/compressed',
                                                        frame_qos)
        else:
            self.frame_pub = self.node.create_publisher(Image, 'image', frame_qos)
        self.node.create_subscription(String, 'answer', self._on_answer, deep)
        self.node.create_subscription(String, 'answer/stream', self._on_piece, deep)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 100)
        # deep on this side too, so that a reply lost in a burst is not lost here
        self.cancel_client = self.node.create_client(Trigger, f'{NODE}/cancel', qos_profile=deep)
        self.reset_client = self.node.create_client(Trigger, f'{NODE}/reset', qos_profile=deep)
        self.parameter_client = self.node.create_client(SetParameters, f'{NODE}/set_parameters',
                                                        qos_profile=deep)
        self.changed = threading.Condition()
        self._publish_lock = threading.Lock()
        self.sent = 0
        self.sent_by_kind: collections.Counter = collections.Counter()
        self.sent_times: List[float] = []
        self.replies: List[tuple] = []          # (monotonic arrival, ok, text[:300])
        self.pieces = 0
        self.diagnostics: Dict[str, str] = {}
        self.diagnostics_at = 0.0
        self.diagnostic_times: List[float] = []
        self.states: List[tuple] = []           # (monotonic, engine_state, detail) on change
        self.error_states: Dict[str, dict] = {}  # ERROR-level message -> count, first, last
        self.worker_pids: List[int] = []
        self.max_restarts = 0
        self._ros.start()

    def _on_answer(self, message) -> None:
        now = time.monotonic()
        with self.changed:
            self.replies.append((now, not message.data.startswith(ERROR_PREFIX),
                                 message.data[:300]))
            self.changed.notify_all()

    def _on_piece(self, message) -> None:
        self.pieces += 1

    def _on_diagnostics(self, array) -> None:
        now = time.monotonic()
        for status in array.status:
            if status.name != STATUS_NAME:
                continue
            level = status.level
            level = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
            values = {pair.key: pair.value for pair in status.values}
            with self.changed:
                self.diagnostics, self.diagnostics_at = values, now
                self.diagnostic_times.append(now)
                state = (values.get('engine_state', ''), values.get('engine_detail', ''))
                # the timeline leaves out the flips between ready and generating
                last = self.states[-1][1] if self.states else None
                if (state[0] != last and not {state[0], last} <= {'ready', 'generating'}
                        and len(self.states) < 2000):
                    self.states.append((now, *state))
                if level >= ERROR_LEVEL:
                    key = re.sub(r'\d+(\.\d+)?', '#', status.message)[:160]
                    seen = self.error_states.setdefault(key, {'count': 0, 'first': now,
                                                              'example': status.message})
                    seen['count'] += 1
                    seen['last'] = now
                pid = values.get('worker_pid', '')
                if pid.isdigit() and int(pid) not in self.worker_pids:
                    self.worker_pids.append(int(pid))
                restarts = values.get('worker_restarts', '')
                if restarts.isdigit():
                    self.max_restarts = max(self.max_restarts, int(restarts))
                self.changed.notify_all()

    # -- sending ------------------------------------------------------------------------------

    def ask(self, kind: str, make_text: Callable[[int], str]) -> None:
        """Publish one prompt; make_text(number) gives its text (number: 1 for the first)."""
        with self._publish_lock:
            with self.changed:
                self.sent += 1
                self.sent_by_kind[kind] += 1
                self.sent_times.append(time.monotonic())
                text = make_text(self.sent)
            self.prompt_pub.publish(self.String(data=text))

    def publish_frame(self, message) -> None:
        now = time.time()
        message.header.stamp.sec, message.header.stamp.nanosec = int(now), int(now % 1 * 1e9)
        self.frame_pub.publish(message)

    def set_parameters_request(self, values: Dict[str, object]):
        from rclpy.parameter import Parameter
        return self.SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])

    def call(self, client, request, timeout: float) -> Tuple[Optional[object], str]:
        """Call a service, waiting at most timeout seconds; (response or None, why not)."""
        if not client.wait_for_service(timeout_sec=min(timeout, 5.0)):
            return None, 'service not available'
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            return None, f'no answer within {timeout:g} s'
        try:
            return future.result(), ''
        except Exception as exc:   # noqa: BLE001 - reported by the caller
            return None, repr(exc)

    # -- reading ------------------------------------------------------------------------------

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, max(0.0, timeout))

    def settled(self) -> bool:
        """Call with self.changed held: the node's latest counters add up and nothing waits."""
        values = self.diagnostics
        try:
            received = int(values['prompts_received'])
            outcomes = sum(int(values[f'prompts_{key}'])
                           for key in ('answered', 'rejected', 'failed'))
        except (KeyError, ValueError):
            return False
        return received == outcomes and values.get('queue_depth') == '0'

    def connected(self) -> bool:
        return (self.prompt_pub.get_subscription_count() > 0
                and self.frame_pub.get_subscription_count() > 0
                and self.node.count_publishers(self.node.resolve_topic_name('answer')) > 0)

    def close(self) -> None:
        self._ros.close(timeout_s=5.0)
