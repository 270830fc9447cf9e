"""Reliability test helpers: per-node diagnostics, the worker process, memory, CPU, shm."""
import glob
import os
import time

import psutil

from ros_harness import NodeProcess, RosPeer, wait_until

ERROR = 'ERROR: '
# The node's defaults for these tests: CPU, short answers, fast diagnostics, no warm-up
# (faster start).
BASE = {'provider': 'cpu', 'max_new_tokens': 4, 'diagnostics_period': 0.1, 'warmup': False}


class NodePeer(RosPeer):
    """A RosPeer with more readings of its node's /diagnostics (RosPeer keeps only its node's)."""

    def __init__(self, namespace='', node_name='vision_qa'):
        super().__init__(namespace=namespace, node_name=node_name)
        self.prefix = f'{namespace.rstrip("/")}/{node_name}' if namespace else f'/{node_name}'

    def _mine(self):
        return self.diagnostics

    def latest_diagnostic(self, key):
        with self.changed:
            mine = self._mine()
            return None if not mine else self.engine_value(mine[-1], key)

    def latest_status(self):
        with self.changed:
            mine = self._mine()
            return None if not mine else mine[-1].status[0]

    def wait_diagnostic(self, predicate, timeout=30.0):
        """
        Wait for a diagnostics message of this node that satisfies predicate(values).

        Only messages published from now on count.
        """
        with self.changed:
            start = len(self.diagnostics)

        seen = [start]

        def fresh_match():      # each message once: this runs at every message that arrives
            arrays, seen[0] = self.diagnostics[seen[0]:], len(self.diagnostics)
            return any(predicate({pair.key: pair.value for pair in array.status[0].values})
                       for array in arrays)
        return self.wait_for(fresh_match, timeout)

    def wait_ready(self, timeout=60.0):
        assert self.wait_diagnostic(lambda v: v.get('engine_state') == 'ready', timeout), (
            f'engine of {self.status_name} not ready: {self.latest_diagnostic("engine_detail")}')

    def camera_values(self, camera):
        """Return the key/value pairs of this node's latest status of camera (its topic)."""
        with self.changed:
            for array in reversed(self._mine()):
                for status in array.status:
                    if status.name == f'{self.prefix}: camera {camera}':
                        return dict(level=status.level[0], message=status.message,
                                    **{pair.key: pair.value for pair in status.values})
        return {}

    def deliver_to(self, publisher, camera, rgb, stamp_s=None, frame_id='', timeout=10.0):
        """Publish a frame on a camera's topic until the node counts one more from that camera."""
        before = int(self.camera_values(camera).get('frames_received') or 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_frame(rgb, stamp_s=stamp_s, publisher=publisher, frame_id=frame_id)
            if self.wait_for(lambda: int(self.camera_values(camera).get('frames_received')
                                         or 0) > before, 0.5):
                return
        raise AssertionError(f'the node did not receive the frame of {camera}')

    def counters(self):
        return {key: int(self.latest_diagnostic(f'prompts_{key}') or 0)
                for key in ('received', 'answered', 'rejected', 'failed')}

    def wait_settled(self, received, timeout=60.0):
        """Wait until the node reports `received` prompts, all counted by outcome, none waiting."""
        def settled(values):
            counts = [int(values.get(f'prompts_{key}', 0))
                      for key in ('answered', 'rejected', 'failed')]
            return (int(values.get('prompts_received', -1)) == received == sum(counts)
                    and values.get('queue_depth') == '0')
        assert self.wait_diagnostic(settled, timeout), (
            f'node counters never settled at {received}: {self.counters()}')

    def settled_received(self, timeout=60.0):
        """Return prompts_received once every prompt has its outcome counted and none waits."""
        seen = []

        def settled(values):
            counts = [int(values.get(f'prompts_{key}', 0))
                      for key in ('answered', 'rejected', 'failed')]
            received = int(values.get('prompts_received', -1))
            if received == sum(counts) and values.get('queue_depth') == '0':
                seen.append(received)
                return True
            return False
        assert self.wait_diagnostic(settled, timeout), \
            f'node counters never settled: {self.counters()}'
        return seen[-1]

    def clear_answers(self):
        with self.changed:
            self.answers.clear()
            self.pieces.clear()

    def answer_count(self):
        with self.changed:
            return len(self.answers)

    def deliver(self, message, timeout=10.0):
        """
        Publish a (possibly malformed) Image or CompressedImage.

        It is published again until the node counts one more frame.
        """
        before = int(self.latest_diagnostic('frames_received') or 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_raw(message)
            if self.wait_diagnostic(lambda v: int(v.get('frames_received', 0)) > before, 0.5):
                return
        raise AssertionError('the node did not receive the frame')

    def ask_and_wait(self, text, timeout=30.0):
        """Ask once; return the one reply (a second one within the settle time fails the test)."""
        count = self.answer_count()
        self.ask(text)
        return self.wait_answers(count + 1, timeout)[count]


def start_nodes(specs):
    """
    Start several nodes at once.

    specs is a list of (parameters, extra_args); returns NodeProcesses.
    """
    return [NodeProcess(parameters, extra_args) for parameters, extra_args in specs]


def worker_of(node):
    """
    Return the node's worker process, or None.

    That is `python -m phi3v_ros.engine.worker_launch`, not multiprocessing's resource tracker.
    """
    for child in node.descendants():
        try:
            command = ' '.join(child.cmdline())
        except psutil.Error:
            continue
        if 'phi3v_ros.engine.worker_launch' in command:
            return child
    return None


def wait_for_worker(node, other_than=None, timeout=30.0):
    found = []

    def new_worker():
        worker = worker_of(node)
        if worker is not None and worker.pid != other_than:
            found.append(worker)
            return True
        return False
    assert wait_until(new_worker, timeout, 0.002), 'no (new) worker process appeared'
    return found[-1]


def alive(process):
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def shm_blocks():
    return {os.path.basename(path) for path in glob.glob('/dev/shm/psm_*')}


def cpu_seconds(pid):
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def rss_mb(pid):
    return psutil.Process(pid).memory_info().rss / 2 ** 20
