"""
Faults inside the engine client, with the real engine in its spawned worker process.

Each test reproduces one way the node used to freeze, die silently or stay down (issue: "never
frozen, never silently dead, never stuck down") and checks that the client now recovers.
"""
import errno
import os
import shutil
import signal
import threading
import time

from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import EngineClient, EngineState
from phi3v_ros.engine.generation import GenerationSettings, Request, StopReason
import pytest
from test_engine_client import ask, READY_TIMEOUT_S, Reply

pytest.importorskip('onnxruntime_genai')

LONG = GenerationSettings(max_new_tokens=100000)
SHORT = GenerationSettings(max_new_tokens=3)


class StateLog:
    """Every (state, detail) the client reports, in order; waits on them without polling."""

    def __init__(self):
        self.seen = []
        self._changed = threading.Condition()

    def __call__(self, state, detail):
        with self._changed:
            self.seen.append((state, detail))
            self._changed.notify_all()

    def wait_for(self, predicate, timeout=30.0, since=0):
        with self._changed:
            return self._changed.wait_for(
                lambda: any(predicate(state, detail) for state, detail in self.seen[since:]),
                timeout)

    def mark(self):
        with self._changed:
            return len(self.seen)


def wait_state(client, predicate, timeout=30.0):
    """Wait for a state the client reports from now on (or is in now)."""
    log = client.state_log
    since = log.mark()
    if predicate(client.state, client.detail):
        return True
    return log.wait_for(predicate, timeout, since)


def start_streaming(client):
    reply = ask(client, Request(prompt='Tell me everything.', settings=LONG))
    deadline = time.monotonic() + 30
    while not reply.pieces and time.monotonic() < deadline:
        time.sleep(0.005)
    assert reply.pieces, 'the answer did not start streaming'
    return reply


@pytest.fixture
def make_client():
    made = []

    def factory(model, on_state=None, **kwargs):
        log = StateLog()

        def record(state, detail):
            log(state, detail)
            if on_state is not None:
                on_state(state, detail)
        client = EngineClient(EngineConfig(model_path=model, provider='cpu'), on_state=record,
                              **{'warmup': False, 'restart_backoff_s': (0.1, 1.0), **kwargs})
        client.state_log = log
        made.append(client)
        client.start()
        return client
    yield factory
    for client in made:
        client.close()


def test_a_crash_on_every_request_backs_off_and_reports_failed(make_client, tiny_model):
    """Crashes count until a request completes: ready after each restart no longer resets it."""
    client = make_client(tiny_model)
    assert client.wait_ready(READY_TIMEOUT_S)
    for crash in range(1, 4):
        assert wait_state(client, lambda state, detail: state == EngineState.READY), client.detail
        since = client.state_log.mark()
        reply = start_streaming(client)
        os.kill(client.pid, signal.SIGKILL)
        assert reply.wait(5).stop_reason == StopReason.ERROR
        expected = {1: (EngineState.RESTARTING, 'restarting it in 0.1 s'),
                    2: (EngineState.RESTARTING, 'restarting it in 0.2 s'),
                    3: (EngineState.FAILED, '(3 times in a row); retrying every 0.4 s')}[crash]
        assert client.state_log.wait_for(
            lambda state, detail: state == expected[0] and expected[1] in detail, 5, since), (
            crash, client.state_log.seen[since:])
    # still retried: the next worker loads, and a completed request resets the count
    assert wait_state(client, lambda state, detail: state == EngineState.READY, 30)
    assert ask(client, Request(prompt='Hi', settings=SHORT)).wait().ok
    os.kill(client.pid, signal.SIGKILL)
    assert wait_state(client, lambda state, detail: state == EngineState.RESTARTING
                      and 'restarting it in 0.1 s' in detail, 10), client.detail


def test_a_failed_reload_after_a_crash_is_retried_until_the_model_is_back(make_client,
                                                                          tiny_model, tmp_path):
    model = tmp_path / 'model'
    shutil.copytree(tiny_model, model)
    client = make_client(str(model))
    assert client.wait_ready(READY_TIMEOUT_S)
    away = tmp_path / 'away'
    model.rename(away)                       # the folder is gone for a moment (a remount, ...)
    os.kill(client.pid, signal.SIGKILL)
    assert wait_state(client, lambda state, detail: 'could not load the model again' in detail
                      and 'does not exist' in detail, 30), client.detail
    away.rename(model)
    assert wait_state(client, lambda state, detail: state == EngineState.READY, 30), client.detail
    assert ask(client, Request(prompt='Back?', settings=SHORT)).wait().ok


def test_only_the_first_load_failure_is_final(make_client, tmp_path):
    client = make_client(str(tmp_path / 'missing'))
    assert wait_state(client, lambda state, detail: state == EngineState.FAILED, 30)
    time.sleep(0.5)                          # several backoff periods: nothing is retried
    assert client.restarts == 0 and client.pid is None


def test_a_load_failure_sent_just_before_the_worker_ends_is_read_not_taken_for_a_crash(
        make_client, tmp_path, monkeypatch):
    """
    The monitor's wait can time out just before the worker's last message and its exit.

    Once in CI, a node then found the worker gone with its load failure unread, counted a crash
    and restarted it. Here every wait "times out" after the worker has ended, with its message
    unread: the failure must still be read, final and not retried.
    """
    from phi3v_ros.engine import engine_client
    real_wait = engine_client.wait
    timed_out_late = []

    def wait_then_time_out(waitables, timeout=None):
        sentinels = [item for item in waitables if isinstance(item, int)]
        if sentinels and real_wait(sentinels, timeout=10.0):    # the worker has ended
            timed_out_late.append(True)
            return []
        return real_wait(waitables, timeout)
    monkeypatch.setattr(engine_client, 'wait', wait_then_time_out)
    client = make_client(str(tmp_path / 'missing'))
    assert wait_state(client, lambda state, detail: state == EngineState.FAILED, 30)
    assert timed_out_late and client.restarts == 0, (client.restarts, client.detail)
    assert 'does not exist' in client.detail


def test_a_dead_worker_is_reported_by_how_it_died_not_as_silent(make_client, tiny_model,
                                                                monkeypatch):
    """
    A worker killed mid-answer while the monitor is held up past stall_timeout.

    On a loaded machine the watchdog can run before the monitor sees the death: it must not call
    the dead worker silent (and "kill" it); the reply says it was killed by SIGKILL.
    """
    from phi3v_ros.engine import engine_client
    real_wait, real_check = engine_client.wait, engine_client.EngineClient._check_timeouts
    killed, release, watchdog_past_stall = (threading.Event() for _ in range(3))

    def held_wait(waitables, timeout=None):
        ready = real_wait(waitables, timeout)
        if ready and killed.is_set() and not release.is_set():
            release.wait(10.0)   # the worker's end: hold the monitor until the watchdog ran
        return ready

    def watched_check(self, worker):
        real_check(self, worker)
        if worker.process.poll() is not None and \
                time.monotonic() - self._last_activity > 2 * self.stall_timeout_s:
            watchdog_past_stall.set()
    monkeypatch.setattr(engine_client, 'wait', held_wait)
    monkeypatch.setattr(engine_client.EngineClient, '_check_timeouts', watched_check)
    client = make_client(tiny_model, stall_timeout_s=0.3)
    assert client.wait_ready(READY_TIMEOUT_S)
    reply = start_streaming(client)
    killed.set()
    os.kill(client.pid, signal.SIGKILL)
    assert watchdog_past_stall.wait(10.0), 'the watchdog did not run past stall_timeout'
    release.set()
    result = reply.wait()
    assert result.stop_reason == StopReason.ERROR, result
    assert 'killed by SIGKILL' in result.error, result.error
    assert 'stall_timeout' not in result.error, result.error


def test_a_worker_that_cannot_be_started_is_retried(make_client, tiny_model, monkeypatch):
    """ENOMEM from fork/exec (a memory-starved Jetson) used to end the monitor thread."""
    from phi3v_ros.engine import engine_client
    failures = [0]
    real_init = engine_client._Worker.__init__

    def flaky_init(self, *args, **kwargs):
        if failures[0] < 2:
            failures[0] += 1
            raise OSError(errno.ENOMEM, 'Cannot allocate memory')
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(engine_client._Worker, '__init__', flaky_init)
    client = make_client(tiny_model)
    assert wait_state(client, lambda state, detail: state == EngineState.READY, 60), client.detail
    assert failures[0] == 2 and client.restarts == 2
    assert ask(client, Request(prompt='Hi', settings=SHORT)).wait().ok


def test_a_state_callback_that_raises_does_not_stop_the_monitor(make_client, tiny_model):
    calls = []

    def on_state(state, detail):
        calls.append(state)
        raise RuntimeError('a bug in the node')
    client = make_client(tiny_model, on_state=on_state)
    assert client.wait_ready(READY_TIMEOUT_S)
    assert ask(client, Request(prompt='Hi', settings=SHORT)).wait().ok
    assert EngineState.READY in calls and client.health.error_count >= 2
    assert client.health.last_error.text == 'RuntimeError: a bug in the node'


def test_a_cancel_flood_at_a_stopped_worker_never_blocks(make_client, tiny_model):
    """The pipe used to fill up: cancel() then blocked in send, holding the client's lock."""
    client = make_client(tiny_model, stall_timeout_s=2.0)
    assert client.wait_ready(READY_TIMEOUT_S)
    reply = start_streaming(client)
    worker = client.pid
    os.kill(worker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for _ in range(20000):
            assert client.cancel() is True
        flood_s = time.monotonic() - started
        assert flood_s < 5.0, flood_s         # far below: no call waits for the worker
        result = reply.wait(10)               # the stall watchdog still works
        assert result.stop_reason == StopReason.ERROR and 'stall_timeout' in result.error
    finally:
        try:
            os.kill(worker, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert wait_state(client, lambda state, detail: state == EngineState.READY, 30)


def test_cancel_of_a_finished_request_leaves_the_next_one_alone(make_client, tiny_model):
    client = make_client(tiny_model)
    assert client.wait_ready(READY_TIMEOUT_S)
    first = Reply()
    first_id = client.submit(Request(prompt='One', settings=SHORT), on_result=first.on_result)
    assert first.wait().ok
    second = start_streaming(client)
    assert client.cancel(first_id) is False
    time.sleep(0.2)                           # the worker decodes on, uncancelled
    assert not second.done.is_set()
    assert client.cancel() is True
    assert second.wait().stop_reason == StopReason.CANCELLED


def test_frames_go_through_the_pipe_when_no_shared_memory_can_be_had(make_client, tiny_model,
                                                                     monkeypatch):
    from phi3v_ros.frames import frame_transport
    from phi3v_test_utils import gradient_image

    def no_shm(*args, **kwargs):
        raise OSError(errno.EMFILE, 'Too many open files')
    monkeypatch.setattr(frame_transport.shared_memory, 'SharedMemory', no_shm)
    logged = []
    client = make_client(tiny_model, log=logged.append)
    assert client.wait_ready(READY_TIMEOUT_S)
    image = gradient_image(240, 320)
    assert client.frame_buffer(image.shape) is None
    result = ask(client, Request(prompt='What?', images=(image,), settings=SHORT)).wait()
    assert result.ok and result.image_tokens > 0, result.error
    assert client.frame_transport.startswith('pipe (cannot create a')
    assert sum('through the pipe' in line for line in logged) == 1
    assert ask(client, Request(prompt='Again?', images=(image,), settings=SHORT)).wait().ok
    assert sum('through the pipe' in line for line in logged) == 1   # said once


def test_close_is_bounded_with_a_stopped_worker(make_client, tiny_model):
    client = make_client(tiny_model)
    assert client.wait_ready(READY_TIMEOUT_S)
    reply = start_streaming(client)
    os.kill(client.pid, signal.SIGSTOP)
    started = time.monotonic()
    closer = threading.Thread(target=client.close, args=(1.0,))
    closer.start()
    closer.join(10)
    took = time.monotonic() - started
    assert not closer.is_alive() and 1.0 <= took < 4.0, took   # asked for 1 s, then killed
    assert reply.wait(1).error == 'the node is shutting down'
    assert client.state == EngineState.STOPPED and client.pid is None


def test_the_backoff_stays_capped_after_thousands_of_crashes(tiny_model):
    """2 ** 1024 overflows a float: after hours of failed restarts, no restart was ever planned."""
    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'))
    client._crashes = 5000
    with client._lock:
        client._count_crash('exited with code 1')
    assert client._restart_at is not None
    assert client.detail.endswith('(5001 times in a row); retrying every 30 s')
