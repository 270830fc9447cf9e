"""SpinningNode: callbacks served in its thread, a clean stop, and a spinner's error never lost."""
import threading

from phi3v_ros.client.spinning import SpinningNode
import pytest
from ros_harness import isolate_ros_domain

pytest.importorskip('rclpy')


@pytest.fixture(autouse=True)
def ros_domain():
    isolate_ros_domain()


def test_a_message_is_received_while_this_thread_waits_and_close_stops_the_thread():
    from std_msgs.msg import String
    received, arrived = [], threading.Event()
    listener = SpinningNode('spin_listener')
    listener.node.create_subscription(
        String, 'chatter', lambda m: (received.append(m.data), arrived.set()), 10)
    listener.start()
    talker = SpinningNode('spin_talker')
    publisher = talker.node.create_publisher(String, 'chatter', 10)
    talker.start()
    try:
        for _ in range(300):   # until discovery has matched them; each wait bounded
            publisher.publish(String(data='hello'))
            if arrived.wait(0.1):
                break
        assert received and received[0] == 'hello'
    finally:
        talker.close()
        listener.close()
    assert not listener._thread.is_alive() and not listener.context.ok()
    assert not talker.context.ok()


def test_an_error_in_a_callback_ends_the_spinner_and_close_reports_it():
    node = SpinningNode('spin_failing')

    def fail():
        raise ValueError('a callback bug')
    node.node.create_timer(0.01, fail)
    node.start()
    node._thread.join(30)
    assert not node._thread.is_alive()
    with pytest.raises(RuntimeError, match='ValueError: a callback bug'):
        node.close()
    assert not node.context.ok(), 'the node and context are still cleaned up'


def test_a_node_never_started_closes():
    node = SpinningNode('spin_idle', multi_threaded=True)
    node.close(timeout_s=5.0)
    assert not node.context.ok()
