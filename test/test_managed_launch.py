"""
launch_testing: vision_qa.launch.py managed:=true, driven through its states.

Two launches: autostart:=true (the launch configures and activates the node itself: a prompt is
answered), and without (the test drives it, as a lifecycle manager does, through the standard
lifecycle services: unconfigured, configure, activate, deactivate, cleanup, shutdown, with a
prompt in each state getting its one reply). Runs under `colcon test` on a ROS 2 install; skipped
where launch_testing is not installed (PyPI).
"""
import os
import threading
import time
import unittest

import pytest

launch_testing = pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')
pytest.importorskip('onnxruntime_genai')

# Imported after the skips: E402, and I100 for the first one, which cannot sort above pytest.
from launch_includes import vision_qa_launches  # noqa: E402, I100
import launch_testing.asserts  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
import rclpy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

AUTOSTART = f'/phi3v_managed_auto_{os.getpid()}'
DRIVEN = f'/phi3v_managed_driven_{os.getpid()}'


@pytest.mark.launch_test
def generate_test_description():
    return vision_qa_launches([(AUTOSTART, {'managed': 'true', 'autostart': 'true'}),
                               (DRIVEN, {'managed': 'true', 'autostart': 'false'})])


class Peer:
    def __init__(self, namespace):
        self.node = rclpy.create_node('managed_launch_test', namespace=namespace)
        self.answers = []
        self.arrived = threading.Event()
        self.node.create_subscription(String, 'answer', self._on_answer, 10)
        self.prompt_pub = self.node.create_publisher(String, 'prompt', 10)
        self.change = self.node.create_client(ChangeState, 'vision_qa/change_state')
        self.get = self.node.create_client(GetState, 'vision_qa/get_state')
        self.parameters = self.node.create_client(SetParameters, 'vision_qa/set_parameters')

    def _on_answer(self, message):
        self.answers.append(message.data)
        self.arrived.set()

    def spin_until(self, condition, timeout):
        end = time.monotonic() + timeout
        while not condition() and time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.1)
        return condition()

    def call(self, client, request, timeout=120):
        assert client.wait_for_service(timeout_sec=60), client.srv_name
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), client.srv_name
        return future.result()

    def transition(self, transition_id):
        return self.call(self.change, ChangeState.Request(
            transition=Transition(id=transition_id))).success

    def state(self):
        return self.call(self.get, GetState.Request()).current_state.label

    def ask(self, text, timeout=60):
        count = len(self.answers)
        assert self.spin_until(lambda: self.prompt_pub.get_subscription_count() > 0, 60)
        self.prompt_pub.publish(String(data=text))
        assert self.spin_until(lambda: len(self.answers) > count, timeout), 'no reply'
        return self.answers[-1]

    def text_only(self):
        from rclpy.parameter import Parameter
        request = SetParameters.Request(parameters=[
            Parameter('allow_text_only', value=True).to_parameter_msg(),
            Parameter('image_wait_timeout', value=0.0).to_parameter_msg()])
        results = self.call(self.parameters, request).results
        assert all(result.successful for result in results), results


class TestManagedLaunch(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        rclpy.shutdown()

    def test_autostart_configures_and_activates_it(self):
        peer = Peer(AUTOSTART)
        try:
            self.assertTrue(peer.spin_until(lambda: peer.state() == 'active', 120))
            peer.text_only()
            answer = peer.ask('Hello?')
            self.assertFalse(answer.startswith('ERROR: '), answer)
        finally:
            peer.node.destroy_node()

    def test_a_manager_drives_it_through_its_states(self):
        peer = Peer(DRIVEN)
        try:
            self.assertEqual(peer.state(), 'unconfigured')
            self.assertTrue(peer.ask('Hello?').startswith('ERROR: the node is unconfigured'))
            self.assertTrue(peer.transition(Transition.TRANSITION_CONFIGURE))
            self.assertTrue(peer.ask('Hello?').startswith('ERROR: the node is inactive'))
            self.assertTrue(peer.transition(Transition.TRANSITION_ACTIVATE))
            peer.text_only()
            answer = peer.ask('Hello?')
            self.assertFalse(answer.startswith('ERROR: '), answer)
            self.assertTrue(peer.transition(Transition.TRANSITION_DEACTIVATE))
            self.assertTrue(peer.transition(Transition.TRANSITION_CLEANUP))
            self.assertEqual(peer.state(), 'unconfigured')
            self.assertTrue(peer.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN))
        finally:
            peer.node.destroy_node()


@launch_testing.post_shutdown_test()
class TestManagedShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
