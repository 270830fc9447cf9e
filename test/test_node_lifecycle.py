"""vision_qa_node's life cycle as a process: signals, namespaces (each test has its own node)."""
import signal
import time

import pytest

from ros_harness import isolate_ros_domain, NodeProcess, RosPeer, wait_until

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

ERROR = 'ERROR: '
BASE = {'provider': 'cpu', 'max_new_tokens': 12, 'diagnostics_period': 0.2, 'warmup': False}


@pytest.fixture(autouse=True)
def ros_domain():
    isolate_ros_domain()   # a new domain per test: nodes of earlier tests cannot answer


def start_node(model, peer, **parameters):
    node = NodeProcess({'model_path': model, **BASE, **parameters})
    peer.wait_connected()
    peer.wait_ready()
    return node


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_signal_during_generation_leaves_no_process_behind(tiny_model, signum):
    peer = RosPeer()
    process = start_node(tiny_model, peer, max_new_tokens=20000, allow_text_only=True,
                         image_wait_timeout=0.0)
    children = process.descendants()
    assert children, 'the worker process should be running'
    peer.ask('Long answer please')
    assert peer.wait_for(lambda: peer.pieces, 30)
    process.send_signal(signum)
    started = time.monotonic()
    process.process.wait(10)
    assert time.monotonic() - started < 5
    assert wait_until(lambda: not any(child.is_running() and child.status() != 'zombie'
                                      for child in children), 5)
    assert process.process.returncode == 0, process.output()
    peer.close()


def test_namespace_and_remapping(tiny_model):
    namespaced = RosPeer(namespace='/robot1')
    try:
        process = NodeProcess({'model_path': tiny_model, **BASE, 'allow_text_only': True,
                               'image_wait_timeout': 0.0}, extra_args=['-r', '__ns:=/robot1'])
        namespaced.wait_connected()
        namespaced.ask('Hello?')
        assert not namespaced.wait_answers(1)[0].startswith(ERROR)
        assert namespaced.trigger(namespaced.reset_client).success
        process.stop()
    finally:
        namespaced.close()
