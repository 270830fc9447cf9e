"""Cameras: every camera's latest frame bound to a prompt, and the errors that name cameras."""
import threading
import time

from phi3v_ros.frames.cameras import Cameras, CamerasNotReady, describe_frames
from phi3v_ros.frames.frame_cache import FrameAge
from phi3v_test_utils import SettableClock
import pytest


def test_binds_the_latest_frame_of_every_camera_in_order():
    cameras = Cameras(['/head', '/wrist'], FrameAge('arrival'))
    cameras.store('/wrist', 'wrist 1', 1.0)
    cameras.store('/head', 'head 1', 2.0)
    cameras.store('/head', 'head 2', 3.0)
    bound = cameras.bind(max_age_s=0.0, timeout_s=0.0)
    assert [(b.camera, b.frame.message) for b in bound] == [('/head', 'head 2'),
                                                            ('/wrist', 'wrist 1')]
    assert cameras.received == 3 and cameras.labelled


def test_a_camera_that_sent_nothing_is_named_after_the_wait():
    cameras = Cameras(['/head', '/wrist'], FrameAge('arrival'))
    cameras.store('/head', 'head', 1.0)
    start = time.monotonic()
    with pytest.raises(CamerasNotReady) as error:
        cameras.bind(max_age_s=0.0, timeout_s=0.3)
    assert time.monotonic() - start >= 0.3
    assert str(error.value) == ('not every camera had an image within 0.3 s '
                                '(image_wait_timeout): /wrist has sent no image.')


def test_stale_cameras_are_named_with_their_age_by_stamp():
    clock = SettableClock(1000.0)
    cameras = Cameras(['/head', '/wrist', '/rear'], FrameAge('stamp', clock))
    cameras.store('/head', 'head', 999.5)      # fresh
    cameras.store('/wrist', 'wrist', 970.0)    # taken 30 s ago, delivered now
    with pytest.raises(CamerasNotReady) as error:
        cameras.bind(max_age_s=2.0, timeout_s=0.2)
    assert str(error.value) == (
        'not every camera had an image at most 2 s old (max_image_age) within 0.2 s '
        '(image_wait_timeout): /wrist: the latest image is 30.0 s old (by its header stamp); '
        '/rear has sent no image.')


def store_once_waited_on(cameras, camera, message, stamp_s):
    """Start a thread that stores a frame only once a wait on that camera is blocked in it."""
    cache = cameras.cache(camera)

    def store():
        # CPython's Condition lists its waiters: store only once bind() is blocked in it
        deadline = time.monotonic() + 30
        while not cache._changed._waiters and time.monotonic() < deadline:
            time.sleep(0.001)
        cameras.store(camera, message, stamp_s)

    thread = threading.Thread(target=store)
    thread.start()
    return thread


@pytest.mark.parametrize('bind', ['bind', 'bind_available'])
def test_the_wait_ends_as_soon_as_every_camera_is_fresh(bind):
    clock = SettableClock(1000.0)
    cameras = Cameras(['/head', '/wrist'], FrameAge('stamp', clock))
    cameras.store('/head', 'head', 1000.0)
    cameras.store('/wrist', 'old wrist', 900.0)
    thread = store_once_waited_on(cameras, '/wrist', 'new wrist', 1000.0)
    start = time.monotonic()
    bound = getattr(cameras, bind)(max_age_s=1.0, timeout_s=60.0)
    waited = time.monotonic() - start
    thread.join()
    frames = bound[0] if bind == 'bind_available' else bound
    assert [b.frame.message for b in frames] == ['head', 'new wrist']
    assert [b.age_source for b in frames] == ['stamp', 'stamp']
    assert waited < 30, 'woken by the new frame, not by the end of the timeout'


def test_bind_available_takes_the_fresh_cameras_and_names_the_stale_one():
    clock = SettableClock(1000.0)
    cameras = Cameras(['/head', '/wrist', '/rear'], FrameAge('stamp', clock))
    cameras.store('/head', 'head', 999.9)      # fresh
    cameras.store('/wrist', 'wrist', 970.0)    # 30 s old
    cameras.store('/rear', 'rear', 999.5)      # fresh
    frames, missing, why = cameras.bind_available(max_age_s=1.0, timeout_s=0.1)
    assert [(b.camera, b.frame.message) for b in frames] == [('/head', 'head'), ('/rear', 'rear')]
    assert missing == ('/wrist',)
    assert why == ('not every camera had an image at most 1 s old (max_image_age) within 0.1 s '
                   '(image_wait_timeout): /wrist: the latest image is 30.0 s old (by its header '
                   'stamp).')
    frames, missing, why = Cameras(['/a'], FrameAge('arrival')).bind_available(0.0, 0.0)
    assert frames == () and missing == ('/a',) and 'has sent no image' in why
    cameras.store('/wrist', 'wrist', 1000.0)
    assert cameras.bind_available(max_age_s=1.0, timeout_s=0.0)[1:] == ((), '')


def test_simulated_time_ages_a_frame_without_a_new_one():
    clock = SettableClock(50.0)
    cameras = Cameras(['/cam'], FrameAge('stamp', clock))
    cameras.store('/cam', 'frame', 49.0)
    assert cameras.bind(max_age_s=2.0, timeout_s=0.0)[0].age_s == 1.0
    clock.now = 60.0     # /clock moved on, the camera did not
    with pytest.raises(CamerasNotReady, match='11.0 s old'):
        cameras.bind(max_age_s=2.0, timeout_s=0.0)


def test_one_unlabelled_camera_keeps_the_sentences_of_a_single_camera():
    cameras = Cameras(['/image'], FrameAge('arrival'), labelled=False)
    assert not cameras.labelled
    with pytest.raises(CamerasNotReady, match=r'^no camera image has arrived \(waited 0.1 s\)\.$'):
        cameras.bind(max_age_s=0.0, timeout_s=0.1)


def test_cancel_stops_the_wait():
    cameras = Cameras(['/cam'], FrameAge('arrival'))

    class Stop(Exception):
        pass

    def check():
        raise Stop()
    start = time.monotonic()
    with pytest.raises(Stop):
        cameras.bind(max_age_s=0.0, timeout_s=30.0, check=check)
    assert time.monotonic() - start < 5.0


def test_rates_count_each_cameras_frames_between_calls():
    cameras = Cameras(['/a', '/b'], FrameAge('arrival'))
    assert cameras.rates(now=100.0) == {'/a': 0.0, '/b': 0.0}
    for _ in range(6):
        cameras.store('/a', 'frame', 0.0)
    cameras.store('/b', 'frame', 0.0)
    assert cameras.rates(now=102.0) == {'/a': 3.0, '/b': 0.5}


def test_describe_frames_names_camera_stamp_frame_id_and_age():
    class Header:
        frame_id = 'head_optical'

    class Message:
        header = Header()

    cameras = Cameras(['/head'], FrameAge('stamp', SettableClock(12.0)))
    cameras.store('/head', Message(), 11.75)
    line = describe_frames(cameras.bind(0.0, 0.0))
    assert line == '/head stamp 11.750 frame_id head_optical age 0.250 s (by stamp, #1)'
    assert describe_frames(()) == 'no frame'


@pytest.mark.parametrize('names', [[], ['/a', '/a']])
def test_cameras_must_be_distinct_topics(names):
    with pytest.raises(ValueError):
        Cameras(names)
