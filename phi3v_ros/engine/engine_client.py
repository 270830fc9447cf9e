"""
Parent side of the worker process: start it, submit requests, stream results, survive its death.

The client runs one request at a time. If the worker dies or stalls, the request in flight gets an
ERROR result at once and the worker is restarted with a bounded exponential backoff.

Threads, and what each owns (the concurrency model):
- Callers (the dispatcher, ROS callbacks): submit(), cancel(), frame_buffer(), close(). They take
  self._lock only to read or change the fields below, never block on the worker, and never do
  I/O under the lock: a message for the worker is put on the worker's outbox (a queue).
- The writer thread of each worker ('phi3v-engine-writer') owns the sending end of its pipe. It may
  block in send while the worker reads nothing (stopped, wedged in a driver, inside a long
  prefill); nobody waits for it. The watchdog kills such a worker, which ends the send.
- The monitor thread ('phi3v-engine-monitor') owns the receiving end and the processes: it reads
  the worker's messages, spawns and reaps workers (a killed one that takes long to end is reaped
  later, in a later pass), and runs the callbacks (on_piece, on_result, on_state, log); close()
  runs the last ones itself, once the monitor has ended. Callbacks are queued under the lock and
  run after it is released, so a callback may call back into the client. The monitor spawns
  every worker and must outlive them: Linux sends the parent-death signal (worker_launch.py)
  when the thread that spawned the worker ends, not only its process. So close() stops the
  worker first and only then ends the monitor.
- The watchdog thread ('phi3v-engine-watchdog') kills a worker that takes longer than
  load_timeout to load or is silent for stall_timeout during a request. It is apart from the
  monitor because the monitor can be blocked in recv() on a message the worker stopped sending
  half-way; the kill ends that recv.
- Both loops are guarded (guarded_thread.py): a bug in one pass, or in a callback, is logged and
  counted, not fatal.
- self._lock guards: _worker, _unreaped, _in_flight, state/detail, _crashes, _restart_at,
  _ever_ready, _events, info, restarts, the shared-memory fallback flag, and a worker's
  kill_reason.

Restarts: the first load's failure is final (a configuration error: the model folder, the
install); every later failure (a crash, a stall, a load that fails after a restart, a worker that
cannot be started) is retried after 0.5, 1, 2 ... 30 s. A worker that crashes while loading the
first time (no load error, e.g. killed for memory) is retried too: it may fit once memory is
free. Crashes are counted until a request completes, so a worker that loads but dies on every
request backs off and is reported as failed after failed_after_crashes crashes in a row, while it
is still retried.
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
from multiprocessing.connection import Connection, wait
import queue
import signal
import threading
import time
from typing import Callable, List, Optional

from phi3v_ros.base.errors import EngineError
from phi3v_ros.base.guarded_thread import start_guarded, ThreadHealth
from phi3v_ros.engine import worker_launch
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.generation import Request, Result, StopReason
from phi3v_ros.engine.worker import WorkItem
from phi3v_ros.frames.frame_transport import FrameSender, SharedMemoryUnavailable

_POLL_S = 0.1   # the monitor's longest sleep: how soon it sees close() and timeouts


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


def _has_unread(conn: Connection) -> bool:
    """Return True when conn has a message (or its end) to read now."""
    try:
        return conn.poll(0)
    except (OSError, ValueError):      # closed or broken: nothing more will come
        return False


class _InFlight:
    def __init__(self, request_id: int, on_piece, on_result) -> None:
        self.request_id = request_id
        self.on_piece = on_piece
        self.on_result = on_result
        self.cancel_sent = False


class _Worker:
    """One worker process, its pipe, and the thread that writes to the pipe."""

    def __init__(self, config: EngineConfig, warmup: bool) -> None:
        self.process, self.conn = worker_launch.spawn()
        self.started_at = time.monotonic()
        self.kill_reason = ''       # set by the watchdog before it kills
        self._outbox: 'queue.SimpleQueue' = queue.SimpleQueue()
        self._outbox.put(('start', config, warmup))
        self._writer = threading.Thread(target=self._write, name='phi3v-engine-writer',
                                        daemon=True)
        try:
            self._writer.start()
        except BaseException:
            self.kill()
            self.process.join(1.0)
            self.conn.close()
            raise

    @property
    def waitables(self) -> list:
        """Return what the monitor waits on: the pipe, and the process's end (Linux >= 5.3)."""
        sentinel = self.process.sentinel
        return [self.conn] if sentinel is None else [self.conn, sentinel]

    def send(self, message: tuple) -> None:
        """Queue a message for the worker; never blocks."""
        self._outbox.put(message)

    def _write(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                return    # the worker is gone: the monitor sees it and handles the death
            except Exception:  # noqa: BLE001 - e.g. a message that cannot be pickled: a bug
                # The monitor's stall watchdog fails the request; the worker is replaced.
                self.kill()
                return

    def kill(self) -> None:
        try:
            self.process.kill()
        except (OSError, ValueError, AttributeError):
            pass

    def stop(self, timeout_s: float) -> bool:
        """Ask the worker to stop, kill it if it does not within timeout_s, then close()."""
        self.send(('shutdown',))
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.kill()
            self.process.join(timeout_s)
        return self.close()

    def close(self) -> bool:
        """
        Free the pipe and the writer; True when the process is reaped too (its pidfd closed).

        A killed CUDA process can take seconds to end: the client reaps it later then.
        """
        self._outbox.put(None)
        self._writer.join(1.0)
        self.conn.close()
        if self.process.poll() is None:
            return False
        self.process.release()
        return True


class EngineClient:
    """Owns the worker process. Thread-safe; callbacks come from its monitor thread."""

    def __init__(self, config: EngineConfig, *, warmup: bool = True,
                 stall_timeout_s: float = 60.0, load_timeout_s: float = 600.0,
                 restart_backoff_s: tuple = (0.5, 30.0), failed_after_crashes: int = 3,
                 on_state: Optional[Callable[['EngineState', str], None]] = None,
                 log: Callable[[str], None] = lambda text: None,
                 health: Optional[ThreadHealth] = None) -> None:
        self.config = config
        self.stall_timeout_s = stall_timeout_s
        self._warmup = warmup
        self._load_timeout_s = load_timeout_s
        self._backoff_min, self._backoff_max = restart_backoff_s
        self._failed_after_crashes = failed_after_crashes
        self._on_state = on_state or (lambda state, detail: None)
        self._log = log
        self.health = health or ThreadHealth()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._frames = FrameSender()
        self._worker: Optional[_Worker] = None
        self._unreaped: List[worker_launch.WorkerProcess] = []   # killed, not yet ended
        self._in_flight: Optional[_InFlight] = None
        self._events: List[Callable[[], None]] = []
        self._last_activity = 0.0
        self._crashes = 0
        self._ever_ready = False
        self._restart_at: Optional[float] = 0.0     # None: no worker wanted (failed, closed)
        self._shm_problem = ''      # why frames go through the pipe ('' while shared memory works)
        self._closing = threading.Event()          # no new worker, no new request
        self._monitor_done = threading.Event()     # the monitor ends (after the worker)
        self._ready = threading.Event()
        self._monitor: Optional[threading.Thread] = None
        self._watchdog: Optional[threading.Thread] = None
        self.state = EngineState.STOPPED
        self.detail = ''
        self.info: dict = {}
        self.restarts = 0

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor thread, which starts the worker, and the watchdog."""
        if self._monitor is not None:
            return
        self._monitor = start_guarded('phi3v-engine-monitor', self._step, self._monitor_done,
                                      self.health, self._log)
        self._watchdog = start_guarded('phi3v-engine-watchdog', self._watch, self._monitor_done,
                                       self.health, self._log)

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
        worker = self._worker
        return None if worker is None else worker.process.pid

    @property
    def frame_transport(self) -> str:
        problem = self._shm_problem
        return 'shared memory' if not problem else f'pipe ({problem})'

    def submit(self, request: Request, on_result: Callable[[Result], None],
               on_piece: Callable[[str], None] = lambda piece: None) -> int:
        """Start a request; returns its id. Raises EngineError when not ready or already busy."""
        self._check_can_submit()
        # The frames are copied into shared memory outside the lock: only the one thread that
        # submits (the dispatcher) touches the blocks while no request is in flight.
        placed = [self._place_frame(image, slot) for slot, image in enumerate(request.images)]
        item = WorkItem(prompt=request.prompt, settings=request.settings,
                        system_prompt=request.system_prompt, history=tuple(request.history),
                        frames=tuple(frame for frame, _ in placed),
                        pixels=tuple(pixels for _, pixels in placed),
                        cameras=tuple(request.cameras),
                        missing_cameras=tuple(request.missing_cameras),
                        answer_format=request.answer_format,
                        keep_tokens=request.keep_tokens, follow_up=request.follow_up)
        with self._lock:
            self._check_can_submit_locked()
            request_id = next(self._ids)
            self._in_flight = _InFlight(request_id, on_piece, on_result)
            self._last_activity = time.monotonic()
            self._set_state(EngineState.GENERATING)
            worker = self._worker
        worker.send(('generate', request_id, item))
        return request_id

    def frame_buffer(self, shape: tuple, slot: int = 0):
        """
        Return an array in the shared block image number slot of a request travels in, or None.

        The next request's frame can be converted straight into it (submit() then copies nothing).
        None while a request is in flight (its frames are in the blocks) and where shared memory
        cannot be had (the frame then goes through the pipe).
        """
        with self._lock:
            if self._in_flight is not None or self._closing.is_set() or self._shm_problem:
                return None
        try:
            return self._frames.buffer(shape, slot)
        except SharedMemoryUnavailable as exc:
            self._shared_memory_failed(exc)
            return None

    def end_conversation(self) -> None:
        """
        Ask the worker to drop the sequence it keeps for follow-ups (its memory); never blocks.

        A restarted worker keeps none: the conversation then ends by itself.
        """
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.send(('end_conversation',))

    def cancel(self, request_id: Optional[int] = None) -> bool:
        """
        Ask the worker to stop the request in flight (or request_id only) between tokens.

        Never blocks; repeated calls send one message per request.
        """
        with self._lock:
            in_flight = self._in_flight
            if in_flight is None or (request_id is not None
                                     and request_id != in_flight.request_id):
                return False
            if in_flight.cancel_sent:
                return True
            in_flight.cancel_sent = True
            worker = self._worker
        if worker is not None:
            worker.send(('cancel', in_flight.request_id))
        return True

    def is_in_flight(self, request_id: int) -> bool:
        in_flight = self._in_flight
        return in_flight is not None and in_flight.request_id == request_id

    def abandon(self, request_id: int, reason: str) -> None:
        """Fail request_id now (its waiter gave up on it); a late result for it is dropped."""
        self.cancel(request_id)          # and the worker stops working on it
        with self._lock:
            if self._in_flight is not None and self._in_flight.request_id == request_id:
                self._fail_in_flight(reason)
                if self.state == EngineState.GENERATING:
                    self._set_state(EngineState.READY)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the worker (asking first, then killing) and free the shared memory; bounded."""
        self._closing.set()
        with self._lock:
            worker, self._worker = self._worker, None
            self._restart_at = None
        if worker is not None and not worker.stop(timeout_s):
            with self._lock:
                self._unreaped.append(worker.process)
        self._monitor_done.set()
        for thread in (self._monitor, self._watchdog):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)
        with self._lock:
            self._fail_in_flight('the node is shutting down')
            self._ready.clear()
            self._set_state(EngineState.STOPPED)
        self._deliver()
        self._frames.close()

    # -- under self._lock ---------------------------------------------------------------------

    def _check_can_submit(self) -> None:
        with self._lock:
            self._check_can_submit_locked()

    def _check_can_submit_locked(self) -> None:
        if self._closing.is_set():
            raise EngineError('the node is shutting down')
        if self._in_flight is not None:
            raise EngineError('the engine is busy with another request')
        if self.state != EngineState.READY or self._worker is None:
            raise EngineError(f'the engine is {self.state.value}'
                              + (f': {self.detail}' if self.detail else ''))

    def _set_state(self, state: EngineState, detail: str = '') -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self._events.append(lambda: self._on_state(state, detail))

    def _fail_in_flight(self, reason: str) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            result = Result(stop_reason=StopReason.ERROR, error=reason)
            self._events.append(lambda: in_flight.on_result(result))

    def _say(self, text: str) -> None:
        self._events.append(lambda: self._log(text))

    def _count_crash(self, reason: str) -> None:
        """Schedule the next try with backoff: a worker ended, or could not be (re)started."""
        self._ready.clear()
        self._crashes += 1
        self.restarts += 1
        # (the exponent is capped: 2.0 ** 1024 overflows after some hours of failed restarts)
        delay = min(self._backoff_max, self._backoff_min * 2.0 ** min(self._crashes - 1, 32))
        self._restart_at = time.monotonic() + delay
        if self._crashes >= self._failed_after_crashes:
            self._set_state(EngineState.FAILED,
                            f'the inference worker {reason} ({self._crashes} times in a row); '
                            f'retrying every {delay:g} s')
        else:
            self._set_state(EngineState.RESTARTING,
                            f'the inference worker {reason}; restarting it in {delay:g} s')
        self._say(f'the inference worker {reason}; restarting it in {delay:g} s')
        self._fail_in_flight(f'the inference worker {reason} while answering; it is being '
                             'restarted')

    # -- frames -------------------------------------------------------------------------------

    def _place_frame(self, image, slot: int):
        """Return (FrameRef, None) with the frame in shared memory, or (None, pixels)."""
        if not self._shm_problem:
            try:
                return self._frames.put(image, slot), None
            except SharedMemoryUnavailable as exc:
                self._shared_memory_failed(exc)
        return None, image

    def _shared_memory_failed(self, exc: Exception) -> None:
        with self._lock:
            first = not self._shm_problem
            self._shm_problem = str(exc)
        if first:
            self._frames.close()
            self._log(f'{exc}: frames go to the worker through the pipe from now on (slower; '
                      'give the container more /dev/shm, e.g. docker run --shm-size=1g)')

    # -- monitor thread -----------------------------------------------------------------------

    def _step(self) -> None:
        """Start, read, reap or time out the worker (one pass of the monitor); run callbacks."""
        try:
            self._reap_unreaped()
            if self._closing.is_set():       # close() stops the worker; wait to be ended
                self._monitor_done.wait(_POLL_S)
                return
            with self._lock:
                worker, restart_at = self._worker, self._restart_at
            if worker is None:
                if restart_at is not None and time.monotonic() >= restart_at:
                    self._start_worker()
                else:
                    wait_s = _POLL_S if restart_at is None else restart_at - time.monotonic()
                    self._closing.wait(min(_POLL_S, max(0.0, wait_s)))
                return
            try:
                ready = wait(worker.waitables, timeout=_POLL_S)
            except (OSError, ValueError):
                ready = [None]        # the pipe is broken: the worker is gone
            if self._closing.is_set():
                return
            # (is_alive: where there is no pidfd)
            ended = worker.conn not in ready and (bool(ready) or not worker.process.is_alive())
            # What a worker sent before it ended is read before its end is taken as a crash: the
            # wait can time out just before its last message (a load failure) and its exit.
            if worker.conn in ready or (ended and _has_unread(worker.conn)):
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    self._on_worker_death(worker)
                    return
                self._handle(worker, message)
            elif ended:
                self._on_worker_death(worker)
        finally:
            self._deliver()

    def _reap_unreaped(self) -> None:
        with self._lock:
            processes, self._unreaped = self._unreaped, []
        still = []
        for process in processes:
            if process.poll() is None:
                still.append(process)
            else:
                process.release()
        if still:
            with self._lock:
                self._unreaped.extend(still)

    def _deliver(self) -> None:
        """Run the queued callbacks, outside the lock; a failing callback is logged, not fatal."""
        with self._lock:
            events, self._events = self._events, []
        for event in events:
            try:
                event()
            except Exception as exc:  # noqa: BLE001 - a callback's bug must not stop the others
                self.health.record_error('phi3v-engine-monitor', exc)
                try:
                    self._log(f'internal error in an engine callback: {type(exc).__name__}: '
                              f'{exc}')
                except Exception:  # noqa: BLE001 - the logger itself failed
                    pass

    def _start_worker(self) -> None:
        try:
            config = self.config
            with self._lock:
                graph = str(self.info.get('cuda_graph', ''))
            if graph.startswith('off:'):
                # a worker turned the graph off (worker_main): its successors need not try again
                config = dataclasses.replace(config, cuda_graph=False)
            worker = _Worker(config, self._warmup)
        except Exception as exc:  # noqa: BLE001 - ENOMEM, EAGAIN, a full /tmp: retried
            with self._lock:
                if not self._closing.is_set():
                    self._count_crash(f'could not be started ({type(exc).__name__}: {exc})')
            return
        with self._lock:
            if self._closing.is_set():
                stale, worker = worker, None
            else:
                stale = None
                self._worker, self._restart_at = worker, None
                self._last_activity = time.monotonic()
                if self.state != EngineState.FAILED:   # failed stays failed until ready again
                    self._set_state(EngineState.LOADING, f'loading {self.config.model_path}')
        if stale is not None:
            self._retire(stale.stop(0.5), stale)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        with self._lock:
            self._last_activity = time.monotonic()
            in_flight = self._in_flight
            if kind == 'piece':
                if in_flight is not None and in_flight.request_id == message[1]:
                    piece = message[2]
                    self._events.append(lambda: in_flight.on_piece(piece))
            elif kind == 'result':
                if in_flight is not None and in_flight.request_id == message[1]:
                    result = message[2]
                    self._in_flight = None
                    self._crashes = 0        # a request completed: the worker is sound
                    self._set_state(EngineState.READY)
                    self._events.append(lambda: in_flight.on_result(result))
            elif kind == 'ready':
                self.info = message[1]
                self._ever_ready = True
                self._set_state(EngineState.READY, f'{self.info.get("provider")} provider')
                self._ready.set()
            elif kind == 'log':
                self._say(message[1])
        if kind == 'load_failed':
            self._on_load_failed(worker, message[1])

    def _on_load_failed(self, worker: _Worker, reason: str) -> None:
        with self._lock:
            if self._worker is not worker:
                return
            self._worker = None
            if self._ever_ready:
                # It loaded before: the folder may be back in a moment, the GPU memory of the
                # killed worker freed. Retry with the crash backoff.
                self._count_crash(f'could not load the model again ({reason})')
            else:
                # The first load: the model folder or the install is wrong; retrying cannot help.
                self._restart_at = None
                self._fail_in_flight(f'the model could not be loaded: {reason}')
                self._set_state(EngineState.FAILED, reason)
        self._retire(worker.stop(1.0), worker)

    def _retire(self, reaped: bool, worker: _Worker) -> None:
        if not reaped:
            with self._lock:
                self._unreaped.append(worker.process)

    # -- watchdog thread ----------------------------------------------------------------------

    def _watch(self) -> None:
        """
        Kill a worker that loads too long or stalls mid-request (one pass, every 0.1 s).

        On its own thread: the monitor can be blocked in recv() on a message the worker stopped
        sending half-way; the kill ends that recv (EOF) and the monitor handles the death.
        """
        self._monitor_done.wait(_POLL_S)
        with self._lock:
            worker = None if self._closing.is_set() else self._worker
        if worker is not None:
            self._check_timeouts(worker)

    def _check_timeouts(self, worker: _Worker) -> None:
        with self._lock:
            if self._worker is not worker or worker.kill_reason:
                return
            if worker.process.poll() is not None:   # (waitpid WNOHANG: never blocks)
                return    # dead, not silent: the monitor, maybe held up, says how it ended
            now = time.monotonic()
            if not self._ready.is_set() and now - worker.started_at > self._load_timeout_s:
                reason = f'did not finish loading within load_timeout ({self._load_timeout_s:g} s)'
            elif self._in_flight is not None and now - self._last_activity > self.stall_timeout_s:
                reason = f'was silent for stall_timeout ({self.stall_timeout_s:g} s)'
            else:
                return
            worker.kill_reason = reason
            self._say(f'the inference worker {reason}: killing it')
        worker.kill()

    def _on_worker_death(self, worker: _Worker) -> None:
        worker.process.join(1.0)      # reap it (outside the lock: it can take a moment)
        if worker.process.is_alive():  # a broken pipe from a live worker: end it
            worker.kill()
            worker.process.join(1.0)
        with self._lock:
            if self._worker is not worker:
                return                # close() took it, or it was already handled
            self._worker = None
            if self._closing.is_set():
                self._fail_in_flight('the node is shutting down')
            else:
                self._count_crash(worker.kill_reason or describe_exit(worker.process.exitcode))
        self._retire(worker.close(), worker)
