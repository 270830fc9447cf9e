"""
Fault mode of the soak test (`python -m bench.soak --faults`): prompts flow while things break.

    python -m bench.soak --faults --duration 120 --out .cache/soak_faults.json
    python -m bench.soak --faults --seed 7 --fault-kinds stall,cancel_burst=3 --duration 120

The node and a synthetic camera run as in the plain soak (their own processes, process groups and
ROS domain, localhost only; the node with a short stall_timeout). A client in this process sends a
prompt every --prompt-interval seconds and records every reply; after a random pause of
--fault-interval MIN:MAX seconds (seeded by --seed) a fault driver does one of:

* kill: SIGKILL the worker process;
* stall: SIGSTOP the worker for 1 to --max-stall seconds, then SIGCONT (other faults may come
  meanwhile);
* cancel: call ~/cancel once; cancel_burst: 50-300 calls back to back, not waiting for each;
* reset: call ~/reset;
* params: set one to three of max_new_tokens, history_turns, max_queue, busy_policy through
  set_parameters (one time in six with an out-of-range value, which must be refused);
* bad_frames: for 0.5-2 s, malformed frames on the image topic between the camera's good ones
  (wrong data length, a 6000x6000 header with 1 byte, unknown or empty encoding, zero size; with
  --compressed: random bytes, empty data, an unknown format, a JPEG start and garbage), half of
  them followed at once by a prompt;
* prompt_burst: 20-100 prompts at once, one in ten empty, one in ten very long.

Every prompt but the empty ones has a text of its own (its number in it). The replies carry no
request id, so they are counted. After --duration the driver stops (stalled workers get SIGCONT),
the soak waits up to --drain-timeout for the last replies and for the node's counters to settle,
asks a few more prompts to see that the node answers again, waits for stray second replies, stops
the node with SIGINT and gives it --stop-timeout seconds. The verdict (exit code 1 when it fails):
exactly as many replies as prompts sent; prompts_received == answered + rejected + failed ==
replies with queue_depth 0; the node alive throughout and exiting with 0 in time; node RSS, thread
count and open files flat after --warmup; no shared-memory block left; an answer after the faults.
Every wait is bounded and the node's and camera's process groups are killed at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

from bench.soak import memory_verdict, python_module, rss_mb, shm_blocks, worker_of
import psutil

ERROR_PREFIX = 'ERROR: '
NODE = '/vision_qa'
STATUS_NAME = f'{NODE}: engine'
DEPTH = 10000            # prompts and replies: deep enough that this side never drops one
ERROR_LEVEL = 2          # diagnostic_msgs/DiagnosticStatus.ERROR
FAULT_KINDS = ('kill', 'stall', 'cancel', 'cancel_burst', 'reset', 'params', 'bad_frames',
               'prompt_burst')
DEFAULT_WEIGHTS = {'kill': 2, 'stall': 2, 'cancel': 2, 'cancel_burst': 1, 'reset': 1,
                   'params': 2, 'bad_frames': 2, 'prompt_burst': 1}
BAD_RAW = ('short_data', 'long_data', 'huge_header_1_byte', 'unknown_encoding', 'empty_encoding',
           'zero_size')
BAD_COMPRESSED = ('random_bytes', 'empty_data', 'unknown_format', 'jpeg_start_then_garbage')
PARAMETER_VALUES = {
    'max_new_tokens': (1, 4, 16, 64, 256, 1024),
    'history_turns': (0, 1, 2, 4),
    'max_queue': (1, 2, 4, 8, 16, 64),
    'busy_policy': ('reject', 'drop_oldest'),
}
INVALID_VALUES = {'max_new_tokens': 0, 'history_turns': 101, 'max_queue': 0,
                  'busy_policy': 'sometimes'}
SANE = {'max_new_tokens': 16, 'history_turns': 0, 'max_queue': 8, 'busy_policy': 'reject'}
WORDS = ('robot', 'camera', 'table', 'door', 'light', 'red', 'box', 'left', 'right', 'near',
         'what', 'where', 'is', 'the', 'in', 'front', 'of', 'how', 'many', 'colour')
CALL_TIMEOUT_S = 15.0    # a service call not answered by then is counted as unanswered


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault mode's options to the soak's parser."""
    group = parser.add_argument_group('fault mode (--faults, see bench/soak_faults.py)')
    group.add_argument('--faults', action='store_true',
                       help='inject faults while prompts flow; verdict on replies and counters')
    group.add_argument('--seed', type=int, default=1, help='fault driver RNG seed (default 1)')
    group.add_argument('--fault-interval', type=parse_range, default=(2.0, 8.0),
                       metavar='MIN:MAX', help='seconds between faults (default 2:8)')
    group.add_argument('--fault-kinds', type=parse_kinds, default=dict(DEFAULT_WEIGHTS),
                       metavar='NAME[=WEIGHT],...',
                       help=f'faults to draw from, with weights (default all: '
                            f'{",".join(f"{k}={w}" for k, w in DEFAULT_WEIGHTS.items())})')
    group.add_argument('--max-faults', type=int, default=1000, help='at most this many faults')
    group.add_argument('--max-stall', type=float, default=5.0,
                       help='longest SIGSTOP of the worker, seconds (default 5)')
    group.add_argument('--stall-timeout', type=float, default=2.5,
                       help="the node's stall_timeout parameter in fault mode (default 2.5 s)")
    group.add_argument('--compressed', action='store_true',
                       help='camera, node and bad frames on <image>/compressed (CompressedImage)')
    group.add_argument('--drain-timeout', type=float, default=45.0,
                       help='seconds to wait for the last replies after the faults (default 45)')
    group.add_argument('--stop-timeout', type=float, default=20.0,
                       help='seconds the node may take to stop on SIGINT (default 20)')
    group.add_argument('--max-thread-growth', type=float, default=2.0,
                       help='node threads: allowed growth of the median, first to last fifth')
    group.add_argument('--max-fd-growth', type=float, default=8.0,
                       help='node open files: allowed growth of the median, first to last fifth')
    group.add_argument('--verbose', action='store_true', help='print every sample as JSON')


def parse_range(text: str) -> Tuple[float, float]:
    """Parse 'MIN:MAX' seconds."""
    low, high = (float(part) for part in text.split(':'))
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f'need 0 < MIN <= MAX, not {text!r}')
    return low, high


def parse_kinds(text: str) -> Dict[str, float]:
    """Parse 'kill,stall=3' into {'kill': default weight, 'stall': 3.0}."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(','))):
        name, _, weight = item.partition('=')
        if name not in FAULT_KINDS:
            raise argparse.ArgumentTypeError(f'unknown fault {name!r}; known: '
                                             + ', '.join(FAULT_KINDS))
        weights[name] = float(weight) if weight else float(DEFAULT_WEIGHTS[name])
    if not weights or not any(w > 0 for w in weights.values()):
        raise argparse.ArgumentTypeError('no fault with a positive weight')
    return weights


def _round(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(value, digits)


def category(text: str) -> str:
    """Return an ERROR reply without prefix, numbers as '#', cut: replies of one kind group."""
    return re.sub(r'\d+(\.\d+)?', '#', text[len(ERROR_PREFIX):])[:90]


def peak_rss_mb(pid: int) -> Optional[float]:
    """Return the peak resident set (VmHWM) of a process in MB, None when it is gone."""
    try:
        with open(f'/proc/{pid}/status', encoding='utf-8') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mapped_shm(pid: int) -> Tuple[set, Optional[float]]:
    """Return the /dev/shm/psm_* blocks a process has mapped and their apparent size in MB."""
    names = set()
    try:
        with open(f'/proc/{pid}/maps', encoding='utf-8') as f:
            for line in f:
                if '/dev/shm/psm_' in line:
                    names.add(line.split('/dev/shm/', 1)[1].split()[0])
    except OSError:
        return names, None
    total = 0
    for name in names:
        try:
            total += os.stat(f'/dev/shm/{name}').st_size
        except OSError:
            pass
    return names, total / 2 ** 20


def count_verdict(samples: List[dict], key: str, warmup_s: float, max_growth: float) -> dict:
    """Return min/max and the growth of the median from the first to the last fifth."""
    points = [s[key] for s in samples if s['t_s'] >= warmup_s and s.get(key) is not None]
    if len(points) < 5:
        return {'verdict': 'too few samples', 'samples': len(points)}
    fifth = max(1, len(points) // 5)
    first, last = statistics.median(points[:fifth]), statistics.median(points[-fifth:])
    return {'first_fifth_median': first, 'last_fifth_median': last, 'min': min(points),
            'max': max(points), 'growth': last - first,
            'verdict': 'flat' if last - first <= max_growth else 'growing'}


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
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('soak_fault_client', context=self.context)
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
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name='soak-ros', daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

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
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


def bad_raw_frame(client: FaultClient, kind: str, rng: random.Random):
    """Return a malformed sensor_msgs/Image of the given kind."""
    width, height = 640, 480
    message = client.Image(height=height, width=width, encoding='bgr8', is_bigendian=0,
                           step=width * 3)
    size = width * 3 * height
    if kind == 'short_data':
        message.data = bytes(size - rng.randint(1, size - 1))
    elif kind == 'long_data':
        message.data = bytes(size + rng.randint(1, 10000))
    elif kind == 'huge_header_1_byte':
        message.width = message.height = 6000
        message.step = 18000
        message.data = b'\x00'
    elif kind in ('unknown_encoding', 'empty_encoding'):
        message.encoding = '' if kind == 'empty_encoding' else f'weird{rng.randint(0, 99)}'
        message.data = bytes(size)
    elif kind == 'zero_size':
        message.width = message.height = message.step = 0
    else:
        raise ValueError(kind)
    return message


def bad_compressed_frame(client: FaultClient, kind: str, rng: random.Random):
    """Return a malformed sensor_msgs/CompressedImage of the given kind."""
    message = client.CompressedImage(format='jpeg')
    if kind == 'random_bytes':
        message.data = rng.randbytes(rng.randint(1, 200000))
    elif kind == 'empty_data':
        message.data = b''
    elif kind == 'unknown_format':
        message.format = f'weird{rng.randint(0, 99)}'
        message.data = rng.randbytes(rng.randint(1, 5000))
    elif kind == 'jpeg_start_then_garbage':
        message.data = b'\xff\xd8\xff\xe0' + rng.randbytes(rng.randint(1, 50000))
    else:
        raise ValueError(kind)
    return message


class FaultDriver:
    """Draws faults from a seeded RNG and injects them, each bounded in count and time."""

    def __init__(self, client: FaultClient, node: psutil.Process, args: argparse.Namespace,
                 start: float) -> None:
        self.client = client
        self.node = node
        self.args = args
        self.start = start
        self.rng = random.Random(args.seed)
        self.kinds = [k for k, w in args.fault_kinds.items() if w > 0]
        self.weights = [args.fault_kinds[k] for k in self.kinds]
        self.events: List[dict] = []
        self.errors: List[str] = []
        self._batches: List[CallBatch] = []
        self._stalled: Dict[int, tuple] = {}    # pid -> (process, timer, event)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name='soak-faults', daemon=True)

    def start_driving(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop drawing faults, resume stalled workers, record the service calls still open."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.errors.append(f'the fault driver did not stop within {timeout:g} s')
        self.resume_all()

    def settle_calls(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            self._batches = [b for b in self._batches if not b.settle(now, force)]

    def resume_all(self) -> None:
        with self._lock:
            pids = list(self._stalled)
        for pid in pids:
            self._resume(pid, early=True)

    def _now(self) -> float:
        return round(time.monotonic() - self.start, 2)

    def _guarded(self) -> None:
        try:
            self._run()
        except Exception:   # noqa: BLE001 - the soak must report, not die in a thread
            self.errors.append(traceback.format_exc())

    def _run(self) -> None:
        low, high = self.args.fault_interval
        while len(self.events) < self.args.max_faults:
            if self._sleep(self.rng.uniform(low, high)):
                return
            kind = self.rng.choices(self.kinds, self.weights)[0]
            with self.client.changed:
                state = self.client.diagnostics.get('engine_state')
            event = {'t_s': self._now(), 'fault': kind, 'engine_state': state}
            try:
                getattr(self, f'_{kind}')(event)
            except Exception as exc:   # noqa: BLE001 - one failed injection is recorded
                event['soak_error'] = repr(exc)
                self.errors.append(f'{kind} at {event["t_s"]} s: {traceback.format_exc()}')
            self.events.append(event)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, settling service calls meanwhile; True when the driver is to stop."""
        deadline = time.monotonic() + seconds
        while True:
            self.settle_calls()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stop.wait(min(0.2, remaining)):
                return True

    def _worker(self, event: dict) -> Optional[psutil.Process]:
        worker = worker_of(self.node)
        if worker is None:
            event['skipped'] = 'no worker process (being restarted)'
        else:
            event['pid'] = worker.pid
        return worker

    # -- the faults ---------------------------------------------------------------------------

    def _aim(self, event: dict) -> None:
        """Half the time: ask a prompt and wait a moment, so that the fault meets an answer."""
        if self.rng.random() < 0.5:
            delay = round(self.rng.uniform(0.05, 0.4), 3)
            self.client.ask('aimed', lambda n: f'Question {n} (a fault is coming): what is there?')
            event['aimed'] = delay
            self._stop.wait(delay)

    def _kill(self, event: dict) -> None:
        self._aim(event)
        worker = self._worker(event)
        if worker is not None:
            with self._lock:
                stall = self._stalled.get(worker.pid)
                if stall is not None:
                    stall[2]['killed_by_fault_at_s'] = event['t_s']
            event['was_stalled'] = stall is not None
            worker.kill()     # psutil checks that the pid is still this process

    def _stall(self, event: dict) -> None:
        seconds = round(self.rng.uniform(1.0, max(1.0, self.args.max_stall)), 2)
        event['seconds'] = seconds
        self._aim(event)
        worker = self._worker(event)
        if worker is None:
            return
        with self._lock:
            if worker.pid in self._stalled:
                event['skipped'] = 'already stalled'
                return
            worker.suspend()
            timer = threading.Timer(seconds, self._resume, (worker.pid,))
            timer.daemon = True
            self._stalled[worker.pid] = (worker, timer, event)
            timer.start()

    def _resume(self, pid: int, early: bool = False) -> None:
        with self._lock:
            entry = self._stalled.pop(pid, None)
        if entry is None:
            return
        worker, timer, event = entry
        timer.cancel()
        event['resumed_at_s'] = self._now()
        try:
            if worker.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)
            worker.resume()
            event['outcome'] = 'resumed' + (' early (the soak is ending)' if early else '')
        except psutil.NoSuchProcess:
            event['outcome'] = ('worker gone before SIGCONT: ' + (
                'a kill fault' if 'killed_by_fault_at_s' in event else 'killed by the node'))

    def _cancel(self, event: dict) -> None:
        self._burst(event, 1)

    def _cancel_burst(self, event: dict) -> None:
        self._burst(event, self.rng.randint(50, 300))

    def _burst(self, event: dict, count: int) -> None:
        self._aim(event)
        client = self.client
        sent_at = time.monotonic()
        futures = [client.cancel_client.call_async(client.Trigger.Request())
                   for _ in range(count)]
        event['sent_in_s'] = round(time.monotonic() - sent_at, 3)

        def summarize(responses: list) -> dict:
            return {'cancelled': sum(1 for r in responses if getattr(r, 'success', False)),
                    'nothing_to_cancel': sum(1 for r in responses
                                             if getattr(r, 'success', True) is False)}
        with self._lock:
            self._batches.append(CallBatch(client.cancel_client, futures, event, summarize,
                                           sent_at))

    def _reset(self, event: dict) -> None:
        client = self.client
        future = client.reset_client.call_async(client.Trigger.Request())

        def summarize(responses: list) -> dict:
            return {'success': [getattr(r, 'success', repr(r)) for r in responses]}
        with self._lock:
            self._batches.append(CallBatch(client.reset_client, [future], event, summarize,
                                           time.monotonic()))

    def _params(self, event: dict) -> None:
        names = self.rng.sample(sorted(PARAMETER_VALUES), self.rng.randint(1, 3))
        values = {name: self.rng.choice(PARAMETER_VALUES[name]) for name in names}
        invalid = None
        if self.rng.random() < 1 / 6:
            invalid = self.rng.choice(names)
            values[invalid] = INVALID_VALUES[invalid]
        event['values'] = dict(values)
        event['invalid'] = invalid
        client = self.client
        future = client.parameter_client.call_async(client.set_parameters_request(values))

        def summarize(responses: list) -> dict:
            results = getattr(responses[0], 'results', None) if responses else None
            if results is None:
                return {'results': None}
            outcome = {name: (r.successful, r.reason) for name, r in zip(values, results)}
            unexpected = [name for name, (ok, _) in outcome.items() if ok == (name == invalid)]
            return {'results': {n: 'set' if ok else f'refused: {why}'
                                for n, (ok, why) in outcome.items()},
                    'unexpected': unexpected}
        with self._lock:
            self._batches.append(CallBatch(client.parameter_client, [future], event, summarize,
                                           time.monotonic()))

    def _bad_frames(self, event: dict) -> None:
        client, rng = self.client, self.rng
        kinds = BAD_COMPRESSED if self.args.compressed else BAD_RAW
        make = bad_compressed_frame if self.args.compressed else bad_raw_frame
        deadline = time.monotonic() + rng.uniform(0.5, 2.0)
        published: collections.Counter = collections.Counter()
        prompts = 0
        while time.monotonic() < deadline and not self._stop.is_set():
            kind = rng.choice(kinds)
            client.publish_frame(make(client, kind, rng))
            published[kind] += 1
            if rng.random() < 0.5:
                prompts += 1
                client.ask('after_bad_frame',
                           lambda n: f'Question {n} (right after a {kind} frame): what is there?')
            self._stop.wait(0.05)
        event['frames'] = dict(published)
        event['prompts'] = prompts

    def _prompt_burst(self, event: dict) -> None:
        rng = self.rng
        count = rng.randint(20, 100)
        kinds: collections.Counter = collections.Counter()
        for _ in range(count):
            draw = rng.random()
            if draw < 0.1:
                blank = rng.choice(('', ' ', '\n\t  '))
                self.client.ask('burst_empty', lambda n: blank)
                kinds['empty'] += 1
            elif draw < 0.2:
                length = rng.choice((rng.randint(1000, 3990), rng.randint(4001, 20000)))
                words = ' '.join(rng.choice(WORDS) for _ in range(length // 4 + 1))
                self.client.ask('burst_long',
                                lambda n: f'Question {n} (long): {words}'[:length])
                kinds['long_over_limit' if length > 4000 else 'long'] += 1
            else:
                self.client.ask('burst', lambda n: f'Question {n} (burst): what do you see?')
                kinds['normal'] += 1
        event['prompts'] = count
        event['kinds'] = dict(kinds)


def _prompter(client: FaultClient, interval: float, stop: threading.Event,
              errors: List[str]) -> None:
    try:
        next_prompt = time.monotonic()
        while not stop.is_set():
            client.ask('steady', lambda n: f'Question {n}: what is in front of the robot?')
            next_prompt += interval
            stop.wait(max(0.0, next_prompt - time.monotonic()))
    except Exception:   # noqa: BLE001 - reported in the verdict
        errors.append(traceback.format_exc())


def stop_process(process: subprocess.Popen, timeout: float) -> dict:
    """SIGINT, wait up to timeout, else SIGKILL the process group; what remained is listed."""
    outcome: dict = {}
    started = time.monotonic()
    if process.poll() is not None:
        outcome['how'] = 'had already exited'
    else:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
            outcome['how'] = 'stopped on SIGINT'
        except subprocess.TimeoutExpired:
            outcome['how'] = f'still running {timeout:g} s after SIGINT: process group killed'
            _kill_group(process.pid)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                outcome['how'] += ' (and it did not die)'
    outcome['stop_s'] = round(time.monotonic() - started, 2)
    outcome['exit_code'] = process.returncode
    grace = time.monotonic() + 5.0   # the resource tracker ends a moment after the node
    while group_members(process.pid) and time.monotonic() < grace:
        time.sleep(0.1)
    left = group_members(process.pid)
    outcome['processes_left_in_group'] = left
    if left:
        _kill_group(process.pid)
    return outcome


def group_members(pgid: int) -> List[str]:
    """Return 'pid command' of the live processes in a process group."""
    members = []
    for proc in psutil.process_iter(['pid', 'cmdline', 'status']):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info['status'] != psutil.STATUS_ZOMBIE:
                members.append(f'{proc.pid} {" ".join(proc.info["cmdline"] or [])[-120:]}')
        except (OSError, psutil.Error):
            continue
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def drain(client: FaultClient, timeout: float) -> dict:
    """Wait for a reply per prompt sent and for settled counters in a later diagnostics message."""
    started = time.monotonic()

    def done() -> bool:
        last_reply = client.replies[-1][0] if client.replies else 0.0
        return (len(client.replies) >= client.sent and client.settled()
                and client.diagnostics_at > max(last_reply, started))
    complete = client.wait_for(done, timeout)
    return {'complete': complete, 'waited_s': round(time.monotonic() - started, 2)}


def recovery_probe(client: FaultClient, budget_s: float) -> dict:
    """Sane parameters, then up to 3 prompts one at a time until one is answered."""
    started = time.monotonic()
    deadline = started + budget_s
    response, why = client.call(client.parameter_client, client.set_parameters_request(SANE),
                                min(10.0, budget_s))
    probe: dict = {'sane_parameters': why or [r.successful for r in response.results],
                   'attempts': []}
    while time.monotonic() < deadline and len(probe['attempts']) < 3:
        client.wait_for(lambda: client.diagnostics.get('engine_state') == 'ready',
                        deadline - time.monotonic())
        with client.changed:
            count = len(client.replies)
            state = client.diagnostics.get('engine_state')
        client.ask('probe', lambda n: f'Question {n} (probe after the faults): what is there?')
        got = client.wait_for(lambda: len(client.replies) > count,
                              min(20.0, max(0.0, deadline - time.monotonic())))
        with client.changed:
            reply = client.replies[count] if got else None
        probe['attempts'].append({'engine_state_before': state,
                                  'reply': None if reply is None else reply[2][:160]})
        if reply is not None and reply[1]:
            break
    probe['answered'] = any(a['reply'] is not None and not a['reply'].startswith(ERROR_PREFIX)
                            for a in probe['attempts'])
    probe['took_s'] = round(time.monotonic() - started, 2)
    return probe


def diagnostics_gaps(times: List[float], end: float, start: float, limit_s: float,
                     events: List[dict]) -> List[dict]:
    """Return silences of /diagnostics longer than limit_s, with the faults of the 10 s before."""
    gaps = []
    for before, after in zip(times, times[1:] + [end]):
        if after - before > limit_s:
            t0 = before - start
            gaps.append({'from_s': round(t0, 2), 'to_s': round(after - start, 2),
                         'seconds': round(after - before, 2),
                         'until_end_of_run': after == end,
                         'faults_just_before': [f'{e["t_s"]} {e["fault"]}' for e in events
                                                if t0 - 10 <= e['t_s'] <= t0 + 0.5]})
    return gaps


def scan_log(path: str) -> dict:
    """Return counts of ERROR/WARN lines and tracebacks in the node's log, with a few examples."""
    counts: collections.Counter = collections.Counter()
    tracebacks: List[str] = []
    examples: Dict[str, str] = {}
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for index, line in enumerate(lines):
        for level in ('[ERROR]', '[WARN]', '[FATAL]'):
            if level in line:
                counts[level.strip('[]')] += 1
                key = re.sub(r'\d+(\.\d+)?', '#', line.split(']: ', 1)[-1])[:100]
                examples.setdefault(key, line[:300])
        if line.startswith('Traceback'):
            counts['Traceback'] += 1
            if len(tracebacks) < 3:
                tracebacks.append('\n'.join(lines[index:index + 25]))
    warn_kinds = collections.Counter(
        re.sub(r'\d+(\.\d+)?', '#', line.split(']: ', 1)[-1])[:100]
        for line in lines if '[WARN]' in line or '[ERROR]' in line)
    return {'counts': dict(counts), 'warning_and_error_kinds': dict(warn_kinds.most_common(15)),
            'tracebacks': tracebacks}


def sample(node: psutil.Process, client: FaultClient, start: float, worker_peaks: dict,
           shm_seen: set) -> dict:
    """Take one sample of the node, its worker, shared memory and the counts so far."""
    now = time.monotonic()
    shm_names, shm_mb = mapped_shm(node.pid)
    shm_seen |= shm_names
    worker = worker_of(node)
    worker_rss = rss_mb(worker)
    if worker is not None:
        peak = peak_rss_mb(worker.pid)
        entry = worker_peaks.setdefault(worker.pid, {'first_seen_s': round(now - start, 1)})
        entry['peak_rss_mb'] = max(entry.get('peak_rss_mb') or 0.0, peak or 0.0,
                                   worker_rss or 0.0)
        entry['last_seen_s'] = round(now - start, 1)
    try:
        threads, fds = node.num_threads(), node.num_fds()
    except psutil.Error:
        threads = fds = None
    with client.changed:
        values = dict(client.diagnostics)
        diagnostics_age = None if not client.diagnostics_at else now - client.diagnostics_at
        replies = len(client.replies)
        errors = sum(1 for r in client.replies if not r[1])
        sent = client.sent
    return {
        't_s': round(now - start, 1), 'node_rss_mb': _round(rss_mb(node), 1),
        'node_threads': threads, 'node_fds': fds,
        'node_shm_blocks': len(shm_names), 'node_shm_mapped_mb': _round(shm_mb, 1),
        'worker_pid': None if worker is None else worker.pid,
        'worker_rss_mb': _round(worker_rss, 1), 'sent': sent, 'replies': replies,
        'errors': errors, 'diagnostics_age_s': _round(diagnostics_age, 2),
        'engine_state': values.get('engine_state'), 'queue_depth': values.get('queue_depth'),
        'worker_restarts': values.get('worker_restarts'),
        'prompts_received': values.get('prompts_received'),
        'frames_received': values.get('frames_received'),
    }


def window_rows(samples: List[dict], replies: List[tuple], events: List[dict], start: float,
                window_s: float, sent_times: List[float]) -> List[dict]:
    rows = []
    end = max([s['t_s'] for s in samples] + [0.0])
    t = 0.0
    while t < end:
        in_window = [r for r in replies if t <= r[0] - start < t + window_s]
        last = ([s for s in samples if s['t_s'] < t + window_s][-1:] or [{}])[0]
        window_samples = [s for s in samples if t <= s['t_s'] < t + window_s]
        rows.append({
            'from_s': round(t), 'to_s': round(min(t + window_s, end)),
            'sent': sum(1 for at in sent_times if t <= at < t + window_s),
            'replies': len(in_window), 'answers': sum(1 for r in in_window if r[1]),
            'errors': sum(1 for r in in_window if not r[1]),
            'faults': sum(1 for e in events if t <= e['t_s'] < t + window_s),
            'restarts': last.get('worker_restarts'), 'node_rss_mb': last.get('node_rss_mb'),
            'node_threads': last.get('node_threads'), 'node_fds': last.get('node_fds'),
            'worker_rss_mb': last.get('worker_rss_mb'),
            'max_diag_age_s': max((s['diagnostics_age_s'] or 0.0 for s in window_samples),
                                  default=None),
        })
        t += window_s
    return rows


def print_rows(header: Tuple[str, ...], rows: List[tuple], width: int = 9) -> None:
    print(' | '.join(f'{h:>{width}}' for h in header))
    for row in rows:
        print(' | '.join(f'{"-" if c is None else c!s:>{width}}' for c in row))


def fault_summary(events: List[dict]) -> Dict[str, dict]:
    """Return per fault kind: how many were drawn, injected and skipped, and what came of them."""
    summary: Dict[str, dict] = {}
    for event in events:
        entry = summary.setdefault(event['fault'], collections.Counter())
        entry['drawn'] += 1
        entry['skipped' if 'skipped' in event else 'injected'] += 1
        if 'soak_error' in event:
            entry['soak_errors'] += 1
        if event['fault'] == 'stall' and 'outcome' in event:
            entry['killed_by_node_before_sigcont' if 'by the node' in event['outcome']
                  else 'killed_by_fault_before_sigcont' if 'gone' in event['outcome']
                  else 'resumed'] += 1
        if 'calls' in event:
            entry['calls'] += event['calls']
            entry['unanswered_calls'] += event['unanswered']
        if event['fault'] in ('cancel', 'cancel_burst') and 'calls' in event:
            entry['cancelled_something'] += event.get('cancelled', 0)
        if event.get('aimed'):
            entry['aimed_mid_answer'] += 1
        if event['fault'] == 'params' and event.get('unexpected'):
            entry['unexpected_parameter_results'] += len(event['unexpected'])
        if event['fault'] == 'params' and event.get('invalid'):
            entry['with_invalid_value'] += 1
        if 'frames' in event:
            entry['bad_frames'] += sum(event['frames'].values())
        if 'prompts' in event:
            entry['prompts'] += event['prompts']
    return {kind: dict(counts) for kind, counts in sorted(summary.items())}


def run(args: argparse.Namespace) -> int:
    """Run the fault soak; return the exit code (0 when the verdict passed)."""
    os.environ['ROS_DOMAIN_ID'] = str(args.domain_id)
    if os.environ.get('ROS_DISTRO') == 'humble':
        os.environ['ROS_LOCALHOST_ONLY'] = '1'
    else:
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))

    workdir = tempfile.mkdtemp(prefix='phi3v_soak_faults_')
    model = args.model
    if model is None:
        from phi3v_ros.tools.make_tiny_model import make_tiny_model
        model = str(make_tiny_model(os.path.join(workdir, 'model'), seed=0))
    width, height = args.size
    parameters = {'model_path': model, 'provider': args.provider,
                  'max_new_tokens': args.max_new_tokens, 'max_queue': 8,
                  'image_wait_timeout': 2.0, 'stall_timeout': args.stall_timeout,
                  'diagnostics_period': 0.5, 'use_compressed': args.compressed}
    node_args = python_module('phi3v_ros.vision_qa_node') + ['--ros-args']
    for name, value in parameters.items():
        node_args += ['-p', f'{name}:={value}']
    for extra in args.param:
        node_args += ['-p', extra]
    camera_args = (python_module('phi3v_ros.tools.synthetic_camera')
                   + ['--width', str(width), '--height', str(height),
                      '--rate', str(args.frame_rate)] + (['--compressed'] if args.compressed
                                                         else []))
    log_path = args.log or os.path.splitext(args.out)[0] + '_node.log'
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    shm_before = shm_blocks()

    log_file = open(log_path, 'w', encoding='utf-8')
    node_proc = subprocess.Popen(node_args, stdout=log_file, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    camera_proc = subprocess.Popen(camera_args, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    client = None
    driver = None
    stop_prompts = threading.Event()
    prompter = None
    soak_errors: List[str] = []
    samples: List[dict] = []
    worker_peaks: Dict[int, dict] = {}
    shm_seen: set = set()
    result: dict = {}
    node_died: Optional[dict] = None
    stopped: dict = {}
    start = time.monotonic()
    try:
        client = FaultClient(args.compressed)
        node = psutil.Process(node_proc.pid)
        deadline = time.monotonic() + 120
        while not (client.connected() and client.diagnostics.get('engine_state') == 'ready'
                   and int(client.diagnostics.get('frames_received') or 0) > 0
                   and client.cancel_client.service_is_ready()
                   and client.parameter_client.service_is_ready()):
            if time.monotonic() > deadline or node_proc.poll() is not None:
                raise RuntimeError(f'the node did not become ready; see {log_path}')
            time.sleep(0.1)
        print(f'node ready (pid {node_proc.pid}, domain {args.domain_id}); fault soak for '
              f'{args.duration:g} s, seed {args.seed}, a fault every {args.fault_interval[0]:g}-'
              f'{args.fault_interval[1]:g} s from {",".join(sorted(args.fault_kinds))}; '
              f'a prompt every {args.prompt_interval:g} s; node log {log_path}', flush=True)
        start = time.monotonic()
        driver = FaultDriver(client, node, args, start)
        prompter = threading.Thread(target=_prompter, name='soak-prompter', daemon=True,
                                    args=(client, args.prompt_interval, stop_prompts,
                                          soak_errors))
        prompter.start()
        driver.start_driving()
        next_sample = start
        while time.monotonic() - start < args.duration:
            if node_proc.poll() is not None:
                node_died = {'at_s': round(time.monotonic() - start, 1),
                             'exit_code': node_proc.returncode}
                print(f'the node exited with {node_proc.returncode} at {node_died["at_s"]} s',
                      flush=True)
                break
            if time.monotonic() >= next_sample:
                samples.append(sample(node, client, start, worker_peaks, shm_seen))
                if args.verbose:
                    print(json.dumps(samples[-1]), flush=True)
                else:
                    s = samples[-1]
                    print(f'{s["t_s"]:7.1f} s: sent {s["sent"]}, replies {s["replies"]} '
                          f'({s["errors"]} ERROR), faults {len(driver.events)}, state '
                          f'{s["engine_state"]}, restarts {s["worker_restarts"]}, node '
                          f'{s["node_rss_mb"]} MB / {s["node_threads"]} threads / '
                          f'{s["node_fds"]} fds, worker {s["worker_rss_mb"]} MB, diagnostics '
                          f'{s["diagnostics_age_s"]} s old', flush=True)
                next_sample += args.sample_interval
            time.sleep(0.2)
        faults_end = time.monotonic()
        stop_prompts.set()
        prompter.join(5)
        driver.stop()
        print('faults stopped; waiting for the last replies', flush=True)
        drained = {'complete': False, 'skipped': 'the node died'} if node_died else \
            drain(client, args.drain_timeout)
        silent_s = time.monotonic() - client.diagnostics_at
        if node_died or silent_s > 10:
            why = 'the node died' if node_died else f'no /diagnostics for {silent_s:.0f} s'
            probe = {'answered': False, 'skipped': why}
            final = {'complete': False, 'skipped': why}
        else:
            probe = recovery_probe(client, 45.0)
            final = drain(client, 20.0)
        time.sleep(2.0)   # a second reply to any prompt would show up now
        driver.settle_calls(force=True)
        if node_proc.poll() is None:
            samples.append(sample(node, client, start, worker_peaks, shm_seen))
        elif node_died is None:
            node_died = {'at_s': round(time.monotonic() - start, 1),
                         'exit_code': node_proc.returncode, 'after_the_faults': True}
        with client.changed:
            replies = list(client.replies)
            sent = client.sent
            sent_by_kind = dict(client.sent_by_kind)
            sent_times = list(client.sent_times)
            values = dict(client.diagnostics)
            diagnostics_age = time.monotonic() - client.diagnostics_at
            settled = client.settled()
            states = list(client.states)
            error_states = {k: dict(v) for k, v in client.error_states.items()}
            diag_times = list(client.diagnostic_times)
            diag_worker_pids = list(client.worker_pids)
            max_restarts = client.max_restarts
            pieces = client.pieces
        counters = {key: int(values.get(f'prompts_{key}', -1))
                    for key in ('received', 'answered', 'rejected', 'failed')}
        errors = [r[2] for r in replies if not r[1]]
        events = driver.events
        result = {
            'mode': 'faults',
            'machine': {'cpu': platform.processor() or platform.machine(),
                        'cores': os.cpu_count(), 'platform': platform.platform(),
                        'python': platform.python_version()},
            'settings': {
                'duration_s': args.duration, 'seed': args.seed,
                'fault_interval_s': list(args.fault_interval), 'fault_kinds': args.fault_kinds,
                'max_faults': args.max_faults, 'max_stall_s': args.max_stall,
                'prompt_interval_s': args.prompt_interval, 'frame_rate_hz': args.frame_rate,
                'size': f'{width}x{height}', 'compressed': args.compressed,
                'node_parameters': {k: v for k, v in parameters.items() if k != 'model_path'},
                'extra_parameters': args.param, 'domain_id': args.domain_id,
                'model': 'tiny random-weight phi3v (make_tiny_model)' if args.model is None
                else args.model},
            'prompts_sent': sent, 'prompts_sent_by_kind': sent_by_kind,
            'replies': len(replies), 'answers': len(replies) - len(errors),
            'error_replies': len(errors),
            'error_reply_kinds': dict(collections.Counter(map(category, errors)).most_common(20)),
            'stream_messages': pieces,
            'node_counters_at_end': {**counters, 'queue_depth': values.get('queue_depth'),
                                     'diagnostics_age_s': round(diagnostics_age, 2)},
            'drain': drained, 'recovery_probe': probe, 'final_drain': final,
            'faults_injected': fault_summary(events),
            'worker': {'restarts_reported': max_restarts,
                       'pids_in_diagnostics': len(diag_worker_pids),
                       'per_worker_peak_rss_mb': {str(pid): v for pid, v in
                                                  worker_peaks.items()}},
            'engine_states': [{'t_s': round(t - start, 2), 'state': s, 'detail': d[:160]}
                              for t, s, d in states],
            'diagnostics_error_states': {
                k: {'count': v['count'], 'first_s': round(v['first'] - start, 2),
                    'last_s': round(v['last'] - start, 2), 'example': v['example'][:200]}
                for k, v in error_states.items()},
            'diagnostics_gaps': diagnostics_gaps(diag_times, time.monotonic(), start, 3.0,
                                                 events),
            'node_died': node_died,
            'memory': {'node': memory_verdict(samples, 'node_rss_mb', args.warmup,
                                              args.max_growth_mb)},
            'node_threads': count_verdict(samples, 'node_threads', args.warmup,
                                          args.max_thread_growth),
            'node_fds': count_verdict(samples, 'node_fds', args.warmup, args.max_fd_growth),
            'node_shm_mapped_mb_max': max((s['node_shm_mapped_mb'] or 0 for s in samples),
                                          default=0),
            'node_shm_blocks_max': max((s['node_shm_blocks'] for s in samples), default=0),
            'soak_errors': soak_errors + driver.errors,
            'faults': events,
            'faults_ended_at_s': round(faults_end - start, 1),
        }
        result['windows'] = window_rows(samples, replies, events, start, args.window,
                                        [t - start for t in sent_times])
        result['samples'] = samples
        result['settled'] = settled
    except KeyboardInterrupt:
        soak_errors.append('interrupted')
    except Exception:   # noqa: BLE001 - cleaned up and reported below
        soak_errors.append(traceback.format_exc())
    finally:
        stop_prompts.set()
        if driver is not None:
            driver.stop(5.0)
            driver.settle_calls(force=True)
        stopped = stop_process(node_proc, args.stop_timeout)
        camera = stop_process(camera_proc, 10.0)
        if client is not None:
            try:
                client.close()
            except Exception:   # noqa: BLE001 - closing is best effort
                soak_errors.append(traceback.format_exc())
        log_file.close()
        time.sleep(0.5)
        leftover = sorted(name for name in shm_seen if os.path.exists(f'/dev/shm/{name}'))
        for name in leftover:   # recorded; removed so that /dev/shm does not fill up
            try:
                os.unlink(f'/dev/shm/{name}')
            except OSError:
                pass
        new_on_machine = sorted(set(shm_blocks()) - set(shm_before))
        shutil.rmtree(workdir, ignore_errors=True)
    if not result:
        print('the fault soak could not run:\n' + '\n'.join(soak_errors), file=sys.stderr)
        print(f'node log: {log_path}', file=sys.stderr)
        return 2
    result['node_stop'] = stopped
    result['camera_stop'] = camera
    result['node_shm_blocks_seen'] = sorted(shm_seen)
    result['shm_blocks_left_after_stop'] = leftover    # of those the node had mapped
    result['shm_blocks_new_on_the_machine'] = new_on_machine   # any process's
    result['node_log'] = {'path': log_path, **scan_log(log_path)}
    result['checks'] = checks = verdict_checks(result, args)
    result['findings'] = findings(result)
    result['passed'] = passed = all(checks.values())
    print_summary(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
        f.write('\n')
    print(f'fault soak {"passed" if passed else "FAILED"}; results in {args.out}, '
          f'node log {log_path}')
    return 0 if passed else 1


def verdict_checks(result: dict, args: argparse.Namespace) -> Dict[str, bool]:
    counters = result['node_counters_at_end']
    outcomes = counters['answered'] + counters['rejected'] + counters['failed']
    fresh = counters['diagnostics_age_s'] < 5.0
    stop = result['node_stop']
    return {
        'one_reply_per_prompt': result['replies'] == result['prompts_sent'],
        'node_received_every_prompt': fresh and counters['received'] == result['prompts_sent'],
        'node_counters_add_up': (fresh and counters['received'] == outcomes
                                 and counters['queue_depth'] == '0'),
        'node_counters_match_replies': fresh and outcomes == result['replies'],
        'node_alive_throughout': result['node_died'] is None,
        'node_stopped_cleanly': (stop.get('exit_code') == 0 and stop['how'] == 'stopped on SIGINT'
                                 and stop['stop_s'] <= args.stop_timeout
                                 and not stop['processes_left_in_group']),
        'node_rss_flat': result['memory']['node'].get('verdict') == 'flat',
        'node_threads_flat': result['node_threads'].get('verdict') == 'flat',
        'node_fds_flat': result['node_fds'].get('verdict') == 'flat',
        'no_shm_left_after_stop': not result['shm_blocks_left_after_stop'],
        'answers_after_the_faults': bool(result['recovery_probe'].get('answered')),
        'soak_itself_ok': not result['soak_errors'],
    }


def findings(result: dict) -> dict:
    """Return what is reported besides the verdict (it does not fail the soak)."""
    events = result['faults']
    return {
        'service_calls': sum(e.get('calls', 0) for e in events),
        'service_calls_unanswered': sum(e.get('unanswered', 0) for e in events),
        'parameter_calls_with_unexpected_results': [
            {k: e.get(k) for k in ('t_s', 'values', 'invalid', 'results')}
            for e in events if e.get('unexpected')],
        'diagnostics_error_states': sum(v['count']
                                        for v in result['diagnostics_error_states'].values()),
        'diagnostics_silent_over_3_s': len(result['diagnostics_gaps']),
        'node_shm_mapped_mb_max': result['node_shm_mapped_mb_max'],
        'worker_peak_rss_mb_max': _round(max(
            (v['peak_rss_mb'] for v in result['worker']['per_worker_peak_rss_mb'].values()),
            default=None), 1),
        'node_log': result['node_log'].get('counts'),
    }


def print_summary(result: dict) -> None:
    print()
    header = ('window', 'sent', 'replies', 'answers', 'errors', 'faults', 'restarts',
              'node MB', 'threads', 'fds', 'worker MB', 'diag age')
    print_rows(header, [(f'{r["from_s"]}-{r["to_s"]}', r['sent'], r['replies'], r['answers'],
                         r['errors'], r['faults'], r['restarts'], r['node_rss_mb'],
                         r['node_threads'], r['node_fds'], r['worker_rss_mb'],
                         r['max_diag_age_s']) for r in result['windows']])
    print()
    keys = ('drawn', 'injected', 'skipped', 'calls', 'unanswered_calls', 'prompts', 'bad_frames')
    print_rows(('fault',) + keys + ('other',), [
        (kind,) + tuple(s.get(k, 0) for k in keys)
        + (', '.join(f'{k} {v}' for k, v in s.items() if k not in keys) or None,)
        for kind, s in result['faults_injected'].items()], width=10)
    print()
    counters = result['node_counters_at_end']
    peaks = [v['peak_rss_mb'] for v in result['worker']['per_worker_peak_rss_mb'].values()]
    print(f'prompts sent {result["prompts_sent"]}, replies {result["replies"]} '
          f'({result["answers"]} answers, {result["error_replies"]} ERROR); node counters: '
          f'received {counters["received"]} = answered {counters["answered"]} + rejected '
          f'{counters["rejected"]} + failed {counters["failed"]}, queue_depth '
          f'{counters["queue_depth"]} (diagnostics {counters["diagnostics_age_s"]} s old)')
    print(f'worker restarts {result["worker"]["restarts_reported"]}, per-worker peak RSS '
          f'{round(max(peaks), 1) if peaks else "-"} MB max over {len(peaks)} workers; node '
          f'RSS {result["memory"]["node"].get("verdict")} '
          f'({result["memory"]["node"].get("growth_mb")} MB), threads '
          f'{result["node_threads"].get("verdict")}, fds {result["node_fds"].get("verdict")}; '
          f'node stop: {result["node_stop"]["how"]} in {result["node_stop"]["stop_s"]} s, '
          f'exit code {result["node_stop"]["exit_code"]}')
    for kind, count in result['error_reply_kinds'].items():
        print(f'  {count:5d} x ERROR: {kind}')
    for key, value in result['diagnostics_error_states'].items():
        print(f'  diagnostics ERROR x{value["count"]} ({value["first_s"]}-{value["last_s"]} s): '
              f'{value["example"][:150]}')
    for gap in result['diagnostics_gaps']:
        print(f'  no /diagnostics for {gap["seconds"]} s from {gap["from_s"]} s'
              f'{" to the end" if gap["until_end_of_run"] else ""}; faults just before: '
              f'{", ".join(gap["faults_just_before"]) or "none"}')
    for error in result['soak_errors']:
        print(f'  soak error: {error.strip().splitlines()[-1]}')
    print('findings (not part of the verdict): ' + ', '.join(
        f'{k} {v}' for k, v in result['findings'].items()
        if k != 'parameter_calls_with_unexpected_results')
        + f', parameter calls with unexpected results '
          f'{len(result["findings"]["parameter_calls_with_unexpected_results"])}')
    print_rows(('check', 'result'), [(k, 'ok' if v else 'FAILED')
                                     for k, v in result['checks'].items()], width=28)
