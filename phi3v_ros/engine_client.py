"""
Parent side of the worker process: start it, submit requests, stream results, survive its death.

The client runs one request at a time. Callbacks (on_piece, on_result, on_state) run on the
client's monitor thread. If the worker dies or stalls, the request in flight gets an ERROR result
at once and the worker is restarted with a bounded exponential backoff.
"""
from __future__ import annotations

import enum
import itertools
import multiprocessing
from multiprocessing.connection import wait
import signal
import threading
import time
from typing import Callable, Optional

from phi3v_ros.engine import EngineConfig
from phi3v_ros.errors import EngineError
from phi3v_ros.frame_transport import FrameSender
from phi3v_ros.generation import Request, Result, StopReason
from phi3v_ros.worker import worker_main, WorkItem


class EngineState(str, enum.Enum):
    STOPPED = 'stopped'
    LOADING = 'loading'
    READY = 'ready'
    GENERATING = 'generating'
    RESTARTING = 'restarting'
    FAILED = 'failed'


def describe_exit(exitcode: Optional[int]) -> str:
    """'killed by SIGKILL' or 'exited with code 1' for a multiprocessing exit code."""
    if exitcode is None:
        return 'stopped answering'
    if exitcode < 0:
        try:
            return f'was killed by {signal.Signals(-exitcode).name}'
        except ValueError:
            return f'was killed by signal {-exitcode}'
    return f'exited with code {exitcode}'


class _InFlight:
    def __init__(self, request_id: int, on_piece, on_result) -> None:
        self.request_id = request_id
        self.on_piece = on_piece
        self.on_result = on_result


class EngineClient:
    """Owns the worker process. Thread-safe; callbacks come from one internal thread."""

    def __init__(self, config: EngineConfig, *, warmup: bool = True,
                 stall_timeout_s: float = 60.0, load_timeout_s: float = 600.0,
                 restart_backoff_s: tuple = (0.5, 30.0), failed_after_crashes: int = 3,
                 on_state: Optional[Callable[['EngineState', str], None]] = None,
                 log: Callable[[str], None] = lambda text: None) -> None:
        self.config = config
        self._warmup = warmup
        self._stall_timeout_s = stall_timeout_s
        self._load_timeout_s = load_timeout_s
        self._backoff_min, self._backoff_max = restart_backoff_s
        self._failed_after_crashes = failed_after_crashes
        self._on_state = on_state or (lambda state, detail: None)
        self._log = log
        self._context = multiprocessing.get_context('spawn')   # fork would break CUDA and rclpy
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._frames = FrameSender()
        self._process = None
        self._conn = None
        self._in_flight: Optional[_InFlight] = None
        self._last_activity = 0.0
        self._started_at = 0.0
        self._crashes = 0
        self._restart_at: Optional[float] = None
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._monitor: Optional[threading.Thread] = None
        self.state = EngineState.STOPPED
        self.detail = ''
        self.info: dict = {}
        self.restarts = 0

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._monitor = threading.Thread(target=self._run, name='phi3v-engine-client', daemon=True)
        self._monitor.start()

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """
        Wait until the worker is ready; False on timeout.

        Raises EngineError if loading failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready.wait(0.05):
                return True
            if self.state == EngineState.FAILED:
                raise EngineError(self.detail)
            if deadline is not None and time.monotonic() > deadline:
                return False

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    @property
    def pid(self) -> Optional[int]:
        process = self._process
        return None if process is None else process.pid

    def submit(self, request: Request, on_result: Callable[[Result], None],
               on_piece: Callable[[str], None] = lambda piece: None) -> int:
        """Start a request; returns its id. Raises EngineError when not ready or already busy."""
        with self._lock:
            if self._in_flight is not None:
                raise EngineError('the engine is busy with another request')
            if self.state != EngineState.READY:
                raise EngineError(f'the engine is {self.state.value}'
                                  + (f': {self.detail}' if self.detail else ''))
            request_id = next(self._ids)
            frame = None if request.image is None else self._frames.put(request.image)
            item = WorkItem(prompt=request.prompt, settings=request.settings,
                            system_prompt=request.system_prompt, history=tuple(request.history),
                            frame=frame)
            self._in_flight = _InFlight(request_id, on_piece, on_result)
            self._last_activity = time.monotonic()
            self._set_state(EngineState.GENERATING)
            try:
                self._conn.send(('generate', request_id, item))
            except (OSError, ValueError):
                pass   # the worker is dying; the monitor thread fails the request at once
            return request_id

    def frame_buffer(self, shape: tuple):
        """
        Return an array in the shared block frames travel in, or None while a request is in flight.

        The next request's frame can be converted straight into it (submit() then copies nothing);
        while a request is in flight, its frame is there.
        """
        with self._lock:
            if self._in_flight is not None or self._closing.is_set():
                return None
            return self._frames.buffer(shape)

    def cancel(self, request_id: Optional[int] = None) -> bool:
        """Ask the worker to stop the request in flight (or request_id) between tokens."""
        with self._lock:
            in_flight = self._in_flight
            if in_flight is None or (request_id is not None
                                     and request_id != in_flight.request_id):
                return False
            try:
                self._conn.send(('cancel', in_flight.request_id))
            except (OSError, ValueError):
                pass
            return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the worker (asking first, then killing) and free the shared memory."""
        self._closing.set()
        self._wake.set()
        with self._lock:
            self._stop_process(timeout_s)
            self._fail_in_flight('the node is shutting down')
            self._frames.close()
            self._set_state(EngineState.STOPPED)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout_s)

    # -- worker lifecycle (under self._lock) --------------------------------------------------

    def _spawn(self) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(target=worker_main, name='phi3v-worker',
                                        args=(child_conn, self.config, self._warmup), daemon=True)
        process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        self._started_at = self._last_activity = time.monotonic()
        self._ready.clear()
        # a failed engine stays 'failed' until it is ready again
        if self.state != EngineState.FAILED:
            self._set_state(EngineState.LOADING, f'loading {self.config.model_path}')

    def _stop_process(self, timeout_s: float) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        try:
            conn.send(('shutdown',))
        except (OSError, ValueError):
            pass
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join(timeout_s)
        conn.close()

    def _set_state(self, state: EngineState, detail: str = '') -> None:
        changed = (state, detail) != (self.state, self.detail)
        self.state, self.detail = state, detail
        if changed:
            self._on_state(state, detail)

    def _fail_in_flight(self, reason: str) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.on_result(Result(stop_reason=StopReason.ERROR, error=reason))

    # -- monitor thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                process, conn = self._process, self._conn
            if process is None:
                self._wait_and_restart()
                continue
            try:
                ready = wait([conn, process.sentinel], timeout=0.1)
            except (OSError, ValueError):
                ready = [process.sentinel]
            if self._closing.is_set():
                return
            if conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._on_worker_death(process)
                    continue
                self._handle(message)
            elif process.sentinel in ready:
                self._on_worker_death(process)
            else:
                self._check_timeouts(process)

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        with self._lock:
            self._last_activity = time.monotonic()
            in_flight = self._in_flight
        if kind == 'piece':
            if in_flight is not None and in_flight.request_id == message[1]:
                in_flight.on_piece(message[2])
        elif kind == 'result':
            with self._lock:
                if in_flight is None or in_flight.request_id != message[1]:
                    return
                self._in_flight = None
                self._set_state(EngineState.READY)
            in_flight.on_result(message[2])
        elif kind == 'ready':
            with self._lock:
                self.info = message[1]
                self._crashes = 0
                self._set_state(EngineState.READY, f'{self.info.get("provider")} provider')
                self._ready.set()
        elif kind == 'load_failed':
            with self._lock:
                # A load failure is about the model folder or the install: retrying cannot fix it.
                self._stop_process(1.0)
                self._set_state(EngineState.FAILED, message[1])
        elif kind == 'log':
            self._log(message[1])

    def _check_timeouts(self, process) -> None:
        with self._lock:
            if self._process is not process:
                return
            now = time.monotonic()
            loading = not self._ready.is_set()
            if loading and now - self._started_at > self._load_timeout_s:
                reason = f'did not finish loading within load_timeout ({self._load_timeout_s:g} s)'
            elif self._in_flight is not None and now - self._last_activity > self._stall_timeout_s:
                reason = f'was silent for stall_timeout ({self._stall_timeout_s:g} s)'
            else:
                return
            self._log(f'the inference worker {reason}: killing it')
            process.kill()
        process.join(1.0)
        self._on_worker_death(process, reason)

    def _on_worker_death(self, process, reason: Optional[str] = None) -> None:
        with self._lock:
            if self._process is not process:
                return
            process.join(1.0)
            reason = reason or describe_exit(process.exitcode)
            self._process = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._ready.clear()
            self._crashes += 1
            self.restarts += 1
            delay = min(self._backoff_max, self._backoff_min * 2 ** (self._crashes - 1))
            self._restart_at = time.monotonic() + delay
            message = f'the inference worker {reason}; restarting it in {delay:g} s'
            if self._crashes >= self._failed_after_crashes:
                self._set_state(EngineState.FAILED,
                                f'the inference worker {reason} ({self._crashes} times in a row); '
                                f'retrying every {delay:g} s')
            else:
                self._set_state(EngineState.RESTARTING, message)
            self._log(message)
            self._fail_in_flight(
                f'the inference worker {reason} while answering; it is being restarted')

    def _wait_and_restart(self) -> None:
        with self._lock:
            restart_at = self._restart_at
        if restart_at is None:     # failed at load: nothing to restart, wait for close()
            self._wake.wait(0.5)
            self._wake.clear()
            return
        delay = restart_at - time.monotonic()
        if delay > 0:
            self._wake.wait(delay)
            self._wake.clear()
            return
        with self._lock:
            if self._closing.is_set():
                return
            self._restart_at = None
            self._spawn()
