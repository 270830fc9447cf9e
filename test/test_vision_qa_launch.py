"""
launch_testing: vision_qa.launch.py on the tiny model answers a question, then exits cleanly.

Two launches of it: one with the default camera topic, one with the launch argument
image_topics:="[head/image, wrist/image]", whose frames go to those two topics only (a node still
on `image` would reply that no camera image arrived). Runs under `colcon test` on a ROS 2 install;
skipped where launch_testing is not installed (PyPI).
"""
import os
import threading
import unittest

import pytest

launch_testing = pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')
pytest.importorskip('onnxruntime_genai')

# Imported after the skips: E402, and I100 for the first one, which cannot sort above pytest.
from launch_includes import vision_qa_launches  # noqa: E402, I100
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

# Namespaces of their own keep this test apart from any other vision_qa node on the same ROS
# domain. Each launch: its namespace, extra launch arguments, the camera topics to publish on.
NAMESPACE = f'/phi3v_launch_test_{os.getpid()}'
LAUNCHES = [(NAMESPACE, {}, ('image',)),
            (NAMESPACE + '_cameras', {'image_topics': '[head/image, wrist/image]'},
             ('head/image', 'wrist/image'))]


@pytest.mark.launch_test
def generate_test_description():
    return vision_qa_launches([(namespace, arguments) for namespace, arguments, _ in LAUNCHES])


class TestVisionQALaunch(unittest.TestCase):

    def test_answer_arrives(self):
        for namespace, _, cameras in LAUNCHES:
            with self.subTest(namespace=namespace):
                self._ask(namespace, cameras)

    def _ask(self, namespace, cameras):
        rclpy.init()
        node = rclpy.create_node('vision_qa_launch_test', namespace=namespace)
        answers = []
        got_answer = threading.Event()
        node.create_subscription(String, 'answer',
                                 lambda m: (answers.append(m.data), got_answer.set()), 10)
        image_pubs = [node.create_publisher(Image, topic, 10) for topic in cameras]
        prompt_pub = node.create_publisher(String, 'prompt', 10)
        try:
            end = node.get_clock().now().nanoseconds + 60 * 10**9
            # Frames sent before the (best effort) image subscriptions are matched are lost.
            while ((min(pub.get_subscription_count() for pub in image_pubs) == 0
                    or prompt_pub.get_subscription_count() == 0)
                   and node.get_clock().now().nanoseconds < end):
                rclpy.spin_once(node, timeout_sec=0.1)
            frame = Image(height=48, width=64, encoding='rgb8', step=64 * 3)
            frame.data = np.full((48, 64, 3), 100, np.uint8).tobytes()
            for _ in range(20):   # the camera subscriptions are best effort: send a few frames
                frame.header.stamp = node.get_clock().now().to_msg()
                for image_pub in image_pubs:
                    image_pub.publish(frame)
                rclpy.spin_once(node, timeout_sec=0.05)
            prompt_pub.publish(String(data='What do you see?'))
            while not got_answer.is_set() and node.get_clock().now().nanoseconds < end:
                rclpy.spin_once(node, timeout_sec=0.1)
            self.assertTrue(answers, 'no answer within 60 s')
            self.assertFalse(answers[0].startswith('ERROR: '), answers[0])
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestVisionQAShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
