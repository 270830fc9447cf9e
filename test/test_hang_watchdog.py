"""The per-test time bound: a hanging test ends the run with its stack, and its children die."""
import os
import re
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

HANGING_SUITE = """
import subprocess
import threading


def test_quick():
    pass


def test_hangs():
    child = subprocess.Popen(['sleep', '600'], start_new_session=True)
    print('child', child.pid, flush=True)
    threading.Event().wait()   # no timeout: only a signal ends it


def test_never_reached():
    pass
"""


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# SIGINT ignored: how a background job of a non-interactive shell starts (`nohup colcon test &`)
@pytest.mark.parametrize('sigint', ['default', 'ignored'])
def test_a_hanging_test_fails_the_run_with_its_stack_and_kills_its_children(tmp_path, sigint):
    (tmp_path / 'test_suite.py').write_text(textwrap.dedent(HANGING_SUITE))
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here, PHI3V_TEST_LIMIT_S='2')
    env.pop('PYTEST_ADDOPTS', None)   # colcon test passes its options (-q, junit) this way
    run = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'hang_watchdog', '-p',
                          'no:cacheprovider', '-s', '-q', str(tmp_path / 'test_suite.py')],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         preexec_fn=ignore_sigint if sigint == 'ignored' else None)
    output = run.stdout + run.stderr
    assert run.returncode == 2, output   # pytest's code for an interrupted run
    assert 'test_suite.py::test_hangs ran past 2 s' in output, output
    assert 'in test_hangs' in output, output   # the hanging test's frame is in the stack dump
    # and, in one line after the dump (CI shows the end of the output), where the test was
    assert re.search(r'test_hangs was at: test_suite.py:\d+ test_hangs\n', output), output
    assert 'killed 1 child processes' in output, output
    assert '1 passed' in output and 'test_never_reached' not in output, output
    child_pid = int(re.search(r'child (\d+)', output).group(1))
    assert not psutil.pid_exists(child_pid) or \
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE, output


HANGING_TEARDOWN = """
import threading

import pytest


@pytest.fixture
def stuck():
    yield
    print('teardown starts', flush=True)
    threading.Event().wait()   # a teardown that never ends, run after the interrupt


def test_hangs(stuck):
    threading.Event().wait()
"""


def test_a_teardown_that_hangs_after_the_interrupt_still_ends_the_run(tmp_path):
    """After the interrupt pytest runs the teardown outside the bound: the backstop ends it."""
    (tmp_path / 'test_suite.py').write_text(textwrap.dedent(HANGING_TEARDOWN))
    here = os.path.dirname(os.path.abspath(__file__))
    # a conftest of the child's shortens its GRACE_S (60 s) to 3 s
    (tmp_path / 'conftest.py').write_text('import hang_watchdog\nhang_watchdog.GRACE_S = 3.0\n')
    env = dict(os.environ, PYTHONPATH=here, PHI3V_TEST_LIMIT_S='2')
    env.pop('PYTEST_ADDOPTS', None)
    run = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'hang_watchdog', '-p',
                          'no:cacheprovider', '-s', '-q', str(tmp_path / 'test_suite.py')],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert 'ran past 2 s' in output and 'teardown starts' in output, output
    assert run.returncode == 1, output   # faulthandler's exit: the teardown never returned
    assert 'Timeout (0:00:03)' in output, output   # faulthandler's dump of the stuck teardown
