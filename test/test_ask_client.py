"""The ask client finds a namespaced node and follows remapped topics (real processes and DDS)."""
import os
import subprocess
import sys

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
    node = NodeProcess({'model_path': tiny_model, **TEXT_ONLY, 'request_topic': '/ops/question',
                        'response_topic': '/ops/reply'})
    try:
        answered = ask('Hello there?', '--connect-timeout', '60', '--ros-args',
                       '-r', 'request:=/ops/question', '-r', 'response:=/ops/reply',
                       '-r', 'response/stream:=/ops/reply/stream')
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip()
    finally:
        assert node.stop() == 0, node.output()


ENGINE_STACK = ('onnxruntime_genai', 'cv2', 'numpy')
LOADED = 'print(sorted(name for name in {names!r} if name in sys.modules))'


def loaded_after(code, names):
    """Run code in a fresh interpreter; return which of names it left in sys.modules."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', f'import sys\n{code}\n'
                             + LOADED.format(names=names)],
                            cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_importing_ask_loads_no_engine_stack():
    # ERROR_PREFIX comes from phi3v_ros.interface.replies, not from vision_qa and its OpenCV and
    # numpy
    assert loaded_after('import phi3v_ros.client.ask', ENGINE_STACK) == '[]'


def test_ask_help_loads_neither_the_engine_stack_nor_rclpy():
    code = ('import contextlib, io, phi3v_ros.client.ask\n'
            'with contextlib.redirect_stdout(io.StringIO()) as out:\n'
            '    try:\n'
            '        phi3v_ros.client.ask.main(["ask", "--help"])\n'
            '    except SystemExit as exc:\n'
            '        assert exc.code == 0, exc.code\n'
            'assert "usage: ask" in out.getvalue(), out.getvalue()')
    assert loaded_after(code, ENGINE_STACK + ('rclpy',)) == '[]'
    helped = ask('--help')
    assert helped.returncode == 0 and 'usage: ask' in helped.stdout, helped.stderr
