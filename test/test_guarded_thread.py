"""Guarded threads: an exception costs one pass and is counted; a thread that ends is reported."""
import threading

from phi3v_ros.base.guarded_thread import start_guarded, ThreadHealth
import pytest


def test_an_exception_costs_one_pass_and_is_counted():
    health, stop, logged, passes = ThreadHealth(), threading.Event(), [], []
    done = threading.Event()

    def step():
        passes.append(1)
        if len(passes) == 2:
            raise KeyError('boom')
        if len(passes) == 4:
            done.set()
            stop.set()
    thread = start_guarded('worker-x', step, stop, health, logged.append)
    assert done.wait(10)
    thread.join(10)
    assert health.error_count == 1 and health.last_error.text == "KeyError: 'boom'"
    assert health.recent_error().thread == 'worker-x' and health.recent_error(-1) is None
    assert any('internal error in thread worker-x (it goes on)' in line and 'Traceback' in line
               for line in logged)
    assert health.dead_threads == []


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_a_thread_that_ends_anyway_is_marked_dead():
    health, stop, logged = ThreadHealth(), threading.Event(), []

    def step():
        raise SystemExit('gone')
    thread = start_guarded('worker-y', step, stop, health, logged.append)
    thread.join(10)
    assert not thread.is_alive()
    assert health.dead_threads == ['worker-y']
    assert 'thread worker-y ended unexpectedly' in logged


def test_a_broken_logger_does_not_end_the_thread():
    health, stop, passes = ThreadHealth(), threading.Event(), []

    def step():
        passes.append(1)
        if len(passes) >= 3:
            stop.set()
        raise ValueError('x')

    def log(text):
        raise RuntimeError('logger down')
    start_guarded('worker-z', step, stop, health, log).join(10)
    assert len(passes) == 3 and health.error_count == 3 and health.dead_threads == []
