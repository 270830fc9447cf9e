"""
Several cameras and frame ages through vision_qa_node over real DDS.

Two cameras publishing different pictures give one answer with the image tokens of both, unlike
the answer about either camera alone; a camera that stops is named in the error; a frame stamped
30 s ago is refused by its stamp (and taken when ages are by arrival); under use_sim_time with a
/clock publisher the age follows simulated time.
"""
import re

from phi3v_ros.engine.hd_transform import crop_grid
from phi3v_test_utils import gradient_image
import pytest
from reliability_helpers import NodePeer, start_nodes
from ros_harness import isolate_ros_domain, wait_until

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

ERROR = 'ERROR: '
BASE = {'provider': 'cpu', 'max_new_tokens': 12, 'diagnostics_period': 0.2, 'warmup': False}
# small frames: each fits Fast DDS's shared-memory segment (see test_node_integration.py)
HEAD = gradient_image(120, 160, seed=1)
WRIST = gradient_image(90, 200, seed=2)
ANSWER = re.compile(r'prompt #\d+ answered .*?, (\d+) prompt \+ \d+ new tokens.*?, (\d+) crops '
                    r'\((\d+) image tokens\), frames: (.*?); node')


@pytest.fixture(scope='module', autouse=True)
def ros_domain():
    isolate_ros_domain()


def topics(*names):
    return '[' + ', '.join(names) + ']'


def answer_line(process, count=1):
    """Return the count-th answer line a node logged: (prompt, crops, image tokens, frames)."""
    assert wait_until(lambda: len(ANSWER.findall(process.output())) >= count, 10), \
        process.output()
    prompt, crops, image, frames = ANSWER.findall(process.output())[count - 1]
    return int(prompt), int(crops), int(image), frames


def stop_all(processes, peers):
    for peer in peers:
        peer.close()
    for process in processes:
        assert process.stop() == 0, process.output()


def test_two_cameras_answer_from_both_unlike_either_alone(tiny_model):
    cameras = {'/both': ('/cams/head', '/cams/wrist'), '/head_only': ('/cams/head',),
               '/wrist_only': ('/cams/wrist',)}
    processes = start_nodes([({'model_path': tiny_model, **BASE, 'image_topics': topics(*cams)},
                              ['-r', f'__ns:={ns}']) for ns, cams in cameras.items()])
    peers = [NodePeer(ns) for ns in cameras]
    try:
        publishers = {topic: peers[0].camera_publisher(topic)
                      for topic in ('/cams/head', '/cams/wrist')}
        pictures = {'/cams/head': HEAD, '/cams/wrist': WRIST}
        answers = {}
        for (ns, cams), peer, process in zip(cameras.items(), peers, processes):
            peer.wait_ready()
            for camera in cams:
                peer.deliver_to(publishers[camera], camera, pictures[camera],
                                frame_id=camera.rsplit('/', 1)[1])
            answers[ns] = peer.ask_and_wait('Is the gripper holding the cup?')
            assert not answers[ns].startswith(ERROR), (answers[ns], process.output())
        both, head, wrist = (answer_line(process) for process in processes)
        tokens = {camera: crop_grid(*pictures[camera].shape[:2]).image_tokens
                  for camera in pictures}
        assert both[2] == tokens['/cams/head'] + tokens['/cams/wrist']
        assert head[2] == tokens['/cams/head'] and wrist[2] == tokens['/cams/wrist']
        assert both[0] > head[0] + tokens['/cams/wrist'] and both[1] == head[1] + wrist[1]
        assert answers['/both'] != answers['/head_only']
        assert answers['/both'] != answers['/wrist_only']
        # the log names every frame used: camera, stamp, frame_id, age
        assert re.match(r'/cams/head stamp [0-9.]+ frame_id head age [0-9.]+ s \(by stamp, '
                        r'#\d+\); /cams/wrist stamp [0-9.]+ frame_id wrist age', both[3]), both
        assert '/cams/head stamp' in peers[0].latest_diagnostic('last_answer_frames')
    finally:
        stop_all(processes, peers)


def test_a_camera_that_stops_is_named_in_the_error(tiny_model):
    [process] = start_nodes([({'model_path': tiny_model, **BASE, 'max_image_age': 2.0,
                               'image_wait_timeout': 0.5,
                               'image_topics': topics('/stop/head', '/stop/wrist')},
                              ['-r', '__ns:=/stop'])])
    peer = NodePeer('/stop')
    try:
        head, wrist = (peer.camera_publisher(topic) for topic in ('/stop/head', '/stop/wrist'))
        peer.wait_ready()
        peer.deliver_to(head, '/stop/head', HEAD)
        peer.deliver_to(wrist, '/stop/wrist', WRIST)
        # fresh again just before asking: a delivery under load can take longer than max_image_age
        peer.publish_frame(HEAD, publisher=head)
        peer.publish_frame(WRIST, publisher=wrist)
        assert not peer.ask_and_wait('Both?').startswith(ERROR), process.output()

        # the wrist camera stops; the head camera goes on until the node calls the wrist stale and
        # has counted head frames in a diagnostics period (the rate is of the last period: under
        # load the wrist can turn stale before a period with a head frame is reported)
        head_rates = []

        def wrist_stale_head_counted():
            peer.publish_frame(HEAD, publisher=head)
            head_rates.append(float(peer.camera_values('/stop/head').get('rate_hz') or 0))
            return peer.camera_values('/stop/wrist').get('level') == 1 and max(head_rates) > 0
        assert wait_until(wrist_stale_head_counted, 30, 0.1), \
            (peer.camera_values('/stop/wrist'), head_rates)
        assert 'older than max_image_age' in peer.camera_values('/stop/wrist')['message']
        peer.publish_frame(HEAD, publisher=head)
        reply = peer.ask_and_wait('Both again?')
        assert reply.startswith(ERROR + 'not every camera had an image at most 2 s old '
                                        '(max_image_age) within 0.5 s (image_wait_timeout): '
                                        '/stop/wrist: the latest image is '), reply
        assert '/stop/head' not in reply and reply.endswith('(by its header stamp).'), reply
        assert peer.camera_values('/stop/head')['level'] == 0
        assert float(peer.camera_values('/stop/wrist')['rate_hz']) == 0
    finally:
        stop_all([process], [peer])


def test_a_frame_stamped_30_s_ago_is_refused_by_its_stamp(tiny_model):
    sources = {'/by_stamp': 'stamp', '/by_arrival': 'arrival'}
    processes = start_nodes([({'model_path': tiny_model, **BASE, 'max_image_age': 2.0,
                               'image_wait_timeout': 0.5, 'frame_age_source': source},
                              ['-r', f'__ns:={ns}']) for ns, source in sources.items()])
    peers = [NodePeer(ns) for ns in sources]
    try:
        replies = {}
        for ns, peer in zip(sources, peers):
            peer.wait_ready()
            now = peer.node.get_clock().now().nanoseconds * 1e-9
            peer.deliver_frame(HEAD, stamp_s=now - 30.0)   # taken 30 s ago, delivered now
            replies[ns] = peer.ask_and_wait('Fresh?')
        assert re.fullmatch(r'ERROR: the latest camera image is 3\d\.\d s old \(by its header '
                            r'stamp\), older than max_image_age \(2 s\), and no newer one '
                            r'arrived within 0.5 s\.', replies['/by_stamp']), replies
        assert not replies['/by_arrival'].startswith(ERROR), replies
    finally:
        stop_all(processes, peers)


def test_under_use_sim_time_the_age_follows_the_clock_topic(tiny_model):
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    [process] = start_nodes([({'model_path': tiny_model, **BASE, 'use_sim_time': True,
                               'max_image_age': 2.0, 'image_wait_timeout': 0.5},
                              ['-r', '__ns:=/sim'])])
    peer = NodePeer('/sim')
    clock = peer.node.create_publisher(Clock, '/clock',
                                       QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    def set_clock(seconds):
        """Publish /clock until the node's diagnostics are stamped with that time."""
        def stamped():
            clock.publish(Clock(clock=Time(sec=seconds, nanosec=0)))
            with peer.changed:
                mine = peer._mine()
                return bool(mine) and mine[-1].header.stamp.sec == seconds
        assert wait_until(stamped, 30, 0.05), f'the node never took /clock {seconds}'
    try:
        peer.wait_ready()
        set_clock(100)
        peer.deliver_frame(HEAD, stamp_s=99.5)
        assert not peer.ask_and_wait('Now?').startswith(ERROR), process.output()
        assert 'age 0.500 s (by stamp' in answer_line(process)[3]
        set_clock(110)     # simulated time moves on, no new frame
        reply = peer.ask_and_wait('And now?')
        assert reply.startswith(ERROR + 'the latest camera image is 10.5 s old (by its header '
                                        'stamp)'), reply
    finally:
        stop_all([process], [peer])
