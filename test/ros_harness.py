"""Run vision_qa_node as its own process and talk to it over real DDS (no launch, no ros2 CLI)."""
import atexit
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

# The tests, benchmarks and soaks take their ROS domain one way; the test files import it from here
from phi3v_ros.tools.ros_domain import isolate_ros_domain  # noqa: F401
import psutil

CONSOLE_SCRIPT_MODULES = {'vision_qa_node': 'phi3v_ros.node.vision_qa_node',
                          'managed_vision_qa_node': 'phi3v_ros.node.managed_node',
                          'ask': 'phi3v_ros.client.ask',
                          'synthetic_camera': 'phi3v_ros.tools.synthetic_camera'}


def _installed_by_ament(name):
    """Return <prefix>/lib/phi3v_ros/<name> of the phi3v_ros in the ament index, or None."""
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:
        return None
    try:
        prefix = get_package_prefix('phi3v_ros')
    except (LookupError, OSError, ValueError):   # not in the index, or no AMENT_PREFIX_PATH
        return None
    script = os.path.join(prefix, 'lib', 'phi3v_ros', name)
    return script if os.path.isfile(script) and os.access(script, os.X_OK) else None


def entry_point(name):
    """
    Return the command that starts one of the package's console scripts, as users start it.

    In order: the executable of the phi3v_ros in the ament index (<prefix>/lib/phi3v_ros/<name>,
    where colcon installs it: what `colcon test` must test), the script next to this Python (the
    venv of `make test`), the script on PATH, else `python -m` on its module.
    """
    script = (_installed_by_ament(name)
              or shutil.which(name, path=os.path.dirname(sys.executable))
              or shutil.which(name))
    if script:
        return [script]
    return [sys.executable, '-m', CONSOLE_SCRIPT_MODULES[name]]


_STARTED = []


def started_count():
    """Return how many nodes were started so far (for kill_started_since)."""
    return len(_STARTED)


def kill_started_since(count):
    """
    Kill the nodes started after the first count that still run; return how many there were.

    A test that fails between start and stop (or whose peer fails to close) must not leave a node
    and its worker running into the next tests: idle nodes load a 2-core CI machine.
    """
    left = [node for node in _STARTED[count:] if node.process.poll() is None]
    for node in left:
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return len(left)


@atexit.register
def _kill_leftovers():
    """Kill the nodes still running at exit (those of module fixtures, and any left)."""
    kill_started_since(0)


class NodeProcess:
    """vision_qa_node in a subprocess; its output is kept for assertions and failure messages."""

    def __init__(self, parameters, extra_args=(), prefix=(), env=None,
                 executable='vision_qa_node'):
        """Start the node; prefix is put before the command (unshare, ...), env replaces os's."""
        args = list(prefix) + entry_point(executable) + ['--ros-args']
        for name, value in parameters.items():
            args += ['-p', f'{name}:={value}']
        args += list(extra_args)
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True, env=env)
        _STARTED.append(self)
        self.lines = []
        self._line_added = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            with self._line_added:
                self.lines.append(line.rstrip('\n'))
                self._line_added.notify_all()

    def wait_for_line(self, text, timeout=60):
        with self._line_added:
            found = self._line_added.wait_for(
                lambda: any(text in line for line in self.lines), timeout)
        assert found, f'{text!r} not logged within {timeout} s; log:\n' + self.output()
        return next(line for line in self.lines if text in line)

    def output(self):
        return '\n'.join(self.lines)

    def descendants(self):
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def send_signal(self, signum):
        self.process.send_signal(signum)

    def stop(self, timeout=10):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode


def wait_until(condition, timeout=30.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class RosPeer:
    """
    The test's side of the conversation.

    Publishes frames and prompts, records what comes back.
    """

    def __init__(self, namespace='', node_name='vision_qa'):
        from diagnostic_msgs.msg import DiagnosticArray
        from phi3v_ros.client.spinning import SpinningNode
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rcl_interfaces.srv import SetParameters
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._ros = SpinningNode('test_peer', namespace=namespace, multi_threaded=True)
        self.node = self._ros.node
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                               reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, 'image', image_qos)
        self.compressed_pub = self.node.create_publisher(CompressedImage, 'image/compressed',
                                                         image_qos)
        self.prompt_pub = self.node.create_publisher(String, 'prompt', 10)
        self.answers, self.pieces, self.diagnostics = [], [], []
        self.changed = threading.Condition()
        self.node.create_subscription(String, 'answer', self._record(self.answers), 10)
        self.node.create_subscription(String, 'answer/stream', self._record(self.pieces), 1000)
        prefix = f'{namespace.rstrip("/")}/{node_name}' if namespace else f'/{node_name}'
        # Only this node's: several nodes share /diagnostics in some tests (six at 10 Hz each),
        # and scanning every node's messages at every notify made a test's own process use a
        # whole core and starve the nodes under test (seen: one test 22 s, then 196 s).
        self.status_name = f'{prefix}: engine'
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._record_own, 10)
        self.cancel_client = self.node.create_client(Trigger, f'{prefix}/cancel')
        self.reset_client = self.node.create_client(Trigger, f'{prefix}/reset')
        self.parameter_client = self.node.create_client(SetParameters, f'{prefix}/set_parameters')
        self._String, self._Image, self._CompressedImage = String, Image, CompressedImage
        self._Trigger = Trigger
        self._ros.start()

    def _record(self, store):
        def callback(message):
            with self.changed:
                store.append(message)
                self.changed.notify_all()
        return callback

    def _record_own(self, array):
        if array.status and array.status[0].name == self.status_name:
            with self.changed:
                self.diagnostics.append(array)
                self.changed.notify_all()

    def wait_for(self, condition, timeout=60.0):
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def wait_connected(self, timeout=60.0):
        """Until the node's prompt subscription and answer publisher are matched with ours."""
        answer_topic = self.node.resolve_topic_name('answer')
        assert wait_until(lambda: self.prompt_pub.get_subscription_count() > 0
                          and self.image_pub.get_subscription_count()
                          + self.compressed_pub.get_subscription_count() > 0
                          and self.node.count_publishers(answer_topic) > 0,
                          timeout), 'the node did not connect'

    def wait_ready(self, timeout=60.0):
        """Until /diagnostics says the engine is ready."""
        assert self.wait_for(lambda: any(self.engine_value(d, 'engine_state') == 'ready'
                                         for d in self.diagnostics), timeout), 'engine not ready'

    @staticmethod
    def engine_value(array, key):
        for status in array.status:
            for pair in status.values:
                if pair.key == key:
                    return pair.value
        return None

    def latest_diagnostic(self, key):
        with self.changed:
            return None if not self.diagnostics else self.engine_value(self.diagnostics[-1], key)

    def camera_publisher(self, topic):
        """Return a publisher of Image on topic, with the QoS of the peer's own image publisher."""
        return self.node.create_publisher(self._Image, topic, self.image_pub.qos_profile)

    def publish_frame(self, rgb, encoding='rgb8', stamp_s=None, publisher=None, frame_id=''):
        import numpy as np
        message = self._Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                              is_bigendian=0, step=rgb.shape[1] * 3)
        message.data = np.ascontiguousarray(rgb).tobytes()
        message.header.frame_id = frame_id
        if stamp_s is None:
            message.header.stamp = self.node.get_clock().now().to_msg()
        else:
            message.header.stamp.sec = int(stamp_s)
            message.header.stamp.nanosec = int(stamp_s % 1 * 1e9)
        (publisher or self.image_pub).publish(message)
        return message

    def deliver_frame(self, rgb, encoding='rgb8', timeout=10.0, stamp_s=None):
        """
        Publish until the node's diagnostics count one more frame.

        Best-effort readers may drop a large frame, typically the first after discovery.
        """
        before = int(self.latest_diagnostic('frames_received') or 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_frame(rgb, encoding, stamp_s)
            received = self.wait_for(
                lambda: int(self.latest_diagnostic('frames_received') or 0) > before, 0.5)
            if received:
                return
        raise AssertionError(
            f'the node did not receive the frame within {timeout:g} s (its latest diagnostics: '
            f'frames_received {self.latest_diagnostic("frames_received")}, engine_state '
            f'{self.latest_diagnostic("engine_state")}, image topic matched: '
            f'{self.image_pub.get_subscription_count() > 0})')

    def publish_raw(self, message):
        (self.compressed_pub if hasattr(message, 'format') else self.image_pub).publish(message)

    def ask(self, text):
        self.prompt_pub.publish(self._String(data=text))

    def wait_answers(self, count, timeout=60.0):
        assert self.wait_for(lambda: len(self.answers) >= count, timeout), (
            f'{len(self.answers)} of {count} answers within {timeout} s: '
            f'{[a.data for a in self.answers]}')
        return [a.data for a in self.answers]

    def call(self, client, request, timeout=10.0):
        assert client.wait_for_service(timeout_sec=timeout), f'{client.srv_name} not available'
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        assert done.wait(timeout), f'{client.srv_name} did not answer'
        return future.result()

    def trigger(self, client):
        return self.call(client, self._Trigger.Request())

    def set_parameters(self, **values):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()
                        for name, value in values.items()])
        return self.call(self.parameter_client, request).results

    def close(self, timeout=10.0):
        """Stop spinning, then destroy the node and shut the context down (SpinningNode)."""
        self._ros.close(timeout)
