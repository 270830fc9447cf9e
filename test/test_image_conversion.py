"""Tests of phi3v_ros.frames.image_conversion against independent numpy reference conversions."""
from __future__ import annotations

import array
import os
import struct
import subprocess
import sys
from typing import Any, Callable, Optional
import zlib

import cv2
import numpy as np
from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.frames import image_conversion as ic
from phi3v_ros.frames.image_conversion import (compressed_to_rgb, image_to_rgb, is_supported,
                                               SUPPORTED_ENCODINGS)
from phi3v_test_utils import CompressedMsg, ImageMsg, ONE_PIXEL_GIF
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# message stand-ins and helpers
# --------------------------------------------------------------------------------------------

DATA_TYPES: dict = {
    'bytes': bytes,
    'bytearray': bytearray,
    'array': lambda b: array.array('B', b),
    'memoryview': lambda b: memoryview(bytes(b)),
}


def rng_for(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_msg(encoding: str, rows: np.ndarray, height: int, width: int, pad: int = 0,
             big: int = 0, data_type: Callable[[bytes], Any] = bytes,
             seed: int = 99) -> ImageMsg:
    """Pack ``rows`` (one row of bytes per buffer row) with ``pad`` junk bytes after each row."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    rows = rows.reshape(rows.shape[0], -1)
    if pad:
        junk = rng_for(seed).integers(0, 256, (rows.shape[0], pad), dtype=np.uint8)
        rows = np.concatenate([rows, junk], axis=1)
    return ImageMsg(encoding, height, width, rows.shape[1], data_type(rows.tobytes()), big)


def assert_rgb(out: np.ndarray, height: int, width: int) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (height, width, 3)
    assert out.flags.c_contiguous
    assert out.flags.writeable


def rand_u8(shape, seed: int = 0) -> np.ndarray:
    return rng_for(seed).integers(0, 256, shape, dtype=np.uint8)


def rand_u16(shape, seed: int = 0) -> np.ndarray:
    return rng_for(seed).integers(0, 65536, shape, dtype=np.uint16)


# reference YUV -> RGB: BT.601 limited range; like OpenCV (and so cv_bridge), luma below 16 is
# treated as black instead of going negative
def yuv_to_rgb_ref(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    y = np.maximum(y.astype(np.float64) - 16.0, 0.0) * 1.164
    u = u.astype(np.float64) - 128.0
    v = v.astype(np.float64) - 128.0
    rgb = np.stack([y + 1.596 * v, y - 0.813 * v - 0.391 * u, y + 2.018 * u], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def rgb_to_yuv_ref(rgb: np.ndarray):
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, u, v))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

REQUIRED = {
    'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', '8UC1', '8UC3', '8UC4', 'mono16', '16UC1',
    'rgb16', 'bgr16', 'rgba16', 'bgra16', '16UC3', '16UC4', 'yuv422', 'uyvy', 'yuv422_yuy2',
    'yuyv', 'nv12', 'nv21', 'bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8',
}


def test_supported_encodings():
    assert isinstance(SUPPORTED_ENCODINGS, frozenset)
    assert REQUIRED <= SUPPORTED_ENCODINGS
    for enc in SUPPORTED_ENCODINGS:
        assert is_supported(enc)
    for enc in ['32FC1', '32FC3', '64FC1', '16SC1', '8UC2', 'foo', '', 'RGB8', None, 3, b'rgb8']:
        assert not is_supported(enc)


def test_module_is_ros_free():
    code = ('import sys, phi3v_ros.frames.image_conversion; '
            'bad = [m for m in sys.modules if m.split(".")[0] in '
            '("rclpy", "sensor_msgs", "cv_bridge", "rosidl_runtime_py")]; '
            'assert not bad, bad')
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO_ROOT, env=env)


# --------------------------------------------------------------------------------------------
# 8-bit packed encodings
# --------------------------------------------------------------------------------------------

EIGHT_BIT = {
    # encoding: (channels, RGB image -> buffer pixels)
    'rgb8': (3, lambda rgb: rgb),
    'bgr8': (3, lambda rgb: rgb[..., ::-1]),
    '8UC3': (3, lambda rgb: rgb[..., ::-1]),
}


@pytest.mark.parametrize('data_type', list(DATA_TYPES))
@pytest.mark.parametrize('pad', [0, 1, 13])
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', '8UC3'])
def test_three_channel_8bit(encoding, pad, data_type):
    h, w = 7, 11
    rgb = rand_u8((h, w, 3), seed=1)
    _, to_buffer = EIGHT_BIT[encoding]
    msg = make_msg(encoding, to_buffer(rgb), h, w, pad, data_type=DATA_TYPES[data_type])
    out = image_to_rgb(msg)
    assert_rgb(out, h, w)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('pad', [0, 3])
@pytest.mark.parametrize('encoding', ['rgba8', 'bgra8', '8UC4'])
def test_four_channel_8bit(encoding, pad):
    h, w = 5, 9
    rgb = rand_u8((h, w, 3), seed=2)
    alpha = rand_u8((h, w, 1), seed=3)
    px = np.concatenate([rgb if encoding == 'rgba8' else rgb[..., ::-1], alpha], axis=-1)
    out = image_to_rgb(make_msg(encoding, px, h, w, pad))
    assert_rgb(out, h, w)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('pad', [0, 5])
@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_mono8(encoding, pad):
    h, w = 6, 10
    gray = rand_u8((h, w), seed=4)
    out = image_to_rgb(make_msg(encoding, gray, h, w, pad))
    assert_rgb(out, h, w)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))


def test_result_never_aliases_message_data():
    h, w = 4, 4
    for encoding, px in [('rgb8', rand_u8((h, w, 3))), ('mono8', rand_u8((h, w))),
                         ('rgb16', rand_u8((h, w * 6)))]:
        buf = bytearray(px.tobytes())
        msg = ImageMsg(encoding, h, w, len(buf) // h, buf)
        out = image_to_rgb(msg)
        assert not np.shares_memory(out, np.frombuffer(buf, dtype=np.uint8))
        before = out.copy()
        buf[:] = bytes(len(buf))          # the message buffer may be reused afterwards
        np.testing.assert_array_equal(out, before)


def test_one_pixel_frames():
    for encoding in sorted(SUPPORTED_ENCODINGS):
        w = 2 if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12', 'nv21') else 1
        h = 2 if encoding in ('nv12', 'nv21') else 1
        bpp = ic._SPECS[encoding].bytes_per_pixel
        rows = h * 3 // 2 if encoding in ('nv12', 'nv21') else h
        msg = ImageMsg(encoding, h, w, w * bpp, bytes(range(rows * w * bpp)))
        assert_rgb(image_to_rgb(msg), h, w)


# --------------------------------------------------------------------------------------------
# 16-bit encodings
# --------------------------------------------------------------------------------------------

SIXTEEN_COLOUR = {
    # encoding: (channels, channel order of the first three buffer channels as RGB indices)
    'rgb16': (3, [0, 1, 2]),
    'bgr16': (3, [2, 1, 0]),
    '16UC3': (3, [2, 1, 0]),
    'rgba16': (4, [0, 1, 2]),
    'bgra16': (4, [2, 1, 0]),
    '16UC4': (4, [2, 1, 0]),
}


@pytest.mark.parametrize('big', [0, 1])
@pytest.mark.parametrize('pad', [0, 2, 3])
@pytest.mark.parametrize('encoding', sorted(SIXTEEN_COLOUR))
def test_sixteen_bit_colour_takes_high_byte(encoding, pad, big):
    h, w = 5, 7
    channels, order = SIXTEEN_COLOUR[encoding]
    rgb16 = rand_u16((h, w, 3), seed=5)
    px = rgb16[..., order]
    if channels == 4:
        px = np.concatenate([px, rand_u16((h, w, 1), seed=6)], axis=-1)
    raw = px.astype('>u2' if big else '<u2', order='C').view(np.uint8).reshape(h, -1)
    out = image_to_rgb(make_msg(encoding, raw, h, w, pad, big=big))
    assert_rgb(out, h, w)
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))


def test_sixteen_bit_byte_order_is_honoured():
    h, w = 3, 4
    rgb16 = rand_u16((h, w, 3), seed=7)
    raw = rgb16.astype('>u2').view(np.uint8).reshape(h, -1)
    right = image_to_rgb(make_msg('rgb16', raw, h, w, big=1))
    wrong = image_to_rgb(make_msg('rgb16', raw, h, w, big=0))
    np.testing.assert_array_equal(right, (rgb16 >> 8).astype(np.uint8))
    np.testing.assert_array_equal(wrong, (rgb16 & 0xFF).astype(np.uint8))


def mono16_ref(depth: np.ndarray) -> np.ndarray:
    lo, hi = int(depth.min()), int(depth.max())
    if hi == lo:
        gray = np.zeros(depth.shape, np.uint8)
    else:
        gray = np.round((depth.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


@pytest.mark.parametrize('big', [0, 1])
@pytest.mark.parametrize('pad', [0, 2, 1])
@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
def test_mono16_min_max_normalised(encoding, pad, big):
    h, w = 6, 8
    depth = rng_for(8).integers(300, 4000, (h, w)).astype(np.uint16)
    depth[0, 0] = 0                               # an invalid depth pixel
    raw = depth.astype('>u2' if big else '<u2', order='C').view(np.uint8).reshape(h, -1)
    out = image_to_rgb(make_msg(encoding, raw, h, w, pad, big=big))
    assert_rgb(out, h, w)
    ref = mono16_ref(depth)
    assert max_abs_diff(out, ref) <= 1
    assert out[0, 0, 0] == 0 and out.max() == 255


def test_mono16_constant_frame_gives_zeros():
    h, w = 4, 5
    raw = np.full((h, w), 1234, '<u2').view(np.uint8).reshape(h, -1)
    out = image_to_rgb(make_msg('16UC1', raw, h, w))
    assert_rgb(out, h, w)
    assert not out.any()


def test_mono16_full_range():
    h, w = 2, 3
    depth = np.array([[0, 65535, 32768], [1, 2, 65534]], np.uint16)
    out = image_to_rgb(make_msg('mono16', depth.view(np.uint8).reshape(h, -1), h, w))
    assert max_abs_diff(out, mono16_ref(depth)) <= 1


# --------------------------------------------------------------------------------------------
# YUV
# --------------------------------------------------------------------------------------------

YUV422_ORDER = {   # encoding: byte offsets of (Y0, U, Y1, V) within a 4-byte macropixel
    'yuv422': (1, 0, 3, 2), 'uyvy': (1, 0, 3, 2),
    'yuv422_yuy2': (0, 1, 2, 3), 'yuyv': (0, 1, 2, 3),
}


@pytest.mark.parametrize('pad', [0, 1, 6])
@pytest.mark.parametrize('encoding', sorted(YUV422_ORDER))
def test_yuv422_random_bytes(encoding, pad):
    h, w = 6, 10
    raw = rand_u8((h, w * 2), seed=9)
    iy0, iu, iy1, iv = YUV422_ORDER[encoding]
    y = np.empty((h, w), np.uint8)
    y[:, 0::2] = raw[:, iy0::4]
    y[:, 1::2] = raw[:, iy1::4]
    u = np.repeat(raw[:, iu::4], 2, axis=1)
    v = np.repeat(raw[:, iv::4], 2, axis=1)
    out = image_to_rgb(make_msg(encoding, raw, h, w, pad))
    assert_rgb(out, h, w)
    assert max_abs_diff(out, yuv_to_rgb_ref(y, u, v)) <= 2


@pytest.mark.parametrize('encoding', sorted(YUV422_ORDER))
def test_yuv422_round_trip_of_known_image(encoding):
    h, w = 4, 8
    rgb = np.repeat(rand_u8((h, w // 2, 3), seed=10), 2, axis=1)   # chroma-friendly pairs
    y, u, v = rgb_to_yuv_ref(rgb)
    iy0, iu, iy1, iv = YUV422_ORDER[encoding]
    raw = np.empty((h, w * 2), np.uint8)
    raw[:, iy0::4] = y[:, 0::2]
    raw[:, iy1::4] = y[:, 1::2]
    raw[:, iu::4] = u[:, 0::2]
    raw[:, iv::4] = v[:, 0::2]
    out = image_to_rgb(make_msg(encoding, raw, h, w))
    assert max_abs_diff(out, rgb) <= 3


def pack_nv(y: np.ndarray, u: np.ndarray, v: np.ndarray, encoding: str) -> np.ndarray:
    h, w = y.shape
    chroma = np.empty((h // 2, w), np.uint8)
    first, second = (u, v) if encoding == 'nv12' else (v, u)
    chroma[:, 0::2] = first
    chroma[:, 1::2] = second
    return np.concatenate([y, chroma], axis=0)


@pytest.mark.parametrize('data_type', ['bytes', 'array'])
@pytest.mark.parametrize('pad', [0, 2, 7])
@pytest.mark.parametrize('encoding', ['nv12', 'nv21'])
def test_nv12_nv21_random_bytes(encoding, pad, data_type):
    h, w = 6, 8
    y = rand_u8((h, w), seed=11)
    u = rand_u8((h // 2, w // 2), seed=12)
    v = rand_u8((h // 2, w // 2), seed=13)
    msg = make_msg(encoding, pack_nv(y, u, v, encoding), h, w, pad,
                   data_type=DATA_TYPES[data_type])
    assert len(msg.data) == msg.step * h * 3 // 2
    out = image_to_rgb(msg)
    assert_rgb(out, h, w)
    up = lambda c: np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)  # noqa: E731
    assert max_abs_diff(out, yuv_to_rgb_ref(y, up(u), up(v))) <= 2


def test_nv12_round_trip_of_known_image():
    h, w = 8, 8
    rgb = np.repeat(np.repeat(rand_u8((h // 2, w // 2, 3), seed=14), 2, 0), 2, 1)
    y, u, v = rgb_to_yuv_ref(rgb)
    out = image_to_rgb(make_msg('nv12', pack_nv(y, u[0::2, 0::2], v[0::2, 0::2], 'nv12'),
                                h, w))
    assert max_abs_diff(out, rgb) <= 3


# --------------------------------------------------------------------------------------------
# Bayer
# --------------------------------------------------------------------------------------------

def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image through a Bayer filter named like ROS ('rggb': R at (0, 0))."""
    index = {'r': 0, 'g': 1, 'b': 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[k]]]
    return out


@pytest.mark.parametrize('pad', [0, 3])
@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer8_constant_colour(pattern, pad):
    h, w = 10, 12
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[...] = (200, 100, 30)
    out = image_to_rgb(make_msg('bayer_%s8' % pattern, mosaic(rgb, pattern), h, w, pad))
    assert_rgb(out, h, w)
    np.testing.assert_array_equal(out[1:-1, 1:-1], rgb[1:-1, 1:-1])


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer8_smooth_gradient(pattern):
    h, w = 16, 20
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([40 + 5 * xx, 30 + 6 * yy, 200 - 4 * xx - 2 * yy], -1).astype(np.uint8)
    out = image_to_rgb(make_msg('bayer_%s8' % pattern, mosaic(rgb, pattern), h, w))
    assert max_abs_diff(out[2:-2, 2:-2], rgb[2:-2, 2:-2]) <= 3


@pytest.mark.parametrize('big', [0, 1])
@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer16_uses_high_byte(pattern, big):
    h, w = 8, 8
    rgb16 = np.empty((h, w, 3), np.uint16)
    rgb16[...] = (0xC812, 0x64FF, 0x1E00)
    raw = mosaic(rgb16, pattern).astype('>u2' if big else '<u2', order='C').view(np.uint8)
    out = image_to_rgb(make_msg('bayer_%s16' % pattern, raw.reshape(h, -1), h, w, 2, big=big))
    assert_rgb(out, h, w)
    np.testing.assert_array_equal(out[1:-1, 1:-1], np.full((h - 2, w - 2, 3), (200, 100, 30)))


# --------------------------------------------------------------------------------------------
# refusals of malformed raw frames
# --------------------------------------------------------------------------------------------

def good_msg(encoding: str = 'bgr8', h: int = 4, w: int = 6, pad: int = 0) -> ImageMsg:
    bpp = ic._SPECS[encoding].bytes_per_pixel
    rows = h * 3 // 2 if encoding in ('nv12', 'nv21') else h
    return make_msg(encoding, rand_u8((rows, w * bpp)), h, w, pad)


def refused(msg, match: Optional[str] = None, **kw) -> str:
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg, **kw)
    text = str(info.value)
    assert isinstance(info.value, ValueError)
    assert '\n' not in text
    if match is not None:
        assert match in text, text
    return text


@pytest.mark.parametrize('encoding', sorted(SUPPORTED_ENCODINGS))
@pytest.mark.parametrize('delta', [-1, 1])
def test_data_length_off_by_one(encoding, delta):
    msg = good_msg(encoding, pad=2)
    image_to_rgb(msg)                                  # the unmodified frame converts
    expected = len(msg.data)
    data = bytes(msg.data)
    msg.data = data[:-1] if delta < 0 else data + b'\0'
    text = refused(msg, 'image data is %d bytes' % (expected + delta))
    assert str(expected) in text and repr(encoding) in text


@pytest.mark.parametrize('h,w', [(0, 6), (4, 0), (0, 0), (-1, 6), (4, -2)])
def test_zero_or_negative_size(h, w):
    msg = good_msg()
    msg.height, msg.width = h, w
    refused(msg, 'no pixels')


def test_zero_size_with_empty_data():
    refused(ImageMsg('rgb8', 0, 0, 0, b''), 'no pixels')


def test_step_too_small():
    msg = good_msg('bgr8', 4, 6)
    msg.step = 17
    msg.data = bytes(17 * 4)
    text = refused(msg, 'step 17 is smaller than')
    assert '18' in text


def test_step_too_small_sixteen_bit():
    msg = ImageMsg('mono16', 2, 3, 5, bytes(10))
    refused(msg, 'step 5 is smaller than width 3 x 2 bytes per pixel = 6')


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12', 'nv21'])
def test_odd_width_yuv(encoding):
    rows = 6 if encoding.startswith('nv') else 4
    bpp = 1 if encoding.startswith('nv') else 2
    msg = ImageMsg(encoding, 4, 5, 5 * bpp, bytes(rows * 5 * bpp))
    refused(msg, 'needs an even width, got width 5')


@pytest.mark.parametrize('encoding', ['nv12', 'nv21'])
def test_odd_height_nv12(encoding):
    refused(ImageMsg(encoding, 5, 4, 4, bytes(4 * 7)), 'needs an even height, got height 5')


def test_nv12_data_must_include_the_chroma_plane():
    h, w = 4, 6
    text = refused(ImageMsg('nv12', h, w, w, bytes(h * w)), 'image data is 24 bytes')
    assert '36' in text


def test_huge_dimensions_with_little_data():
    refused(ImageMsg('rgb8', 100_000, 100_000, 300_000, bytes(12)),
            '100000x100000 = 10000000000 pixels exceeds max_pixels=40000000')
    # under the pixel limit, the data length check catches it without touching the data
    text = refused(ImageMsg('rgb8', 5000, 5000, 15000, bytes(12)), 'image data is 12 bytes')
    assert '75000000' in text


def test_custom_max_pixels():
    msg = good_msg('mono8', 10, 10)
    assert_rgb(image_to_rgb(msg, max_pixels=100), 10, 10)
    refused(msg, 'exceeds max_pixels=99', max_pixels=99)
    refused(msg, 'max_pixels must be a positive integer', max_pixels=0)
    refused(msg, 'max_pixels must be a positive integer', max_pixels='many')


@pytest.mark.parametrize('encoding', ['32FC1', '32FC3', '32FC4', '64FC1', '64FC3'])
def test_float_encodings_refused(encoding):
    text = refused(ImageMsg(encoding, 2, 2, 8, bytes(16)), repr(encoding))
    assert 'floating-point' in text


@pytest.mark.parametrize('encoding', ['foo', '8SC1', '16SC1', '8UC2', '16UC2', 'jpeg',
                                      'bayer_rggb32', 'nv24'])
def test_unknown_encodings_refused(encoding):
    refused(ImageMsg(encoding, 2, 2, 8, bytes(16)), repr(encoding) + ' is not supported')


def test_empty_and_non_string_encodings_refused():
    refused(ImageMsg('', 2, 2, 6, bytes(12)), 'encoding is empty')
    refused(ImageMsg(None, 2, 2, 6, bytes(12)), 'encoding must be a string')
    refused(ImageMsg(b'rgb8', 2, 2, 6, bytes(12)), 'encoding must be a string')


def test_wrong_case_encoding_gets_a_hint():
    refused(ImageMsg('RGB8', 2, 2, 6, bytes(12)), "did you mean 'rgb8'")
    refused(ImageMsg('8uc3', 2, 2, 6, bytes(12)), "did you mean '8UC3'")


@pytest.mark.parametrize('data', [None, [1, 2, 3] * 4, 'x' * 12, 12])
def test_data_not_bytes_like(data):
    refused(ImageMsg('rgb8', 2, 2, 6, data), 'bytes-like')


@pytest.mark.parametrize('field,value', [('height', 2.0), ('width', None), ('step', '6')])
def test_non_integer_fields(field, value):
    msg = ImageMsg('rgb8', 2, 2, 6, bytes(12))
    setattr(msg, field, value)
    refused(msg, 'image field %s must be an integer' % field)


def test_numpy_integer_fields_and_non_byte_buffers_accepted():
    rgb = rand_u8((2, 2, 3))
    msg = ImageMsg('rgb8', np.uint32(2), np.int64(2), np.uint32(6), rgb)   # ndarray buffer
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    as_u16 = array.array('H', rgb.tobytes())                               # 12 bytes, 6 items
    np.testing.assert_array_equal(image_to_rgb(ImageMsg('rgb8', 2, 2, 6, as_u16)), rgb)


def test_non_contiguous_buffer_refused():
    buf = memoryview(bytes(24))[::2]
    refused(ImageMsg('rgb8', 2, 2, 6, buf), 'contiguous')


def test_missing_or_hostile_fields_raise_only_image_conversion_error():
    class Hostile:
        encoding = 'rgb8'
        height = width = 2
        step = 6
        data = bytes(12)

        @property
        def is_bigendian(self):
            raise RuntimeError('boom')

    refused(Hostile(), 'RuntimeError: boom')
    refused(object(), 'AttributeError')
    with pytest.raises(ImageConversionError):
        compressed_to_rgb(object())


def test_cv2_error_is_wrapped(monkeypatch):
    def broken(*args, **kwargs):
        raise cv2.error('simulated OpenCV failure')

    monkeypatch.setattr(ic.cv2, 'cvtColor', broken)
    refused(good_msg('bgr8'), 'simulated OpenCV failure')


# --------------------------------------------------------------------------------------------
# compressed images
# --------------------------------------------------------------------------------------------

def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (w + h - 2)],
                    axis=-1).astype(np.uint8)


def encode(rgb_or_gray: np.ndarray, ext: str, params=()) -> bytes:
    img = rgb_or_gray
    if img.ndim == 3 and img.shape[2] >= 3:
        img = np.ascontiguousarray(np.concatenate([img[..., 2::-1], img[..., 3:]], axis=-1))
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def refused_compressed(msg, match: Optional[str] = None, **kw) -> str:
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb(msg, **kw)
    text = str(info.value)
    assert '\n' not in text
    if match is not None:
        assert match in text, text
    return text


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack('>I', len(payload)) + kind + payload
            + struct.pack('>I', zlib.crc32(kind + payload) & 0xFFFFFFFF))


def handmade_png(width: int, height: int, idat: bytes = zlib.compress(b'\0' * 16)) -> bytes:
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', ihdr) + png_chunk(b'IDAT', idat)
            + png_chunk(b'IEND', b''))


def handmade_jpeg_header(width: int, height: int) -> bytes:
    app0 = b'\xff\xe0' + struct.pack('>H', 16) + b'JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00'
    sof0 = (b'\xff\xc0' + struct.pack('>HBHHB', 17, 8, height, width, 3)
            + b'\x01\x22\x00\x02\x11\x01\x03\x11\x01')
    return b'\xff\xd8' + app0 + sof0 + b'\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00'


@pytest.mark.parametrize('data_type', list(DATA_TYPES))
def test_png_exact(data_type):
    rgb = rand_u8((30, 40, 3), seed=20)
    out = compressed_to_rgb(CompressedMsg('png', DATA_TYPES[data_type](encode(rgb, '.png'))))
    assert_rgb(out, 30, 40)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('data_type', list(DATA_TYPES))
def test_jpeg_close(data_type):
    rgb = smooth_rgb()
    data = encode(rgb, '.jpg', [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_rgb(CompressedMsg('jpeg', DATA_TYPES[data_type](data)))
    assert_rgb(out, *rgb.shape[:2])
    assert np.abs(out.astype(int) - rgb).mean() < 2.0
    # the channel order is right: red grows to the right, green downwards
    assert out[:, -1, 0].mean() > 200 and out[:, 0, 0].mean() < 50
    assert out[-1, :, 1].mean() > 200 and out[0, :, 1].mean() < 50


def test_progressive_and_grayscale_jpeg():
    rgb = smooth_rgb()
    out = compressed_to_rgb(CompressedMsg('jpeg', encode(
        rgb, '.jpg', [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 95])))
    assert np.abs(out.astype(int) - rgb).mean() < 2.0
    gray = rgb[..., 1].copy()
    out = compressed_to_rgb(CompressedMsg('jpeg', encode(gray, '.jpg')))
    assert_rgb(out, *gray.shape)
    assert max_abs_diff(out[..., 0], out[..., 2]) == 0
    assert np.abs(out[..., 0].astype(int) - gray).mean() < 2.0


def test_png_grayscale_alpha_and_sixteen_bit():
    rgb = rand_u8((9, 13, 3), seed=21)
    gray = rgb[..., 0].copy()
    out = compressed_to_rgb(CompressedMsg('png', encode(gray, '.png')))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))

    rgba = np.concatenate([rgb, rand_u8((9, 13, 1), seed=22)], axis=-1)
    out = compressed_to_rgb(CompressedMsg('png', encode(rgba, '.png')))
    np.testing.assert_array_equal(out, rgb)             # alpha dropped, not composited

    rgb16 = rand_u16((9, 13, 3), seed=23)
    out = compressed_to_rgb(CompressedMsg('png', encode(rgb16, '.png')))
    assert_rgb(out, 9, 13)
    assert max_abs_diff(out, (rgb16 >> 8).astype(np.uint8)) <= 1

    depth = rand_u16((9, 13), seed=24)
    out = compressed_to_rgb(CompressedMsg('png', encode(depth, '.png')))
    assert max_abs_diff(out[..., 1], (depth >> 8).astype(np.uint8)) <= 1


def test_old_opencv_decode_path(monkeypatch):
    """Decode to BGR and convert where OpenCV (< 4.11) has no IMREAD_COLOR_RGB."""
    monkeypatch.setattr(ic, '_IMREAD_FLAGS', cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    monkeypatch.setattr(ic, '_DECODED_TO_RGB', cv2.COLOR_BGR2RGB)
    rgb = rand_u8((8, 12, 3), seed=25)
    np.testing.assert_array_equal(compressed_to_rgb(CompressedMsg('png', encode(rgb, '.png'))),
                                  rgb)


@pytest.mark.parametrize('fmt', ['png', 'jpeg', 'rgb8; jpeg compressed bgr8', 'bmp', '', None,
                                 42])
def test_format_string_is_ignored(fmt):
    rgb = rand_u8((8, 8, 3), seed=26)
    np.testing.assert_array_equal(compressed_to_rgb(CompressedMsg(fmt, encode(rgb, '.png'))),
                                  rgb)
    out = compressed_to_rgb(CompressedMsg(fmt, encode(smooth_rgb(), '.jpg')))
    assert_rgb(out, 48, 64)


@pytest.mark.parametrize('data', [b'', bytearray(), array.array('B'), memoryview(b'')])
def test_empty_compressed_data(data):
    refused_compressed(CompressedMsg('jpeg', data), 'the data is empty')


@pytest.mark.parametrize('ext,name', [('.bmp', 'BMP'), ('.gif', 'GIF'), ('.webp', 'WebP'),
                                      ('.tiff', 'TIFF'), ('.ppm', 'PNM')])
def test_other_formats_refused(ext, name):
    if ext == '.gif' and not cv2.haveImageWriter(ext):
        data = ONE_PIXEL_GIF
    else:
        data = encode(rand_u8((8, 8, 3)), ext)
    text = refused_compressed(CompressedMsg('jpeg', data), 'is neither PNG nor JPEG')
    assert 'the data is %s' % name in text


@pytest.mark.parametrize('data,name', [
    (b'GIF89a\x08\x00\x08\x00\x00\x00\x00;', 'GIF'),
    (b'RIFF\x10\x00\x00\x00WEBPVP8 ', 'WebP'),
    (b'BM' + bytes(60), 'BMP'),
])
def test_handmade_other_format_headers_refused(data, name):
    refused_compressed(CompressedMsg('png', data), 'the data is %s' % name)


def test_random_bytes_refused():
    refused_compressed(CompressedMsg('jpeg', rand_u8(1000).tobytes()), 'the data starts with')


def test_compressed_depth_refused_with_hint():
    data = struct.pack('<iff', 0, 0.0, 0.0) + encode(rand_u16((4, 4)), '.png')
    refused_compressed(CompressedMsg('16UC1; compressedDepth png', data),
                       'compressedDepth frames are not supported')


def test_truncated_signatures_refused():
    refused_compressed(CompressedMsg('png', b'\x89PNG\r\n'), 'truncated PNG/JPEG signature')
    refused_compressed(CompressedMsg('jpeg', b'\xff\xd8'), 'truncated PNG/JPEG signature')


@pytest.mark.parametrize('cut', [3, 10, 20, 100, 300, 0.5, 0.9, -2])
def test_truncated_jpeg(cut):
    data = encode(smooth_rgb(), '.jpg')
    n = cut if isinstance(cut, int) and cut > 0 else int(len(data) * cut) if cut > 0 else cut
    try:
        out = compressed_to_rgb(CompressedMsg('jpeg', data[:n]))
    except ImageConversionError as exc:
        assert '\n' not in str(exc)
    else:
        assert_rgb(out, 48, 64)


def test_truncated_jpeg_header_named():
    data = encode(smooth_rgb(), '.jpg')
    sof = data.index(b'\xff\xc0')
    refused_compressed(CompressedMsg('jpeg', data[:sof + 5]), 'truncated')
    refused_compressed(CompressedMsg('jpeg', data[:sof]), 'no frame header (SOF) found')


@pytest.mark.parametrize('cut', [8, 20, 30, 60, 0.5, -12])
def test_truncated_png(cut):
    data = encode(rand_u8((20, 20, 3)), '.png')
    n = cut if isinstance(cut, int) and cut > 0 else int(len(data) * cut) if cut > 0 else cut
    try:
        out = compressed_to_rgb(CompressedMsg('png', data[:n]))
    except ImageConversionError:
        pass
    else:
        assert_rgb(out, 20, 20)


def test_truncated_png_header_named():
    data = encode(rand_u8((4, 4, 3)), '.png')
    refused_compressed(CompressedMsg('png', data[:20]), 'PNG data is truncated before its IHDR')


def test_png_with_corrupt_body():
    data = bytearray(encode(rand_u8((32, 32, 3), seed=27), '.png'))
    idat = data.index(b'IDAT')
    for i in range(idat + 10, min(idat + 200, len(data) - 20), 7):
        data[i] ^= 0x5A
    try:
        out = compressed_to_rgb(CompressedMsg('png', bytes(data)))
    except ImageConversionError as exc:
        assert 'could not decode the PNG' in str(exc)
    else:
        assert_rgb(out, 32, 32)


def test_jpeg_with_corrupt_body():
    data = bytearray(encode(smooth_rgb(), '.jpg'))
    sos = data.index(b'\xff\xda')
    for i in range(sos + 20, len(data) - 2, 11):
        data[i] = 0xFF if i % 2 else 0x00
    try:
        out = compressed_to_rgb(CompressedMsg('jpeg', bytes(data)))
    except ImageConversionError:
        pass
    else:
        assert_rgb(out, 48, 64)


def test_png_decompression_bomb_refused_before_decoding(monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError('imdecode called for a bomb')

    monkeypatch.setattr(ic.cv2, 'imdecode', must_not_decode)
    data = handmade_png(100_000, 100_000)
    assert len(data) < 100
    refused_compressed(CompressedMsg('png', data),
                       'PNG header declares 100000x100000 = 10000000000 pixels, more than '
                       'max_pixels=40000000')


def test_jpeg_decompression_bomb_refused_before_decoding(monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError('imdecode called for a bomb')

    monkeypatch.setattr(ic.cv2, 'imdecode', must_not_decode)
    data = handmade_jpeg_header(65535, 65535)   # JPEG sizes are 16-bit: this is the maximum
    refused_compressed(CompressedMsg('jpeg', data), 'JPEG header declares 65535x65535')
    # also when the frame header is behind other segments and fill bytes
    data = data[:2] + b'\xff\xfe\x00\x05abc' + b'\xff\xff\xff' + data[2:]
    refused_compressed(CompressedMsg('jpeg', data), 'JPEG header declares 65535x65535')


def test_declared_size_versus_max_pixels():
    data = encode(rand_u8((64, 64, 3)), '.png')
    assert_rgb(compressed_to_rgb(CompressedMsg('png', data), max_pixels=4096), 64, 64)
    refused_compressed(CompressedMsg('png', data), 'more than max_pixels=4095', max_pixels=4095)
    data = encode(smooth_rgb(), '.jpg')
    refused_compressed(CompressedMsg('jpeg', data), 'JPEG header declares 64x48',
                       max_pixels=1000)


def test_zero_size_headers_refused():
    refused_compressed(CompressedMsg('png', handmade_png(0, 10)), 'no pixels: 0x10')
    refused_compressed(CompressedMsg('jpeg', handmade_jpeg_header(10, 0)), 'no pixels: 10x0')


def test_jpeg_marker_scan_edge_cases():
    good = encode(smooth_rgb(), '.jpg')
    # fill bytes before a marker are allowed and the image still decodes
    assert_rgb(compressed_to_rgb(CompressedMsg('jpeg', good[:2] + b'\xff\xff' + good[2:])),
               48, 64)
    # scan data before any frame header
    refused_compressed(CompressedMsg('jpeg', b'\xff\xd8\xff\xda\x00\x08' + bytes(6)),
                       'scan data (SOS) before any frame header')
    refused_compressed(CompressedMsg('jpeg', b'\xff\xd8\xff\xd9'), 'ends (EOI)')
    refused_compressed(CompressedMsg('jpeg', b'\xff\xd8\xff\xe0\x00\x01'), 'has length 1')
    # a huge segment length just runs off the end of the data
    refused_compressed(CompressedMsg('jpeg', b'\xff\xd8\xff\xe0\xff\xff' + bytes(100)),
                       'no frame header')


def test_png_without_ihdr_first_refused():
    data = handmade_png(4, 4)
    bad = data[:8] + png_chunk(b'tEXt', b'a\0b') + data[8:]
    refused_compressed(CompressedMsg('png', bad), 'IHDR')


def test_compressed_data_not_bytes_like():
    refused_compressed(CompressedMsg('jpeg', None), 'bytes-like')
    refused_compressed(CompressedMsg('jpeg', 'not bytes'), 'bytes-like')


def test_compressed_cv2_error_is_wrapped(monkeypatch):
    def broken(*args, **kwargs):
        raise cv2.error('simulated decoder failure')

    monkeypatch.setattr(ic.cv2, 'imdecode', broken)
    refused_compressed(CompressedMsg('png', encode(rand_u8((4, 4, 3)), '.png')),
                       'simulated decoder failure')


def test_compressed_result_is_fresh_and_writeable():
    data = bytearray(encode(rand_u8((8, 8, 3)), '.png'))
    out = compressed_to_rgb(CompressedMsg('png', data))
    assert_rgb(out, 8, 8)
    assert not np.shares_memory(out, np.frombuffer(data, np.uint8))


# --------------------------------------------------------------------------------------------
# the real ROS messages (rclpy gives data as array.array('B'))
# --------------------------------------------------------------------------------------------

def test_real_sensor_msgs_image():
    msgs = pytest.importorskip('sensor_msgs.msg')
    h, w = 6, 8
    rgb = rand_u8((h, w, 3), seed=30)

    msg = msgs.Image()
    msg.encoding, msg.height, msg.width, msg.step = 'bgr8', h, w, w * 3 + 4
    padded = np.concatenate([rgb[..., ::-1].reshape(h, -1), rand_u8((h, 4))], axis=1)
    msg.data = padded.tobytes()
    assert isinstance(msg.data, array.array)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)

    depth = rng_for(31).integers(0, 5000, (h, w)).astype('>u2')
    msg = msgs.Image(encoding='16UC1', height=h, width=w, step=w * 2, is_bigendian=1,
                     data=depth.view(np.uint8).tobytes())
    assert max_abs_diff(image_to_rgb(msg), mono16_ref(depth.astype(np.uint16))) <= 1

    msg = msgs.Image(encoding='bgr8', height=h, width=w, step=w * 3, data=bytes(h * w * 3 - 1))
    with pytest.raises(ImageConversionError, match='143 bytes'):
        image_to_rgb(msg)


def test_real_sensor_msgs_compressed_image():
    msgs = pytest.importorskip('sensor_msgs.msg')
    rgb = rand_u8((10, 12, 3), seed=32)
    msg = msgs.CompressedImage(format='rgb8; jpeg compressed bgr8')
    msg.data = encode(rgb, '.png')                     # the format string lies
    assert isinstance(msg.data, array.array)
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)
    msg.data = encode(smooth_rgb(), '.jpg')
    assert_rgb(compressed_to_rgb(msg), 48, 64)
    msg.data = b''
    with pytest.raises(ImageConversionError, match='empty'):
        compressed_to_rgb(msg)
