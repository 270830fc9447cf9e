"""
The client library's response subscription over real DDS, without a node: a responder stands in.

A client that has just started sends its request as soon as the node's request subscription is
matched; the node's response writer may not have met the client's reader yet, and an immediate
response (an error, a cancel) went nowhere: `ask '   '` once waited out its timeout. The response
topic is transient local (phi3v_ros/interface/qos.py) so that such a response still arrives.
Here the response is published before the client even exists, which is that race at its widest,
and deterministic: with the volatile QoS of before, the test fails (no response within 30 s).
"""
import json
import uuid

from phi3v_ros.client import vision_qa_client
from phi3v_ros.client.spinning import SpinningNode
from phi3v_ros.interface.qos import response_qos
import pytest
from ros_harness import isolate_ros_domain, wait_until

pytest.importorskip('rclpy')


@pytest.fixture(autouse=True)
def ros_domain():
    isolate_ros_domain()


@pytest.fixture
def responder():
    import rclpy.qos
    from std_msgs.msg import String
    ros = SpinningNode('responder').start()
    publisher = ros.node.create_publisher(String, 'response', response_qos(rclpy.qos))
    yield lambda body: publisher.publish(String(data=json.dumps(body)))
    ros.close()


def response(request_id, text):
    return {'id': request_id, 'status': 'ok', 'text': text, 'value': None, 'error': None,
            'frames': [], 'prompt_tokens': 3, 'generated_tokens': 1}


def test_a_response_sent_before_the_client_met_the_node_still_arrives(responder, monkeypatch):
    fixed = uuid.UUID(int=0x1234)   # the client's ids come from uuid4: known in advance
    monkeypatch.setattr(vision_qa_client.uuid, 'uuid4', lambda: fixed)
    own_id = f'asker-{fixed.hex[:8]}-1'
    for number in range(50):        # other clients' responses, in the history before ours
        responder(response(f'another-client-{number}', 'not yours'))
    responder(response(own_id, 'yes'))
    # The client's node is spun only once the question is pending, as it is when a real
    # response comes (the request goes out after it is registered): else the history could be
    # delivered before ask_async, and dropped as another client's.
    asker = SpinningNode('asker')
    client = vision_qa_client.VisionQAClient(node=asker.node)
    try:
        future = client.ask_async('Was this answered before I asked?')
        assert future.request_id == own_id
        asker.start()
        answer = future.result(30)
        assert (answer.id, answer.status, answer.text) == (own_id, 'ok', 'yes')
    finally:
        client.close()
        asker.close()


def test_a_volatile_subscriber_still_receives_responses(responder):
    """`ros2 topic echo /response` and programs with rclpy's default QoS stay compatible."""
    from std_msgs.msg import String
    received = []
    ros = SpinningNode('volatile_listener')
    ros.node.create_subscription(String, 'response', lambda m: received.append(m.data), 10)
    ros.start()
    try:
        assert wait_until(lambda: ros.node.count_publishers('/response') > 0, 30)
        # published until one arrives: matching has no event to wait on, and a volatile
        # subscriber gets nothing sent before it was matched (that is the point of the test)
        assert wait_until(lambda: responder(response('echo-1', 'seen')) or received, 30,
                          interval=0.1)
        assert json.loads(received[0])['id'] == 'echo-1'
    finally:
        ros.close()
