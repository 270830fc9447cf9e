"""
A bound on every test: a hang fails the run with every thread's stack instead of eating CI's time.

Each test (setup, call and teardown) gets PHI3V_TEST_LIMIT_S seconds (default 300; the longest
takes about 35 s). Past that a watchdog thread prints which test hung and the stack of every
thread, kills every process the test process started (nodes run in sessions of their own, so a
signal to our group would miss them), and sends SIGINT to the test process, which ends the pytest
session with its summary (exit code 2). A hang that holds the GIL stops that thread too, so
faulthandler's own C thread is armed GRACE_S later: it prints the stacks again and exits the
process. Both write to the terminal's stderr as it was before pytest captured it.

It is a pytest plugin: conftest.py imports its two hooks (and `pytest -p hang_watchdog` loads it).
"""
import contextlib
import faulthandler
import os
import signal
import sys
import sysconfig
import threading
import traceback

import psutil
import pytest

LIMIT_VARIABLE = 'PHI3V_TEST_LIMIT_S'
DEFAULT_LIMIT_S = 300.0
GRACE_S = 60.0


def limit_s():
    value = os.environ.get(LIMIT_VARIABLE, '').strip()
    return float(value) if value else DEFAULT_LIMIT_S


_REAL_STDERR = []
# Python's and the installed packages' code (pytest, rclpy): not what a hang report is about
_LIBRARIES = tuple({sysconfig.get_paths()[name] for name in ('stdlib', 'platstdlib', 'purelib',
                                                             'platlib')}) + ('<',)


def pytest_configure(config):
    _REAL_STDERR.append(os.fdopen(os.dup(2), 'w'))   # pytest's capture is suspended here
    # A run started in the background by a non-interactive shell (`nohup colcon test &`) inherits
    # SIGINT ignored: the watchdog's interrupt would do nothing, and only faulthandler's exit,
    # GRACE_S later and without pytest's summary, would end the run.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Bound each test's setup, call and teardown."""
    with bounded(item.nodeid, _REAL_STDERR[-1]):
        yield


def kill_descendants():
    """SIGKILL every process this one started, and theirs; return how many there were."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return len(children)


def where(thread_id, frames=6):
    """Return the innermost frames of the project's own code in a thread's stack, on one line."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return 'the thread has ended'
    own = [f'{os.path.basename(entry.filename)}:{entry.lineno} {entry.name}'
           for entry in traceback.extract_stack(frame)
           if f'{os.sep}phi3v_ros{os.sep}' in entry.filename
           or not entry.filename.startswith(_LIBRARIES)]
    return ' > '.join(own[-frames:]) or "outside the project's code"


def machine_state(biggest=4):
    """Return the load, the free memory and the largest processes, on one line."""
    try:
        memory = psutil.virtual_memory()
        processes = sorted(psutil.process_iter(['pid', 'name', 'memory_info']),
                           key=lambda p: p.info['memory_info'].rss if p.info['memory_info']
                           else 0, reverse=True)[:biggest]
        largest = ', '.join(f"{p.info['name']}({p.info['pid']}) "
                            f"{p.info['memory_info'].rss / 2 ** 20:.0f} MiB" for p in processes
                            if p.info['memory_info'])
        return (f'load {os.getloadavg()[0]:.1f}, {memory.available / 2 ** 20:.0f} of '
                f'{memory.total / 2 ** 20:.0f} MiB available, '
                f'{len(psutil.pids())} processes, largest: {largest}')
    except Exception as error:  # noqa: BLE001 - a report, never the thing that fails
        return f'unknown ({error!r})'


@contextlib.contextmanager
def bounded(test_id, stream, limit=None):
    """Run the with-block under the watchdog; a block that ends in time disarms it."""
    limit = limit_s() if limit is None else limit
    done, fired = threading.Event(), threading.Event()
    main_thread = threading.get_ident()

    def watch():
        try:
            if done.wait(limit):
                return
            fired.set()
            stream.write(f'\n\n*** {test_id} ran past {limit:.0f} s ({LIMIT_VARIABLE}): '
                         f'the stack of every thread follows\n')
            stream.flush()
            faulthandler.dump_traceback(file=stream, all_threads=True)
            killed = kill_descendants()
            # CI shows the end of the output only, and the dump ends with pytest's own frames
            stream.write(f'*** {test_id} was at: {where(main_thread)}\n')
            stream.write(f'*** the machine then: {machine_state()}\n')
            stream.write(f'*** killed {killed} child processes; interrupting the test run\n')
            stream.flush()
            os.kill(os.getpid(), signal.SIGINT)   # a real signal: it wakes a blocked wait
        except BaseException as error:   # a watchdog must never be the thing that fails silently
            stream.write(f'hang watchdog failed: {error!r}\n')

    watchdog = threading.Thread(target=watch, name=f'hang watchdog: {test_id}', daemon=True)
    watchdog.start()
    faulthandler.dump_traceback_later(limit + GRACE_S, exit=True, file=stream)
    try:
        yield
    finally:
        done.set()
        watchdog.join(GRACE_S)
        if fired.is_set():
            # Interrupted: pytest runs the hung test's teardown (and the session's) later, outside
            # this block; whatever still hangs there gets GRACE_S before faulthandler exits.
            faulthandler.dump_traceback_later(GRACE_S, exit=True, file=stream)
        else:
            faulthandler.cancel_dump_traceback_later()
