"""vision_qa_node's class in this process: what main()'s loop does when a thread of it has died."""
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')


class Stop:
    """Stands for main()'s signal flag."""

    received = ''


@pytest.fixture
def node_and_executor(tiny_model):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from phi3v_ros.node.vision_qa_node import VisionQANode
    from ros_harness import isolate_ros_domain
    isolate_ros_domain()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = VisionQANode(context=context, parameter_overrides=[
        Parameter('model_path', value=tiny_model), Parameter('provider', value='cpu'),
        Parameter('warmup', value=False)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_a_dead_thread_makes_the_node_exit_1_and_diagnostics_say_error(node_and_executor):
    from phi3v_ros.node.diagnostics import engine_status, ERROR
    from phi3v_ros.node.shell import spin_until_stopped
    node, executor = node_and_executor
    stop = Stop()
    stop.received = 'SIGINT'
    assert spin_until_stopped(executor, node, stop) == 0    # a stop request alone: exit 0
    stop.received = ''
    node.health.mark_dead('phi3v-dispatcher')
    assert spin_until_stopped(executor, node, stop) == 1
    level, message, _ = engine_status(node._engine, node._qa, node._cameras, 'model',
                                      node.health)
    assert level == ERROR and message.startswith('thread phi3v-dispatcher ended')
