"""The ask client finds a namespaced node and follows remapped topics (real processes and DDS)."""
import subprocess

import pytest

from ros_harness import entry_point, isolate_ros_domain, NodeProcess

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

TEXT_ONLY = {'provider': 'cpu', 'max_new_tokens': 8, 'warmup': False, 'allow_text_only': True,
             'image_wait_timeout': 0.0}


@pytest.fixture(autouse=True)
def ros_domain():
    isolate_ros_domain()


def ask(*arguments):
    return subprocess.run(entry_point('ask') + list(arguments), capture_output=True, text=True,
                          timeout=90)


def test_ask_with_namespace_reaches_a_namespaced_node(tiny_model):
    node = NodeProcess({'model_path': tiny_model, **TEXT_ONLY}, ['-r', '__ns:=/robot7'])
    try:
        answered = ask('Hello there?', '--namespace', '/robot7', '--connect-timeout', '60')
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip() and 'ERROR' not in answered.stdout
        elsewhere = ask('Hello?', '--connect-timeout', '1')   # the root namespace has no node
        assert elsewhere.returncode == 3, elsewhere.stderr
    finally:
        assert node.stop() == 0, node.output()


def test_ask_follows_ros_remapping_arguments(tiny_model):
    node = NodeProcess({'model_path': tiny_model, **TEXT_ONLY, 'prompt_topic': '/ops/question',
                        'answer_topic': '/ops/reply'})
    try:
        answered = ask('Hello there?', '--connect-timeout', '60', '--ros-args',
                       '-r', 'prompt:=/ops/question', '-r', 'answer:=/ops/reply',
                       '-r', 'answer/stream:=/ops/reply/stream')
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip()
    finally:
        assert node.stop() == 0, node.output()
