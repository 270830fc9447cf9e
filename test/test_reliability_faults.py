"""
Faults around vision_qa_node running as its own process.

The worker killed (mid-answer, while loading, while idle), a worker that keeps dying, a worker
that stalls (alive but silent), and the node stopped by SIGINT/SIGTERM (to it or to its whole
process group, as Ctrl-C does) or SIGKILL at different moments: no prompt is left unanswered, no
process and no shared-memory block is left behind.

"Keeps crashing" is produced from outside: every worker is SIGKILLed as soon as it appears, which
is what the Linux OOM killer does to a worker loading a model too big for the board. (Every broken
model folder tried - bad JSON, missing or corrupt graphs, a tokenizer or processor config that does
not parse, a config that does not match the graphs - fails cleanly with a load error instead, see
test_reliability_bad_input.py.)
"""
import os
import re
import signal
import threading
import time

from phi3v_test_utils import gradient_image
import psutil
import pytest
from reliability_helpers import (alive, BASE, cpu_seconds, ERROR, NodePeer, start_nodes,
                                 wait_for_worker, worker_of)
from ros_harness import isolate_ros_domain, NodeProcess, wait_until

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

LONG = 20000   # new tokens: seconds of generation on the tiny model
TEXT_ONLY = {'allow_text_only': True, 'image_wait_timeout': 0.0}
# The node's own bound on an orderly stop: the dispatcher's join (2 s), the worker's stop before
# its kill (2 s) and the subscribers' acknowledgements of the last replies (3 s), plus start-up of
# the shutdown; it normally takes well under a second (an under-5-s bound failed at load 17).
STOP_BOUND_S = 9.0


@pytest.fixture(scope='module', autouse=True)
def ros_domain():
    isolate_ros_domain()


@pytest.fixture(scope='module')
def peer():
    ros_peer = NodePeer()
    yield ros_peer
    ros_peer.close()


@pytest.fixture(scope='module')
def node(tiny_model, peer):
    process = NodeProcess({'model_path': tiny_model, **BASE, **TEXT_ONLY, 'stall_timeout': 1.0})
    peer.wait_connected()
    peer.wait_ready()
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture
def ready(peer, node):
    """Give the shared node, ready, with short answers and an empty answer list."""
    peer.wait_ready()
    peer.set_parameters(max_new_tokens=4)
    peer.clear_answers()
    yield peer
    assert node.process.poll() is None, node.output()


def start_long_answer(peer):
    peer.set_parameters(max_new_tokens=LONG)
    count = peer.answer_count()
    peer.ask('Tell me everything.')
    assert peer.wait_for(lambda: len(peer.pieces) > 0, 30), 'the answer did not start streaming'
    return count


def assert_next_prompt_answered(peer):
    peer.wait_ready()
    peer.set_parameters(max_new_tokens=4)
    reply = peer.ask_and_wait('Are you back?')
    assert not reply.startswith(ERROR), reply


def test_worker_killed_mid_answer(ready, node):
    peer = ready
    worker = worker_of(node)
    count = start_long_answer(peer)
    worker.send_signal(signal.SIGKILL)
    # The reason proves the death was seen as such, not by the 1 s stall watchdog (whose reply
    # says the worker was silent for stall_timeout); no bound on the time (load stretches it).
    reply = peer.wait_answers(count + 1, timeout=30)[count]
    expected = ERROR + 'the model failed: the inference worker was killed by SIGKILL'
    assert reply.startswith(expected), reply
    assert wait_for_worker(node, other_than=worker.pid)
    assert_next_prompt_answered(peer)
    assert peer.answer_count() == count + 2


def test_worker_killed_while_idle(ready, node):
    peer = ready
    worker = worker_of(node)
    restarts = int(peer.latest_diagnostic('worker_restarts'))
    worker.send_signal(signal.SIGKILL)
    assert peer.wait_diagnostic(lambda v: int(v['worker_restarts']) == restarts + 1, 10)
    wait_for_worker(node, other_than=worker.pid)
    assert peer.answer_count() == 0          # nobody asked, nobody is answered
    assert_next_prompt_answered(peer)


def test_worker_killed_while_loading_then_the_waiting_prompt_is_answered(ready, node):
    peer = ready
    first = worker_of(node)
    first.send_signal(signal.SIGKILL)
    second = wait_for_worker(node, other_than=first.pid)   # spawned after the 0.5 s backoff
    peer.ask('Asked while the model loads')
    second.send_signal(signal.SIGKILL)                      # before it reported ready
    assert peer.wait_diagnostic(lambda v: v['engine_state'] == 'restarting'
                                and 'killed by SIGKILL' in v['engine_detail'], 10)
    reply = peer.wait_answers(1, timeout=30)[0]
    assert not reply.startswith(ERROR), reply   # it waited in the queue for the third worker
    assert worker_of(node).pid not in (first.pid, second.pid)
    assert 'engine ready' in node.output()


def test_a_stalled_worker_is_detected_and_replaced(ready, node):
    peer = ready
    worker = worker_of(node)
    count = start_long_answer(peer)
    worker.send_signal(signal.SIGSTOP)     # alive, but silent
    stopped = time.monotonic()
    try:
        reply = peer.wait_answers(count + 1, timeout=20)[count]
    finally:
        if alive(worker):
            worker.send_signal(signal.SIGCONT)
    took = time.monotonic() - stopped
    # stall_timeout is 1 s, counted from the worker's last message, which came up to a piece
    # interval (20 ms, more under load) before the SIGSTOP: not before that. How much later is the
    # machine's load (1.0-1.2 s here; once 7.9 s in CI), not the node's: the reason in the reply
    # says the stall watchdog ended it.
    assert took >= 0.9, took
    assert 'was silent for stall_timeout (1 s)' in reply and reply.startswith(ERROR), reply
    assert wait_until(lambda: not alive(worker), 5)
    assert_next_prompt_answered(peer)
    print(f'\nstalled worker: ERROR reply {took:.2f} s after SIGSTOP')


class WorkerKiller:
    """SIGKILLs every worker the node starts (as an OOM killer would at load), noting when."""

    def __init__(self, node):
        self.node = node
        self.seen = []          # (monotonic time, pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        killed = set()
        while not self._stop.is_set():
            worker = worker_of(self.node)
            if worker is not None and worker.pid not in killed:
                try:
                    worker.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
                killed.add(worker.pid)
                self.seen.append((time.monotonic(), worker.pid))
            time.sleep(0.002)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def test_a_worker_that_keeps_dying_backs_off_reports_failed_and_does_not_spin(ready, node):
    peer = ready
    first_line = len(node.lines)
    killer = WorkerKiller(node)
    try:
        assert peer.wait_diagnostic(lambda v: v['engine_state'] == 'failed', 30), (
            peer.latest_diagnostic('engine_detail'))
        status = peer.latest_status()
        assert status.level == b'\x02'
        assert 'killed by SIGKILL (3 times in a row)' in status.message, status.message
        asked = time.monotonic()
        reply = peer.ask_and_wait('Anyone there?', timeout=30)
        # at once, not after engine_wait_timeout (60 s): a loaded machine took 1.6 s here
        assert time.monotonic() - asked < 20.0
        expected = (ERROR + 'the model is not available: the inference worker was killed '
                            'by SIGKILL (3 times in a row); retrying every')
        assert reply.startswith(expected), reply
        # failed, between retries: the node sleeps
        before, started = cpu_seconds(node.process.pid), time.monotonic()
        # the 4th and 5th retries
        assert wait_until(lambda: len(killer.seen) >= 5, 15), killer.seen
        busy = cpu_seconds(node.process.pid) - before
        elapsed = time.monotonic() - started
    finally:
        killer.stop()
    gaps = [b[0] - a[0] for a, b in zip(killer.seen, killer.seen[1:])]
    # The backoff doubles (0.5, 1, 2, 4 s), as the node says for each death. No worker comes sooner
    # than that after the one before it was killed; a gap also holds the time the node took to
    # notice the death, which a loaded machine stretches by seconds (once in CI: 0.5, 1.1, 4.1, 4.0
    # s, the deaths after the third seen 2 s late: the gaps need not grow).
    said = [float(m.group(1)) for m in (
        re.search(r'\]: the inference worker was killed by SIGKILL; restarting it in ([\d.]+) s',
                  line) for line in node.lines[first_line:]) if m]
    # (from 0.5 s, or from 1 s when a test before left one crash without a completed answer since)
    assert len(said) >= 4 and said[0] in (0.5, 1.0) and all(
        later == 2 * earlier for earlier, later in zip(said[:3], said[1:4])), (said, node.output())
    assert len(gaps) >= 4 and all(gap >= delay - 0.05 for gap, delay in zip(gaps, said)), (
        gaps, said)
    assert busy / elapsed < 0.15, \
        f'the node used {busy:.2f} s of CPU in {elapsed:.1f} s while failed'
    print(f'\nrestart gaps {[round(g, 2) for g in gaps]} s; node CPU while failed {busy:.2f} s in '
          f'{elapsed:.1f} s')
    # the killer is gone: the next retry (8 s after the last) loads and the node recovers. A worker
    # the killer was slow to find can have been ready for a moment before it was killed (seen once:
    # the prompt then met the failure of that kill): the node is back with a worker it spared.
    killed = {str(pid) for _, pid in killer.seen}
    assert peer.wait_diagnostic(lambda v: v['engine_state'] == 'ready'
                                and v['worker_pid'] not in killed, 30)
    assert peer.latest_diagnostic('worker_restarts') is not None
    assert_next_prompt_answered(peer)


# -- stopping the node ----------------------------------------------------------------------------

def session_processes(session_id):
    """Every live process in the node's session (it was started with start_new_session)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id and alive(process):
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def mapped_shm(node):
    """Return the names of the shared-memory blocks the node and its worker have mapped."""
    names = set()
    for pid in [node.process.pid] + [child.pid for child in node.descendants()]:
        try:        # /proc/PID/maps, not psutil's memory_maps: that parses smaps, seconds a call
            with open(f'/proc/{pid}/maps', encoding='utf-8', errors='replace') as maps:
                names |= {os.path.basename(line.split(None, 5)[5].strip())
                          for line in maps if '/psm_' in line}
        except (OSError, IndexError):
            continue
    return names


# (moment, signal, to the whole group as a terminal's Ctrl-C or a supervisor does, or to the node)
STOPS = [('loading', signal.SIGINT, True), ('idle', signal.SIGTERM, False),
         ('restart backoff', signal.SIGINT, False), ('answering', signal.SIGTERM, True),
         ('answering', signal.SIGINT, True), ('idle', signal.SIGKILL, False)]


def test_stopping_the_node_at_any_moment_leaves_nothing_behind(tiny_model):
    """Six nodes start at once (one per case, in their own namespaces), then each is stopped."""
    names = [f'/stop{i}' for i in range(len(STOPS))]
    # diagnostics at 2 Hz, not BASE's 10: six peers each take every node's /diagnostics, and at
    # 10 Hz their executors held the GIL enough to slow this process's own checks to seconds
    processes = start_nodes([({'model_path': tiny_model, **BASE, 'warmup': True,
                               'image_wait_timeout': 1.0, 'diagnostics_period': 0.5},
                              ['-r', f'__ns:={name}'])
                             for name in names])
    peers = [NodePeer(name) for name in names]
    report = []
    try:
        for (moment, signum, group), process, peer in zip(STOPS, processes, peers):
            if moment == 'loading':
                assert wait_until(lambda: worker_of(process) is not None, 30)
                assert 'engine ready' not in process.output()
            else:
                peer.wait_connected()
                peer.wait_ready()
                # six nodes warm up at once on CI's two cores: their diagnostics lag
                peer.deliver_frame(gradient_image(120, 160), timeout=30.0)
                # the shm block exists
                assert not peer.ask_and_wait('Frame please?').startswith(ERROR)
            shm = mapped_shm(process)
            assert shm or moment == 'loading'
            if moment == 'restart backoff':
                worker = worker_of(process)
                worker.send_signal(signal.SIGKILL)
                assert wait_until(lambda: not alive(worker), 5)   # the next one comes 0.5 s later
            elif moment == 'answering':
                peer.set_parameters(max_new_tokens=LONG)
                peer.ask('Long one')
                assert peer.wait_for(lambda: len(peer.pieces) > 0, 30)
            session = process.process.pid
            if group:
                os.killpg(session, signum)
            else:
                process.send_signal(signum)
            stopped = time.monotonic()
            code = process.process.wait(STOP_BOUND_S + 5)
            took = time.monotonic() - stopped
            assert wait_until(lambda: not session_processes(session), 5), (
                moment, signum, [p.cmdline() for p in session_processes(session)])
            assert wait_until(lambda: not any(os.path.exists(f'/dev/shm/{n}') for n in shm), 5), (
                moment, signum, shm)
            if signum != signal.SIGKILL:
                assert code == 0 and took < STOP_BOUND_S, (moment, signum, code, took,
                                                           process.output())
            report.append(f'{moment}/{signal.Signals(signum).name}{"(group)" if group else ""}: '
                          f'exit {code} in {took:.2f} s')
    finally:
        for peer in peers:
            peer.close()
        for process in processes:
            if process.process.poll() is None:
                os.killpg(process.process.pid, signal.SIGKILL)
    print('\n' + '; '.join(report))
