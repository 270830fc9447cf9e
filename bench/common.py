"""Shared pieces of the benchmarks: statistics, test frames, the node process and the ROS peer.

Every time in the benchmarks is time.monotonic(): on Linux it is CLOCK_MONOTONIC, one clock for all
processes of the machine, so a time taken in the node can be compared with one taken here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from phi3v_ros.client.spinning import SpinningNode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- statistics -------------------------------------------------------------------------------------

def merge_results(path: str, update: Callable[[dict], None]) -> None:
    """Read the results file (if any), let update change it in place, write it back whole."""
    results: dict = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            results = json.load(f)
    update(results)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=2)
        f.write('\n')


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float('nan')


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 4) -> Dict[str, float]:
    """Median and spread (p10, p90, min, max) of values, multiplied by scale."""
    if not len(values):
        return {'n': 0}
    v = np.asarray(values, dtype=float) * scale
    return {'median': round(float(np.median(v)), digits), 'p10': round(float(np.percentile(v, 10)), digits),
            'p90': round(float(np.percentile(v, 90)), digits), 'min': round(float(v.min()), digits),
            'max': round(float(v.max()), digits), 'n': int(v.size)}


def latency_summary(values_s: Sequence[float]) -> Dict[str, float]:
    """Latencies in ms: median, p90, p99, max."""
    if not len(values_s):
        return {'n': 0}
    v = np.asarray(values_s, dtype=float) * 1e3
    return {'median_ms': round(float(np.median(v)), 3), 'p90_ms': round(float(np.percentile(v, 90)), 3),
            'p99_ms': round(float(np.percentile(v, 99)), 3), 'max_ms': round(float(v.max()), 3),
            'n': int(v.size)}


# -- machine and environment ------------------------------------------------------------------------

def use_large_shm_profile() -> str:
    """Point Fast DDS (the default RMW) at bench/fastdds_large_shm.xml unless a profile is already set:
    with its default 512 KiB shared-memory segment, best-effort 1080p frames are almost all lost."""
    path = os.path.join(REPO, 'bench', 'fastdds_large_shm.xml')
    variable = 'FASTRTPS_DEFAULT_PROFILES_FILE' if os.environ.get('ROS_DISTRO') == 'humble' else \
        'FASTDDS_DEFAULT_PROFILES_FILE'   # Fast DDS 2.x (Humble) reads the old name, 3.x the new one
    if not os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE') and not os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE'):
        os.environ[variable] = path
    return os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE') or os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE', '')


def machine_description() -> Dict[str, object]:
    import platform
    model = ''
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import onnxruntime_genai
        genai = onnxruntime_genai.__version__
    except ImportError:
        genai = 'missing'
    try:
        load = os.getloadavg()
    except OSError:
        load = (float('nan'),) * 3
    return {'cpu': model or platform.processor(), 'cores': os.cpu_count(), 'machine': platform.machine(),
            'python': platform.python_version(), 'onnxruntime_genai': genai,
            'load_average_at_start': [round(x, 2) for x in load]}


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM), 0 if it cannot be read."""
    try:
        with open(f'/proc/{pid}/status', encoding='utf-8') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def minor_faults(pid: int) -> int:
    """Minor page faults of one process so far (/proc/<pid>/stat field 10)."""
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
        return int(f.read().rsplit(')', 1)[1].split()[7])


def process_cpu_s(pid: int) -> float:
    """CPU seconds one process has run so far (all its live threads, children not), to the nanosecond.

    Read from /proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts in 10 ms clock ticks, too coarse for
    one question. (A thread that ended takes its time with it: the processes measured here keep theirs.)
    """
    total = 0
    try:
        tasks = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f'/proc/{pid}/task/{task}/schedstat', encoding='utf-8') as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


# -- test frames ------------------------------------------------------------------------------------

def test_frame_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic camera-like picture (gradients, an 8x8 block pattern, noise) as bgr8."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                      np.broadcast_to((x + y) / 2, (height, width))], axis=-1)
    blocks = rng.integers(0, 255, (8, 8, 3)).astype(np.float32)
    rows = np.minimum(np.arange(height) * 8 // height, 7)
    cols = np.minimum(np.arange(width) * 8 // width, 7)
    tiles = blocks[rows][:, cols]
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.ascontiguousarray(np.clip(0.6 * image + 0.4 * tiles + noise, 0, 255).astype(np.uint8))


# -- the node as its own process --------------------------------------------------------------------

def entry_point(name: str, module: str) -> List[str]:
    """The installed console script (how users start it), else `python -m module`."""
    script = shutil.which(name, path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, '-m', module]


class LoggedProcess:
    """A subprocess whose output lines are kept (stdout and stderr together)."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        """env: variables added to this process's environment for the child."""
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True, cwd=REPO,
                                        env=None if env is None else {**os.environ, **env})
        self.pid = self.process.pid
        self.lines: List[str] = []
        self._added = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._added:
                self.lines.append(line.rstrip('\n'))
                self._added.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 60.0, start: int = 0) -> re.Match:
        regex = re.compile(pattern)
        position = [start]

        def find():
            while position[0] < len(self.lines):
                match = regex.search(self.lines[position[0]])
                position[0] += 1
                if match:
                    return match
            return None
        with self._added:
            match = self._added.wait_for(find, timeout)
        if not match:
            raise RuntimeError(f'{self.process.args[0]} did not print {pattern!r} within {timeout} s; '
                               'output:\n' + '\n'.join(self.lines[-30:]))
        return match

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode


class NodeProcess(LoggedProcess):
    """vision_qa_node in a subprocess, started the way users start it (the console script)."""

    def __init__(self, parameters: Dict[str, object], log_level: str = 'info',
                 env: Optional[Dict[str, str]] = None) -> None:
        args = entry_point('vision_qa_node', 'phi3v_ros.node.vision_qa_node') + ['--ros-args']
        for name, value in parameters.items():
            args += ['-p', f'{name}:={value}']
        args += ['--log-level', f'vision_qa:={log_level}']
        super().__init__(args, env)


# -- the benchmark's ROS side -----------------------------------------------------------------------

class Peer:
    """Publishes frames and prompts, records answers, pieces and diagnostics with their arrival times."""

    def __init__(self, name: str = 'bench_peer', stream: bool = True) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rcl_interfaces.srv import SetParameters
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._ros = SpinningNode(name)
        self.node = self._ros.node
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                               reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, 'image', image_qos)
        self.prompt_pub = self.node.create_publisher(String, 'prompt', 10)
        self.changed = threading.Condition()
        self.answers: List[tuple] = []     # (monotonic arrival, text)
        self.pieces: List[tuple] = []
        self.diagnostics: Dict[str, str] = {}
        self.diagnostics_seen = 0
        self.node.create_subscription(String, 'answer', self._recorder(self.answers), 100)
        if stream:
            self.node.create_subscription(String, 'answer/stream', self._recorder(self.pieces), 1000)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.reset_client = self.node.create_client(Trigger, '/vision_qa/reset')
        self.cancel_client = self.node.create_client(Trigger, '/vision_qa/cancel')
        self.parameter_client = self.node.create_client(SetParameters, '/vision_qa/set_parameters')
        self._String, self._Image, self._Trigger = String, Image, Trigger
        self._ros.start()

    def _recorder(self, store: list) -> Callable:
        def record(message) -> None:
            now = time.monotonic()
            with self.changed:
                store.append((now, message.data))
                self.changed.notify_all()
        return record

    def _on_diagnostics(self, array) -> None:
        with self.changed:
            for status in array.status:
                for pair in status.values:
                    self.diagnostics[pair.key] = pair.value
            self.diagnostics_seen += 1
            self.changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        if not self.wait_for(lambda: self.diagnostics.get('engine_state') == 'ready'
                             and self.prompt_pub.get_subscription_count() > 0
                             and self.image_pub.get_subscription_count() > 0, timeout):
            raise RuntimeError(f'the node was not ready within {timeout} s: {self.diagnostics}')

    def forget_node(self) -> None:
        """Before starting another node: forget what the last one reported (wait_ready waits anew)."""
        with self.changed:
            self.diagnostics.clear()

    def frame_message(self, pixels: np.ndarray, encoding: str):
        message = self._Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                              is_bigendian=0, step=pixels.shape[1] * pixels.shape[2])
        message.data = np.ascontiguousarray(pixels).tobytes()
        return message

    def stamp(self, message) -> None:
        now = time.time()
        message.header.stamp.sec, message.header.stamp.nanosec = int(now), int(now % 1 * 1e9)

    def deliver_frame(self, pixels: np.ndarray, encoding: str = 'bgr8', timeout: float = 20.0) -> None:
        """Publish until the node's diagnostics count one more frame (a best-effort reader may drop one)."""
        message = self.frame_message(pixels, encoding)
        before = int(self.diagnostics.get('frames_received') or 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stamp(message)
            self.image_pub.publish(message)
            if self.wait_for(lambda: int(self.diagnostics.get('frames_received') or 0) > before, 1.5):
                return
        raise RuntimeError(f"the node did not receive the frame: {self.diagnostics} subs={self.image_pub.get_subscription_count()}")

    def trigger_request(self):
        return self._Trigger.Request()

    def ask(self, text: str) -> float:
        sent = time.monotonic()
        self.prompt_pub.publish(self._String(data=text))
        return sent

    def set_parameters(self, timeout: float = 10.0, **values) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        results = self.call(self.parameter_client, request, timeout).results
        if not all(r.successful for r in results):
            raise RuntimeError(f'set_parameters {values} failed: {[r.reason for r in results]}')

    def call(self, client, request, timeout: float = 10.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f'{client.srv_name} is not available')
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        if not done.wait(timeout):
            raise RuntimeError(f'{client.srv_name} did not answer within {timeout} s')
        return future.result()

    def close(self) -> None:
        self._ros.close()
