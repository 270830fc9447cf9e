import threading
import time

from phi3v_ros.frame_cache import FrameCache


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


def test_wait_for_fresh_returns_a_fresh_frame_at_once():
    cache = FrameCache()
    cache.store('frame', 0.0)
    assert cache.wait_for_fresh(max_age_s=10.0, timeout_s=0.0).message == 'frame'
    assert cache.wait_for_fresh(max_age_s=0.0, timeout_s=0.0).message == 'frame'   # 0 = any age


def test_wait_for_fresh_gives_none_when_only_a_stale_frame_exists():
    cache = FrameCache()
    cache.store('old', 0.0)
    time.sleep(0.05)
    assert cache.wait_for_fresh(max_age_s=0.01, timeout_s=0.05) is None
    assert FrameCache().wait_for_fresh(max_age_s=0.0, timeout_s=0.01) is None


def test_wait_for_fresh_wakes_when_a_new_frame_arrives():
    cache = FrameCache()
    stored = threading.Event()

    def publish_later():
        stored.wait()
        cache.store('new', 0.0)

    thread = threading.Thread(target=publish_later)
    thread.start()
    stored.set()
    frame = cache.wait_for_fresh(max_age_s=1.0, timeout_s=10.0)
    thread.join()
    assert frame is not None and frame.message == 'new'
