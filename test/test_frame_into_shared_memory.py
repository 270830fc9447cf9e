"""Frames converted straight into the shared block the worker reads (a 6 MB copy less at 1080p)."""

import os

import numpy as np
from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.frames.frame_cache import Frame
from phi3v_ros.frames.frame_conversion import FrameConverter
from phi3v_ros.frames.frame_transport import FrameReceiver, FrameSender
from phi3v_ros.frames.image_conversion import image_to_rgb, SUPPORTED_ENCODINGS
from phi3v_test_utils import ImageMsg
import pytest

BYTES_PER_PIXEL = {'mono8': 1, '8UC1': 1, 'rgb8': 3, 'bgr8': 3, '8UC3': 3, 'rgba8': 4, 'bgra8': 4,
                   '8UC4': 4, 'mono16': 2, '16UC1': 2, 'rgb16': 6, 'bgr16': 6, '16UC3': 6,
                   'rgba16': 8, 'bgra16': 8, '16UC4': 8, 'yuv422': 2, 'uyvy': 2, 'yuv422_yuy2': 2,
                   'yuyv': 2}


def message(encoding, height=6, width=8, padding=2, seed=0):
    """Make a random frame of any supported encoding, with row padding."""
    rng = np.random.default_rng(seed)
    if encoding in ('nv12', 'nv21'):
        step, rows = width + padding, height * 3 // 2
    else:
        bayer8 = encoding.startswith('bayer') and encoding.endswith('8')
        per_pixel = BYTES_PER_PIXEL.get(encoding, 1 if bayer8 else 2)
        step, rows = width * per_pixel + padding, height
    data = rng.integers(0, 256, rows * step, dtype=np.uint8).tobytes()
    return ImageMsg(encoding, height, width, step, data)


@pytest.mark.parametrize('encoding', sorted(SUPPORTED_ENCODINGS))
def test_converting_into_out_gives_the_same_pixels_in_out(encoding):
    msg = message(encoding)
    expected = image_to_rgb(msg)
    out = np.full((6, 8, 3), 7, np.uint8)
    result = image_to_rgb(msg, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


def test_an_out_of_the_wrong_shape_or_type_is_refused():
    msg = message('bgr8')
    for out in (np.zeros((6, 8, 4), np.uint8), np.zeros((8, 6, 3), np.uint8),
                np.zeros((6, 8, 3), np.float32), np.zeros((6, 16, 3), np.uint8)[:, ::2]):
        with pytest.raises(ImageConversionError, match='out must be'):
            image_to_rgb(msg, out=out)


def test_a_buffer_of_the_sender_travels_without_a_copy_and_the_worker_sees_it():
    sender, receiver = FrameSender(), FrameReceiver()
    try:
        msg = message('bgr8', 48, 64)
        out = sender.buffer((48, 64, 3))
        image_to_rgb(msg, out=out)
        before = out.copy()
        ref = sender.put(out)
        np.testing.assert_array_equal(receiver.view(ref), before)
        # A plain array is copied in, as before; a larger one grows the block.
        other = np.arange(100 * 50 * 3, dtype=np.uint8).reshape(100, 50, 3) % 251
        ref = sender.put(other)
        np.testing.assert_array_equal(receiver.view(ref), other)
        # A view into the block that does not start at its start is copied, not trusted.
        inner = sender.buffer((10, 10, 3))
        inner[...] = 3
        shifted = np.ndarray((2, 2, 3), np.uint8, inner, offset=3)
        shifted[...] = 9
        ref = sender.put(shifted.copy())
        np.testing.assert_array_equal(receiver.view(ref), np.full((2, 2, 3), 9, np.uint8))
    finally:
        receiver.close()
        sender.close()


def test_closing_while_a_buffer_is_alive_does_not_raise():
    sender = FrameSender()
    alive = sender.buffer((4, 4, 3))
    sender.close()                       # shutdown in the middle of a request
    assert alive.shape == (4, 4, 3)


def test_the_frame_converter_converts_raw_frames_into_what_allocate_gives():
    given = []

    slots = []

    def allocate(shape, slot):
        given.append(np.zeros(shape, np.uint8))
        slots.append(slot)
        return given[-1]

    converter = FrameConverter(max_pixels=1000, allocate=allocate)
    msg = message('bgr8', 6, 8)
    rgb = converter(Frame(msg, 0.0, 0.0, 1))
    assert rgb is given[0] and slots == [0]
    np.testing.assert_array_equal(rgb, image_to_rgb(msg))
    # too many pixels, unsupported encodings, nonsense sizes: no allocation, the usual error
    # or result
    for bad in (message('bgr8', 40, 40), ImageMsg('32FC1', 6, 8, 32, bytes(192)),
                ImageMsg('bgr8', -6, 8, 24, b'')):
        with pytest.raises(ImageConversionError):
            converter(Frame(bad, 0.0, 0.0, 1))
    assert len(given) == 1
    converter(Frame(msg, 0.0, 0.0, 1), slot=1)    # the second image of a request: its own slot
    assert slots == [0, 1]
    # allocate may say no (a request in flight): the frame gets its own array
    converter.allocate = lambda shape, slot: None
    np.testing.assert_array_equal(converter(Frame(msg, 0.0, 0.0, 1)), image_to_rgb(msg))


def test_the_engine_client_hands_out_its_block_only_while_idle(tiny_model):
    import threading

    from phi3v_ros.engine.engine import EngineConfig
    from phi3v_ros.engine.engine_client import EngineClient
    from phi3v_ros.engine.generation import GenerationSettings, Request

    client = EngineClient(EngineConfig(model_path=tiny_model, provider='cpu'), warmup=False)
    client.start()
    try:
        assert client.wait_ready(60)
        msg = message('bgr8', 120, 160, seed=3)
        answers = []
        for out in (client.frame_buffer((120, 160, 3)), None):
            image = image_to_rgb(msg, out=out)
            done = threading.Event()
            client.submit(Request('Describe the image.', images=(image,),
                                  settings=GenerationSettings(max_new_tokens=400)),
                          on_result=lambda result: (answers.append(result), done.set()))
            if out is not None:
                assert client.frame_buffer((120, 160, 3)) is None     # its frame is in the block
            assert done.wait(60)
        assert answers[0].ok and answers[0].text == answers[1].text  # same pixels, same answer
    finally:
        client.close()


def test_each_image_of_a_request_has_its_own_block():
    sender = FrameSender()
    try:
        first = sender.buffer((4, 5, 3), slot=0)
        second = sender.buffer((6, 7, 3), slot=1)
        first[...] = 1
        second[...] = 2
        refs = [sender.put(first, slot=0), sender.put(second, slot=1)]
        assert refs[0][0] != refs[1][0] and len(sender.names) == 2
        receiver = FrameReceiver()
        views = [receiver.view(ref, slot) for slot, ref in enumerate(refs)]
        assert (views[0] == 1).all() and views[0].shape == (4, 5, 3)
        assert (views[1] == 2).all() and views[1].shape == (6, 7, 3)
        del views
        receiver.close()
    finally:
        names = sender.names
        sender.close()
    assert not any(os.path.exists(f'/dev/shm/{name}') for name in names)


def test_two_images_through_shared_memory_answer_as_in_process(tiny_model):
    og = pytest.importorskip('onnxruntime_genai')
    from phi3v_ros.engine.genai_releases import version_tuple
    if version_tuple(og.__version__) < (0, 5):
        pytest.skip('several images in a prompt came in onnxruntime-genai 0.5')
    import threading

    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.engine_client import EngineClient
    from phi3v_ros.engine.generation import GenerationSettings, Request

    config = EngineConfig(model_path=tiny_model, provider='cpu')
    settings = GenerationSettings(max_new_tokens=12)
    pictures = [image_to_rgb(message('bgr8', 120, 160, seed=4)),
                image_to_rgb(message('bgr8', 90, 200, seed=5))]
    expected = Engine(config).generate(Request('Which is which?', images=tuple(pictures),
                                               cameras=('/head', '/wrist'), settings=settings))
    client = EngineClient(config, warmup=False)
    client.start()
    try:
        assert client.wait_ready(60)
        images = []
        for slot, picture in enumerate(pictures):
            block = client.frame_buffer(picture.shape, slot)
            block[...] = picture
            images.append(block)
        done = threading.Event()
        answers = []
        client.submit(Request('Which is which?', images=tuple(images),
                              cameras=('/head', '/wrist'), settings=settings),
                      on_result=lambda result: (answers.append(result), done.set()))
        assert done.wait(60)
        assert client.frame_transport == 'shared memory'
    finally:
        client.close()
    assert expected.ok and answers[0].ok, (expected.error, answers[0].error)
    assert answers[0].text == expected.text
    assert answers[0].image_tokens == expected.image_tokens > 0


def test_a_header_that_lies_about_its_size_never_sizes_the_shared_block():
    """A 1-byte Image claiming 6000x6000 used to grow the block to 109 MB before being refused."""
    asked = []

    def allocate(shape, slot):
        asked.append(shape)
        return np.zeros(shape, np.uint8)
    converter = FrameConverter(max_pixels=40_000_000, allocate=allocate)
    liar = ImageMsg('rgb8', 6000, 6000, 18000, b'\x00')
    with pytest.raises(ImageConversionError, match='image data is 1 bytes but'):
        converter(Frame(liar, 0.0, 0.0, 1))
    assert asked == []


def test_an_empty_encoding_is_refused_before_the_cv_bridge_fallback():
    def fallback(msg):
        raise AssertionError('an empty encoding must not reach cv_bridge')
    converter = FrameConverter(max_pixels=1000, fallback=fallback)
    for encoding in ('', None):
        with pytest.raises(ImageConversionError, match='image encoding'):
            converter(Frame(ImageMsg(encoding, 2, 2, 6, b'\x00' * 12), 0.0, 0.0, 1))


FULL_SHM_PROBE = r"""
mount -t tmpfs -o size=16m tmpfs /dev/shm || exit 90
exec "$PYTHON" -c '
import numpy as np
from phi3v_ros.frames.frame_transport import FrameSender, SharedMemoryUnavailable
sender = FrameSender()
sender.put(np.zeros((480, 640, 3), np.uint8))          # 0.9 MB: fits
try:
    sender.put(np.full((2160, 3840, 3), 7, np.uint8))   # 24.9 MB: does not
except SharedMemoryUnavailable as exc:
    print("refused:", exc)
sender.close()
'
"""


def test_a_full_dev_shm_is_an_error_not_sigbus():
    """The block is reserved when created; sparse, its first page past the room killed us."""
    import os
    import shutil
    import subprocess
    import sys
    if shutil.which('unshare') is None:
        pytest.skip('needs unshare')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                          FULL_SHM_PROBE],
                         env=dict(os.environ, PYTHON=sys.executable, PYTHONPATH=root),
                         capture_output=True, text=True, timeout=60)
    if run.returncode == 90 or 'Operation not permitted' in run.stderr:
        pytest.skip('needs root to mount a small /dev/shm')
    assert run.returncode == 0, (run.returncode, run.stderr)   # -7 would be SIGBUS
    assert run.stdout.startswith('refused: /dev/shm has no room for a 24.7 MiB frame block'), (
        run.stdout)


def test_cv_bridge_is_an_optional_fallback_whatever_its_import_does(monkeypatch):
    import sys
    import types
    from phi3v_ros.node.cv_bridge_fallback import load_cv_bridge_converter

    class Bridge:
        def imgmsg_to_cv2(self, message, desired_encoding):
            return np.zeros((2, 2, 3), np.uint8)
    monkeypatch.setitem(sys.modules, 'cv_bridge', types.SimpleNamespace(CvBridge=Bridge))
    convert, why_not = load_cv_bridge_converter()
    assert why_not == '' and convert(ImageMsg('32FC1', 2, 2, 8, b'')).shape == (2, 2, 3)

    class Numpy2Bridge:      # Humble's cv_bridge, built for numpy 1, beside numpy 2
        def __init__(self):
            raise AttributeError('_ARRAY_API not found')
    monkeypatch.setitem(sys.modules, 'cv_bridge', types.SimpleNamespace(CvBridge=Numpy2Bridge))
    convert, why_not = load_cv_bridge_converter()
    assert convert is None
    assert why_not.startswith('cv_bridge cannot be used (AttributeError: _ARRAY_API not found)')
    monkeypatch.setitem(sys.modules, 'cv_bridge', None)      # not installed: ImportError
    assert load_cv_bridge_converter() == (None, '')


def test_cv_bridge_whose_extension_fails_to_import_is_named(monkeypatch, tmp_path):
    # installed but broken: an ImportError from inside (numpy 1 build beside numpy 2), or a
    # module it needs is missing; only a missing cv_bridge itself is silent
    import sys
    from phi3v_ros.node.cv_bridge_fallback import load_cv_bridge_converter
    package = tmp_path / 'cv_bridge'
    package.mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    for body, expected in (
            ("raise ImportError('numpy.core.multiarray failed to import')",
             'cv_bridge cannot be used (ImportError: numpy.core.multiarray failed to import)'),
            ('import cv_bridge_boost_missing_part',
             'cv_bridge cannot be used (ModuleNotFoundError: No module named '
             "'cv_bridge_boost_missing_part')")):
        (package / '__init__.py').write_text(body + '\n')
        monkeypatch.delitem(sys.modules, 'cv_bridge', raising=False)
        convert, why_not = load_cv_bridge_converter()
        assert convert is None and why_not.startswith(expected), why_not
        assert 'requirements/ros.txt' in why_not
