"""
Property tests of the converters.

For any message, they return a well-formed RGB array or raise ImageConversionError - never any
other exception, never a wrongly shaped array.
"""
from __future__ import annotations

import array
import struct
import zlib

import cv2
from hypothesis import event, given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.frames import image_conversion as ic
from phi3v_ros.frames.image_conversion import compressed_to_rgb, image_to_rgb, SUPPORTED_ENCODINGS
from phi3v_test_utils import CompressedMsg, ImageMsg

SETTINGS = {'deadline': None, 'derandomize': False,
            'suppress_health_check': [HealthCheck.too_slow, HealthCheck.data_too_large]}


WRAPPERS = [bytes, bytearray, lambda b: array.array('B', b), lambda b: memoryview(bytes(b))]
ENCODINGS = sorted(SUPPORTED_ENCODINGS)
JUNK_ENCODINGS = ['', '32FC1', '32FC3', '64FC1', 'RGB8', 'Mono8', 'foo', '8UC2', '16SC1',
                  '8SC3', 'nv24', 'jpeg', ' rgb8', 'rgb8\x00', 'bayer_rggb32']
NV = ('nv12', 'nv21')
EVEN_WIDTH = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv') + NV


def random_bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def should_convert(msg: ImageMsg, max_pixels: int) -> bool:
    """Tell, as the spec states it, whether a raw frame is well-formed."""
    enc, h, w, step = msg.encoding, msg.height, msg.width, msg.step
    if not (isinstance(enc, str) and enc in SUPPORTED_ENCODINGS):
        return False
    if h <= 0 or w <= 0 or h * w > max_pixels:
        return False
    if enc in EVEN_WIDTH and w % 2:
        return False
    if enc in NV and h % 2:
        return False
    if step < w * ic._SPECS[enc].bytes_per_pixel:
        return False
    rows = h * 3 // 2 if enc in NV else h
    return len(memoryview(msg.data).cast('B')) == rows * step


# strategies are built once: building them inside the composite costs more than the tests
# Each field first draws a "kind", weighted by repetition, so that about a third of the frames
# are well-formed and reach the conversion code.
_ENCODING_KIND = st.sampled_from(['supported'] * 8 + ['junk', 'text'])
_SUPPORTED = st.sampled_from(ENCODINGS)
_JUNK = st.sampled_from(JUNK_ENCODINGS)
_TEXT = st.text(max_size=8)
_DIM_KIND = st.sampled_from(['small'] * 8 + ['tiny', 'odd'])
_SMALL_DIM = st.integers(1, 24)
_TINY_DIM = st.integers(0, 3)
_ODD_DIM = st.sampled_from([-1, 0, 65_535, 100_000, 2 ** 31, 2 ** 63])
_BPP = st.integers(1, 8)
_STEP_MODE = st.sampled_from(['exact'] * 3 + ['padded'] * 3 + ['short', 'random'])
_PAD = st.integers(1, 9)
_SHORT = st.integers(1, 3)
_RANDOM_STEP = st.integers(-4, 200)
_LENGTH_MODE = st.sampled_from(['exact'] * 6 + ['off', 'random'])
_OFF = st.sampled_from([-3, -2, -1, 1, 2, 3])
_RANDOM_LENGTH = st.integers(0, 300)
_WRAPPER = st.sampled_from(WRAPPERS)
_SEED = st.integers(0, 2 ** 32)
_BIG = st.sampled_from([0, 1, True, False, 2])


def _draw_dim(draw) -> int:
    kind = draw(_DIM_KIND)
    return draw(_SMALL_DIM if kind == 'small' else _TINY_DIM if kind == 'tiny' else _ODD_DIM)


@st.composite
def image_msgs(draw):
    kind = draw(_ENCODING_KIND)
    encoding = draw(_SUPPORTED if kind == 'supported' else _JUNK if kind == 'junk' else _TEXT)
    height, width = _draw_dim(draw), _draw_dim(draw)
    spec = ic._SPECS.get(encoding)
    bpp = spec.bytes_per_pixel if spec is not None else draw(_BPP)
    step_mode = draw(_STEP_MODE)
    if step_mode == 'exact':
        step = width * bpp
    elif step_mode == 'padded':
        step = width * bpp + draw(_PAD)
    elif step_mode == 'short':
        step = width * bpp - draw(_SHORT)
    else:
        step = draw(_RANDOM_STEP)
    rows = height * 3 // 2 if encoding in NV else height
    expected = rows * step
    length_mode = draw(_LENGTH_MODE)
    if length_mode == 'exact' and 0 <= expected <= 40_000:
        n = expected
    elif length_mode == 'off' and 0 <= expected <= 40_000:
        n = max(0, expected + draw(_OFF))
    else:
        n = draw(_RANDOM_LENGTH)
    data = draw(_WRAPPER)(random_bytes(draw(_SEED), n))
    return ImageMsg(encoding, height, width, step, data, draw(_BIG))


@settings(max_examples=2500, **SETTINGS)
@given(msg=image_msgs(), max_pixels=st.sampled_from([40_000_000, 40_000_000, 1, 64, 10 ** 12]))
def test_image_to_rgb_returns_rgb_or_raises_image_conversion_error(msg, max_pixels):
    valid = should_convert(msg, max_pixels)
    event('well-formed' if valid else 'malformed')
    try:
        out = image_to_rgb(msg, max_pixels=max_pixels)
    except ImageConversionError as exc:
        assert not valid, 'a well-formed frame was refused: %s' % exc
        assert str(exc) and '\n' not in str(exc)
        return
    assert valid, 'a malformed frame was converted'
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (msg.height, msg.width, 3)
    assert out.flags.c_contiguous


@settings(max_examples=500, **SETTINGS)
@given(encoding=st.sampled_from(ENCODINGS), height=st.integers(-3, 12),
       width=st.integers(-3, 12), step=st.integers(-3, 120), n=st.integers(0, 2000),
       seed=st.integers(0, 2 ** 32), big=st.booleans())
def test_image_to_rgb_fully_random_fields(encoding, height, width, step, n, seed, big):
    msg = ImageMsg(encoding, height, width, step, random_bytes(seed, n), big)
    try:
        out = image_to_rgb(msg)
    except ImageConversionError:
        assert not should_convert(msg, 40_000_000)
        return
    assert out.shape == (height, width, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


# --------------------------------------------------------------------------------------------
# compressed
# --------------------------------------------------------------------------------------------

def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 else rgb


def _make_blobs():
    rng = np.random.default_rng(5)
    blobs = []   # (bytes, height, width)
    for h, w in [(1, 1), (3, 5), (16, 16), (13, 17), (40, 31)]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
        deep = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
        for img, ext, params in [
                (_bgr(rgb), '.png', []), (rgba, '.png', []), (gray, '.png', []),
                (deep, '.png', []), (deep[..., 0].copy(), '.png', []),
                (_bgr(rgb), '.jpg', []), (gray, '.jpg', []),
                (_bgr(rgb), '.jpg', [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])]:
            ok, buf = cv2.imencode(ext, img, params)
            assert ok
            blobs.append((buf.tobytes(), h, w))
    return blobs


BLOBS = _make_blobs()
# GIF encoding came in OpenCV 4.12; the Python 3.10 leg runs 4.11 (numpy 1 builds)
OTHER_FORMATS = [cv2.imencode(ext, np.zeros((4, 4, 3), np.uint8))[1].tobytes()
                 for ext in ('.bmp', '.gif', '.webp', '.tiff', '.ppm')
                 if cv2.haveImageWriter(ext)]


def _png_bomb(w: int, h: int) -> bytes:
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack('>I', 13) + b'IHDR' + ihdr + struct.pack(
        '>I', zlib.crc32(b'IHDR' + ihdr) & 0xFFFFFFFF)
    return b'\x89PNG\r\n\x1a\n' + chunk


def _jpeg_bomb(w: int, h: int) -> bytes:
    return (b'\xff\xd8\xff\xc0' + struct.pack('>HBHHB', 17, 8, h, w, 3)
            + b'\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03'
            + b'\x11\x00\x3f\x00' + bytes(16))


FORMATS = ['jpeg', 'png', 'rgb8; jpeg compressed bgr8', 'bgr8; png compressed bgr8', 'bmp',
           '', '16UC1; compressedDepth png', 'webp']


_FORMAT = st.one_of(st.sampled_from(FORMATS), st.text(max_size=20), st.none(), st.integers())
_MODE = st.sampled_from(['valid'] * 3 + ['truncated'] * 2 + ['corrupted'] * 3
                        + ['random', 'magic', 'other', 'bomb'])
_BLOB = st.sampled_from(BLOBS)
_FRACTION = st.floats(0.0, 1.0)
_N_CORRUPT = st.integers(1, 8)
_BYTE = st.integers(0, 255)
_MAGIC = st.sampled_from([b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff', b'\xff\xd8',
                          b'\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR'])
_TAIL = st.binary(max_size=200)
_OTHER = st.sampled_from(OTHER_FORMATS)
_BOMB_DIM = st.sampled_from([0, 1, 4000, 65535, 100_000, 2 ** 31, 2 ** 32 - 1])
_RANDOM_SIZE = st.integers(0, 600)


@st.composite
def compressed_msgs(draw):
    fmt = draw(_FORMAT)
    mode = draw(_MODE)
    shape = None
    if mode in ('valid', 'truncated', 'corrupted'):
        blob, h, w = draw(_BLOB)
        if mode == 'valid':
            data, shape = blob, (h, w)
        elif mode == 'truncated':
            data = blob[:int(len(blob) * draw(_FRACTION))]
        else:
            buf = bytearray(blob)
            for _ in range(draw(_N_CORRUPT)):
                buf[int((len(buf) - 1) * draw(_FRACTION))] = draw(_BYTE)
            data = bytes(buf)
    elif mode == 'random':
        data = random_bytes(draw(_SEED), draw(_RANDOM_SIZE))
    elif mode == 'magic':
        data = draw(_MAGIC) + draw(_TAIL)
    elif mode == 'other':
        data = draw(_OTHER)
    else:
        w, h = draw(_BOMB_DIM), draw(_BOMB_DIM)
        data = (_png_bomb(w, h) if draw(st.booleans())
                else _jpeg_bomb(min(w, 65535), min(h, 65535)))
    data = draw(_WRAPPER)(data)
    return CompressedMsg(fmt, data), shape


@settings(max_examples=2500, **SETTINGS)
@given(case=compressed_msgs(),
       max_pixels=st.sampled_from([1, 100, 4096, 1_000_000, 1_000_000, 1_000_000]))
def test_compressed_to_rgb_returns_rgb_or_raises_image_conversion_error(case, max_pixels):
    msg, shape = case
    try:
        out = compressed_to_rgb(msg, max_pixels=max_pixels)
    except ImageConversionError as exc:
        event('refused')
        assert str(exc) and '\n' not in str(exc)
        if shape is not None:    # an intact image may only be refused for its size
            assert shape[0] * shape[1] > max_pixels, str(exc)
        return
    event('decoded')
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous
    assert out.shape[0] >= 1 and out.shape[1] >= 1
    assert out.shape[0] * out.shape[1] <= max_pixels
    if shape is not None:
        assert out.shape[:2] == shape
