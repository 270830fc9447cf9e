"""
The request interface through vision_qa_node over real DDS, with the client library and ask.

Several client processes asking at once each receive exactly their own responses; malformed
requests each get one error response and the node stays up; a request is cancelled by its id;
ask prints a constrained value and never another client's answer.
"""
import json
import subprocess
import sys
import threading
import time

from phi3v_ros.client.spinning import SpinningNode
from phi3v_ros.engine.guidance import has_guidance
import pytest
from ros_harness import entry_point, isolate_ros_domain, NodeProcess, wait_until

pytest.importorskip('rclpy')
og = pytest.importorskip('onnxruntime_genai')
needs_guidance = pytest.mark.skipif(not has_guidance(og), reason='guidance came in 0.8')

NODE = {'provider': 'cpu', 'max_new_tokens': 20000, 'warmup': False, 'allow_text_only': True,
        'image_wait_timeout': 0.0, 'max_queue': 100}
CLIENT = """
import json, sys
from phi3v_ros.client.vision_qa_client import VisionQAClient
client = VisionQAClient()
assert client.wait_for_node(60)
futures = [client.ask_async(f'{sys.argv[1]} question {n}?', choices=['yes', 'no', 'maybe'])
           for n in range(int(sys.argv[2]))]
answers = [future.result(120) for future in futures]
print(json.dumps([[f.request_id, a.id, a.status, a.value] for f, a in zip(futures, answers)]))
client.close()
"""


@pytest.fixture(scope='module')
def node(tiny_model):
    isolate_ros_domain()
    process = NodeProcess({'model_path': tiny_model, **NODE})
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture
def client(node):
    from phi3v_ros.client.vision_qa_client import VisionQAClient
    made = VisionQAClient()
    assert made.wait_for_node(60), node.output()
    yield made
    made.close()


class RawPeer:
    """Publishes raw request messages and records every response and piece, whoever's."""

    def __init__(self):
        from std_msgs.msg import String
        self.String = String
        self.ros = SpinningNode('raw_peer')
        self.responses, self.pieces = [], []
        self.changed = threading.Condition()
        self.publisher = self.ros.node.create_publisher(String, 'request', 100)
        self.ros.node.create_subscription(String, 'response', self._record(self.responses), 100)
        self.ros.node.create_subscription(String, 'response/stream', self._record(self.pieces),
                                          1000)
        self.ros.start()
        response = self.ros.node.resolve_topic_name('response')
        assert wait_until(lambda: self.publisher.get_subscription_count() > 0
                          and self.ros.node.count_publishers(response) > 0, 60)

    def _record(self, store):
        def record(message):
            with self.changed:
                store.append(json.loads(message.data))
                self.changed.notify_all()
        return record

    def send(self, data):
        self.publisher.publish(self.String(data=data))

    def wait_responses(self, count, timeout=60):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.responses) >= count, timeout), \
                self.responses
            return list(self.responses)


@needs_guidance
def test_clients_asking_at_once_each_get_exactly_their_own_answers(node, client):
    processes = [subprocess.Popen([sys.executable, '-c', CLIENT, f'client{n}', '6'],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n in range(3)]
    mine = [client.ask_async(f'mine {n}?', regex='[0-9]{1,2}') for n in range(4)]
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-2000:]
        answers = json.loads(out.strip().splitlines()[-1])
        assert len(answers) == 6
        for sent_id, answered_id, status, value in answers:
            assert sent_id == answered_id and status == 'ok' and value in ('yes', 'no', 'maybe')
    for future in mine:
        answer = future.result(120)
        assert answer.id == future.request_id and answer.ok and answer.value.isdigit()


def test_a_response_reaches_a_client_that_subscribed_after_it_was_sent(node):
    """The node keeps its responses for late readers (transient local, interface/qos.py)."""
    from phi3v_ros.interface.qos import response_qos
    import rclpy.qos
    from std_msgs.msg import String
    peer = RawPeer()
    late, received = None, []
    try:
        peer.send(json.dumps({'id': 'sent-before', 'question': '   '}))   # answered at once
        with peer.changed:
            assert peer.changed.wait_for(lambda: any(
                r.get('id') == 'sent-before' for r in peer.responses), 60), peer.responses
        late = SpinningNode('late_reader')
        late.node.create_subscription(String, 'response',
                                      lambda m: received.append(json.loads(m.data)),
                                      response_qos(rclpy.qos))
        late.start()
        assert wait_until(lambda: any(r.get('id') == 'sent-before' for r in received), 30), \
            received
        assert [r['status'] for r in received if r.get('id') == 'sent-before'] == ['error']
    finally:
        peer.ros.close()
        if late is not None:
            late.close()


def test_every_malformed_request_gets_one_error_response_and_the_node_stays_up(node, client):
    peer = RawPeer()
    try:
        bad = ['not json', '[1, 2]', '{"question": "no id"}', '{"id": "", "question": "q"}',
               '{"id": "u1", "question": "q", "colour": "red"}',
               '{"id": "t1", "question": 5}', '{"id": "r1", "question": "q", "max_crops": 99}',
               '{"id": "f1", "question": "q", "format": {"choices": []}}',
               '{"id": "c1", "question": "q", "cameras": ["/nowhere"]}',
               json.dumps({'id': 'h1', 'question': 'q' * 70000}),
               '{"id": "x1", "question": "q", "format": {"regex": "(unbalanced"}}',
               '{"id": "s1", "question": "q", "format": {"json_schema": {"type": 5}}}',
               '{"id": "m1", "question": "q", "max_new_tokens": 20001}']
        for data in bad:
            peer.send(data)
        responses = peer.wait_responses(len(bad))
        assert all(r['status'] == 'error' and r['error'] for r in responses), responses
        ids = [r['id'] for r in responses]
        assert sorted(i for i in ids if i) == sorted(
            ['u1', 't1', 'r1', 'f1', 'c1', 'x1', 's1', 'm1']), ids
        assert ids.count(None) == 5
        by_id = {r['id']: r['error'] for r in responses if r['id']}
        assert 'unknown field(s) colour' in by_id['u1'] and 'not subscribed' in by_id['c1']
        if has_guidance(og):
            assert 'regex format was refused' in by_id['x1']
        assert client.ask('Still there?', timeout=60, max_new_tokens=8).ok, node.output()
        assert node.process.poll() is None
        ours = [r for r in peer.responses if r['id'] is None or not r['id'].startswith(
            'vision_qa_client')]       # every response is seen here, the client's too
        assert len(ours) == len(bad), 'one response each, no more'
    finally:
        peer.ros.close()


def test_a_request_is_cancelled_by_its_id(node, client):
    started = threading.Event()
    future = client.ask_async('Talk for long.', on_piece=lambda piece: started.set())
    assert started.wait(60)      # 20,000 new tokens: seconds, unless cancelled
    assert future.cancel() and future.cancelled()
    line = node.wait_for_line(f"request '{future.request_id}'", 60)
    assert ' failed' in line and 'cancelled (its client cancelled the request)' in line, line
    assert client.ask('Next one?', timeout=60, max_new_tokens=8).ok


@needs_guidance
def test_ask_prints_the_value_of_a_format(node, tmp_path):
    def ask(*arguments):
        return subprocess.run(entry_point('ask') + list(arguments), capture_output=True,
                              text=True, timeout=120)
    chosen = ask('Is the door open?', '--choices', 'yes,no', '--connect-timeout', '60')
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip() in ('yes', 'no')
    schema = tmp_path / 'room.json'
    schema.write_text(json.dumps({'type': 'object', 'properties': {
        'people': {'type': 'integer', 'minimum': 0, 'maximum': 9}}, 'required': ['people'],
        'additionalProperties': False}))
    checked = ask('How many people?', '--json-schema', str(schema), '--connect-timeout', '60')
    assert checked.returncode == 0, checked.stderr
    assert set(json.loads(checked.stdout)) == {'people'}
    refused = ask('q', '--regex', '(unbalanced', '--connect-timeout', '60')
    assert refused.returncode == 1 and refused.stderr.startswith('ERROR: ')


def test_the_client_library_on_a_node_the_caller_spins(node):
    from phi3v_ros.client.vision_qa_client import VisionQAClient
    mine = SpinningNode('callers_own_node', multi_threaded=True)   # the caller's, spun by it
    client = VisionQAClient(node=mine.node)
    mine.start()
    try:
        assert client.wait_for_node(60)
        assert client.ask('Hello?', timeout=60, max_new_tokens=6).ok   # every topic matched now
        pieces = []
        answer = client.ask('Hello?', timeout=60, max_new_tokens=6, on_piece=pieces.append)
        assert answer.ok and answer.id.startswith('callers_own_node-')
        # the pieces travel on their own topic: they may come just after the answer
        assert wait_until(lambda: ''.join(pieces) == answer.text, 10), (pieces, answer.text)
    finally:
        client.close()      # closes nothing of the caller's node
        assert mine.context.ok()
        mine.close()


def test_a_follow_up_through_the_node_is_about_the_frame_of_its_conversation(node, client):
    """A camera streams; the follow-up is answered about the opening's frame, not a newer one."""
    from phi3v_test_utils import gradient_image
    from sensor_msgs.msg import Image
    camera = SpinningNode('streaming_camera')
    publisher = camera.node.create_publisher(Image, 'image', 10)
    camera.start()
    stop = threading.Event()

    def stream():
        rgb = gradient_image(240, 320, seed=5)
        stamp = 1
        while not stop.wait(0.05):
            message = Image(height=240, width=320, encoding='rgb8', step=320 * 3)
            message.data = rgb.tobytes()
            message.header.stamp.sec = stamp
            publisher.publish(message)
            stamp += 1
    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        deadline = time.monotonic() + 60
        while True:      # allow_text_only: until a frame has arrived, answers have none
            first = client.ask('What is on the table?', timeout=60, max_new_tokens=6,
                               max_crops=1, follow_ups=True)
            if first.frames or time.monotonic() > deadline:
                break
        assert first.ok and first.frames and first.conversation['open'], first.raw
        second = client.ask('Which one is red?', timeout=60, max_new_tokens=6, follows=first.id)
        assert second.ok, second.error
        assert second.conversation == {'follows': first.id, 'continued': True, 'follow_up': 1,
                                       'new_because': None, 'open': True}
        assert second.frames[0]['stamp'] == first.frames[0]['stamp']   # while newer ones came
        assert second.raw['image_tokens'] == 0 and second.prompt_tokens < 40
        other = client.ask('Hello?', timeout=60, max_new_tokens=6)          # another question
        third = client.ask('And the blue one?', timeout=60, max_new_tokens=6, max_crops=1,
                           follows=second.id)
        assert third.ok and not third.conversation['continued']
        assert other.ok and 'reached the model in between' in third.conversation['new_because']
        assert third.frames[0]['stamp'] > first.frames[0]['stamp']         # a current frame
    finally:
        stop.set()
        streamer.join(5)
        camera.close()
