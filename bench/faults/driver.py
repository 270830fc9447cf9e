"""
Driving the faults: what each fault does to the node, drawn at random (seeded) while prompts flow.

kill, stall (SIGSTOP/SIGCONT of the worker), cancel and cancel_burst, reset, params (some out of
range), bad_frames (raw or compressed), prompt_burst. The FaultDriver runs in its own guarded
thread and logs every fault it did as an event for the recording.
"""
from __future__ import annotations

import argparse
import collections
import random
import threading
import time
import traceback
from typing import Dict, List, Optional, Tuple

from bench.faults.client import CallBatch, FaultClient
from bench.process_watch import worker_of
import psutil


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
