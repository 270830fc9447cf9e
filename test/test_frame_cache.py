import threading
import time

from phi3v_ros.frames.frame_cache import FrameAge, FrameCache
from phi3v_test_utils import SettableClock
import pytest


def test_keeps_only_the_latest_message_untouched():
    cache = FrameCache()
    assert cache.latest() is None and cache.received == 0
    first, second = object(), object()
    cache.store(first, 1.0)
    cache.store(second, 2.0)
    latest = cache.latest()
    assert latest.message is second and latest.stamp_s == 2.0 and latest.sequence == 2
    assert cache.received == 2


def test_store_is_constant_time_whatever_the_frame_size():
    cache = FrameCache()
    big = bytearray(1920 * 1080 * 3)
    start = time.perf_counter()
    for _ in range(1000):
        cache.store(big, 0.0)
    # 1000 stores of a 6 MB frame: any copy would take seconds; references take microseconds.
    assert time.perf_counter() - start < 0.5
    assert cache.latest().message is big


def test_wait_newer_returns_a_newer_frame_at_once_and_none_without_one():
    cache = FrameCache()
    assert cache.wait_newer(0, timeout_s=0.01) is None
    cache.store('frame', 0.0)
    assert cache.wait_newer(0, timeout_s=0.0).message == 'frame'
    assert cache.wait_newer(1, timeout_s=0.05) is None     # frame 1 is the latest


def test_wait_newer_wakes_when_a_new_frame_arrives():
    cache = FrameCache()
    cache.store('old', 0.0)

    def publish_once_waited_on():
        # CPython's Condition lists its waiters: store only once wait_newer is blocked in it
        deadline = time.monotonic() + 30
        while not cache._changed._waiters and time.monotonic() < deadline:
            time.sleep(0.001)
        cache.store('new', 0.0)

    thread = threading.Thread(target=publish_once_waited_on)
    thread.start()
    start = time.monotonic()
    frame = cache.wait_newer(1, timeout_s=60.0)
    thread.join()
    assert frame is not None and frame.message == 'new' and frame.sequence == 2
    assert time.monotonic() - start < 30   # woken by the store, not by the timeout


def test_the_age_is_the_clock_less_the_stamp_and_follows_the_clock():
    clock = SettableClock(1000.0)
    age = FrameAge('stamp', clock)
    cache = FrameCache()
    cache.store('frame', 970.0)    # taken 30 s ago, delivered now
    assert age.measure('/cam', cache.latest()) == (30.0, 'stamp')
    clock.now = 1002.5             # a simulated clock that moved on
    assert age.measure('/cam', cache.latest()) == (32.5, 'stamp')


def test_arrival_ages_ignore_the_stamp():
    cache = FrameCache()
    cache.store('frame', 1.0)
    found, source = FrameAge('arrival', SettableClock(1e9)).measure('/cam', cache.latest())
    assert source == 'arrival' and 0.0 <= found < 5.0


def test_a_zero_stamp_is_aged_by_arrival():
    cache = FrameCache()
    cache.store('frame', 0.0)
    found, source = FrameAge('stamp', SettableClock(1e9)).measure('/cam', cache.latest())
    assert source == 'arrival' and found < 5.0


def test_a_stamp_ahead_of_the_clock_is_aged_by_arrival_and_said_once_per_camera():
    said = []
    age = FrameAge('stamp', SettableClock(100.0), log=said.append)
    cache = FrameCache()
    cache.store('frame', 100.4)    # within the tolerance: now
    assert age.measure('/a', cache.latest()) == (0.0, 'stamp')
    cache.store('frame', 105.0)    # 5 s ahead
    for _ in range(3):
        assert age.measure('/a', cache.latest())[1] == 'arrival'
    age.measure('/b', cache.latest())
    assert len(said) == 2 and '/a' in said[0] and '5.000 s ahead' in said[0] and '/b' in said[1]


def test_before_the_first_clock_message_frames_are_aged_by_arrival_without_a_warning():
    said = []
    cache = FrameCache()
    cache.store('frame', 1796185956.0)      # a real camera's stamp, under use_sim_time
    found, source = FrameAge('stamp', SettableClock(0.0), log=said.append).measure(
        '/cam', cache.latest())
    assert source == 'arrival' and found < 5.0 and said == []


def test_a_frame_id_is_shown_printable_and_short():
    class Header:
        frame_id = 'camera\x1b[2J\nforged log line' + 'x' * 500

    class Message:
        header = Header()

    cache = FrameCache()
    cache.store(Message(), 0.0)
    shown = cache.latest().frame_id
    assert len(shown) <= 128 and shown.isprintable() and '\\x1b' in shown
    Header.frame_id = 'head_optical'
    cache.store(Message(), 0.0)
    assert cache.latest().frame_id == 'head_optical'


def test_an_unknown_age_source_is_refused():
    with pytest.raises(ValueError, match='stamp, arrival'):
        FrameAge('header')
